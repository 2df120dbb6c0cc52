//! A Net built from a `NetParameter` for one phase: layers filtered by
//! include/exclude rules, blobs wired by name (in-place tops and shared
//! bottoms included), Caffe's need-backward analysis, forward with weighted
//! losses, backward that accumulates gradients, and weights in and out by
//! layer name.
use super::layers::{checked_count, create, BackwardArgs, BuildContext, Grads, Layer};
use super::memory;
use crate::caffe::blob::{shape_equals, shape_string};
use crate::caffe::proto::{LayerParameter, NetParameter, NetState, Phase};
use crate::caffe::BlobProto;
use crate::error::{Error, Result};
use candle_core::Tensor;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

struct Entry {
    param: LayerParameter,
    layer: Box<dyn Layer>,
    bottoms: Vec<usize>,
    tops: Vec<usize>,
    loss_weights: Vec<f32>,
    need_backward: bool,
    propagate: Vec<bool>,
    /// Per parameter: whether backward computes its gradient (lr_mult not
    /// 0, or the net's `force_backward`).
    param_grads: Vec<bool>,
    /// Per parameter: (lr_mult, decay_mult), from the layer's own specs
    /// (which decide, as in Caffe, whether it computes that gradient).
    mults: Vec<(f32, f32)>,
    /// Per parameter: the learnable parameter it is, or shares (an index
    /// into [`Net::params`]).
    slots: Vec<usize>,
}

/// A learnable parameter's place and multipliers.
#[derive(Clone, Copy, Debug)]
pub struct ParamRef {
    /// Layer index.
    pub layer: usize,
    /// Blob index within the layer.
    pub index: usize,
    /// Learning-rate multiplier.
    pub lr_mult: f32,
    /// Weight-decay multiplier.
    pub decay_mult: f32,
}

/// One layer of a built net, as [`Net::layer_infos`] describes it.
#[derive(Clone, Debug)]
pub struct LayerInfo<'a> {
    /// Its definition.
    pub param: &'a LayerParameter,
    /// Its type as Caffe names it.
    pub type_name: &'static str,
    /// The shapes of its tops.
    pub tops: Vec<Vec<usize>>,
    /// The shapes of its learnable blobs (weights, then bias).
    pub param_shapes: Vec<Vec<usize>>,
    /// Per learnable blob: (lr_mult, decay_mult) as the solver applies
    /// them (a shared blob's are its owner's).
    pub mults: Vec<(f32, f32)>,
    /// Per learnable blob: for one this layer shares with an earlier one,
    /// that layer's name and blob index.
    pub shared_from: Vec<Option<(String, usize)>>,
    /// Whether it runs backward (Caffe's need-backward analysis).
    pub backward: bool,
}

/// A net ready to run.
pub struct Net {
    /// The net's name.
    pub name: String,
    phase: Phase,
    entries: Vec<Entry>,
    blob_names: Vec<String>,
    blob_shapes: Vec<Vec<usize>>,
    blobs: Vec<Option<Tensor>>,
    outputs: Vec<usize>,
    /// The learnable parameters: each blob no earlier blob shares.
    params: Vec<ParamRef>,
    /// Per learnable parameter, the other layers' blobs that share it
    /// (`param { name: … }`) as (layer index, blob index): they hold its
    /// values, reshaped to their own shapes, and their gradients add to its.
    sharers: Vec<Vec<(usize, usize)>>,
    /// Accumulated parameter gradients, aligned with `params`.
    grads: Vec<Option<Tensor>>,
    /// Per-layer (forward, backward) time when timing is on.
    timing: Option<Vec<(Duration, Duration)>>,
    /// Layers compute with tensor ops (GPU nets) rather than CPU kernels.
    tensor_ops: bool,
    /// The SGD update uses the fused kernel.
    fused: bool,
    /// Where the tensors live (timing waits for a GPU's queued work).
    device: candle_core::Device,
    /// Caffe's `debug_info` lines of the passes since they were last taken
    /// (glog level, text), while it is on.
    debug: Option<Vec<(char, String)>>,
    /// Caffe's `force_backward`: every layer runs backward, every bottom
    /// that can take a gradient gets one, every parameter its gradient.
    force_backward: bool,
}

/// Runs `e`'s backward pass on the gradients its tops hold in `diffs`
/// (taken from there), with its parameter gradients when `params` (else
/// none); `None` when no gradient reaches its tops.
fn layer_backward(
    e: &mut Entry,
    blobs: &[Option<Tensor>],
    diffs: &mut [Option<Tensor>],
    params: bool,
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

/// A blob's mean absolute value (Caffe's `asum / count`).
fn mean_abs(t: &Tensor) -> Result<f32> {
    let n = t.elem_count().max(1) as f32;
    Ok(t.abs()?.sum_all()?.to_scalar::<f32>()? / n)
}

pub use crate::caffe::net_state::included;

/// The error for a bottom no earlier layer of the net makes: when an
/// earlier layer of the file makes it but its rules leave it out, say which
/// and what the net's state is, since that is what to change (a `--stage`).
fn missing_bottom(
    def: &NetParameter,
    index: usize,
    bottom: &str,
    state: &NetState,
    lctx: &str,
) -> Error {
    let phase = if state.phase() == Phase::Train {
        "TRAIN"
    } else {
        "TEST"
    };
    let mut why =
        format!("bottom '{bottom}' is not produced by any earlier layer in the {phase} net");
    let left_out: Vec<&LayerParameter> = def.layer[..index]
        .iter()
        .filter(|l| l.top.iter().any(|t| t == bottom) && !included(l, state))
        .collect();
    if let Some(l) = left_out.first() {
        let stages = if state.stage.is_empty() {
            "no stages".to_string()
        } else {
            format!("stages {}", state.stage.join(", "))
        };
        why += &format!(
            " (layer '{}' makes it, but its include/exclude rules leave it out of this net: \
             phase {phase}, level {}, {stages}; pick its variant with --stage or --level, \
             or the solver's train_state/test_state)",
            l.name(),
            state.level()
        );
    }
    Error::model(lctx, why)
}

impl Net {
    /// Builds the net for `ctx.phase`, with the stages of the net's own
    /// `state` and of `state` (a solver's), and `state`'s level if it sets one.
    pub fn new(def: &NetParameter, ctx: &BuildContext, state: Option<&NetState>) -> Result<Net> {
        // Caffe merges the net's own `state` with the solver's: the stages
        // of both, the solver's level where it gives one.
        let state = crate::caffe::net_state::state_of(def, ctx.phase, state);
        let name = def.name().to_string();
        let mut net = Net {
            name: name.clone(),
            phase: ctx.phase,
            entries: Vec::new(),
            blob_names: Vec::new(),
            blob_shapes: Vec::new(),
            blobs: Vec::new(),
            outputs: Vec::new(),
            params: Vec::new(),
            sharers: Vec::new(),
            grads: Vec::new(),
            timing: None,
            tensor_ops: ctx.uses_tensor_ops(),
            fused: ctx.path().fused(),
            device: ctx.device.clone(),
            debug: None,
            force_backward: def.force_backward(),
        };
        if !def.input.is_empty() || !def.input_dim.is_empty() {
            return Err(Error::model(
                format!("net '{name}'"),
                "still has net-level `input:` fields; upgrade the definition first (caffe::model::upgrade turns them into an Input layer)",
            ));
        }
        let mut current: HashMap<String, usize> = HashMap::new();
        let mut consumed: HashSet<usize> = HashSet::new();
        let mut layer_names = HashSet::new();
        for (index, lp) in def.layer.iter().enumerate() {
            // Caffe refuses a layer with both kinds of rule, even where
            // neither applies.
            if !lp.include.is_empty() && !lp.exclude.is_empty() {
                return Err(Error::model(
                    format!("layer '{}'", lp.name()),
                    "has both include and exclude rules; give one kind or the other",
                ));
            }
            if !included(lp, &state) {
                continue;
            }
            let lname = lp.name().to_string();
            let lctx = format!("layer '{lname}'");
            if !layer_names.insert(lname.clone()) {
                return Err(Error::model(
                    &lctx,
                    "appears twice in the net; layer names must be unique",
                ));
            }
            let mut layer = create(lp, ctx, index)?;
            let bottoms: Vec<usize> = lp
                .bottom
                .iter()
                .map(|b| {
                    current
                        .get(b)
                        .copied()
                        .ok_or_else(|| missing_bottom(def, index, b, &state, &lctx))
                })
                .collect::<Result<_>>()?;
            let (want, variadic) = (layer.num_bottoms(), layer.variadic_bottoms());
            if bottoms.len() < want || (bottoms.len() > want && !variadic) {
                return Err(Error::model(
                    &lctx,
                    format!(
                        "has {} bottom(s), but {} layers take {}{want}",
                        bottoms.len(),
                        lp.r#type(),
                        if variadic { "at least " } else { "" }
                    ),
                ));
            }
            consumed.extend(&bottoms);
            let bottom_shapes: Vec<Vec<usize>> = bottoms
                .iter()
                .map(|&b| net.blob_shapes[b].clone())
                .collect();
            let top_shapes = layer.setup(&bottom_shapes)?;
            for (t, shape) in lp.top.iter().zip(&top_shapes) {
                checked_count(shape, &lctx, &format!("top '{t}'"))?;
            }
            if top_shapes.len() != lp.top.len() {
                return Err(Error::model(
                    &lctx,
                    format!(
                        "has {} top(s), but {} layers produce {}",
                        lp.top.len(),
                        lp.r#type(),
                        top_shapes.len()
                    ),
                ));
            }
            let tops: Vec<usize> = lp
                .top
                .iter()
                .zip(top_shapes)
                .map(|(t, shape)| {
                    net.blob_names.push(t.clone());
                    net.blob_shapes.push(shape);
                    net.blobs.push(None);
                    let id = net.blob_names.len() - 1;
                    current.insert(t.clone(), id);
                    id
                })
                .collect();
            let loss_weights = if lp.loss_weight.is_empty() {
                (0..tops.len())
                    .map(|i| layer.default_loss_weight(i))
                    .collect()
            } else if lp.loss_weight.len() == tops.len() {
                lp.loss_weight.clone()
            } else {
                return Err(Error::model(
                    &lctx,
                    format!(
                        "{} loss_weight values for {} tops",
                        lp.loss_weight.len(),
                        tops.len()
                    ),
                ));
            };
            if !lp.propagate_down.is_empty() && lp.propagate_down.len() != bottoms.len() {
                return Err(Error::model(
                    &lctx,
                    format!(
                        "{} propagate_down values for {} bottoms (give none, or one per bottom)",
                        lp.propagate_down.len(),
                        bottoms.len()
                    ),
                ));
            }
            let n_params = layer.params().len();
            if lp.param.len() > n_params {
                return Err(Error::model(
                    &lctx,
                    format!(
                        "{} param specs but the layer has {n_params} parameter blobs",
                        lp.param.len()
                    ),
                ));
            }
            let fixed = layer.fixed_params();
            if fixed && lp.param.iter().any(|p| !p.name().is_empty()) {
                // Its forward pass rewrites the running statistics, which
                // a second layer would then not see.
                return Err(Error::model(
                    &lctx,
                    format!(
                        "{} layers' blobs cannot be shared (`param {{ name: … }}`)",
                        lp.r#type()
                    ),
                ));
            }
            let mults: Vec<(f32, f32)> = (0..n_params)
                .map(|i| {
                    let (lr, decay) = lp
                        .param
                        .get(i)
                        .map_or((1.0, 1.0), |s| (s.lr_mult(), s.decay_mult()));
                    (if fixed { 0.0 } else { lr }, decay)
                })
                .collect();
            net.entries.push(Entry {
                param: lp.clone(),
                layer,
                bottoms,
                tops,
                loss_weights,
                need_backward: false,
                propagate: Vec::new(),
                param_grads: Vec::new(),
                mults,
                slots: Vec::new(),
            });
        }
        if net.entries.is_empty() {
            return Err(Error::model(
                format!("net '{name}'"),
                format!("has no layers in phase {:?}", ctx.phase),
            ));
        }
        net.outputs = (0..net.blob_names.len())
            .filter(|id| !consumed.contains(id))
            .filter(|&id| current.get(&net.blob_names[id]) == Some(&id))
            .collect();
        net.outputs
            .sort_by(|&a, &b| net.blob_names[a].cmp(&net.blob_names[b]));
        net.analyse_backward();
        for e in &mut net.entries {
            e.layer.plan_backward(e.need_backward, &e.param_grads);
        }
        net.assign_params()?;
        net.grads = vec![None; net.params.len()];
        if net.device.is_cpu() {
            net.check_memory()?;
        }
        Ok(net)
    }

    /// Lists the learnable parameters in Caffe's order (layer order, weight
    /// then bias) and joins the blobs that name a parameter seen before to
    /// it (Caffe's Net::AppendParam and ShareWeights): the shapes must be
    /// equal (or, with `share_mode: PERMISSIVE`, the counts), an lr_mult or
    /// decay_mult given on both sides must agree, and one given only on the
    /// sharing side is the parameter's. Sharers start from the owner's values.
    fn assign_params(&mut self) -> Result<()> {
        let mut by_name: HashMap<String, usize> = HashMap::new();
        // Per learnable parameter: whether its lr_mult and decay_mult were given.
        let mut given: Vec<(bool, bool)> = Vec::new();
        for li in 0..self.entries.len() {
            let e = &self.entries[li];
            let mut slots = Vec::with_capacity(e.mults.len());
            for (pi, &(lr, decay)) in e.mults.iter().enumerate() {
                let spec = e.param.param.get(pi);
                let name = spec.map_or("", |s| s.name());
                let has = (
                    spec.is_some_and(|s| s.lr_mult.is_some()),
                    spec.is_some_and(|s| s.decay_mult.is_some()),
                );
                let Some(&owner) = by_name.get(name).filter(|_| !name.is_empty()) else {
                    if !name.is_empty() {
                        by_name.insert(name.to_string(), self.params.len());
                    }
                    slots.push(self.params.len());
                    given.push(has);
                    self.params.push(ParamRef {
                        layer: li,
                        index: pi,
                        lr_mult: lr,
                        decay_mult: decay,
                    });
                    self.sharers.push(Vec::new());
                    continue;
                };
                let o = self.params[owner];
                let owner_layer = self.entries[o.layer].param.name();
                let ctx = format!("layer '{}'", e.param.name());
                let (mine, theirs) = (
                    e.layer.params()[pi].dims(),
                    self.entries[o.layer].layer.params()[o.index].dims(),
                );
                let permissive = spec.is_some_and(|s| {
                    s.share_mode() == crate::caffe::proto::param_spec::DimCheckMode::Permissive
                });
                let count = |d: &[usize]| d.iter().product::<usize>();
                let show =
                    |d: &[usize]| shape_string(&d.iter().map(|&x| x as i64).collect::<Vec<_>>());
                if (permissive && count(mine) != count(theirs)) || (!permissive && mine != theirs) {
                    return Err(Error::model(
                        &ctx,
                        format!(
                            "cannot share param '{name}' owned by layer '{owner_layer}': {} \
                             mismatch. The owner's shape is {}; this layer's is {}{}",
                            if permissive { "count" } else { "shape" },
                            show(theirs),
                            show(mine),
                            if permissive || count(mine) != count(theirs) {
                                ""
                            } else {
                                " (share_mode: PERMISSIVE shares blobs whose counts agree)"
                            }
                        ),
                    ));
                }
                for (what, has_here, has_there, here, there) in [
                    ("lr_mult", has.0, given[owner].0, lr, o.lr_mult),
                    ("decay_mult", has.1, given[owner].1, decay, o.decay_mult),
                ] {
                    if has_here && has_there && here != there {
                        return Err(Error::model(
                            &ctx,
                            format!(
                                "shared param '{name}' has mismatched {what}: {here} here, \
                                 {there} where layer '{owner_layer}' or an earlier sharer set it"
                            ),
                        ));
                    }
                }
                let p = &mut self.params[owner];
                if has.0 && !given[owner].0 {
                    p.lr_mult = lr;
                    given[owner].0 = true;
                }
                if has.1 && !given[owner].1 {
                    p.decay_mult = decay;
                    given[owner].1 = true;
                }
                self.sharers[owner].push((li, pi));
                slots.push(owner);
            }
            self.entries[li].slots = slots;
        }
        for i in 0..self.params.len() {
            if !self.sharers[i].is_empty() {
                self.set_param(i, self.param(i).clone())?;
            }
        }
        Ok(())
    }

    /// Refuses a CPU net that cannot fit the machine (see [`Net::memory_floor`]).
    fn check_memory(&self) -> Result<()> {
        memory::check_fits(
            &format!("{:?} net '{}'", self.phase, self.name),
            &[self.memory_floor()],
        )
    }

    /// Bytes a CPU net holds at least, with a breakdown for messages: its
    /// blobs, parameters, and the buffers of its layers (convolutions' columns
    /// and scratch, the data layers' prefetched batches). A floor, not an estimate:
    /// a training net also keeps each parameter's gradient and momentum, but
    /// blob gradients and temporaries come on top (and the scratch the
    /// convolutions share is counted once per net, not once per process).
    pub fn memory_floor(&self) -> (u64, String) {
        // In-place layers reuse their bottom's name: count each name once.
        let mut per_name: HashMap<&str, u64> = HashMap::new();
        for (name, shape) in self.blob_names.iter().zip(&self.blob_shapes) {
            let n = per_name.entry(name).or_default();
            *n = (*n).max(shape.iter().product::<usize>() as u64);
        }
        let blobs: u64 = per_name.values().sum();
        // Shared blobs hold their owner's values: count each once.
        let params: u64 = (0..self.params.len())
            .map(|i| self.param(i).elem_count() as u64)
            .sum();
        let kept: u64 = self
            .entries
            .iter()
            .map(|e| e.layer.workspace_len().0 as u64)
            .fold(0, u64::saturating_add);
        let shared = self
            .entries
            .iter()
            .map(|e| e.layer.workspace_len().1 as u64)
            .max()
            .unwrap_or(0);
        let scratch = kept.saturating_add(shared);
        let params = if self.phase == Phase::Train {
            3 * params
        } else {
            params
        };
        let (largest, size) = per_name
            .iter()
            .max_by_key(|&(_, &n)| n)
            .map(|(&name, &n)| (name, n))
            .unwrap_or(("", 0));
        let detail = format!(
            "{:?} net: blobs {} (the largest '{largest}' {}), parameters {}, layer buffers {}",
            self.phase,
            memory::gib(blobs.saturating_mul(4)),
            memory::gib(size.saturating_mul(4)),
            memory::gib(params.saturating_mul(4)),
            memory::gib(scratch.saturating_mul(4)),
        );
        let total = blobs.saturating_add(params).saturating_add(scratch);
        (total.saturating_mul(4), detail)
    }

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
    fn analyse_backward(&mut self) {
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

    /// Runs every layer; returns the total weighted loss.
    pub fn forward(&mut self) -> Result<f32> {
        self.forward_layers(true)
    }

    /// The last batch as the layers after the data saw it: the tops of the
    /// net's one data layer that reads a list or an LMDB (images first, then
    /// labels).
    pub fn batch(&self) -> Option<Vec<Tensor>> {
        let e = self.image_source()?;
        e.tops.iter().map(|&t| self.blobs[t].clone()).collect()
    }

    /// Runs every layer but the data layers again, with the tops of the data
    /// layer of [`Net::batch`] set to `tops` (same count and shapes): to score
    /// one batch under several views (test-time augmentation) without moving
    /// the data on, or to feed another net with the same images (ensembles).
    pub fn forward_batch(&mut self, tops: Vec<Tensor>) -> Result<f32> {
        let ids = self
            .image_source()
            .ok_or_else(|| {
                Error::model(
                    format!("net '{}'", self.name),
                    "has no single data layer reading a list or an LMDB",
                )
            })?
            .tops
            .clone();
        if ids.len() != tops.len() {
            return Err(Error::model(
                format!("net '{}'", self.name),
                format!("its data layer has {} tops, not {}", ids.len(), tops.len()),
            ));
        }
        for (&id, t) in ids.iter().zip(&tops) {
            if t.dims() != self.blob_shapes[id].as_slice() {
                return Err(Error::model(
                    format!("blob '{}'", self.blob_names[id]),
                    format!("has shape {:?}, not {:?}", self.blob_shapes[id], t.dims()),
                ));
            }
        }
        for (id, t) in ids.into_iter().zip(tops) {
            self.blobs[id] = Some(t);
        }
        self.forward_layers(false)
    }

    /// The one data layer that names its source, if there is exactly one;
    /// else the net's only data layer (an Input layer fed by the caller).
    fn image_source(&self) -> Option<&Entry> {
        let one = |f: &dyn Fn(&Entry) -> bool| {
            let mut found = self.entries.iter().filter(|e| !e.tops.is_empty() && f(e));
            match (found.next(), found.next()) {
                (Some(e), None) => Some(e),
                _ => None,
            }
        };
        one(&|e| e.layer.source_len().is_some())
            .or_else(|| one(&|e| e.layer.is_data()).filter(|_| self.data_source_lens().is_empty()))
    }

    /// Runs the layers (the data layers too when `data`) in order; returns
    /// the total weighted loss.
    fn forward_layers(&mut self, data: bool) -> Result<f32> {
        let mut loss = 0.0f32;
        for (li, e) in self.entries.iter_mut().enumerate() {
            if !data && e.layer.is_data() {
                continue;
            }
            let bottom = e
                .bottoms
                .iter()
                .map(|&b| {
                    self.blobs[b].clone().ok_or_else(|| {
                        Error::model(
                            format!("layer '{}'", e.param.name()),
                            format!(
                                "its bottom '{}' was not computed (its data layer did not run)",
                                self.blob_names[b]
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<Tensor>>>()?;
            let start = Instant::now();
            let tops = e.layer.forward(&bottom, self.phase)?;
            if let Some(t) = &mut self.timing {
                self.device.synchronize()?;
                t[li].0 += start.elapsed();
            }
            if let Some(lines) = &mut self.debug {
                // Caffe's ForwardDebugInfo: each top's and parameter's mean |value|.
                let name = e.param.name();
                for (&id, t) in e.tops.iter().zip(&tops) {
                    let m = mean_abs(t)?;
                    let blob = &self.blob_names[id];
                    lines.push((
                        'I',
                        format!(
                            "    [Forward] Layer {name}, top blob {blob} data: {}",
                            super::log::g(m)
                        ),
                    ));
                }
                for (j, p) in e.layer.params().iter().enumerate() {
                    let shown = e.param.param.get(j).map_or("", |s| s.name());
                    let shown = if shown.is_empty() {
                        j.to_string()
                    } else {
                        shown.to_string()
                    };
                    let m = mean_abs(p)?;
                    lines.push((
                        'I',
                        format!(
                            "    [Forward] Layer {name}, param blob {shown} data: {}",
                            super::log::g(m)
                        ),
                    ));
                }
            }
            for ((&id, t), &w) in e.tops.iter().zip(tops).zip(&e.loss_weights) {
                if w != 0.0 {
                    loss += w * t.flatten_all()?.sum(0)?.to_scalar::<f32>()?;
                }
                self.blobs[id] = Some(t);
            }
        }
        Ok(loss)
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
            let Some((bgrads, pgrads)) = layer_backward(e, &self.blobs, &mut diffs, true)? else {
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
                                super::log::g(m)
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
                                super::log::g(m)
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
            if let Some((bgrads, _)) = layer_backward(e, &self.blobs, &mut diffs, false)? {
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

    /// Caffe's `debug_info` summary: the L1 and L2 norms of all learnable
    /// parameters and of their gradients.
    fn parameter_norms(&self) -> Result<String> {
        let (mut l1, mut l2) = ([0.0f32; 2], [0.0f32; 2]);
        for i in 0..self.params.len() {
            for (k, t) in [self.param(i).clone(), self.grad(i)?].iter().enumerate() {
                l1[k] += t.abs()?.sum_all()?.to_scalar::<f32>()?;
                l2[k] += t.sqr()?.sum_all()?.to_scalar::<f32>()?;
            }
        }
        let g = super::log::g;
        Ok(format!(
            "    [Backward] All net params (data, diff): L1 norm = ({}, {}); L2 norm = ({}, {})",
            g(l1[0]),
            g(l1[1]),
            g(l2[0].sqrt()),
            g(l2[1].sqrt())
        ))
    }

    /// Turns Caffe's `debug_info` lines on or off (the solver turns them on
    /// for its display iterations when the solver says `debug_info: true`).
    pub fn set_debug_info(&mut self, on: bool) {
        self.debug = on.then(Vec::new);
    }

    /// The `debug_info` lines since the last call, as (glog level, text).
    pub fn take_debug_info(&mut self) -> Vec<(char, String)> {
        self.debug.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Starts (or resets) per-layer timing.
    pub fn enable_timing(&mut self) {
        self.timing = Some(vec![(Duration::ZERO, Duration::ZERO); self.entries.len()]);
    }

    /// Per-layer (name, type, forward, backward) totals since timing was enabled.
    pub fn timings(&self) -> Vec<(String, String, Duration, Duration)> {
        let Some(t) = &self.timing else {
            return Vec::new();
        };
        self.entries
            .iter()
            .zip(t)
            .map(|(e, &(f, b))| {
                (
                    e.param.name().to_string(),
                    e.layer.type_name().to_string(),
                    f,
                    b,
                )
            })
            .collect()
    }

    /// Forgets accumulated gradients (start of an iteration).
    pub fn clear_grads(&mut self) {
        self.grads.iter_mut().for_each(|g| *g = None);
    }

    /// The learnable parameters in Caffe's order (layer order, weight then bias).
    pub fn params(&self) -> &[ParamRef] {
        &self.params
    }

    /// Whether the layers compute with tensor ops (a GPU net) rather than CPU kernels.
    pub fn uses_tensor_ops(&self) -> bool {
        self.tensor_ops
    }

    /// Whether the layers and the SGD update use the fused kernels.
    pub fn uses_fused(&self) -> bool {
        self.fused
    }

    /// Current value of parameter `i`.
    pub fn param(&self, i: usize) -> &Tensor {
        let p = self.params[i];
        &self.entries[p.layer].layer.params()[p.index]
    }

    /// Replaces parameter `i` (in every layer that shares it).
    pub fn set_param(&mut self, i: usize, value: Tensor) -> Result<()> {
        for k in 0..self.sharers[i].len() {
            let (l, b) = self.sharers[i][k];
            let t = &mut self.entries[l].layer.params_mut()[b];
            *t = value.reshape(t.shape())?;
        }
        let p = self.params[i];
        self.entries[p.layer].layer.params_mut()[p.index] = value;
        Ok(())
    }

    /// Accumulated gradient of parameter `i` (zero if none was computed).
    pub fn grad(&self, i: usize) -> Result<Tensor> {
        match &self.grads[i] {
            Some(g) => Ok(g.clone()),
            None => Ok(self.param(i).zeros_like()?),
        }
    }

    /// Whether the net was built with `force_backward: true`.
    pub fn forces_backward(&self) -> bool {
        self.force_backward
    }

    /// Whether parameter `i` holds a computed gradient (a frozen one does
    /// only under `force_backward`).
    pub fn has_grad(&self, i: usize) -> bool {
        self.grads[i].is_some()
    }

    /// Sets the gradient of parameter `i` (after clipping or normalising).
    pub fn set_grad(&mut self, i: usize, g: Tensor) {
        self.grads[i] = Some(g);
    }

    /// Blob `index` of layer `layer` (a shared blob holds its owner's values).
    pub fn layer_blob(&self, layer: &str, index: usize) -> Option<&Tensor> {
        let e = self.entries.iter().find(|e| e.param.name() == layer)?;
        e.layer.params().get(index)
    }

    /// Name of the layer owning parameter `i`.
    pub fn param_layer_name(&self, i: usize) -> &str {
        self.entries[self.params[i].layer].param.name()
    }

    /// Output blobs (those no layer consumes), by name, with their loss weights.
    pub fn outputs(&self) -> Result<Vec<(String, Vec<f32>, f32)>> {
        self.outputs
            .iter()
            .map(|&id| {
                let t = self.blobs[id]
                    .as_ref()
                    .ok_or_else(|| Error::model(&self.blob_names[id], "no forward pass yet"))?;
                let w = self
                    .entries
                    .iter()
                    .find_map(|e| {
                        e.tops
                            .iter()
                            .position(|&x| x == id)
                            .map(|i| e.loss_weights[i])
                    })
                    .unwrap_or(0.0);
                Ok((
                    self.blob_names[id].clone(),
                    t.flatten_all()?.to_vec1::<f32>()?,
                    w,
                ))
            })
            .collect()
    }

    /// The current value of the blob named `name` (its last producer's output).
    pub fn blob(&self, name: &str) -> Option<&Tensor> {
        (0..self.blob_names.len())
            .rev()
            .find(|&i| self.blob_names[i] == name)
            .and_then(|i| self.blobs[i].as_ref())
    }

    /// The shape of the blob named `name`, as the net was set up (its last
    /// producer's top), without running it.
    pub fn blob_shape(&self, name: &str) -> Option<&[usize]> {
        (0..self.blob_names.len())
            .rev()
            .find(|&i| self.blob_names[i] == name)
            .map(|i| self.blob_shapes[i].as_slice())
    }

    /// The output of layer `layer`'s top `i` in the last forward pass.
    pub fn layer_top(&self, layer: &str, i: usize) -> Option<&Tensor> {
        let e = self.entries.iter().find(|e| e.param.name() == layer)?;
        self.blobs[*e.tops.get(i)?].as_ref()
    }

    /// The input blob `i` of layer `layer` in the last forward pass (what
    /// that layer read, even where a later layer rewrote the blob in place).
    pub fn layer_bottom(&self, layer: &str, i: usize) -> Option<&Tensor> {
        let e = self.entries.iter().find(|e| e.param.name() == layer)?;
        self.blobs[*e.bottoms.get(i)?].as_ref()
    }

    /// The definitions of the layers in this net (its phase's), in order.
    pub fn layer_params(&self) -> impl Iterator<Item = &LayerParameter> {
        self.entries.iter().map(|e| &e.param)
    }

    /// The image counts of the net's data layers' sources, by layer name.
    pub fn data_source_lens(&self) -> Vec<(String, usize)> {
        self.entries
            .iter()
            .filter_map(|e| Some((e.param.name().to_string(), e.layer.source_len()?)))
            .collect()
    }

    /// Where the images of the last batch came from, when the net has one
    /// data layer that knows (list paths or LMDB keys, in batch order).
    pub fn data_batch_sources(&self) -> Option<Vec<String>> {
        self.image_source()?.layer.last_batch_sources()
    }

    /// Each layer's definition, top shapes, parameters and whether it runs
    /// backward, in order (for [`summary`](super::summary)).
    pub fn layer_infos(&self) -> Vec<LayerInfo<'_>> {
        self.entries
            .iter()
            .enumerate()
            .map(|(li, e)| LayerInfo {
                param: &e.param,
                type_name: e.layer.type_name(),
                tops: e
                    .tops
                    .iter()
                    .map(|&t| self.blob_shapes[t].clone())
                    .collect(),
                param_shapes: e.layer.params().iter().map(|t| t.dims().to_vec()).collect(),
                mults: e
                    .slots
                    .iter()
                    .map(|&s| (self.params[s].lr_mult, self.params[s].decay_mult))
                    .collect(),
                shared_from: e
                    .slots
                    .iter()
                    .enumerate()
                    .map(|(i, &s)| {
                        let p = self.params[s];
                        ((p.layer, p.index) != (li, i))
                            .then(|| (self.entries[p.layer].param.name().to_string(), p.index))
                    })
                    .collect(),
                backward: e.need_backward,
            })
            .collect()
    }

    /// Layer names with whether each runs backward (for logs and `time`).
    pub fn layer_summary(&self) -> Vec<(String, String, bool)> {
        self.entries
            .iter()
            .map(|e| {
                (
                    e.param.name().to_string(),
                    e.layer.type_name().to_string(),
                    e.need_backward,
                )
            })
            .collect()
    }

    /// Copies weights from a trained net by layer name (Caffe's
    /// CopyTrainedLayersFrom). Returns the names of ignored source layers.
    pub fn copy_trained_from(
        &mut self,
        source: &NetParameter,
        source_name: &str,
    ) -> Result<Vec<String>> {
        let mut ignored = Vec::new();
        for src in &source.layer {
            let Some(li) = self
                .entries
                .iter()
                .position(|e| e.param.name() == src.name())
            else {
                ignored.push(src.name().to_string());
                continue;
            };
            let e = &self.entries[li];
            let target = e.layer.params();
            // An HDF5 snapshot leaves out the blobs a layer shares with an
            // earlier one (the last ones here): those come from their owner.
            let shared_rest = (src.blobs.len()..target.len()).all(|j| {
                let p = self.params[e.slots[j]];
                (p.layer, p.index) != (li, j)
            });
            if src.blobs.len() > target.len() || !shared_rest {
                return Err(Error::model(
                    format!("layer '{}'", src.name()),
                    format!(
                        "{source_name} has {} blobs for it but the net expects {}",
                        src.blobs.len(),
                        target.len()
                    ),
                ));
            }
            let mut values = Vec::with_capacity(target.len());
            for (i, (blob, t)) in src.blobs.iter().zip(target).enumerate() {
                let dims = t.dims().to_vec();
                if !shape_equals(blob, &dims) {
                    return Err(Error::model(
                        format!("layer '{}'", src.name()),
                        format!(
                            "cannot copy param {i} weights from {source_name}; shape mismatch. Source param shape is {}; target param shape is {}. To learn this layer's parameters from scratch rather than copying from a saved net, rename the layer.",
                            shape_string(&blob.dims()),
                            shape_string(&dims.iter().map(|&d| d as i64).collect::<Vec<_>>())
                        ),
                    ));
                }
                values.push((
                    e.slots[i],
                    Tensor::from_vec(blob.values(), dims, t.device())?,
                ));
            }
            // Into the blobs that share them too (as Caffe's shared memory
            // takes them): with several such layers in the file, the last wins.
            for (slot, t) in values {
                let shape = self.param(slot).shape().clone();
                self.set_param(slot, t.reshape(shape)?)?;
            }
        }
        Ok(ignored)
    }

    /// Shares parameter values with `other` by layer name (test nets use the
    /// train net's weights).
    pub fn share_from(&mut self, other: &Net) -> Result<()> {
        for e in &mut self.entries {
            if let Some(o) = other
                .entries
                .iter()
                .find(|o| o.param.name() == e.param.name())
            {
                let src = o.layer.params();
                let dst = e.layer.params_mut();
                if src.len() == dst.len()
                    && src
                        .iter()
                        .zip(dst.iter())
                        .all(|(a, b)| a.dims() == b.dims())
                {
                    dst.clone_from_slice(src);
                }
            }
        }
        // A sharing layer the other net lacks takes its owner's values.
        for i in 0..self.params.len() {
            if !self.sharers[i].is_empty() {
                self.set_param(i, self.param(i).clone())?;
            }
        }
        Ok(())
    }

    /// The net as a V2 NetParameter with every layer's blobs (a .caffemodel).
    pub fn to_proto(&self, def: &NetParameter) -> Result<NetParameter> {
        self.to_proto_with(def, None)
    }

    /// [`Net::to_proto`], with each blob's diff taken from `diffs` (one per
    /// learnable parameter; a sharer gets its owner's, as in Caffe, where
    /// they share the memory): Caffe's `snapshot_diff`.
    pub fn to_proto_with(
        &self,
        def: &NetParameter,
        diffs: Option<&[Tensor]>,
    ) -> Result<NetParameter> {
        let mut out = NetParameter {
            name: def.name.clone(),
            ..Default::default()
        };
        for e in &self.entries {
            let mut lp = e.param.clone();
            lp.phase = Some(self.phase as i32);
            lp.blobs = e
                .layer
                .params()
                .iter()
                .enumerate()
                .map(|(j, t)| {
                    let mut b = BlobProto::with_shape(t.dims(), t.flatten_all()?.to_vec1::<f32>()?);
                    if let Some(d) = diffs {
                        b.diff = d[e.slots[j]].flatten_all()?.to_vec1::<f32>()?;
                    }
                    Ok(b)
                })
                .collect::<Result<_>>()?;
            out.layer.push(lp);
        }
        Ok(out)
    }

    /// Per layer in net order, its name and every blob's `values` (one per
    /// learnable parameter, a sharer taking its owner's) as (blob number,
    /// shape, values): the `diff` group of Caffe's HDF5 `snapshot_diff`.
    pub fn blob_values(
        &self,
        values: &[Tensor],
    ) -> Result<Vec<crate::caffe::hdf5_snapshot::LayerBlobs>> {
        self.entries
            .iter()
            .map(|e| {
                let blobs = e
                    .layer
                    .params()
                    .iter()
                    .enumerate()
                    .map(|(j, t)| {
                        let v = values[e.slots[j]].flatten_all()?.to_vec1::<f32>()?;
                        Ok((j, t.dims().to_vec(), v))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok((e.param.name().to_string(), blobs))
            })
            .collect()
    }

    /// Per layer in net order, its name and the blobs it owns (not those it
    /// shares with an earlier layer) as (blob number, shape, values): what
    /// Caffe's HDF5 snapshot holds.
    pub fn owned_blobs(&self) -> Result<Vec<crate::caffe::hdf5_snapshot::LayerBlobs>> {
        self.entries
            .iter()
            .enumerate()
            .map(|(li, e)| {
                let blobs = e
                    .slots
                    .iter()
                    .enumerate()
                    .filter(|&(j, &s)| (self.params[s].layer, self.params[s].index) == (li, j))
                    .map(|(j, _)| {
                        let t = &e.layer.params()[j];
                        Ok((j, t.dims().to_vec(), t.flatten_all()?.to_vec1::<f32>()?))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok((e.param.name().to_string(), blobs))
            })
            .collect()
    }

    /// Resumable layer states by layer name (data positions, dropout draws).
    pub fn states(&self) -> BTreeMap<String, u64> {
        self.entries
            .iter()
            .filter_map(|e| e.layer.state().map(|s| (e.param.name().to_string(), s)))
            .collect()
    }

    /// Restores what [`Net::states`] returned.
    pub fn restore_states(&mut self, states: &BTreeMap<String, u64>) {
        for e in &mut self.entries {
            if let Some(&s) = states.get(e.param.name()) {
                e.layer.restore_state(s);
            }
        }
    }

    /// What each layer carries from one forward pass to the next (the
    /// last hidden states of recurrent layers), by layer name.
    pub fn carried(&self) -> Result<BTreeMap<String, Vec<Vec<f32>>>> {
        let mut out = BTreeMap::new();
        for e in &self.entries {
            let values = e.layer.carried()?;
            if !values.is_empty() {
                out.insert(e.param.name().to_string(), values);
            }
        }
        Ok(out)
    }

    /// Restores what [`Net::carried`] returned (read from `source`).
    pub fn restore_carried(
        &mut self,
        carried: &BTreeMap<String, Vec<Vec<f32>>>,
        source: &str,
    ) -> Result<()> {
        for e in &mut self.entries {
            if let Some(values) = carried.get(e.param.name()) {
                e.layer
                    .restore_carried(values)
                    .map_err(|why| Error::invalid(source, why.to_string()))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Layers are picked by the stages of the net's own `state` and the
    /// solver's together, and by the solver's level over the net's.
    #[test]
    fn the_nets_own_state_and_the_solvers_choose_the_layers() {
        let def: NetParameter = crate::caffe::prototxt::parse(
            r#"name: "staged" state { stage: "wide" level: 2 }
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 } } }
layer { name: "wide" type: "InnerProduct" bottom: "x" top: "y" include { stage: "wide" }
  inner_product_param { num_output: 5 } }
layer { name: "both" type: "InnerProduct" bottom: "x" top: "z" include { stage: "wide" stage: "extra" }
  inner_product_param { num_output: 2 } }
layer { name: "deep" type: "InnerProduct" bottom: "x" top: "w" include { min_level: 2 }
  inner_product_param { num_output: 1 } }
"#,
            std::path::Path::new("staged.prototxt"),
        )
        .unwrap();
        let ctx = BuildContext::cpu(".", 1, Phase::Test);
        let names = |state: Option<&NetState>| -> Vec<String> {
            Net::new(&def, &ctx, state)
                .unwrap()
                .layer_params()
                .map(|l| l.name().to_string())
                .collect()
        };
        assert_eq!(names(None), ["in", "wide", "deep"]);
        let solver = NetState {
            stage: vec!["extra".into()],
            level: Some(1),
            ..Default::default()
        };
        assert_eq!(names(Some(&solver)), ["in", "wide", "both"]);
    }
}
