//! `fuse`: late fusion of the net's probabilities with each image's size and
//! a manifest's measurements, cross-validated. Synthetic sets where size
//! does and does not tell the classes apart, and the mistakes it names.
mod common;
use common::run;
use flickr_style::analysis::fusion::{fuse, FuseOptions};
use rand::{Rng, SeedableRng};
use std::path::Path;

/// Writes `probabilities.csv` and `samples.csv` for `n` images of 4
/// classes: the net's probabilities lean weakly to the true class; each
/// image's width grows with its class when `size_signal` (else it is
/// noise), and a `noise` column carries nothing.
fn dataset(dir: &Path, n: usize, size_signal: bool, seed: u64) -> FuseOptions {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut probs = String::from("image,label,a,b,c,d\n");
    let mut samples = String::from("path,class,label,list,width,height,noise\n");
    for i in 0..n {
        let label = i % 4;
        let logits: Vec<f64> = (0..4)
            .map(|k| rng.random_range(-1.0..1.0) + if k == label { 0.6 } else { 0.0 })
            .collect();
        let total: f64 = logits.iter().map(|v| v.exp()).sum();
        let p: Vec<String> = logits
            .iter()
            .map(|v| ((v.exp() / total) as f32).to_string())
            .collect();
        let path = format!("/data/{label}/{i}.png");
        // LMDB keys name the list path after an 8-digit line number.
        probs += &format!("{:08}_{path},{label},{}\n", i, p.join(","));
        let base = if size_signal {
            40.0 * 1.6f64.powi(label as i32)
        } else {
            80.0
        };
        let width = (base * rng.random_range(0.85f64..1.15)).round();
        let height = (60.0 * rng.random_range(0.7f64..1.3)).round();
        samples += &format!(
            "{path},{label},{label},test,{width},{height},{}\n",
            rng.random_range(-1.0..1.0)
        );
    }
    std::fs::write(dir.join("probabilities.csv"), probs).unwrap();
    std::fs::write(dir.join("samples.csv"), samples).unwrap();
    FuseOptions {
        probabilities: dir.join("probabilities.csv"),
        samples: dir.join("samples.csv"),
        size: true,
        features: Vec::new(),
        measures: None,
        folds: 5,
        seed: 1,
        l2: 1e-3,
    }
}

#[test]
fn size_that_tells_classes_apart_lowers_the_out_of_fold_log_loss() {
    let t = tempfile::tempdir().unwrap();
    let o = dataset(t.path(), 400, true, 3);
    let f = fuse(&o).unwrap();
    assert_eq!((f.images, f.classes, f.folds), (400, 4, 5));
    // The net alone is weak; recalibrating helps a little; the width
    // (each class 1.6x wider than the last, ±15%) nearly decides.
    assert!(f.net.accuracy < 0.6, "{:?}", f.net);
    assert!(f.calibrated.log_loss <= f.net.log_loss + 0.01, "{f:?}");
    assert!(f.fused.log_loss < f.calibrated.log_loss - 0.5, "{f:?}");
    assert!(f.fused.accuracy > 0.9, "{:?}", f.fused);
    // The fitted model leans on the width, not the height.
    let norm = |j: usize| {
        f.model
            .weights
            .iter()
            .map(|w| w[j] * w[j])
            .sum::<f64>()
            .sqrt()
    };
    assert_eq!(f.model.features, ["ln_width", "ln_height"]);
    assert!(norm(0) > 5.0 * norm(1), "{:?}", f.model.weights);
    // Seeded: the same folds and figures again.
    assert_eq!(fuse(&o).unwrap().fused, f.fused);
    let md = f.to_markdown();
    assert!(md.contains("| fused with ln_width, ln_height |"), "{md}");

    // The files: out-of-fold probabilities per image, as probabilities.csv
    // lays them out, and the model.
    let out = t.path().join("out");
    f.write(&out).unwrap();
    let fused = std::fs::read_to_string(out.join("fused.csv")).unwrap();
    let rows: Vec<&str> = fused.lines().collect();
    assert_eq!(rows[0], "image,label,a,b,c,d");
    assert_eq!(rows.len(), 401);
    assert!(
        rows[1].starts_with("00000000_/data/0/0.png,0,"),
        "{}",
        rows[1]
    );
    let p: Vec<f64> = rows[1]
        .split(',')
        .skip(2)
        .map(|v| v.parse().unwrap())
        .collect();
    assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-5);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("fusion.json")).unwrap()).unwrap();
    assert_eq!(json["model"]["weights"].as_array().unwrap().len(), 4);
    assert!(
        json["fused"]["log_loss"].as_f64().unwrap() < json["net"]["log_loss"].as_f64().unwrap()
    );
}

#[test]
fn features_without_signal_cost_little() {
    let t = tempfile::tempdir().unwrap();
    let mut o = dataset(t.path(), 400, false, 4);
    o.size = false;
    o.features = vec!["noise".into()];
    let f = fuse(&o).unwrap();
    assert!(
        (f.fused.log_loss - f.calibrated.log_loss).abs() < 0.02,
        "{:?} vs {:?}",
        f.fused,
        f.calibrated
    );
    assert_eq!(f.model.features, ["noise"]);
}

#[test]
fn mistakes_name_the_file_and_what_is_wrong() {
    let t = tempfile::tempdir().unwrap();
    let o = dataset(t.path(), 40, true, 5);
    let err = |o: &FuseOptions| format!("{:#}", fuse(o).unwrap_err());
    // A column that is not there lists the ones that are.
    let e = err(&FuseOptions {
        features: vec!["area".into()],
        measures: None,
        ..o.clone()
    });
    assert!(
        e.contains("no column \"area\"") && e.contains("noise"),
        "{e}"
    );
    // More folds than images; no features at all.
    let e = err(&FuseOptions {
        folds: 41,
        ..o.clone()
    });
    assert!(e.contains("41 folds for 40 images"), "{e}");
    let e = err(&FuseOptions {
        size: false,
        ..o.clone()
    });
    assert!(e.contains("no features"), "{e}");
    // An image samples.csv does not know, a label that disagrees, a size
    // that is not one.
    let samples = std::fs::read_to_string(&o.samples).unwrap();
    std::fs::write(
        &o.samples,
        samples.replace("/data/1/5.png", "/elsewhere/5.png"),
    )
    .unwrap();
    let e = err(&o);
    assert!(
        e.contains("/data/1/5.png is not in") && e.contains("samples.csv"),
        "{e}"
    );
    std::fs::write(
        &o.samples,
        samples.replace("/data/1/5.png,1,1,", "/data/1/5.png,1,2,"),
    )
    .unwrap();
    let e = err(&o);
    assert!(e.contains("has label \"2\" here but 1"), "{e}");
    let line = samples.lines().nth(6).unwrap().to_string();
    let f: Vec<&str> = line.split(',').collect();
    let broken = format!("{},{},{},{},,{},{}", f[0], f[1], f[2], f[3], f[5], f[6]);
    std::fs::write(&o.samples, samples.replace(&line, &broken)).unwrap();
    let e = err(&o);
    assert!(
        e.contains("samples.csv:7") && e.contains("ln_width of /data/1/5.png"),
        "{e}"
    );
    std::fs::write(&o.samples, &samples).unwrap();
    // A probabilities file that is not one, or has a bad value.
    let probs = std::fs::read_to_string(&o.probabilities).unwrap();
    std::fs::write(
        &o.probabilities,
        probs.replacen("image,label", "file,label", 1),
    )
    .unwrap();
    assert!(err(&o).contains("not an evaluate probabilities.csv"));
    let second = probs.lines().nth(2).unwrap();
    let bad = second.rsplit_once(',').unwrap().0.to_string() + ",NaN";
    std::fs::write(&o.probabilities, probs.replace(second, &bad)).unwrap();
    let e = err(&o);
    assert!(
        e.contains("probabilities.csv:3") && e.contains("\"NaN\" is not a probability"),
        "{e}"
    );
}

#[test]
fn fuse_cli_prints_the_comparison_and_writes_the_files() {
    let t = tempfile::tempdir().unwrap();
    dataset(t.path(), 120, true, 6);
    let (ok, stdout, err) = run(
        t.path(),
        &[
            "fuse",
            "probabilities.csv",
            "--samples",
            "samples.csv",
            "--feature",
            "noise",
            "--folds",
            "3",
            "--out",
            "fusion",
        ],
    );
    assert!(ok, "{err}");
    assert!(stdout.contains("3-fold cross-validation"), "{stdout}");
    assert!(
        stdout.contains("| fused with ln_width, ln_height, noise |"),
        "{stdout}"
    );
    for f in ["fusion.md", "fusion.json", "fused.csv"] {
        assert!(t.path().join("fusion").join(f).exists(), "{f}");
    }
    // A report folder stands for its probabilities.csv.
    let (ok, stdout, err) = run(t.path(), &["fuse", ".", "--samples", "samples.csv"]);
    assert!(ok, "{err}");
    assert!(stdout.contains("5-fold"), "{stdout}");
    let (ok, _, err) = run(
        t.path(),
        &["fuse", "missing.csv", "--samples", "samples.csv"],
    );
    assert!(!ok);
    assert!(err.contains("missing.csv"), "{err}");
}

/// Writes 64x64 gray PNGs of 2 classes into `dir` with `samples.csv` and a
/// `probabilities.csv` in which the net cannot tell them apart: class 0 is
/// a round blob, class 1 one three times as long as wide, both of random
/// size, turn (0° or 90°) and place, bright on a noisy dark field, so only
/// the shape separates them.
fn shapes(dir: &Path, n: usize) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut probs = String::from("image,label,round,long\n");
    let mut samples = String::from("path,class,label,list,width,height\n");
    for i in 0..n {
        let label = i % 2;
        let r = rng.random_range(5.0..9.0f64);
        let (mut a, mut b) = if label == 0 {
            (r, r)
        } else {
            (1.7 * r, r / 1.7)
        };
        if rng.random_bool(0.5) {
            (a, b) = (b, a);
        }
        let (cx, cy) = (rng.random_range(24.0..40.0), rng.random_range(24.0..40.0));
        let px: Vec<u8> = (0..64 * 64)
            .map(|k| {
                let (x, y) = ((k % 64) as f64, (k / 64) as f64);
                if ((x - cx) / a).powi(2) + ((y - cy) / b).powi(2) < 1.0 {
                    rng.random_range(150..230)
                } else {
                    rng.random_range(0..6)
                }
            })
            .collect();
        let path = dir.join(format!("{i}.png"));
        image::GrayImage::from_raw(64, 64, px)
            .unwrap()
            .save(&path)
            .unwrap();
        let p: f64 = rng.random_range(0.45..0.55);
        probs += &format!("{},{label},{p},{}\n", path.display(), 1.0 - p);
        samples += &format!("{},{label},{label},test,64,64\n", path.display());
    }
    std::fs::write(dir.join("probabilities.csv"), probs).unwrap();
    std::fs::write(dir.join("samples.csv"), samples).unwrap();
}

#[test]
fn measured_shape_tells_round_from_long_where_the_net_cannot() {
    let t = tempfile::tempdir().unwrap();
    shapes(t.path(), 80);
    let mut o = FuseOptions {
        probabilities: t.path().join("probabilities.csv"),
        samples: t.path().join("samples.csv"),
        size: false,
        features: Vec::new(),
        measures: Some(t.path().join("measures.csv")),
        folds: 4,
        seed: 1,
        l2: 1e-3,
    };
    // Before `measure`, the file is missing and the message says what to run.
    let e = fuse(&o).unwrap_err().to_string();
    assert!(
        e.contains("measures.csv") && e.contains("flickr-style measure"),
        "{e}"
    );
    let samples_before = std::fs::read_to_string(&o.samples).unwrap();
    let (ok, _, err) = run(t.path(), &["measure", "samples.csv"]);
    assert!(ok, "{err}");
    assert!(err.contains("measured 80 images into"), "{err}");
    let measures = std::fs::read_to_string(o.measures.as_ref().unwrap()).unwrap();
    let names = flickr_style::pipeline::measure::NAMES;
    assert_eq!(
        measures.lines().next().unwrap(),
        format!("path,{}", names.join(","))
    );
    assert_eq!(measures.lines().count(), 81);
    // The samples are left as they were; measuring again gives the same file.
    assert_eq!(std::fs::read_to_string(&o.samples).unwrap(), samples_before);
    let (ok, _, err) = run(t.path(), &["measure", "samples.csv"]);
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read_to_string(o.measures.as_ref().unwrap()).unwrap(),
        measures
    );

    let f = fuse(&o).unwrap();
    assert!(f.net.accuracy < 0.65, "{:?}", f.net);
    // At 90% accuracy on what is predicted, the net must leave most images
    // to a person; the fused model almost none.
    let ninety = |sc: &flickr_style::analysis::fusion::Score| {
        assert_eq!(sc.abstaining[0].target, 0.9);
        sc.abstaining[0].point.map_or(0.0, |p| p.coverage)
    };
    assert!(ninety(&f.net) < 0.3, "{:?}", f.net.abstaining);
    assert!(ninety(&f.fused) > 0.95, "{:?}", f.fused.abstaining);
    let md = f.to_markdown();
    assert!(md.contains("| accuracy wanted | the net | recalibrated | fused |"));
    // Each share comes with the threshold on that model's own probabilities.
    let p = f.fused.abstaining[0].point.unwrap();
    assert!(
        md.contains(&format!(
            "{:.1}% (p ≥ {:.4}) |",
            100.0 * p.coverage,
            flickr_style::analysis::abstention::printable(p.threshold)
        )),
        "{md}"
    );
    assert!(f.fused.accuracy > 0.95, "{:?}", f.fused);
    assert!(
        f.fused.log_loss < f.calibrated.log_loss - 0.4,
        "{:?} vs {:?}",
        f.fused,
        f.calibrated
    );
    // The fused probabilities are the measurements' doing: the size, the
    // same for every image, was left out. Measurements come from their own
    // file only, and an image it lacks is named.
    o.features = vec!["m_elongation".into()];
    let e = fuse(&o).unwrap_err().to_string();
    assert!(
        e.contains("m_elongation") && e.contains("--measured"),
        "{e}"
    );
    o.features.clear();
    let lines: Vec<&str> = measures.lines().collect();
    let dropped = lines[5].split(',').next().unwrap();
    let fewer: String = lines
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != 5)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    std::fs::write(o.measures.as_ref().unwrap(), fewer).unwrap();
    let e = fuse(&o).unwrap_err().to_string();
    assert!(e.contains(dropped) && e.contains("measure again"), "{e}");
    // The CLI's --measured reads measures.csv beside the samples.
    std::fs::write(o.measures.as_ref().unwrap(), &measures).unwrap();
    let (ok, stdout, err) = run(
        t.path(),
        &[
            "fuse",
            "probabilities.csv",
            "--samples",
            "samples.csv",
            "--measured",
            "--no-size",
            "--folds",
            "4",
        ],
    );
    assert!(ok, "{err}");
    assert!(stdout.contains("m_glcm_entropy"), "{stdout}");
}

#[test]
fn measure_names_an_unreadable_image_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    shapes(t.path(), 6);
    std::fs::write(t.path().join("3.png"), b"\x89PNG\r\n\x1a\n not really").unwrap();
    let samples = t.path().join("samples.csv");
    let before = std::fs::read_to_string(&samples).unwrap();
    let (ok, _, err) = run(t.path(), &["measure", "samples.csv", "--out", "m.csv"]);
    assert!(!ok);
    assert!(
        err.contains("1 of its 6 images") && err.contains("3.png"),
        "{err}"
    );
    assert!(!t.path().join("m.csv").exists());
    assert_eq!(std::fs::read_to_string(&samples).unwrap(), before);
    // A file without a path column is not a samples file.
    std::fs::write(t.path().join("other.csv"), "image,label\na.png,0\n").unwrap();
    let (ok, _, err) = run(t.path(), &["measure", "other.csv"]);
    assert!(!ok && err.contains("no \"path\" column"), "{err}");
}
