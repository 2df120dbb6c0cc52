//! `targets-lmdb`: regression targets beside an image LMDB. The records
//! share the images' keys, so two Data layers read them in step (checked
//! against each image's label), and a regression net trained from them with
//! an EuclideanLoss learns.
mod common;
use flickr_style::caffe::model::read_net_prototxt;
use flickr_style::caffe::proto::Phase;
use flickr_style::pipeline::lmdb_store::LmdbReader;
use flickr_style::train::layers::BuildContext;
use flickr_style::train::net::Net;
use std::path::Path;

/// The fixture images as a 32x32 LMDB, and a targets CSV giving each image
/// (label, label² / 3, 0.5).
fn images_and_targets(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let images = dir.join("images_lmdb");
    flickr_style::pipeline::to_lmdb::to_lmdb(&flickr_style::pipeline::to_lmdb::ToLmdbOptions {
        resize: Some((32, 32)),
        ..common::fixture_to_lmdb_options(images.clone())
    })
    .unwrap();
    let list = std::fs::read_to_string(common::fixture("images/list.txt")).unwrap();
    let mut csv = String::from("path,label,square,half\n");
    for line in list.lines() {
        let (path, label) = line.rsplit_once(' ').unwrap();
        let l: f32 = label.parse().unwrap();
        csv.push_str(&format!("{path},{l},{},0.5\n", l * l / 3.0));
    }
    let targets = dir.join("targets.csv");
    std::fs::write(&targets, csv).unwrap();
    (images, targets)
}

/// Data layers over the images and the targets, then `body`.
fn net_text(images: &Path, targets: &Path, body: &str) -> String {
    format!(
        r#"name: "regression"
layer {{ name: "data" type: "Data" top: "data" top: "label"
  transform_param {{ scale: 0.00390625 }}
  data_param {{ source: "{}" batch_size: 8 backend: LMDB }} }}
layer {{ name: "targets" type: "Data" top: "targets"
  data_param {{ source: "{}" batch_size: 8 backend: LMDB }} }}
{body}"#,
        common::slashed(images),
        common::slashed(targets)
    )
}

#[test]
fn targets_follow_the_image_records_and_a_regression_net_learns_them() {
    let t = tempfile::tempdir().unwrap();
    let (images, csv) = images_and_targets(t.path());
    let out = t.path().join("targets_lmdb");
    let (ok, _, err) = common::run(
        t.path(),
        &[
            "targets-lmdb",
            images.to_str().unwrap(),
            csv.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert!(err.contains("wrote 24 records of 3 values"), "{err}");
    assert_eq!(
        LmdbReader::open(&out).unwrap().keys().unwrap(),
        LmdbReader::open(&images).unwrap().keys().unwrap()
    );

    // Two Data layers read in step: each image's first target is its label.
    let file = t.path().join("step.prototxt");
    let silence = r#"layer { name: "s" type: "Silence" bottom: "data" }"#;
    std::fs::write(&file, net_text(&images, &out, silence)).unwrap();
    let def = read_net_prototxt(&file).unwrap();
    let mut net = Net::new(&def, &BuildContext::cpu(t.path(), 1, Phase::Test), None).unwrap();
    for _ in 0..4 {
        net.forward().unwrap();
        let labels: Vec<f32> = net.blob("label").unwrap().to_vec1().unwrap();
        let targets = net.blob("targets").unwrap();
        assert_eq!(targets.dims(), [8, 3, 1, 1]);
        let targets: Vec<Vec<f32>> = targets.flatten_from(1).unwrap().to_vec2().unwrap();
        for (l, row) in labels.iter().zip(&targets) {
            assert_eq!(row, &[*l, l * l / 3.0, 0.5]);
        }
    }

    // A small regression net learns the targets (a seeded run: the same
    // numbers every time).
    let body = r#"
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 8 kernel_size: 5 stride: 2 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fit" type: "InnerProduct" bottom: "pool" top: "fit"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "fit" bottom: "targets" top: "loss" }
layer { name: "s" type: "Silence" bottom: "label" }
"#;
    std::fs::write(t.path().join("net.prototxt"), net_text(&images, &out, body)).unwrap();
    std::fs::write(
        t.path().join("solver.prototxt"),
        "net: \"net.prototxt\"\nbase_lr: 0.01\nmomentum: 0.9\nlr_policy: \"fixed\"\nmax_iter: 60\nrandom_seed: 7\nsolver_mode: CPU\n",
    )
    .unwrap();
    let mut s = common::solver_in(t.path(), "solver.prototxt", &t.path().join("snap")).unwrap();
    s.set_snapshot_after_train(false);
    s.solve().unwrap();
    let losses: Vec<f32> = s.trajectory.iter().map(|&(_, l)| l).collect();
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    let (first, last) = (mean(&losses[..6]), mean(&losses[losses.len() - 6..]));
    assert!(last < 0.5 * first, "loss {first} -> {last}");
}

#[test]
fn missing_or_malformed_targets_are_errors_that_write_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (images, csv) = images_and_targets(t.path());
    let out = t.path().join("targets_lmdb");
    let run = |csv: &Path, extra: &[&str]| {
        let mut args = vec![
            "targets-lmdb",
            images.to_str().unwrap(),
            csv.to_str().unwrap(),
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        common::run(t.path(), &args)
    };
    // An image without targets names the image.
    let text = std::fs::read_to_string(&csv).unwrap();
    let short = t.path().join("short.csv");
    std::fs::write(&short, text.replace("animal/cat.jpg,0,0,0.5\n", "")).unwrap();
    let (ok, _, err) = run(&short, &[]);
    assert!(
        !ok && err.contains("has no targets for 'animal/cat.jpg'"),
        "{err}"
    );
    assert!(!out.exists());
    // A ragged row names its line.
    let ragged = t.path().join("ragged.csv");
    std::fs::write(&ragged, text.replacen(",0.5\n", "\n", 1)).unwrap();
    let (ok, _, err) = run(&ragged, &[]);
    assert!(
        !ok && err.contains("ragged.csv:3: has 3 values where the rows above have 2"),
        "{err}"
    );
    // An existing output needs --force.
    assert!(run(&csv, &[]).0);
    let (ok, _, err) = run(&csv, &[]);
    assert!(!ok && err.contains("--force"), "{err}");
    assert!(run(&csv, &["--force"]).0);
}
