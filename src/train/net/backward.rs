//! The backward pass: Caffe's need-backward analysis (which layers run
//! backward and which bottoms get a gradient), the pass itself with
//! gradients accumulated into shared blobs, and a gradient from one blob
//! down to another (Grad-CAM's).
use super::{mean_abs, Entry, Net};
use crate::error::{Error, Result};
use crate::train::layers::{BackwardArgs, Grads};
use candle_core::Tensor;
use std::time::Instant;

/// Runs `e`'s backward pass on the gradients its tops hold in `diffs`
/// (taken from there), with its parameter gradients when `params` (else
/// none), on `device`; `None` when no gradient reaches its tops.
fn layer_backward(
    e: &mut Entry,
    blobs: &[Option<Tensor>],
    diffs: &mut [Option<Tensor>],
    params: bool,
    device: &candle_core::Device,
) -> Result<Option<Grads>> {
    let top_diff: Vec<Option<Tensor>> = e.tops.iter().map(|&t| diffs[t].take()).collect();
    if top_diff.iter().all(Option::is_none) {
        return Ok(None);
    }
    let gather = |ids: &[usize]| -> Vec<Tensor> {
        ids.iter()
            .map(|&b| blobs[b].clone().expect("forward ran"))
            .collect()
    };
    let param_grad = if params {
        e.param_grads.clone()
    } else {
        vec![false; e.param_grads.len()]
    };
    if let Some(grads) = e.empty_backward(&param_grad, device)? {
        return Ok(Some(grads));
    }
    Ok(Some(e.layer.backward(&BackwardArgs {
        bottom: &gather(&e.bottoms),
        top: &gather(&e.tops),
        top_diff: &top_diff,
        propagate: &e.propagate,
        param_grad: &param_grad,
    })?))
}

/// Adds each bottom's gradient in `grads` to what its blob has in `diffs`.
fn add_bottom_grads(
    bottoms: &[usize],
    grads: Vec<Option<Tensor>>,
    diffs: &mut [Option<Tensor>],
) -> Result<()> {
    for (&b, g) in bottoms.iter().zip(grads) {
        if let Some(g) = g {
            diffs[b] = Some(match diffs[b].take() {
                Some(d) => (d + g)?,
                None => g,
            });
        }
    }
    Ok(())
}

impl Net {
    /// Caffe's rule (Net::Init): a layer runs backward if it has a learnable
    /// parameter or a bottom needing gradients, and only if it contributes to
    /// a loss. A layer's `propagate_down: false` (one flag per bottom) keeps
    /// a bottom from getting a gradient (`true` cannot give one to a bottom
    /// that needs none); a layer all of whose tops' readers take no gradient
    /// from them skips its backward pass, so `propagate_down: false` above
    /// the trained layers stops backpropagation there (the layers below then
    /// get no gradient, though the solver still decays their weights, as in
    /// Caffe). The net's `force_backward` then turns every layer's backward
    /// on, with every bottom the layer allows and every parameter gradient.
    pub(super) fn analyse_backward(&mut self) {
        let n = self.blob_names.len();
        let mut blob_needs = vec![false; n];
        let mut readers = vec![0usize; n];
        for e in &mut self.entries {
            let learnable = e.mults.iter().any(|&(lr, _)| lr != 0.0);
            e.need_backward =
                !e.layer.is_data() && (learnable || e.bottoms.iter().any(|&b| blob_needs[b]));
            let forced = &e.param.propagate_down;
            e.propagate = e
                .bottoms
                .iter()
                .enumerate()
                .map(|(i, &b)| blob_needs[b] && forced.get(i).copied().unwrap_or(true))
                .collect();
            for &b in &e.bottoms {
                readers[b] += 1;
            }
            for &t in &e.tops {
                blob_needs[t] = e.need_backward;
            }
        }
        let mut under_loss = vec![false; n];
        // Readers of each blob that take no gradient from it.
        let mut skipping = vec![0usize; n];
        for e in self.entries.iter_mut().rev() {
            let contributes =
                e.loss_weights.iter().any(|&w| w != 0.0) || e.tops.iter().any(|&t| under_loss[t]);
            let unread_gradients = e
                .tops
                .iter()
                .all(|&t| readers[t] > 0 && skipping[t] == readers[t]);
            if e.need_backward && unread_gradients {
                e.need_backward = false;
                e.propagate.fill(false);
            }
            if !contributes {
                e.need_backward = false;
            }
            for (i, &b) in e.bottoms.iter().enumerate() {
                if contributes {
                    under_loss[b] = true;
                } else {
                    e.propagate[i] = false;
                }
                if !e.propagate[i] {
                    skipping[b] += 1;
                }
            }
        }
        for e in &mut self.entries {
            let need = e.need_backward;
            e.propagate.iter_mut().for_each(|p| *p &= need);
            e.param_grads = e.mults.iter().map(|&(lr, _)| lr != 0.0).collect();
            if self.force_backward && !e.layer.is_data() {
                e.need_backward = true;
                for (i, p) in e.propagate.iter_mut().enumerate() {
                    *p |= e.layer.allow_force_backward(i);
                }
                // Not the blobs a layer updates itself (BatchNorm's).
                let fixed = e.layer.fixed_params();
                e.param_grads.iter_mut().for_each(|g| *g |= !fixed);
            }
        }
    }

    /// Backpropagates from the losses, adding parameter gradients to the
    /// accumulated ones (so `iter_size` passes sum up).
    pub fn backward(&mut self) -> Result<()> {
        let mut diffs: Vec<Option<Tensor>> = vec![None; self.blob_names.len()];
        for e in &self.entries {
            for (&t, &w) in e.tops.iter().zip(&e.loss_weights) {
                if w != 0.0 {
                    let top = self.blobs[t].as_ref().expect("forward ran");
                    diffs[t] = Some(Tensor::full(w, top.shape(), top.device())?);
                }
            }
        }
        for li in (0..self.entries.len()).rev() {
            let e = &mut self.entries[li];
            if !e.need_backward {
                continue;
            }
            let start = Instant::now();
            let Some((bgrads, pgrads)) =
                layer_backward(e, &self.blobs, &mut diffs, true, &self.device)?
            else {
                // No loss below this layer (a layer forced to run backward
                // that feeds no loss): its gradients are all zero.
                continue;
            };
            if let Some(t) = &mut self.timing {
                self.device.synchronize()?;
                t[li].1 += start.elapsed();
            }
            if let Some(lines) = &mut self.debug {
                // Caffe's BackwardDebugInfo: the mean |gradient| this layer
                // gives each bottom (Caffe's Split layers keep each reader's
                // gradient apart: this is that one).
                for ((&b, g), &p) in e.bottoms.iter().zip(&bgrads).zip(&e.propagate) {
                    if let (Some(g), true) = (g, p) {
                        let m = mean_abs(g)?;
                        lines.push((
                            'I',
                            format!(
                                "    [Backward] Layer {}, bottom blob {} diff: {}",
                                e.param.name(),
                                self.blob_names[b],
                                crate::train::log::g(m)
                            ),
                        ));
                    }
                }
            }
            add_bottom_grads(&e.bottoms, bgrads, &mut diffs)?;
            let slots = e.slots.clone();
            let layer_name = e.param.name().to_string();
            for (i, g) in pgrads.into_iter().enumerate() {
                if let Some(mut g) = g {
                    let owner = slots[i];
                    let p = self.params[owner];
                    if (p.layer, p.index) != (li, i) {
                        // A sharer's gradient (reshaped, for a PERMISSIVE share).
                        g = g.reshape(self.param(owner).shape())?;
                    }
                    let slot = &mut self.grads[owner];
                    *slot = Some(match slot.take() {
                        Some(d) => (d + g)?,
                        None => g,
                    });
                    if let Some(lines) = &mut self.debug {
                        let m = mean_abs(self.grads[owner].as_ref().expect("just set"))?;
                        lines.push((
                            'I',
                            format!(
                                "    [Backward] Layer {layer_name}, param blob {i} diff: {}",
                                crate::train::log::g(m)
                            ),
                        ));
                    }
                }
            }
        }
        if self.debug.is_some() {
            // Caffe's closing line, at its ERROR level.
            let line = self.parameter_norms()?;
            if let Some(lines) = &mut self.debug {
                lines.push(('E', line));
            }
        }
        Ok(())
    }

    /// The gradient of `seed · seed_diff` (e.g. one class score per image)
    /// with respect to the blob `target` in the last forward pass: `seed`'s
    /// gradient is set to `seed_diff` and backpropagated down to `target`'s
    /// last producer, computing no parameter gradient and leaving the
    /// training gradients alone (what Caffe's `backward(start=…)` from a
    /// set top diff does). In-place layers make a name several blobs: both
    /// names mean the last one (`conv5` after its ReLU). Needs a net built
    /// with `force_backward`, so every layer keeps what its backward needs.
    pub fn blob_gradient(&mut self, seed: &str, seed_diff: Tensor, target: &str) -> Result<Tensor> {
        let ctx = format!("net '{}'", self.name);
        if !self.force_backward {
            return Err(Error::model(
                &ctx,
                "a blob gradient needs the net built with force_backward: true",
            ));
        }
        let last = |name: &str| {
            (0..self.blob_names.len())
                .rev()
                .find(|&i| self.blob_names[i] == name)
                .ok_or_else(|| Error::model(&ctx, format!("has no blob '{name}'")))
        };
        let (seed_id, target_id) = (last(seed)?, last(target)?);
        if seed_diff.dims() != self.blob_shapes[seed_id].as_slice() {
            return Err(Error::model(
                &ctx,
                format!(
                    "the gradient of '{seed}' has shape {:?}, not the blob's {:?}",
                    seed_diff.dims(),
                    self.blob_shapes[seed_id]
                ),
            ));
        }
        let mut diffs: Vec<Option<Tensor>> = vec![None; self.blob_names.len()];
        diffs[seed_id] = Some(seed_diff);
        for e in self.entries.iter_mut().rev() {
            if e.tops.contains(&target_id) {
                // Every reader of the target comes after its producer.
                break;
            }
            if let Some((bgrads, _)) =
                layer_backward(e, &self.blobs, &mut diffs, false, &self.device)?
            {
                add_bottom_grads(&e.bottoms, bgrads, &mut diffs)?;
            }
        }
        diffs[target_id].take().ok_or_else(|| {
            Error::model(
                &ctx,
                format!(
                    "no gradient flows from '{seed}' down to '{target}' (is '{target}' below it?)"
                ),
            )
        })
    }
}
