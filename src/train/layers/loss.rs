//! Softmax, SoftmaxWithLoss (Caffe's normalisation modes and ignore_label)
//! and Accuracy (top-k, ties count against the true class). Computed on the
//! host in f32 in Caffe's order, so losses match it to the last digits.
use super::{to_vec, BackwardArgs, Grads, Layer};
use crate::analysis::confusion::rank_of_label;
use crate::caffe::proto::{
    loss_parameter::NormalizationMode, AccuracyParameter, LayerParameter, LossParameter, Phase,
};
use crate::error::{Error, Result};
use candle_core::Tensor;

/// Splits `shape` at `axis` into (outer, channels, inner).
pub(super) fn split(shape: &[usize], axis: i32, ctx: &str) -> Result<(usize, usize, usize)> {
    let a = if axis < 0 {
        shape.len() as i32 + axis
    } else {
        axis
    };
    if a < 0 || a as usize >= shape.len() {
        return Err(Error::model(
            ctx,
            format!("axis {axis} is out of range for shape {shape:?}"),
        ));
    }
    let a = a as usize;
    Ok((
        shape[..a].iter().product(),
        shape[a],
        shape[a + 1..].iter().product(),
    ))
}

/// A loss layer's default loss weight for top `i`: 1 for the loss (its
/// first top), 0 for any other (Caffe's LossLayer).
pub(super) fn first_top_weight(i: usize) -> f32 {
    if i == 0 {
        1.0
    } else {
        0.0
    }
}

/// The normalisation a loss layer uses: `normalization`, or when only the
/// deprecated `normalize` flag is set, VALID for true and BATCH_SIZE for false.
pub(super) fn normalization(lp: &LossParameter) -> NormalizationMode {
    match (lp.normalization, lp.normalize) {
        (None, Some(true)) => NormalizationMode::Valid,
        (None, Some(false)) => NormalizationMode::BatchSize,
        _ => lp.normalization(),
    }
}

/// What a loss summed over `outer` x `inner` predictions, `valid` of them not
/// ignored, is divided by (Caffe's get_normalizer, at least 1).
pub(super) fn normalizer(mode: NormalizationMode, outer: usize, inner: usize, valid: usize) -> f32 {
    let n = match mode {
        NormalizationMode::Full => (outer * inner) as f32,
        NormalizationMode::Valid => valid as f32,
        NormalizationMode::BatchSize => outer as f32,
        NormalizationMode::None => 1.0,
    };
    n.max(1.0)
}

/// Checks the bottoms of a scores-and-labels layer (two, one label per
/// prediction) and splits the scores' shape at `axis` into (outer, classes, inner).
pub(super) fn scores_and_labels(
    bottom: &[Vec<usize>],
    axis: i32,
    ctx: &str,
) -> Result<(usize, usize, usize)> {
    if bottom.len() != 2 {
        return Err(Error::model(ctx, "needs two bottoms: scores and labels"));
    }
    let dims = split(&bottom[0], axis, ctx)?;
    let (o, _, i) = dims;
    if super::count(&bottom[1]) != o * i {
        return Err(Error::model(
            ctx,
            format!(
                "{} labels for {} predictions (shapes {:?} and {:?})",
                super::count(&bottom[1]),
                o * i,
                bottom[0],
                bottom[1]
            ),
        ));
    }
    Ok(dims)
}

/// The class of label `raw` (Caffe casts the float to int): `None` for the
/// ignore label, an error outside `0..classes` (Caffe only checks that in
/// debug builds and reads past the scores otherwise).
pub(super) fn class_of(
    raw: f32,
    ignore: Option<i32>,
    classes: usize,
    ctx: &str,
) -> Result<Option<usize>> {
    let label = raw as i32;
    if Some(label) == ignore {
        return Ok(None);
    }
    if label < 0 || label as usize >= classes {
        return Err(Error::model(
            ctx,
            format!("label {label} is outside 0..{classes}"),
        ));
    }
    Ok(Some(label as usize))
}

/// Checks a scores-and-labels pair of bottoms where every value after the
/// first axis is a class: returns (items, classes).
pub(super) fn items_and_classes(
    bottom: &[Vec<usize>],
    ctx: &str,
    what: &str,
) -> Result<(usize, usize)> {
    let [x, labels] = bottom else {
        return Err(Error::model(
            ctx,
            format!("needs two bottoms: {what} and labels"),
        ));
    };
    let n = x.first().copied().unwrap_or(0);
    if n == 0 || super::count(labels) != n {
        return Err(Error::model(
            ctx,
            format!("needs one label per item: {what} {x:?}, labels {labels:?}"),
        ));
    }
    Ok((n, super::count(x) / n))
}

/// Item `i`'s label as a class (an error outside `0..classes`).
pub(super) fn item_class(labels: &[f32], i: usize, classes: usize, ctx: &str) -> Result<usize> {
    Ok(class_of(labels[i], None, classes, ctx)?.expect("no ignore label"))
}

/// A loss layer's top shapes: the scalar loss, and the probabilities (the
/// scores' shape) when it has a second top.
pub(super) fn loss_top_shapes(tops: usize, scores: &[usize]) -> Vec<Vec<usize>> {
    let mut shapes = vec![vec![]];
    if tops > 1 {
        shapes.push(scores.to_vec());
    }
    shapes
}

/// The predictions that count, in order: for each label that is not the
/// ignore label, where its class-0 value sits in the (outer, classes, inner)
/// scores (class k's is `k * inner` further on), and its class.
pub(super) fn labelled(
    labels: &[f32],
    (outer, classes, inner): (usize, usize, usize),
    ignore: Option<i32>,
    ctx: &str,
) -> Result<Vec<(usize, usize)>> {
    let mut out = Vec::with_capacity(outer * inner);
    for oi in 0..outer {
        for j in 0..inner {
            if let Some(label) = class_of(labels[oi * inner + j], ignore, classes, ctx)? {
                out.push((oi * classes * inner + j, label));
            }
        }
    }
    Ok(out)
}

/// A loss layer's tops: the loss, and the probabilities as a second top
/// when the layer has one.
pub(super) fn loss_tops(
    loss: f32,
    prob: &[f32],
    tops: usize,
    like: &Tensor,
) -> Result<Vec<Tensor>> {
    let mut out = vec![Tensor::new(loss, like.device())?];
    if tops > 1 {
        out.push(Tensor::from_vec(
            prob.to_vec(),
            like.shape(),
            like.device(),
        )?);
    }
    Ok(out)
}

/// The gradient of a loss layer's top when its scores need one (`None`
/// otherwise); a gradient for the labels is refused.
pub(super) fn loss_diff<'a>(a: &'a BackwardArgs, ctx: &str) -> Result<Option<&'a Tensor>> {
    if a.propagate.get(1).copied().unwrap_or(false) {
        return Err(Error::model(
            ctx,
            "cannot backpropagate to the labels, which a layer that takes gradients made (a Filter \
             of the scores and labels together, say); give this layer `propagate_down: true \
             propagate_down: false`, as Caffe needs too",
        ));
    }
    Ok(match (&a.top_diff[0], a.propagate[0]) {
        (Some(d), true) => Some(d),
        _ => None,
    })
}

/// The scores' gradient: `dx` times the top's gradient over `normalizer`;
/// the labels get none.
pub(super) fn scores_gradient(
    mut dx: Vec<f32>,
    dloss: &Tensor,
    normalizer: f32,
    a: &BackwardArgs,
) -> Result<Grads> {
    let scale = dloss.flatten_all()?.to_vec1::<f32>()?[0] / normalizer;
    for v in &mut dx {
        *v *= scale;
    }
    scores_grads(dx, a)
}

/// A scores-and-labels layer's gradients: `dx` for the scores (in their
/// shape), none for the labels.
pub(super) fn scores_grads(dx: Vec<f32>, a: &BackwardArgs) -> Result<Grads> {
    let like = &a.bottom[0];
    Ok((
        vec![
            Some(Tensor::from_vec(dx, like.shape(), like.device())?),
            None,
        ],
        vec![],
    ))
}

/// Softmax over the channel axis of an (outer, channels, inner) array.
pub(super) fn softmax(x: &[f32], outer: usize, ch: usize, inner: usize) -> Vec<f32> {
    let mut p = vec![0.0f32; x.len()];
    for o in 0..outer {
        for j in 0..inner {
            let at = |c: usize| o * ch * inner + c * inner + j;
            let max = (0..ch).map(|c| x[at(c)]).fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f32;
            for c in 0..ch {
                let e = (x[at(c)] - max).exp();
                p[at(c)] = e;
                sum += e;
            }
            for c in 0..ch {
                p[at(c)] /= sum;
            }
        }
    }
    p
}

pub struct Softmax {
    axis: i32,
    dims: (usize, usize, usize),
}

impl Softmax {
    pub fn new(axis: i32) -> Self {
        Softmax {
            axis,
            dims: (0, 0, 0),
        }
    }
}

impl Layer for Softmax {
    fn any_batch(&self) -> bool {
        true
    }
    fn type_name(&self) -> &'static str {
        "Softmax"
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        self.dims = split(&bottom[0], self.axis, "Softmax")?;
        Ok(vec![bottom[0].clone()])
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let (o, c, i) = self.dims;
        let p = softmax(&to_vec(&bottom[0])?, o, c, i);
        Ok(vec![Tensor::from_vec(
            p,
            bottom[0].shape(),
            bottom[0].device(),
        )?])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let (Some(dy), true) = (&a.top_diff[0], a.propagate[0]) else {
            return Ok((vec![None], vec![]));
        };
        // dx = y * (dy - sum_c(dy * y))
        let (o, c, inner) = self.dims;
        let (y, dy) = (to_vec(&a.top[0])?, to_vec(dy)?);
        let mut dx = vec![0.0f32; y.len()];
        for oi in 0..o {
            for j in 0..inner {
                let at = |k: usize| oi * c * inner + k * inner + j;
                let dot: f32 = (0..c).map(|k| dy[at(k)] * y[at(k)]).sum();
                for k in 0..c {
                    dx[at(k)] = y[at(k)] * (dy[at(k)] - dot);
                }
            }
        }
        Ok((
            vec![Some(Tensor::from_vec(
                dx,
                a.bottom[0].shape(),
                a.bottom[0].device(),
            )?)],
            vec![],
        ))
    }
}

pub struct SoftmaxWithLoss {
    ctx: String,
    axis: i32,
    ignore: Option<i32>,
    mode: NormalizationMode,
    dims: (usize, usize, usize),
    prob: Vec<f32>,
    normalizer: f32,
    tops: usize,
}

impl SoftmaxWithLoss {
    pub fn new(param: &LayerParameter, name: &str) -> Result<Self> {
        let lp = param.loss_param.unwrap_or_default();
        Ok(SoftmaxWithLoss {
            ctx: format!("layer '{name}'"),
            axis: param.softmax_param.as_ref().map_or(1, |p| p.axis()),
            ignore: lp.ignore_label,
            mode: normalization(&lp),
            dims: (0, 0, 0),
            prob: Vec::new(),
            normalizer: 1.0,
            tops: param.top.len().max(1),
        })
    }
}

impl Layer for SoftmaxWithLoss {
    fn any_batch(&self) -> bool {
        true
    }
    fn type_name(&self) -> &'static str {
        "SoftmaxWithLoss"
    }
    fn num_bottoms(&self) -> usize {
        2
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        self.dims = scores_and_labels(bottom, self.axis, &self.ctx)?;
        Ok(loss_top_shapes(self.tops, &bottom[0]))
    }
    fn default_loss_weight(&self, i: usize) -> f32 {
        first_top_weight(i)
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let (o, c, inner) = self.dims;
        self.prob = softmax(&to_vec(&bottom[0])?, o, c, inner);
        let counted = labelled(&to_vec(&bottom[1])?, self.dims, self.ignore, &self.ctx)?;
        let mut loss = 0.0f32;
        for &(at, label) in &counted {
            let p = self.prob[at + label * inner];
            // Caffe's std::max(p, FLT_MIN): a NaN probability stays NaN.
            let p = if p < f32::MIN_POSITIVE {
                f32::MIN_POSITIVE
            } else {
                p
            };
            loss -= p.ln();
        }
        let valid = counted.len();
        self.normalizer = normalizer(self.mode, o, inner, valid);
        loss_tops(loss / self.normalizer, &self.prob, self.tops, &bottom[0])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let Some(dloss) = loss_diff(a, &self.ctx)? else {
            return Ok((vec![None, None], vec![]));
        };
        let (_, c, inner) = self.dims;
        let counted = labelled(&to_vec(&a.bottom[1])?, self.dims, self.ignore, &self.ctx)?;
        // p - onehot(label) where a label counts; 0 where it is ignored.
        let mut dx = vec![0.0f32; self.prob.len()];
        for &(at, label) in &counted {
            for k in 0..c {
                dx[at + k * inner] = self.prob[at + k * inner];
            }
            dx[at + label * inner] -= 1.0;
        }
        scores_gradient(dx, dloss, self.normalizer, a)
    }
}

pub struct Accuracy {
    p: AccuracyParameter,
    ctx: String,
    dims: (usize, usize, usize),
}

impl Accuracy {
    pub fn new(p: AccuracyParameter, name: &str) -> Self {
        Accuracy {
            p,
            ctx: format!("layer '{name}'"),
            dims: (0, 0, 0),
        }
    }
}

impl Layer for Accuracy {
    fn any_batch(&self) -> bool {
        true
    }
    fn allow_force_backward(&self, _i: usize) -> bool {
        // No gradient in Caffe either (it aborts when forced).
        false
    }
    fn type_name(&self) -> &'static str {
        "Accuracy"
    }
    fn num_bottoms(&self) -> usize {
        2
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        self.dims = scores_and_labels(bottom, self.p.axis(), &self.ctx)?;
        if self.p.top_k() as usize > self.dims.1 {
            return Err(Error::model(
                &self.ctx,
                "top_k is larger than the number of classes",
            ));
        }
        Ok(vec![vec![]])
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let (_, c, inner) = self.dims;
        let x = to_vec(&bottom[0])?;
        let counted = labelled(
            &to_vec(&bottom[1])?,
            self.dims,
            self.p.ignore_label,
            &self.ctx,
        )?;
        let k = self.p.top_k() as usize;
        let right = counted
            .iter()
            .filter(|&&(at, label)| {
                rank_of_label(c, label, |q| x[at + q * inner]).is_some_and(|r| r < k)
            })
            .count();
        let acc = if counted.is_empty() {
            0.0
        } else {
            right as f32 / counted.len() as f32
        };
        Ok(vec![Tensor::new(acc, bottom[0].device())?])
    }
}
