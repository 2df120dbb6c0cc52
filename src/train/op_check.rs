//! `flickr-style check-ops`: every layer's tensor-op path (the one a GPU
//! runs) against its CPU-kernel twin on the same random inputs, plus a
//! finite-difference check of the tensor-op gradients, on a chosen device.
//! CI runs it on the CPU; on a GPU machine it is the GPU-vs-CPU check.
use super::compute::Compute;
use super::layers::{create, to_vec, BackwardArgs, BuildContext, Layer};
use super::sgd::adaptive::{AdaptiveStep, Rule};
use crate::caffe::proto::{LayerParameter, Phase};
use crate::caffe::prototxt;
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Largest |difference| over the largest |reference| (so values near zero
/// in a tensor of large ones do not dominate), for forward outputs and
/// gradients.
pub const TWIN_TOLERANCE: f32 = 1e-5;
/// Finite differences in f32 with step 1e-2 (Caffe's GradientChecker
/// settings): relative to max(|analytic|, |numeric|, 1).
pub const FD_TOLERANCE: f32 = 1e-2;
/// The bf16 mixed-precision cases against the fp32 CPU kernels: bf16 keeps
/// 8 significant bits (2^-9 relative per rounding), and a product's error
/// grows with its length (measured on the CPU: up to 4e-3).
pub const BF16_TOLERANCE: f32 = 2e-2;

/// The outcome for one op.
#[derive(Clone, Debug)]
pub struct OpReport {
    /// What was checked (layer type and geometry).
    pub name: String,
    /// Forward output vs the CPU kernels.
    pub forward: f32,
    /// Largest error over the input and parameter gradients vs the CPU kernels.
    pub backward: f32,
    /// Largest finite-difference error of the tensor-op input gradient
    /// (0 where not checked).
    pub finite_diff: f32,
    /// What `forward` and `backward` must stay within.
    pub tolerance: f32,
}

impl OpReport {
    /// Whether every error is within its tolerance.
    pub fn passed(&self) -> bool {
        self.forward <= self.tolerance
            && self.backward <= self.tolerance
            && self.finite_diff <= FD_TOLERANCE
    }
}

/// (name, layer prototxt, input shape, input quantisation): quantised inputs
/// have many exact ties, which max pooling must break as Caffe does.
const CASES: &[(&str, &str, [usize; 4], bool)] = &[
    (
        "Convolution 5x5 s2 p1 +bias",
        r#"name: "c" type: "Convolution" convolution_param { num_output: 4 kernel_size: 5 stride: 2 pad: 1 weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" value: 0.2 } }"#,
        [2, 3, 15, 15],
        false,
    ),
    (
        "Convolution 3x3 group 2 p1",
        r#"name: "c" type: "Convolution" convolution_param { num_output: 6 kernel_size: 3 pad: 1 group: 2 weight_filler { type: "gaussian" std: 0.1 } }"#,
        [2, 4, 9, 9],
        false,
    ),
    (
        "Convolution 3x3 depthwise s2 p1 (MobileNet)",
        r#"name: "c" type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 group: 4 weight_filler { type: "msra" } bias_filler { type: "constant" value: 0.1 } }"#,
        [2, 4, 9, 9],
        false,
    ),
    (
        "Convolution 5x5 depthwise, 2 outputs per channel, dilation 2",
        r#"name: "c" type: "Convolution" convolution_param { num_output: 6 kernel_size: 5 pad: 3 dilation: 2 group: 3 bias_term: false weight_filler { type: "gaussian" std: 0.2 } }"#,
        [2, 3, 10, 11],
        false,
    ),
    (
        "Convolution 3x3 dilation 2 s2 p2 no bias",
        r#"name: "c" type: "Convolution" convolution_param { num_output: 3 kernel_size: 3 stride: 2 pad: 2 dilation: 2 bias_term: false weight_filler { type: "xavier" } }"#,
        [2, 3, 11, 10],
        false,
    ),
    (
        "Convolution 1x7 pad 0x3 (Inception-v3's unequal pad)",
        r#"name: "c" type: "Convolution" convolution_param { num_output: 3 kernel_h: 1 kernel_w: 7 pad_h: 0 pad_w: 3 weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" value: 0.1 } }"#,
        [2, 3, 6, 9],
        false,
    ),
    (
        "Convolution 3x3 stride 2x1 p1 (unequal: run at stride 1, subsampled)",
        r#"name: "c" type: "Convolution" convolution_param { num_output: 3 kernel_size: 3 stride_h: 2 stride_w: 1 pad: 1 weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" value: 0.1 } }"#,
        [2, 3, 9, 8],
        false,
    ),
    (
        "Convolution 3x3 dilation 1x2 s2 p1 (unequal: the kernel spread, undilated)",
        r#"name: "c" type: "Convolution" convolution_param { num_output: 3 kernel_size: 3 dilation: 1 dilation: 2 stride: 2 pad: 1 weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" value: 0.1 } }"#,
        [2, 3, 9, 10],
        false,
    ),
    (
        "Deconvolution 4x4 s2 p1 group 3 (bilinear upsampling)",
        r#"name: "d" type: "Deconvolution" convolution_param { num_output: 3 kernel_size: 4 stride: 2 pad: 1 group: 3 weight_filler { type: "bilinear" } bias_filler { type: "constant" value: 0.1 } }"#,
        [2, 3, 5, 6],
        false,
    ),
    (
        "Deconvolution 3x3 s2 p1, learned",
        r#"name: "d" type: "Deconvolution" convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 weight_filler { type: "gaussian" std: 0.2 } }"#,
        [2, 3, 4, 5],
        false,
    ),
    (
        "Convolution 3x3 s3 (floor drops rows)",
        r#"name: "c" type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 stride: 3 weight_filler { type: "gaussian" std: 0.1 } }"#,
        [1, 2, 11, 10],
        false,
    ),
    (
        "Convolution 11x11 s4 (CaffeNet conv1 geometry)",
        r#"name: "c" type: "Convolution" convolution_param { num_output: 2 kernel_size: 11 stride: 4 weight_filler { type: "gaussian" std: 0.01 } }"#,
        [1, 3, 227, 227],
        false,
    ),
    (
        "Pooling MAX 3x3 s2 (CaffeNet pool1 geometry)",
        r#"name: "p" type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 }"#,
        [2, 3, 55, 55],
        false,
    ),
    (
        "Pooling MAX 3x3 s2 (ceil overhang)",
        r#"name: "p" type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 }"#,
        [2, 3, 8, 9],
        false,
    ),
    (
        "Pooling MAX 3x3 s2 p1, ties",
        r#"name: "p" type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }"#,
        [2, 3, 9, 9],
        true,
    ),
    (
        "Pooling AVE 3x3 s2 p1",
        r#"name: "p" type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }"#,
        [2, 3, 8, 7],
        false,
    ),
    (
        "SPP MAX, 3 levels (padded bins), ties",
        r#"name: "s" type: "SPP" spp_param { pyramid_height: 3 }"#,
        [2, 3, 13, 10],
        true,
    ),
    (
        "SPP AVE, 2 levels",
        r#"name: "s" type: "SPP" spp_param { pyramid_height: 2 pool: AVE }"#,
        [2, 3, 7, 6],
        false,
    ),
    (
        "LRN 5 (CaffeNet)",
        r#"name: "n" type: "LRN" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }"#,
        [2, 7, 5, 5],
        false,
    ),
    (
        "LRN 3 alpha 1 k 2",
        r#"name: "n" type: "LRN" lrn_param { local_size: 3 alpha: 1 beta: 0.75 k: 2 }"#,
        [2, 4, 3, 3],
        false,
    ),
    (
        "LRN WITHIN_CHANNEL 3 (cifar10_full)",
        r#"name: "n" type: "LRN" lrn_param { local_size: 3 alpha: 5e-5 beta: 0.75 norm_region: WITHIN_CHANNEL }"#,
        [2, 3, 6, 7],
        false,
    ),
    (
        "LRN WITHIN_CHANNEL 5 alpha 2",
        r#"name: "n" type: "LRN" lrn_param { local_size: 5 alpha: 2 beta: 0.6 norm_region: WITHIN_CHANNEL }"#,
        [1, 2, 4, 9],
        false,
    ),
    ("ReLU", r#"name: "r" type: "ReLU""#, [2, 3, 4, 4], false),
    ("MVN", r#"name: "m" type: "MVN""#, [2, 3, 4, 5], false),
    (
        "MVN across channels, mean only",
        r#"name: "m" type: "MVN" mvn_param { across_channels: true normalize_variance: false }"#,
        [2, 3, 4, 5],
        false,
    ),
    (
        "Reduction SUMSQ from axis 2",
        r#"name: "r" type: "Reduction" reduction_param { operation: SUMSQ axis: 2 coeff: 0.5 }"#,
        [2, 3, 4, 5],
        false,
    ),
    (
        "Tile 3 on axis 1",
        r#"name: "t" type: "Tile" tile_param { tiles: 3 }"#,
        [2, 3, 2, 2],
        false,
    ),
    (
        "ReLU slope 0.1",
        r#"name: "r" type: "ReLU" relu_param { negative_slope: 0.1 }"#,
        [2, 3, 4, 4],
        false,
    ),
    (
        "Dropout 0.5 (the same mask on every device)",
        r#"name: "d" type: "Dropout" dropout_param { dropout_ratio: 0.5 }"#,
        [2, 3, 8, 8],
        false,
    ),
    (
        "CyclicSlice (four quarter turns)",
        r#"name: "s" type: "CyclicSlice""#,
        [2, 3, 5, 5],
        false,
    ),
    (
        "CyclicPool",
        r#"name: "p" type: "CyclicPool""#,
        [8, 3, 2, 2],
        false,
    ),
    (
        "Concat (3 bottoms, channels)",
        r#"name: "j" type: "Concat""#,
        [2, 3, 4, 4],
        false,
    ),
    (
        "Eltwise SUM (coefficients)",
        r#"name: "e" type: "Eltwise" eltwise_param { coeff: 1 coeff: -0.5 coeff: 2 }"#,
        [2, 3, 4, 4],
        false,
    ),
    (
        "Eltwise PROD",
        r#"name: "e" type: "Eltwise" eltwise_param { operation: PROD }"#,
        [2, 3, 4, 4],
        false,
    ),
    (
        "Eltwise MAX",
        r#"name: "e" type: "Eltwise" eltwise_param { operation: MAX }"#,
        [2, 3, 4, 4],
        false,
    ),
    (
        "BatchNorm (batch statistics)",
        r#"name: "b" type: "BatchNorm""#,
        [4, 3, 3, 3],
        false,
    ),
    (
        "BatchNorm (global statistics)",
        r#"name: "b" type: "BatchNorm" batch_norm_param { use_global_stats: true }"#,
        [2, 3, 4, 4],
        false,
    ),
    (
        "Scale (per channel, with bias)",
        r#"name: "s" type: "Scale" scale_param { filler { type: "gaussian" std: 1 } bias_term: true bias_filler { type: "constant" value: 0.1 } }"#,
        [2, 3, 4, 4],
        false,
    ),
    (
        "Scale (factor as a second bottom, with bias)",
        r#"name: "s" type: "Scale" scale_param { axis: 0 bias_term: true bias_filler { type: "constant" value: 0.1 } }"#,
        [2, 3, 4, 4],
        false,
    ),
    (
        "Bias (learned, channels and height)",
        r#"name: "b" type: "Bias" bias_param { num_axes: 2 filler { type: "gaussian" std: 1 } }"#,
        [2, 3, 4, 4],
        false,
    ),
    (
        "Bias (shift as a second bottom)",
        r#"name: "b" type: "Bias" bias_param { axis: 0 }"#,
        [2, 3, 4, 4],
        false,
    ),
    (
        "Flatten (channels and height)",
        r#"name: "f" type: "Flatten" flatten_param { axis: 1 end_axis: 2 }"#,
        [2, 3, 4, 5],
        false,
    ),
    (
        "Sigmoid",
        r#"name: "n" type: "Sigmoid""#,
        [2, 3, 4, 4],
        false,
    ),
    ("TanH", r#"name: "n" type: "TanH""#, [2, 3, 4, 4], false),
    ("AbsVal", r#"name: "n" type: "AbsVal""#, [2, 3, 4, 4], false),
    ("BNLL", r#"name: "n" type: "BNLL""#, [2, 3, 4, 4], false),
    (
        "ELU alpha 0.5",
        r#"name: "n" type: "ELU" elu_param { alpha: 0.5 }"#,
        [2, 3, 4, 4],
        false,
    ),
    (
        "Power 2 (scale, shift)",
        r#"name: "n" type: "Power" power_param { power: 2 scale: 1.5 shift: 0.5 }"#,
        [2, 3, 4, 4],
        false,
    ),
    (
        "Power 0.5 (shift)",
        r#"name: "n" type: "Power" power_param { power: 0.5 scale: -1 shift: 2 }"#,
        [2, 3, 4, 4],
        false,
    ),
    (
        "Exp base 2",
        r#"name: "n" type: "Exp" exp_param { base: 2 scale: 1.5 shift: 0.5 }"#,
        [2, 3, 4, 4],
        false,
    ),
    (
        "Log base 10",
        r#"name: "n" type: "Log" log_param { base: 10 scale: 0.5 shift: 2 }"#,
        [2, 3, 4, 4],
        false,
    ),
    (
        "Swish beta 2",
        r#"name: "n" type: "Swish" swish_param { beta: 2 }"#,
        [2, 3, 4, 4],
        false,
    ),
    (
        "Clip",
        r#"name: "n" type: "Clip" clip_param { min: -0.5 max: 0.25 }"#,
        [2, 3, 4, 4],
        false,
    ),
    (
        "PReLU (per channel)",
        r#"name: "n" type: "PReLU" prelu_param { filler { type: "uniform" min: -0.5 max: 0.5 } }"#,
        [2, 3, 4, 4],
        false,
    ),
    (
        "PReLU (shared)",
        r#"name: "n" type: "PReLU" prelu_param { channel_shared: true }"#,
        [2, 3, 4, 4],
        false,
    ),
    (
        "Slice (channels at 1 and 3, three tops)",
        r#"name: "s" type: "Slice" top: "a" top: "b" top: "c" slice_param { slice_point: 1 slice_point: 3 }"#,
        [2, 4, 3, 3],
        false,
    ),
    (
        "Reshape (copy, infer)",
        r#"name: "r" type: "Reshape" reshape_param { shape { dim: 0 dim: -1 dim: 2 } }"#,
        [2, 3, 4, 4],
        false,
    ),
    (
        "InnerProduct",
        r#"name: "f" type: "InnerProduct" inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" value: 0.1 } }"#,
        [3, 2, 3, 3],
        false,
    ),
    (
        "Im2col 3x3 s2 p1",
        r#"name: "i" type: "Im2col" convolution_param { kernel_size: 3 stride: 2 pad: 1 }"#,
        [2, 3, 7, 8],
        false,
    ),
];

/// Sequence layers: (name, layer prototxt, bottom shapes, the bottom of
/// continuation flags, the bottoms without a gradient, the tops given a
/// gradient). The recurrent
/// layers take their first hidden state as bottoms (`expose_hidden`), so
/// repeated passes do not carry state from one to the next.
type SequenceCase = (
    &'static str,
    &'static str,
    &'static [&'static [usize]],
    usize,
    &'static [usize],
    usize,
);
const SEQUENCE_CASES: &[SequenceCase] = &[
    (
        "LSTM (static input, exposed hidden state)",
        r#"name: "l" type: "LSTM" top: "h" top: "hT" top: "cT" recurrent_param { num_output: 3 expose_hidden: true weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0.1 } }"#,
        &[&[3, 2, 4], &[3, 2], &[2, 5], &[1, 2, 3], &[1, 2, 3]],
        1,
        &[1, 3, 4],
        1,
    ),
    (
        "RNN (exposed hidden state)",
        r#"name: "r" type: "RNN" top: "o" top: "hT" recurrent_param { num_output: 3 expose_hidden: true weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0.1 } }"#,
        &[&[4, 2, 3], &[4, 2], &[1, 2, 3]],
        1,
        &[1, 2],
        1,
    ),
    (
        "LSTMUnit",
        r#"name: "u" type: "LSTMUnit" top: "c" top: "h""#,
        &[&[1, 3, 2], &[1, 3, 8], &[1, 3]],
        2,
        &[2],
        2,
    ),
    // Not a sequence layer, but it reads 0/1 flags too: its selector.
    (
        "Filter",
        r#"name: "f" type: "Filter" top: "y" top: "z""#,
        &[&[7, 2, 3], &[7, 4], &[7]],
        2,
        &[2],
        2,
    ),
];

fn relative(a: &[f32], reference: &[f32]) -> f32 {
    if a.len() != reference.len() {
        return f32::INFINITY;
    }
    let scale = reference.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    let mut diff = 0f32;
    for (x, y) in a.iter().zip(reference) {
        let d = (x - y).abs();
        // f32::max would skip a NaN; a NaN where the CPU has a number is a failure.
        if d.is_nan() && !(x.is_nan() && y.is_nan()) {
            return f32::INFINITY;
        }
        diff = diff.max(d);
    }
    diff / scale
}

/// How many bottoms (each of the case's shape) a case's layer takes.
fn bottoms_of(name: &str) -> usize {
    if name.starts_with("Concat") || name.starts_with("Eltwise") {
        3
    } else if name.contains("second bottom") {
        2
    } else {
        1
    }
}

/// A layer built for a case, with its top shapes.
type Built = (Box<dyn Layer>, Vec<Vec<usize>>);

/// The layer (with inputs of `shapes`) and its top shapes.
fn build(param: &LayerParameter, compute: &Compute, shapes: &[Vec<usize>]) -> Result<Built> {
    // Dropout's per-pass streams on both sides: the masks a GPU draws, and
    // its fused kernel's CPU twin, are what is checked.
    let ctx = BuildContext {
        caffe_dropout: false,
        ..BuildContext::new(".", 7, Phase::Train, compute)
    };
    let mut layer = create(param, &ctx, 0)?;
    let tops = layer.setup(shapes)?;
    Ok((layer, tops))
}

/// The values `xs` as tensors of `shapes`, one after another.
fn inputs(xs: &[f32], shapes: &[Vec<usize>], dev: &Device) -> Result<Vec<Tensor>> {
    let mut at = 0;
    shapes
        .iter()
        .map(|s| {
            let n: usize = s.iter().product();
            at += n;
            Ok(Tensor::from_vec(xs[at - n..at].to_vec(), s.clone(), dev)?)
        })
        .collect()
}

/// What a case's layer reads: each bottom's shape, and the bottoms that
/// take no gradient (a recurrent layer's continuation flags, drawn as 0 or
/// 1, and its exposed first hidden state).
struct Bottoms {
    shapes: Vec<Vec<usize>>,
    /// The bottom of 0/1 continuation flags, if any.
    flags: Option<usize>,
    /// Bottoms without a gradient (the flags among them).
    fixed: Vec<usize>,
    /// Tops given a gradient; the rest get zeros (a recurrent layer's
    /// exposed last hidden state passes none back, as in Caffe).
    graded_tops: usize,
}

/// Forward, then backward with `dy` (one per top); returns (every top's
/// values, one after another, [dx of each bottom, param grads...]).
fn run(
    layer: &mut dyn Layer,
    x: &[Tensor],
    dy: &[Tensor],
    fixed: &[usize],
) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
    let top = layer.forward(x, Phase::Train)?;
    let n = layer.params().len();
    let top_diff: Vec<Option<Tensor>> = dy.iter().cloned().map(Some).collect();
    let (bg, pg) = layer.backward(&BackwardArgs {
        bottom: x,
        top: &top,
        top_diff: &top_diff,
        propagate: &(0..x.len())
            .map(|i| !fixed.contains(&i))
            .collect::<Vec<_>>(),
        param_grad: &vec![true; n],
    })?;
    let mut grads = Vec::new();
    for g in bg.into_iter().chain(pg) {
        grads.push(match g {
            Some(g) => to_vec(&g)?,
            None => Vec::new(),
        });
    }
    Ok((tops_values(&top)?, grads))
}

/// Every top's values, one after another.
fn tops_values(tops: &[Tensor]) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    for t in tops {
        v.extend(to_vec(t)?);
    }
    Ok(v)
}

/// Checks one case on `compute` (which should use tensor ops).
fn check_case(
    name: &str,
    text: &str,
    b: &Bottoms,
    ties: bool,
    compute: &Compute,
    rng: &mut ChaCha8Rng,
) -> Result<OpReport> {
    let param: LayerParameter = prototxt::parse(text, std::path::Path::new(name))?;
    let cpu = Compute::cpu();
    // Both built alike, so a Dropout layer draws the same masks in both.
    let (mut reference, top_shapes) = build(&param, &cpu, &b.shapes)?;
    let (mut twin, _) = build(&param, compute, &b.shapes)?;
    let dev = &compute.device;
    for (i, p) in reference.params().to_vec().iter().enumerate() {
        twin.params_mut()[i] = p.to_device(dev)?;
    }
    // Each value's bottom, for the flags and the finite differences.
    let owner: Vec<usize> = b
        .shapes
        .iter()
        .enumerate()
        .flat_map(|(i, s)| std::iter::repeat_n(i, s.iter().product()))
        .collect();
    let count = owner.len();
    let xs: Vec<f32> = owner
        .iter()
        .map(|&i| {
            let v: f32 = rng.random_range(-1.0..1.0);
            if b.flags == Some(i) {
                f32::from(u8::from(v < 0.4)) // mostly continuing, some starts
            } else if ties {
                (v * 2.0).round().max(0.0) // ReLU-like: mostly 0, some 1 and 2
            } else {
                v
            }
        })
        .collect();
    let x_cpu = inputs(&xs, &b.shapes, &Device::Cpu)?;
    // The tops' shapes as a pass makes them (a Filter's depend on its
    // selector's values), from a third instance so neither twin is moved on.
    let top_shapes: Vec<Vec<usize>> = if reference.any_batch() {
        let (mut probe, _) = build(&param, &cpu, &b.shapes)?;
        probe
            .forward(&x_cpu, Phase::Train)?
            .iter()
            .map(|t| t.dims().to_vec())
            .collect()
    } else {
        top_shapes
    };
    // One gradient per top; their values one after another, as the tops'.
    let top_count: usize = top_shapes.iter().map(|s| s.iter().product::<usize>()).sum();
    let graded: usize = top_shapes
        .iter()
        .take(b.graded_tops)
        .map(|s| s.iter().product::<usize>())
        .sum();
    let dys: Vec<f32> = (0..top_count)
        .map(|i| {
            let v = rng.random_range(-1.0..1.0);
            if i < graded {
                v
            } else {
                0.0
            }
        })
        .collect();
    let mut dy_cpu = Vec::new();
    let mut at = 0;
    for s in &top_shapes {
        let n: usize = s.iter().product();
        dy_cpu.push(Tensor::from_vec(
            dys[at..at + n].to_vec(),
            s.clone(),
            &Device::Cpu,
        )?);
        at += n;
    }
    let (y_ref, g_ref) = run(reference.as_mut(), &x_cpu, &dy_cpu, &b.fixed)?;
    let x = inputs(&xs, &b.shapes, dev)?;
    let dy = dy_cpu
        .iter()
        .map(|d| Ok(d.to_device(dev)?))
        .collect::<Result<Vec<Tensor>>>()?;
    let (y, g) = run(twin.as_mut(), &x, &dy, &b.fixed)?;
    let forward = relative(&y, &y_ref);
    let backward = g
        .iter()
        .zip(&g_ref)
        .map(|(a, b)| relative(a, b))
        .fold(0f32, f32::max);
    // Finite differences of L = sum(y * dy) on the tensor-op path, at a few
    // inputs (not for quantised inputs: a tie moves under a step).
    // Nor for Dropout, whose every forward pass draws a new mask, nor in
    // bf16, whose rounding of y is larger than a step's change.
    let mut finite_diff = 0f32;
    if !ties && twin.type_name() != "Dropout" && !compute.bf16 {
        let step = 1e-2f32;
        let loss = |layer: &mut dyn Layer, v: &[f32]| -> Result<f64> {
            let t = inputs(v, &b.shapes, dev)?;
            let y = tops_values(&layer.forward(&t, Phase::Train)?)?;
            Ok(y.iter()
                .zip(&dys)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum())
        };
        let base = loss(twin.as_mut(), &xs)?;
        let (mut accepted, mut tries) = (0, 0);
        while accepted < 12 && tries < 100 {
            tries += 1;
            let i = rng.random_range(0..count);
            if b.fixed.contains(&owner[i]) {
                continue;
            }
            let mut v = xs.clone();
            v[i] = xs[i] + step;
            let up = loss(twin.as_mut(), &v)?;
            v[i] = xs[i] - step;
            let down = loss(twin.as_mut(), &v)?;
            // A step across a kink (ReLU at 0, a max changing hands) makes
            // the one-sided slopes disagree: such points say nothing about
            // the gradient, so Caffe's checker skips them too.
            let (right, left) = ((up - base) / step as f64, (base - down) / step as f64);
            if (right - left).abs() > FD_TOLERANCE as f64 * right.abs().max(left.abs()).max(1.0) {
                continue;
            }
            accepted += 1;
            let numeric = ((up - down) / (2.0 * step as f64)) as f32;
            // The bottoms' gradients, one after another, as the inputs are.
            let first = owner.iter().position(|&o| o == owner[i]).unwrap_or(0);
            let analytic = g[owner[i]][i - first];
            let err = (numeric - analytic).abs() / numeric.abs().max(analytic.abs()).max(1.0);
            finite_diff = finite_diff.max(err);
        }
        if accepted == 0 {
            return Err(Error::model(
                name,
                "no smooth point found for the finite-difference check",
            ));
        }
    }
    Ok(OpReport {
        name: name.to_string(),
        forward,
        backward,
        finite_diff,
        tolerance: if compute.bf16 {
            BF16_TOLERANCE
        } else {
            TWIN_TOLERANCE
        },
    })
}

/// Whether a case's layer has a fused kernel (so the fused pass checks it).
fn has_fused(name: &str) -> bool {
    [
        "Convolution",
        "Deconvolution",
        "Im2col",
        "Pooling MAX",
        "SPP MAX",
        "LRN",
        "ReLU",
        "Dropout",
    ]
    .iter()
    .any(|p| name.starts_with(p))
        && !name.contains("WITHIN_CHANNEL")
}

/// Whether a case's layer computes matrix products (so the bf16 pass checks it).
fn has_products(name: &str) -> bool {
    name.starts_with("Convolution")
        || name.starts_with("Deconvolution")
        || name.starts_with("InnerProduct")
}

/// Whether a case is a convolution (so the cuDNN passes check it).
fn is_convolution(name: &str) -> bool {
    name.starts_with("Convolution")
}

/// One pass over the cases: a GPU code path, the cases it covers and the
/// tag its rows carry.
struct Pass {
    fused: bool,
    bf16: bool,
    cudnn: bool,
    covers: fn(&str) -> bool,
    tag: &'static str,
    /// Whether the pass also checks the SGD update (fp32 in every mode).
    sgd: bool,
}

const PASSES: &[Pass] = &[
    Pass {
        fused: false,
        bf16: false,
        cudnn: false,
        covers: |_| true,
        tag: "",
        sgd: true,
    },
    Pass {
        fused: true,
        bf16: false,
        cudnn: false,
        covers: has_fused,
        tag: " [fused]",
        sgd: true,
    },
    Pass {
        fused: true,
        bf16: true,
        cudnn: false,
        covers: has_products,
        tag: " [bf16]",
        sgd: false,
    },
    Pass {
        fused: true,
        bf16: false,
        cudnn: true,
        covers: is_convolution,
        tag: " [cudnn]",
        sgd: false,
    },
    Pass {
        fused: true,
        bf16: true,
        cudnn: true,
        covers: is_convolution,
        tag: " [cudnn bf16]",
        sgd: false,
    },
];

/// The `check-ops` report: what was compared on which device, a Markdown
/// row per op, and a closing line when all passed; with the number failed.
pub fn to_markdown(reports: &[OpReport], compute: &Compute) -> (String, usize) {
    let cudnn = if compute.cudnn {
        ", then convolutions on [cudnn] in fp32 and bf16"
    } else {
        ""
    };
    let mut s = format!(
        "Checking {} against the CPU kernels: tensor-op compositions, then [fused] kernels, then [bf16] mixed precision{cudnn} (max |diff| / max |CPU value|; pass: <= {TWIN_TOLERANCE:e}, bf16 <= {BF16_TOLERANCE:e}, finite differences <= {FD_TOLERANCE:e})\n",
        compute.describe()
    );
    s += "| op | forward | backward | finite diff | result |\n|---|---|---|---|---|\n";
    let mut failed = 0;
    for r in reports {
        let ok = r.passed();
        failed += usize::from(!ok);
        s += &format!(
            "| {} | {:.1e} | {:.1e} | {:.1e} | {} |\n",
            r.name,
            r.forward,
            r.backward,
            r.finite_diff,
            if ok { "ok" } else { "FAILED" }
        );
    }
    if failed == 0 {
        s += &format!("All {} op checks passed.\n", reports.len());
    }
    (s, failed)
}

/// Runs every case on each GPU code path: the tensor-op compositions, then
/// the fused kernels (marked `[fused]`) for the layers that have them, plus
/// the SGD update; then the layers with matrix products in bf16 mixed
/// precision (marked `[bf16]`, on the fused path, against the fp32 CPU
/// kernels within [`BF16_TOLERANCE`]); and where `compute` convolves with
/// cuDNN (a GPU in a `cudnn` build), the convolutions on cuDNN in fp32 and
/// bf16 (`[cudnn]`, `[cudnn bf16]`; the passes before use candle's im2col).
/// `compute` is the device under test; tensor ops are switched on, so on
/// the CPU this checks the GPU code path (there the fused ops run their CPU
/// twins, which checks their wrappers).
pub fn check_ops(compute: &Compute, seed: u64) -> Result<Vec<OpReport>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut reports = Vec::new();
    for pass in PASSES.iter().filter(|p| compute.cudnn || !p.cudnn) {
        let compute = Compute {
            tensor_ops: true,
            fused: pass.fused,
            bf16: pass.bf16,
            cudnn: pass.cudnn,
            ..compute.clone()
        };
        let plain = CASES.iter().map(|&(name, text, shape, ties)| {
            let b = Bottoms {
                shapes: vec![shape.to_vec(); bottoms_of(name)],
                flags: None,
                fixed: Vec::new(),
                graded_tops: usize::MAX,
            };
            (name, text, b, ties)
        });
        let sequences = SEQUENCE_CASES
            .iter()
            .map(|&(name, text, shapes, flags, fixed, graded)| {
                let b = Bottoms {
                    shapes: shapes.iter().map(|s| s.to_vec()).collect(),
                    flags: Some(flags),
                    fixed: fixed.to_vec(),
                    graded_tops: graded,
                };
                (name, text, b, false)
            });
        for (name, text, b, ties) in plain.chain(sequences).filter(|c| (pass.covers)(c.0)) {
            let label = format!("{name}{}", pass.tag);
            let mut r = check_case(name, text, &b, ties, &compute, &mut rng)
                .map_err(|e| Error::model(format!("op check '{label}'"), e.to_string()))?;
            r.name = label;
            reports.push(r);
        }
        if !pass.sgd {
            continue;
        }
        for (label, l1) in [
            ("SGD update (clip, iter_size, L2)", false),
            ("SGD update (L1)", true),
        ] {
            let label = format!("{label}{}", pass.tag);
            reports.push(
                check_sgd(&label, l1, &compute, &mut rng)
                    .map_err(|e| Error::model(format!("op check '{label}'"), e.to_string()))?,
            );
        }
        // The other solver types are tensor ops on every GPU path: once.
        if pass.fused {
            continue;
        }
        for rule in ADAPTIVE_RULES {
            let label = format!("{} update (3 steps)", rule.name());
            reports.push(
                check_adaptive(&label, *rule, &compute, &mut rng)
                    .map_err(|e| Error::model(format!("op check '{label}'"), e.to_string()))?,
            );
        }
    }
    Ok(reports)
}

/// Caffe's other solver types with their usual settings.
const ADAPTIVE_RULES: &[Rule] = &[
    Rule::Nesterov,
    Rule::AdaGrad { delta: 1e-8 },
    Rule::RmsProp {
        decay: 0.98,
        delta: 1e-8,
    },
    Rule::AdaDelta { delta: 1e-6 },
    Rule::Adam {
        beta2: 0.999,
        delta: 1e-8,
    },
];

/// Three steps of an adaptive rule on `compute`'s device (tensor ops)
/// against the CPU's element loop: `forward` is the last update's error,
/// `backward` the worse of the two histories'.
fn check_adaptive(
    name: &str,
    rule: Rule,
    compute: &Compute,
    rng: &mut ChaCha8Rng,
) -> Result<OpReport> {
    let n = 1000;
    let momentum = match rule {
        Rule::AdaGrad { .. } | Rule::RmsProp { .. } => 0.0,
        Rule::AdaDelta { .. } => 0.95,
        _ => 0.9,
    };
    let t = |v: &[f32]| Tensor::from_vec(v.to_vec(), n, &compute.device);
    let (mut h1, mut h2) = (vec![0f32; n], vec![0f32; n]);
    let (mut t1, mut t2) = (t(&h1)?, t(&h2)?);
    let mut report = OpReport {
        name: name.to_string(),
        forward: 0.0,
        backward: 0.0,
        finite_diff: 0.0,
        tolerance: TWIN_TOLERANCE,
    };
    for iter in 0..3 {
        let g: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let step = AdaptiveStep {
            rule,
            momentum,
            rate: 0.01,
            correction: rule.correction(momentum, iter),
        };
        let want: Vec<f32> = (0..n)
            .map(|i| step.element(g[i], &mut h1[i], &mut h2[i]))
            .collect();
        let [u, a, b] = step.tensors(&t(&g)?, &t1, &t2)?;
        (t1, t2) = (a, b);
        report.forward = relative(&to_vec(&u)?, &want);
        report.backward = relative(&to_vec(&t1)?, &h1).max(relative(&to_vec(&t2)?, &h2));
    }
    Ok(report)
}

/// One SGD step on `compute`'s path against the CPU update written out
/// element by element: `forward` is the new weights' error, `backward`
/// the new history's.
fn check_sgd(name: &str, l1: bool, compute: &Compute, rng: &mut ChaCha8Rng) -> Result<OpReport> {
    let n = 1000;
    let mut draw = || -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let (w, g, h) = (draw(), draw(), draw());
    let (scales, decay, rate, momentum) = ([0.5f32, 0.25], 5e-4f32, 0.01f32, 0.9f32);
    let sign = |x: f32| ((0.0 < x) as i32 - (x < 0.0) as i32) as f32;
    let (mut w_ref, mut h_ref) = (vec![0f32; n], vec![0f32; n]);
    for i in 0..n {
        let mut d = g[i] * scales[0] * scales[1];
        d += decay * if l1 { sign(w[i]) } else { w[i] };
        h_ref[i] = rate * d + momentum * h[i];
        w_ref[i] = w[i] - h_ref[i];
    }
    let dev = &compute.device;
    let t = |v: &[f32]| Tensor::from_vec(v.to_vec(), n, dev);
    let step = if compute.fused {
        super::fused::sgd_step
    } else {
        super::tensor_ops::sgd_step
    };
    let params = super::sgd::ParamStep {
        grad_scale: scales.map(Some),
        decay,
        l1,
        rate,
        momentum,
    };
    let (w2, h2) = step(&t(&w)?, &t(&g)?, &t(&h)?, &params)?;
    Ok(OpReport {
        name: name.to_string(),
        forward: relative(&to_vec(&w2)?, &w_ref),
        backward: relative(&to_vec(&h2)?, &h_ref),
        finite_diff: 0.0,
        tolerance: TWIN_TOLERANCE,
    })
}
