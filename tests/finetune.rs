//! `finetune` as users run it: Caffe's weight-copy semantics
//! (`../shared/caffe-ref/fixtures/finetune-semantics`), the binary's log,
//! metrics, snapshots and resume, and every bad input the issue lists.
mod common;
use common::{caffe_ref, edited_net, fixture, run, solver_in, train_tiny_cli};
use flickr_style::caffe::model::read_caffemodel;
use std::path::Path;

#[test]
fn renamed_last_layer_keeps_its_filler_and_the_rest_is_copied_exactly() {
    let t = tempfile::tempdir().unwrap();
    let dir = fixture("finetune-semantics");
    let mut s = solver_in(&dir, "solver_ft.prototxt", &t.path().join("ft")).unwrap();
    let weights = fixture("tiny-net/snapshots/tiny_iter_30.caffemodel");
    s.load_weights(std::slice::from_ref(&weights)).unwrap();
    let src = read_caffemodel(&weights).unwrap();
    for i in 0..s.train.params().len() {
        let layer = s.train.param_layer_name(i).to_string();
        let idx = s.train.params()[i].index;
        let ours = s
            .train
            .param(i)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        match src.layer.iter().find(|l| l.name() == layer) {
            Some(l) => assert_eq!(ours, l.blobs[idx].values(), "{layer} copied bit-exactly"),
            None => {
                assert_eq!(layer, "fc8_new");
                if idx == 0 {
                    let std = (ours.iter().map(|v| v * v).sum::<f32>() / ours.len() as f32).sqrt();
                    assert!(
                        (std - 0.01).abs() < 0.003,
                        "gaussian std 0.01 filler, got {std}"
                    );
                } else {
                    assert!(ours.iter().all(|&v| v == 0.0), "constant 0 bias filler");
                }
            }
        }
    }
    s.solve().unwrap();
    assert_eq!(s.trajectory.len(), 1);
}

#[test]
fn binary_logs_ignored_layers_like_caffe() {
    let t = tempfile::tempdir().unwrap();
    let dir = fixture("finetune-semantics");
    let weights = fixture("tiny-net/snapshots/tiny_iter_30.caffemodel");
    let prefix = t.path().join("ft");
    let (ok, _, err) = run(
        &dir,
        &[
            "finetune",
            "--solver",
            "solver_ft.prototxt",
            "--weights",
            weights.to_str().unwrap(),
            "--snapshot-prefix",
            prefix.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert!(err.contains("Ignoring source layer fc8\n"), "{err}");
    assert!(
        err.contains("Ignoring source layer fc8_fc8_0_split"),
        "{err}"
    );
    assert!(
        err.contains("] Iteration 0 (") && err.contains("), loss = "),
        "{err}"
    );
    assert!(err.contains("] Iteration 0, lr = 0.001"), "{err}");
    assert!(err.contains("Iteration 1, loss = "), "{err}");
}

#[test]
fn same_name_with_another_shape_is_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let dir = fixture("finetune-semantics");
    let mut s = solver_in(&dir, "solver_mismatch.prototxt", &t.path().join("m")).unwrap();
    let e = s
        .load_weights(&[fixture("tiny-net/snapshots/tiny_iter_30.caffemodel")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer 'fc8'"), "{e}");
    assert!(
        e.contains("Source param shape is 4 64 (256); target param shape is 5 64 (320)"),
        "{e}"
    );
    assert!(e.contains("rename the layer"), "{e}");
}

#[test]
fn cli_trains_snapshots_and_resumes_with_metrics() {
    let t = tempfile::tempdir().unwrap();
    let dir = fixture("tiny-net");
    let prefix = t.path().join("tiny");
    let metrics = t.path().join("m.jsonl");
    let (ok, _, err) = train_tiny_cli(&prefix, &metrics, 16);
    assert!(ok, "{err}");
    assert!(err.contains("Test net output #0: accuracy = 0.25"), "{err}");
    assert!(
        err.contains("Test net output #1: loss = 1.38594 (* 1 = 1.38594 loss)"),
        "{err}"
    );
    assert!(
        err.contains("Train net output #1: loss = 1.37753 (* 1 = 1.37753 loss)"),
        "{err}"
    );
    assert!(err.contains("Snapshotting to binary proto file"), "{err}");
    assert!(t.path().join("tiny_iter_15.caffemodel").exists());
    assert!(t.path().join("tiny_iter_16.solverstate").exists());
    let lines = std::fs::read_to_string(&metrics).unwrap();
    let train: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["phase"] == "train")
        .collect();
    assert_eq!(train.len(), 16);
    assert!((train[0]["loss"].as_f64().unwrap() - 1.3775332).abs() < 1e-5);
    // Wall-clock seconds since the start, for loss-vs-time plots and throughput.
    let elapsed: Vec<f64> = train
        .iter()
        .map(|v| v["elapsed_s"].as_f64().unwrap())
        .collect();
    assert!(
        elapsed[0] > 0.0 && elapsed.windows(2).all(|w| w[0] <= w[1]),
        "{elapsed:?}"
    );

    // Resume from a copy in another folder: learned_net is found beside the solverstate.
    let moved = t.path().join("moved");
    std::fs::create_dir(&moved).unwrap();
    for ext in ["caffemodel", "solverstate", "solverstate.resume.json"] {
        std::fs::copy(
            t.path().join(format!("tiny_iter_15.{ext}")),
            moved.join(format!("tiny_iter_15.{ext}")),
        )
        .unwrap();
    }
    std::fs::remove_file(t.path().join("tiny_iter_15.caffemodel")).unwrap();
    let (ok, _, err) = run(
        &dir,
        &[
            "finetune",
            "--solver",
            "solver.prototxt",
            "--snapshot",
            moved.join("tiny_iter_15.solverstate").to_str().unwrap(),
            "--snapshot-prefix",
            t.path().join("again").to_str().unwrap(),
            "--max-iter",
            "16",
        ],
    );
    assert!(ok, "{err}");
    assert!(err.contains("Restoring previous solver status"), "{err}");
    assert_eq!(
        std::fs::read(t.path().join("again_iter_16.caffemodel")).unwrap(),
        std::fs::read(t.path().join("tiny_iter_16.caffemodel")).unwrap()
    );
}

#[test]
fn miswired_or_oversized_nets_are_clear_errors_not_aborts() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path();
    let setup_error = |edit: &dyn Fn(String) -> String| {
        let solver = edited_net(p, edit);
        solver_in(p, solver.to_str().unwrap(), &p.join("x"))
            .err()
            .expect("the net must be refused")
            .to_string()
    };
    // Softmax given the labels too (a SoftmaxWithLoss typo).
    let e = setup_error(&|s| s.replacen("type: \"SoftmaxWithLoss\"", "type: \"Softmax\"", 1));
    assert!(
        e.contains("layer 'loss'") && e.contains("has 2 bottom(s), but Softmax layers take 1"),
        "{e}"
    );
    // propagate_down needs one flag per bottom (or none), as in Caffe.
    let e = setup_error(&|s| {
        s.replacen(
            "name: \"fc6\"",
            "name: \"fc6\"\n  propagate_down: false propagate_down: true",
            1,
        )
    });
    assert!(
        e.contains("layer 'fc6'") && e.contains("2 propagate_down values for 1 bottoms"),
        "{e}"
    );
    // Sizes past Caffe's INT_MAX elements per blob are refused before any
    // allocation (they used to abort the process).
    let e = setup_error(&|s| s.replacen("pad: 1\n", "pad: 100000\n", 1));
    assert!(
        e.contains("layer 'conv2'") && e.contains("top 'conv2' of shape [8, 32, 200013, 200013]"),
        "{e}"
    );
    let e = setup_error(&|s| s.replacen("batch_size: 8", "batch_size: 100000000", 1));
    assert!(
        e.contains("layer 'data'") && e.contains("Caffe's limit of 2147483647"),
        "{e}"
    );
    let e = setup_error(&|s| s.replacen("num_output: 64", "num_output: 2000000000", 1));
    assert!(
        e.contains("layer 'fc6'") && e.contains("parameter blob of shape [2000000000, 1568]"),
        "{e}"
    );
    // Ceil rounding with a stride past the kernel leaves pool1's last window
    // beyond its 30x30 input (Caffe pools nothing there and writes out of
    // bounds in backward).
    let e = setup_error(&|s| {
        s.replacen(
            "pooling_param { pool: MAX kernel_size: 3 stride: 2 }",
            "pooling_param { pool: MAX kernel_size: 1 stride: 2 }",
            1,
        )
    });
    assert!(
        e.contains("layer 'pool1'") && e.contains("leaves the last window past the 30x30 input"),
        "{e}"
    );
    // A batch whose blobs and layer buffers cannot fit this machine's
    // memory and swap is refused up front (it used to abort mid-run).
    let memory = flickr_style::train::memory::machine_memory();
    if memory.is_some_and(|m| m < 60 << 30) {
        let e = setup_error(&|s| s.replacen("batch_size: 8", "batch_size: 100000", 1));
        assert!(
            e.contains("Train net 'TinyCaffeNet'") && e.contains("needs at least"),
            "{e}"
        );
        assert!(e.contains("lower batch_size"), "{e}");
    }
    // Labels the net cannot predict stop the run in Accuracy too (Caffe
    // checks this only in debug builds).
    let solver = edited_net(p, |s| s.replacen("num_output: 4", "num_output: 2", 1));
    let mut s = solver_in(p, solver.to_str().unwrap(), &p.join("x")).unwrap();
    let e = s.solve().unwrap_err().to_string();
    assert!(
        e.contains("layer 'accuracy'") && e.contains("label 2 is outside 0..2"),
        "{e}"
    );
}

#[test]
fn a_failed_iteration_keeps_the_work_done_and_resumes_exactly() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path();
    // The tiny net on ImageData: image 10 of the list (in the second
    // training batch) is a truncated JPEG.
    let images = fixture("images");
    let cat = std::fs::read(images.join("animal/cat.jpg")).unwrap();
    std::fs::write(p.join("bad.jpg"), &cat[..3000]).unwrap();
    let list: Vec<String> = std::fs::read_to_string(images.join("list.txt"))
        .unwrap()
        .lines()
        .map(|l| format!("{}/{l}", images.display()))
        .collect();
    let mut lines = list.clone();
    lines[10] = format!("{} 1", p.join("bad.jpg").display());
    std::fs::write(p.join("list.txt"), lines.join("\n") + "\n").unwrap();
    let image_data = format!(
        "image_data_param {{ source: \"{}\" batch_size: 8 new_height: 64 new_width: 64 }}",
        common::slashed(&p.join("list.txt"))
    );
    let solver = edited_net(p, |mut s| {
        // Each `data_param { ... }` block becomes the image_data_param.
        while let Some(at) = s.find(" data_param {") {
            let end = at + s[at..].find('}').unwrap() + 1;
            s.replace_range(at + 1..end, &image_data);
        }
        s.replace("type: \"Data\"", "type: \"ImageData\"")
    });
    let text = std::fs::read_to_string(&solver)
        .unwrap()
        .replace("test_initialization: true", "test_initialization: false")
        .replace("max_iter: 30", "max_iter: 6");
    std::fs::write(&solver, text).unwrap();
    let mut s = solver_in(p, solver.to_str().unwrap(), &p.join("run")).unwrap();
    let e = s.solve().unwrap_err().to_string();
    assert!(e.contains("bad.jpg: cannot decode image"), "{e}");
    // Iteration 0's update was complete: it is on disk.
    let state = p.join("run_iter_1.solverstate");
    assert!(state.exists() && p.join("run_iter_1.caffemodel").exists());
    // With the image fixed, resuming matches a run that never failed.
    std::fs::write(p.join("bad.jpg"), &cat).unwrap();
    let mut resumed = solver_in(p, solver.to_str().unwrap(), &p.join("again")).unwrap();
    resumed.restore(&state).unwrap();
    resumed.solve().unwrap();
    let mut clean = solver_in(p, solver.to_str().unwrap(), &p.join("clean")).unwrap();
    clean.solve().unwrap();
    assert_eq!(resumed.trajectory[..], clean.trajectory[1..]);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path();
    // A layer without a type.
    let solver = edited_net(p, |s| s.replacen("type: \"ReLU\"", "", 1));
    let e = solver_in(p, solver.to_str().unwrap(), &p.join("x"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("layer 'relu1'") && e.contains("has no type"),
        "{e}"
    );
    // An unsupported type.
    let solver = edited_net(p, |s| s.replacen("type: \"ReLU\"", "type: \"Axpy\"", 1));
    let e = solver_in(p, solver.to_str().unwrap(), &p.join("x"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("\"Axpy\" is not supported"), "{e}");
    // Wrong blob count in the weights.
    let solver = edited_net(p, |s| {
        s.replacen(
            "num_output: 16\n",
            "num_output: 16\n    bias_term: false\n",
            1,
        )
        .replacen("  param { lr_mult: 0 decay_mult: 0 }\n", "", 1)
    });
    let mut s = solver_in(p, solver.to_str().unwrap(), &p.join("x")).unwrap();
    let e = s
        .load_weights(&[fixture("tiny-net/snapshots/init_iter_0.caffemodel")])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layer 'conv1'") && e.contains("has 2 blobs") && e.contains("expects 1"),
        "{e}"
    );
    // A corrupt snapshot.
    let good = std::fs::read(fixture("tiny-net/snapshots/tiny_iter_15.solverstate")).unwrap();
    std::fs::write(p.join("bad.solverstate"), &good[..1000]).unwrap();
    let solver = edited_net(p, |s| s);
    let mut s = solver_in(p, solver.to_str().unwrap(), &p.join("x")).unwrap();
    let e = s
        .restore(&p.join("bad.solverstate"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bad.solverstate: not a valid solverstate"),
        "{e}"
    );
    // Diverging training stops with the iteration named.
    let diverging = std::fs::read_to_string(&solver)
        .unwrap()
        .replace("base_lr: 0.01", "base_lr: 1e12");
    std::fs::write(p.join("diverge.prototxt"), diverging).unwrap();
    let mut s = solver_in(p, "diverge.prototxt", &p.join("x")).unwrap();
    s.load_weights(&[fixture("tiny-net/snapshots/init_iter_0.caffemodel")])
        .unwrap();
    let e = s.solve().unwrap_err().to_string();
    assert!(e.starts_with("iteration ") && e.contains("diverged"), "{e}");
    // An unknown solver type, and momentum where Caffe refuses it.
    for (line, want) in [
        (
            "type: \"Adamax\"",
            "unknown solver type \"Adamax\" (known types: AdaDelta",
        ),
        (
            "type: \"AdaGrad\"",
            "momentum cannot be used with AdaGrad (it is 0.9",
        ),
    ] {
        let text = std::fs::read_to_string(&solver).unwrap() + line + "\n";
        std::fs::write(p.join("other.prototxt"), text).unwrap();
        let e = solver_in(p, "other.prototxt", &p.join("x"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("other.prototxt") && e.contains(want), "{e}");
    }
}

// Sends SIGINT with kill(1); Windows delivers Ctrl-C as a console event,
// which a test cannot send to one child alone.
#[cfg(unix)]
#[test]
fn ctrl_c_snapshots_and_stops() {
    let t = tempfile::tempdir().unwrap();
    let prefix = t.path().join("cut");
    let child = std::process::Command::new(common::bin())
        .args([
            "finetune",
            "--solver",
            "solver.prototxt",
            "--weights",
            "snapshots/init_iter_0.caffemodel",
        ])
        .args([
            "--snapshot-prefix",
            prefix.to_str().unwrap(),
            "--max-iter",
            "100000",
        ])
        .current_dir(fixture("tiny-net"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until training is under way, then interrupt.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("Optimization stopped early."), "{err}");
    let saved: Vec<String> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".solverstate"))
        .collect();
    // Periodic snapshots every 15 iterations, plus the one written on stop.
    let last = saved
        .iter()
        .map(|n| {
            n.trim_start_matches("cut_iter_")
                .trim_end_matches(".solverstate")
                .parse::<usize>()
                .unwrap()
        })
        .max()
        .expect("a snapshot was written");
    let stop_line = format!(
        "Snapshotting solver state to binary proto file {}_iter_{last}.solverstate",
        prefix.display()
    );
    assert!(err.contains(&stop_line), "{err}");
    // The last snapshot resumes.
    let mut s = solver_in(
        &fixture("tiny-net"),
        "solver.prototxt",
        &t.path().join("again"),
    )
    .unwrap();
    s.restore(&t.path().join(format!("cut_iter_{last}.solverstate")))
        .unwrap();
    assert_eq!(s.iter, last);
}

#[test]
fn test_command_reproduces_caffes_iteration_30_scores() {
    // Run from elsewhere: the data paths resolve beside the prototxt.
    let t = tempfile::tempdir().unwrap();
    let model = fixture("tiny-net/train_val.prototxt");
    let weights = fixture("tiny-net/snapshots/tiny_iter_30.caffemodel");
    let (ok, out, err) = run(
        t.path(),
        &[
            "test",
            "--model",
            model.to_str().unwrap(),
            "--weights",
            weights.to_str().unwrap(),
            "--iterations",
            "3",
        ],
    );
    assert!(ok, "{err}");
    // Caffe's log at iteration 30: accuracy = 0.458333, loss = 1.138.
    assert_eq!(
        out,
        "accuracy = 0.458333\nloss = 1.138 (* 1 = 1.138 loss)\n"
    );
}

#[test]
fn data_layer_reads_encoded_datums_with_force_gray() {
    use flickr_style::caffe::proto::{NetParameter, Phase};
    use flickr_style::train::layers::BuildContext;
    use flickr_style::train::net::Net;
    let shape = |extra: &str| {
        let text = format!(
            "layer {{ name: \"data\" type: \"Data\" top: \"data\" top: \"label\" transform_param {{ {extra} }} data_param {{ source: \"lmdb/jpg256\" batch_size: 4 backend: LMDB }} }}"
        );
        let def: NetParameter =
            flickr_style::caffe::prototxt::parse(&text, Path::new("t")).unwrap();
        let ctx = BuildContext::cpu(fixture(""), 0, Phase::Train);
        let mut net = Net::new(&def, &ctx, None).unwrap();
        net.forward().unwrap();
        net.blob("data").unwrap().dims().to_vec()
    };
    assert_eq!(shape(""), vec![4, 3, 256, 256]);
    assert_eq!(shape("force_gray: true"), vec![4, 1, 256, 256]);
}

/// DummyData as Caffe defines it: per-top shapes (or legacy 4-D fields),
/// constant tops filled once, random tops redrawn every pass from the seed,
/// and the pass count restored on resume.
#[test]
fn dummy_data_layer_fills_refills_and_resumes() {
    use flickr_style::caffe::proto::{NetParameter, Phase};
    use flickr_style::train::layers::BuildContext;
    use flickr_style::train::net::Net;
    let build = |layer: &str| {
        let def: NetParameter =
            flickr_style::caffe::prototxt::parse(layer, Path::new("dummy.prototxt")).unwrap();
        let ctx = BuildContext::cpu(".", 5, Phase::Train);
        Net::new(&def, &ctx, None)
    };
    let values = |net: &Net, blob: &str| {
        net.blob(blob)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let two_tops = r#"layer { name: "d" type: "DummyData" top: "x" top: "y"
        dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 }
          data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 7 } } }"#;
    let mut a = build(two_tops).unwrap();
    a.forward().unwrap();
    assert_eq!(a.blob("x").unwrap().dims(), [2, 3]);
    assert_eq!(values(&a, "y"), vec![7.0, 7.0]);
    let first = values(&a, "x");
    assert!(first.iter().any(|v| *v != 0.0));
    a.forward().unwrap();
    let second = values(&a, "x");
    assert_ne!(first, second, "a gaussian top is redrawn every pass");
    assert_eq!(values(&a, "y"), vec![7.0, 7.0]);
    // Same seed, same draws; restoring the pass count continues the sequence.
    let mut b = build(two_tops).unwrap();
    b.forward().unwrap();
    assert_eq!(values(&b, "x"), first);
    let mut c = build(two_tops).unwrap();
    c.restore_states(&a.states());
    a.forward().unwrap();
    c.forward().unwrap();
    assert_eq!(values(&c, "x"), values(&a, "x"));

    let legacy = r#"layer { name: "d" type: "DummyData" top: "x"
        dummy_data_param { num: 2 channels: 1 height: 4 width: 4 } }"#;
    let mut l = build(legacy).unwrap();
    l.forward().unwrap();
    assert_eq!(l.blob("x").unwrap().dims(), [2, 1, 4, 4]);
    assert!(values(&l, "x").iter().all(|v| *v == 0.0));

    for (bad, want) in [
        (
            r#"layer { name: "d" type: "DummyData" top: "x" top: "y" dummy_data_param { shape { dim: 1 } data_filler { } data_filler { } data_filler { } } }"#,
            "data_filler must be given 0, 1 or 2 times, got 3",
        ),
        (
            r#"layer { name: "d" type: "DummyData" top: "x" top: "y" top: "z" dummy_data_param { shape { dim: 1 } shape { dim: 2 } } }"#,
            "shape must be given once or once per top (3 tops), got 2",
        ),
        (
            r#"layer { name: "d" type: "DummyData" top: "x" }"#,
            "needs a shape",
        ),
    ] {
        let err = build(bad).err().expect("refused").to_string();
        assert!(err.contains("layer 'd'"), "{err}");
        assert!(err.contains(want), "{err}");
    }
}

/// The two ways into a net give the same batches: ImageData decoding and
/// resizing a list itself (the transformer reads the decoded HWC pixels)
/// and Data reading to-lmdb's raw CHW datums of that list, with the same
/// random crops, mirrors and mean subtraction.
#[test]
fn image_data_feed_equals_data_feed_of_its_lmdb() {
    use flickr_style::caffe::proto::{NetParameter, Phase};
    use flickr_style::pipeline::to_lmdb::{to_lmdb, ToLmdbOptions};
    use flickr_style::train::layers::BuildContext;
    use flickr_style::train::net::Net;
    let t = tempfile::tempdir().unwrap();
    let images = fixture("images");
    let db = t.path().join("db");
    let opts = ToLmdbOptions {
        resize: Some((40, 48)), // (height, width)
        pad: None,
        ..common::fixture_to_lmdb_options(db.clone())
    };
    assert_eq!(to_lmdb(&opts).unwrap().written, 24);
    let transform = "transform_param { crop_size: 32 mirror: true mean_value: 104 mean_value: 117 mean_value: 123 scale: 0.5 }";
    let net = |source: &str| {
        let text = format!(
            "layer {{ name: \"data\" type: \"{}\" top: \"data\" top: \"label\" {transform} {source} }}",
            if source.starts_with("data_param") { "Data" } else { "ImageData" }
        );
        let def: NetParameter =
            flickr_style::caffe::prototxt::parse(&text, Path::new("t")).unwrap();
        Net::new(&def, &BuildContext::cpu(t.path(), 3, Phase::Train), None).unwrap()
    };
    let mut from_db = net(&format!(
        "data_param {{ source: \"{}\" batch_size: 10 backend: LMDB }}",
        common::slashed(&db)
    ));
    let mut from_list = net(&format!(
        "image_data_param {{ source: \"{}\" root_folder: \"{}/\" batch_size: 10 new_height: 40 new_width: 48 }}",
        common::slashed(&images.join("list.txt")),
        common::slashed(&images)
    ));
    let values = |net: &Net, blob: &str| {
        let b = net.blob(blob).unwrap();
        (
            b.dims().to_vec(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        )
    };
    // Three batches of 10 wrap around the 24 images.
    for _ in 0..3 {
        from_db.forward().unwrap();
        from_list.forward().unwrap();
        let (dims, data) = values(&from_list, "data");
        assert_eq!(dims, [10, 3, 32, 32]);
        let (db_dims, db_data) = values(&from_db, "data");
        assert_eq!(db_dims, dims);
        let differ = data.iter().zip(&db_data).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "values that differ, of {}", data.len());
        assert_eq!(values(&from_list, "label"), values(&from_db, "label"));
    }
}

/// A seeded ImageData feed (a list shuffled at every wrap, a random skip,
/// random crops and mirrors: Caffe's draws, see `tests/caffe_data.rs`)
/// restarts anywhere from its saved position, as a resumed run needs: the
/// batches after a restore are the ones the uninterrupted feed gave.
#[test]
fn a_seeded_shuffled_feed_restarts_anywhere() {
    use flickr_style::caffe::proto::{NetParameter, Phase};
    use flickr_style::train::layers::BuildContext;
    use flickr_style::train::net::Net;
    let images = fixture("images");
    let text = format!(
        "layer {{ name: \"data\" type: \"ImageData\" top: \"data\" top: \"label\" \
         transform_param {{ crop_size: 20 mirror: true }} \
         image_data_param {{ source: \"{}\" root_folder: \"{}/\" batch_size: 7 \
         new_height: 24 new_width: 28 shuffle: true rand_skip: 9 }} }}",
        common::slashed(&images.join("list.txt")),
        common::slashed(&images)
    );
    let def: NetParameter = flickr_style::caffe::prototxt::parse(&text, Path::new("t")).unwrap();
    let build = || Net::new(&def, &BuildContext::cpu(&images, 77, Phase::Train), None).unwrap();
    let batch = |net: &mut Net| {
        net.forward().unwrap();
        let get = |b: &str| {
            net.blob(b)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        (get("data"), get("label"))
    };
    // 10 batches of 7 from 24 images: three reshuffles.
    let mut net = build();
    let mut states = Vec::new();
    let mut batches = Vec::new();
    for _ in 0..10 {
        states.push(net.states());
        batches.push(batch(&mut net));
    }
    let labels: Vec<_> = batches.iter().map(|b| b.1.clone()).collect();
    assert_ne!(labels[0], labels[4], "epochs are shuffled differently");
    for k in [1, 3, 4, 7, 9] {
        let mut resumed = build();
        resumed.restore_states(&states[k]);
        for (i, want) in batches.iter().enumerate().skip(k) {
            assert!(
                batch(&mut resumed) == *want,
                "batch {i} after a restart at {k}"
            );
        }
    }
}

/// Caffe draws an ImageData skip below `rand_skip`; one past the list's end
/// is an error naming the layer and the list (Caffe aborts on a CHECK).
#[test]
fn a_rand_skip_past_the_list_is_an_error() {
    use flickr_style::caffe::proto::{NetParameter, Phase};
    use flickr_style::train::layers::BuildContext;
    use flickr_style::train::net::Net;
    let images = fixture("images");
    let text = format!(
        "layer {{ name: \"skipper\" type: \"ImageData\" top: \"data\" top: \"label\" \
         image_data_param {{ source: \"{}\" root_folder: \"{}/\" batch_size: 2 \
         new_height: 8 new_width: 8 rand_skip: 1000000 }} }}",
        common::slashed(&images.join("list.txt")),
        common::slashed(&images)
    );
    let def: NetParameter = flickr_style::caffe::prototxt::parse(&text, Path::new("t")).unwrap();
    // Seeds whose first skip draw (the layer draws nothing before it) lands
    // past the 24 images fail; the rest build.
    let mut refused = 0;
    for seed in 0..20u64 {
        let skip = flickr_style::caffe::rng::CaffeRng::new(seed as u32).next_u32() % 1_000_000;
        match Net::new(&def, &BuildContext::cpu(&images, seed, Phase::Train), None) {
            Ok(_) => assert!(skip < 24, "seed {seed}: skip {skip} built"),
            Err(e) => {
                let e = e.to_string();
                assert!(skip >= 24, "seed {seed}: {e}");
                assert!(
                    e.contains("layer 'skipper'") && e.contains("rand_skip drew"),
                    "{e}"
                );
                assert!(e.contains("list.txt has only 24"), "{e}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0);
}

/// Trains the tiny net for 4 iterations with the augmentation `flag`, and
/// checks that it changes the weights and that stopping at 2 and resuming
/// gives the very same weights: each image's draw is a function of its
/// position in the feed, like its crop and mirror.
fn augmentation_resumes_exactly_and_changes_the_run(flag: &[&str]) {
    let t = tempfile::tempdir().unwrap();
    let dir = fixture("tiny-net");
    let prefix = |name: &str| t.path().join(name).to_str().unwrap().to_string();
    let train = |name: &str, iters: &str, extra: &[&str]| {
        let p = prefix(name);
        let (ok, _, err) = run(&dir, &common::tiny_finetune_args(&p, iters, extra));
        assert!(ok, "{err}");
    };
    let model =
        |name: &str| std::fs::read(t.path().join(format!("{name}_iter_4.caffemodel"))).unwrap();
    train("augmented", "4", flag);
    train("plain", "4", &[]);
    assert_ne!(
        model("augmented"),
        model("plain"),
        "{flag:?} changes what the net sees"
    );
    train("split", "2", flag);
    let state = t.path().join("split_iter_2.solverstate");
    let mut args = vec![
        "finetune",
        "--solver",
        "solver.prototxt",
        "--snapshot",
        state.to_str().unwrap(),
        "--snapshot-prefix",
    ];
    let split = prefix("split");
    args.extend([split.as_str(), "--max-iter", "4"]);
    args.extend_from_slice(flag);
    let (ok, _, err) = run(&dir, &args);
    assert!(ok, "{err}");
    assert_eq!(model("split"), model("augmented"));
}

#[test]
fn turned_training_images_resume_exactly_and_change_the_run() {
    augmentation_resumes_exactly_and_changes_the_run(&["--rotate90"]);
}

#[test]
fn warped_training_images_resume_exactly_and_change_the_run() {
    augmentation_resumes_exactly_and_changes_the_run(&["--augment", "plankton"]);
    // Both at once, with ranges of one's own.
    augmentation_resumes_exactly_and_changes_the_run(&[
        "--rotate90",
        "--augment",
        "scale=1.2,translate=3",
    ]);
}

#[test]
fn bad_augment_specs_are_refused_before_training() {
    let dir = fixture("tiny-net");
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("x").to_str().unwrap().to_string();
    let (ok, _, err) = run(
        &dir,
        &common::tiny_finetune_args(&p, "2", &["--augment", "scale=0.5"]),
    );
    assert!(!ok && err.contains("scale must be 1 to 4"), "{err}");
    assert!(!t.path().join("x_iter_2.caffemodel").exists());
}

#[test]
fn time_reports_every_layer_of_the_phase_it_builds() {
    let net = fixture("tiny-net/train_val.prototxt");
    let net = net.to_str().unwrap();
    let t = tempfile::tempdir().unwrap();
    // TRAIN: forward and backward per layer, then the whole step.
    let (ok, out, err) = run(
        t.path(),
        &["time", "--model", net, "--synthetic", "--iterations", "2"],
    );
    assert!(ok, "{err}");
    assert!(
        out.starts_with("| layer | type | forward ms | backward ms |"),
        "{out}"
    );
    assert!(
        out.contains("| conv1 | Convolution | ") && out.contains("| loss | SoftmaxWithLoss | "),
        "{out}"
    );
    assert!(
        out.contains("Average training step (forward, backward, update): "),
        "{out}"
    );
    // The tiny net's data layer takes 8 images a pass.
    assert!(
        out.contains(", batch 8: ") && out.contains(" images/s)."),
        "{out}"
    );
    // --threads (before or after the command) sizes the CPU pool.
    let (ok, out, err) = run(
        t.path(),
        &[
            "--threads",
            "1",
            "time",
            "--model",
            net,
            "--synthetic",
            "--iterations",
            "1",
        ],
    );
    assert!(
        ok && out.contains("(1 iteration, 1 thread, batch 8: "),
        "{out}{err}"
    );
    let (ok, _, err) = run(t.path(), &["time", "--threads", "0", "--model", net]);
    assert!(!ok && err.contains("'--threads <THREADS>'"), "{err}");
    // TEST, from the fixture's LMDB: the forward pass alone.
    let (ok, out, err) = run(
        t.path(),
        &[
            "time",
            "--model",
            net,
            "--phase",
            "test",
            "--iterations",
            "2",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("| layer | type | forward ms |\n"), "{out}");
    assert!(out.contains("| accuracy | Accuracy | "), "{out}");
    assert!(!out.contains("backward"), "{out}");
    assert!(out.contains("Average Forward pass (TEST phase): "), "{out}");
    assert!(out.contains(", batch 8: "), "{out}");
    let (ok, _, err) = run(t.path(), &["time", "--model", net, "--phase", "val"]);
    assert!(
        !ok && err.contains("'val'") && err.contains("train, test"),
        "{err}"
    );
}

#[test]
fn dry_run_shows_where_each_layer_starts_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let prefix = t.path().join("snap");
    let args = |weights: &str| {
        vec![
            "finetune".to_string(),
            "--solver".into(),
            "solver.prototxt".into(),
            "--weights".into(),
            weights.into(),
            "--snapshot-prefix".into(),
            prefix.to_str().unwrap().into(),
            "--dry-run".into(),
        ]
    };
    let a = args("snapshots/init_iter_0.caffemodel");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (ok, out, err) = run(&fixture("tiny-net"), &a);
    assert!(ok, "{err}");
    for want in [
        "| conv1 | Convolution | 8x16x30x30 | 1,216 | 0, 0 (frozen) | snapshots/init_iter_0.caffemodel | no |",
        "| fc8 | InnerProduct | 8x4 | 260 | 10, 20 | snapshots/init_iter_0.caffemodel | yes |",
        "| loss | SoftmaxWithLoss | 1 |  |  |  | yes |",
        "117,636 parameters: 116,420 learn, 1,216 frozen (lr_mult 0); 117,636 copied from weights files, 0 from fillers.",
        "Schedule: 30 iterations of 8 images = 10.0 passes over the 24 training images (one every 3 \
         iterations); learning rate 0.01 from iteration 0, 0.001 from iteration 10, 0.0001 from iteration 20.",
        "every 15 iterations, 3 batches of 8, scoring each of its 24 images once.",
    ] {
        assert!(out.contains(want), "{want}\n{out}");
    }
    assert!(
        !out.contains("Warnings") && !out.contains("not in the net"),
        "{out}"
    );
    // Nothing trained, nothing written.
    assert!(!err.contains("Iteration 0"), "{err}");
    assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
    // A resume: what is left, from the snapshot's weights.
    let (ok, out, err) = run(
        &fixture("tiny-net"),
        &[
            "finetune",
            "--solver",
            "solver_resume.prototxt",
            "--snapshot",
            "snapshots/tiny_iter_15.solverstate",
            "--snapshot-prefix",
            prefix.to_str().unwrap(),
            "--dry-run",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("Schedule: 30 iterations (resuming at 15: 15 to go) of 8 images = 5.0 passes"),
        "{out}"
    );
    assert!(
        out.contains("| 1,216 | 0, 0 (frozen) | snapshots/tiny_iter_15.caffemodel | no |"),
        "{out}"
    );
    assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);

    // The classic mistakes: the classifier renamed (so it starts from its
    // filler) but frozen, and a weights file of another net.
    let dir = t.path().join("edited");
    std::fs::create_dir(&dir).unwrap();
    let solver = edited_net(&dir, |s| {
        s.replace("name: \"fc8\"", "name: \"fc8_new\"")
            .replace("lr_mult: 10 ", "lr_mult: 0 ")
            .replace("lr_mult: 20 ", "lr_mult: 0 ")
    });
    let mut other = read_caffemodel(&fixture("tiny-net/snapshots/init_iter_0.caffemodel")).unwrap();
    for l in &mut other.layer {
        l.name = Some(format!("other_{}", l.name()));
    }
    let other_path = dir.join("other.caffemodel");
    flickr_style::caffe::write_binary(&other_path, &other).unwrap();
    let weights = format!(
        "{},{}",
        fixture("tiny-net/snapshots/init_iter_0.caffemodel").display(),
        other_path.display()
    );
    let mut a = args(&weights);
    a[2] = solver.to_str().unwrap().into();
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (ok, out, err) = run(&dir, &a);
    assert!(ok, "{err}");
    for want in [
        "| fc8_new | InnerProduct | 8x4 | 260 | 0, 0 (frozen) | filler: weights gaussian std 0.01, bias constant 0 | yes |",
        "init_iter_0.caffemodel: its layers fc8 are not in the net (not used).",
        "- layer 'fc8_new' has lr_mult 0 but no weights file has a layer of that name",
        "- no layer of ",
    ] {
        assert!(out.contains(want), "{want}\n{out}");
    }
    assert!(
        out.contains("other.caffemodel matches a layer of the net"),
        "{out}"
    );
    // A real run says so too, as warnings at its start.
    let mut a = a;
    a.pop();
    a.extend(["--max-iter", "1"]);
    let (ok, _, err) = run(&dir, &a);
    assert!(ok, "{err}");
    let warned = err.lines().find(|l| l.contains("'fc8_new' has lr_mult 0"));
    assert!(warned.is_some_and(|l| l.starts_with('W')), "{err}");
}

/// The tiny net with fc7's blobs shared by `fc7b`, a second InnerProduct
/// after it (the edit of the `shared_params` case in
/// `tests/data/caffe_solvers.json`, whose trajectory is Caffe's).
fn share_fc7(net: String) -> String {
    net.replacen(
        "top: \"fc7\"\n  param { lr_mult: 1 decay_mult: 1 }\n  param { lr_mult: 2 decay_mult: 0 }",
        "top: \"fc7\"\n  param { name: \"fc7_w\" }\n  param { name: \"fc7_b\" }",
        1,
    )
    .replacen(
        "layer { name: \"relu7\" type: \"ReLU\" bottom: \"fc7\" top: \"fc7\" }",
        "layer { name: \"relu7\" type: \"ReLU\" bottom: \"fc7\" top: \"fc7\" }\n\
         layer { name: \"fc7b\" type: \"InnerProduct\" bottom: \"fc7\" top: \"fc7b\" \
         param { name: \"fc7_w\" lr_mult: 3 decay_mult: 0.5 } param { name: \"fc7_b\" lr_mult: 6 decay_mult: 0 } \
         inner_product_param { num_output: 64 weight_filler { type: \"gaussian\" std: 0.05 } } }",
        1,
    )
    .replacen("bottom: \"fc7\"\n  top: \"fc8\"", "bottom: \"fc7b\"\n  top: \"fc8\"", 1)
}

#[test]
fn shared_parameters_snapshot_resume_and_report_as_one_blob() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path();
    let solver = edited_net(p, share_fc7);
    let text = std::fs::read_to_string(&solver)
        .unwrap()
        .replace("max_iter: 30", "max_iter: 6")
        .replace("snapshot: 15", "snapshot: 3")
        .replace("test_interval: 15", "test_interval: 3");
    std::fs::write(&solver, text).unwrap();
    let init = fixture("tiny-net/snapshots/init_iter_0.caffemodel");
    let mut s = solver_in(p, solver.to_str().unwrap(), &p.join("run")).unwrap();
    s.load_weights(std::slice::from_ref(&init)).unwrap();
    assert_eq!(s.train.params().len(), 12, "fc7b's blobs are fc7's");
    s.solve().unwrap();
    // Both layers' blobs in the snapshot hold the one trained value.
    let model = read_caffemodel(&p.join("run_iter_6.caffemodel")).unwrap();
    let blobs = |name: &str| {
        let l = model.layer.iter().find(|l| l.name() == name).unwrap();
        l.blobs.iter().map(|b| b.values()).collect::<Vec<_>>()
    };
    assert_eq!(blobs("fc7"), blobs("fc7b"));
    let start = read_caffemodel(&init).unwrap();
    let fc7 = start.layer.iter().find(|l| l.name() == "fc7").unwrap();
    assert_ne!(blobs("fc7")[0], fc7.blobs[0].values(), "fc7 trained");
    // A resume from iteration 3 retraces the run exactly.
    let mut r = solver_in(p, solver.to_str().unwrap(), &p.join("again")).unwrap();
    r.restore(&p.join("run_iter_3.solverstate")).unwrap();
    r.solve().unwrap();
    assert_eq!(r.trajectory[..], s.trajectory[3..]);
    // The GPU code path (candle tensor ops, here on the CPU) tracks it.
    let mut opts = common::solver_options(p, solver.to_str().unwrap(), &p.join("ops"));
    opts.tensor_ops = true;
    let mut g = flickr_style::train::solver::Solver::new(&opts).unwrap();
    g.load_weights(std::slice::from_ref(&init)).unwrap();
    g.solve().unwrap();
    assert_eq!(g.trajectory.len(), s.trajectory.len());
    for ((it, a), (_, b)) in g.trajectory.iter().zip(&s.trajectory) {
        assert!(
            (a - b).abs() <= 1e-4 * b.abs(),
            "iteration {it}: {a} vs {b}"
        );
    }

    // The dry run counts each shared blob once and says who shares it.
    let (ok, out, err) = run(
        p,
        &[
            "finetune",
            "--solver",
            solver.to_str().unwrap(),
            "--weights",
            init.to_str().unwrap(),
            "--dry-run",
        ],
    );
    assert!(ok, "{err}");
    for want in [
        "| fc7 | InnerProduct | 8x64 | 4,160 | 3, 6 | ",
        "| fc7b | InnerProduct | 8x64 |  | 3, 6 | shares the weights of 'fc7', the bias of 'fc7' | yes |",
        "117,636 parameters: 116,420 learn",
    ] {
        assert!(out.contains(want), "{want}\n{out}");
    }
}

#[test]
fn shared_parameter_mistakes_are_named() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path();
    let error = |edit: &dyn Fn(String) -> String| {
        let solver = edited_net(p, edit);
        solver_in(p, solver.to_str().unwrap(), &p.join("x"))
            .err()
            .expect("the net is refused")
            .to_string()
    };
    let name = |net: String, layer: &str, weights: &str, bias: &str| {
        net.replacen(
            &format!(
                "top: \"{layer}\"\n  param {{ lr_mult: 1 decay_mult: 1 }}\n  param {{ lr_mult: 2 decay_mult: 0 }}"
            ),
            &format!("top: \"{layer}\"\n  param {{ {weights} }}\n  param {{ {bias} }}"),
            1,
        )
    };
    // fc6's weights (64 x 1568) and fc7's (64 x 64) under one name.
    let e = error(&|n| {
        let n = name(n, "fc6", "name: \"w\"", "lr_mult: 2");
        name(n, "fc7", "name: \"w\"", "lr_mult: 2")
    });
    assert!(
        e.contains("layer 'fc7'")
            && e.contains("cannot share param 'w' owned by layer 'fc6': shape mismatch")
            && e.contains("64 1568 (100352)")
            && e.contains("64 64 (4096)"),
        "{e}"
    );
    // PERMISSIVE compares counts: these differ too.
    let e = error(&|n| {
        let n = name(n, "fc6", "name: \"w\"", "lr_mult: 2");
        name(n, "fc7", "name: \"w\" share_mode: PERMISSIVE", "lr_mult: 2")
    });
    assert!(e.contains("count mismatch"), "{e}");
    // Their biases (64 each) with two learning rates.
    let e = error(&|n| {
        let n = name(n, "fc6", "lr_mult: 1", "name: \"b\" lr_mult: 2");
        name(n, "fc7", "lr_mult: 1", "name: \"b\" lr_mult: 3")
    });
    assert!(
        e.contains("layer 'fc7'")
            && e.contains("shared param 'b' has mismatched lr_mult: 3 here, 2"),
        "{e}"
    );
    // BatchNorm rewrites its blobs in the forward pass: not shareable.
    let e = error(&|n| {
        n.replacen(
            "layer { name: \"relu7\"",
            "layer { name: \"bn7\" type: \"BatchNorm\" bottom: \"fc7\" top: \"fc7\" \
             param { name: \"m\" lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 } }\n\
             layer { name: \"relu7\"",
            1,
        )
    });
    assert!(
        e.contains("layer 'bn7'") && e.contains("BatchNorm layers' blobs cannot be shared"),
        "{e}"
    );
}

#[test]
fn hdf5_snapshots_hold_the_same_weights_and_resume_exactly() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path();
    let init = fixture("tiny-net/snapshots/init_iter_0.caffemodel");
    // The tiny net with fc7 shared by fc7b: an HDF5 snapshot leaves the
    // sharer's blobs out, as Caffe's does.
    let solver = edited_net(p, share_fc7);
    let text = std::fs::read_to_string(&solver)
        .unwrap()
        .replace("max_iter: 30", "max_iter: 6")
        .replace("snapshot: 15", "snapshot: 3");
    std::fs::write(&solver, &text).unwrap();
    let h5_solver = p.join("solver_h5.prototxt");
    std::fs::write(&h5_solver, format!("{text}snapshot_format: HDF5\n")).unwrap();
    let train = |solver: &Path, prefix: &str| {
        let mut s = solver_in(p, solver.to_str().unwrap(), &p.join(prefix)).unwrap();
        s.load_weights(std::slice::from_ref(&init)).unwrap();
        s.solve().unwrap();
        s
    };
    let proto = train(&solver, "proto");
    let h5 = train(&h5_solver, "h5");
    assert_eq!(proto.trajectory, h5.trajectory);
    assert!(
        p.join("h5_iter_6.caffemodel.h5").exists() && p.join("h5_iter_6.solverstate.h5").exists()
    );
    assert!(!p.join("h5_iter_6.caffemodel").exists());
    // The HDF5 weights are the binary proto's, fc7b's included (from fc7).
    let load = |file: &str| {
        let mut s = solver_in(p, solver.to_str().unwrap(), &p.join("x")).unwrap();
        s.load_weights(&[p.join(file)]).unwrap();
        (0..s.train.params().len())
            .map(|i| {
                s.train
                    .param(i)
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        load("h5_iter_6.caffemodel.h5"),
        load("proto_iter_6.caffemodel")
    );
    // A resume from the HDF5 solverstate retraces the run.
    let mut r = solver_in(p, h5_solver.to_str().unwrap(), &p.join("again")).unwrap();
    r.restore(&p.join("h5_iter_3.solverstate.h5")).unwrap();
    r.solve().unwrap();
    assert_eq!(r.trajectory[..], h5.trajectory[3..]);
}

#[test]
fn the_solvers_weights_lines_apply_unless_weights_or_a_snapshot_is_given() {
    let t = tempfile::tempdir().unwrap();
    let solver = t.path().join("solver.prototxt");
    let text = std::fs::read_to_string(fixture("tiny-net/solver.prototxt"))
        .unwrap()
        .replace("max_iter: 30", "max_iter: 1");
    // Two lines, the first a comma-separated pair, applied in order: the
    // last file holds every layer, so the net starts from it.
    std::fs::write(
        &solver,
        format!(
            "{text}weights: \"snapshots/init_iter_0.caffemodel,snapshots/tiny_iter_15.caffemodel\"\n\
             weights: \"snapshots/tiny_iter_30.caffemodel\"\n"
        ),
    )
    .unwrap();
    let prefix = t.path().join("s");
    let first_loss = |extra: &[&str]| {
        let mut a = vec![
            "finetune",
            "--solver",
            solver.to_str().unwrap(),
            "--snapshot-prefix",
            prefix.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        let (ok, _, err) = run(&fixture("tiny-net"), &a);
        assert!(ok, "{err}");
        let loss = err
            .lines()
            .find(|l| l.contains("Train net output #1: loss = "))
            .and_then(|l| l.split("loss = ").nth(1)?.split(' ').next())
            .unwrap_or("none")
            .to_string();
        (loss, err)
    };
    let (from_lines, err) = first_loss(&[]);
    for f in ["init_iter_0", "tiny_iter_15", "tiny_iter_30"] {
        assert!(
            err.contains(&format!("Finetuning from snapshots/{f}.caffemodel")),
            "{err}"
        );
    }
    // --weights replaces the lines: from init_iter_0, Caffe's first loss.
    let (from_flag, err) = first_loss(&["--weights", "snapshots/init_iter_0.caffemodel"]);
    assert_eq!(from_flag, "1.37753");
    assert!(!err.contains("tiny_iter_30"), "{err}");
    assert_ne!(from_lines, from_flag);
    // The lines gave the iteration-30 weights' loss.
    let (thirty, _) = first_loss(&["--weights", "snapshots/tiny_iter_30.caffemodel"]);
    assert_eq!(from_lines, thirty);
    // A snapshot drops them (at iteration 15 of 1, nothing is left to train).
    let (_, err) = first_loss(&["--snapshot", "snapshots/tiny_iter_15.solverstate"]);
    assert!(!err.contains("Finetuning from"), "{err}");
}

#[test]
fn debug_info_prints_caffes_per_layer_means() {
    // Caffe 1.0 (the bullseye chroot of scripts/caffe-golden) printed, for
    // the tiny net's first iteration from init_iter_0 with `debug_info: true`:
    //   [Forward] Layer data, top blob data data: 49.0473
    //   [Backward] Layer fc6, bottom blob conv3 diff: 1.87671e-05
    //   [Backward] Layer fc8, param blob 1 diff: 0.250053
    //   [Backward] All net params (data, diff): L1 norm = (1453.61, 93.0761); ...
    // (and lines for the Split layers it inserts, which this net has none of).
    let t = tempfile::tempdir().unwrap();
    let solver = t.path().join("solver.prototxt");
    let text = std::fs::read_to_string(fixture("tiny-net/solver.prototxt"))
        .unwrap()
        .replace("max_iter: 30", "max_iter: 1")
        .replace("test_initialization: true", "test_initialization: false");
    std::fs::write(&solver, format!("{text}debug_info: true\n")).unwrap();
    let prefix = t.path().join("s");
    let (ok, _, err) = run(
        &fixture("tiny-net"),
        &[
            "finetune",
            "--solver",
            solver.to_str().unwrap(),
            "--weights",
            "snapshots/init_iter_0.caffemodel",
            "--snapshot-prefix",
            prefix.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let lines: Vec<&str> = err.lines().collect();
    let at = |want: &str| {
        lines
            .iter()
            .position(|l| l.ends_with(want))
            .unwrap_or_else(|| panic!("no line ending in {want:?}\n{err}"))
    };
    let data = at("]     [Forward] Layer data, top blob data data: 49.0473");
    let conv3 = at("]     [Backward] Layer fc6, bottom blob conv3 diff: 1.87671e-05");
    let fc8 = at("]     [Backward] Layer fc8, param blob 1 diff: 0.250053");
    let all = lines
        .iter()
        .position(|l| l.contains("All net params (data, diff): L1 norm = (1453.61, 93.0761)"))
        .expect("the norms line");
    assert!(data < fc8 && fc8 < conv3 && conv3 < all, "{err}");
    assert!(
        lines[all].starts_with('E'),
        "Caffe logs the norms at ERROR level"
    );
    // The extra forward pass after the last update prints its lines too;
    // without debug_info there are none.
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("[Forward] Layer data, top blob data"))
            .count(),
        2
    );
    std::fs::write(&solver, &text).unwrap();
    let (ok, _, err) = run(
        &fixture("tiny-net"),
        &[
            "finetune",
            "--solver",
            solver.to_str().unwrap(),
            "--snapshot-prefix",
            prefix.to_str().unwrap(),
        ],
    );
    assert!(ok && !err.contains("[Forward]"), "{err}");
}

#[test]
fn force_backward_computes_every_gradient_as_caffe_does() {
    // Caffe 1.0 (the bullseye chroot of scripts/caffe-golden) printed, for
    // the tiny net without its Accuracy layer (Caffe aborts on a forced
    // Accuracy backward) and with `force_backward: true`, first iteration
    // from init_iter_0 with `debug_info: true`:
    //   [Backward] Layer conv1, bottom blob data diff: 8.97942e-08
    //   [Backward] Layer pool1, bottom blob conv1 diff: 4.84194e-07
    //   [Backward] Layer conv1, param blob 0 diff: 0.00715509   (lr_mult 0)
    //   [Backward] All net params (data, diff): L1 norm = (1453.61, 101.666); ...
    // Without force_backward the frozen conv1 and everything below conv2
    // take no gradient (the diff norm is 93.0761).
    let dir = fixture("tiny-net");
    let t = tempfile::tempdir().unwrap();
    let net = std::fs::read_to_string(dir.join("train_val.prototxt"))
        .unwrap()
        .replace("\"data/", &format!("\"{}/data/", common::slashed(&dir)));
    let (a, b) = (
        net.find("layer {\n  name: \"accuracy\"").unwrap(),
        net.find("layer {\n  name: \"loss\"").unwrap(),
    );
    let forced = format!("force_backward: true\n{}{}", &net[..a], &net[b..]);
    std::fs::write(t.path().join("net.prototxt"), &forced).unwrap();
    let solver = std::fs::read_to_string(dir.join("solver.prototxt"))
        .unwrap()
        .replace("train_val.prototxt", "net.prototxt")
        .replace("max_iter: 30", "max_iter: 1")
        .replace("test_initialization: true", "test_initialization: false");
    std::fs::write(
        t.path().join("solver.prototxt"),
        format!("{solver}debug_info: true\nsnapshot_after_train: false\n"),
    )
    .unwrap();
    let weights = dir.join("snapshots/init_iter_0.caffemodel");
    let args = [
        "finetune",
        "--solver",
        "solver.prototxt",
        "--weights",
        weights.to_str().unwrap(),
    ];
    let (ok, _, err) = run(t.path(), &args);
    assert!(ok, "{err}");
    for want in [
        "[Backward] Layer conv1, bottom blob data diff: 8.97942e-08",
        "[Backward] Layer pool1, bottom blob conv1 diff: 4.84194e-07",
        "[Backward] Layer conv1, param blob 0 diff: 0.00715509",
        "[Backward] Layer conv1, param blob 1 diff: 0.000221775",
        "[Backward] Layer fc6, bottom blob conv3 diff: 1.87671e-05",
    ] {
        assert!(err.lines().any(|l| l.ends_with(want)), "no {want:?}\n{err}");
    }
    assert!(err.contains("L1 norm = (1453.61, 101.666)"), "{err}");
    // The frozen conv1 computes gradients nothing uses: a warning says so.
    assert!(
        err.contains("force_backward: true, so its 1 frozen layer(s) compute gradients"),
        "{err}"
    );
    // With the Accuracy layer back (whose forced backward aborts Caffe) the
    // net trains, the Accuracy taking no gradient; the frozen conv1 stays.
    std::fs::write(
        t.path().join("net.prototxt"),
        format!("force_backward: true\n{net}"),
    )
    .unwrap();
    std::fs::write(t.path().join("solver.prototxt"), &solver).unwrap();
    let snap = t.path().join("acc");
    let mut args = args.to_vec();
    args.extend(["--snapshot-prefix", snap.to_str().unwrap()]);
    let (ok, _, err) = run(t.path(), &args);
    assert!(ok, "{err}");
    let conv1 = |path: &std::path::Path| {
        let m = flickr_style::caffe::model::read_caffemodel(path).unwrap();
        m.layer
            .into_iter()
            .find(|l| l.name() == "conv1")
            .unwrap()
            .blobs
    };
    assert_eq!(
        conv1(&t.path().join("acc_iter_1.caffemodel")),
        conv1(&weights)
    );
}

#[test]
fn debug_info_lines_come_from_every_test_pass_too() {
    // Caffe 1.0 gives its test nets the solver's debug_info: with
    // test_initialization, the tiny net's three test batches from
    // init_iter_0 printed (among others)
    //   [Forward] Layer accuracy, top blob accuracy data: 0.5    (batch 2)
    //   [Forward] Layer loss, top blob loss data: 1.39725        (batch 3)
    // before "Test net output #0: accuracy = 0.25".
    let dir = fixture("tiny-net");
    let t = tempfile::tempdir().unwrap();
    let solver = std::fs::read_to_string(dir.join("solver.prototxt"))
        .unwrap()
        .replace("max_iter: 30", "max_iter: 1");
    let file = t.path().join("solver.prototxt");
    std::fs::write(
        &file,
        format!("{solver}debug_info: true\nsnapshot_after_train: false\n"),
    )
    .unwrap();
    let weights = dir.join("snapshots/init_iter_0.caffemodel");
    let w = weights.to_str().unwrap();
    let (ok, _, err) = run(
        &dir,
        &[
            "finetune",
            "--solver",
            file.to_str().unwrap(),
            "--weights",
            w,
        ],
    );
    assert!(ok, "{err}");
    let lines: Vec<&str> = err.lines().collect();
    let at = |want: &str| lines.iter().position(|l| l.ends_with(want));
    let testing = at("Iteration 0, Testing net (#0)").expect("a test pass");
    let second = at("[Forward] Layer accuracy, top blob accuracy data: 0.5").expect(&err);
    let third = at("[Forward] Layer loss, top blob loss data: 1.39725").expect(&err);
    let output = at("Test net output #0: accuracy = 0.25").expect(&err);
    assert!(
        testing < second && second < third && third < output,
        "{err}"
    );
    // `test` prints them when the net itself says debug_info: true.
    let net = std::fs::read_to_string(dir.join("train_val.prototxt"))
        .unwrap()
        .replace("\"data/", &format!("\"{}/data/", common::slashed(&dir)));
    let model = t.path().join("net.prototxt");
    std::fs::write(&model, format!("debug_info: true\n{net}")).unwrap();
    let args = [
        "test",
        "--model",
        model.to_str().unwrap(),
        "--weights",
        w,
        "--iterations",
        "3",
    ];
    let (ok, _, err) = run(&dir, &args);
    assert!(ok, "{err}");
    assert!(
        err.contains("[Forward] Layer loss, top blob loss data: 1.39725"),
        "{err}"
    );
    std::fs::write(&model, &net).unwrap();
    let (ok, _, err) = run(&dir, &args);
    assert!(ok && !err.contains("[Forward]"), "{err}");
}

#[test]
fn snapshot_diff_writes_each_blobs_last_step() {
    // Caffe's diff after an update is the step the blob took: under SGD the
    // new history (the solverstate's), under Adam m / (sqrt(v) + delta)
    // times the rate, which the weights moved by. (crosscheck.sh compares
    // both with Caffe's own snapshots.)
    use flickr_style::caffe::proto::{NetParameter, SolverState};
    let dir = fixture("tiny-net");
    let t = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(dir.join("solver.prototxt"))
        .unwrap()
        .replace("max_iter: 30", "max_iter: 3")
        .replace("snapshot: 15", "snapshot: 1")
        .replace("test_initialization: true", "test_initialization: false");
    let blobs = |m: &NetParameter| -> Vec<(Vec<f32>, Vec<f32>)> {
        m.layer
            .iter()
            .flat_map(|l| l.blobs.iter().map(|b| (b.data.clone(), b.diff.clone())))
            .collect()
    };
    for (kind, extra) in [("sgd", ""), ("adam", "type: \"Adam\"\n")] {
        let solver = t.path().join(format!("{kind}.prototxt"));
        std::fs::write(&solver, format!("{base}snapshot_diff: true\n{extra}")).unwrap();
        let prefix = t.path().join(kind);
        let weights = dir.join("snapshots/init_iter_0.caffemodel");
        let (ok, _, err) = run(
            &dir,
            &[
                "finetune",
                "--solver",
                solver.to_str().unwrap(),
                "--weights",
                weights.to_str().unwrap(),
                "--snapshot-prefix",
                prefix.to_str().unwrap(),
            ],
        );
        assert!(ok, "{err}");
        let model = |i: u32| {
            read_caffemodel(Path::new(&format!(
                "{}_iter_{i}.caffemodel",
                prefix.display()
            )))
            .unwrap()
        };
        let (two, three) = (blobs(&model(2)), blobs(&model(3)));
        assert_eq!(three.len(), 12);
        if kind == "sgd" {
            let state: SolverState = flickr_style::caffe::read_binary(
                Path::new(&format!("{}_iter_3.solverstate", prefix.display())),
                "solver state",
            )
            .unwrap();
            for ((_, diff), h) in three.iter().zip(&state.history) {
                assert_eq!(diff, &h.data);
            }
        } else {
            for ((w2, _), (w3, diff)) in two.iter().zip(&three) {
                assert_eq!(diff.len(), w3.len());
                for ((a, b), d) in w2.iter().zip(w3).zip(diff) {
                    // w3 = w2 - d, rounded once.
                    assert!(
                        (a - b - d).abs() <= 2.0 * f32::EPSILON * a.abs().max(b.abs()),
                        "{a} - {b} vs {d}"
                    );
                }
            }
        }
        // The frozen conv1 took no step; fc8 did.
        assert!(three[0].1.iter().all(|&d| d == 0.0));
        assert!(three[10].1.iter().any(|&d| d != 0.0));
    }
}

#[test]
fn a_net_found_neither_here_nor_beside_the_solver_says_where_to_run() {
    // Caffe's own solver names its net from Caffe's root folder
    // (models/finetune_flickr_style/train_val.prototxt).
    let t = tempfile::tempdir().unwrap();
    let solver = caffe_ref().join("models/finetune_flickr_style/solver.prototxt");
    let (ok, _, err) = run(
        t.path(),
        &[
            "finetune",
            "--solver",
            solver.to_str().unwrap(),
            "--dry-run",
        ],
    );
    assert!(!ok, "{err}");
    assert!(
        err.contains("\"models/finetune_flickr_style/train_val.prototxt\" is neither in ")
            && err.contains("Caffe's root folder"),
        "{err}"
    );
}

#[test]
fn weights_and_solver_states_given_to_the_wrong_flag_say_which_flag_takes_them() {
    let t = tempfile::tempdir().unwrap();
    let snapshots = fixture("tiny-net/snapshots");
    let state = snapshots.join("tiny_iter_15.solverstate");
    let model = snapshots.join("tiny_iter_15.caffemodel");
    let solver = fixture("tiny-net/solver.prototxt");
    let (ok, _, err) = run(
        t.path(),
        &[
            "finetune",
            "--solver",
            solver.to_str().unwrap(),
            "--weights",
            state.to_str().unwrap(),
        ],
    );
    assert!(
        !ok && err.contains("is a solver state") && err.contains("--snapshot"),
        "{err}"
    );
    let (ok, _, err) = run(
        t.path(),
        &[
            "finetune",
            "--solver",
            solver.to_str().unwrap(),
            "--snapshot",
            model.to_str().unwrap(),
        ],
    );
    assert!(
        !ok && err.contains("holds weights, not a solver state"),
        "{err}"
    );
}
