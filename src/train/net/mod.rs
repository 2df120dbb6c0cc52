//! A Net built from a `NetParameter` for one phase: layers filtered by
//! include/exclude rules, blobs wired by name (in-place tops and shared
//! bottoms included) and the forward pass with weighted losses, here; the
//! backward pass (`backward`: Caffe's need-backward analysis, gradients
//! accumulated), weights in and out by layer name (`weights`), what
//! layers keep for a resume (`resume`), `debug_info` lines and timing
//! (`debug`) and read-only views (`inspect`) in their own files.
mod backward;
mod debug;
mod filtered;
mod inspect;
mod resume;
mod weights;

use super::layers::{checked_count, create, BuildContext, Layer};
use super::memory;
use crate::caffe::blob::shape_string;
use crate::caffe::proto::{LayerParameter, NetParameter, NetState, Phase};
use crate::error::{Error, Result};
use candle_core::Tensor;
use std::collections::{HashMap, HashSet};
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
    /// For a layer whose bottoms follow a Filter: the shapes of its last
    /// pass (`None` for the others, whose shapes are fixed when the net is
    /// built).
    seen: Option<Seen>,
}

/// The shapes a layer behind a Filter last saw and made.
struct Seen {
    bottoms: Vec<Vec<usize>>,
    tops: Vec<Vec<usize>>,
    /// The last pass had no items: the layer did not run, its tops were
    /// zeros, and its backward pass gives zeros.
    empty: bool,
}

/// Of a blob whose number of items changes from pass to pass: the Filter
/// layer that sets it, and that layer's selector blob (two blobs with the
/// same selector always hold as many items).
#[derive(Clone, Debug)]
struct Filtered {
    filter: String,
    selector: usize,
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
    /// The shapes of its tops (behind a Filter: at most these items).
    pub tops: Vec<Vec<usize>>,
    /// Per top: whether a Filter decides its number of items.
    pub filtered: Vec<bool>,
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
    /// Per blob: set when a Filter decides its number of items.
    filtered: Vec<Option<Filtered>>,
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
    /// [`Net::new`], after Caffe's log line on each layer the rules leave
    /// out of the net (so they precede the error of a net that fails).
    pub fn new_logged(
        def: &NetParameter,
        ctx: &BuildContext,
        state: Option<&NetState>,
        log: &mut crate::train::log::Logger,
    ) -> Result<Net> {
        let full = crate::caffe::net_state::state_of(def, ctx.phase, state);
        for (at, line) in crate::caffe::net_state::left_out(def, &full) {
            log.info(at, &line);
        }
        Net::new(def, ctx, state)
    }

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
            filtered: Vec::new(),
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
            let mut layer = create(lp, ctx, index).map_err(|e| in_layer(e, &lctx))?;
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
            let top_shapes = layer
                .setup(&bottom_shapes)
                .map_err(|e| in_layer(e, &lctx))?;
            // After set-up: whether a layer can follow a changing batch may
            // depend on its shapes (the axis a Scale's factor starts at).
            let follows = net.follows_filter(layer.as_ref(), lp, &bottoms)?;
            let seen = follows.is_some().then(|| Seen {
                bottoms: bottom_shapes.clone(),
                tops: top_shapes.clone(),
                empty: false,
            });
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
                    // A scalar (a loss) has no items to follow.
                    net.filtered
                        .push(follows.clone().filter(|_| !shape.is_empty()));
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
            if let Some(p) = layer.params().iter().find(|p| p.elem_count() == 0) {
                // Nothing to learn, and an update of nothing is no update.
                return Err(Error::model(
                    &lctx,
                    format!(
                        "has a learnable blob of shape {:?}, which holds no values; check the shapes of its bottoms ({})",
                        p.dims(),
                        bottom_shapes
                            .iter()
                            .map(|s| format!("{s:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
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
                seen,
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
        net.check_filtered_outputs()?;
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
            let empty = e.follow_shapes(&bottom)?;
            let start = Instant::now();
            let tops = match empty {
                Some(tops) => tops,
                None => e.layer.forward(&bottom, self.phase)?,
            };
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
}

/// Names the layer in a set-up error about a file it reads (a data source,
/// a mean file, an H matrix), which otherwise names only the file.
fn in_layer(e: Error, lctx: &str) -> Error {
    match e {
        Error::Io { .. }
        | Error::Proto { .. }
        | Error::Prototxt { .. }
        | Error::Image { .. }
        | Error::Line { .. }
        | Error::Lmdb { .. } => Error::model(lctx, e.to_string()),
        e => e,
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
