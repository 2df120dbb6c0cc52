//! `explain`: a class score's gradient at an inner blob against real Caffe
//! (`tests/data/caffe_gradcam.json`, made by
//! `scripts/caffe-golden/gradcam.py`: pycaffe's `backward(start="fc8",
//! end="fc6")` on the tiny net with `force_backward: true`), the Grad-CAM
//! maps made from it, a net whose answer is known by hand, and the command
//! on the fixture photos.
mod common;
use common::golden::{Array, Fingerprint};
use common::{fixture, npy, run};
use flickr_style::caffe::model::{read_caffemodel, read_net_prototxt};
use flickr_style::caffe::proto::Phase;
use flickr_style::inference::explain::grad_cam;
use flickr_style::train::layers::BuildContext;
use flickr_style::train::net::Net;
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    provenance: String,
    scores: Array,
    classes: Vec<usize>,
    conv3: Fingerprint,
    conv3_diff: Fingerprint,
    cams: Array,
}

fn values(t: &candle_core::Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// The tiny net's TEST phase with `force_backward`, iteration-30 weights,
/// after one forward pass (its first 8 LMDB records).
fn tiny_net(tensor_ops: bool) -> Net {
    let dir = fixture("tiny-net");
    let mut def = read_net_prototxt(&dir.join("train_val.prototxt")).unwrap();
    def.force_backward = Some(true);
    let mut ctx = BuildContext::cpu(&dir, 1, Phase::Test);
    ctx.tensor_ops = tensor_ops;
    let mut net = Net::new(&def, &ctx, None).unwrap();
    let weights = read_caffemodel(&dir.join("snapshots/tiny_iter_30.caffemodel")).unwrap();
    net.copy_trained_from(&weights, "tiny_iter_30").unwrap();
    net.forward().unwrap();
    net
}

#[test]
fn class_score_gradients_and_maps_match_caffe() {
    let golden: Golden = common::golden::load("caffe_gradcam.json");
    eprintln!("golden numbers: {}", golden.provenance);
    for tensor_ops in [false, true] {
        let mut net = tiny_net(tensor_ops);
        let scores = values(net.blob("fc8").unwrap());
        let err = scores
            .iter()
            .zip(&golden.scores.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 1e-5, "fc8 differs from Caffe's by {err}");
        let (n, c) = (golden.scores.shape[0], golden.scores.shape[1]);
        let mut diff = vec![0.0f32; n * c];
        for (i, &k) in golden.classes.iter().enumerate() {
            diff[i * c + k] = 1.0;
        }
        let seed = candle_core::Tensor::from_vec(diff, (n, c), &candle_core::Device::Cpu).unwrap();
        let g = values(&net.blob_gradient("fc8", seed, "conv3").unwrap());
        let a = values(net.blob("conv3").unwrap());
        for (what, got, want) in [
            ("conv3", &a, &golden.conv3),
            ("its gradient", &g, &golden.conv3_diff),
        ] {
            let e = want.errors(got).unwrap();
            assert!(
                e.sum_over_root < 1e-5 && e.sum_sq < 1e-5 && e.values < 1e-5,
                "{what} (tensor ops {tensor_ops}): {e:?}"
            );
        }
        // The training gradients are left alone.
        assert!((0..net.params().len()).all(|i| !net.has_grad(i)));
        let per = a.len() / n;
        let cams: Vec<f32> = (0..n)
            .flat_map(|i| grad_cam(&a[i * per..(i + 1) * per], &g[i * per..(i + 1) * per], 32))
            .collect();
        let top = golden.cams.data.iter().fold(0.0f32, |m, v| m.max(*v));
        let err = cams
            .iter()
            .zip(&golden.cams.data)
            .map(|(a, b)| (a - b).abs() / top)
            .fold(0.0f32, f32::max);
        assert!(
            err < 1e-5,
            "maps differ from Caffe's by {err} of the largest"
        );
    }
}

#[test]
fn the_map_lights_up_where_the_class_evidence_is() {
    // One gray channel, a 1x1 convolution that copies it, its ReLU, global
    // average pooling and two classes (+1 and -1 times the mean): class 0's
    // score grows with every pixel alike, so its map is the image itself.
    let t = tempfile::tempdir().unwrap();
    let net = t.path().join("net.prototxt");
    std::fs::write(
        &net,
        r#"name: "known" force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 1 kernel_size: 1 weight_filler { type: "constant" value: 1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
  inner_product_param { num_output: 2 weight_filler { type: "constant" value: 1 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"#,
    )
    .unwrap();
    let def = read_net_prototxt(&net).unwrap();
    let mut n = Net::new(&def, &BuildContext::cpu(t.path(), 1, Phase::Test), None).unwrap();
    // Class 1 weighs the mean by -1.
    let fc = (0..n.params().len())
        .find(|&i| n.param_layer_name(i) == "fc" && n.params()[i].index == 0)
        .unwrap();
    n.set_param(
        fc,
        candle_core::Tensor::new(&[[1.0f32], [-1.0]], &candle_core::Device::Cpu).unwrap(),
    )
    .unwrap();
    let mut image = vec![0.0f32; 16];
    image[5] = 2.0; // row 1, column 1
    image[10] = 1.0; // row 2, column 2
    let x = candle_core::Tensor::from_vec(image.clone(), (1, 1, 4, 4), &candle_core::Device::Cpu)
        .unwrap();
    n.forward_batch(vec![x]).unwrap();
    let one_hot = |k: usize| {
        let mut d = vec![0.0f32; 2];
        d[k] = 1.0;
        candle_core::Tensor::from_vec(d, (1, 2), &candle_core::Device::Cpu).unwrap()
    };
    let a = values(n.blob("conv").unwrap());
    let g = values(&n.blob_gradient("fc", one_hot(0), "conv").unwrap());
    // d(mean)/d(pixel) = 1/16 everywhere: the map is the image over 16.
    assert!(g.iter().all(|&v| (v - 1.0 / 16.0).abs() < 1e-7), "{g:?}");
    let map = grad_cam(&a, &g, 1);
    let want: Vec<f32> = image.iter().map(|v| v / 16.0).collect();
    assert_eq!(map, want);
    // Class 1 has nothing for it: its map is 0.
    let g = values(&n.blob_gradient("fc", one_hot(1), "conv").unwrap());
    assert!(grad_cam(&a, &g, 1).iter().all(|&v| v == 0.0));
    // A blob above the seed, or a seed of the wrong shape, is an error.
    let ones = candle_core::Tensor::ones(
        (1, 1, 1, 1),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let e = n.blob_gradient("pool", ones, "fc").unwrap_err();
    assert!(e.to_string().contains("no gradient flows"), "{e}");
    assert!(n
        .blob_gradient("fc", one_hot(0).reshape(2).unwrap(), "conv")
        .is_err());
}

#[test]
fn explain_writes_a_heat_map_per_image_and_a_table() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("maps");
    let dir = fixture("tiny-net");
    let images = fixture("images");
    let model = dir.join("train_val.prototxt");
    let weights = dir.join("snapshots/tiny_iter_30.caffemodel");
    let args = |extra: &[&str]| {
        let mut v = vec![
            "explain".to_string(),
            "--model".into(),
            model.display().to_string(),
            "--weights".into(),
            weights.display().to_string(),
            "--out".into(),
            out.display().to_string(),
            images.join("animal").display().to_string(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run_args = |extra: &[&str]| {
        let a = args(extra);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        run(&dir, &refs)
    };
    let (ok, stdout, err) = run_args(&[]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("Grad-CAM of 'conv3' (7x7 positions)"),
        "{stdout}"
    );
    let csv = std::fs::read_to_string(out.join("explain.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    let animals = std::fs::read_dir(images.join("animal")).unwrap().count();
    assert_eq!(rows.len(), animals, "{csv}");
    for row in rows {
        let f: Vec<&str> = row.split(',').collect();
        let png = image::open(out.join(f[1])).unwrap();
        // The net's 64x64 input (the tiny net does not crop).
        assert_eq!((png.width(), png.height()), (64, 64));
        let p: f32 = f[4].parse().unwrap();
        assert!((0.0..=1.0).contains(&p), "{row}");
        let (r, c): (usize, usize) = (f[5].parse().unwrap(), f[6].parse().unwrap());
        assert!(r < 64 && c < 64, "{row}");
    }
    // The maps themselves, row for row, each scaled to a largest value of 1.
    let (dims, maps) = npy(&out.join("maps.npy"));
    assert_eq!(dims, [animals, 7, 7]);
    for m in maps.chunks(49) {
        let top = m.iter().fold(0.0f32, |t, &v| t.max(v));
        assert!(top == 1.0 || top == 0.0, "{m:?}");
    }
    assert!(!out.join("label_maps.npy").exists());
    // Another class for every image, with names; bad requests are named.
    let names = t.path().join("names.txt");
    std::fs::write(&names, "animal\nobject\nscience\nvehicle\n").unwrap();
    let (ok, _, err) = run_args(&["--class", "3", "--names", names.to_str().unwrap()]);
    assert!(ok, "{err}");
    let csv = std::fs::read_to_string(out.join("explain.csv")).unwrap();
    assert!(
        csv.lines().skip(1).all(|l| l.contains(",3,vehicle,")),
        "{csv}"
    );
    // From the image list: the true classes are known. The tiny net gets 11
    // of the 24 right (`caffe test` says 0.458333), so 13 mistakes, each
    // drawn for the class given and the true one side by side.
    let list = images.join("list.txt");
    let root = images.display().to_string();
    let with_list = |extra: &[&str]| {
        let mut v = vec![
            "explain",
            "--model",
            model.to_str().unwrap(),
            "--weights",
            weights.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--list",
            list.to_str().unwrap(),
            "--root",
            &root,
        ];
        v.extend(extra);
        let (ok, stdout, err) = run(&dir, &v);
        assert!(ok, "{err}");
        (
            stdout,
            std::fs::read_to_string(out.join("explain.csv")).unwrap(),
        )
    };
    let (stdout, csv) = with_list(&["--mistakes"]);
    assert!(stdout.contains("13 mistakes among 24 images"), "{stdout}");
    assert_eq!(npy(&out.join("label_maps.npy")).0, [13, 7, 7]);
    let rows: Vec<Vec<String>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    assert_eq!(rows.len(), 13, "{csv}");
    for r in &rows {
        // class, label: different; two 64x64 panels and a 4-pixel gap.
        assert_ne!(r[2], r[8], "{r:?}");
        assert_eq!(image::open(out.join(&r[1])).unwrap().width(), 132);
    }
    // Every image: the 11 right ones in one panel.
    let (_, csv) = with_list(&[]);
    let widths: Vec<u32> = csv
        .lines()
        .skip(1)
        .map(|l| {
            image::open(out.join(l.split(',').nth(1).unwrap()))
                .unwrap()
                .width()
        })
        .collect();
    assert_eq!(widths.iter().filter(|&&w| w == 64).count(), 11);
    assert_eq!(widths.len(), 24);
    // The earlier run's maps are gone: only this table's are left.
    let pngs = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "png")
        })
        .count();
    assert_eq!(pngs, 24);
    // ... by name too.
    let (ok, _, err) = run_args(&["--class", "science", "--names", names.to_str().unwrap()]);
    assert!(ok, "{err}");
    let csv = std::fs::read_to_string(out.join("explain.csv")).unwrap();
    assert!(
        csv.lines().skip(1).all(|l| l.contains(",2,science,")),
        "{csv}"
    );
    let two = t.path().join("two.txt");
    std::fs::write(&two, "animal\nobject\n").unwrap();
    let (ok, _, err) = run_args(&["--names", two.to_str().unwrap()]);
    assert!(
        !ok && err.contains("--names: has 2 class names, but the net scores 4 classes"),
        "{err}"
    );
    let (ok, _, err) = run_args(&["--class", "plankton", "--names", names.to_str().unwrap()]);
    assert!(
        !ok && err.contains("\"plankton\" is neither a class number nor one of the names"),
        "{err}"
    );
    // Where the maps fall against the object in each view.
    let (ok, stdout, err) = run_args(&["--object"]);
    assert!(ok, "{err}");
    assert!(stdout.contains("the object covers"), "{stdout}");
    let csv = std::fs::read_to_string(out.join("explain.csv")).unwrap();
    assert!(
        csv.lines()
            .next()
            .unwrap()
            .ends_with(",object_share,map_on_object"),
        "{csv}"
    );
    for row in csv.lines().skip(1) {
        let f: Vec<f32> = row
            .rsplitn(3, ',')
            .take(2)
            .map(|v| v.parse().unwrap())
            .collect();
        assert!(f.iter().all(|v| (0.0..=1.0).contains(v)), "{row}");
    }
    let (ok, _, err) = run_args(&["--class", "4"]);
    assert!(
        !ok && err.contains("--class 4 is not one of the net's 4 classes"),
        "{err}"
    );
    let (ok, _, err) = run_args(&["--layer", "fc6"]);
    assert!(
        !ok && err.contains("a map needs an N x C x H x W blob"),
        "{err}"
    );
    let file_out = t.path().join("a_file");
    std::fs::write(&file_out, "x").unwrap();
    let mut v = args(&[]);
    let at = v.iter().position(|a| a == "--out").unwrap() + 1;
    v[at] = file_out.display().to_string();
    let refs: Vec<&str> = v.iter().map(String::as_str).collect();
    let (ok, _, err) = run(&dir, &refs);
    assert!(
        !ok && err.contains("is a file: the heat maps need a folder"),
        "{err}"
    );
    let (ok, _, err) = run_args(&["--layer", "nope"]);
    assert!(!ok && err.contains("has no blob 'nope'"), "{err}");
}

/// The tiny net with cyclic pooling: CyclicSlice after the data, CyclicPool
/// after relu3 (conv3 holds each image's four turns).
fn cyclic(net: String) -> String {
    let out = net
        .replacen(
            "layer {\n  name: \"conv1\"",
            "layer { name: \"cs\" type: \"CyclicSlice\" bottom: \"data\" top: \"data_c\" }\nlayer {\n  name: \"conv1\"",
            1,
        )
        .replacen("bottom: \"data\"\n  top: \"conv1\"", "bottom: \"data_c\"\n  top: \"conv1\"", 1)
        .replacen(
            "layer { name: \"relu3\" type: \"ReLU\" bottom: \"conv3\" top: \"conv3\" }",
            "layer { name: \"relu3\" type: \"ReLU\" bottom: \"conv3\" top: \"conv3\" }\n\
             layer { name: \"cp\" type: \"CyclicPool\" bottom: \"conv3\" top: \"conv3p\" }",
            1,
        )
        .replacen("bottom: \"conv3\"\n  top: \"fc6\"", "bottom: \"conv3p\"\n  top: \"fc6\"", 1);
    assert_eq!(out.matches("Cyclic").count(), 2);
    out
}

/// A square plane turned a quarter (row r, column c to row c, column n-1-r).
fn turned(plane: &[f32], n: usize) -> Vec<f32> {
    let mut out = vec![0.0; n * n];
    for r in 0..n {
        for c in 0..n {
            out[c * n + (n - 1 - r)] = plane[r * n + c];
        }
    }
    out
}

#[test]
fn under_cyclic_pooling_a_turned_image_has_the_turned_map() {
    use flickr_style::inference::explain::cyclic_grad_cams;
    // The tiny net fed by an Input layer of two images: one, and the same
    // turned a quarter. Cyclic pooling makes the net blind to the turn;
    // the second image's map must be the first's, turned.
    let dir = fixture("tiny-net");
    let net = std::fs::read_to_string(dir.join("train_val.prototxt")).unwrap();
    let body = &net[net.find("layer {\n  name: \"conv1\"").unwrap()
        ..net.find("layer {\n  name: \"accuracy\"").unwrap()];
    let text = format!(
        "name: \"cyc\" force_backward: true\nlayer {{ name: \"data\" type: \"Input\" top: \"data\" \
         input_param {{ shape {{ dim: 2 dim: 3 dim: 64 dim: 64 }} }} }}\n{body}"
    );
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("cyc.prototxt");
    std::fs::write(&file, cyclic(text)).unwrap();
    let def = read_net_prototxt(&file).unwrap();
    let mut n = Net::new(&def, &BuildContext::cpu(t.path(), 1, Phase::Test), None).unwrap();
    let weights = read_caffemodel(&dir.join("snapshots/tiny_iter_30.caffemodel")).unwrap();
    n.copy_trained_from(&weights, "tiny_iter_30").unwrap();
    let plane = 64 * 64;
    let first: Vec<f32> = (0..3 * plane)
        .map(|i| ((i * 7919) % 255) as f32 - 120.0)
        .collect();
    let second: Vec<f32> = first.chunks(plane).flat_map(|p| turned(p, 64)).collect();
    let x = candle_core::Tensor::from_vec(
        [first, second].concat(),
        (2, 3, 64, 64),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    n.forward_batch(vec![x]).unwrap();
    let scores = values(n.blob("fc8").unwrap());
    for k in 0..4 {
        assert!((scores[k] - scores[4 + k]).abs() < 1e-4, "{scores:?}");
    }
    let mut seed = vec![0.0f32; 8];
    seed[1] = 1.0;
    seed[5] = 1.0;
    let seed = candle_core::Tensor::from_vec(seed, (2, 4), &candle_core::Device::Cpu).unwrap();
    let g = values(&n.blob_gradient("fc8", seed, "conv3").unwrap());
    let a = values(n.blob("conv3").unwrap());
    let maps = cyclic_grad_cams(&a, &g, 2, 32, 7);
    let want = turned(&maps[0], 7);
    let top = want.iter().fold(0.0f32, |m, v| m.max(*v));
    assert!(top > 0.0);
    for (got, want) in maps[1].iter().zip(&want) {
        assert!((got - want).abs() <= 1e-4 * top, "{:?}\n{want:?}", maps[1]);
    }
}

#[test]
fn explain_maps_cyclic_nets_too() {
    let dir = fixture("tiny-net");
    let t = tempfile::tempdir().unwrap();
    let net = std::fs::read_to_string(dir.join("train_val.prototxt"))
        .unwrap()
        .replace("\"data/", &format!("\"{}/data/", common::slashed(&dir)));
    let model = t.path().join("cyclic.prototxt");
    std::fs::write(&model, cyclic(net)).unwrap();
    let weights = dir.join("snapshots/tiny_iter_30.caffemodel");
    let out = t.path().join("maps");
    let images = fixture("images/vehicle");
    let (ok, stdout, err) = run(
        &dir,
        &[
            "explain",
            "--model",
            model.to_str().unwrap(),
            "--weights",
            weights.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            images.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert!(
        stdout.contains("Grad-CAM of 'conv3' (7x7 positions)"),
        "{stdout}"
    );
    let csv = std::fs::read_to_string(out.join("explain.csv")).unwrap();
    assert_eq!(csv.lines().count(), 7, "{csv}");
}

#[test]
fn a_stopped_run_writes_nothing() {
    use flickr_style::inference::classify::ClassifyOptions;
    use flickr_style::inference::explain::{explain, ExplainOptions};
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let dir = fixture("tiny-net");
    let t = tempfile::tempdir().unwrap();
    let model = dir.join("train_val.prototxt");
    let weights = dir.join("snapshots/tiny_iter_30.caffemodel");
    let weights = [weights.as_path()];
    let compute = flickr_style::train::compute::Compute::cpu();
    let images = vec![fixture("images/animal/cat.jpg")];
    let out = t.path().join("maps");
    let e = explain(&ExplainOptions {
        input: ClassifyOptions::new(&model, &weights, &dir, &compute, &images),
        layer: None,
        class: None,
        names: &[],
        out: &out,
        strict: false,
        labels: None,
        mistakes: false,
        stop: Some(Arc::new(AtomicBool::new(true))),
        object: false,
    })
    .unwrap_err();
    assert!(matches!(e, flickr_style::Error::Interrupted), "{e}");
    // Neither the folder nor a staging folder beside it.
    assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
}
