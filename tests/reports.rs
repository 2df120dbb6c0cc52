//! Reports on trained nets: `evaluate` (per-class figures over a net's TEST
//! data, checked against the accuracy Caffe logged for the tiny-net fixture)
//! and `plot` (training curves from a metrics file or a training log in
//! Caffe's wording, checked against Caffe's own log of the tiny-net fixture).
mod common;
use common::{edited_net, fixture, fixture_photo_pngs, run, tiny_finetune_args, train_tiny_cli};
use flickr_style::inference::evaluate::{evaluate, read_class_names, EvalOptions, ScoreKind};
use flickr_style::inference::tta::Tta;
use flickr_style::train::compute::Compute;
use std::path::Path;

/// Options evaluating `model` (relative paths resolving beside the fixture)
/// with `weights` on the CPU, top-2.
fn options<'a>(
    model: &'a Path,
    weights: &'a [&'a Path],
    blobs: Option<(&str, &str)>,
) -> EvalOptions<'a> {
    static CPU: std::sync::OnceLock<Compute> = std::sync::OnceLock::new();
    static BASE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    EvalOptions {
        model,
        state: &flickr_style::caffe::net_state::DEFAULT_STATE,
        weights,
        base_dir: BASE.get_or_init(|| fixture("tiny-net")),
        compute: CPU.get_or_init(Compute::cpu),
        iterations: None,
        blobs: blobs.map(|(s, l)| (s.to_string(), l.to_string())),
        top_k: 2,
        threshold: None,
        tta: Tta::None,
        ensemble: false,
        source: None,
    }
}

/// Evaluates `model` with the iteration-30 weights.
fn eval_tiny(
    model: &Path,
    iterations: Option<usize>,
    blobs: Option<(&str, &str)>,
) -> flickr_style::Result<flickr_style::inference::evaluate::Evaluation> {
    let weights = fixture("tiny-net/snapshots/tiny_iter_30.caffemodel");
    evaluate(&EvalOptions {
        iterations,
        ..options(model, &[weights.as_path()], blobs)
    })
}

fn with_batch(t: &Path, batch: usize) -> std::path::PathBuf {
    edited_net(t, |s| {
        s.replace("batch_size: 8", &format!("batch_size: {batch}"))
    });
    t.join("net.prototxt")
}

/// Cuts the net's Accuracy and SoftmaxWithLoss layers (its last two).
fn without_scoring_layers(net: &Path) {
    let text = std::fs::read_to_string(net).unwrap();
    let cut = text
        .find("layer {\n  name: \"accuracy\"")
        .expect("accuracy layer");
    std::fs::write(net, format!("{}\n", &text[..cut])).unwrap();
}

#[test]
fn one_pass_over_the_tiny_net_data_matches_caffes_test_accuracy() {
    let e = eval_tiny(&fixture("tiny-net/train_val.prototxt"), None, None).unwrap();
    assert_eq!(e.unanimous, None, "one run per image: nothing to agree on");
    let m = &e.confusion;
    // Per image, in the LMDB's key order, agreeing with the matrix; fc8 feeds
    // SoftmaxWithLoss, so the values are probabilities.
    let p = e.predictions.as_ref().unwrap();
    assert_eq!(p.len(), 24);
    assert_eq!(p[0].image, "00000000_animal/cat.jpg");
    assert_eq!(p[23].image, "00000023_vehicle/logo_rgba.png");
    assert_eq!(e.kind, ScoreKind::Logits);
    for k in 0..4 {
        for q in 0..4 {
            let n = p
                .iter()
                .filter(|x| (x.label, x.predicted) == (k, q))
                .count();
            assert_eq!(n as u64, m.count(k, q));
        }
    }
    for x in p {
        assert!(
            x.value_label() > 0.0
                && x.value_label() <= x.value_predicted()
                && x.value_predicted() < 1.0
        );
    }
    // 24 images, 6 per class; Caffe's log at iteration 30: accuracy = 0.458333 (11 of 24).
    assert_eq!(m.total(), 24);
    assert_eq!(m.classes(), 4);
    for k in 0..4 {
        assert_eq!((0..4).map(|p| m.count(k, p)).sum::<u64>(), 6, "class {k}");
    }
    assert_eq!((0..4).map(|k| m.count(k, k)).sum::<u64>(), 11);
    assert_eq!(
        (e.scores_blob.as_str(), e.label_blob.as_str()),
        ("fc8", "label")
    );
    let s = m.summary(&[]);
    assert!((s.accuracy - 11.0 / 24.0).abs() < 1e-12);
    // The log loss of fc8's softmax is the SoftmaxWithLoss loss Caffe logged: 1.138.
    assert!(
        (s.log_loss.unwrap() - 1.138).abs() < 5e-4,
        "{:?}",
        s.log_loss
    );
    // Balanced classes: the mean per-class accuracy is the accuracy.
    assert!((s.mean_class_accuracy - s.accuracy).abs() < 1e-12);
}

#[test]
fn batches_that_do_not_divide_the_set_count_each_image_once() {
    let reference = eval_tiny(&fixture("tiny-net/train_val.prototxt"), None, None)
        .unwrap()
        .confusion;
    // 24 images in batches of 5 and 7: the last batch wraps round to the
    // first images, which must not be counted twice.
    let outcomes =
        |e: &flickr_style::inference::evaluate::Evaluation| -> Vec<(String, usize, usize)> {
            e.predictions
                .as_ref()
                .expect("the Data layer names its images")
                .iter()
                .map(|p| (p.image.clone(), p.label, p.predicted))
                .collect()
        };
    let whole = eval_tiny(&fixture("tiny-net/train_val.prototxt"), None, None).unwrap();
    for batch in [5, 7, 24, 30] {
        let t = tempfile::tempdir().unwrap();
        let e = eval_tiny(&with_batch(t.path(), batch), None, None).unwrap();
        assert_eq!(e.confusion, reference, "batch {batch}");
        assert_eq!(outcomes(&e), outcomes(&whole), "batch {batch}");
    }
    // Whole batches on request, as `caffe test` runs them: 2 x 8 images.
    let e = eval_tiny(&fixture("tiny-net/train_val.prototxt"), Some(2), None).unwrap();
    assert_eq!(e.confusion.total(), 16);
}

#[test]
fn named_blobs_and_their_mistakes() {
    // The same counts when the blobs are named.
    let t = tempfile::tempdir().unwrap();
    let model = fixture("tiny-net/train_val.prototxt");
    let named = eval_tiny(&model, None, Some(("fc8", "label"))).unwrap();
    let found = eval_tiny(&model, None, None).unwrap();
    assert_eq!(named.confusion, found.confusion);

    let err = eval_tiny(&model, None, Some(("conv3", "label")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("conv3") && err.contains("one score vector per image"),
        "{err}"
    );
    let err = eval_tiny(&model, None, Some(("nope", "label")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("'nope'") && err.contains("no such blob"),
        "{err}"
    );

    // Without an Accuracy or SoftmaxWithLoss layer, the blobs must be named.
    let net = with_batch(t.path(), 8);
    without_scoring_layers(&net);
    let err = eval_tiny(&net, None, None).unwrap_err().to_string();
    assert!(err.contains("--scores"), "{err}");
    let e = eval_tiny(&net, None, Some(("fc8", "label"))).unwrap();
    assert_eq!(e.confusion.to_csv(&[]), found.confusion.to_csv(&[]));
    // Bare scores: no probabilities, so no log loss and no threshold.
    assert_eq!(e.kind, ScoreKind::Scores);
    assert_eq!(e.confusion.summary(&[]).log_loss, None);
    // Scores are no probabilities: no abstaining to report.
    assert_eq!(e.confusion.summary(&[]).abstention, None);
    let err = evaluate(&EvalOptions {
        threshold: Some(0.5),
        ..options(&net, &[], Some(("fc8", "label")))
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("needs probabilities"), "{err}");

    // A Softmax layer's output is taken as probabilities as they are.
    let text = std::fs::read_to_string(&net).unwrap();
    std::fs::write(
        &net,
        text + "layer { name: \"prob\" type: \"Softmax\" bottom: \"fc8\" top: \"prob\" }\n",
    )
    .unwrap();
    let e = eval_tiny(&net, None, Some(("prob", "label"))).unwrap();
    assert_eq!(e.kind, ScoreKind::Probabilities);
    let (a, b) = (
        e.confusion.summary(&[]).log_loss.unwrap(),
        found.confusion.summary(&[]).log_loss.unwrap(),
    );
    assert!((a - b).abs() < 1e-6, "{a} {b}");
}

#[test]
fn labels_the_net_cannot_score_are_errors() {
    // fc8 with 3 outputs (renamed so it starts from its filler): label 3 is out of range.
    let t = tempfile::tempdir().unwrap();
    let net = with_batch(t.path(), 8);
    let text = std::fs::read_to_string(&net).unwrap();
    let text = text
        .replace("num_output: 4", "num_output: 3")
        .replace("name: \"fc8\"", "name: \"fc8_three\"");
    std::fs::write(&net, text).unwrap();
    without_scoring_layers(&net);
    let err = eval_tiny(&net, None, Some(("fc8", "label")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("label 3") && err.contains("3 classes"),
        "{err}"
    );
}

#[test]
fn names_must_match_the_classes() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("names.txt");
    std::fs::write(&p, "a\nb\n c \nd\n\n").unwrap();
    assert_eq!(read_class_names(&p, 4).unwrap(), ["a", "b", "c", "d"]);
    let err = read_class_names(&p, 20).unwrap_err().to_string();
    assert!(
        err.contains("names.txt") && err.contains("4 class names") && err.contains("20"),
        "{err}"
    );
}

#[test]
fn cli_writes_the_report_files() {
    let t = tempfile::tempdir().unwrap();
    let names = t.path().join("names.txt");
    std::fs::write(&names, "circle\nsquare\ntriangle\nstar\n").unwrap();
    let model = fixture("tiny-net/train_val.prototxt");
    let weights = fixture("tiny-net/snapshots/tiny_iter_30.caffemodel");
    let evaluate_into = |out: &Path| {
        run(
            t.path(),
            &[
                "evaluate",
                "--model",
                model.to_str().unwrap(),
                "--weights",
                weights.to_str().unwrap(),
                "--names",
                names.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--threshold",
                "0.3",
            ],
        )
    };
    let out = t.path().join("report");
    let (ok, stdout, err) = evaluate_into(&out);
    assert!(ok, "{err}");
    assert!(stdout.contains("| 24 | 45.83% |"), "{stdout}");
    assert!(stdout.contains("| 3 | star | 6 |"), "{stdout}");
    assert!(stdout.contains("Log loss 1.13"), "{stdout}");
    assert!(
        stdout.contains("At a confidence threshold of 0.3: "),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("report.md")).unwrap(),
        stdout
    );
    let svg = std::fs::read_to_string(out.join("confusion.svg")).unwrap();
    assert!(svg.contains("\nstar\n"), "the heat map names the classes");
    let csv = std::fs::read_to_string(out.join("confusion.csv")).unwrap();
    assert!(
        csv.starts_with("true \\ predicted,circle,square,triangle,star\n"),
        "{csv}"
    );
    let rows: Vec<u64> = csv
        .lines()
        .skip(1)
        .flat_map(|l| {
            l.split(',')
                .skip(1)
                .map(|v| v.parse::<u64>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(rows.iter().sum::<u64>(), 24);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(json["images"], 24);
    assert_eq!(json["views"], serde_json::json!(["identity"]));
    assert_eq!(json["classes"][3]["name"], "star");
    assert_eq!(json["classes"][3]["support"], 6);
    let predictions = std::fs::read_to_string(out.join("predictions.csv")).unwrap();
    let rows: Vec<&str> = predictions.lines().collect();
    assert_eq!(
        rows[0],
        "image,label,predicted,correct,probability_label,probability_predicted"
    );
    assert_eq!(rows.len(), 25);
    assert_eq!(rows.iter().filter(|r| r.contains(",true,")).count(), 11);
    assert!(
        rows[24].starts_with("00000023_vehicle/logo_rgba.png,star,"),
        "{}",
        rows[24]
    );
    // Every class's probability, beside the same image and its label index.
    let probabilities = std::fs::read_to_string(out.join("probabilities.csv")).unwrap();
    let full: Vec<&str> = probabilities.lines().collect();
    assert_eq!(full[0], "image,label,circle,square,triangle,star");
    assert_eq!(full.len(), 25);
    for (row, short) in full[1..].iter().zip(&rows[1..]) {
        let f: Vec<&str> = row.split(',').collect();
        let g: Vec<&str> = short.split(',').collect();
        assert_eq!(f[0], g[0]);
        let p: Vec<f32> = f[2..].iter().map(|v| v.parse().unwrap()).collect();
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row}");
        let label: usize = f[1].parse().unwrap();
        assert_eq!(p[label], g[4].parse::<f32>().unwrap(), "{row}");
    }
    // Abstaining: each threshold's row agrees with the per-image predictions
    // (their predicted class's probability, and whether it was right).
    let images: Vec<(f64, bool)> = rows[1..]
        .iter()
        .map(|r| {
            let f: Vec<&str> = r.split(',').collect();
            (f[5].parse().unwrap(), f[3] == "true")
        })
        .collect();
    for t in [0.5, 0.6, 0.7] {
        // Probabilities were written as f32: compare them as such.
        let kept: Vec<bool> = images
            .iter()
            .filter(|(p, _)| *p as f32 >= t as f32)
            .map(|&(_, ok)| ok)
            .collect();
        let right = kept.iter().filter(|&&ok| ok).count();
        let accuracy = if kept.is_empty() {
            "–".to_string()
        } else {
            format!("{:.2}%", 100.0 * right as f64 / kept.len() as f64)
        };
        let line = format!(
            "| {t} | {} | {:.1}% | {accuracy} |",
            kept.len(),
            100.0 * kept.len() as f64 / 24.0
        );
        assert!(stdout.contains(&line), "{line} in {stdout}");
    }
    assert!(stdout.contains("- 90% accuracy: "), "{stdout}");
    let curve = std::fs::read_to_string(out.join("abstention.svg")).unwrap();
    assert!(curve.contains("accuracy on them"), "{curve}");
    assert!(json["abstention"]["at_thresholds"][0]["threshold"] == 0.5);

    // Test-time views and ensembles are named in the report and in metrics.json.
    let both = format!(
        "{},{}",
        fixture("tiny-net/snapshots/tiny_iter_15.caffemodel").display(),
        weights.display()
    );
    let (ok, stdout, err) = run(
        t.path(),
        &[
            "evaluate",
            "--model",
            model.to_str().unwrap(),
            "--weights",
            &both,
            "--ensemble",
            "--tta",
            "rot90",
            "--out",
            t.path().join("tta").to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert!(
        stdout.contains(
            "probabilities averaged over 4 views of each image (identity, rot90, rot180, rot270)"
        ),
        "{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t.path().join("tta/metrics.json")).unwrap())
            .unwrap();
    assert_eq!(json["views"].as_array().unwrap().len(), 4);
    assert_eq!(json["ensemble"], true);
    assert!(json["unanimous"]["images"].as_u64().unwrap() <= 24);
    assert!(
        stdout.contains("All runs (views x models) agreed on the best class for "),
        "{stdout}"
    );
    assert!(
        stdout.contains("an ensemble: the 2 weights files each score every image"),
        "{stdout}"
    );
    let (ok, _, err) = run(
        t.path(),
        &[
            "evaluate",
            "--model",
            "m",
            "--weights",
            "w",
            "--tta",
            "rot45",
        ],
    );
    assert!(!ok && err.contains("dihedral"), "{err}");

    // A names file of the wrong length stops before anything is written.
    std::fs::write(&names, "circle\nsquare\n").unwrap();
    let out2 = t.path().join("report2");
    let (ok, _, err) = evaluate_into(&out2);
    assert!(!ok && err.contains("2 class names"), "{err}");
    assert!(!out2.exists());
}

#[test]
fn plot_cli_draws_a_training_run_and_names_bad_lines() {
    let t = tempfile::tempdir().unwrap();
    let metrics = t.path().join("m.jsonl");
    let (ok, _, err) = train_tiny_cli(&t.path().join("tiny"), &metrics, 15);
    assert!(ok, "{err}");
    let svg = t.path().join("m.svg");
    let (ok, _, err) = run(
        t.path(),
        &["plot", metrics.to_str().unwrap(), svg.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg"), "{text}");
    for label in [
        "test accuracy (net 0)",
        "test loss (net 0)",
        "learning rate",
    ] {
        assert!(text.contains(label), "{label}");
    }

    // A damaged line (not the last) is an error naming the file and line.
    let good = std::fs::read_to_string(&metrics).unwrap();
    let broken = good.replacen("\"phase\"", "\"phase", 1);
    std::fs::write(&metrics, broken).unwrap();
    let (ok, _, err) = run(
        t.path(),
        &["plot", metrics.to_str().unwrap(), svg.to_str().unwrap()],
    );
    assert!(!ok && err.contains("m.jsonl") && err.contains('1'), "{err}");
}

/// Whether `a` and `b` agree to the 6 significant digits a log prints.
fn six_digits(a: f64, b: f64) -> bool {
    (a - b).abs() <= 5e-6 * a.abs().max(b.abs()) || (a == 0.0 && b == 0.0)
}

#[test]
fn caffe_training_logs_are_read_as_caffe_logged_them() {
    use flickr_style::analysis::training_log::read_training_log;
    let logs = fixture("tiny-net/logs");
    let m = read_training_log(&logs.join("train.log")).unwrap();
    // Caffe's loss trajectory of the fixture (average_loss 1, so the
    // displayed loss is each iteration's), then its display after the last
    // update, without a rate.
    let csv = std::fs::read_to_string(fixture("tiny-net/train_loss.csv")).unwrap();
    let (mut steps, mut tests, mut finals) = (0, 0, 0);
    for line in csv.lines().skip(1) {
        if let Some(test) = line.strip_prefix("# test at iteration ") {
            // "# test at iteration 15: accuracy = 0.458333, loss = 1.27204"
            let (iter, outputs) = test.split_once(": ").unwrap();
            for output in outputs.split(", ") {
                let (name, value) = output.split_once(" = ").unwrap();
                let got = m.tests[&(0, name.to_string())][&iter.parse().unwrap()];
                assert_eq!(got, value.parse::<f64>().unwrap(), "{line}");
                tests += 1;
            }
        } else if let Some(last) = line.strip_prefix("# final extra forward after training: ") {
            // Its display after the last update: a loss and no rate.
            let value = last.split(" = ").nth(1).unwrap().split_whitespace().next();
            assert_eq!(
                m.train[&30].smoothed,
                value.unwrap().parse::<f64>().unwrap()
            );
            assert!(m.train[&30].lr.is_nan());
            finals += 1;
        } else if !line.starts_with('#') {
            let f: Vec<f64> = line.split(',').map(|v| v.parse().unwrap()).collect();
            let p = m.train[&(f[0] as u64)];
            assert_eq!((p.loss, p.smoothed, p.lr), (f[1], f[1], f[2]), "{line}");
            steps += 1;
        }
    }
    assert_eq!((steps, tests, finals, m.train.len()), (30, 6, 1, 31));
    assert_eq!(m.tests.len(), 2);
    // Caffe's resume from iteration 15 logs 15-30 again, as the run did.
    let resumed = read_training_log(&logs.join("resume_from_15.log")).unwrap();
    assert_eq!(resumed.train.keys().next(), Some(&15));
    for (i, p) in &resumed.train {
        assert_eq!(p.smoothed, m.train[i].smoothed, "iteration {i}");
    }
}

#[test]
fn plot_overlays_our_log_our_metrics_and_caffes_log() {
    let t = tempfile::tempdir().unwrap();
    let (metrics, log) = (t.path().join("ours.jsonl"), t.path().join("ours.log"));
    let prefix = t.path().join("tiny");
    let (ok, _, err) = run(
        &fixture("tiny-net"),
        &tiny_finetune_args(
            prefix.to_str().unwrap(),
            "15",
            &[
                "--metrics",
                metrics.to_str().unwrap(),
                "--log",
                log.to_str().unwrap(),
            ],
        ),
    );
    assert!(ok, "{err}");
    // Our log in Caffe's wording says what the metrics file says, to the
    // digits it prints.
    let from_log = flickr_style::analysis::training_log::read_training_log(&log).unwrap();
    let from_metrics = flickr_style::analysis::plot::read_metrics(&metrics).unwrap();
    assert_eq!(from_metrics.train.len(), 15);
    for (i, want) in &from_metrics.train {
        let got = from_log.train[i];
        for (g, w) in [
            (got.loss, want.loss),
            (got.smoothed, want.smoothed),
            (got.lr, want.lr),
        ] {
            assert!(
                six_digits(g, w),
                "iteration {i}: {g} from the log, {w} from the metrics"
            );
        }
    }
    assert_eq!(
        from_log.tests.keys().collect::<Vec<_>>(),
        from_metrics.tests.keys().collect::<Vec<_>>()
    );
    for (key, values) in &from_metrics.tests {
        for (i, &w) in values {
            assert!(six_digits(from_log.tests[key][i], w), "{key:?} at {i}");
        }
    }

    // One plot of all three runs, each series named after its file.
    let caffe = fixture("tiny-net/logs/train.log");
    let svg = t.path().join("runs.svg");
    let files = [&caffe, &log, &metrics, &svg].map(|p| p.to_str().unwrap().to_string());
    let csv = t.path().join("csv");
    let mut args = vec!["plot"];
    args.extend(files.iter().map(String::as_str));
    args.extend(["--csv", csv.to_str().unwrap()]);
    let (ok, _, err) = run(t.path(), &args);
    assert!(ok, "{err}");
    // The tables parse_log.py would make of Caffe's log, and ours.
    let table = |name: &str| std::fs::read_to_string(csv.join(name)).unwrap();
    let train = table("train.log.train.csv");
    assert!(
        train.starts_with("iteration,loss,smoothed_loss,lr\n0,1.37753,1.37753,0.01\n"),
        "{train}"
    );
    assert!(train.ends_with("\n30,1.00239,1.00239,\n"), "{train}");
    assert_eq!(
        table("train.log.test.csv"),
        "iteration,net,accuracy,loss\n0,0,0.25,1.38594\n15,0,0.458333,1.27204\n30,0,0.458333,1.138\n"
    );
    assert_eq!(table("ours.jsonl.train.csv").lines().count(), 16);
    assert_eq!(table("ours.log.test.csv").lines().count(), 3);
    let text = std::fs::read_to_string(&svg).unwrap();
    for label in [
        "train.log vs ours.log vs ours.jsonl",
        "train.log: train loss (smoothed)",
        "ours.log: test accuracy (net 0)",
        "ours.jsonl: learning rate",
    ] {
        assert!(text.contains(label), "{label}");
    }

    // A last argument that is not an SVG file is refused, not overwritten.
    let before = std::fs::read(&log).unwrap();
    let (ok, _, err) = run(t.path(), &["plot", files[2].as_str(), files[1].as_str()]);
    assert!(!ok && err.contains("must end in .svg"), "{err}");
    assert_eq!(std::fs::read(&log).unwrap(), before);
    // A file that is neither kind is named.
    let other = t.path().join("notes.txt");
    std::fs::write(&other, "nothing about iterations\n").unwrap();
    let (ok, _, err) = run(
        t.path(),
        &["plot", other.to_str().unwrap(), files[3].as_str()],
    );
    assert!(
        !ok && err.contains("notes.txt") && err.contains("no training records"),
        "{err}"
    );
}

#[test]
fn shuffled_image_lists_name_each_prediction_after_its_own_image() {
    // The tiny net's TEST data as a shuffled ImageData list of the fixture
    // photos: each named image must carry its own label from the list.
    let t = tempfile::tempdir().unwrap();
    let images = fixture("images");
    edited_net(t.path(), |s| {
        let start = s.find("layer {\n  name: \"data\"\n  type: \"Data\"\n  top: \"data\"\n  top: \"label\"\n  include { phase: TEST }").unwrap();
        let end = start + s[start..].find("\nlayer {").unwrap();
        let image_data = format!(
            "layer {{ name: \"data\" type: \"ImageData\" top: \"data\" top: \"label\" include {{ phase: TEST }} \
             image_data_param {{ source: \"{}\" root_folder: \"{}/\" batch_size: 5 shuffle: true new_height: 64 new_width: 64 }} }}",
            common::slashed(&images.join("list.txt")),
            common::slashed(&images)
        );
        format!("{}{}{}", &s[..start], image_data, &s[end..])
    });
    let e = eval_tiny(&t.path().join("net.prototxt"), None, None).unwrap();
    let listed: std::collections::HashMap<String, usize> =
        std::fs::read_to_string(images.join("list.txt"))
            .unwrap()
            .lines()
            .map(|l| {
                let (p, label) = l.rsplit_once(' ').unwrap();
                (p.to_string(), label.parse().unwrap())
            })
            .collect();
    let p = e.predictions.unwrap();
    assert_eq!(p.len(), 24);
    let names: std::collections::HashSet<&str> = p.iter().map(|x| x.image.as_str()).collect();
    assert_eq!(names.len(), 24, "each image once");
    for x in &p {
        assert_eq!(listed[&x.image], x.label, "{}", x.image);
    }
    // Shuffled: not in list order.
    let order: Vec<&str> = p.iter().map(|x| x.image.as_str()).collect();
    assert_ne!(order[0], "animal/cat.jpg");
}

/// The tiny net's TEST data as an ImageData list (in list order, batches of
/// 5) with a per-channel mean, which flips and turns leave unchanged.
fn image_list_net(t: &Path, list: &Path) -> std::path::PathBuf {
    edited_net(t, |s| {
        let start = s.find("layer {\n  name: \"data\"\n  type: \"Data\"\n  top: \"data\"\n  top: \"label\"\n  include { phase: TEST }").unwrap();
        let end = start + s[start..].find("\nlayer {").unwrap();
        let image_data = format!(
            "layer {{ name: \"data\" type: \"ImageData\" top: \"data\" top: \"label\" include {{ phase: TEST }} \
             transform_param {{ mean_value: 104 mean_value: 117 mean_value: 123 }} \
             image_data_param {{ source: \"{}\" batch_size: 5 }} }}",
            common::slashed(list),
        );
        format!("{}{}{}", &s[..start], image_data, &s[end..])
    });
    t.join("net.prototxt")
}

#[test]
fn test_time_views_and_ensembles_average_what_each_net_gives_for_flipped_and_turned_files() {
    use flickr_style::pipeline::decode::{read_image, ColorMode};
    use flickr_style::pipeline::resize::resize_linear;
    use image::{imageops, RgbImage};
    // The fixture photos at the net's 64x64, as PNGs (lossless), and each of
    // the eight views of them made by the image crate: scoring a view's files
    // plainly must give what `--tta` computes by moving the blob's pixels.
    let t = tempfile::tempdir().unwrap();
    let images = fixture("images");
    let list = std::fs::read_to_string(images.join("list.txt")).unwrap();
    // (mirror, counter-clockwise quarter turns), in Tta::Dihedral's order.
    let views: Vec<(bool, u8)> = [false, true]
        .iter()
        .flat_map(|&m| (0..4).map(move |k| (m, k)))
        .collect();
    let mut lists = vec![String::new(); views.len()];
    for (i, line) in list.lines().enumerate() {
        let (rel, label) = line.rsplit_once(' ').unwrap();
        let bgr = resize_linear(
            &read_image(&images.join(rel), ColorMode::Color).unwrap(),
            64,
            64,
        );
        let rgb = RgbImage::from_fn(64, 64, |x, y| {
            let p = &bgr.data[(y as usize * 64 + x as usize) * 3..][..3];
            image::Rgb([p[2], p[1], p[0]])
        });
        for (v, &(mirror, turns)) in views.iter().enumerate() {
            let m = if mirror {
                imageops::flip_horizontal(&rgb)
            } else {
                rgb.clone()
            };
            // The image crate turns clockwise: three of its turns are one
            // counter-clockwise.
            let m = match turns {
                0 => m,
                1 => imageops::rotate270(&m),
                2 => imageops::rotate180(&m),
                _ => imageops::rotate90(&m),
            };
            let path = t.path().join(format!("v{v}_{i}.png"));
            m.save(&path).unwrap();
            lists[v] += &format!("{} {label}\n", path.display());
        }
    }
    let w30 = fixture("tiny-net/snapshots/tiny_iter_30.caffemodel");
    let w15 = fixture("tiny-net/snapshots/tiny_iter_15.caffemodel");
    let evaluate_with = |v: usize, tta: Tta, weights: &[&Path]| {
        let dir = tempfile::tempdir_in(t.path()).unwrap();
        let list = dir.path().join("list.txt");
        std::fs::write(&list, &lists[v]).unwrap();
        let net = image_list_net(dir.path(), &list);
        evaluate(&EvalOptions {
            tta,
            ensemble: weights.len() > 1,
            ..options(&net, weights, None)
        })
        .unwrap()
    };
    let run = |v: usize, tta: Tta| evaluate_with(v, tta, &[w30.as_path()]);
    let label_probabilities = |e: flickr_style::inference::evaluate::Evaluation| -> Vec<f32> {
        e.predictions
            .unwrap()
            .iter()
            .map(|p| p.value_label())
            .collect()
    };
    let plain: Vec<Vec<f32>> = (0..views.len())
        .map(|v| label_probabilities(run(v, Tta::None)))
        .collect();
    // The views really differ for this net (else the check below is empty).
    assert!(plain[0]
        .iter()
        .zip(&plain[1])
        .any(|(a, b)| (a - b).abs() > 1e-3));
    for (tta, n) in [(Tta::Mirror, 2), (Tta::Rot90, 4), (Tta::Dihedral, 8)] {
        let e = run(0, tta);
        let picked: Vec<usize> = tta
            .views()
            .iter()
            .map(|v| {
                views
                    .iter()
                    .position(|&w| w == (v.mirror, v.turns))
                    .unwrap()
            })
            .collect();
        assert_eq!(picked.len(), n);
        let p = e.predictions.unwrap();
        assert_eq!(p.len(), 24);
        for (i, x) in p.iter().enumerate() {
            let want = picked.iter().map(|&v| plain[v][i]).sum::<f32>() / n as f32;
            assert!(
                (x.value_label() - want).abs() < 1e-5,
                "{tta} image {i}: {} vs {want}",
                x.value_label()
            );
            assert!(x.value_predicted() >= x.value_label() - 1e-7);
        }
        let s = e.confusion.summary(&[]);
        assert_eq!(s.images, 24);
    }

    // An ensemble of the iteration-15 and -30 weights, each under the plain
    // and the mirrored view: the mean of the four runs on the files.
    let plain15: Vec<Vec<f32>> = [0, 4]
        .iter()
        .map(|&v| label_probabilities(evaluate_with(v, Tta::None, &[w15.as_path()])))
        .collect();
    let both_eval = evaluate_with(0, Tta::Mirror, &[w15.as_path(), w30.as_path()]);
    // Unanimity: the images all four runs gave the same best class.
    let predicted = |e: flickr_style::inference::evaluate::Evaluation| -> Vec<(usize, usize)> {
        e.predictions
            .unwrap()
            .iter()
            .map(|p| (p.predicted, p.label))
            .collect()
    };
    let runs: Vec<Vec<(usize, usize)>> = [(&w15, 0), (&w30, 0), (&w15, 4), (&w30, 4)]
        .iter()
        .map(|(w, v)| predicted(evaluate_with(*v, Tta::None, &[w.as_path()])))
        .collect();
    let (mut agreed, mut right) = (0u64, 0u64);
    for i in 0..24 {
        let first = runs[0][i].0;
        if runs.iter().all(|r| r[i].0 == first) {
            agreed += 1;
            right += u64::from(first == runs[0][i].1);
        }
    }
    assert_eq!(both_eval.unanimous, Some((agreed, right)));
    assert!(
        agreed > 0 && agreed < 24,
        "{agreed}: a check with something to check"
    );
    let both = label_probabilities(both_eval);
    for (i, got) in both.iter().enumerate() {
        let want = (plain15[0][i] + plain[0][i] + plain15[1][i] + plain[4][i]) / 4.0;
        assert!((got - want).abs() < 1e-5, "image {i}: {got} vs {want}");
    }
    assert!(plain15[0]
        .iter()
        .zip(&plain[0])
        .any(|(a, b)| (a - b).abs() > 1e-3));
    // The same weights twice are the one model.
    let twice = label_probabilities(evaluate_with(0, Tta::None, &[w30.as_path(), w30.as_path()]));
    assert_eq!(twice, plain[0]);
}

#[test]
fn affine_test_time_views_warp_the_mean_subtracted_blob_and_average() {
    // The fixture photos at 64x64 as PNGs, and a list of images that are
    // the mean colour everywhere (zero after mean subtraction).
    let t = tempfile::tempdir().unwrap();
    let photos = fixture_photo_pngs(t.path(), false);
    let mean_png = t.path().join("mean.png");
    image::RgbImage::from_pixel(64, 64, image::Rgb([123, 117, 104]))
        .save(&mean_png)
        .unwrap();
    let blank: String = photos
        .lines()
        .map(|l| format!("{} {}\n", mean_png.display(), l.rsplit_once(' ').unwrap().1))
        .collect();
    let w30 = fixture("tiny-net/snapshots/tiny_iter_30.caffemodel");
    let run = |list: &str, tta: &str| {
        let dir = tempfile::tempdir_in(t.path()).unwrap();
        let path = dir.path().join("list.txt");
        std::fs::write(&path, list).unwrap();
        let net = image_list_net(dir.path(), &path);
        let e = evaluate(&EvalOptions {
            tta: tta.parse().unwrap(),
            ..options(&net, &[w30.as_path()], None)
        })
        .unwrap();
        let p: Vec<f32> = e
            .predictions
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.value_label())
            .collect();
        (e, p)
    };
    let close = |a: &[f32], b: &[f32], tol: f32, what: &str| {
        assert_eq!(a.len(), 24);
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() < tol, "{what}, image {i}: {x} vs {y}");
        }
    };
    let (_, plain) = run(&photos, "none");
    let (_, mirror) = run(&photos, "mirror");
    let (_, empty) = run(&blank, "none");
    // The second view shifts the image entirely out of the frame: what is
    // left is the outside, which reads as the mean, so the view scores like
    // the mean-coloured image.
    let (_, gone) = run(&photos, "affine:2:translate=1000");
    let want: Vec<f32> = plain
        .iter()
        .zip(&empty)
        .map(|(a, b)| (a + b) / 2.0)
        .collect();
    close(&gone, &want, 1e-5, "shifted out");
    // A warp of a thousandth of a degree, on the mirror image: the mirror TTA.
    let (_, tiny) = run(&photos, "affine:2:rotate=0.001");
    close(&tiny, &mirror, 1e-3, "tiny turn");
    assert!(plain.iter().zip(&mirror).any(|(a, b)| (a - b).abs() > 1e-3));
    // The plankton ranges: the same numbers every run, a report that says
    // what was averaged, and something other than the plain scores.
    let (e, warped) = run(&photos, "affine:8");
    assert_eq!(run(&photos, "affine:8").1, warped);
    assert!(plain.iter().zip(&warped).any(|(a, b)| (a - b).abs() > 1e-3));
    assert!(e.unanimous.is_some());
    let out = tempfile::tempdir_in(t.path()).unwrap();
    let names: Vec<String> = Vec::new();
    let weights = [w30.as_path()];
    let report = flickr_style::inference::evaluate::Report {
        evaluation: &e,
        options: &EvalOptions {
            tta: "affine:8".parse().unwrap(),
            ..options(Path::new("net.prototxt"), &weights, None)
        },
        names: &names,
    };
    report.write(out.path()).unwrap();
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(
        md.contains("8 views of each image (the image and 7 quasi-random affine warps"),
        "{md}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("metrics.json")).unwrap()).unwrap();
    assert_eq!(json["views"].as_array().unwrap().len(), 8);
}

#[test]
fn a_net_with_cyclic_pooling_scores_every_quarter_turn_alike() {
    // The tiny net with CyclicSlice before conv1 and CyclicPool before its
    // first InnerProduct, with the iteration-30 weights (unchanged shapes):
    // averaging over the four turns changes nothing, while the plain net's
    // turns differ.
    let t = tempfile::tempdir().unwrap();
    edited_net(t.path(), |s| s);
    let plain = t.path().join("net.prototxt");
    let mut def = flickr_style::caffe::model::read_net_prototxt(&plain).unwrap();
    flickr_style::train::cyclic::cyclic_net(&mut def, "tiny").unwrap();
    let cyclic = t.path().join("cyclic.prototxt");
    std::fs::write(&cyclic, flickr_style::caffe::prototxt::to_string(&def)).unwrap();
    let w30 = fixture("tiny-net/snapshots/tiny_iter_30.caffemodel");
    let probabilities = |net: &Path, tta: Tta| -> Vec<f32> {
        evaluate(&EvalOptions {
            tta,
            ..options(net, &[w30.as_path()], None)
        })
        .unwrap()
        .predictions
        .unwrap()
        .iter()
        .map(|p| p.value_label())
        .collect()
    };
    let (c0, c4) = (
        probabilities(&cyclic, Tta::None),
        probabilities(&cyclic, Tta::Rot90),
    );
    assert_eq!(c0.len(), 24);
    for (i, (a, b)) in c0.iter().zip(&c4).enumerate() {
        assert!((a - b).abs() < 1e-5, "image {i}: {a} vs {b}");
    }
    let (p0, p4) = (
        probabilities(&plain, Tta::None),
        probabilities(&plain, Tta::Rot90),
    );
    assert!(p0.iter().zip(&p4).any(|(a, b)| (a - b).abs() > 1e-3));
    // Pooling the features inside the net is not the plain net's scores:
    // the layers really are in the path.
    assert!(p0.iter().zip(&c0).any(|(a, b)| (a - b).abs() > 1e-3));
}

#[test]
fn classify_of_the_raw_photos_gives_the_predictions_over_caffes_lmdb_of_them() {
    use flickr_style::inference::classify::{classify, ClassifyOptions};
    // The tiny net's TEST data is convert_imageset's 64x64 LMDB of the
    // fixture photos. Classifying the photo files themselves (decoded and
    // resized as OpenCV does, to the mean's 64x64) must give each photo the
    // probabilities evaluate gives its record.
    let model = fixture("tiny-net/train_val.prototxt");
    let w30 = fixture("tiny-net/snapshots/tiny_iter_30.caffemodel");
    let e = eval_tiny(&model, None, None).unwrap();
    let images = fixture("images");
    let files: Vec<std::path::PathBuf> = e
        .predictions
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| images.join(&p.image[9..]))
        .collect();
    let compute = Compute::cpu();
    let base = fixture("tiny-net");
    let weights = [w30.as_path()];
    let o = ClassifyOptions {
        top_k: 4,
        batch_size: Some(5),
        ..ClassifyOptions::new(&model, &weights, &base, &compute, &files)
    };
    let c = classify(&o).unwrap();
    assert_eq!(c.classes, 4);
    assert!(c.failed.is_empty(), "{:?}", c.failed);
    assert_eq!(c.rows.len(), 24);
    for (row, p) in c.rows.iter().zip(e.predictions.as_ref().unwrap()) {
        assert_eq!(row.image, images.join(&p.image[9..]));
        assert_eq!(row.top[0].0, p.predicted, "{}", p.image);
        assert!(
            (row.top[0].1 - p.value_predicted()).abs() < 1e-5,
            "{}",
            p.image
        );
        let label = row.top.iter().find(|t| t.0 == p.label).unwrap();
        assert!((label.1 - p.value_label()).abs() < 1e-5, "{}", p.image);
        let sum: f32 = row.top.iter().map(|t| t.1).sum();
        assert!((sum - 1.0).abs() < 1e-5);
    }

    // An unreadable file is skipped and named; a wrong size is a setup error.
    let t = tempfile::tempdir().unwrap();
    let broken = t.path().join("broken.jpg");
    std::fs::write(&broken, b"\xFF\xD8 not really").unwrap();
    let two = [files[0].clone(), broken.clone()];
    let c = classify(&ClassifyOptions {
        images: &two,
        scores: None,
        ..o
    })
    .unwrap();
    assert_eq!(c.rows.len(), 1);
    assert_eq!(c.failed.len(), 1);
    assert_eq!(c.failed[0].0, broken);
    let e = classify(&ClassifyOptions {
        size: Some((128, 128)),
        images: &two,
        ..o
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("64x64") && e.contains("128x128"), "{e}");
}

#[test]
fn classify_with_a_fusion_model_fuses_each_photos_probabilities_with_its_original_size() {
    use flickr_style::analysis::fusion::{FromImage, Fuser, Model};
    use flickr_style::inference::classify::{classify, ClassifyOptions};
    use flickr_style::pipeline::decode::{read_image, ColorMode};
    use flickr_style::pipeline::measure::measure_file;
    let model = fixture("tiny-net/train_val.prototxt");
    let w30 = fixture("tiny-net/snapshots/tiny_iter_30.caffemodel");
    let images = fixture("images");
    let files: Vec<std::path::PathBuf> = std::fs::read_to_string(images.join("list.txt"))
        .unwrap()
        .lines()
        .map(|l| images.join(l.rsplit_once(' ').unwrap().0))
        .collect();
    let compute = Compute::cpu();
    let base = fixture("tiny-net");
    let weights = [w30.as_path()];
    let plain = classify(&ClassifyOptions {
        top_k: 4,
        ..ClassifyOptions::new(&model, &weights, &base, &compute, &files)
    })
    .unwrap();
    // A model leaning on the width, the height, a samples column "area"
    // and two of `measure`'s measurements, which classify computes from
    // each photo itself.
    let fusion = Model {
        features: [
            "ln_width",
            "ln_height",
            "m_elongation",
            "area",
            "m_glcm_entropy",
        ]
        .map(String::from)
        .to_vec(),
        mean: vec![5.5, 5.0, 0.3, 10.0, 3.0],
        std: vec![0.5, 0.4, 0.2, 3.0, 0.5],
        temperature: 0.8,
        weights: vec![
            vec![1.0, -0.5, 0.7, 0.2, -0.4],
            vec![-1.0, 0.3, -0.3, 0.0, 0.6],
            vec![0.4, 0.4, 0.0, -0.3, 0.2],
            vec![0.0, -0.2, 0.5, 0.1, -0.5],
        ],
        bias: vec![0.1, -0.2, 0.0, 0.3],
    };
    let t = tempfile::tempdir().unwrap();
    let json = t.path().join("fusion.json");
    std::fs::write(&json, serde_json::json!({ "model": fusion }).to_string()).unwrap();
    // Every photo but the last has an area (its index).
    let mut samples = String::from("path,area\n");
    for (i, f) in files.iter().enumerate().take(23) {
        samples += &format!("{},{i}\n", f.display());
    }
    let samples_path = t.path().join("samples.csv");
    std::fs::write(&samples_path, samples).unwrap();
    let fuser = Fuser::load(&json, Some(&samples_path)).unwrap();
    let fused = classify(&ClassifyOptions {
        top_k: 4,
        fusion: Some(&fuser),
        ..ClassifyOptions::new(&model, &weights, &base, &compute, &files)
    })
    .unwrap();
    assert_eq!(fused.rows.len(), 23);
    assert_eq!(fused.failed.len(), 1);
    assert_eq!(fused.failed[0].0, files[23]);
    assert!(
        fused.failed[0].1.contains("has no row in"),
        "{:?}",
        fused.failed
    );
    let by_class = |top: &[(usize, f32)]| {
        let mut p = [0.0f32; 4];
        top.iter().for_each(|&(c, v)| p[c] = v);
        p
    };
    let mut moved = 0;
    for (i, (row, before)) in fused.rows.iter().zip(&plain.rows).enumerate() {
        assert_eq!(row.image, before.image);
        // The size of the photo file, not of the 64x64 input, and the
        // measurements of the file decoded to one channel.
        let m = read_image(&files[i], ColorMode::Color).unwrap();
        let image = FromImage {
            size: (m.width, m.height),
            measures: Some(measure_file(&files[i]).unwrap()),
        };
        let want = fusion.apply(&by_class(&before.top), &image, &[i as f64]);
        let got = by_class(&row.top);
        for k in 0..4 {
            assert!(
                (got[k] - want[k]).abs() < 1e-6,
                "{}: {got:?} vs {want:?}",
                i
            );
        }
        moved += usize::from(row.top[0].0 != before.top[0].0);
    }
    assert!(moved > 0, "the model changes some best guesses");

    // Without the samples file the measurement is missing: refused up front.
    let e = Fuser::load(&json, None).unwrap_err().to_string();
    assert!(e.contains("also uses area"), "{e}");
    // A model for another number of classes.
    let mut three = fusion.clone();
    three.weights.pop();
    three.bias.pop();
    std::fs::write(&json, serde_json::json!({ "model": three }).to_string()).unwrap();
    let fuser = Fuser::load(&json, Some(&samples_path)).unwrap();
    let e = classify(&ClassifyOptions {
        fusion: Some(&fuser),
        ..ClassifyOptions::new(&model, &weights, &base, &compute, &files)
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("fitted for 3"), "{e}");
}

#[test]
fn classify_cli_walks_folders_and_writes_the_top_classes() {
    let t = tempfile::tempdir().unwrap();
    let names = t.path().join("names.txt");
    std::fs::write(&names, "circle\nsquare\ntriangle\nstar\n").unwrap();
    let model = fixture("tiny-net/train_val.prototxt");
    let weights = fixture("tiny-net/snapshots/tiny_iter_30.caffemodel");
    let out = t.path().join("predictions.csv");
    let classify_cli = |extra: &[&str]| {
        let mut args = vec![
            "classify",
            "--model",
            model.to_str().unwrap(),
            "--weights",
            weights.to_str().unwrap(),
            "--names",
            names.to_str().unwrap(),
            "--top-k",
            "2",
            "--threshold",
            "0.5",
            "--tta",
            "mirror",
        ];
        args.extend_from_slice(extra);
        run(t.path(), &args)
    };
    let images = fixture("images");
    let (ok, _, err) = classify_cli(&[images.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(err.contains("classified 24 images (0 skipped)"), "{err}");
    // The best guesses, counted per class, on stderr.
    assert!(err.contains("| class | images | at least 0.5 |"), "{err}");
    let csv = std::fs::read_to_string(&out).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows[0],
        "image,class_1,probability_1,class_2,probability_2,confident,unanimous"
    );
    assert_eq!(rows.len(), 25);
    // Folders are searched recursively, in sorted order.
    assert!(
        rows[1].starts_with(&images.join("animal").join("").display().to_string()),
        "{}",
        rows[1]
    );
    for r in &rows[1..] {
        let f: Vec<&str> = r.split(',').collect();
        assert_eq!(f.len(), 7, "{r}");
        // Two views: unanimous when the mirror image's best class is the same.
        assert!(["true", "false"].contains(&f[6]), "{r}");
        assert!(
            ["circle", "square", "triangle", "star"].contains(&f[1]),
            "{r}"
        );
        let (p1, p2): (f32, f32) = (f[2].parse().unwrap(), f[4].parse().unwrap());
        assert!(p1 >= p2 && p1 + p2 <= 1.0 + 1e-6, "{r}");
        assert_eq!(f[5], (p1 >= 0.5).to_string(), "{r}");
    }

    // --strict: an unreadable image stops it before anything is written.
    let broken = t.path().join("broken.png");
    std::fs::write(&broken, b"not an image").unwrap();
    let out2 = t.path().join("p2.csv");
    let (ok, _, err) = classify_cli(&[
        broken.to_str().unwrap(),
        images.join("animal/cat.jpg").to_str().unwrap(),
        "--strict",
        "--out",
        out2.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("broken.png") && err.contains("1 of 2 images"),
        "{err}"
    );
    assert!(!out2.exists());
    // Without it the image is skipped and named, the rest classified.
    let (ok, stdout, err) = classify_cli(&[
        broken.to_str().unwrap(),
        images.join("animal/cat.jpg").to_str().unwrap(),
    ]);
    assert!(
        ok && err.contains("skipped") && err.contains("broken.png"),
        "{err}"
    );
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
}

#[test]
fn classify_with_caffes_deploy_net_matches_the_net_as_trained() {
    use flickr_style::caffe::mean_file::MeanImage;
    use flickr_style::caffe::proto::Phase;
    use flickr_style::inference::classify::{classify, ClassifyOptions};
    use flickr_style::train::layers::BuildContext;
    use flickr_style::train::net::Net;
    // Flickr Style's train_val.prototxt (ImageData: resize 256, crop 227,
    // the ImageNet mean file) and its deploy.prototxt (an Input layer, a
    // Softmax "prob"), with the same weights: given the ImageNet mean, the
    // deploy net must classify the photos as the trained net does.
    let t = tempfile::tempdir().unwrap();
    let models = common::caffe_ref().join("models/finetune_flickr_style");
    let npy = common::caffe_ref().join("ilsvrc12/ilsvrc_2012_mean.npy");
    let mean = t.path().join("data/ilsvrc12/imagenet_mean.binaryproto");
    std::fs::create_dir_all(mean.parent().unwrap()).unwrap();
    MeanImage::read_npy(&npy)
        .unwrap()
        .write_binaryproto(&mean)
        .unwrap();
    // Random weights for every layer of the net (fc8_flickr included).
    let mut def =
        flickr_style::caffe::model::read_net_prototxt(&models.join("train_val.prototxt")).unwrap();
    flickr_style::train::commands::synthetic_inputs(&mut def).unwrap();
    let net = Net::new(&def, &BuildContext::cpu(t.path(), 7, Phase::Train), None).unwrap();
    let weights = t.path().join("w.caffemodel");
    flickr_style::caffe::write_binary(&weights, &net.to_proto(&def).unwrap()).unwrap();
    drop(net);

    let images: Vec<std::path::PathBuf> = [
        "animal/cat.jpg",
        "vehicle/logo_rgba.png",
        "animal/cat_gray.jpg",
    ]
    .iter()
    .map(|p| fixture("images").join(p))
    .collect();
    let compute = Compute::cpu();
    let trained_model = models.join("train_val.prototxt");
    let weights = [weights.as_path()];
    let o = ClassifyOptions {
        batch_size: Some(3),
        ..ClassifyOptions::new(&trained_model, &weights, t.path(), &compute, &images)
    };
    let trained = classify(&o).unwrap();
    assert_eq!(trained.classes, 20);
    assert_eq!(trained.kind, ScoreKind::Logits);
    let deploy_model = models.join("deploy.prototxt");
    for m in [mean.as_path(), npy.as_path()] {
        let deploy = classify(&ClassifyOptions {
            model: &deploy_model,
            mean: Some(m),
            scores: None,
            ..o
        })
        .unwrap();
        assert_eq!(deploy.kind, ScoreKind::Probabilities);
        assert_eq!(deploy.rows.len(), 3);
        for (a, b) in trained.rows.iter().zip(&deploy.rows) {
            assert_eq!(a.image, b.image);
            for (x, y) in a.top.iter().zip(&b.top) {
                assert_eq!(x.0, y.0, "{}", a.image.display());
                assert!(
                    (x.1 - y.1).abs() < 1e-5,
                    "{}: {x:?} vs {y:?}",
                    a.image.display()
                );
            }
        }
    }
    // The same deploy net written the old way, with net-level input fields
    // (as ResNet's deploy files are), becomes the same net and scores alike.
    let text = std::fs::read_to_string(&deploy_model).unwrap();
    let start = text.find("layer {").unwrap();
    let end = start + text[start..].find("\n}\n").unwrap() + 3;
    assert!(text[start..end].contains("type: \"Input\""));
    let legacy = t.path().join("legacy_deploy.prototxt");
    std::fs::write(
        &legacy,
        format!(
            "{}input: \"data\"\ninput_dim: 10\ninput_dim: 3\ninput_dim: 227\ninput_dim: 227\n{}",
            &text[..start],
            &text[end..]
        ),
    )
    .unwrap();
    let scored = |model: &std::path::Path| {
        classify(&ClassifyOptions {
            model,
            mean: Some(&mean),
            scores: None,
            ..o
        })
        .unwrap()
        .rows
        .into_iter()
        .map(|r| r.top)
        .collect::<Vec<_>>()
    };
    assert_eq!(scored(&legacy), scored(&deploy_model));
    // A deploy net without a mean is refused; so is a mean for a trained net.
    let e = classify(&ClassifyOptions {
        model: &deploy_model,
        scores: None,
        ..o
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("--mean"), "{e}");
    let e = classify(&ClassifyOptions {
        mean: Some(&mean),
        scores: None,
        ..o
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("deploy nets"), "{e}");

    // --oversample (classify.py's ten crops): the mean of what the deploy
    // net gives each 227x227 crop, written out as a file of its own.
    use flickr_style::pipeline::decode::{read_image, ColorMode};
    use flickr_style::pipeline::resize::resize_linear;
    let mut crop_files = Vec::new();
    for (i, p) in images.iter().enumerate() {
        let m = resize_linear(&read_image(p, ColorMode::Color).unwrap(), 256, 256);
        let offsets = [(0, 0), (0, 29), (29, 0), (29, 29), (14, 14)];
        for v in 0..10 {
            let (y0, x0) = offsets[v % 5];
            let img = image::RgbImage::from_fn(227, 227, |x, y| {
                let x = if v >= 5 { 226 - x } else { x };
                let at = ((y0 + y as usize) * 256 + x0 + x as usize) * 3;
                image::Rgb([m.data[at + 2], m.data[at + 1], m.data[at]])
            });
            let f = t.path().join(format!("crop_{i}_{v}.png"));
            img.save(&f).unwrap();
            crop_files.push(f);
        }
    }
    let means = [104.0f32, 117.0, 123.0];
    let deploy_with = |images: &[std::path::PathBuf], oversample: bool, size| {
        classify(&ClassifyOptions {
            model: &deploy_model,
            images,
            mean_values: &means,
            size,
            oversample,
            top_k: 20,
            scores: None,
            ..o
        })
        .unwrap()
    };
    let crops = deploy_with(&crop_files, false, Some((227, 227)));
    let ten = deploy_with(&images, true, None);
    let prob = |r: &flickr_style::inference::classify::Classified, c: usize| {
        r.top.iter().find(|t| t.0 == c).unwrap().1
    };
    for (i, row) in ten.rows.iter().enumerate() {
        for c in 0..20 {
            let want = (0..10)
                .map(|v| prob(&crops.rows[i * 10 + v], c))
                .sum::<f32>()
                / 10.0;
            assert!((prob(row, c) - want).abs() < 1e-6, "image {i} class {c}");
        }
    }
    // The ten crops differ from the centre crop alone.
    let centre = deploy_with(&images, false, None);
    assert!(centre
        .rows
        .iter()
        .zip(&ten.rows)
        .any(|(a, b)| (prob(a, 0) - prob(b, 0)).abs() > 1e-6));
}

#[test]
fn deploy_of_flickr_styles_train_val_is_caffes_own_deploy_net() {
    use flickr_style::caffe::model::read_net_prototxt;
    // Caffe's model zoo ships finetune_flickr_style's deploy.prototxt beside
    // its train_val.prototxt: the one `deploy` writes must be the same net.
    let t = tempfile::tempdir().unwrap();
    let models = common::caffe_ref().join("models/finetune_flickr_style");
    let out = t.path().join("deploy.prototxt");
    let (ok, _, err) = run(
        t.path(),
        &[
            "deploy",
            models.join("train_val.prototxt").to_str().unwrap(),
            out.to_str().unwrap(),
            "--batch",
            "10",
        ],
    );
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.starts_with("# Deploy net of ")
            && text.contains("resized to 256x256, centre crop 227"),
        "{text}"
    );
    let ours = read_net_prototxt(&out).unwrap();
    let caffes = read_net_prototxt(&models.join("deploy.prototxt")).unwrap();
    assert_eq!(ours, caffes);
    // A net without a data layer (a deploy net itself) cannot be deployed.
    let (ok, _, err) = run(
        t.path(),
        &[
            "deploy",
            models.join("deploy.prototxt").to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    assert!(
        !ok && err.contains("one Data, ImageData, WindowData or HDF5Data layer"),
        "{err}"
    );
}

#[test]
fn evaluate_on_another_source_than_the_nets_own() {
    use flickr_style::pipeline::decode::{read_image, ColorMode};
    use flickr_style::pipeline::resize::resize_linear;
    // Six photos as 64x64 PNGs in a folder of their own, listed by relative
    // paths: `source` points the net's ImageData layer there.
    let t = tempfile::tempdir().unwrap();
    let new = t.path().join("cruise2");
    std::fs::create_dir(&new).unwrap();
    let (mut relative, mut absolute) = (String::new(), String::new());
    for (i, (rel, label)) in [
        ("animal/cat.jpg", 0),
        ("animal/chelsea.png", 0),
        ("object/coffee.jpeg", 1),
        ("science/retina.jpg", 2),
        ("vehicle/rocket.jpg", 3),
        ("vehicle/motorcycle.jpg", 3),
    ]
    .iter()
    .enumerate()
    {
        let m = resize_linear(
            &read_image(&fixture("images").join(rel), ColorMode::Color).unwrap(),
            64,
            64,
        );
        let rgb = image::RgbImage::from_fn(64, 64, |x, y| {
            let p = &m.data[(y as usize * 64 + x as usize) * 3..][..3];
            image::Rgb([p[2], p[1], p[0]])
        });
        let name = format!("img{i}.png");
        rgb.save(new.join(&name)).unwrap();
        relative += &format!("{name} {label}\n");
        absolute += &format!("{} {label}\n", new.join(&name).display());
    }
    std::fs::write(new.join("list.txt"), relative).unwrap();
    let direct = t.path().join("absolute.txt");
    std::fs::write(&direct, absolute).unwrap();
    let w30 = fixture("tiny-net/snapshots/tiny_iter_30.caffemodel");
    let dir_a = tempfile::tempdir_in(t.path()).unwrap();
    let net_elsewhere = image_list_net(dir_a.path(), &fixture("images/list.txt"));
    let moved = evaluate(&EvalOptions {
        source: Some(&new.join("list.txt")),
        ..options(&net_elsewhere, &[w30.as_path()], None)
    })
    .unwrap();
    let dir_b = tempfile::tempdir_in(t.path()).unwrap();
    let net_direct = image_list_net(dir_b.path(), &direct);
    let want = evaluate(&options(&net_direct, &[w30.as_path()], None)).unwrap();
    let (a, b) = (moved.predictions.unwrap(), want.predictions.unwrap());
    assert_eq!(a.len(), 6);
    assert_eq!(a[0].image, "img0.png");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.label, x.predicted), (y.label, y.predicted));
        assert_eq!(x.value_label(), y.value_label());
    }
    // A folder for a list-reading net, a file for an LMDB-reading one.
    let e = evaluate(&EvalOptions {
        source: Some(&new),
        ..options(&net_elsewhere, &[w30.as_path()], None)
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("give a list file"), "{e}");
    let tiny = fixture("tiny-net/train_val.prototxt");
    let e = evaluate(&EvalOptions {
        source: Some(&direct),
        ..options(&tiny, &[w30.as_path()], None)
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("to-lmdb"), "{e}");
}

/// Counts (items, right) the pooled way from a reference forward pass:
/// every position of `scores` (class axis `axis`) against its label, the
/// `ignore` label left out.
fn pooled_counts(net: &flickr_style::train::net::Net, axis: usize, ignore: i32) -> (u64, u64) {
    let s = net.blob("score").unwrap();
    let dims = s.dims().to_vec();
    let v = s.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let l = net
        .blob("label")
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let (outer, classes) = (dims[..axis].iter().product::<usize>(), dims[axis]);
    let inner: usize = dims[axis + 1..].iter().product();
    let (mut items, mut right) = (0, 0);
    for o in 0..outer {
        for i in 0..inner {
            let label = l[o * inner + i] as i32;
            if label == ignore {
                continue;
            }
            let at = |c: usize| v[(o * classes + c) * inner + i];
            let best = (0..classes).fold(0, |b, c| if at(c) > at(b) { c } else { b });
            items += 1;
            right += u64::from(best == label as usize);
        }
    }
    (items, right)
}

/// A segmentation-style net (a score map, N x classes x H x W, against a
/// label per pixel) and LRCN's language model (scores T x N x words, the
/// class axis 2): evaluate counts every position as an item, in Caffe's
/// label order, and leaves the ignore_label's positions out.
#[test]
fn score_maps_and_sequences_are_evaluated_position_by_position() {
    use flickr_style::caffe::proto::Phase;
    use flickr_style::train::layers::BuildContext;
    use flickr_style::train::net::Net;
    let t = tempfile::tempdir().unwrap();
    // Per-pixel labels 0-2 made by the net itself (two thresholded noise
    // maps added), 2 ignored.
    let seg = r#"name: "seg"
layer { name: "d" type: "DummyData" top: "data" top: "a" top: "b"
  dummy_data_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } shape { dim: 2 dim: 4 dim: 5 } shape { dim: 2 dim: 4 dim: 5 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "gaussian" std: 1 } data_filler { type: "gaussian" std: 1 } } }
layer { name: "ta" type: "Threshold" bottom: "a" top: "ta" }
layer { name: "tb" type: "Threshold" bottom: "b" top: "tb" }
layer { name: "label" type: "Eltwise" bottom: "ta" bottom: "tb" top: "label" }
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
  convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" loss_param { ignore_label: 2 } }
"#;
    let data = std::fs::read_to_string(fixture("tiny-net/train_val.prototxt")).unwrap();
    let data = &data[..data.find("layer {\n  name: \"conv1\"").unwrap()];
    let uniform = r#"weight_filler { type: "uniform" min: -0.5 max: 0.5 }"#;
    let lm = format!(
        r#"{data}layer {{ name: "quiet" type: "Silence" bottom: "data" }}
layer {{ name: "words" type: "Reshape" bottom: "label" top: "words" reshape_param {{ shape {{ dim: 4 dim: 2 }} }} }}
layer {{ name: "cont" type: "Reshape" bottom: "label" top: "cont" reshape_param {{ shape {{ dim: 4 dim: 2 }} }} }}
layer {{ name: "embed" type: "Embed" bottom: "words" top: "embedded" embed_param {{ num_output: 8 input_dim: 4 {uniform} }} }}
layer {{ name: "lstm" type: "LSTM" bottom: "embedded" bottom: "cont" top: "lstm" recurrent_param {{ num_output: 8 {uniform} }} }}
layer {{ name: "score" type: "InnerProduct" bottom: "lstm" top: "score" inner_product_param {{ num_output: 4 axis: 2 {uniform} }} }}
layer {{ name: "target" type: "Reshape" bottom: "label" top: "target" reshape_param {{ shape {{ dim: 4 dim: 2 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "target" top: "loss" loss_param {{ ignore_label: 0 }} softmax_param {{ axis: 2 }} }}
"#
    );
    for (name, text, axis, ignore, iterations, positions) in [
        ("seg", seg.to_string(), 1, 2, Some(1), 20),
        ("lm", lm, 2, 0, None, 1),
    ] {
        let model = t.path().join(format!("{name}.prototxt"));
        std::fs::write(&model, &text).unwrap();
        let got = evaluate(&EvalOptions {
            iterations,
            ..options(&model, &[], None)
        })
        .unwrap();
        // The same net from the same seed, one pass, counted here.
        let ctx = BuildContext::cpu(fixture("tiny-net"), 0, Phase::Test);
        let def = flickr_style::caffe::model::read_net_prototxt(&model).unwrap();
        let mut net = Net::new(&def, &ctx, None).unwrap();
        let (mut items, mut right) = (0, 0);
        for _ in 0..iterations.unwrap_or(3) {
            net.forward().unwrap();
            let (i, r) = pooled_counts(&net, axis, ignore);
            items += i;
            right += r;
        }
        let diagonal: u64 = (0..got.confusion.classes())
            .map(|c| got.confusion.count(c, c))
            .sum();
        assert_eq!((got.confusion.total(), diagonal), (items, right), "{name}");
        assert!(
            items > 5 && got.ignored > 0,
            "{name}: {items} items, {} ignored",
            got.ignored
        );
        assert_eq!(got.positions, positions, "{name}");
        let opts = EvalOptions {
            iterations,
            ..options(&model, &[], None)
        };
        let md = flickr_style::inference::evaluate::Report {
            options: &opts,
            evaluation: &got,
            names: &[],
        }
        .markdown();
        assert_eq!(
            md.contains("20 per image") && md.contains("Mean IoU"),
            positions > 1,
            "{md}"
        );
    }
}
