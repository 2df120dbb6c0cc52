//! Caffe's SGD update (`SGDSolver::ApplyUpdate`), fused into one pass per
//! parameter but with Caffe's operations in Caffe's order, so every rounding
//! is the same: clip, normalise by iter_size, add weight decay, then
//! `h = lr*lr_mult*diff + momentum*h` and `w -= h`. The other solver types
//! share the first three steps and replace the last ([`adaptive`]).
pub mod adaptive;

use super::layers::{to_vec, with_f32};
use super::net::Net;
use super::{fused, tensor_ops};
use crate::error::{Error, Result};
use adaptive::{AdaptiveStep, Rule};
use candle_core::Tensor;
use rayon::prelude::*;

/// The solver settings the update needs.
#[derive(Clone, Copy, Debug)]
pub struct SgdConfig {
    /// The update rule (the solver's type).
    pub rule: Rule,
    /// The iteration being applied (Adam's bias correction counts it).
    pub iter: usize,
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
    /// The gradient `g` of weight `w` clipped, normalised and regularised:
    /// what every rule turns into a step.
    #[inline]
    pub fn prepared(&self, w: f32, g: f32) -> f32 {
        let mut d = g;
        for s in self.grad_scale.iter().flatten() {
            d *= s;
        }
        if self.decay != 0.0 {
            let r = if self.l1 { sign(w) } else { w };
            d += self.decay * r;
        }
        d
    }

    /// The new history value of one element with weight `w`, gradient `g`
    /// and history `h` (the CPU twins' arithmetic, rounding for rounding).
    #[inline]
    pub fn history(&self, w: f32, g: f32, h: f32) -> f32 {
        self.rate * self.prepared(w, g) + self.momentum * h
    }
}

/// Applies one update with learning rate `rate` under `cfg.rule`; returns
/// `(norm, factor)` when gradients were clipped. `history` holds
/// `cfg.rule.histories()` sets of one blob per parameter, set after set.
pub fn sgd_update(
    net: &mut Net,
    history: &mut [Tensor],
    rate: f32,
    cfg: &SgdConfig,
) -> Result<Option<(f32, f32)>> {
    sgd_update_keeping(net, history, rate, cfg, None)
}

/// [`sgd_update`], also keeping in `updates` (one per parameter) the step
/// each parameter took under an adaptive rule: what Caffe leaves in a
/// parameter's diff after its update, which `snapshot_diff` writes. (Under
/// SGD the step is the new history; nothing is kept.)
pub fn sgd_update_keeping(
    net: &mut Net,
    history: &mut [Tensor],
    rate: f32,
    cfg: &SgdConfig,
    mut updates: Option<&mut Vec<Option<Tensor>>>,
) -> Result<Option<(f32, f32)>> {
    if let Some(u) = updates.as_deref_mut() {
        u.clear();
        u.resize(net.params().len(), None);
    }
    let n = net.params().len();
    if history.len() != n * cfg.rule.histories() {
        return Err(Error::model(
            format!("{} solver", cfg.rule.name()),
            format!(
                "holds {} history blobs for {n} parameters; it needs {}",
                history.len(),
                n * cfg.rule.histories()
            ),
        ));
    }
    let mut clipped = None;
    if cfg.clip_gradients >= 0.0 {
        let mut sumsq = 0.0f32;
        // Caffe sums every learnable blob's gradient; a frozen one is zero
        // unless `force_backward` computed it.
        for i in 0..n {
            if net.params()[i].lr_mult != 0.0 || net.has_grad(i) {
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
    let correction = cfg.rule.correction(cfg.momentum, cfg.iter);
    // The second set (AdaDelta, Adam) is empty for the other rules.
    let (first, second) = history.split_at_mut(n);
    for (i, hist) in first.iter_mut().enumerate() {
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
        if cfg.rule != Rule::Sgd {
            let adaptive = AdaptiveStep {
                rule: cfg.rule,
                momentum: cfg.momentum,
                rate: step.rate,
                correction,
            };
            let keep = updates.as_deref_mut().map(|u| &mut u[i]);
            let new_w = adaptive_update(
                &w,
                &g,
                hist,
                second.get_mut(i),
                &step,
                &adaptive,
                net.uses_tensor_ops(),
                keep,
            )?;
            net.set_param(i, new_w)?;
            continue;
        }
        if net.uses_tensor_ops() {
            let apply = if net.uses_fused() {
                fused::sgd_step
            } else {
                tensor_ops::sgd_step
            };
            let (new_w, new_h) = apply(&w, &g, hist, &step)?;
            *hist = new_h;
            net.set_param(i, new_w)?;
            continue;
        }
        // In place, in one pass over weights, gradient and history: the
        // update is bound by memory (CaffeNet's 57M weights), and fresh
        // buffers would cost more than the arithmetic.
        // (Views are copied first, so only whole, contiguous blobs are rewritten.)
        let w = w.contiguous()?;
        if !hist.is_contiguous() {
            *hist = hist.contiguous()?;
        }
        w.inplace_op1(&StepInPlace {
            step,
            hist,
            grad: &g.contiguous()?,
        })?;
        net.set_param(i, w)?;
    }
    Ok(clipped)
}

/// The host values of a contiguous f32 tensor's storage, or an error naming `op`.
fn host_values<'a>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (candle_core::CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("{op}: needs a contiguous f32 tensor"),
    }
}

/// The mutable host values of a contiguous f32 tensor's storage.
fn host_values_mut<'a>(
    s: &'a mut candle_core::CpuStorage,
    l: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (candle_core::CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("{op}: needs a contiguous f32 tensor"),
    }
}

/// Elements per parallel task of the in-place pass.
const CHUNK: usize = 1 << 14;

/// One SGD step of a parameter on the host, in place: holding its weights'
/// storage, it rewrites the history (the inner op, which holds that
/// storage) and the weights together, element by element.
struct StepInPlace<'a> {
    step: ParamStep,
    hist: &'a Tensor,
    grad: &'a Tensor,
}

impl candle_core::InplaceOp1 for StepInPlace<'_> {
    fn name(&self) -> &'static str {
        "sgd_step_in_place"
    }
    fn cpu_fwd(
        &self,
        w: &mut candle_core::CpuStorage,
        lw: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let w = host_values_mut(w, lw, self.name())?;
        self.hist.inplace_op2(
            self.grad,
            &HistoryAndWeights {
                step: self.step,
                w: std::sync::Mutex::new(w),
            },
        )
    }
}

/// `h = rate * prepared(w, g) + momentum * h`, then `w -= h`, over the
/// history's storage and the weights [`StepInPlace`] lends it.
struct HistoryAndWeights<'a> {
    step: ParamStep,
    w: std::sync::Mutex<&'a mut [f32]>,
}

impl candle_core::InplaceOp2 for HistoryAndWeights<'_> {
    fn name(&self) -> &'static str {
        "sgd_history_and_weights"
    }
    fn cpu_fwd(
        &self,
        h: &mut candle_core::CpuStorage,
        lh: &candle_core::Layout,
        g: &candle_core::CpuStorage,
        lg: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let g = host_values(g, lg, self.name())?;
        let h = host_values_mut(h, lh, self.name())?;
        let mut w = self.w.lock().map_err(|_| {
            candle_core::Error::Msg(format!("{}: weights lock poisoned", self.name()))
        })?;
        if w.len() != h.len() || g.len() != h.len() {
            candle_core::bail!(
                "{}: weights, gradient and history differ in size",
                self.name()
            );
        }
        step_in_place(&self.step, h, &mut w, g);
        Ok(())
    }
}

/// `h = step.history(w, g, h)`, then `w -= h`, element by element. The
/// common steps (L2 or no decay, at most one of clipping and iter_size) get
/// loops of their own that the compiler vectorises, with the same arithmetic
/// in the same order: CaffeNet's update in `time` takes 93-109 ms instead of
/// 190-215 on two cores.
fn step_in_place(step: &ParamStep, h: &mut [f32], w: &mut [f32], g: &[f32]) {
    fn each(h: &mut [f32], w: &mut [f32], g: &[f32], f: impl Fn(f32, f32, f32) -> f32 + Sync) {
        h.par_chunks_mut(CHUNK)
            .zip(w.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|((h, w), g)| {
                for ((h, w), &g) in h.iter_mut().zip(w.iter_mut()).zip(g) {
                    let hn = f(*w, g, *h);
                    *h = hn;
                    *w -= hn;
                }
            });
    }
    let &ParamStep {
        grad_scale,
        decay,
        l1,
        rate,
        momentum,
    } = step;
    match (grad_scale, l1) {
        // Caffe skips the decay term when it is 0 (so an infinite weight adds no NaN).
        ([None, None], _) if decay == 0.0 => each(h, w, g, |_, g, h| rate * g + momentum * h),
        ([None, None], false) => each(h, w, g, |w, g, h| rate * (g + decay * w) + momentum * h),
        // Clipping or iter_size alone.
        ([Some(a), None] | [None, Some(a)], false) if decay != 0.0 => {
            each(h, w, g, |w, g, h| rate * (g * a + decay * w) + momentum * h)
        }
        _ => each(h, w, g, |w, g, h| step.history(w, g, h)),
    }
}

/// One parameter's step under an adaptive rule: its histories are replaced
/// and the new weights returned (and with `keep` the step taken). On a GPU
/// (`tensor_ops`) as tensor ops, on the CPU one parallel pass over the
/// elements.
#[allow(clippy::too_many_arguments)]
fn adaptive_update(
    w: &Tensor,
    g: &Tensor,
    h1: &mut Tensor,
    h2: Option<&mut Tensor>,
    step: &ParamStep,
    rule: &AdaptiveStep,
    tensor_ops: bool,
    keep: Option<&mut Option<Tensor>>,
) -> Result<Tensor> {
    if tensor_ops {
        let d = tensor_ops::prepared_grad(w, g, step)?;
        // A rule with one history ignores the second: h1 stands in for it.
        let old_h2 = match &h2 {
            Some(h) => (*h).clone(),
            None => h1.clone(),
        };
        let [u, n1, n2] = rule.tensors(&d, h1, &old_h2)?;
        *h1 = n1;
        if let Some(h) = h2 {
            *h = n2;
        }
        let new_w = (w - &u)?;
        if let Some(k) = keep {
            *k = Some(u);
        }
        return Ok(new_w);
    }
    const CHUNK: usize = 1 << 14;
    let mut n1 = to_vec(h1)?;
    let mut n2 = match &h2 {
        Some(h) => to_vec(h)?,
        None => Vec::new(),
    };
    let mut steps = if keep.is_some() {
        vec![0f32; w.elem_count()]
    } else {
        Vec::new()
    };
    let nw = with_f32(w, |ws| {
        with_f32(g, |gs| {
            let mut nw = vec![0f32; ws.len()];
            // One slot per chunk for the steps, none when they are not kept.
            let kept: Vec<Option<&mut [f32]>> = if steps.is_empty() {
                (0..ws.len().div_ceil(CHUNK)).map(|_| None).collect()
            } else {
                steps.chunks_mut(CHUNK).map(Some).collect()
            };
            // One slot per chunk for the second history, none when the rule has none.
            let second: Vec<Option<&mut [f32]>> = if n2.is_empty() {
                (0..ws.len().div_ceil(CHUNK)).map(|_| None).collect()
            } else {
                n2.chunks_mut(CHUNK).map(Some).collect()
            };
            nw.par_chunks_mut(CHUNK)
                .zip(n1.par_chunks_mut(CHUNK))
                .zip(second)
                .zip(kept)
                .enumerate()
                .for_each(|(c, (((nw, n1), mut n2), mut kept))| {
                    let off = c * CHUNK;
                    let mut spare = 0f32;
                    for j in 0..nw.len() {
                        let h2 = match n2.as_deref_mut() {
                            Some(s) => &mut s[j],
                            None => &mut spare,
                        };
                        let d = step.prepared(ws[off + j], gs[off + j]);
                        let u = rule.element(d, &mut n1[j], h2);
                        nw[j] = ws[off + j] - u;
                        if let Some(k) = kept.as_deref_mut() {
                            k[j] = u;
                        }
                    }
                });
            nw
        })
    })??;
    let shape = w.shape().clone();
    if let Some(k) = keep {
        *k = Some(Tensor::from_vec(steps, shape.clone(), w.device())?);
    }
    *h1 = Tensor::from_vec(n1, shape.clone(), w.device())?;
    if let Some(h) = h2 {
        *h = Tensor::from_vec(n2, shape.clone(), w.device())?;
    }
    Ok(Tensor::from_vec(nw, shape, w.device())?)
}

/// Caffe's sign: -1, 0 or 1.
#[inline]
fn sign(x: f32) -> f32 {
    ((0.0 < x) as i32 - (x < 0.0) as i32) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every branch of the in-place loop gives `ParamStep::history`'s
    /// values bit for bit, an infinite weight and a zero decay included.
    #[test]
    fn in_place_steps_equal_the_element_formula() {
        let n = 3 * CHUNK + 17;
        let value = |i: usize, salt: usize| (((i * 7919 + salt) % 2003) as f32 - 1001.0) / 137.0;
        let w0: Vec<f32> = (0..n)
            .map(|i| if i == 5 { f32::INFINITY } else { value(i, 1) })
            .collect();
        let g: Vec<f32> = (0..n).map(|i| value(i, 2) * 1e-3).collect();
        let h0: Vec<f32> = (0..n).map(|i| value(i, 3) * 1e-4).collect();
        for (grad_scale, decay, l1) in [
            ([None, None], 0.0, false),
            ([None, None], 5e-4, false),
            ([None, None], 5e-4, true),
            ([Some(0.3), None], 5e-4, false),
            ([None, Some(0.25)], 5e-4, false),
            ([None, Some(0.25)], 0.0, false),
            ([Some(0.3), Some(0.25)], 0.0, false),
        ] {
            let step = ParamStep {
                grad_scale,
                decay,
                l1,
                rate: 0.01,
                momentum: 0.9,
            };
            let (mut w, mut h) = (w0.clone(), h0.clone());
            step_in_place(&step, &mut h, &mut w, &g);
            for i in 0..n {
                let hn = step.history(w0[i], g[i], h0[i]);
                let case = format!("{step:?} at {i}");
                assert_eq!(h[i].to_bits(), hn.to_bits(), "{case}");
                assert_eq!(w[i].to_bits(), (w0[i] - hn).to_bits(), "{case}");
            }
        }
    }
}
