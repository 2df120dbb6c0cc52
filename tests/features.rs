//! `features` (Caffe's `extract_features`) on the tiny-net fixture: the
//! saved blobs against pycaffe's forward dumps of the same weights, the
//! LMDB layout Caffe's tool writes, a Data layer training on that LMDB, and
//! failures that leave nothing behind.
mod common;
use common::{edited_net, fixture, npy, run};
use flickr_style::caffe::proto::Datum;
use flickr_style::pipeline::lmdb_store::LmdbReader;
use prost::Message;
use std::path::Path;

/// Runs `features` on the tiny net from Caffe's initial weights (in the
/// fixture's folder, as its relative paths want) with `extra` arguments.
fn tiny_features(out: &Path, blobs: &str, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec![
        "features",
        "--model",
        "train_val.prototxt",
        "--weights",
        "snapshots/init_iter_0.caffemodel",
        "--blobs",
        blobs,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&fixture("tiny-net"), &args)
}

/// Runs `probe` on the tiny net's solver (in the fixture's folder) from
/// `weights` into `out`, with `extra` arguments.
fn tiny_probe(out: &Path, weights: &Path, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec![
        "probe",
        "--solver",
        "solver.prototxt",
        "--weights",
        weights.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&fixture("tiny-net"), &args)
}

#[test]
fn saved_blobs_equal_caffes_and_the_lmdb_has_extract_features_layout() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("feat");
    let (ok, stdout, stderr) = tiny_features(&out, "fc7,pool2,conv1", &["--lmdb"]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("24 images"), "{stdout}");
    // pycaffe's blobs after the whole forward pass of the first batch
    // (images 0-7): ReLU works in place, so fc7 and conv1 are rectified.
    let forward = fixture("tiny-net/pycaffe/forward");
    for (blob, dump, shape) in [
        ("fc7", "15_relu7__fc7", vec![24, 64]),
        ("pool2", "08_pool2__pool2", vec![24, 32, 7, 7]),
        ("conv1", "03_relu1__conv1", vec![24, 16, 30, 30]),
    ] {
        let (dims, mine) = npy(&out.join(format!("{blob}.npy")));
        assert_eq!(dims, shape, "{blob}");
        let (_, caffe) = npy(&forward.join(format!("{dump}.npy")));
        let e = common::rel_err(&mine[..caffe.len()], &caffe, f32::MIN_POSITIVE);
        // OpenBLAS against our kernels: ~1e-7..1e-6 relative (fixture README).
        assert!(e < 1e-5, "{blob}: relative error {e}");
    }
    // Rows in LMDB key order, labels from the data layer: 6 of each class.
    let index = std::fs::read_to_string(out.join("images.csv")).unwrap();
    let rows: Vec<&str> = index.lines().collect();
    assert_eq!(rows[0], "row,image,label");
    assert_eq!(rows[1], "0,00000000_animal/cat.jpg,0");
    assert_eq!(rows.len(), 25);
    let labels: Vec<&str> = rows[1..]
        .iter()
        .map(|r| r.rsplit(',').next().unwrap())
        .collect();
    for class in ["0", "1", "2", "3"] {
        assert_eq!(labels.iter().filter(|&&l| l == class).count(), 6);
    }
    // extract_features' layout: keys %010d from 0; legacy c/h/w of the blob;
    // the values as unpacked float_data (tag 6, wire type 5: byte 0x35 each).
    let (_, fc7) = npy(&out.join("fc7.npy"));
    let db = LmdbReader::open(&out.join("fc7_lmdb")).unwrap();
    let records = db.records().unwrap();
    assert_eq!(records.len(), 24);
    for (i, (key, value)) in records.iter().enumerate() {
        assert_eq!(std::str::from_utf8(key).unwrap(), format!("{i:010}"));
        let d = Datum::decode(value.as_slice()).unwrap();
        assert_eq!((d.channels(), d.height(), d.width()), (64, 1, 1));
        assert_eq!(d.float_data, fc7[i * 64..(i + 1) * 64]);
        assert_eq!(d.label(), labels[i].parse::<i32>().unwrap());
        assert!(d.data.is_none() && d.encoded.is_none());
        // Fields in number order, as protobuf writes them: c, h, w, label, floats.
        assert_eq!(&value[..7], [0x08, 64, 0x10, 1, 0x18, 1, 0x28]);
        assert_eq!(value[8], 0x35, "unpacked float_data, as Caffe writes");
        assert_eq!(value.len(), 8 + 64 * 5);
    }
    let d = Datum::decode(
        LmdbReader::open(&out.join("pool2_lmdb"))
            .unwrap()
            .records()
            .unwrap()[0]
            .1
            .as_slice(),
    )
    .unwrap();
    assert_eq!((d.channels(), d.height(), d.width()), (32, 7, 7));
    // Windows cannot replace a database another process holds open.
    drop(db);
    // An existing LMDB is kept unless --force.
    let before = std::fs::read(out.join("fc7.npy")).unwrap();
    let (ok, _, stderr) = tiny_features(&out, "fc7", &["--lmdb"]);
    assert!(
        !ok && stderr.contains("fc7_lmdb") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(out.join("fc7.npy")).unwrap(), before);
    let (ok, _, stderr) = tiny_features(&out, "fc7", &["--lmdb", "--force"]);
    assert!(ok, "{stderr}");
    assert_eq!(
        std::fs::read(out.join("fc7.npy")).unwrap(),
        before,
        "repeatable"
    );
    // --iterations keeps every row of every batch, as num_mini_batches does.
    let more = t.path().join("more");
    let (ok, _, stderr) = tiny_features(&more, "fc8", &["--iterations", "4"]);
    assert!(ok, "{stderr}");
    let (dims, fc8) = npy(&more.join("fc8.npy"));
    assert_eq!(dims, [32, 4]);
    assert_eq!(
        fc8[..4 * 8],
        fc8[24 * 4..],
        "batch 4 wraps round to batch 1"
    );
}

/// A linear classifier trained on saved features: the Data layer reads the
/// float Datums (the probe learns the tiny net's 24 images from fc7 alone).
#[test]
fn a_data_layer_trains_on_a_feature_lmdb() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("feat");
    let (ok, _, stderr) = tiny_features(&out, "fc7", &["--lmdb"]);
    assert!(ok, "{stderr}");
    let net = format!(
        r#"name: "probe"
layer {{ name: "data" type: "Data" top: "data" top: "label"
  data_param {{ source: "{}" batch_size: 8 backend: LMDB }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  inner_product_param {{ num_output: 4 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }}
layer {{ name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc" include {{ phase: TEST }} }}
"#,
        common::slashed(&out.join("fc7_lmdb"))
    );
    std::fs::write(t.path().join("probe.prototxt"), net).unwrap();
    let solver = "net: \"probe.prototxt\"\ntest_iter: 3\ntest_interval: 300\ntest_initialization: false\n\
        base_lr: 0.1\nmomentum: 0.9\nlr_policy: \"fixed\"\nmax_iter: 300\nsnapshot_prefix: \"probe\"\nrandom_seed: 1\n";
    std::fs::write(t.path().join("solver.prototxt"), solver).unwrap();
    let mut s = common::solver_in(t.path(), "solver.prototxt", &t.path().join("probe")).unwrap();
    s.solve().unwrap();
    let mean = |r: &[(usize, f32)]| r.iter().map(|(_, l)| l).sum::<f32>() / r.len() as f32;
    let (first, last) = (mean(&s.trajectory[..3]), mean(&s.trajectory[297..]));
    assert!(last < 0.75 * first, "loss {first} -> {last}");
    let (ok, stdout, stderr) = run(
        t.path(),
        &[
            "evaluate",
            "--model",
            "probe.prototxt",
            "--weights",
            "probe_iter_300.caffemodel",
        ],
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("| 24 |"), "{stdout}");
}

#[test]
fn bad_requests_are_clear_errors_and_write_nothing() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("feat");
    let (ok, _, stderr) = tiny_features(&out, "fc9", &[]);
    assert!(
        !ok && stderr.contains("blob 'fc9'") && stderr.contains("fc7"),
        "{stderr}"
    );
    let (ok, _, stderr) = tiny_features(&out, "fc7,loss", &[]);
    assert!(
        !ok && stderr.contains("blob 'loss'") && stderr.contains("one row per image"),
        "{stderr}"
    );
    let (ok, _, stderr) = tiny_features(&out, "a/b,a_b", &[]);
    assert!(!ok && stderr.contains("a_b.npy"), "{stderr}");
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none());
}

/// An image that cannot be read in the third batch: the pass stops naming
/// it, and no output (nor a temporary file) is left, however far it got.
#[test]
fn a_failure_mid_pass_leaves_no_partial_output() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path();
    let images = fixture("images");
    let cat = std::fs::read(images.join("animal/cat.jpg")).unwrap();
    std::fs::write(p.join("bad.jpg"), &cat[..3000]).unwrap();
    let mut lines: Vec<String> = std::fs::read_to_string(images.join("list.txt"))
        .unwrap()
        .lines()
        .map(|l| format!("{}/{l}", images.display()))
        .collect();
    lines[20] = format!("{} 3", p.join("bad.jpg").display());
    std::fs::write(p.join("list.txt"), lines.join("\n") + "\n").unwrap();
    let image_data = format!(
        "image_data_param {{ source: \"{}\" batch_size: 8 new_height: 64 new_width: 64 }}",
        common::slashed(&p.join("list.txt"))
    );
    edited_net(p, |mut s| {
        while let Some(at) = s.find(" data_param {") {
            let end = at + s[at..].find('}').unwrap() + 1;
            s.replace_range(at + 1..end, &image_data);
        }
        s.replace("type: \"Data\"", "type: \"ImageData\"")
    });
    let weights = fixture("tiny-net/snapshots/init_iter_0.caffemodel");
    let out = p.join("feat");
    let (ok, _, stderr) = run(
        p,
        &[
            "features",
            "--model",
            "net.prototxt",
            "--weights",
            weights.to_str().unwrap(),
            "--blobs",
            "fc7",
            "--out",
            out.to_str().unwrap(),
            "--lmdb",
        ],
    );
    assert!(!ok && stderr.contains("bad.jpg"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The probe is fine-tuning with every layer below the classifier frozen:
/// on the tiny net (no augmentation, no dropout) and in the data's own
/// order, its 30 losses, test outputs and trained classifier are those of
/// `finetune` with lr_mult 0 everywhere but fc8; and its GPU code path
/// (run on the CPU) trains alike.
#[test]
fn the_probe_trains_as_a_frozen_finetune_does() {
    use flickr_style::caffe::model::read_caffemodel;
    use flickr_style::train::compute::DeviceChoice;
    use flickr_style::train::probe::{probe, ProbeOptions};
    let t = tempfile::tempdir().unwrap();
    let dir = fixture("tiny-net");
    let init = dir.join("snapshots/init_iter_0.caffemodel");
    let run = |tensor_ops: bool, out: &str| {
        probe(&ProbeOptions {
            solver: Path::new("solver.prototxt"),
            state: &flickr_style::caffe::net_state::DEFAULT_STATE,
            weights: &[init.as_path()],
            base_dir: &dir,
            out: &t.path().join(out),
            max_iter: Some(30),
            device: DeviceChoice::Cpu,
            bf16: false,
            tensor_ops,
            fused: tensor_ops,
            metrics: None,
            verbose: false,
            stop: None,
            shuffle: false,
            views: flickr_style::inference::tta::Tta::None,
        })
        .unwrap()
    };
    let p = run(false, "probe");
    // The GPU code path (tensor ops, fused kernels' CPU twins) trains alike.
    let gpu_path = run(true, "probe_gpu_path");
    for ((i, a), (_, b)) in gpu_path.trajectory.iter().zip(&p.trajectory) {
        assert!(
            (a - b).abs() <= 1e-5 * b.abs(),
            "GPU path, iteration {i}: {a} vs {b}"
        );
    }
    assert_eq!((p.classifier.as_str(), p.feature.as_str()), ("fc8", "fc7"));
    assert_eq!((p.train.rows, p.test.rows), (24, 24));
    let frozen_dir = t.path().join("frozen");
    std::fs::create_dir(&frozen_dir).unwrap();
    let solver = edited_net(&frozen_dir, |s| {
        s.replace("lr_mult: 1 ", "lr_mult: 0 ")
            .replace("lr_mult: 2 ", "lr_mult: 0 ")
    });
    let mut frozen = common::solver_in(
        &frozen_dir,
        solver.to_str().unwrap(),
        &frozen_dir.join("frozen"),
    )
    .unwrap();
    frozen.load_weights(std::slice::from_ref(&init)).unwrap();
    frozen.solve().unwrap();
    assert_eq!(p.trajectory.len(), 30);
    for ((i, a), (j, b)) in p.trajectory.iter().zip(&frozen.trajectory) {
        assert_eq!(i, j);
        assert!((a - b).abs() <= 1e-6 * b.abs(), "iteration {i}: {a} vs {b}");
    }
    assert_eq!(p.tests.len(), frozen.test_results.len());
    for (a, b) in p.tests.iter().zip(&frozen.test_results) {
        assert_eq!(a.0, b.0);
        for ((ka, va), (kb, vb)) in a.2.iter().zip(&b.2) {
            assert_eq!(ka, kb);
            assert!(
                (va - vb).abs() <= 1e-6 * vb.abs().max(1.0),
                "{ka} at {}: {va} vs {vb}",
                a.0
            );
        }
    }
    // probe.caffemodel: the pretrained layers untouched, fc8 as trained.
    let blobs = |path: &Path| {
        read_caffemodel(path)
            .unwrap()
            .layer
            .into_iter()
            .filter(|l| !l.blobs.is_empty())
            .map(|l| {
                (
                    l.name().to_string(),
                    l.blobs.into_iter().map(|b| b.data).collect::<Vec<_>>(),
                )
            })
            .collect::<Vec<_>>()
    };
    let merged = blobs(&p.model);
    let tuned = blobs(&frozen_dir.join("frozen_iter_30.caffemodel"));
    assert_eq!(merged.len(), tuned.len());
    for ((na, a), (nb, b)) in merged.iter().zip(&tuned) {
        assert_eq!(na, nb);
        for (x, y) in a.iter().zip(b) {
            let e = common::rel_err(x, y, f32::MIN_POSITIVE);
            assert!(e <= 1e-6, "{na}: relative difference {e}");
        }
    }
}

/// The command line: a shuffled probe, and its net scores the test images
/// as the probe's last test phase did.
#[test]
fn probe_writes_a_whole_net_that_scores_as_its_test_phase() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("probe");
    let dir = fixture("tiny-net");
    let weights = t.path().join("init.caffemodel");
    std::fs::copy(dir.join("snapshots/init_iter_0.caffemodel"), &weights).unwrap();
    let probe = |iters: &str| tiny_probe(&out, &weights, &["--max-iter", iters]);
    let (ok, stdout, stderr) = probe("30");
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("up to date"), "{stderr}");
    assert!(
        stdout.contains("trained fc8 on fc7 (24 training and 24 test images)"),
        "{stdout}"
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("test images at iteration 30"))
        .unwrap();
    let accuracy = line
        .split("accuracy = ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap();
    let model = out.join("probe.caffemodel");
    let (ok, tested, stderr) = run(
        &dir,
        &[
            "test",
            "--model",
            "train_val.prototxt",
            "--weights",
            model.to_str().unwrap(),
            "--iterations",
            "3",
        ],
    );
    assert!(ok, "{stderr}");
    let got: f32 = tested
        .lines()
        .find_map(|l| l.strip_prefix("accuracy = "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (got - accuracy.parse::<f32>().unwrap()).abs() < 1e-4,
        "{tested} vs {line}"
    );
    // The training features were keyed in a shuffle: not in the images' order.
    let keys: Vec<String> = LmdbReader::open(&out.join("train_features/fc7_lmdb"))
        .unwrap()
        .records()
        .unwrap()
        .into_iter()
        .map(|(_, v)| Datum::decode(v.as_slice()).unwrap().label().to_string())
        .collect();
    let index = std::fs::read_to_string(out.join("train_features/images.csv")).unwrap();
    let in_order: Vec<String> = index
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().to_string())
        .collect();
    assert_ne!(
        keys, in_order,
        "labels in LMDB order differ from the list's"
    );
    let (mut a, mut b) = (keys.clone(), in_order.clone());
    a.sort();
    b.sort();
    assert_eq!(a, b, "the same images");
    // Another number of iterations reuses the saved features; changed
    // weights (another modification time) do not.
    let (ok, again, stderr) = probe("15");
    assert!(ok, "{stderr}");
    assert_eq!(stderr.matches("are up to date").count(), 2, "{stderr}");
    assert!(again.contains("test images at iteration 15"), "{again}");
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    std::fs::File::options()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_modified(when)
        .unwrap();
    let (ok, _, stderr) = probe("15");
    assert!(ok && !stderr.contains("up to date"), "{stderr}");
}

/// Image files, prepared as `classify` prepares them: the fixture photos
/// give the features their LMDB records (made by convert_imageset from the
/// same files) give; an unreadable file is skipped and named, or with
/// --strict stops the run before anything is written.
#[test]
fn image_files_give_the_features_of_their_lmdb_records() {
    let t = tempfile::tempdir().unwrap();
    let images = fixture("images");
    let list = std::fs::read_to_string(images.join("list.txt")).unwrap();
    let mut files: Vec<String> = list
        .lines()
        .map(|l| {
            images
                .join(l.rsplit_once(' ').unwrap().0)
                .display()
                .to_string()
        })
        .collect();
    let bad = t.path().join("bad.jpg");
    std::fs::write(&bad, b"not a jpeg").unwrap();
    files.insert(5, bad.display().to_string());
    let from_files = t.path().join("files");
    let file_args: Vec<&str> = files.iter().map(String::as_str).collect();
    let (ok, stdout, stderr) = tiny_features(&from_files, "fc7,conv1", &file_args);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("24 images"), "{stdout}");
    assert!(
        stdout.contains("skipped") && stdout.contains("bad.jpg"),
        "{stdout}"
    );
    let from_db = t.path().join("db");
    let (ok, _, stderr) = tiny_features(&from_db, "fc7,conv1", &[]);
    assert!(ok, "{stderr}");
    for blob in ["fc7", "conv1"] {
        let (shape_f, f) = npy(&from_files.join(format!("{blob}.npy")));
        let (shape_d, d) = npy(&from_db.join(format!("{blob}.npy")));
        assert_eq!(shape_f, shape_d);
        let e = common::rel_err(&f, &d, f32::MIN_POSITIVE);
        assert!(e < 1e-6, "{blob}: relative difference {e}");
    }
    let index = std::fs::read_to_string(from_files.join("images.csv")).unwrap();
    assert!(
        index.lines().nth(1).unwrap().ends_with("animal/cat.jpg,"),
        "{index}"
    );
    assert!(!index.contains("bad.jpg"));
    // --strict: the unreadable file stops the run; nothing is written.
    let strict = t.path().join("strict");
    let strict_args: Vec<&str> = std::iter::once("--strict").chain(file_args).collect();
    let (ok, _, stderr) = tiny_features(&strict, "fc7", &strict_args);
    assert!(
        !ok && stderr.contains("bad.jpg") && stderr.contains("nothing was written"),
        "{stderr}"
    );
    assert!(std::fs::read_dir(&strict).unwrap().next().is_none());
}

/// `compute-mean` of a feature LMDB: the mean of the saved rows, as Caffe's
/// compute_image_mean averages float_data records.
#[test]
fn compute_mean_averages_a_feature_lmdb() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("feat");
    let (ok, _, stderr) = tiny_features(&out, "pool2", &["--lmdb"]);
    assert!(ok, "{stderr}");
    let mean = t.path().join("mean.binaryproto");
    let (ok, _, stderr) = run(
        t.path(),
        &[
            "compute-mean",
            out.join("pool2_lmdb").to_str().unwrap(),
            mean.to_str().unwrap(),
        ],
    );
    assert!(ok, "{stderr}");
    let m = flickr_style::caffe::mean_file::MeanImage::read_binaryproto(&mean).unwrap();
    assert_eq!((m.channels, m.height, m.width), (32, 7, 7));
    let (_, rows) = npy(&out.join("pool2.npy"));
    let per = 32 * 7 * 7;
    for (i, &got) in m.values.iter().enumerate() {
        let want = (0..24).map(|r| f64::from(rows[r * per + i])).sum::<f64>() / 24.0;
        assert!(
            (got - want).abs() <= 1e-6 * want.abs().max(1e-3),
            "{i}: {got} vs {want}"
        );
    }
}

/// Views of each image (the probe's augmentation): the rows of the mirror
/// view of the `data` blob are the unchanged rows mirrored, under the same
/// labels and names marked `#mirror`; the probe trains on each training
/// image's views (and its saved features follow the views asked for).
#[test]
fn views_add_a_row_per_view_and_the_probe_trains_on_them() {
    use flickr_style::inference::features::{extract, FeatureOptions, SaveOptions};
    use flickr_style::inference::tta::Tta;
    use flickr_style::train::compute::Compute;
    let t = tempfile::tempdir().unwrap();
    let dir = fixture("tiny-net");
    let weights = dir.join("snapshots/init_iter_0.caffemodel");
    let blobs = ["data".to_string()];
    let views = Tta::Mirror.views();
    let saved = extract(&FeatureOptions {
        model: &dir.join("train_val.prototxt"),
        state: &flickr_style::caffe::net_state::DEFAULT_STATE,
        weights: &[weights.as_path()],
        base_dir: &dir,
        compute: &Compute::cpu(),
        source: None,
        iterations: None,
        shuffle_keys: None,
        stop: None,
        save: SaveOptions {
            blobs: &blobs,
            out: &t.path().join("views"),
            lmdb: false,
            force: false,
        },
        extra_views: &views[1..],
    })
    .unwrap();
    assert_eq!(saved.rows, 48);
    let (shape, values) = npy(&saved.blobs[0].npy);
    assert_eq!(shape[0], 48);
    let (c, h, w) = (shape[1], shape[2], shape[3]);
    let per = c * h * w;
    let index = std::fs::read_to_string(&saved.index).unwrap();
    let rows: Vec<Vec<&str>> = index
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    // Batches of 8: the 8 images, then their mirror images.
    for batch in 0..3 {
        for i in 0..8 {
            let (a, b) = (batch * 16 + i, batch * 16 + 8 + i);
            assert_eq!(rows[b][1], format!("{}#mirror", rows[a][1]));
            assert_eq!(rows[b][2], rows[a][2], "labels");
            for p in 0..c * h {
                for x in 0..w {
                    assert_eq!(
                        values[b * per + p * w + x],
                        values[a * per + p * w + (w - 1 - x)],
                        "row {b}"
                    );
                }
            }
        }
    }

    let out = t.path().join("probe");
    let probe = |views: &str| tiny_probe(&out, &weights, &["--max-iter", "10", "--views", views]);
    let (ok, stdout, stderr) = probe("dihedral");
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("trained fc8 on fc7 (24 training images in 8 views each, 24 test images)"),
        "{stdout}"
    );
    let index = std::fs::read_to_string(out.join("train_features/images.csv")).unwrap();
    assert_eq!(index.lines().count(), 1 + 24 * 8);
    assert_eq!(index.matches("#mirror+rot270").count(), 24);
    // The same views again: both feature sets are reused; other views: the
    // training features are made anew.
    let (ok, _, stderr) = probe("dihedral");
    assert!(
        ok && stderr.matches("are up to date").count() == 2,
        "{stderr}"
    );
    let (ok, stdout, stderr) = probe("mirror");
    assert!(
        ok && stderr.matches("are up to date").count() == 1,
        "{stderr}"
    );
    assert!(
        stdout.contains("24 training images in 2 views each"),
        "{stdout}"
    );
}

/// A classifier that is a 1x1 Convolution on a pooled map (MobileNet's and
/// SqueezeNet's form, renamed so it starts from its filler): the probe cuts
/// there too, trains it on the map's
/// saved values and writes it back, and the whole net then scores the test
/// images as the probe's last test phase did.
#[test]
fn probe_trains_a_convolution_classifier() {
    let t = tempfile::tempdir().unwrap();
    let solver = edited_net(t.path(), |net| {
        net.replace(
            "  type: \"InnerProduct\"\n  bottom: \"fc7\"\n  top: \"fc8\"",
            "  type: \"Convolution\"\n  bottom: \"fc7map\"\n  top: \"fc8\"",
        )
        .replace(
            "inner_product_param {\n    num_output: 4",
            "convolution_param {\n    kernel_size: 1\n    num_output: 4",
        )
        .replace(
            "layer {\n  name: \"fc8\"",
            "layer { name: \"fc7map\" type: \"Reshape\" bottom: \"fc7\" top: \"fc7map\"\n  reshape_param { shape { dim: 0 dim: -1 dim: 1 dim: 1 } } }\nlayer {\n  name: \"fc8conv\"",
        )
    });
    let net = std::fs::read_to_string(t.path().join("net.prototxt")).unwrap();
    assert!(net.contains("bottom: \"fc7map\"") && net.contains("kernel_size: 1"));
    let out = t.path().join("probe");
    let weights = fixture("tiny-net/snapshots/init_iter_0.caffemodel");
    let (ok, stdout, stderr) = run(
        t.path(),
        &[
            "probe",
            "--solver",
            solver.to_str().unwrap(),
            "--weights",
            weights.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--max-iter",
            "30",
        ],
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("trained fc8conv on fc7map"), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("test images at iteration 30"))
        .unwrap();
    let accuracy: f32 = line
        .split("accuracy = ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let model = out.join("probe.caffemodel");
    let (ok, tested, stderr) = run(
        t.path(),
        &[
            "test",
            "--model",
            t.path().join("net.prototxt").to_str().unwrap(),
            "--weights",
            model.to_str().unwrap(),
            "--iterations",
            "3",
        ],
    );
    assert!(ok, "{stderr}");
    let got: f32 = tested
        .lines()
        .find_map(|l| l.strip_prefix("accuracy = "))
        .unwrap()
        .parse()
        .unwrap();
    assert!((got - accuracy).abs() < 1e-4, "{tested} vs {line}");
}
