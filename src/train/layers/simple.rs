//! Element-wise layers: ReLU (with negative slope) and inverted Dropout.
use super::{with_f32, BackwardArgs, Grads, Layer, OpPath};
use crate::caffe::proto::Phase;
use crate::error::{Error, Result};
use candle_core::Tensor;
use rayon::prelude::*;

pub struct Relu {
    slope: f32,
    path: OpPath,
}

impl Relu {
    pub fn new(slope: f32, path: OpPath) -> Self {
        Relu { slope, path }
    }
}

impl Layer for Relu {
    fn type_name(&self) -> &'static str {
        "ReLU"
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        Ok(vec![bottom[0].clone()])
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let x = &bottom[0];
        let y = if self.slope == 0.0 {
            x.relu()?
        } else {
            let pos = x.relu()?;
            let neg = x.minimum(0f32)?;
            (pos + (neg * self.slope as f64)?)?
        };
        Ok(vec![y])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let (Some(dy), true) = (&a.top_diff[0], a.propagate[0]) else {
            return Ok((vec![None], vec![]));
        };
        // Caffe: dx = dy * ((x > 0) + slope * (x <= 0)), in one pass.
        let x = &a.bottom[0];
        let slope = self.slope;
        if self.path.fused() {
            let dx = crate::train::fused::relu_backward(x, dy, slope)?;
            return Ok((vec![Some(dx)], vec![]));
        }
        if self.path.tensor_ops() {
            let dx = crate::train::tensor_ops::relu_backward(x, dy, slope)?;
            return Ok((vec![Some(dx)], vec![]));
        }
        let dx = with_f32(x, |xs| {
            with_f32(dy, |ds| {
                // On all cores: relu1's gradient is 14.5M values at batch 50.
                xs.par_iter()
                    .zip(ds.par_iter())
                    .with_min_len(1 << 14)
                    .map(|(&x, &d)| if x > 0.0 { d } else { d * slope })
                    .collect::<Vec<f32>>()
            })
        })??;
        Ok((
            vec![Some(Tensor::from_vec(dx, x.shape(), x.device())?)],
            vec![],
        ))
    }
}

pub struct Dropout {
    ratio: f32,
    seed: u64,
    /// Forward passes in TRAIN so far; each draws its mask from its own
    /// ChaCha stream, so the layer's state is this one number.
    calls: u64,
    mask: Option<Tensor>,
    /// Fused: the mask is drawn on the device (same values as on the host).
    path: OpPath,
}

impl Dropout {
    pub fn new(ratio: f32, seed: u64, name: &str, path: OpPath) -> Result<Self> {
        if !(0.0..1.0).contains(&ratio) {
            return Err(Error::model(
                format!("layer '{name}'"),
                format!("dropout_ratio {ratio} must be in [0, 1)"),
            ));
        }
        Ok(Dropout {
            ratio,
            seed,
            calls: 0,
            mask: None,
            path,
        })
    }
}

impl Layer for Dropout {
    fn type_name(&self) -> &'static str {
        "Dropout"
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        Ok(vec![bottom[0].clone()])
    }
    fn forward(&mut self, bottom: &[Tensor], phase: Phase) -> Result<Vec<Tensor>> {
        if phase == Phase::Test {
            return Ok(vec![bottom[0].clone()]);
        }
        // Inverted dropout: kept units are scaled by 1/(1-p) at train time.
        // Each pass draws from its own ChaCha stream of the layer's seed.
        let (x, call) = (&bottom[0], self.calls);
        self.calls += 1;
        let mask = if self.path.fused() {
            crate::train::fused::dropout_mask(x, self.seed, call, self.ratio)?
        } else {
            let mask =
                crate::train::fused::dropout_mask_host(x.elem_count(), self.seed, call, self.ratio);
            Tensor::from_vec(mask, x.shape(), x.device())?
        };
        let y = (&bottom[0] * &mask)?;
        self.mask = Some(mask);
        Ok(vec![y])
    }
    fn state(&self) -> Option<u64> {
        Some(self.calls)
    }
    fn restore_state(&mut self, state: u64) {
        self.calls = state;
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let (Some(dy), true) = (&a.top_diff[0], a.propagate[0]) else {
            return Ok((vec![None], vec![]));
        };
        let dx = match &self.mask {
            Some(m) => (dy * m)?,
            None => dy.clone(),
        };
        Ok((vec![Some(dx)], vec![]))
    }
}

/// Threshold: 1 where `x > threshold`, else 0 (a step, with no gradient:
/// Caffe's backward is not implemented either).
pub struct Threshold {
    threshold: f32,
    ctx: String,
}

impl Threshold {
    pub fn new(threshold: f32, name: &str) -> Self {
        Threshold {
            threshold,
            ctx: format!("layer '{name}'"),
        }
    }
}

impl Layer for Threshold {
    fn type_name(&self) -> &'static str {
        "Threshold"
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        Ok(vec![bottom[0].clone()])
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let x = &bottom[0];
        Ok(vec![x.gt(self.threshold)?.to_dtype(x.dtype())?])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        super::argmax::no_gradient(a, &self.ctx, "Threshold")
    }
}
