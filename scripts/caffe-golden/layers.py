#!/usr/bin/env python3
"""Golden numbers for single layers, computed by a real Caffe (pycaffe).

Writes a JSON file (argv[1]) that `tests/caffe_layers.rs` replays through
flickr-style's layers. For each case a small net is built:

    Input  -> x0, x1, ..., labels, w0, w1, ...
    Bias "dx<i>" (axis 0, num_axes -1: one learned shift per element, all 0)
           turns input xi into bottom "xi" -- its parameter gradient is then
           exactly the gradient with respect to the layer's input
    the layer under test, tops t0, t1, ...
    Eltwise PROD "loss<k>" (tk * wk) with loss_weight 1, so tk's gradient
           is the random wk, not a constant

Loss layers under test carry their own loss weight and get no w.

Inputs and parameters are drawn from a seeded numpy RNG and stored in the
JSON with every top, every parameter gradient and each input gradient.
Run with scripts/caffe-golden/run.sh (Caffe from Debian bullseye's
`caffe` and `python3-caffe` packages, CPU mode).
"""
import json
import os
import sys
import tempfile

import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")
import caffe  # noqa: E402
from golden import array  # noqa: E402

caffe.set_mode_cpu()
RNG = np.random.RandomState(20261129)

CASES = []


def case(name, layer, shapes=((2, 3, 3, 4),), inputs=None, labels=None,
         loss=False, params=None, phase="TRAIN", after_forward=False, files=None,
         filled=False, bottomless=False, order=None):
    """One layer under test.

    layer: the layer's body (type and parameters), without name/bottom/top.
    shapes: float inputs, each behind its own "dx<i>" Bias.
    inputs: per input, a function of a standard-normal array (domain).
    labels: (shape, classes) of an integer label input, or None.
    loss: the layer is a loss (its top is the objective).
    params: per parameter blob, a function of its shape giving values.
    after_forward: also record the parameters after the forward pass
        (BatchNorm's running statistics).
    files: {file name: array} written as BlobProto binaryprotos beside the
        net (InfogainLoss's H).
    filled: keep the parameters Caffe's fillers made (deterministic ones,
        such as bilinear), so the test also checks our fillers against them.
    bottomless: the layer reads none of the inputs (a Parameter layer; the
        Input layer still needs a top).
    order: the layer's bottoms as indices into [x0, x1, ..., label] (the
        recurrent layers take their flags second, before other inputs).
    """
    CASES.append(dict(name=name, layer=layer, shapes=[list(s) for s in shapes],
                      inputs=inputs, labels=labels, loss=loss, params=params,
                      phase=phase, after_forward=after_forward, files=files or {},
                      filled=filled, bottomless=bottomless, order=order))


def positive(a):
    return np.abs(a) + 0.2


def times(k):
    return lambda a: a * k


def normal(scale):
    return lambda shape: RNG.standard_normal(shape) * scale


def uniform(lo, hi):
    return lambda shape: RNG.uniform(lo, hi, shape)


# Neurons.
case("sigmoid", 'type: "Sigmoid"', inputs=[times(3)])
case("tanh", 'type: "TanH"', inputs=[times(2)])
case("absval", 'type: "AbsVal"')
case("bnll", 'type: "BNLL"', inputs=[times(40)])
case("elu", 'type: "ELU" elu_param { alpha: 0.7 }', inputs=[times(2)])
case("relu_leaky", 'type: "ReLU" relu_param { negative_slope: 0.1 }')
case("power_square", 'type: "Power" power_param { power: 2 scale: 0.5 shift: 0.3 }')
case("power_sqrt", 'type: "Power" power_param { power: 0.5 scale: 1.5 shift: 0.2 }',
     inputs=[positive])
case("power_zero", 'type: "Power" power_param { power: 0 scale: 2 }')
case("power_one", 'type: "Power" power_param { power: 1 scale: 2 shift: -1 }')
case("power_scale_zero", 'type: "Power" power_param { power: 3 scale: 0 shift: 1.5 }')
case("exp_e", 'type: "Exp" exp_param { scale: 0.5 shift: 0.1 }')
case("exp_base2", 'type: "Exp" exp_param { base: 2 scale: 1.2 shift: -0.3 }')
case("log_e", 'type: "Log"', inputs=[positive])
case("log_base10", 'type: "Log" log_param { base: 10 scale: 2 shift: 0.5 }',
     inputs=[positive])
case("swish", 'type: "Swish"', inputs=[times(3)])
case("swish_beta", 'type: "Swish" swish_param { beta: 1.7 }', inputs=[times(3)])
case("clip", 'type: "Clip" clip_param { min: -0.5 max: 0.8 }')
case("prelu", 'type: "PReLU"', params=[uniform(0.05, 0.6)])
case("prelu_shared", 'type: "PReLU" prelu_param { channel_shared: true }',
     params=[uniform(0.05, 0.6)])

# Routing and shapes.
case("slice_points", 'type: "Slice" slice_param { axis: 1 slice_point: 1 slice_point: 2 }')
case("slice_equal", 'type: "Slice" slice_param { axis: 2 }', shapes=[(2, 3, 4, 5)])
case("slice_dim", 'type: "Slice" slice_param { slice_dim: 3 slice_point: 2 }')
case("split", 'type: "Split"')
case("reshape", 'type: "Reshape" reshape_param { shape { dim: 0 dim: -1 dim: 4 } }')
case("reshape_axis", 'type: "Reshape" reshape_param { shape { dim: 2 dim: 2 } axis: 2 num_axes: 1 }',
     shapes=[(2, 3, 4, 5)])
case("flatten", 'type: "Flatten"')
case("concat", 'type: "Concat" concat_param { axis: 1 }',
     shapes=[(2, 3, 4, 5), (2, 2, 4, 5)])
case("concat_axis2", 'type: "Concat" concat_param { axis: 2 }',
     shapes=[(2, 3, 4, 5), (2, 3, 1, 5)])
case("eltwise_sum", 'type: "Eltwise" eltwise_param { operation: SUM coeff: 0.5 coeff: -1.5 }',
     shapes=[(2, 3, 4, 5), (2, 3, 4, 5)])
case("eltwise_prod", 'type: "Eltwise" eltwise_param { operation: PROD }',
     shapes=[(2, 3, 4, 5), (2, 3, 4, 5)])
case("eltwise_max", 'type: "Eltwise" eltwise_param { operation: MAX }',
     shapes=[(2, 3, 4, 5), (2, 3, 4, 5), (2, 3, 4, 5)])

# Scale and Bias.
case("bias_learned", 'type: "Bias"', params=[normal(1)])
case("bias_axes", 'type: "Bias" bias_param { axis: 1 num_axes: 2 }', params=[normal(1)])
case("bias_bottom", 'type: "Bias" bias_param { axis: 1 }', shapes=[(2, 3, 4, 5), (3, 4)])
case("scale_learned", 'type: "Scale" scale_param { bias_term: true }',
     params=[normal(1), normal(1)])
case("scale_bottom_gate", 'type: "Scale" scale_param { axis: 0 }',
     shapes=[(2, 3, 4, 5), (2, 3)])
case("scale_bottom_bias", 'type: "Scale" scale_param { axis: 0 bias_term: true }',
     shapes=[(2, 3, 4, 5), (2, 3)], params=[normal(1)])

# Normalisation.
case("batchnorm_train", 'type: "BatchNorm" batch_norm_param { use_global_stats: false moving_average_fraction: 0.9 }',
     params=[normal(0.5), lambda s: np.abs(RNG.standard_normal(s)) + 0.5, lambda s: np.array([2.0])],
     after_forward=True)
case("batchnorm_global", 'type: "BatchNorm" batch_norm_param { use_global_stats: true eps: 0.001 }',
     params=[normal(0.5), lambda s: np.abs(RNG.standard_normal(s)) + 0.5, lambda s: np.array([2.0])])
case("lrn", 'type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 }',
     shapes=[(2, 5, 4, 4)])
case("lrn_wide", 'type: "LRN" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }',
     shapes=[(2, 7, 3, 3)], inputs=[times(30)])

case("lrn_within", 'type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL }',
     shapes=[(2, 3, 5, 6)])
case("lrn_within_wide", 'type: "LRN" lrn_param { local_size: 5 alpha: 0.01 beta: 0.9 k: 3 norm_region: WITHIN_CHANNEL }',
     shapes=[(2, 2, 4, 7)], inputs=[times(10)])

# Pooling.
case("pool_max", 'type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 }',
     shapes=[(2, 3, 8, 8)])
case("pool_max_pad", 'type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }',
     shapes=[(2, 3, 7, 6)])
case("pool_ave", 'type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }',
     shapes=[(2, 3, 7, 7)])
case("pool_ave_rect", 'type: "Pooling" pooling_param { pool: AVE kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 }',
     shapes=[(2, 3, 5, 7)])
case("pool_global", 'type: "Pooling" pooling_param { pool: AVE global_pooling: true }')
case("pool_global_max", 'type: "Pooling" pooling_param { pool: MAX global_pooling: true }')

# Ties and zeros: inputs rounded to integers, so windows and bottoms hold
# equal maxima (Caffe keeps the first) and ReLU sees exact zeros.
case("pool_max_ties", 'type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 1 }',
     shapes=[(2, 2, 5, 5)], inputs=[np.round])
case("pool_max_ties_pad", 'type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }',
     shapes=[(2, 2, 6, 6)], inputs=[np.round])
case("eltwise_max_ties", 'type: "Eltwise" eltwise_param { operation: MAX }',
     shapes=[(2, 3, 3, 4), (2, 3, 3, 4), (2, 3, 3, 4)], inputs=[np.round, np.round, np.round])
case("relu_zeros", 'type: "ReLU"', inputs=[np.round])
case("prelu_zeros", 'type: "PReLU"', inputs=[np.round], params=[uniform(0.05, 0.6)])

# Convolution and inner product.
CONV_W = [normal(0.3), normal(0.1)]
case("conv", 'type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 }',
     shapes=[(2, 3, 7, 7)], params=CONV_W)
case("conv_group", 'type: "Convolution" convolution_param { num_output: 6 kernel_size: 3 group: 2 }',
     shapes=[(2, 4, 5, 5)], params=CONV_W)
case("conv_rect", 'type: "Convolution" convolution_param { num_output: 3 kernel_h: 2 kernel_w: 3 stride: 2 pad_h: 1 pad_w: 0 }',
     shapes=[(2, 3, 6, 7)], params=CONV_W)
# Inception-v3's factorised 1x7 convolution.
case("conv_1x7", 'type: "Convolution" convolution_param { num_output: 2 kernel_h: 1 kernel_w: 7 pad_h: 0 pad_w: 3 }',
     shapes=[(2, 3, 5, 9)], params=CONV_W)
# Unequal strides (the tensor ops run them at stride 1 and subsample).
case("conv_rect_stride", 'type: "Convolution" convolution_param { num_output: 3 kernel_size: 3 stride_h: 2 stride_w: 1 pad: 1 }',
     shapes=[(2, 3, 6, 7)], params=CONV_W)
case("conv_dilated", 'type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 dilation: 2 pad: 2 bias_term: false }',
     shapes=[(2, 3, 7, 7)], params=CONV_W[:1])
case("conv_depthwise", 'type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 pad: 1 group: 4 }',
     shapes=[(2, 4, 6, 6)], params=CONV_W)
case("conv_depthwise_stride", 'type: "Convolution" convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 group: 4 }',
     shapes=[(2, 4, 7, 7)], params=CONV_W)
case("conv_1x1", 'type: "Convolution" convolution_param { num_output: 5 kernel_size: 1 }',
     shapes=[(2, 3, 4, 4)], params=CONV_W)
# Deconvolution: FCN's bilinear upsampling (Caffe's filler kept), and learned ones.
case("deconv_bilinear_upsample", 'type: "Deconvolution" convolution_param { num_output: 3 kernel_size: 4 '
     'stride: 2 pad: 1 group: 3 bias_term: false weight_filler { type: "bilinear" } }',
     shapes=[(2, 3, 4, 5)], filled=True)
case("deconv", 'type: "Deconvolution" convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 }',
     shapes=[(2, 3, 4, 5)], params=CONV_W)
case("deconv_group", 'type: "Deconvolution" convolution_param { num_output: 6 kernel_size: 2 group: 2 }',
     shapes=[(2, 4, 3, 3)], params=CONV_W)
case("deconv_dilated_rect", 'type: "Deconvolution" convolution_param { num_output: 2 kernel_h: 3 kernel_w: 2 '
     'dilation: 2 pad_h: 1 pad_w: 0 stride: 3 bias_term: false }', shapes=[(1, 3, 3, 4)], params=CONV_W[:1])
# Crop: FCN's cut of the upsampled scores to the image (no gradient to the reference).
case("crop", 'type: "Crop" crop_param { axis: 2 offset: 1 }', shapes=[(2, 3, 6, 7), (2, 3, 4, 5)])
case("crop_offsets", 'type: "Crop" crop_param { axis: 1 offset: 1 offset: 0 offset: 2 }',
     shapes=[(2, 4, 5, 6), (2, 2, 5, 3)])
case("crop_last_axis", 'type: "Crop" crop_param { axis: -1 }', shapes=[(2, 3, 4, 5), (2, 3, 4, 2)])
case("inner_product", 'type: "InnerProduct" inner_product_param { num_output: 5 }',
     params=[normal(0.2), normal(0.1)])
case("inner_product_axis2", 'type: "InnerProduct" inner_product_param { num_output: 3 axis: 2 }',
     params=[normal(0.2), normal(0.1)])

# Softmax and losses.
case("softmax", 'type: "Softmax"', inputs=[times(2)])
case("softmax_loss", 'type: "SoftmaxWithLoss"', shapes=[(4, 5)], labels=((4,), 5),
     inputs=[times(2)], loss=True)
case("softmax_loss_spatial", 'type: "SoftmaxWithLoss" loss_param { ignore_label: 1 normalization: VALID }',
     shapes=[(2, 3, 2, 2)], labels=((2, 1, 2, 2), 3), inputs=[times(2)], loss=True)
case("softmax_loss_batch", 'type: "SoftmaxWithLoss" loss_param { normalization: BATCH_SIZE } loss_weight: 0.3',
     shapes=[(2, 3, 2, 2)], labels=((2, 1, 2, 2), 3), inputs=[times(2)], loss=True)
# InfogainLoss as Caffe 1.0 has it (softmax inside), H from a file: a
# class-weight diagonal, and a full matrix that rewards near misses.
H_DIAG = np.diag([0.5, 2.0, 1.0, 3.0]).reshape(1, 1, 4, 4)
H_FULL = (np.eye(4) * 1.5 + RNG.uniform(0, 0.4, (4, 4))).reshape(1, 1, 4, 4)
case("infogain_diagonal", 'type: "InfogainLoss" infogain_loss_param { source: "h_diag.binaryproto" }',
     shapes=[(6, 4)], labels=((6,), 4), inputs=[times(2)], loss=True,
     files={"h_diag.binaryproto": H_DIAG})
case("infogain_full_spatial", 'type: "InfogainLoss" infogain_loss_param { source: "h_full.binaryproto" } '
     'loss_param { normalization: BATCH_SIZE } loss_weight: 2',
     shapes=[(2, 4, 2, 3)], labels=((2, 1, 2, 3), 4), inputs=[times(2)], loss=True,
     files={"h_full.binaryproto": H_FULL})
# MVN, Reduction, Tile.
case("mvn", 'type: "MVN"', inputs=[lambda a: a * 2 + 1])
case("mvn_across", 'type: "MVN" mvn_param { across_channels: true eps: 0.001 }')
case("mvn_mean_only", 'type: "MVN" mvn_param { normalize_variance: false }')
case("reduction_sum", 'type: "Reduction"', inputs=[positive])  # no cancelling sum
case("reduction_asum", 'type: "Reduction" reduction_param { operation: ASUM axis: 1 }')
case("reduction_sumsq", 'type: "Reduction" reduction_param { operation: SUMSQ axis: 2 coeff: 0.5 }')
case("reduction_mean", 'type: "Reduction" reduction_param { operation: MEAN axis: -1 coeff: 2 }')
case("tile", 'type: "Tile" tile_param { tiles: 3 }')
case("tile_last_axis", 'type: "Tile" tile_param { axis: -1 tiles: 2 }')

# Forward-only layers (no gradient in Caffe either).
case("argmax", 'type: "ArgMax"', loss=True)
case("argmax_top3_values", 'type: "ArgMax" argmax_param { top_k: 3 out_max_val: true }', loss=True)
case("argmax_axis", 'type: "ArgMax" argmax_param { axis: 1 top_k: 2 }', loss=True)
case("argmax_axis_values", 'type: "ArgMax" argmax_param { axis: 2 out_max_val: true }', loss=True)
case("argmax_ties", 'type: "ArgMax" argmax_param { top_k: 4 out_max_val: true }', shapes=[(3, 10)],
     inputs=[lambda a: np.round(a)], loss=True)
case("threshold", 'type: "Threshold" threshold_param { threshold: 0.3 }', loss=True)

# Regression and multi-label losses (targets from a second input).
case("euclidean", 'type: "EuclideanLoss"', shapes=[(4, 5), (4, 5, 1, 1)], loss=True)
case("euclidean_weighted", 'type: "EuclideanLoss" loss_weight: 0.5', shapes=[(3, 2, 2, 2), (3, 8)],
     inputs=[times(3)], loss=True)
case("sigmoid_ce", 'type: "SigmoidCrossEntropyLoss"', shapes=[(4, 5)], labels=((4, 5), 2),
     inputs=[times(4)], loss=True)
case("sigmoid_ce_ignore_valid", 'type: "SigmoidCrossEntropyLoss" loss_param { ignore_label: 2 normalization: VALID }',
     shapes=[(3, 6)], labels=((3, 6), 3), inputs=[times(4)], loss=True)
case("sigmoid_ce_normalize", 'type: "SigmoidCrossEntropyLoss" loss_param { normalize: true } loss_weight: 3',
     shapes=[(2, 3, 2)], labels=((2, 3, 2), 2), inputs=[times(2)], loss=True)
case("accuracy_ignore_spatial", 'type: "Accuracy" accuracy_param { ignore_label: 0 }',
     shapes=[(2, 4, 3, 2)], labels=((2, 1, 3, 2), 4), loss=True)
case("softmax_axis2", 'type: "Softmax" softmax_param { axis: 2 }', inputs=[times(2)])
case("softmax_loss_axis2", 'type: "SoftmaxWithLoss" softmax_param { axis: 2 }', shapes=[(2, 3, 4)],
     labels=((2, 3), 4), inputs=[times(2)], loss=True)
case("concat_negative_axis", 'type: "Concat" concat_param { axis: -1 }', shapes=[(2, 3, 3, 4), (2, 3, 3, 2)])
case("slice_negative_axis", 'type: "Slice" slice_param { axis: -2 slice_point: 2 }')
case("accuracy_top2", 'type: "Accuracy" accuracy_param { top_k: 2 }', shapes=[(6, 4)],
     labels=((6,), 4), loss=True)
# Siamese and SVM losses. Margins near the pairs' distances, so some
# dissimilar pairs fall inside (a gradient) and some outside (none).
case("contrastive", 'type: "ContrastiveLoss" contrastive_loss_param { margin: 2.5 }',
     shapes=[(8, 4), (8, 4)], labels=((8,), 2), loss=True)
case("contrastive_legacy", 'type: "ContrastiveLoss" contrastive_loss_param { margin: 8 legacy_version: true } '
     'loss_weight: 0.5', shapes=[(8, 4, 1, 1), (8, 4, 1, 1)], labels=((8,), 2), loss=True)
case("hinge_l1", 'type: "HingeLoss"', shapes=[(5, 4)], labels=((5,), 4), loss=True)
case("hinge_l2", 'type: "HingeLoss" hinge_loss_param { norm: L2 } loss_weight: 0.5',
     shapes=[(3, 2, 2, 2)], labels=((3,), 8), loss=True)
case("multinomial_logistic", 'type: "MultinomialLogisticLoss"', shapes=[(5, 4)], labels=((5,), 4),
     inputs=[positive], loss=True)

# Lookup tables and batch routing: integer inputs from the label input.
case("embed", 'type: "Embed" embed_param { num_output: 4 input_dim: 5 }', shapes=[],
     labels=((2, 3), 5), params=[normal(1), normal(1)])
case("embed_no_bias", 'type: "Embed" embed_param { num_output: 3 input_dim: 4 bias_term: false }',
     shapes=[], labels=((7,), 4), params=[normal(1)])
case("batch_reindex", 'type: "BatchReindex"', shapes=[(4, 3, 2)], labels=((6,), 4))
# A free learned blob; the input only gives the Input layer a top.
case("parameter", 'type: "Parameter" parameter_param { shape { dim: 2 dim: 3 dim: 2 } }',
     shapes=[(1, 2)], params=[normal(1)], bottomless=True)
# Spatial pyramid pooling: sizes whose bins need padding at the finer levels.
case("spp_max", 'type: "SPP" spp_param { pyramid_height: 3 }', shapes=[(2, 3, 7, 9)])
case("spp_ave", 'type: "SPP" spp_param { pyramid_height: 3 pool: AVE }', shapes=[(2, 2, 6, 10)])
case("spp_one_level", 'type: "SPP" spp_param { pyramid_height: 1 }', shapes=[(2, 3, 5, 4)])
case("spp_max_ties", 'type: "SPP" spp_param { pyramid_height: 2 }', shapes=[(2, 2, 5, 5)],
     inputs=[np.round])
# A Deconvolution with unequal strides (the tensor ops spread its input onto
# a stride-1 grid).
case("deconv_rect_stride", 'type: "Deconvolution" convolution_param { num_output: 2 kernel_h: 3 kernel_w: 2 '
     'stride_h: 2 stride_w: 1 pad_h: 1 }', shapes=[(2, 3, 3, 4)], params=CONV_W)
# Unequal dilations (the tensor ops spread the kernel onto its extent).
case("conv_rect_dilation", 'type: "Convolution" convolution_param { num_output: 3 kernel_size: 3 '
     'dilation: 1 dilation: 2 pad: 1 stride: 2 }', shapes=[(2, 3, 7, 8)], params=CONV_W)
case("deconv_rect_dilation", 'type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 2 '
     'dilation: 2 dilation: 1 stride: 2 }', shapes=[(2, 3, 3, 4)], params=CONV_W)
# Recurrent layers: T x N x ... sequences with 0/1 continuation flags (the
# label input, second among the bottoms). Without expose_hidden the first
# pass starts from a zero state; with it, h_0 (and c_0) are inputs, which
# Caffe gives no gradient.
case("lstm", 'type: "LSTM" recurrent_param { num_output: 3 }', shapes=[(3, 2, 4)],
     labels=((3, 2), 2), order=[0, 1], params=[normal(0.5), normal(0.5), normal(0.5)])
case("lstm_static_exposed", 'type: "LSTM" recurrent_param { num_output: 3 expose_hidden: true }',
     shapes=[(3, 2, 2, 2), (2, 5), (1, 2, 3), (1, 2, 3)], labels=((3, 2), 2), order=[0, 4, 1, 2, 3],
     params=[normal(0.5), normal(0.5), normal(0.5), normal(0.5)])
case("rnn", 'type: "RNN" recurrent_param { num_output: 3 }', shapes=[(4, 2, 3)],
     labels=((4, 2), 2), order=[0, 1], params=[normal(0.5)] * 5)
case("rnn_static_exposed", 'type: "RNN" recurrent_param { num_output: 2 expose_hidden: true }',
     shapes=[(2, 3, 4), (3, 2), (1, 3, 2)], labels=((2, 3), 2), order=[0, 3, 1, 2],
     params=[normal(0.5)] * 6)
# One cell step; flags of 2 pin down Caffe's forget-gate slope.
case("lstm_unit", 'type: "LSTMUnit"', shapes=[(1, 3, 2), (1, 3, 8)], labels=((1, 3), 3))
# Im2col: a convolution's column matrix as a top (its gradient folds back).
case("im2col", 'type: "Im2col" convolution_param { kernel_size: 3 stride: 2 pad: 1 }', shapes=[(2, 3, 5, 6)])
case("im2col_rect_dilated", 'type: "Im2col" convolution_param { kernel_h: 2 kernel_w: 3 pad_h: 1 pad_w: 0 '
     'stride_h: 1 stride_w: 2 dilation: 2 }', shapes=[(2, 2, 7, 8)])


def shape_text(shape):
    return "shape { " + " ".join(f"dim: {d}" for d in shape) + " }"


def net_text(c, top_shapes):
    """The case's net; `top_shapes` None for the first pass (no losses)."""
    n_x = len(c["shapes"])
    tops = [f"in{i}" for i in range(n_x)]
    shapes = list(c["shapes"])
    if c["labels"]:
        tops.append("label")
        shapes.append(list(c["labels"][0]))
    if top_shapes:
        for k, s in enumerate(top_shapes):
            tops.append(f"w{k}")
            shapes.append(s)
    lines = [f'name: "{c["name"]}"',
             'layer { name: "input" type: "Input" '
             + " ".join(f'top: "{t}"' for t in tops)
             + " input_param { " + " ".join(shape_text(s) for s in shapes) + " } }"]
    for i in range(n_x):
        lines.append(f'layer {{ name: "dx{i}" type: "Bias" bottom: "in{i}" top: "x{i}" '
                     'bias_param { axis: 0 num_axes: -1 } }')
    bottoms = [f"x{i}" for i in range(n_x)] + (["label"] if c["labels"] else [])
    if c["bottomless"]:
        bottoms = []
    if c["order"]:
        bottoms = [bottoms[i] for i in c["order"]]
    n_tops = len(top_shapes) if top_shapes else c.get("n_tops", 1)
    lines.append('layer { name: "under_test" '
                 + " ".join(f'bottom: "{b}"' for b in bottoms) + " "
                 + " ".join(f'top: "t{k}"' for k in range(n_tops)) + " "
                 + c["layer"] + " }")
    if top_shapes and not c["loss"]:
        for k in range(n_tops):
            lines.append(f'layer {{ name: "loss{k}" type: "Eltwise" bottom: "t{k}" bottom: "w{k}" '
                         f'top: "l{k}" eltwise_param {{ operation: PROD }} loss_weight: 1 }}')
    return "\n".join(lines) + "\n"


def build(text, phase, files):
    """The net, with `files` written beside it (paths in a net are
    relative to the working directory, as in Caffe)."""
    for name, a in files.items():
        blob = caffe.io.array_to_blobproto(np.asarray(a, dtype=np.float32))
        with open(name, "wb") as f:
            f.write(blob.SerializeToString())
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write(text)
    net = caffe.Net(f.name, caffe.TRAIN if phase == "TRAIN" else caffe.TEST)
    os.unlink(f.name)
    return net


def n_tops_of(layer):
    if '"Slice"' in layer:
        points = layer.count("slice_point")
        return points + 1 if points else 2
    if '"Split"' in layer:
        return 2
    if '"LSTMUnit"' in layer:
        return 2
    if "expose_hidden: true" in layer:
        return 3 if '"LSTM"' in layer else 2
    return 1



def run(c):
    c["n_tops"] = n_tops_of(c["layer"])
    probe = build(net_text(c, None), c["phase"], c["files"])
    top_shapes = [list(probe.blobs[f"t{k}"].data.shape) for k in range(c["n_tops"])]
    text = net_text(c, None if c["loss"] else top_shapes)
    net = build(text, c["phase"], c["files"])
    feeds = {}
    for i, s in enumerate(c["shapes"]):
        a = RNG.standard_normal(s)
        if c["inputs"] and i < len(c["inputs"]):
            a = c["inputs"][i](a)
        feeds[f"in{i}"] = a
    if c["labels"]:
        shape, classes = c["labels"]
        feeds["label"] = RNG.randint(0, classes, shape).astype(np.float32)
    if not c["loss"]:
        for k, s in enumerate(top_shapes):
            feeds[f"w{k}"] = RNG.standard_normal(s)
    for name, a in feeds.items():
        net.blobs[name].data[...] = a
    params = []
    if "under_test" in net.params:
        blobs = net.params["under_test"]
        if c["filled"]:
            params = [array(b.data) for b in blobs]
        else:
            if c["params"] is None or len(c["params"]) != len(blobs):
                raise SystemExit(f"{c['name']}: give {len(blobs)} parameter fillers")
            for b, fill in zip(blobs, c["params"]):
                b.data[...] = fill(b.data.shape)
                params.append(array(b.data))
    net.forward()
    # The weighted loss, as Net::forward returns it.
    objective = sum(float(np.sum(net.blobs[b].data, dtype=np.float64)) * w
                    for b, w in net.blob_loss_weights.items() if w != 0)
    tops = [array(net.blobs[f"t{k}"].data) for k in range(c["n_tops"])]
    after = None
    if c["after_forward"]:
        after = [array(b.data) for b in net.params["under_test"]]
    net.backward()
    grads = [array(b.diff) for b in net.params.get("under_test", [])]
    input_grads = [array(net.params[f"dx{i}"][0].diff) for i in range(len(c["shapes"]))]
    order = [t for t in net.top_names["input"]]
    return {
        "name": c["name"],
        "phase": c["phase"],
        "prototxt": text,
        "files": {name: array(a) for name, a in c["files"].items()},
        "filled": c["filled"],
        "inputs": [array(feeds[t]) for t in order],
        "params": params,
        "objective": objective,
        "tops": tops,
        "params_after_forward": after,
        "param_grads": grads,
        "input_grads": input_grads,
    }


def main():
    out = sys.argv[1]
    os.chdir(tempfile.mkdtemp())
    results = [run(c) for c in CASES]
    doc = {
        "provenance": "scripts/caffe-golden/layers.py with Caffe "
                      + os.environ.get("CAFFE_VERSION", "(version unknown)")
                      + ", CPU mode, float32",
        "cases": results,
    }
    with open(out, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    print(f"{len(results)} cases -> {out}")


if __name__ == "__main__":
    main()
