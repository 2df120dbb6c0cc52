//! Model-zoo architectures beyond CaffeNet, built layer for layer at their
//! real spatial sizes (channel counts divided by 8 to stay cheap on a CPU):
//! GoogLeNet (inception modules joined by Concat, two auxiliary heads with
//! loss weight 0.3) and a ResNet (BatchNorm, Scale, Eltwise shortcuts with
//! strided projections). Their shapes only fit if pooling rounds and
//! Concat joins as Caffe's do; then they train, and the tools that need the
//! net's main head (deploy, cyclic pooling) find it.
use flickr_style::caffe::proto::{NetParameter, Phase};
use flickr_style::train::layers::BuildContext;
use flickr_style::train::net::Net;
use std::fmt::Write;
use std::path::Path;

/// Random images and a constant label, which any net learns to predict.
fn dummy_data(batch: usize, side: usize) -> String {
    format!(
        r#"layer {{ name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param {{ shape {{ dim: {batch} dim: 3 dim: {side} dim: {side} }} shape {{ dim: {batch} }}
    data_filler {{ type: "gaussian" std: 1 }} data_filler {{ type: "constant" value: 3 }} }} }}
"#
    )
}

fn conv(out: &mut String, name: &str, bottom: &str, n: usize, k: usize, s: usize, p: usize) {
    writeln!(
        out,
        r#"layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"
  convolution_param {{ num_output: {n} kernel_size: {k} stride: {s} pad: {p} weight_filler {{ type: "xavier" }} bias_filler {{ type: "constant" value: 0.2 }} }} }}
layer {{ name: "{name}_relu" type: "ReLU" bottom: "{name}" top: "{name}" }}"#
    )
    .unwrap();
}

fn pool(out: &mut String, name: &str, bottom: &str, kind: &str, k: usize, s: usize, p: usize) {
    writeln!(
        out,
        r#"layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}" pooling_param {{ pool: {kind} kernel_size: {k} stride: {s} pad: {p} }} }}"#
    )
    .unwrap();
}

fn classifier(out: &mut String, name: &str, bottom: &str, classes: usize, weight: f32) {
    writeln!(
        out,
        r#"layer {{ name: "{name}/classifier" type: "InnerProduct" bottom: "{bottom}" top: "{name}/classifier"
  inner_product_param {{ num_output: {classes} weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "{name}/loss" type: "SoftmaxWithLoss" bottom: "{name}/classifier" bottom: "label" top: "{name}/loss" loss_weight: {weight} }}
layer {{ name: "{name}/top-1" type: "Accuracy" bottom: "{name}/classifier" bottom: "label" top: "{name}/top-1" include {{ phase: TEST }} }}"#
    )
    .unwrap();
}

/// GoogLeNet (Szegedy et al. 2014, Caffe's bvlc_googlenet) with every
/// channel count divided by 8; returns the text.
fn googlenet(batch: usize) -> String {
    let mut t = String::from("name: \"GoogLeNet_8th\"\n");
    t += &dummy_data(batch, 224);
    conv(&mut t, "conv1", "data", 8, 7, 2, 3);
    pool(&mut t, "pool1", "conv1", "MAX", 3, 2, 0);
    t += r#"layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
"#;
    conv(&mut t, "conv2r", "norm1", 8, 1, 1, 0);
    conv(&mut t, "conv2", "conv2r", 24, 3, 1, 1);
    t += r#"layer { name: "norm2" type: "LRN" bottom: "conv2" top: "norm2" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
"#;
    pool(&mut t, "pool2", "norm2", "MAX", 3, 2, 0);
    // (name, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj), / 8.
    let modules: &[(&str, [usize; 6])] = &[
        ("3a", [8, 12, 16, 2, 4, 4]),
        ("3b", [16, 16, 24, 4, 12, 8]),
        ("4a", [24, 12, 26, 2, 6, 8]),
        ("4b", [20, 14, 28, 3, 8, 8]),
        ("4c", [16, 16, 32, 3, 8, 8]),
        ("4d", [14, 18, 36, 4, 8, 8]),
        ("4e", [32, 20, 40, 4, 16, 16]),
        ("5a", [32, 20, 40, 4, 16, 16]),
        ("5b", [48, 24, 48, 6, 16, 16]),
    ];
    let mut input = "pool2".to_string();
    for (name, [a, b_r, b, c_r, c, d]) in modules {
        if *name == "4a" || *name == "5a" {
            let p = format!("pool_{name}");
            pool(&mut t, &p, &input, "MAX", 3, 2, 0);
            input = p;
        }
        let m = |s: &str| format!("i{name}/{s}");
        conv(&mut t, &m("1x1"), &input, *a, 1, 1, 0);
        conv(&mut t, &m("3x3_reduce"), &input, *b_r, 1, 1, 0);
        conv(&mut t, &m("3x3"), &m("3x3_reduce"), *b, 3, 1, 1);
        conv(&mut t, &m("5x5_reduce"), &input, *c_r, 1, 1, 0);
        conv(&mut t, &m("5x5"), &m("5x5_reduce"), *c, 5, 1, 2);
        pool(&mut t, &m("pool"), &input, "MAX", 3, 1, 1);
        conv(&mut t, &m("pool_proj"), &m("pool"), *d, 1, 1, 0);
        writeln!(
            t,
            r#"layer {{ name: "{0}" type: "Concat" bottom: "{1}" bottom: "{2}" bottom: "{3}" bottom: "{4}" top: "{0}" }}"#,
            m("output"),
            m("1x1"),
            m("3x3"),
            m("5x5"),
            m("pool_proj")
        )
        .unwrap();
        input = m("output");
        // The auxiliary heads after 4a and 4d.
        if *name == "4a" || *name == "4d" {
            let h = if *name == "4a" { "loss1" } else { "loss2" };
            pool(&mut t, &format!("{h}/ave_pool"), &input, "AVE", 5, 3, 0);
            conv(
                &mut t,
                &format!("{h}/conv"),
                &format!("{h}/ave_pool"),
                16,
                1,
                1,
                0,
            );
            writeln!(
                t,
                r#"layer {{ name: "{h}/fc" type: "InnerProduct" bottom: "{h}/conv" top: "{h}/fc" inner_product_param {{ num_output: 128 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "{h}/relu_fc" type: "ReLU" bottom: "{h}/fc" top: "{h}/fc" }}
layer {{ name: "{h}/drop_fc" type: "Dropout" bottom: "{h}/fc" top: "{h}/fc" dropout_param {{ dropout_ratio: 0.7 }} }}"#
            )
            .unwrap();
            classifier(&mut t, h, &format!("{h}/fc"), 5, 0.3);
        }
    }
    pool(&mut t, "pool5", &input, "AVE", 7, 1, 0);
    t += r#"layer { name: "pool5/drop" type: "Dropout" bottom: "pool5" top: "pool5" dropout_param { dropout_ratio: 0.4 } }
"#;
    classifier(&mut t, "loss3", "pool5", 5, 1.0);
    t
}

fn parse(text: &str) -> NetParameter {
    let mut net: NetParameter =
        flickr_style::caffe::prototxt::parse(text, Path::new("zoo.prototxt")).unwrap();
    flickr_style::caffe::model::upgrade(&mut net, "zoo.prototxt").unwrap();
    net
}

/// Trains `def` for `iterations` steps of plain SGD; returns the losses
/// and the trained net.
fn train(def: &NetParameter, iterations: usize, rate: f32) -> (Vec<f32>, Net) {
    let t = tempfile::tempdir().unwrap();
    let mut net = Net::new(def, &BuildContext::cpu(t.path(), 5, Phase::Train), None).unwrap();
    let cfg = flickr_style::train::sgd::SgdConfig {
        rule: flickr_style::train::sgd::adaptive::Rule::Sgd,
        iter: 0,
        momentum: 0.9,
        weight_decay: 2e-4,
        l1: false,
        iter_size: 1,
        clip_gradients: -1.0,
    };
    let mut history: Vec<_> = (0..net.params().len())
        .map(|i| net.param(i).zeros_like().unwrap())
        .collect();
    let losses = (0..iterations)
        .map(|_| {
            net.clear_grads();
            let loss = net.forward().unwrap();
            net.backward().unwrap();
            flickr_style::train::sgd::sgd_update(&mut net, &mut history, rate, &cfg).unwrap();
            loss
        })
        .collect();
    (losses, net)
}

#[test]
fn googlenet_builds_with_caffes_shapes_trains_and_deploys_its_main_head() {
    let def = parse(&googlenet(2));
    let t = tempfile::tempdir().unwrap();
    let net = Net::new(&def, &BuildContext::cpu(t.path(), 5, Phase::Train), None).unwrap();
    let shape = |blob: &str| net.blob_shape(blob).unwrap().to_vec();
    // GoogLeNet's sizes: 56x56 after pool1, 28 after pool2, 14 and 7 after
    // the later pools (Caffe's ceil rounding), 4x4 aux pools.
    assert_eq!(shape("pool1"), [2, 8, 56, 56]);
    assert_eq!(shape("i3a/output"), [2, 8 + 16 + 4 + 4, 28, 28]);
    assert_eq!(shape("i4a/output"), [2, 24 + 26 + 6 + 8, 14, 14]);
    assert_eq!(shape("loss1/ave_pool"), [2, 64, 4, 4]);
    assert_eq!(shape("i5b/output"), [2, 48 + 48 + 16 + 16, 7, 7]);
    assert_eq!(shape("pool5"), [2, 128, 1, 1]);
    drop(net);
    // Three weighted losses: 0.3 + 0.3 + 1 times ln 5 at the start.
    let (losses, _) = train(&def, 8, 0.01);
    eprintln!("GoogLeNet/8 losses: {losses:?}");
    assert!(
        (losses[0] / (1.6 * 5f32.ln()) - 1.0).abs() < 0.5,
        "{losses:?}"
    );
    assert!(losses[7] < losses[0] * 0.7, "{losses:?}");

    // The deploy net keeps the main head only.
    let mut with_test = def.clone();
    let data = &mut with_test.layer[0];
    data.r#type = Some("ImageData".into());
    data.dummy_data_param = None;
    data.include = vec![flickr_style::caffe::proto::NetStateRule {
        phase: Some(Phase::Test as i32),
        ..Default::default()
    }];
    data.image_data_param = Some(flickr_style::caffe::proto::ImageDataParameter {
        source: Some("test.txt".into()),
        batch_size: Some(2),
        new_height: Some(256),
        new_width: Some(256),
        ..Default::default()
    });
    data.transform_param = Some(flickr_style::caffe::proto::TransformationParameter {
        crop_size: Some(224),
        ..Default::default()
    });
    let (deploy, _) =
        flickr_style::inference::deploy::deploy_net(&with_test, 1, Path::new("g"), t.path())
            .unwrap();
    let names: Vec<&str> = deploy.layer.iter().map(|l| l.name()).collect();
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("loss1") || n.starts_with("loss2")),
        "{names:?}"
    );
    assert_eq!(deploy.layer.last().unwrap().bottom, ["loss3/classifier"]);

    // Cyclic pooling pools before each head, and the net still builds.
    let mut cyclic = def.clone();
    let (_, pooled) = flickr_style::train::cyclic::cyclic_net(&mut cyclic, "g").unwrap();
    assert_eq!(pooled, "loss1/conv, loss2/conv, pool5");
    let net = Net::new(&cyclic, &BuildContext::cpu(t.path(), 5, Phase::Train), None).unwrap();
    assert_eq!(net.blob_shape("i3a/output").unwrap()[0], 8);
    assert_eq!(net.blob_shape("pool5_pooled").unwrap()[0], 2);
}

/// Convolution, BatchNorm and Scale (ResNet's unit), optionally with ReLU.
fn conv_bn(out: &mut String, name: &str, bottom: &str, n: usize, k: usize, s: usize, relu: bool) {
    let p = k / 2;
    writeln!(
        out,
        r#"layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"
  convolution_param {{ num_output: {n} kernel_size: {k} stride: {s} pad: {p} bias_term: false weight_filler {{ type: "msra" }} }} }}
layer {{ name: "bn_{name}" type: "BatchNorm" bottom: "{name}" top: "{name}" }}
layer {{ name: "scale_{name}" type: "Scale" bottom: "{name}" top: "{name}" scale_param {{ bias_term: true }} }}"#
    )
    .unwrap();
    if relu {
        writeln!(
            out,
            r#"layer {{ name: "{name}_relu" type: "ReLU" bottom: "{name}" top: "{name}" }}"#
        )
        .unwrap();
    }
}

/// ResNet-18 (He et al. 2015, basic blocks, Caffe's layer naming) with
/// every channel count divided by 8.
fn resnet18(batch: usize) -> String {
    let mut t = String::from("name: \"ResNet18_8th\"\n");
    t += &dummy_data(batch, 224);
    conv_bn(&mut t, "conv1", "data", 8, 7, 2, true);
    pool(&mut t, "pool1", "conv1", "MAX", 3, 2, 0);
    let mut input = "pool1".to_string();
    let mut channels = 8;
    for (stage, width) in [(2, 8), (3, 16), (4, 32), (5, 64)] {
        for (b, block) in ["a", "b"].iter().enumerate() {
            let name = format!("res{stage}{block}");
            let stride = if stage > 2 && b == 0 { 2 } else { 1 };
            let shortcut = if stride == 2 || channels != width {
                let proj = format!("{name}_branch1");
                conv_bn(&mut t, &proj, &input, width, 1, stride, false);
                proj
            } else {
                input.clone()
            };
            conv_bn(
                &mut t,
                &format!("{name}_branch2a"),
                &input,
                width,
                3,
                stride,
                true,
            );
            conv_bn(
                &mut t,
                &format!("{name}_branch2b"),
                &format!("{name}_branch2a"),
                width,
                3,
                1,
                false,
            );
            writeln!(
                t,
                r#"layer {{ name: "{name}" type: "Eltwise" bottom: "{shortcut}" bottom: "{name}_branch2b" top: "{name}" }}
layer {{ name: "{name}_relu" type: "ReLU" bottom: "{name}" top: "{name}" }}"#
            )
            .unwrap();
            input = name;
            channels = width;
        }
    }
    pool(&mut t, "pool5", &input, "AVE", 7, 1, 0);
    classifier(&mut t, "fc", "pool5", 5, 1.0);
    t
}

#[test]
fn resnet_builds_with_caffes_shapes_trains_and_tests_on_its_running_statistics() {
    let def = parse(&resnet18(4));
    let t = tempfile::tempdir().unwrap();
    let net = Net::new(&def, &BuildContext::cpu(t.path(), 5, Phase::Train), None).unwrap();
    let shape = |blob: &str| net.blob_shape(blob).unwrap().to_vec();
    assert_eq!(shape("pool1"), [4, 8, 56, 56]);
    assert_eq!(shape("res2b"), [4, 8, 56, 56]);
    assert_eq!(shape("res3a_branch1"), [4, 16, 28, 28]);
    assert_eq!(shape("res4b"), [4, 32, 14, 14]);
    assert_eq!(shape("res5b"), [4, 64, 7, 7]);
    assert_eq!(shape("pool5"), [4, 64, 1, 1]);
    // BatchNorm's statistics are not learned; Scale's factor and shift are.
    let frozen = (0..net.params().len())
        .filter(|&i| net.params()[i].lr_mult == 0.0)
        .map(|i| net.param_layer_name(i).to_string())
        .collect::<Vec<_>>();
    assert_eq!(frozen.len(), 3 * 20, "{frozen:?}");
    assert!(frozen.iter().all(|n| n.starts_with("bn_")));
    drop(net);
    let (losses, trained) = train(&def, 8, 0.05);
    eprintln!("ResNet-18/8 losses: {losses:?}");
    assert!(losses[7] < losses[0] * 0.7, "{losses:?}");
    // The TEST net normalises by the running sums the 8 TRAIN passes left,
    // which fit data like the training batches.
    let mut test = Net::new(&def, &BuildContext::cpu(t.path(), 6, Phase::Test), None).unwrap();
    test.share_from(&trained).unwrap();
    let loss = test.forward().unwrap();
    eprintln!("ResNet-18/8 TEST loss on the running statistics: {loss}");
    assert!(loss.is_finite() && loss < 0.5, "{loss}");
}
