//! Late fusion (beyond Caffe): does what a resize throws away (an image's
//! original size, or the measurements a manifest carries) still tell
//! classes apart once the net has spoken? The Kaggle plankton winners fed
//! size, image moments and texture features to a model on top of their
//! nets' outputs and gained about 0.01 in log loss.
//!
//! The model is a multinomial logistic regression on the net's
//! log-probabilities and the sample's standardized features:
//! `logits = t·ln p + B·x + b`. It starts at `t = 1, B = 0, b = 0`, which
//! gives back the net's own probabilities, and its L2 penalty pulls `B` and
//! `b` towards zero and `t` towards 1, so without signal it stays near the
//! net. It is fitted and scored by stratified k-fold cross-validation over
//! an evaluated set the
//! net never trained on (e.g. `evaluate --out`'s `probabilities.csv` of the
//! test list), so every figure is out of fold. To tell the features' share
//! from plain recalibration, the same folds also fit `t` and `b` alone.
mod data;
mod fit;
mod model;

pub use model::{canonical, read_measurements, FromImage, Fuser, Model};

use crate::analysis::abstention::{self, ForAccuracy};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::write_atomic;
use data::load;
use fit::{fit, Kind};
use model::CLIP;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What to fuse and how to score it.
#[derive(Clone, Debug)]
pub struct FuseOptions {
    /// `probabilities.csv` from `evaluate --out`: image, label, one column per class.
    pub probabilities: PathBuf,
    /// `samples.csv` from `import-folders`/`import-manifest`: each image's
    /// original width and height and any carried columns.
    pub samples: PathBuf,
    /// Use ln(width) and ln(height) as features.
    pub size: bool,
    /// Further numeric columns of `samples.csv` to use.
    pub features: Vec<String>,
    /// `measure`'s output for these samples (`measures.csv`): use its shape
    /// and texture measurements too, which `classify --fusion` then
    /// computes from each image itself.
    pub measures: Option<PathBuf>,
    /// Cross-validation folds (2 or more).
    pub folds: usize,
    /// Seed of the fold assignment.
    pub seed: u64,
    /// L2 penalty on the feature weights and class biases.
    pub l2: f64,
}

/// Log loss and accuracy of one model over all images, out of fold.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Score {
    /// Mean multi-class log loss, probabilities clipped to [1e-15, 1 - 1e-15].
    pub log_loss: f64,
    /// Share of images whose most probable class is the true one.
    pub accuracy: f64,
    /// For each of [`abstention::TARGETS`], the confidence threshold that
    /// predicts the most images at that accuracy: better probabilities let
    /// a person check fewer.
    pub abstaining: Vec<ForAccuracy>,
}

/// What fusion gives on one evaluated set.
#[derive(Clone, Debug, Serialize)]
pub struct Fusion {
    /// Images scored.
    pub images: usize,
    /// Classes.
    pub classes: usize,
    /// Folds.
    pub folds: usize,
    /// The net's own probabilities.
    pub net: Score,
    /// Refitted temperature and class biases, no features (out of fold).
    pub calibrated: Score,
    /// Temperature, biases and the features (out of fold).
    pub fused: Score,
    /// The fused model fitted on every image (what the weights say).
    pub model: Model,
    /// Per image (in file order): its source, label and out-of-fold fused probabilities.
    #[serde(skip)]
    pub rows: Vec<(String, usize, Vec<f64>)>,
    /// Class names from the probabilities file's header.
    #[serde(skip)]
    pub class_names: Vec<String>,
}

fn score(probs: &[Vec<f64>], labels: &[usize]) -> Score {
    let n = labels.len() as f64;
    let mut loss = 0.0;
    let mut right = 0usize;
    let mut confidence = Vec::with_capacity(labels.len());
    for (p, &y) in probs.iter().zip(labels) {
        let total: f64 = p.iter().map(|v| v.clamp(CLIP, 1.0 - CLIP)).sum();
        loss -= (p[y].clamp(CLIP, 1.0 - CLIP) / total).ln();
        // Ties count against the true class, as in evaluate.
        let best = p.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let tied = p.iter().filter(|&&v| v == best).count();
        let ok = p[y] == best && tied == 1;
        right += usize::from(ok);
        confidence.push((best.clamp(CLIP, 1.0 - CLIP) / total, ok));
    }
    Score {
        log_loss: loss / n,
        accuracy: right as f64 / n,
        abstaining: abstention::abstention(&confidence).for_accuracy,
    }
}

/// Stratified folds: each class's images in a seeded order, dealt round
/// the folds, continuing where the last class stopped.
fn fold_of(labels: &[usize], folds: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let classes = labels.iter().max().map_or(0, |m| m + 1);
    let mut fold = vec![0; labels.len()];
    let mut next = 0;
    for c in 0..classes {
        let mut members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == c).collect();
        members.shuffle(&mut rng);
        for i in members {
            fold[i] = next % folds;
            next += 1;
        }
    }
    fold
}

/// Cross-validates the calibrated and fused models on `o`'s files and fits
/// the fused model on every image.
pub fn fuse(o: &FuseOptions) -> Result<Fusion> {
    let data = load(o)?;
    let n = data.labels.len();
    if o.folds < 2 || o.folds > n {
        return Err(Error::invalid(
            o.probabilities.display(),
            format!(
                "{} folds for {n} images: use 2 to {n} (each fold is scored by a model fitted on the others)",
                o.folds
            ),
        ));
    }
    if !(o.l2.is_finite() && o.l2 >= 0.0) {
        return Err(Error::invalid("--l2", "must be 0 or more"));
    }
    let fold = fold_of(&data.labels, o.folds, o.seed);
    let net: Vec<Vec<f64>> = data
        .log_p
        .iter()
        .map(|r| r.iter().map(|v| v.exp()).collect())
        .collect();
    let mut calibrated = vec![Vec::new(); n];
    let mut fused = vec![Vec::new(); n];
    let bar = crate::progress::bar(o.folds as u64, "fuse");
    for k in 0..o.folds {
        let train: Vec<usize> = (0..n).filter(|&i| fold[i] != k).collect();
        for (kind, out) in [
            (Kind::Calibrated, &mut calibrated),
            (Kind::Fused, &mut fused),
        ] {
            let model = fit(&data, &train, kind, o.l2);
            for i in (0..n).filter(|&i| fold[i] == k) {
                out[i] = model.predict(&data.log_p[i], &data.x[i]);
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let all: Vec<usize> = (0..n).collect();
    let model = fit(&data, &all, Kind::Fused, o.l2);
    Ok(Fusion {
        images: n,
        classes: data.classes,
        folds: o.folds,
        net: score(&net, &data.labels),
        calibrated: score(&calibrated, &data.labels),
        fused: score(&fused, &data.labels),
        model,
        rows: data
            .images
            .into_iter()
            .zip(data.labels)
            .zip(fused)
            .map(|((i, l), p)| (i, l, p))
            .collect(),
        class_names: data.class_names,
    })
}

impl Fusion {
    /// The comparison as Markdown.
    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "Late fusion on {} images, {} classes, {}-fold cross-validation (every figure out of fold)\n\n\
             | model | log loss | accuracy |\n|---|---|---|\n",
            self.images, self.classes, self.folds
        );
        for (name, sc) in [
            ("the net", &self.net),
            (
                "recalibrated (temperature and class biases)",
                &self.calibrated,
            ),
            (
                &format!("fused with {}", self.model.features.join(", ")) as &str,
                &self.fused,
            ),
        ] {
            s += &format!(
                "| {name} | {:.4} | {:.2}% |\n",
                sc.log_loss,
                100.0 * sc.accuracy
            );
        }
        s += "\nAbstaining (share of the images predicted at the confidence threshold that reaches the accuracy; a person checks the rest; `classify --fusion --threshold` takes the fused column's):\n\n\
              | accuracy wanted | the net | recalibrated | fused |\n|---|---|---|---|\n";
        // The threshold with it: each model's probabilities need their own.
        let share = |sc: &Score, k: usize| {
            sc.abstaining[k].point.map_or_else(
                || "not reached".to_string(),
                |p| {
                    format!(
                        "{:.1}% (p ≥ {:.4})",
                        100.0 * p.coverage,
                        abstention::printable(p.threshold)
                    )
                },
            )
        };
        for (k, f) in self.net.abstaining.iter().enumerate() {
            s += &format!(
                "| {:.0}% | {} | {} | {} |\n",
                100.0 * f.target,
                share(&self.net, k),
                share(&self.calibrated, k),
                share(&self.fused, k)
            );
        }
        let gain = self.fused.log_loss - self.calibrated.log_loss;
        s += &format!(
            "\nThe features change the log loss by {gain:+.4} beyond recalibration ({:+.4} from the net): {}\n",
            self.fused.log_loss - self.net.log_loss,
            if gain < 0.0 {
                "they add to what the net sees; `classify --fusion fusion.json` uses them for new images."
            } else {
                "they add nothing the net does not see here (or the set is too small to tell)."
            }
        );
        // Weight norms per standardized feature: how much each moves the classes.
        s += "\n| feature | weight norm over classes |\n|---|---|\n";
        for (j, name) in self.model.features.iter().enumerate() {
            let norm = self
                .model
                .weights
                .iter()
                .map(|w| w[j] * w[j])
                .sum::<f64>()
                .sqrt();
            s += &format!("| {name} | {norm:.3} |\n");
        }
        s += &format!(
            "\nFitted on all images: temperature {:.3} on the net's log-probabilities.\n",
            self.model.temperature
        );
        s
    }

    /// Writes `fusion.md`, `fusion.json` (scores and the model fitted on all
    /// images) and `fused.csv` (out-of-fold fused probabilities, laid out as
    /// `probabilities.csv`) into `dir`, each complete or not at all.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).at(dir)?;
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| Error::invalid("fusion.json", e.to_string()))?;
        let mut w = csv::Writer::from_writer(Vec::new());
        // Writing to a Vec cannot fail.
        w.write_record(
            ["image".to_string(), "label".into()]
                .into_iter()
                .chain(self.class_names.iter().cloned()),
        )
        .expect("in memory");
        for (image, label, p) in &self.rows {
            w.write_record(
                [image.clone(), label.to_string()]
                    .into_iter()
                    .chain(p.iter().map(|v| (*v as f32).to_string())),
            )
            .expect("in memory");
        }
        let csv = w.into_inner().expect("in memory");
        let mut written = Vec::new();
        for (name, bytes) in [
            ("fusion.md", self.to_markdown().into_bytes()),
            ("fusion.json", (json + "\n").into_bytes()),
            ("fused.csv", csv),
        ] {
            let path = dir.join(name);
            write_atomic(&path, &bytes)?;
            written.push(path);
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::data::{key_path, Data};
    use super::fit::{objective, standardizer, Layout};
    use super::model::{softmax_in_place, standardize};
    use super::*;

    impl Model {
        /// The parameters in the fit's layout: temperature, weights, biases.
        fn theta(&self) -> Vec<f64> {
            std::iter::once(self.temperature)
                .chain(self.weights.iter().flatten().copied())
                .chain(self.bias.iter().copied())
                .collect()
        }
    }

    /// Image `i`'s probabilities from parameters in the fit's layout.
    fn by_layout(d: &Data, theta: &[f64], mean: &[f64], std: &[f64], i: usize) -> Vec<f64> {
        let layout = Layout {
            classes: d.classes,
            features: d.feature_names.len(),
        };
        let x = standardize(&d.x[i], mean, std);
        let mut z = vec![0.0; d.classes];
        layout.logits(theta, &d.log_p[i], &x, &mut z);
        softmax_in_place(&mut z);
        z
    }

    fn toy(n: usize, classes: usize, features: usize, seed: u64) -> Data {
        use rand::Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut d = Data {
            classes,
            log_p: Vec::new(),
            x: Vec::new(),
            labels: Vec::new(),
            images: Vec::new(),
            feature_names: (0..features).map(|j| format!("f{j}")).collect(),
            class_names: (0..classes).map(|k| k.to_string()).collect(),
        };
        for i in 0..n {
            let mut p: Vec<f64> = (0..classes).map(|_| rng.random_range(0.1..1.0)).collect();
            let s: f64 = p.iter().sum();
            p.iter_mut().for_each(|v| *v /= s);
            d.log_p.push(p.iter().map(|v| v.ln()).collect());
            d.x.push((0..features).map(|_| rng.random_range(-2.0..2.0)).collect());
            d.labels.push(rng.random_range(0..classes));
            d.images.push(format!("{i}.png"));
        }
        d
    }

    #[test]
    fn the_gradient_is_the_objectives_slope() {
        let d = toy(30, 4, 3, 1);
        let layout = Layout {
            classes: 4,
            features: 3,
        };
        let rows: Vec<usize> = (0..30).collect();
        let theta: Vec<f64> = (0..layout.len())
            .map(|j| 0.1 * ((j * 7) % 5) as f64 - 0.2)
            .collect();
        let f = |t: &[f64]| objective(&layout, t, &d.log_p, &d.x, &d.labels, &rows, 0.3);
        let (_, g) = f(&theta);
        for j in 0..theta.len() {
            let h = 1e-6;
            let (mut a, mut b) = (theta.clone(), theta.clone());
            a[j] += h;
            b[j] -= h;
            let numeric = (f(&a).0 - f(&b).0) / (2.0 * h);
            assert!(
                (numeric - g[j]).abs() < 1e-6,
                "param {j}: {numeric} vs {}",
                g[j]
            );
        }
    }

    #[test]
    fn the_start_is_the_net_and_a_fit_only_lowers_the_objective() {
        let d = toy(60, 3, 2, 2);
        let layout = Layout {
            classes: 3,
            features: 2,
        };
        let rows: Vec<usize> = (0..60).collect();
        let start = layout.initial();
        let net: Vec<Vec<f64>> = d
            .log_p
            .iter()
            .map(|r| r.iter().map(|v| v.exp()).collect())
            .collect();
        let (loss0, _) = objective(&layout, &start, &d.log_p, &d.x, &d.labels, &rows, 0.0);
        assert!((loss0 - score(&net, &d.labels).log_loss).abs() < 1e-12);
        for (i, want) in net.iter().enumerate() {
            let p = by_layout(&d, &start, &[0.0, 0.0], &[1.0, 1.0], i);
            for (a, b) in p.iter().zip(want) {
                assert!((a - b).abs() < 1e-12);
            }
        }
        let theta = fit(&d, &rows, Kind::Fused, 1e-3).theta();
        let (mean, std) = standardizer(&d.x, &rows, 2);
        let x: Vec<Vec<f64>> = d.x.iter().map(|r| standardize(r, &mean, &std)).collect();
        let obj = |t: &[f64]| objective(&layout, t, &d.log_p, &x, &d.labels, &rows, 1e-3);
        let (at_fit, g) = obj(&theta);
        assert!(at_fit < obj(&start).0);
        assert!(g.iter().all(|v| v.abs() < 1e-5), "{g:?}");
        // Calibration leaves the feature weights at zero.
        let theta = fit(&d, &rows, Kind::Calibrated, 1e-3).theta();
        assert!(theta[1..1 + 3 * 2].iter().all(|&w| w == 0.0));
    }

    #[test]
    fn a_saved_model_gives_what_the_fit_gives() {
        // Features ln_width, ln_height and one measurement: the model as
        // written to fusion.json, applied to the raw size and measurement,
        // gives the probabilities `predict` gives from the fitted parameters.
        let mut d = toy(50, 3, 3, 9);
        d.feature_names = vec!["ln_width".into(), "ln_height".into(), "area".into()];
        for (i, x) in d.x.iter_mut().enumerate() {
            x[0] = (20.0 + i as f64).ln();
            x[1] = (30.0 + (i * 7 % 11) as f64).ln();
        }
        let rows: Vec<usize> = (0..50).collect();
        let fitted = fit(&d, &rows, Kind::Fused, 1e-3);
        let (theta, mean, std) = (fitted.theta(), fitted.mean.clone(), fitted.std.clone());
        let model = Model {
            features: d.feature_names.clone(),
            mean: mean.clone(),
            std: std.clone(),
            temperature: theta[0],
            weights: (0..3)
                .map(|k| theta[1 + k * 3..1 + (k + 1) * 3].to_vec())
                .collect(),
            bias: theta[10..].to_vec(),
        };
        assert_eq!(model, fitted);
        assert_eq!(model.measurements(), ["area"]);
        for i in [0, 17, 49] {
            let probs: Vec<f32> = d.log_p[i].iter().map(|v| v.exp() as f32).collect();
            let got = model.apply(
                &probs,
                &FromImage {
                    size: (20 + i, 30 + i * 7 % 11),
                    measures: None,
                },
                &[d.x[i][2]],
            );
            let want = by_layout(&d, &theta, &mean, &std, i);
            for (a, b) in got.iter().zip(&want) {
                assert!((f64::from(*a) - b).abs() < 1e-6, "image {i}: {a} vs {b}");
            }
        }
        // Round trip through the file, and a damaged one refused.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fusion.json");
        let json = serde_json::json!({ "model": model });
        std::fs::write(&path, json.to_string()).unwrap();
        assert_eq!(Model::read(&path).unwrap(), model);
        let mut broken = model.clone();
        broken.weights[1].pop();
        std::fs::write(&path, serde_json::json!({ "model": broken }).to_string()).unwrap();
        let e = Model::read(&path).unwrap_err().to_string();
        assert!(
            e.contains("damaged model") && e.contains("fusion.json"),
            "{e}"
        );
        std::fs::write(&path, "{}").unwrap();
        assert!(Model::read(&path)
            .unwrap_err()
            .to_string()
            .contains("not a fuse --out"));
    }

    #[test]
    fn folds_are_stratified_and_seeded() {
        let labels: Vec<usize> = (0..40).map(|i| i % 4).collect();
        let f = fold_of(&labels, 5, 7);
        assert_eq!(f, fold_of(&labels, 5, 7));
        assert_ne!(f, fold_of(&labels, 5, 8));
        for k in 0..5 {
            assert_eq!(f.iter().filter(|&&v| v == k).count(), 8);
            for c in 0..4 {
                let n = (0..40).filter(|&i| f[i] == k && labels[i] == c).count();
                assert_eq!(n, 2, "fold {k} class {c}");
            }
        }
    }

    #[test]
    fn lmdb_keys_name_their_list_path() {
        assert_eq!(key_path("00000012_/data/a.png"), "/data/a.png");
        assert_eq!(key_path("/data/a.png"), "/data/a.png");
        assert_eq!(key_path("0000001_x"), "0000001_x");
    }
}
