#!/usr/bin/env python3
"""Golden numbers for Caffe's solvers, computed by a real Caffe (pycaffe).

Run in a copy of ../shared/caffe-ref/fixtures/tiny-net (see run.sh). For
each variant below, a solver prototxt (the variant's lines after `net`) is
run for ITERS iterations from snapshots/init_iter_0.caffemodel, and the JSON
written to argv[1] holds, per variant: the solver text, the loss of each
iteration (the net's loss blob after each step; left out with iter_size > 1,
where Caffe reports an average pycaffe does not expose) and a fingerprint of
every parameter blob after the last step (sum, sum of squares, and the values
at eight evenly spaced positions). `tests/caffe_solvers.rs` replays them.
"""
import json
import os
import sys

import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")
import caffe  # noqa: E402
from golden import fingerprint  # noqa: E402

caffe.set_mode_cpu()
ITERS = 12

BASE = 'net: "train_val.prototxt"\nrandom_seed: 1701\nsolver_mode: CPU\ndisplay: 0\n'

def fields(text):
    """`key: value` pairs separated by spaces, one per line (strings quoted)."""
    words = text.split()
    return "".join(f"{k} {v}\n" for k, v in zip(words[::2], words[1::2]))


# A Siamese net (Caffe's mnist_siamese pattern) on the tiny-net data: each
# batch of 8 is sliced into pairs (image i, image i + 4), both halves run
# through the same conv1 and feat blobs (`param { name: … }`, so also
# filled twice from random_seed, the second fill discarded), and a
# ContrastiveLoss takes the first half's labels as the similarity flags
# (non-zero: similar). feat has no bias: a shared one cancels out of `a - b`,
# its gradient is 0 up to rounding noise.
SIAMESE = """name: "siamese"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { mean_file: "data/color64_mean.binaryproto" scale: 0.0078125 }
  data_param { source: "data/color64_lmdb" batch_size: 8 backend: LMDB } }
layer { name: "pair" type: "Slice" bottom: "data" top: "data_a" top: "data_b" slice_param { axis: 0 } }
layer { name: "flags" type: "Slice" bottom: "label" top: "sim" top: "label_b" slice_param { axis: 0 } }
layer { name: "silence" type: "Silence" bottom: "label_b" }
""" + "".join(
    f"""layer {{ name: "conv1{s}" type: "Convolution" bottom: "data_{b}" top: "conv1{s}"
  param {{ name: "conv1_w" }} param {{ name: "conv1_b" lr_mult: 2 }}
  convolution_param {{ num_output: 8 kernel_size: 5 stride: 4
    weight_filler {{ type: "gaussian" std: 0.05 }} bias_filler {{ type: "constant" value: 0.1 }} }} }}
layer {{ name: "relu1{s}" type: "ReLU" bottom: "conv1{s}" top: "conv1{s}" }}
layer {{ name: "feat{s}" type: "InnerProduct" bottom: "conv1{s}" top: "feat{s}"
  param {{ name: "feat_w" }}
  inner_product_param {{ num_output: 4 bias_term: false weight_filler {{ type: "xavier" }} }} }}
""" for s, b in (("", "a"), ("_p", "b"))) + """layer { name: "loss" type: "ContrastiveLoss" bottom: "feat" bottom: "feat_p" bottom: "sim" top: "loss"
  contrastive_loss_param { margin: 2 } }
"""

VARIANTS = {
    "sgd_multistep": 'base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "multistep" '
                     'gamma: 0.5 stepvalue: 3 stepvalue: 7',
    "sgd_exp": 'base_lr: 0.01 momentum: 0.9 lr_policy: "exp" gamma: 0.9',
    "sgd_inv": 'base_lr: 0.01 momentum: 0.8 lr_policy: "inv" gamma: 0.1 power: 0.75',
    "sgd_sigmoid": 'base_lr: 0.01 momentum: 0.9 lr_policy: "sigmoid" gamma: 0.5 stepsize: 6',
    "sgd_poly": f'base_lr: 0.02 momentum: 0.9 lr_policy: "poly" power: 2 max_iter: {ITERS}',
    "sgd_l1": 'base_lr: 0.01 momentum: 0.9 weight_decay: 0.001 regularization_type: "L1" lr_policy: "fixed"',
    "sgd_clip": 'base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 clip_gradients: 0.5 lr_policy: "fixed"',
    "sgd_iter_size": 'base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 iter_size: 2 lr_policy: "fixed"',
    "nesterov": 'type: "Nesterov" base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "step" '
                'gamma: 0.1 stepsize: 8',
    "adagrad": 'type: "AdaGrad" base_lr: 0.01 delta: 1e-7 weight_decay: 0.0005 lr_policy: "fixed"',
    # RMSProp's step is ~rate * d / delta for gradients below delta: a
    # small delta magnifies float rounding in near-zero gradients (Caffe and
    # we differ by 2e-3 in loss after 8 steps with delta 1e-6, rate 1e-3).
    "rmsprop": 'type: "RMSProp" base_lr: 0.0005 rms_decay: 0.9 delta: 1e-3 weight_decay: 0.0005 '
               'lr_policy: "fixed"',
    "adadelta": 'type: "AdaDelta" base_lr: 1.0 momentum: 0.95 delta: 1e-6 weight_decay: 0.0005 '
                'lr_policy: "fixed"',
    "adam": 'type: "Adam" base_lr: 0.001 momentum: 0.9 momentum2: 0.999 delta: 1e-8 '
            'weight_decay: 0.0005 lr_policy: "fixed"',
    "adam_iter_size": 'type: "Adam" base_lr: 0.002 momentum: 0.8 momentum2: 0.99 iter_size: 2 '
                      'lr_policy: "step" gamma: 0.5 stepsize: 4',
    # The net edited (inline as net_param): fc6 takes no gradient to its
    # bottom, so conv2 and conv3 get none and only decay.
    "propagate_down": ('base_lr: 0.01 momentum: 0.9 weight_decay: 0.005 lr_policy: "fixed"',
                       lambda net: net.replace('name: "fc6"', 'name: "fc6"\n  propagate_down: false', 1)),
    # relu3 takes none: the same cut one layer up.
    "propagate_down_relu": ('base_lr: 0.01 momentum: 0.9 weight_decay: 0.005 lr_policy: "fixed"',
                            lambda net: net.replace('name: "relu3" type: "ReLU"',
                                                    'name: "relu3" type: "ReLU" propagate_down: false', 1)),
    # Random crops (59 of 64 keeps fc6's input 7x7) and mirrors in TRAIN, a
    # centred crop in TEST: the draws come from random_seed, as Caffe's do.
    "sgd_mirror_crop": ('base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed"',
                        lambda net: net.replace("mirror: false", "mirror: true\n    crop_size: 59", 1)
                        .replace("mirror: false", "mirror: false\n    crop_size: 59", 1)),
    # No weights copied: the net starts from its fillers, drawn from another
    # random_seed after the data layer's draws, with random crops and mirrors.
    "sgd_from_fillers": ('random_seed: 5 base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed"',
                         lambda net: net.replace("mirror: false", "mirror: true\n    crop_size: 60", 1)
                         .replace("mirror: false", "mirror: false\n    crop_size: 60", 1),
                         False),
    # Dropout after fc6 and fc7 (ratios 0.5 and 0.3): Caffe's CPU masks come
    # from the same generator, after the train and test nets' set-up draws.
    "sgd_dropout": ('base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed" '
                    'test_iter: 3 test_interval: 5',
                    lambda net: net.replace('layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }',
                                            'layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }\n'
                                            'layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" '
                                            'dropout_param { dropout_ratio: 0.5 } }', 1)
                    .replace('layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }',
                             'layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }\n'
                             'layer { name: "drop7" type: "Dropout" bottom: "fc7" top: "fc7" '
                             'dropout_param { dropout_ratio: 0.3 } }', 1)),
    # Shared parameters (`param { name: … }`): fc7b, a second InnerProduct
    # on fc7, shares fc7's weights and bias, so their gradients add up. fc7
    # gives no lr_mult or decay_mult, so fc7b's (3 and 0.5, 6 and 0) are
    # the ones the solver applies; fc7 still computes its gradients (its
    # own lr_mult is the default 1). The weights copy into fc7 reaches fc7b.
    "shared_params": ('base_lr: 0.01 momentum: 0.9 weight_decay: 0.005 lr_policy: "fixed"',
                      lambda net: net.replace(
                          'top: "fc7"\n  param { lr_mult: 1 decay_mult: 1 }\n  param { lr_mult: 2 decay_mult: 0 }',
                          'top: "fc7"\n  param { name: "fc7_w" }\n  param { name: "fc7_b" }', 1)
                      .replace('layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }',
                               'layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }\n'
                               'layer { name: "fc7b" type: "InnerProduct" bottom: "fc7" top: "fc7b" '
                               'param { name: "fc7_w" lr_mult: 3 decay_mult: 0.5 } '
                               'param { name: "fc7_b" lr_mult: 6 decay_mult: 0 } '
                               'inner_product_param { num_output: 64 '
                               'weight_filler { type: "gaussian" std: 0.05 } '
                               'bias_filler { type: "constant" value: 0.1 } } }\n'
                               'layer { name: "relu7b" type: "ReLU" bottom: "fc7b" top: "fc7b" }', 1)
                      .replace('bottom: "fc7"\n  top: "fc8"', 'bottom: "fc7b"\n  top: "fc8"', 1)),
    # PERMISSIVE sharing: fc7's 64x64 weights as the 64x64x1x1 filters of a
    # 1x1 convolution over fc7 reshaped to 8x64x1x1 (the same count, another
    # shape); the bias is shared strictly, the lr_mults agree with fc7's.
    "shared_permissive": ('base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed"',
                          lambda net: net.replace(
                              'top: "fc7"\n  param { lr_mult: 1 decay_mult: 1 }\n  param { lr_mult: 2 decay_mult: 0 }',
                              'top: "fc7"\n  param { name: "w7" lr_mult: 1 decay_mult: 1 }\n'
                              '  param { name: "b7" lr_mult: 2 decay_mult: 0 }', 1)
                          .replace('layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }',
                                   'layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }\n'
                                   'layer { name: "fc7r" type: "Reshape" bottom: "fc7" top: "fc7r" '
                                   'reshape_param { shape { dim: 0 dim: -1 dim: 1 dim: 1 } } }\n'
                                   'layer { name: "fc7c" type: "Convolution" bottom: "fc7r" top: "fc7c" '
                                   'param { name: "w7" lr_mult: 1 share_mode: PERMISSIVE } param { name: "b7" } '
                                   'convolution_param { num_output: 64 kernel_size: 1 '
                                   'weight_filler { type: "gaussian" std: 0.05 } } }\n'
                                   'layer { name: "relu7c" type: "ReLU" bottom: "fc7c" top: "fc7c" }', 1)
                          .replace('bottom: "fc7"\n  top: "fc8"', 'bottom: "fc7c"\n  top: "fc8"', 1)),
    # Spatial pyramid pooling (1, 2 and 4 bins a side, the finest padded)
    # between conv3 and a new fc6, which starts from its filler.
    "spp": ('base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed"',
            lambda net: net.replace('layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }',
                                    'layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }\n'
                                    'layer { name: "spp3" type: "SPP" bottom: "conv3" top: "spp3" '
                                    'spp_param { pyramid_height: 3 } }', 1)
            .replace('name: "fc6"\n  type: "InnerProduct"\n  bottom: "conv3"',
                     'name: "fc6s"\n  type: "InnerProduct"\n  bottom: "spp3"', 1)),
    # Embed, Parameter and BatchReindex: fc8 reads the sum of fc7 with its
    # items reordered by the labels (each below the batch size), a learned
    # vector per label, and a free learned blob (which starts at zero).
    "embed_reindex": ('base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed"',
                      lambda net: net.replace('layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }',
                                              'layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }\n'
                                              'layer { name: "reindex" type: "BatchReindex" bottom: "fc7" '
                                              'bottom: "label" top: "fc7r" }\n'
                                              'layer { name: "emb" type: "Embed" bottom: "label" top: "emb" '
                                              'embed_param { num_output: 64 input_dim: 4 '
                                              'weight_filler { type: "gaussian" std: 0.1 } '
                                              'bias_filler { type: "constant" value: 0.05 } } }\n'
                                              'layer { name: "free" type: "Parameter" top: "free" '
                                              'parameter_param { shape { dim: 8 dim: 64 } } }\n'
                                              'layer { name: "sum7" type: "Eltwise" bottom: "fc7r" bottom: "emb" '
                                              'bottom: "free" top: "fc7s" }', 1)
                      .replace('bottom: "fc7"\n  top: "fc8"', 'bottom: "fc7s"\n  top: "fc8"', 1)),
    "siamese": ('random_seed: 3 base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed"',
                lambda net: SIAMESE, False),
    # Recurrent layers over the batch read as 4 timesteps of 2 streams, the
    # labels (0-3) as continuation flags, and fc8 on every timestep's
    # output. The hidden state carries from one batch to the next (and the
    # test net keeps its own), as in Caffe.
    "lstm": ('base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed"',
             lambda net: recurrent(net, 'type: "LSTM" recurrent_param { num_output: 64 '
                                        'weight_filler { type: "uniform" min: -0.08 max: 0.08 } '
                                        'bias_filler { type: "constant" value: 0.1 } }')),
    "rnn": ('base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed"',
            lambda net: recurrent(net, 'type: "RNN" recurrent_param { num_output: 64 '
                                       'weight_filler { type: "gaussian" std: 0.1 } '
                                       'bias_filler { type: "constant" value: 0.1 } }')),
    # LRCN's LSTM language model (coco_caption's lstm_language_model.prototxt)
    # on the labels read as 4 timesteps of 2 "sentences" of words 0-3:
    # Embed, LSTM, a per-timestep InnerProduct (axis 2) and SoftmaxWithLoss
    # and Accuracy over axis 2 with word 0 as the ignored padding label.
    "language_model": ('base_lr: 0.1 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed" '
                       'clip_gradients: 10', lambda net: language_model(net), False),
    # Filter (a multi-task net's head trained only on the items that have
    # its label): fc8, a Dropout before it and the loss see only the images
    # whose label is not 0, so the item count changes from batch to batch
    # (and with it how many numbers Dropout draws); the images left out get
    # a zero gradient through fc7 and below.
    "filter": ('base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed"',
               lambda net: filtered(net)),
    # The whole net on the images whose label is not 0: a Filter on the data
    # itself, so the convolutions, poolings and LRNs see 2, 8 and 8 images.
    "filter_images": ('base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed"',
                      lambda net: filtered_images(net)),
}



def recurrent(net, layer):
    """The tiny net with `layer` between fc7 and fc8 (see VARIANTS)."""
    return (net.replace('layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }',
                        'layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }\n'
                        'layer { name: "seq" type: "Reshape" bottom: "fc7" top: "seq" '
                        'reshape_param { shape { dim: 4 dim: 2 dim: -1 } } }\n'
                        'layer { name: "cont" type: "Reshape" bottom: "label" top: "cont" '
                        'reshape_param { shape { dim: 4 dim: 2 } } }\n'
                        'layer { name: "rec" bottom: "seq" bottom: "cont" top: "rec" ' + layer + ' }\n'
                        'layer { name: "rec_flat" type: "Reshape" bottom: "rec" top: "rec_flat" '
                        'reshape_param { shape { dim: 8 dim: -1 } } }', 1)
            .replace('bottom: "fc7"\n  top: "fc8"', 'bottom: "rec_flat"\n  top: "fc8"', 1))


def filtered(net):
    """The tiny net with fc8 and its loss behind a Filter (see VARIANTS)."""
    return (net.replace('layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }',
                        'layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }\n'
                        'layer { name: "select" type: "Filter" bottom: "fc7" bottom: "label" '
                        'bottom: "label" top: "fc7f" top: "labelf" }\n'
                        'layer { name: "drop7f" type: "Dropout" bottom: "fc7f" top: "fc7f" '
                        'dropout_param { dropout_ratio: 0.3 } }', 1)
            .replace('bottom: "fc7"\n  top: "fc8"', 'bottom: "fc7f"\n  top: "fc8"', 1)
            .replace('bottom: "fc8"\n  bottom: "label"', 'bottom: "fc8"\n  bottom: "labelf"')
            # labelf comes from a layer that runs backward, so Caffe would
            # pass the loss a gradient for it (and abort) without this.
            .replace('top: "loss"\n', 'top: "loss"\n  propagate_down: true\n  propagate_down: false\n', 1))


def filtered_images(net):
    """The tiny net on the images a Filter keeps (see VARIANTS)."""
    return (net.replace('layer {\n  name: "conv1"',
                        'layer { name: "select" type: "Filter" bottom: "data" bottom: "label" bottom: "label" '
                        'top: "dataf" top: "labelf" }\nlayer {\n  name: "conv1"', 1)
            .replace('bottom: "data"\n  top: "conv1"', 'bottom: "dataf"\n  top: "conv1"', 1)
            .replace('bottom: "fc8"\n  bottom: "label"', 'bottom: "fc8"\n  bottom: "labelf"'))


def language_model(net):
    """The tiny net's data layers, then an LSTM language model on the labels."""
    data = net[:net.index('layer {\n  name: "conv1"')]
    seq = lambda top: (f'layer {{ name: "{top}" type: "Reshape" bottom: "label" top: "{top}" '
                       'reshape_param { shape { dim: 4 dim: 2 } } }\n')
    uniform = 'weight_filler { type: "uniform" min: -0.08 max: 0.08 }'
    return (data + 'layer { name: "quiet" type: "Silence" bottom: "data" }\n'
            + seq("words") + seq("cont") + seq("target")
            + 'layer { name: "embed" type: "Embed" bottom: "words" top: "embedded" '
              f'embed_param {{ num_output: 16 input_dim: 4 bias_term: false {uniform} }} }}\n'
            + 'layer { name: "lstm1" type: "LSTM" bottom: "embedded" bottom: "cont" top: "lstm1" '
              f'recurrent_param {{ num_output: 32 {uniform} bias_filler {{ type: "constant" value: 0 }} }} }}\n'
            + 'layer { name: "predict" type: "InnerProduct" bottom: "lstm1" top: "predict" '
              f'inner_product_param {{ num_output: 4 axis: 2 {uniform} bias_filler {{ type: "constant" value: 0 }} }} }}\n'
            + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "predict" bottom: "target" top: "loss" '
              'loss_param { ignore_label: 0 } softmax_param { axis: 2 } }\n'
            + 'layer { name: "accuracy" type: "Accuracy" bottom: "predict" bottom: "target" top: "accuracy" '
              'include { phase: TEST } accuracy_param { axis: 2 ignore_label: 0 } }\n')


def run(name, variant):
    body, edit, copy = (variant + (True,))[:3] if isinstance(variant, tuple) else (variant, None, True)
    text = BASE + fields(body)
    if "random_seed" in body:
        text = text.replace("random_seed: 1701\n", "", 1)
    if edit:
        original = open("train_val.prototxt").read()
        net = edit(original)
        assert net != original
        text = text.replace('net: "train_val.prototxt"\n', "net_param {\n" + net + "}\n")
    path = f"solver_{name}.prototxt"
    with open(path, "w") as f:
        f.write(text)
    solver = caffe.get_solver(path)
    if copy:
        solver.net.copy_from("snapshots/init_iter_0.caffemodel")
    losses = []
    for _ in range(ITERS):
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
    iter_size = "iter_size" in body
    params = [{"layer": layer, "index": i, **fingerprint(b.data, 8)}
              for layer, blobs in solver.net.params.items() for i, b in enumerate(blobs)]
    os.unlink(path)
    return {"name": name, "solver": text, "iterations": ITERS, "init_weights": copy,
            "losses": None if iter_size else losses, "params": params}


def main():
    results = [run(n, b) for n, b in VARIANTS.items()]
    doc = {"provenance": "scripts/caffe-golden/solvers.py with Caffe "
                         + os.environ.get("CAFFE_VERSION", "(version unknown)")
                         + ", CPU mode, on the tiny-net fixture from init_iter_0.caffemodel",
           "variants": results}
    with open(sys.argv[1], "w") as f:
        json.dump(doc, f, indent=1)
    print(f"{len(results)} solver variants -> {sys.argv[1]}")


if __name__ == "__main__":
    main()
