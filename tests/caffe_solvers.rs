//! Caffe's solver types, lr policies and update options against a real
//! Caffe: `tests/data/caffe_solvers.json`, made by
//! `scripts/caffe-golden/run.sh` (pycaffe 1.0.0 from Debian bullseye, CPU),
//! which ran each solver variant for 12 iterations on the tiny-net fixture
//! from its `init_iter_0.caffemodel`. Here the same solver text trains the
//! same net; each iteration's loss and a fingerprint of every parameter blob
//! afterwards (sum, sum of squares, eight sampled values) must agree.
mod common;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Deserialize)]
struct Golden {
    provenance: String,
    variants: Vec<Variant>,
}

#[derive(Deserialize)]
struct Variant {
    name: String,
    solver: String,
    iterations: usize,
    losses: Option<Vec<f32>>,
    params: Vec<Fingerprint>,
}

#[derive(Deserialize)]
struct Fingerprint {
    layer: String,
    index: usize,
    size: usize,
    sum: f64,
    sum_sq: f64,
    positions: Vec<usize>,
    values: Vec<f32>,
}

fn golden() -> Golden {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/caffe_solvers.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Trains one variant; returns what disagrees with Caffe.
fn check(v: &Variant, dir: &std::path::Path) -> Vec<String> {
    let mut bad = Vec::new();
    let mut worst = (0.0f64, 0.0f64, 0.0f32);
    let fixture = common::fixture("tiny-net");
    let file = dir.join(format!("{}.prototxt", v.name));
    std::fs::write(&file, &v.solver).unwrap();
    let opts = common::solver_options(&fixture, file.to_str().unwrap(), &dir.join(&v.name));
    let mut s = match flickr_style::train::solver::Solver::new(&opts) {
        Ok(s) => s,
        Err(e) => return vec![format!("solver: {e}")],
    };
    s.load_weights(&[PathBuf::from("snapshots/init_iter_0.caffemodel")])
        .unwrap();
    s.set_max_iter(v.iterations);
    s.set_snapshot_after_train(false);
    if let Err(e) = s.solve() {
        return vec![format!("solve: {e}")];
    }
    if let Some(want) = &v.losses {
        for ((it, got), w) in s.trajectory.iter().zip(want) {
            let rel = (got - w).abs() / w.abs();
            worst.0 = worst.0.max(f64::from(rel));
            if rel > 1e-5 {
                bad.push(format!("iteration {it}: loss {got}, Caffe {w} ({rel:.1e})"));
            }
        }
    }
    for f in &v.params {
        let Some(i) = (0..s.train.params().len()).find(|&i| {
            s.train.param_layer_name(i) == f.layer && s.train.params()[i].index == f.index
        }) else {
            bad.push(format!("no parameter {} {}", f.layer, f.index));
            continue;
        };
        let got: Vec<f32> = s.train.param(i).flatten_all().unwrap().to_vec1().unwrap();
        let what = format!("{} {}", f.layer, f.index);
        if got.len() != f.size {
            bad.push(format!("{what}: {} values, Caffe {}", got.len(), f.size));
            continue;
        }
        let sum: f64 = got.iter().map(|&x| f64::from(x)).sum();
        let sum_sq: f64 = got.iter().map(|&x| f64::from(x).powi(2)).sum();
        // The sum of a zero-mean blob can be far smaller than its values:
        // scale its error by the root of the sum of squares.
        let scale = f.sum_sq.sqrt().max(1e-6);
        worst.1 = worst.1.max((sum - f.sum).abs() / scale);
        worst.1 = worst.1.max((sum_sq - f.sum_sq).abs() / f.sum_sq.max(1e-12));
        if (sum - f.sum).abs() / scale > 1e-5 {
            bad.push(format!("{what}: sum {sum}, Caffe {}", f.sum));
        }
        if (sum_sq - f.sum_sq).abs() / f.sum_sq.max(1e-12) > 2e-5 {
            bad.push(format!(
                "{what}: sum of squares {sum_sq}, Caffe {}",
                f.sum_sq
            ));
        }
        let largest = f.values.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
        for (&p, &w) in f.positions.iter().zip(&f.values) {
            worst.2 = worst.2.max((got[p] - w).abs() / largest);
            if (got[p] - w).abs() / largest > VALUE_TOL {
                bad.push(format!("{what}[{p}]: {}, Caffe {w}", got[p]));
            }
        }
    }
    eprintln!(
        "{}: largest relative error of a loss {:.1e}, of a blob's sums {:.1e}, of a sampled weight {:.1e}",
        v.name, worst.0, worst.1, worst.2
    );
    bad
}

/// A sampled weight's tolerance, relative to the blob's largest sample.
/// Adam's step `m / (sqrt(v) + 1e-8)` has about the same size for any
/// gradient well above 1e-8, so float rounding in a near-zero gradient
/// (a sum that cancels) moves a weight by up to 1.4e-5 of the blob's scale.
const VALUE_TOL: f32 = 5e-5;

#[test]
fn every_solver_variant_matches_caffe() {
    let golden = golden();
    eprintln!("golden numbers: {}", golden.provenance);
    assert!(golden.variants.len() >= 14);
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for v in &golden.variants {
        for problem in check(v, dir.path()) {
            failures.push(format!("{}: {problem}", v.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} disagreements with Caffe:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
