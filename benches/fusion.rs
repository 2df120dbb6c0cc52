//! Time of `fuse` (5-fold cross-validation of the recalibrated and fused
//! models plus the final fit: 11 L-BFGS fits) on synthetic evaluated sets
//! of plankton-like shape: N images, C classes, ln(width), ln(height) and F
//! further measurement columns.
//! Run with `scripts/bench-fuse [N]`; prints a table.
use flickr_style::analysis::fusion::{fuse, FuseOptions};
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::time::Instant;

fn write_set(dir: &Path, n: usize, classes: usize, features: usize) -> FuseOptions {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let names: Vec<String> = (0..classes).map(|k| format!("c{k}")).collect();
    let mut probs = format!("image,label,{}\n", names.join(","));
    let extra: Vec<String> = (0..features).map(|j| format!("m{j}")).collect();
    let mut samples = format!("path,class,label,list,width,height,{}\n", extra.join(","));
    for i in 0..n {
        let label = i % classes;
        let logits: Vec<f64> = (0..classes)
            .map(|k| rng.random_range(-2.0..2.0) + if k == label { 2.0 } else { 0.0 })
            .collect();
        let total: f64 = logits.iter().map(|v| v.exp()).sum();
        let p: Vec<String> = logits
            .iter()
            .map(|v| ((v.exp() / total) as f32).to_string())
            .collect();
        probs += &format!("{i:08}_/d/{i}.png,{label},{}\n", p.join(","));
        let w = (30.0 + 5.0 * label as f64) * rng.random_range(0.7f64..1.3);
        let h = 40.0 * rng.random_range(0.7f64..1.3);
        let m: Vec<String> = (0..features)
            .map(|j| (rng.random_range(-1.0..1.0) + 0.01 * (label * j) as f64).to_string())
            .collect();
        samples += &format!(
            "/d/{i}.png,c{label},{label},test,{},{},{}\n",
            w.round(),
            h.round(),
            m.join(",")
        );
    }
    std::fs::write(dir.join("probabilities.csv"), probs).unwrap();
    std::fs::write(dir.join("samples.csv"), samples).unwrap();
    FuseOptions {
        probabilities: dir.join("probabilities.csv"),
        samples: dir.join("samples.csv"),
        size: true,
        features: extra,
        measures: None,
        folds: 5,
        seed: 1,
        l2: 1e-3,
    }
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5000);
    println!("| images | classes | features | fuse seconds | net log loss | fused log loss |");
    println!("|---|---|---|---|---|---|");
    for (classes, features) in [(20, 0), (121, 0), (121, 10)] {
        let dir = tempfile::tempdir().unwrap();
        let o = write_set(dir.path(), n, classes, features);
        let start = Instant::now();
        let f = fuse(&o).expect("fuse");
        println!(
            "| {n} | {classes} | {} | {:.2} | {:.4} | {:.4} |",
            features + 2,
            start.elapsed().as_secs_f64(),
            f.net.log_loss,
            f.fused.log_loss
        );
    }
}
