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
use crate::error::{Error, IoContext, Result};
use crate::fsutil::write_atomic;
use crate::pipeline::measure::{self, Measures};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
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
    /// Use the shape and texture columns `measure` added to `samples.csv`
    /// (which `classify --fusion` then computes from each image).
    pub measured: bool,
    /// Cross-validation folds (2 or more).
    pub folds: usize,
    /// Seed of the fold assignment.
    pub seed: u64,
    /// L2 penalty on the feature weights and class biases.
    pub l2: f64,
}

/// Log loss and accuracy of one model over all images, out of fold.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Score {
    /// Mean multi-class log loss, probabilities clipped to [1e-15, 1 - 1e-15].
    pub log_loss: f64,
    /// Share of images whose most probable class is the true one.
    pub accuracy: f64,
}

/// A fitted fusion model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Model {
    /// Feature names, in the order of `weights`' columns.
    pub features: Vec<String>,
    /// Means and standard deviations the features were standardized with.
    pub mean: Vec<f64>,
    /// See `mean`.
    pub std: Vec<f64>,
    /// Factor on the net's log-probabilities (1: as they are; below 1 softens them).
    pub temperature: f64,
    /// Per class, one weight per standardized feature (classes x features).
    pub weights: Vec<Vec<f64>>,
    /// Per class bias.
    pub bias: Vec<f64>,
}

/// The size features, which a model computes from the image itself.
const SIZE_FEATURES: [&str; 2] = ["ln_width", "ln_height"];

/// What a fusion model computes from an image file itself rather than
/// reads from a samples file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FromImage {
    /// The original (width, height), before any resize.
    pub size: (usize, usize),
    /// The object's measurements, where the model uses them.
    pub measures: Option<Measures>,
}

impl Model {
    /// The model in a `fusion.json` that `fuse --out` wrote, checked for
    /// consistent shapes and finite numbers.
    pub fn read(path: &Path) -> Result<Model> {
        let bad = |m: String| Error::invalid(path.display(), m);
        let text = std::fs::read_to_string(path).at(path)?;
        let mut v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let m: Model = serde_json::from_value(v["model"].take())
            .map_err(|e| bad(format!("is not a fuse --out fusion.json: {e}")))?;
        let f = m.features.len();
        let classes = m.bias.len();
        let finite = |v: &[f64]| v.iter().all(|x| x.is_finite());
        if f == 0
            || classes < 2
            || m.mean.len() != f
            || m.std.len() != f
            || m.weights.len() != classes
            || m.weights.iter().any(|w| w.len() != f || !finite(w))
            || !finite(&m.mean)
            || !finite(&m.bias)
            || !m.temperature.is_finite()
            || m.std.iter().any(|s| !(s.is_finite() && *s > 0.0))
        {
            return Err(bad(
                "holds a damaged model (shapes that disagree, or numbers that are not finite)"
                    .into(),
            ));
        }
        Ok(m)
    }

    /// Classes the model scores.
    pub fn classes(&self) -> usize {
        self.bias.len()
    }

    /// Features it reads from a samples file (neither the size nor a
    /// measurement of the image).
    pub fn measurements(&self) -> Vec<String> {
        self.features
            .iter()
            .filter(|f| !SIZE_FEATURES.contains(&f.as_str()) && !measure::is_measure(f))
            .cloned()
            .collect()
    }

    /// Whether it uses `measure`'s shape and texture measurements, which
    /// are then computed from each image.
    pub fn measures_images(&self) -> bool {
        self.features.iter().any(|f| measure::is_measure(f))
    }

    /// Fused probabilities of one image from the net's `probs`, what the
    /// image itself gives and its `measurements` from a samples file (in
    /// [`Model::measurements`]' order).
    pub fn apply(&self, probs: &[f32], image: &FromImage, measurements: &[f64]) -> Vec<f32> {
        let log_p = log_probabilities(probs.iter().map(|&v| f64::from(v)));
        let (width, height) = image.size;
        let mut extra = measurements.iter();
        let raw: Vec<f64> = self
            .features
            .iter()
            .map(|name| match name.as_str() {
                "ln_width" => (width.max(1) as f64).ln(),
                "ln_height" => (height.max(1) as f64).ln(),
                m if measure::is_measure(m) => {
                    let k = measure::NAMES.iter().position(|n| *n == m);
                    image.measures.zip(k).map_or(0.0, |(v, k)| v[k])
                }
                _ => extra.next().copied().unwrap_or(0.0),
            })
            .collect();
        self.predict(&log_p, &raw)
            .into_iter()
            .map(|v| v as f32)
            .collect()
    }

    /// Fused probabilities from log-probabilities and raw (unstandardized)
    /// features, in `features`' order.
    fn predict(&self, log_p: &[f64], raw: &[f64]) -> Vec<f64> {
        let x: Vec<f64> = raw
            .iter()
            .enumerate()
            .map(|(j, v)| (v - self.mean[j]) / self.std[j])
            .collect();
        let mut z: Vec<f64> = (0..self.classes())
            .map(|k| {
                self.temperature * log_p[k]
                    + self.bias[k]
                    + self.weights[k]
                        .iter()
                        .zip(&x)
                        .map(|(a, b)| a * b)
                        .sum::<f64>()
            })
            .collect();
        softmax_in_place(&mut z);
        z
    }
}

/// ln of probabilities clipped to [1e-15, 1 - 1e-15] and scaled to sum 1,
/// as NDSB scored them.
fn log_probabilities(probs: impl Iterator<Item = f64>) -> Vec<f64> {
    let clipped: Vec<f64> = probs.map(|v| v.clamp(CLIP, 1.0 - CLIP)).collect();
    let total: f64 = clipped.iter().sum();
    clipped.iter().map(|v| (v / total).ln()).collect()
}

/// Each image's values of `columns` in a samples file, by its path
/// (canonical where the file exists, so `./a.png` and `/abs/a.png` meet).
pub fn read_measurements(samples: &Path, columns: &[String]) -> Result<HashMap<PathBuf, Vec<f64>>> {
    let (header, rows) = read_csv(samples)?;
    let column = |name: &str| column(&header, samples, name, ", which the fusion model needs");
    let path_col = column("path")?;
    let cols = columns
        .iter()
        .map(|c| column(c))
        .collect::<Result<Vec<_>>>()?;
    let mut out = HashMap::new();
    for (line, rec) in rows {
        let path = Path::new(rec.get(path_col).unwrap_or(""));
        let mut values = Vec::with_capacity(cols.len());
        for (&c, name) in cols.iter().zip(columns) {
            let v = rec.get(c).unwrap_or("");
            values.push(
                v.parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| Error::Line {
                        path: samples.to_path_buf(),
                        line,
                        message: format!("{name} of {}: {v:?} is not a number", path.display()),
                    })?,
            );
        }
        out.insert(canonical(path), values);
    }
    Ok(out)
}

/// A fusion model ready to apply to new images: the model and, for the
/// features it does not compute from the image, each image's values.
#[derive(Clone, Debug)]
pub struct Fuser {
    /// The model.
    pub model: Model,
    /// Measurements by canonical image path, in [`Model::measurements`]' order.
    pub measurements: HashMap<PathBuf, Vec<f64>>,
    /// Where they came from, for messages.
    pub samples: Option<PathBuf>,
}

impl Fuser {
    /// The model in `fusion_json`; its measurement features (if any) from
    /// `samples`, which is then required.
    pub fn load(fusion_json: &Path, samples: Option<&Path>) -> Result<Fuser> {
        let model = Model::read(fusion_json)?;
        let needed = model.measurements();
        let measurements = match (samples, needed.is_empty()) {
            (Some(s), false) => read_measurements(s, &needed)?,
            (None, false) => {
                return Err(Error::invalid(
                    fusion_json.display(),
                    format!(
                        "the model also uses {}: give the samples file that has them",
                        needed.join(", ")
                    ),
                ))
            }
            (_, true) => HashMap::new(),
        };
        Ok(Fuser {
            model,
            measurements,
            samples: samples.map(Path::to_path_buf),
        })
    }

    /// Fused probabilities of the image at `path`, or why there are none.
    /// `image` must carry the measures when the model
    /// [measures images](Model::measures_images).
    pub fn apply(
        &self,
        path: &Path,
        image: &FromImage,
        probs: &[f32],
    ) -> std::result::Result<Vec<f32>, String> {
        if self.model.measures_images() && image.measures.is_none() {
            return Err("was not measured, but the fusion model uses its measurements".into());
        }
        if self.model.measurements().is_empty() {
            return Ok(self.model.apply(probs, image, &[]));
        }
        match self.measurements.get(&canonical(path)) {
            Some(m) => Ok(self.model.apply(probs, image, m)),
            None => Err(format!(
                "has no row in {}, so the fusion model lacks its {}",
                self.samples
                    .as_deref()
                    .map_or("the samples file".into(), |p| p.display().to_string()),
                self.model.measurements().join(", ")
            )),
        }
    }
}

/// The canonical form of `path`, or the path itself when it cannot be resolved.
pub fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
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

/// Probabilities are clipped here before logs are taken, as NDSB scored.
const CLIP: f64 = 1e-15;

/// The evaluated images joined with their features.
struct Data {
    classes: usize,
    /// Per image: ln of its clipped, renormalized probabilities.
    log_p: Vec<Vec<f64>>,
    /// Per image: raw (unstandardized) features.
    x: Vec<Vec<f64>>,
    labels: Vec<usize>,
    images: Vec<String>,
    feature_names: Vec<String>,
    class_names: Vec<String>,
}

fn read_csv(path: &Path) -> Result<(csv::StringRecord, Vec<(usize, csv::StringRecord)>)> {
    let bad = |e: csv::Error| Error::invalid(path.display(), e.to_string());
    let mut r = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(bad)?;
    let header = r.headers().map_err(bad)?.clone();
    let mut rows = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(bad)?;
        let line = rec.position().map_or(0, |p| p.line() as usize);
        rows.push((line, rec));
    }
    Ok((header, rows))
}

/// The index of column `name` in `header`, or an error listing the columns
/// `file` has.
fn column(header: &csv::StringRecord, file: &Path, name: &str, why: &str) -> Result<usize> {
    header.iter().position(|h| h == name).ok_or_else(|| {
        Error::invalid(
            file.display(),
            format!(
                "has no column {name:?}{why} (its columns: {})",
                header.iter().collect::<Vec<_>>().join(", ")
            ),
        )
    })
}

/// The image path inside an evaluate image name: an LMDB key is
/// `%08d_` followed by the list's path.
fn key_path(image: &str) -> &str {
    let b = image.as_bytes();
    if b.len() > 9 && b[..8].iter().all(u8::is_ascii_digit) && b[8] == b'_' {
        &image[9..]
    } else {
        image
    }
}

fn load(o: &FuseOptions) -> Result<Data> {
    let p = &o.probabilities;
    let (header, rows) = read_csv(p)?;
    if header.len() < 4 || &header[0] != "image" || &header[1] != "label" {
        return Err(Error::invalid(
            p.display(),
            "is not an evaluate probabilities.csv (image, label, then one column per class)",
        ));
    }
    let class_names: Vec<String> = header.iter().skip(2).map(str::to_string).collect();
    let classes = class_names.len();

    let (s_header, s_rows) = read_csv(&o.samples)?;
    let column = |name: &str| column(&s_header, &o.samples, name, "");
    let path_col = column("path")?;
    let label_col = column("label")?;
    let mut feature_names = Vec::new();
    let mut feature_cols = Vec::new();
    if o.size {
        for (name, col) in [("ln_width", "width"), ("ln_height", "height")] {
            feature_names.push(name.to_string());
            feature_cols.push((column(col)?, true));
        }
    }
    let measured: &[&str] = if o.measured { &measure::NAMES } else { &[] };
    let measured = measured.iter().map(|n| n.to_string());
    for f in o.features.iter().cloned().chain(measured) {
        if measure::is_measure(&f) && !s_header.iter().any(|h| h == f) {
            return Err(Error::invalid(
                o.samples.display(),
                format!(
                    "has no measurement column {f:?}: run `flickr-style measure {}` first",
                    o.samples.display()
                ),
            ));
        }
        if feature_names.contains(&f) {
            return Err(Error::invalid(
                o.samples.display(),
                format!("feature {f:?} is given twice"),
            ));
        }
        feature_cols.push((column(&f)?, false));
        feature_names.push(f);
    }
    if feature_names.is_empty() {
        return Err(Error::invalid(
            o.samples.display(),
            "no features to fuse: keep the size, add --measured, or name columns with --feature",
        ));
    }
    let mut by_path: HashMap<&str, (usize, &csv::StringRecord)> = HashMap::new();
    for (line, rec) in &s_rows {
        by_path.insert(rec.get(path_col).unwrap_or(""), (*line, rec));
    }

    let mut data = Data {
        classes,
        log_p: Vec::with_capacity(rows.len()),
        x: Vec::with_capacity(rows.len()),
        labels: Vec::with_capacity(rows.len()),
        images: Vec::with_capacity(rows.len()),
        feature_names,
        class_names,
    };
    for (line, rec) in &rows {
        let bad = |message: String| Error::Line {
            path: p.clone(),
            line: *line,
            message,
        };
        let image = rec.get(0).unwrap_or("");
        let label: usize = rec
            .get(1)
            .and_then(|l| l.parse().ok())
            .filter(|&l| l < classes)
            .ok_or_else(|| bad(format!("label must be a class index below {classes}")))?;
        let mut probs = Vec::with_capacity(classes);
        for v in rec.iter().skip(2) {
            match v.parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => probs.push(v),
                _ => return Err(bad(format!("{v:?} is not a probability"))),
            }
        }
        if probs.len() != classes {
            return Err(bad(format!(
                "has {} probabilities for {classes} classes",
                probs.len()
            )));
        }
        let path = key_path(image);
        let (s_line, s_rec) = by_path.get(path).ok_or_else(|| {
            bad(format!(
                "image {path} is not in {} (fuse needs the samples.csv of the same dataset)",
                o.samples.display()
            ))
        })?;
        let s_bad = |message: String| Error::Line {
            path: o.samples.clone(),
            line: *s_line,
            message,
        };
        if s_rec.get(label_col).and_then(|l| l.parse::<usize>().ok()) != Some(label) {
            return Err(s_bad(format!(
                "{path} has label {:?} here but {label} in {}",
                s_rec.get(label_col).unwrap_or(""),
                p.display()
            )));
        }
        let mut x = Vec::with_capacity(feature_cols.len());
        for (&(col, log), name) in feature_cols.iter().zip(&data.feature_names) {
            let v = s_rec.get(col).unwrap_or("");
            let value = v
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && (!log || *v > 0.0))
                .ok_or_else(|| {
                    s_bad(format!(
                        "{name} of {path}: {v:?} is not {}",
                        if log {
                            "a positive size (import with the image check on)"
                        } else {
                            "a number"
                        }
                    ))
                })?;
            x.push(if log { value.ln() } else { value });
        }
        data.log_p.push(log_probabilities(probs.into_iter()));
        data.x.push(x);
        data.labels.push(label);
        data.images.push(image.to_string());
    }
    if data.labels.is_empty() {
        return Err(Error::invalid(p.display(), "lists no images"));
    }
    Ok(data)
}

/// Which parameters a fit may move.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Calibrated,
    Fused,
}

/// Parameters: [temperature, weights (classes x features), bias (classes)].
struct Layout {
    classes: usize,
    features: usize,
}

impl Layout {
    fn len(&self) -> usize {
        1 + self.classes * self.features + self.classes
    }
    fn initial(&self) -> Vec<f64> {
        let mut t = vec![0.0; self.len()];
        t[0] = 1.0;
        t
    }
    fn logits(&self, theta: &[f64], log_p: &[f64], x: &[f64], out: &mut [f64]) {
        let f = self.features;
        let bias = &theta[1 + self.classes * f..];
        for k in 0..self.classes {
            let w = &theta[1 + k * f..1 + (k + 1) * f];
            out[k] =
                theta[0] * log_p[k] + bias[k] + w.iter().zip(x).map(|(a, b)| a * b).sum::<f64>();
        }
    }
}

fn softmax_in_place(z: &mut [f64]) {
    // Overflowed logits (a model with huge weights) stay ordered and finite.
    for v in z.iter_mut() {
        *v = if v.is_nan() {
            -1e30
        } else {
            v.clamp(-1e30, 1e30)
        };
    }
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut s = 0.0;
    for v in z.iter_mut() {
        *v = (*v - m).exp();
        s += *v;
    }
    for v in z.iter_mut() {
        *v /= s;
    }
}

/// Mean cross-entropy over `rows` plus the L2 penalty, and its gradient;
/// blocks of rows on all cores.
fn objective(
    layout: &Layout,
    theta: &[f64],
    log_p: &[Vec<f64>],
    x: &[Vec<f64>],
    labels: &[usize],
    rows: &[usize],
    l2: f64,
) -> (f64, Vec<f64>) {
    let (c, f) = (layout.classes, layout.features);
    let scale = 1.0 / rows.len() as f64;
    let block = |chunk: &[usize]| {
        let mut grad = vec![0.0; theta.len()];
        let mut loss = 0.0;
        let mut z = vec![0.0; c];
        for &i in chunk {
            layout.logits(theta, &log_p[i], &x[i], &mut z);
            softmax_in_place(&mut z);
            loss -= z[labels[i]].max(1e-300).ln() * scale;
            z[labels[i]] -= 1.0;
            for k in 0..c {
                let g = z[k] * scale;
                grad[0] += g * log_p[i][k];
                for (j, xv) in x[i].iter().enumerate() {
                    grad[1 + k * f + j] += g * xv;
                }
                grad[1 + c * f + k] += g;
            }
        }
        (loss, grad)
    };
    // Fixed blocks summed in order, so the result does not depend on the
    // number of threads.
    let parts: Vec<(f64, Vec<f64>)> = rows.par_chunks(512).map(block).collect();
    let mut loss = 0.0;
    let mut grad = vec![0.0; theta.len()];
    for (l, g) in parts {
        loss += l;
        grad.iter_mut().zip(g).for_each(|(a, b)| *a += b);
    }
    // The penalty pulls towards the start, the net as it is: the
    // temperature towards 1, weights and biases towards 0.
    for j in 0..theta.len() {
        let d = if j == 0 { theta[0] - 1.0 } else { theta[j] };
        loss += 0.5 * l2 * d * d;
        grad[j] += l2 * d;
    }
    (loss, grad)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Minimizes a smooth convex function by L-BFGS (ten pairs of history)
/// with a backtracking line search; `fixed` marks parameters held where
/// they start. Written here because the model is not a stock multinomial
/// regression (one temperature shared by every class's own log-probability,
/// penalized towards 1), which linfa-logistic cannot express, and this is
/// smaller than pulling in argmin for its optimizer.
fn minimize(f: impl Fn(&[f64]) -> (f64, Vec<f64>), mut x: Vec<f64>, fixed: &[bool]) -> Vec<f64> {
    let masked = |mut g: Vec<f64>| {
        for (v, &fix) in g.iter_mut().zip(fixed) {
            if fix {
                *v = 0.0;
            }
        }
        g
    };
    let (mut fx, g) = f(&x);
    let mut g = masked(g);
    let mut history: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> = Default::default();
    for _ in 0..500 {
        if g.iter().all(|v| v.abs() < 1e-9) {
            break;
        }
        // Two-loop recursion: d = -H g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(history.len());
        for (s, y, rho) in history.iter().rev() {
            let a = rho * dot(s, &q);
            q.iter_mut().zip(y).for_each(|(qv, yv)| *qv -= a * yv);
            alphas.push(a);
        }
        let gamma = history.back().map_or(
            1.0 / g.iter().map(|v| v * v).sum::<f64>().sqrt().max(1.0),
            |(s, y, _)| dot(s, y) / dot(y, y),
        );
        q.iter_mut().for_each(|v| *v *= gamma);
        for ((s, y, rho), a) in history.iter().zip(alphas.iter().rev()) {
            let b = rho * dot(y, &q);
            q.iter_mut().zip(s).for_each(|(qv, sv)| *qv += (a - b) * sv);
        }
        let mut d: Vec<f64> = q.iter().map(|v| -v).collect();
        if dot(&d, &g) >= 0.0 {
            d = g.iter().map(|v| -v).collect();
            history.clear();
        }
        let slope = dot(&d, &g);
        let mut step = 1.0;
        let mut next = None;
        for _ in 0..50 {
            let trial: Vec<f64> = x.iter().zip(&d).map(|(a, b)| a + step * b).collect();
            let (ft, gt) = f(&trial);
            if ft.is_finite() && ft <= fx + 1e-4 * step * slope {
                next = Some((trial, ft, masked(gt)));
                break;
            }
            step *= 0.5;
        }
        let Some((x_new, f_new, g_new)) = next else {
            break;
        };
        let s: Vec<f64> = x_new.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        if sy > 1e-12 {
            if history.len() == 10 {
                history.pop_front();
            }
            history.push_back((s, y, 1.0 / sy));
        }
        let converged = (fx - f_new).abs() <= 1e-12 * (1.0 + fx.abs());
        (x, fx, g) = (x_new, f_new, g_new);
        if converged {
            break;
        }
    }
    x
}

/// Feature means and standard deviations over `rows` (a constant feature
/// gets 1, so it standardizes to 0).
fn standardizer(x: &[Vec<f64>], rows: &[usize], features: usize) -> (Vec<f64>, Vec<f64>) {
    let n = rows.len() as f64;
    let mean: Vec<f64> = (0..features)
        .map(|j| rows.iter().map(|&i| x[i][j]).sum::<f64>() / n)
        .collect();
    let std = (0..features)
        .map(|j| {
            let v = rows
                .iter()
                .map(|&i| (x[i][j] - mean[j]).powi(2))
                .sum::<f64>()
                / n;
            if v > 1e-24 {
                v.sqrt()
            } else {
                1.0
            }
        })
        .collect();
    (mean, std)
}

/// Fits on `train` rows.
fn fit(data: &Data, train: &[usize], kind: Kind, l2: f64) -> Model {
    let f = data.feature_names.len();
    let layout = Layout {
        classes: data.classes,
        features: f,
    };
    let (mean, std) = standardizer(&data.x, train, f);
    let x: Vec<Vec<f64>> = data
        .x
        .iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(j, v)| (v - mean[j]) / std[j])
                .collect()
        })
        .collect();
    let fixed: Vec<bool> = (0..layout.len())
        .map(|j| kind == Kind::Calibrated && j >= 1 && j < 1 + data.classes * f)
        .collect();
    let theta = minimize(
        |t| objective(&layout, t, &data.log_p, &x, &data.labels, train, l2),
        layout.initial(),
        &fixed,
    );
    Model {
        features: data.feature_names.clone(),
        mean,
        std,
        temperature: theta[0],
        weights: (0..data.classes)
            .map(|k| theta[1 + k * f..1 + (k + 1) * f].to_vec())
            .collect(),
        bias: theta[1 + data.classes * f..].to_vec(),
    }
}

fn score(probs: &[Vec<f64>], labels: &[usize]) -> Score {
    let n = labels.len() as f64;
    let mut loss = 0.0;
    let mut right = 0usize;
    for (p, &y) in probs.iter().zip(labels) {
        let total: f64 = p.iter().map(|v| v.clamp(CLIP, 1.0 - CLIP)).sum();
        loss -= (p[y].clamp(CLIP, 1.0 - CLIP) / total).ln();
        // Ties count against the true class, as in evaluate.
        let best = p.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let tied = p.iter().filter(|&&v| v == best).count();
        right += usize::from(p[y] == best && tied == 1);
    }
    Score {
        log_loss: loss / n,
        accuracy: right as f64 / n,
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
            ("the net", self.net),
            (
                "recalibrated (temperature and class biases)",
                self.calibrated,
            ),
            (
                &format!("fused with {}", self.model.features.join(", ")) as &str,
                self.fused,
            ),
        ] {
            s += &format!(
                "| {name} | {:.4} | {:.2}% |\n",
                sc.log_loss,
                100.0 * sc.accuracy
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
        let x: Vec<f64> = d.x[i]
            .iter()
            .enumerate()
            .map(|(j, v)| (v - mean[j]) / std[j])
            .collect();
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
        let x: Vec<Vec<f64>> =
            d.x.iter()
                .map(|r| {
                    r.iter()
                        .enumerate()
                        .map(|(j, v)| (v - mean[j]) / std[j])
                        .collect()
                })
                .collect();
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
