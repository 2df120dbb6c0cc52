//! The whole recipe end to end against a local server: assemble (real CSV and
//! selection, images from the fixtures), compute-mean, the Flickr Style
//! `train_val.prototxt`/`solver.prototxt` rewritten to that data, fine-tuning
//! from a CaffeNet-shaped caffemodel, snapshots, an exact resume and the
//! closing evaluation; and the same pipeline on a folder-per-class dataset.
//!
//! The recipe's fc6 and fc7 are narrowed from 4096 to [`SLIM`] outputs (every
//! layer and its wiring otherwise Caffe's): a snapshot then takes 20 MB rather
//! than 230, so the many these tests write fit a small CI disk, and they train
//! faster. Full-width CaffeNet is trained against Caffe by
//! `scripts/caffe-golden/crosscheck.sh`.
mod common;
use common::http::{Reply, Server};
use common::{bin, caffe_ref, fixture, run as run_in};
use flickr_style::caffe::model::read_net_prototxt;
use flickr_style::caffe::proto::NetParameter;
use flickr_style::caffe::proto::Phase;
use flickr_style::pipeline::flickr_csv::{read_csv, select};
use flickr_style::train::commands::synthetic_inputs;
use flickr_style::train::layers::BuildContext;
use flickr_style::train::net::Net;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The outputs of fc6 and fc7 in the tests' CaffeNet (Caffe's: 4096).
const SLIM: u32 = 128;

/// Narrows a CaffeNet-shaped net's fc6 and fc7 to [`SLIM`] outputs.
fn slim(net: &mut NetParameter) {
    let mut narrowed = 0;
    for l in &mut net.layer {
        if l.name() == "fc6" || l.name() == "fc7" {
            l.inner_product_param.as_mut().unwrap().num_output = Some(SLIM);
            narrowed += 1;
        }
    }
    assert_eq!(narrowed, 2, "CaffeNet has fc6 and fc7");
}

/// Caffe's Flickr Style recipe (train_val and solver) with a slim CaffeNet,
/// written under `dir`.
fn slim_recipe(dir: &Path) -> PathBuf {
    let caffes = caffe_ref().join("models/finetune_flickr_style");
    let recipe = dir.join("recipe");
    std::fs::create_dir_all(&recipe).unwrap();
    let mut net = read_net_prototxt(&caffes.join("train_val.prototxt")).unwrap();
    slim(&mut net);
    std::fs::write(
        recipe.join("train_val.prototxt"),
        flickr_style::caffe::prototxt::to_string(&net),
    )
    .unwrap();
    std::fs::copy(
        caffes.join("solver.prototxt"),
        recipe.join("solver.prototxt"),
    )
    .unwrap();
    recipe
}

/// A slim CaffeNet-shaped caffemodel (fc8 with 1000 outputs) with seeded
/// random weights.
fn caffenet_caffemodel(path: &Path) {
    let mut def =
        read_net_prototxt(&caffe_ref().join("models/bvlc_reference_caffenet/train_val.prototxt"))
            .unwrap();
    slim(&mut def);
    synthetic_inputs(&mut def).unwrap();
    for l in &mut def.layer {
        if let Some(p) = &mut l.input_param {
            p.shape[0].dim[0] = 1;
            if p.shape.len() > 1 {
                p.shape[1].dim[0] = 1;
            }
        }
    }
    let ctx = BuildContext::cpu(".", 3, Phase::Train);
    let net = Net::new(&def, &ctx, None).unwrap();
    let mut model = net.to_proto(&def).unwrap();
    // Zero biases (CaffeNet's from-scratch fillers use 1) keep the random
    // features small, as pretrained ones are, so fine-tuning is stable.
    for l in &mut model.layer {
        if let Some(b) = l.blobs.get_mut(1) {
            b.data.iter_mut().for_each(|v| *v = 0.0);
        }
    }
    flickr_style::caffe::write_binary(path, &model).unwrap();
}

fn pipeline(dir: &Path, server: &Server, weights: &Path, extra: &[&str]) -> (bool, String) {
    let csv = caffe_ref().join("flickr_style/flickr_style.csv.gz");
    let recipe = slim_recipe(dir);
    let out = Command::new(bin())
        .args([
            "pipeline", "--images", "12", "--seed", "831486", "--out", "data",
        ])
        .args([
            "--csv",
            csv.to_str().unwrap(),
            "--mirror",
            &server.base,
            "--recipe",
            recipe.to_str().unwrap(),
        ])
        .args([
            "--weights",
            weights.to_str().unwrap(),
            "--batch-size",
            "4",
            "--max-iter",
            "10",
        ])
        .args([
            "--test-iter",
            "1",
            "--test-interval",
            "5",
            "--snapshot",
            "5",
            "--metrics",
            "metrics.jsonl",
        ])
        .args(extra)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn flickr_recipe_trains_snapshots_and_resumes_exactly() {
    let t = tempfile::tempdir().unwrap();
    let weights = t.path().join("caffenet.caffemodel");
    caffenet_caffemodel(&weights);

    let rows = select(
        &read_csv(&caffe_ref().join("flickr_style/flickr_style.csv.gz")).unwrap(),
        831486,
        12,
        0,
    );
    let images: Vec<Vec<u8>> = std::fs::read_to_string(fixture("images/list.txt"))
        .unwrap()
        .lines()
        .map(|l| std::fs::read(fixture("images").join(l.rsplit_once(' ').unwrap().0)).unwrap())
        .collect();
    let server = Server::start();
    for (i, r) in rows.iter().enumerate() {
        let rest = r.image_url.split_once("://").unwrap().1;
        server.route(
            &rest[rest.find('/').unwrap()..],
            vec![Reply::ok(images[i].clone())],
        );
    }

    // Flickr Style has no samples to measure: refused before any download.
    let (ok, err) = pipeline(t.path(), &server, &weights, &["--measure"]);
    assert!(
        !ok && err.contains("--measure") && err.contains("--folders"),
        "{err}"
    );
    assert!(!t.path().join("data").exists());
    let (ok, err) = pipeline(t.path(), &server, &weights, &[]);
    assert!(ok, "{err}");
    assert!(
        err.contains("Ignoring source layer fc8"),
        "the renamed fc8_flickr starts from its filler: {err}"
    );
    let data = t.path().join("data");
    for f in [
        "train.txt",
        "test.txt",
        "mean.binaryproto",
        "train_val.prototxt",
        "solver.prototxt",
        "evaluation/report.md",
        "evaluation/confusion.csv",
        "evaluation/training.svg",
    ] {
        assert!(data.join(f).exists(), "{f}");
    }
    // Caffe's recipe says solver_mode: GPU; the rewritten solver names the
    // device this run used (no --gpu: the CPU).
    let solver = std::fs::read_to_string(data.join("solver.prototxt")).unwrap();
    assert!(solver.contains("solver_mode: CPU"), "{solver}");
    assert!(err.contains("Using CPU"), "{err}");
    let snap = data.join("snapshots");
    assert!(snap
        .join("finetune_flickr_style_iter_5.caffemodel")
        .exists());
    assert!(snap
        .join("finetune_flickr_style_iter_10.solverstate")
        .exists());
    let losses = common::train_losses(&t.path().join("metrics.jsonl"));
    assert_eq!(losses.len(), 10);
    let first: f64 = losses[..3].iter().sum::<f64>() / 3.0;
    let last: f64 = losses[7..].iter().sum::<f64>() / 3.0;
    assert!(last < first, "loss decreases: {losses:?}");

    // Everything is up to date: a rerun trains nothing.
    let (ok, err) = pipeline(t.path(), &server, &weights, &[]);
    assert!(ok, "{err}");
    assert!(err.contains("already trained"), "{err}");

    // Lose the last snapshot: the rerun resumes from iteration 5 and ends
    // with the very same weights.
    let final_model = snap.join("finetune_flickr_style_iter_10.caffemodel");
    let before = std::fs::read(&final_model).unwrap();
    std::fs::remove_file(&final_model).unwrap();
    std::fs::remove_file(snap.join("finetune_flickr_style_iter_10.solverstate")).unwrap();
    std::fs::remove_file(snap.join("finetune_flickr_style_iter_10.solverstate.resume.json"))
        .unwrap();
    let (ok, err) = pipeline(t.path(), &server, &weights, &[]);
    assert!(ok, "{err}");
    assert!(err.contains("resuming from"), "{err}");
    assert_eq!(
        std::fs::read(&final_model).unwrap(),
        before,
        "resumed training is exact"
    );
}

#[test]
fn folder_dataset_trains_with_one_output_per_class_and_ends_with_a_report() {
    // The fixture photos sit in one folder per class (animal, object,
    // science, vehicle: 6 each), as a zooplankton collection would.
    let t = tempfile::tempdir().unwrap();
    let weights = t.path().join("caffenet.caffemodel");
    caffenet_caffemodel(&weights);
    let recipe = slim_recipe(t.path());
    let run = |extra: &[&str]| {
        let out = Command::new(bin())
            .args(["pipeline", "--folders", fixture("images").to_str().unwrap()])
            .args(extra)
            .args(["--recipe", recipe.to_str().unwrap()])
            .args(["--weights", weights.to_str().unwrap()])
            .args([
                "--test-fraction",
                "0.34",
                "--seed",
                "5",
                "--batch-size",
                "4",
            ])
            .args(["--max-iter", "4", "--test-iter", "1", "--snapshot", "4"])
            .current_dir(t.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run(&[]);
    assert!(ok, "{err}");
    assert!(
        err.contains("4 classes, 16 train and 8 test images"),
        "{err}"
    );
    let data = t.path().join("data/images");
    assert_eq!(
        std::fs::read_to_string(data.join("labels.txt")).unwrap(),
        "animal\nobject\nscience\nvehicle\n"
    );
    // The deploy net beside it, for Caffe or OpenCV: an Input layer and a
    // Softmax on the classifier.
    let deploy = read_net_prototxt(&data.join("deploy.prototxt")).unwrap();
    assert_eq!(deploy.layer[0].r#type(), "Input");
    let prob = deploy.layer.last().unwrap();
    assert_eq!(
        (prob.r#type(), prob.bottom[0].as_str()),
        ("Softmax", "fc8_flickr")
    );
    // The classifier has one output per class folder (Caffe's recipe says 20).
    let net = read_net_prototxt(&data.join("train_val.prototxt")).unwrap();
    let fc8 = net.layer.iter().find(|l| l.name() == "fc8_flickr").unwrap();
    assert_eq!(fc8.inner_product_param.as_ref().unwrap().num_output(), 4);
    assert!(data.join("snapshots/finetune_iter_4.caffemodel").exists());
    // The report covers the 8 test images once, named by class.
    let report = std::fs::read_to_string(data.join("evaluation/report.md")).unwrap();
    assert!(report.contains("| 3 | vehicle | 2 |"), "{report}");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data.join("evaluation/metrics.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["images"], 8);
    let predictions = std::fs::read_to_string(data.join("evaluation/predictions.csv")).unwrap();
    assert_eq!(predictions.lines().count(), 9);
    assert!(
        // The lists' paths, with `/` on every platform.
        predictions.contains(&format!("{}/", common::slashed(&fixture("images")))),
        "{predictions}"
    );
    assert!(err.contains("8 test images: accuracy"), "{err}");
    // The run names the report's threshold for 95% accuracy, when it
    // leaves some images to a person.
    let report = std::fs::read_to_string(data.join("evaluation/report.md")).unwrap();
    let line = report
        .lines()
        .find_map(|l| l.strip_prefix("- 95% accuracy: threshold "));
    let hint = err
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("for 95% accuracy, classify with --threshold ")
        })
        .and_then(|l| l.split(':').next());
    match line {
        Some(l) if !l.ends_with(" 0.0% go to a person.") => {
            assert_eq!(hint, l.split_whitespace().next(), "{err}")
        }
        _ => assert_eq!(hint, None, "{err}"),
    }
    // Late fusion of the test images' sizes, as the run suggests: the
    // evaluation's image names join samples.csv's paths.
    let hint = err
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("what the images' original sizes add: flickr-style ")
        })
        .expect("a fuse hint");
    let mut args: Vec<String> = hint.split_whitespace().map(String::from).collect();
    let (probabilities, samples) = (args[1].clone(), args[3].clone());
    args.extend(["--folds", "2", "--out", "fusion"].map(String::from));
    let out = Command::new(bin())
        .args(&args)
        .current_dir(t.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Late fusion on 8 images, 4 classes, 2-fold"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(t.path().join("fusion/fused.csv"))
            .unwrap()
            .lines()
            .count(),
        9
    );
    // The closing hint classifies new images with the trained net, named.
    let hint = err
        .lines()
        .find_map(|l| l.strip_prefix("Classify new images with: flickr-style "))
        .expect("a classify hint");
    let mut args: Vec<String> = hint.split_whitespace().map(String::from).collect();
    assert_eq!(args.pop().as_deref(), Some("IMAGES_OR_FOLDERS"));
    args.push(fixture("images/vehicle").display().to_string());
    let out = Command::new(bin())
        .args(&args)
        .current_dir(t.path())
        .output()
        .unwrap();
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(csv.lines().count(), 7, "{csv}");
    assert!(
        csv.lines()
            .skip(1)
            .all(|r| ["animal", "object", "science", "vehicle"]
                .iter()
                .any(|c| r.contains(&format!(",{c},")))),
        "{csv}"
    );
    // The explain hint maps the test images the net gets wrong.
    let hint = err
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "See where the net looks in the test images it gets wrong (heat maps) with: flickr-style ",
            )
        })
        .expect("an explain hint");
    let args_x: Vec<String> = hint.split_whitespace().map(String::from).collect();
    let out = Command::new(bin())
        .args(&args_x)
        .current_dir(t.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let at = |flag: &str| &args_x[args_x.iter().position(|a| a == flag).unwrap() + 1];
    let tested = std::fs::read_to_string(t.path().join(at("--list")))
        .unwrap()
        .lines()
        .count();
    let table = std::fs::read_to_string(t.path().join(at("--out")).join("explain.csv")).unwrap();
    let wrong = table.lines().count() - 1;
    assert!(
        said.contains(&format!("{wrong} mistakes among {tested} images")),
        "{said}"
    );
    // Named classes; the one given is never the true one.
    for row in table.lines().skip(1) {
        let f: Vec<&str> = row.split(',').collect();
        assert_ne!(f[3], f[9], "{row}");
        assert!(f[3].parse::<usize>().is_err(), "{row}");
    }
    // The same with the fused model that `fuse --out` fitted: sizes only,
    // so no samples file is needed.
    let out = Command::new(bin())
        .args(&args)
        .args(["--fusion", "fusion/fusion.json"])
        .current_dir(t.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 7);
    // The objects' shape and texture, as the run suggests: measure, fuse
    // --measured, and classify measuring each new image itself.
    let hint = err
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("(their shapes and textures too: flickr-style ")
        })
        .and_then(|l| l.strip_suffix(", then add --measured; or rerun with --measure)"))
        .expect("a measure hint");
    let (ok, _, e) = run_in(t.path(), &hint.split_whitespace().collect::<Vec<_>>());
    assert!(ok && e.contains("measured 24 images"), "{e}");
    assert!(data.join("measures.csv").exists());
    let (ok, stdout, e) = run_in(
        t.path(),
        &[
            "fuse",
            &probabilities,
            "--samples",
            &samples,
            "--measured",
            "--folds",
            "2",
            "--out",
            "fusion_m",
        ],
    );
    assert!(ok, "{e}");
    assert!(stdout.contains("m_glcm_entropy"), "{stdout}");
    let mut measured_args: Vec<&str> = args.iter().map(String::as_str).collect();
    measured_args.extend(["--fusion", "fusion_m/fusion.json"]);
    let (ok, stdout, e) = run_in(t.path(), &measured_args);
    assert!(ok, "{e}");
    assert_eq!(stdout.lines().count(), 7);

    // A rerun redoes nothing: the lists are unchanged, so the mean, the
    // training and the report stay as they are.
    let mean_time = std::fs::metadata(data.join("mean.binaryproto"))
        .unwrap()
        .modified()
        .unwrap();
    // With --measure, the measurements made above are up to date too, and
    // the closing fuse command uses them.
    let (ok, err) = run(&["--measure"]);
    assert!(ok, "{err}");
    assert!(err.contains("compute-mean: up to date"), "{err}");
    assert!(err.contains("measure: up to date"), "{err}");
    assert!(err.contains("already trained"), "{err}");
    assert!(err.contains("evaluate: up to date"), "{err}");
    assert!(
        err.lines()
            .any(|l| l.contains("flickr-style fuse") && l.ends_with(" --measured")),
        "{err}"
    );
    assert_eq!(
        std::fs::metadata(data.join("mean.binaryproto"))
            .unwrap()
            .modified()
            .unwrap(),
        mean_time
    );

    // Test-time views reuse the trained weights and report beside the plain
    // evaluation.
    let (ok, err) = run(&["--tta", "mirror"]);
    assert!(ok, "{err}");
    assert!(err.contains("already trained"), "{err}");
    // New images are scored the same way, so a fusion model fitted on this
    // evaluation applies to them.
    assert!(err.contains(" --tta mirror IMAGES_OR_FOLDERS"), "{err}");
    let report = std::fs::read_to_string(data.join("evaluation_tta_mirror/report.md")).unwrap();
    assert!(report.contains("averaged over 2 views"), "{report}");
    assert!(data.join("evaluation/report.md").exists());
    let (ok, err) = run(&["--tta", "affine:3"]);
    assert!(ok, "{err}");
    let report = std::fs::read_to_string(data.join("evaluation_tta_affine3/report.md")).unwrap();
    assert!(
        report.contains("the image and 2 quasi-random affine warps"),
        "{report}"
    );

    // A class-weighted loss: the recipe's SoftmaxWithLoss becomes an
    // InfogainLoss reading H made from train.txt (4 images per class here,
    // so every weight is 1), trained and evaluated under its own tag.
    let (ok, err) = run(&["--class-weights", "0.5"]);
    assert!(ok, "{err}");
    assert!(err.contains("class-weighted loss (alpha 0.5)"), "{err}");
    let net = read_net_prototxt(&data.join("train_val.prototxt")).unwrap();
    let loss = net.layer.iter().find(|l| l.name() == "loss").unwrap();
    assert_eq!(loss.r#type(), "InfogainLoss");
    let h_path = loss.infogain_loss_param.as_ref().unwrap().source();
    assert!(h_path.ends_with("infogain_cw0.5.binaryproto"), "{h_path}");
    let h: flickr_style::caffe::proto::BlobProto =
        flickr_style::caffe::read_binary(Path::new(h_path), "H").unwrap();
    assert_eq!(h.dims(), vec![1, 1, 4, 4]);
    let eye: Vec<f32> = (0..16)
        .map(|i| if i % 5 == 0 { 1.0 } else { 0.0 })
        .collect();
    assert_eq!(h.values(), eye);
    for f in [
        "snapshots/finetune_cw0.5_iter_4.caffemodel",
        "evaluation_cw0.5/report.md",
    ] {
        assert!(data.join(f).exists(), "{f}");
    }

    // A linear probe: only the classifier trains, on the saved features of
    // CaffeNet's fc7, under its own tag; its whole net scores the report.
    let (ok, err) = run(&["--probe", "--class-weights", "0.5"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("trained fc8_flickr on fc7 of 16 training images"),
        "{err}"
    );
    // The printed command fine-tunes the whole net from the probe's
    // classifier, into snapshots of its own.
    let hint = err
        .lines()
        .find_map(|l| l.split_once("flickr-style finetune "))
        .map(|(_, args)| args.split(' ').collect::<Vec<_>>())
        .expect("a fine-tuning command");
    let (ok, _, ft_err) = common::run(t.path(), &[&["finetune"], &hint[..]].concat());
    assert!(ok, "{ft_err}");
    assert!(data
        .join("snapshots/finetune_cw0.5_probe_iter_4.caffemodel")
        .exists());
    let probe = data.join("probe_cw0.5");
    for f in [
        "probe.caffemodel",
        "classifier_iter_4.caffemodel",
        "train_features/fc7.npy",
        "test_features/fc7_lmdb/data.mdb",
    ] {
        assert!(probe.join(f).exists(), "{f}");
    }
    let head = read_net_prototxt(&probe.join("probe_net.prototxt")).unwrap();
    let kinds: Vec<&str> = head.layer.iter().map(|l| l.r#type()).collect();
    assert_eq!(
        kinds,
        ["Data", "Data", "InnerProduct", "Accuracy", "InfogainLoss"]
    );
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data.join("evaluation_cw0.5_probe/metrics.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["images"], 8);
    let (ok, err) = run(&["--probe", "--augment", "plankton"]);
    assert!(!ok && err.contains("--augment"), "{err}");
    // With --rotate90 the probe trains on each image's eight flips and turns.
    let (ok, err) = run(&["--probe", "--rotate90"]);
    assert!(ok, "{err}");
    assert!(err.contains("in their eight flips and turns"), "{err}");
    assert!(err.contains("--rotate90"), "{err}");
    let index =
        std::fs::read_to_string(data.join("probe_rot90/train_features/images.csv")).unwrap();
    let rows = index.lines().count() - 1;
    assert!(rows > 0 && rows % 8 == 0, "{rows}");
    assert_eq!(index.matches("#mirror+rot90").count(), rows / 8);

    // Padding to squares trains from LMDBs of padded images, with their own
    // mean, beside the unpadded outputs rather than over them.
    let (ok, err) = run(&["--pad-square", "border"]);
    assert!(ok, "{err}");
    assert!(err.contains("padded to squares"), "{err}");
    let deploy = std::fs::read_to_string(data.join("deploy.prototxt")).unwrap();
    assert!(
        deploy.contains("padded with each image's edge colour"),
        "{deploy}"
    );
    for f in [
        "mean_padded.binaryproto",
        "train_padded_lmdb/data.mdb",
        "test_padded_lmdb/data.mdb",
        "snapshots/finetune_padded_iter_4.caffemodel",
        "evaluation_padded/report.md",
        "mean.binaryproto",
        "evaluation/report.md",
    ] {
        assert!(data.join(f).exists(), "{f}");
    }
    let net = read_net_prototxt(&data.join("train_val.prototxt")).unwrap();
    assert_eq!(net.layer[0].r#type(), "Data");
    assert!(net.layer[0]
        .data_param
        .as_ref()
        .unwrap()
        .source()
        .ends_with("train_padded_lmdb"));

    // Gray: one-channel LMDBs and mean, CaffeNet's conv1 summed over its
    // input channels, and a one-channel deploy net.
    let (ok, err) = run(&["--gray", "--lmdb"]);
    assert!(ok, "{err}");
    assert!(err.contains("gray weights: conv1 96 3 11 11"), "{err}");
    let mean: flickr_style::caffe::proto::BlobProto =
        flickr_style::caffe::read_binary(&data.join("mean_gray.binaryproto"), "mean").unwrap();
    assert_eq!(mean.dims(), vec![1, 1, 256, 256]);
    let net = read_net_prototxt(&data.join("train_val.prototxt")).unwrap();
    let conv1 = net.layer.iter().find(|l| l.name() == "conv1").unwrap();
    assert_eq!(conv1.param[0].lr_mult(), 3.0);
    let gray_weights =
        flickr_style::caffe::model::read_caffemodel(&data.join("caffenet_gray.caffemodel"))
            .unwrap();
    let w = gray_weights
        .layer
        .iter()
        .find(|l| l.name() == "conv1")
        .unwrap();
    assert_eq!(w.blobs[0].dims(), vec![96, 1, 11, 11]);
    let deploy = read_net_prototxt(&data.join("deploy.prototxt")).unwrap();
    let shape = &deploy.layer[0].input_param.as_ref().unwrap().shape[0].dim;
    assert_eq!(shape[1], 1, "{shape:?}");
    for f in [
        "train_gray_lmdb/data.mdb",
        "snapshots/finetune_gray_iter_4.caffemodel",
        "evaluation_gray/report.md",
    ] {
        assert!(data.join(f).exists(), "{f}");
    }

    // Cyclic pooling: the slice before conv1, the pool before fc6, trained
    // from CaffeNet's weights as they are, under its own tag.
    let (ok, err) = run(&["--cyclic"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("cyclic pooling: the layers from 'data' to 'pool5'"),
        "{err}"
    );
    let net = read_net_prototxt(&data.join("train_val.prototxt")).unwrap();
    let conv1 = net.layer.iter().find(|l| l.name() == "conv1").unwrap();
    assert_eq!(conv1.bottom, ["data_turns"]);
    let deploy = std::fs::read_to_string(data.join("deploy.prototxt")).unwrap();
    assert!(
        deploy.contains("Caffe and OpenCV cannot run this net"),
        "{deploy}"
    );
    // Every variant's report, side by side at the end of the run and by `compare`.
    // Paths as this platform joins them (`data\images` on Windows).
    let shown = Path::new("data").join("images");
    assert!(
        err.contains(&format!("reports in {} side by side", shown.display())),
        "{err}"
    );
    let (ok, out, err) = common::run(t.path(), &["compare", "data/images", "--by", "log-loss"]);
    assert!(ok, "{err}");
    let given = Path::new("data/images");
    for tag in [
        "evaluation",
        "evaluation_gray",
        "evaluation_cyclic",
        "evaluation_tta_affine3",
        "evaluation_cw0.5_probe",
        "evaluation_rot90_probe",
    ] {
        let row = format!("{} |", given.join(tag).display());
        assert!(out.contains(&row), "{tag}: {out}");
    }
    let rows = format!("| {}", given.join("").display());
    assert_eq!(
        out.lines().filter(|l| l.starts_with(&rows)).count(),
        9,
        "{out}"
    );
    for f in [
        "snapshots/finetune_cyclic_iter_4.caffemodel",
        "evaluation_cyclic/report.md",
    ] {
        assert!(data.join(f).exists(), "{f}");
    }
}

#[test]
fn manifest_dataset_trains_on_the_split_it_gives() {
    // The fixture photos listed in a TSV manifest whose set column holds out
    // each class's first two images; classes named by their folder.
    let t = tempfile::tempdir().unwrap();
    let weights = t.path().join("caffenet.caffemodel");
    caffenet_caffemodel(&weights);
    let mut rows = String::from("path\ttaxon\tset\tobject_area\n");
    let list = std::fs::read_to_string(fixture("images/list.txt")).unwrap();
    for (i, line) in list.lines().enumerate() {
        let path = line.rsplit_once(' ').unwrap().0;
        let class = path.split('/').next().unwrap();
        let set = if i % 6 < 2 { "test" } else { "train" };
        rows += &format!(
            "{}\t{class}\t{set}\t{}\n",
            fixture("images").join(path).display(),
            100 + i
        );
    }
    let manifest = t.path().join("zoo.tsv");
    std::fs::write(&manifest, rows).unwrap();
    let recipe = slim_recipe(t.path());
    let out = Command::new(bin())
        .args(["pipeline", "--manifest", manifest.to_str().unwrap()])
        .args(["--label-column", "taxon", "--set-column", "set"])
        .args(["--recipe", recipe.to_str().unwrap()])
        .args(["--weights", weights.to_str().unwrap()])
        .args(["--batch-size", "4", "--max-iter", "2", "--test-iter", "1"])
        // Warped training images: the outputs carry the ranges' tag.
        .args(["--augment", "plankton"])
        // Each image's object measured after the import.
        .arg("--measure")
        .current_dir(t.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("4 classes, 16 train and 8 test images"),
        "{err}"
    );
    let data = t.path().join("data/zoo");
    assert_eq!(
        std::fs::read_to_string(data.join("labels.txt")).unwrap(),
        "animal\nobject\nscience\nvehicle\n"
    );
    assert!(data
        .join("snapshots/finetune_aug_plankton_iter_2.caffemodel")
        .exists());
    let report = std::fs::read_to_string(data.join("evaluation_aug_plankton/report.md")).unwrap();
    assert!(report.contains("| 1 | object | 2 |"), "{report}");
    // The manifest's other column travels into samples.csv, and the run
    // names it for fuse; the measurements are made and used.
    assert!(
        err.contains("the manifest carried into samples.csv: object_area)"),
        "{err}"
    );
    assert!(
        err.contains("measure: 24 images' size, shape and texture into"),
        "{err}"
    );
    let measures = std::fs::read_to_string(data.join("measures.csv")).unwrap();
    assert_eq!(measures.lines().count(), 25);
    assert!(
        err.lines()
            .any(|l| l.contains("flickr-style fuse") && l.ends_with(" --measured")),
        "{err}"
    );
}

#[test]
fn caffenet_is_fetched_from_weights_url_and_checked_before_training() {
    // Without --weights the pipeline downloads CaffeNet (here from a local
    // --weights-url) and verifies its SHA-1: a file that is not CaffeNet
    // stops the run at that stage, named, before any training.
    let t = tempfile::tempdir().unwrap();
    let recipe = slim_recipe(t.path());
    let server = Server::start();
    server.route(
        "/bvlc_reference_caffenet.caffemodel",
        vec![Reply::ok(b"not caffenet".to_vec())],
    );
    let out = Command::new(bin())
        .args(["pipeline", "--folders", fixture("images").to_str().unwrap()])
        .args(["--recipe", recipe.to_str().unwrap()])
        .args([
            "--weights-url",
            &server.url("/bvlc_reference_caffenet.caffemodel"),
        ])
        .args(["--test-fraction", "0.34", "--max-iter", "1"])
        .current_dir(t.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !err.contains("panicked"), "{err}");
    assert!(err.contains("[4/6] download-model"), "{err}");
    assert!(err.contains("SHA-1"), "{err}");
    assert_eq!(server.hits("/bvlc_reference_caffenet.caffemodel"), 1);
    let data = t.path().join("data/images");
    assert!(!data.join("bvlc_reference_caffenet.caffemodel").exists());
    assert!(!data.join("snapshots").exists(), "nothing trained");
}

#[test]
fn a_missing_weights_file_or_a_single_class_stops_the_run_before_training() {
    let t = tempfile::tempdir().unwrap();
    let recipe = slim_recipe(t.path());
    let one = t.path().join("one/copepod");
    std::fs::create_dir_all(&one).unwrap();
    for i in 0..5 {
        std::fs::copy(
            fixture("images/animal/cat.jpg"),
            one.join(format!("{i}.jpg")),
        )
        .unwrap();
    }
    let run = |weights: &Path| {
        let out = Command::new(bin())
            .args([
                "pipeline",
                "--folders",
                "one",
                "--recipe",
                recipe.to_str().unwrap(),
            ])
            .args(["--weights", weights.to_str().unwrap()])
            .current_dir(t.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Checked first: nothing is imported.
    let (ok, err) = run(Path::new("nope.caffemodel"));
    assert!(
        !ok && err.contains("nope.caffemodel: --weights: no such file"),
        "{err}"
    );
    assert!(!t.path().join("data").exists());
    let weights = t.path().join("caffenet.caffemodel");
    caffenet_caffemodel(&weights);
    let (ok, err) = run(&weights);
    assert!(
        !ok && err.contains("one class: a classifier needs at least two"),
        "{err}"
    );
    assert!(!t.path().join("data/one/snapshots").exists());
}
