//! Caffe's SGD update (`SGDSolver::ApplyUpdate`), fused into one pass per
//! parameter but with Caffe's operations in Caffe's order, so every rounding
//! is the same: clip, normalise by iter_size, add weight decay, then
//! `h = lr*lr_mult*diff + momentum*h` and `w -= h`.
use super::layers::with_f32;
use super::net::Net;
use super::{fused, tensor_ops};
use crate::error::Result;
use candle_core::Tensor;
use rayon::prelude::*;

/// The solver settings the update needs.
#[derive(Clone, Copy, Debug)]
pub struct SgdConfig {
    /// Momentum.
    pub momentum: f32,
    /// Global weight decay (times each parameter's decay_mult).
    pub weight_decay: f32,
    /// L1 instead of L2 regularisation.
    pub l1: bool,
    /// Gradients were summed over this many passes.
    pub iter_size: usize,
    /// Clip the global gradient L2 norm to this (negative = off).
    pub clip_gradients: f32,
}

/// One parameter's update settings, applied in Caffe's order by every path
/// (the CPU loop here, [`tensor_ops::sgd_step`], [`fused::sgd_step`]): the
/// gradient times each present `grad_scale` in turn (clipping, then
/// 1/iter_size), plus `decay` times the weight (its sign for L1), gives
/// `h = rate * d + momentum * h`; then `w -= h`.
#[derive(Clone, Copy, Debug)]
pub struct ParamStep {
    /// Gradient factors: the clipping factor, then 1/iter_size.
    pub grad_scale: [Option<f32>; 2],
    /// Weight decay times the parameter's decay_mult.
    pub decay: f32,
    /// L1 instead of L2 regularisation.
    pub l1: bool,
    /// Learning rate times the parameter's lr_mult.
    pub rate: f32,
    /// Momentum.
    pub momentum: f32,
}

impl ParamStep {
    /// The new history value of one element with weight `w`, gradient `g`
    /// and history `h` (the CPU twins' arithmetic, rounding for rounding).
    #[inline]
    pub fn history(&self, w: f32, g: f32, h: f32) -> f32 {
        let mut d = g;
        for s in self.grad_scale.iter().flatten() {
            d *= s;
        }
        if self.decay != 0.0 {
            let r = if self.l1 { sign(w) } else { w };
            d += self.decay * r;
        }
        self.rate * d + self.momentum * h
    }
}

/// Applies one update with learning rate `rate`; returns `(norm, factor)` when gradients were clipped.
pub fn sgd_update(
    net: &mut Net,
    history: &mut [Tensor],
    rate: f32,
    cfg: &SgdConfig,
) -> Result<Option<(f32, f32)>> {
    let n = net.params().len();
    let mut clipped = None;
    if cfg.clip_gradients >= 0.0 {
        let mut sumsq = 0.0f32;
        for i in 0..n {
            if net.params()[i].lr_mult != 0.0 {
                let g = net.grad(i)?;
                sumsq += if net.uses_tensor_ops() {
                    tensor_ops::sum_sq(&g)?
                } else {
                    with_f32(&g, |g| g.iter().map(|v| v * v).sum::<f32>())?
                };
            }
        }
        let norm = sumsq.sqrt();
        if norm > cfg.clip_gradients {
            clipped = Some((norm, cfg.clip_gradients / norm));
        }
    }
    let clip = clipped.map(|(_, f)| f);
    let inv_iter = (cfg.iter_size > 1).then(|| 1.0f32 / cfg.iter_size as f32);
    for (i, hist) in history.iter_mut().enumerate().take(n) {
        let p = net.params()[i];
        let step = ParamStep {
            grad_scale: [clip, inv_iter],
            decay: cfg.weight_decay * p.decay_mult,
            l1: cfg.l1,
            rate: rate * p.lr_mult,
            momentum: cfg.momentum,
        };
        let w = net.param(i).clone();
        let g = net.grad(i)?;
        if net.uses_tensor_ops() {
            let apply = if net.uses_fused() {
                fused::sgd_step
            } else {
                tensor_ops::sgd_step
            };
            let (new_w, new_h) = apply(&w, &g, hist, &step)?;
            *hist = new_h;
            net.set_param(i, new_w);
            continue;
        }
        let (new_w, new_h) = with_f32(&w, |ws| {
            with_f32(&g, |gs| {
                with_f32(hist, |hs| {
                    let mut nw = vec![0.0f32; ws.len()];
                    let mut nh = vec![0.0f32; ws.len()];
                    nw.par_chunks_mut(1 << 14)
                        .zip(nh.par_chunks_mut(1 << 14))
                        .enumerate()
                        .for_each(|(c, (nw, nh))| {
                            let off = c << 14;
                            for j in 0..nw.len() {
                                let w = ws[off + j];
                                let hn = step.history(w, gs[off + j], hs[off + j]);
                                nh[j] = hn;
                                nw[j] = w - hn;
                            }
                        });
                    (nw, nh)
                })
            })
        })???;
        *hist = Tensor::from_vec(new_h, hist.shape(), hist.device())?;
        let shape = w.shape().clone();
        net.set_param(i, Tensor::from_vec(new_w, shape, w.device())?);
    }
    Ok(clipped)
}

/// Caffe's sign: -1, 0 or 1.
#[inline]
fn sign(x: f32) -> f32 {
    ((0.0 < x) as i32 - (x < 0.0) as i32) as f32
}
