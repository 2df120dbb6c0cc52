//! The fitted fusion model: how it is stored (`fusion.json`), read back and
//! applied to one image's probabilities, size and measurements.
use super::data::read_numbers;
use crate::error::{Error, IoContext, Result};
use crate::pipeline::measure::{self, Measures};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

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
    pub(super) fn predict(&self, log_p: &[f64], raw: &[f64]) -> Vec<f64> {
        let x = standardize(raw, &self.mean, &self.std);
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

/// Raw features made zero-mean, unit-spread with the fit's `mean` and `std`.
pub(super) fn standardize(raw: &[f64], mean: &[f64], std: &[f64]) -> Vec<f64> {
    raw.iter()
        .zip(mean.iter().zip(std))
        .map(|(v, (m, s))| (v - m) / s)
        .collect()
}

/// ln of probabilities clipped to [1e-15, 1 - 1e-15] and scaled to sum 1,
/// as NDSB scored them.
pub(super) fn log_probabilities(probs: impl Iterator<Item = f64>) -> Vec<f64> {
    let clipped: Vec<f64> = probs.map(|v| v.clamp(CLIP, 1.0 - CLIP)).collect();
    let total: f64 = clipped.iter().sum();
    clipped.iter().map(|v| (v / total).ln()).collect()
}

/// Each image's values of `columns` in a samples file, by its path
/// (canonical where the file exists, so `./a.png` and `/abs/a.png` meet).
pub fn read_measurements(samples: &Path, columns: &[String]) -> Result<HashMap<PathBuf, Vec<f64>>> {
    let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
    let rows = read_numbers(samples, &columns, ", which the fusion model needs")?;
    Ok(rows
        .into_iter()
        .map(|(path, values)| (canonical(Path::new(&path)), values))
        .collect())
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

/// Probabilities are clipped here before logs are taken, as NDSB scored.
pub(super) const CLIP: f64 = 1e-15;

pub(super) fn softmax_in_place(z: &mut [f64]) {
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
