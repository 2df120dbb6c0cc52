//! Fitting the fusion model: the penalized cross-entropy and its gradient
//! over a parameter layout, minimized by L-BFGS on standardized features.
use super::data::Data;
use super::model::{softmax_in_place, standardize, Model};
use crate::analysis::lbfgs::minimize;
use rayon::prelude::*;

/// Which parameters a fit may move.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Kind {
    /// Temperature and class biases only.
    Calibrated,
    /// Those and the feature weights.
    Fused,
}

/// Parameters: [temperature, weights (classes x features), bias (classes)].
pub(super) struct Layout {
    pub(super) classes: usize,
    pub(super) features: usize,
}

impl Layout {
    pub(super) fn len(&self) -> usize {
        1 + self.classes * self.features + self.classes
    }
    pub(super) fn initial(&self) -> Vec<f64> {
        let mut t = vec![0.0; self.len()];
        t[0] = 1.0;
        t
    }
    pub(super) fn logits(&self, theta: &[f64], log_p: &[f64], x: &[f64], out: &mut [f64]) {
        let f = self.features;
        let bias = &theta[1 + self.classes * f..];
        for k in 0..self.classes {
            let w = &theta[1 + k * f..1 + (k + 1) * f];
            out[k] =
                theta[0] * log_p[k] + bias[k] + w.iter().zip(x).map(|(a, b)| a * b).sum::<f64>();
        }
    }
}

/// Mean cross-entropy over `rows` plus the L2 penalty, and its gradient;
/// blocks of rows on all cores.
pub(super) fn objective(
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

/// Feature means and standard deviations over `rows` (a constant feature
/// gets 1, so it standardizes to 0).
pub(super) fn standardizer(
    x: &[Vec<f64>],
    rows: &[usize],
    features: usize,
) -> (Vec<f64>, Vec<f64>) {
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
pub(super) fn fit(data: &Data, train: &[usize], kind: Kind, l2: f64) -> Model {
    let f = data.feature_names.len();
    let layout = Layout {
        classes: data.classes,
        features: f,
    };
    let (mean, std) = standardizer(&data.x, train, f);
    let x: Vec<Vec<f64>> = data.x.iter().map(|r| standardize(r, &mean, &std)).collect();
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
