//! Element-wise layers: ReLU (with negative slope) and inverted Dropout.
use super::{with_f32, BackwardArgs, Grads, Layer, OpPath};
use crate::caffe::proto::Phase;
use crate::caffe::rng::{lock, SharedCaffeRng};
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
    fn any_batch(&self) -> bool {
        true
    }
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
    /// On the CPU, the net's Caffe generator: masks are Caffe's CPU masks,
    /// drawn from it in forward order after everything the nets' set-up
    /// drew (the solver saves its state for a resume).
    caffe_rng: Option<SharedCaffeRng>,
    /// Forward passes in TRAIN so far; on a GPU each draws its mask from its
    /// own ChaCha stream (as Caffe's GPU masks come from curand, not from its
    /// generator), so the layer's state there is this one number.
    calls: u64,
    mask: Option<Tensor>,
    /// Fused: the mask is drawn on the device (same values as on the host).
    path: OpPath,
}

impl Dropout {
    pub fn new(
        ratio: f32,
        seed: u64,
        caffe_rng: Option<SharedCaffeRng>,
        name: &str,
        path: OpPath,
    ) -> Result<Self> {
        if !(0.0..1.0).contains(&ratio) {
            return Err(Error::model(
                format!("layer '{name}'"),
                format!("dropout_ratio {ratio} must be in [0, 1)"),
            ));
        }
        Ok(Dropout {
            ratio,
            seed,
            caffe_rng,
            calls: 0,
            mask: None,
            path,
        })
    }
}

impl Layer for Dropout {
    fn any_batch(&self) -> bool {
        true
    }
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
        let mask = if let Some(rng) = &self.caffe_rng {
            // Caffe keeps a unit when an output u has u <= (1 - ratio)(2^32 - 1),
            // in double, and scales kept units by 1 / (1 - ratio) as a float.
            let keep = 1.0 - f64::from(self.ratio);
            let scale = (1.0 / keep) as f32;
            let mut rng = lock(rng);
            let mask: Vec<f32> = (0..x.elem_count())
                .map(|_| if rng.bernoulli_f64(keep) { scale } else { 0.0 })
                .collect();
            Tensor::from_vec(mask, x.shape(), x.device())?
        } else if self.path.fused() {
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
    fn any_batch(&self) -> bool {
        true
    }
    fn allow_force_backward(&self, _i: usize) -> bool {
        // No gradient in Caffe either (it aborts when forced).
        false
    }
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
