//! `fuse`: late fusion of the net's probabilities with each image's size and
//! a manifest's measurements, cross-validated. Synthetic sets where size
//! does and does not tell the classes apart, and the mistakes it names.
mod common;
use common::run;
use flickr_style::train::fusion::{fuse, FuseOptions};
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
