#!/usr/bin/env python3
"""Golden numbers for whole model-zoo nets, computed by a real Caffe.

GoogLeNet (bvlc_googlenet's layers, both auxiliary heads) and ResNet-18
(in-place BatchNorm and Scale, projection shortcuts) at their real 224x224
input with an eighth of the channels and no Dropout (Caffe's dropout draws
cannot be replayed), batch 2, TRAIN phase. Weights, inputs and labels come
from formulas both sides compute exactly: parameter blob k (in net order)
element i is `offset + amp * (2u - 1)`, u = hash(i, k) / 2^32 (an integer
hash, so no libm can differ; random-looking, because smooth weights and
images make each convolution a sum that cancels, whose rounding BatchNorm
then scales up: our two code paths then disagree as much as Caffe does);
input element i the same with k = 1000, offset 0 and amp 1; label n is
`n % classes`. The JSON written to argv[1] holds
each net's text, the formula's (offset, amp) per blob, the weighted loss,
and fingerprints (sum, sum of squares, 16 sampled values) of every blob
after the forward pass and of every parameter gradient after the backward
pass. `tests/caffe_nets.rs` replays them.
"""
import json
import math
import os
import sys
import tempfile

import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")
import caffe  # noqa: E402
from golden import fingerprint  # noqa: E402

caffe.set_mode_cpu()
CLASSES = 5


def ch(n):
    return max(1, n // 8)


class Net:
    def __init__(self, name, side):
        self.lines = [f'name: "{name}"',
                      'layer { name: "data" type: "Input" top: "data" top: "label" input_param { '
                      f'shape {{ dim: 2 dim: 3 dim: {side} dim: {side} }} shape {{ dim: 2 }} }} }}']

    def add(self, text):
        self.lines.append("layer { " + text + " }")

    def conv(self, name, bottom, n, k, s=1, p=0, relu=True, bias=True):
        extra = "" if bias else " bias_term: false"
        self.add(f'name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
                 f'convolution_param {{ num_output: {n} kernel_size: {k} stride: {s} pad: {p}{extra} }}')
        if relu:
            self.relu(name)
        return name

    def relu(self, blob):
        self.add(f'name: "{blob}/relu" type: "ReLU" bottom: "{blob}" top: "{blob}"')

    def pool(self, name, bottom, kind, k, s, p=0):
        self.add(f'name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}" '
                 f'pooling_param {{ pool: {kind} kernel_size: {k} stride: {s} pad: {p} }}')
        return name

    def lrn(self, name, bottom):
        self.add(f'name: "{name}" type: "LRN" bottom: "{bottom}" top: "{name}" '
                 'lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }')
        return name

    def fc(self, name, bottom, n, relu=False):
        self.add(f'name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}" '
                 f'inner_product_param {{ num_output: {n} }}')
        if relu:
            self.relu(name)
        return name

    def loss(self, name, bottom, weight):
        self.add(f'name: "{name}" type: "SoftmaxWithLoss" bottom: "{bottom}" bottom: "label" '
                 f'top: "{name}" loss_weight: {weight}')

    def text(self):
        return "\n".join(self.lines) + "\n"


def googlenet():
    n = Net("GoogLeNet-eighth", 224)
    x = n.conv("conv1/7x7_s2", "data", ch(64), 7, 2, 3)
    x = n.pool("pool1/3x3_s2", x, "MAX", 3, 2)
    x = n.lrn("pool1/norm1", x)
    x = n.conv("conv2/3x3_reduce", x, ch(64), 1)
    x = n.conv("conv2/3x3", x, ch(192), 3, 1, 1)
    x = n.lrn("conv2/norm2", x)
    x = n.pool("pool2/3x3_s2", x, "MAX", 3, 2)

    def inception(name, x, a, b1, b2, c1, c2, d):
        p = f"inception_{name}/"
        one = n.conv(p + "1x1", x, ch(a), 1)
        three = n.conv(p + "3x3", n.conv(p + "3x3_reduce", x, ch(b1), 1), ch(b2), 3, 1, 1)
        five = n.conv(p + "5x5", n.conv(p + "5x5_reduce", x, ch(c1), 1), ch(c2), 5, 1, 2)
        proj = n.conv(p + "pool_proj", n.pool(p + "pool", x, "MAX", 3, 1, 1), ch(d), 1)
        n.add(f'name: "{p}output" type: "Concat" bottom: "{one}" bottom: "{three}" '
              f'bottom: "{five}" bottom: "{proj}" top: "{p}output"')
        return p + "output"

    def head(name, x, weight):
        x = n.pool(f"{name}/ave_pool", x, "AVE", 5, 3)
        x = n.conv(f"{name}/conv", x, ch(128), 1)
        x = n.fc(f"{name}/fc", x, ch(1024), relu=True)
        n.loss(f"{name}/loss", n.fc(f"{name}/classifier", x, CLASSES), weight)

    x = inception("3a", x, 64, 96, 128, 16, 32, 32)
    x = inception("3b", x, 128, 128, 192, 32, 96, 64)
    x = n.pool("pool3/3x3_s2", x, "MAX", 3, 2)
    x = inception("4a", x, 192, 96, 208, 16, 48, 64)
    head("loss1", x, 0.3)
    x = inception("4b", x, 160, 112, 224, 24, 64, 64)
    x = inception("4c", x, 128, 128, 256, 24, 64, 64)
    x = inception("4d", x, 112, 144, 288, 32, 64, 64)
    head("loss2", x, 0.3)
    x = inception("4e", x, 256, 160, 320, 32, 128, 128)
    x = n.pool("pool4/3x3_s2", x, "MAX", 3, 2)
    x = inception("5a", x, 256, 160, 320, 32, 128, 128)
    x = inception("5b", x, 384, 192, 384, 48, 128, 128)
    x = n.pool("pool5/7x7_s1", x, "AVE", 7, 1)
    n.loss("loss3/loss3", n.fc("loss3/classifier", x, CLASSES), 1)
    return n.text()


def resnet18():
    n = Net("ResNet-18-eighth", 224)

    def conv_bn(name, bottom, c, k, s, relu):
        n.conv(name, bottom, c, k, s, k // 2, relu=False, bias=False)
        n.add(f'name: "bn_{name}" type: "BatchNorm" bottom: "{name}" top: "{name}"')
        n.add(f'name: "scale_{name}" type: "Scale" bottom: "{name}" top: "{name}" '
              'scale_param { bias_term: true }')
        if relu:
            n.relu(name)
        return name

    x = conv_bn("conv1", "data", ch(64), 7, 2, True)
    x = n.pool("pool1", x, "MAX", 3, 2)
    for stage, c in [(2, 64), (3, 128), (4, 256), (5, 512)]:
        for block in "ab":
            name = f"res{stage}{block}"
            s = 2 if stage > 2 and block == "a" else 1
            short = conv_bn(f"{name}_branch1", x, ch(c), 1, s, False) if s == 2 else x
            y = conv_bn(f"{name}_branch2a", x, ch(c), 3, s, True)
            y = conv_bn(f"{name}_branch2b", y, ch(c), 3, 1, False)
            n.add(f'name: "{name}" type: "Eltwise" bottom: "{short}" bottom: "{y}" top: "{name}"')
            n.relu(name)
            x = name
    n.add(f'name: "pool5" type: "Pooling" bottom: "{x}" top: "pool5" '
          'pooling_param { pool: AVE global_pooling: true }')
    n.loss("loss", n.fc("fc", "pool5", CLASSES), 1)
    return n.text()



def formula(size, offset, amp, k):
    """offset + amp * (2u - 1), u from a 32-bit integer hash of (i, k)."""
    m = np.uint64(0xFFFFFFFF)
    h = (np.arange(size, dtype=np.uint64) * np.uint64(2654435761)
         + np.uint64(k * 40503 + 12345)) & m
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(2246822519)) & m
    h ^= h >> np.uint64(13)
    u = h.astype(np.float64) / 4294967296.0
    return (offset + amp * (2.0 * u - 1.0)).astype(np.float32)


def run(name, text):
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write(text)
    net = caffe.Net(f.name, caffe.TRAIN)
    os.unlink(f.name)
    layer_types = {l: net.layers[i].type for i, l in enumerate(net._layer_names)}
    params, k = [], 0
    for layer, blobs in net.params.items():
        for j, b in enumerate(blobs):
            ty = layer_types[layer]
            if ty == "BatchNorm":
                offset, amp = 0.0, 0.0  # running sums, set by the pass
            elif ty == "Scale":
                offset, amp = (1.0, 0.2) if j == 0 else (0.0, 0.2)
            elif b.data.ndim >= 2:
                fan_in = int(np.prod(b.data.shape[1:]))
                offset, amp = 0.0, math.sqrt(6.0 / fan_in)  # He's variance
            else:
                offset, amp = 0.0, 0.05
            b.data[...] = formula(b.data.size, offset, amp, k).reshape(b.data.shape)
            params.append({"layer": layer, "index": j, "offset": offset, "amp": amp})
            k += 1
    data = net.blobs["data"]
    data.data[...] = formula(data.data.size, 0.0, 1.0, 1000).reshape(data.data.shape)
    net.blobs["label"].data[...] = np.arange(2) % CLASSES
    net.forward()
    loss = sum(float(np.sum(net.blobs[b].data, dtype=np.float64)) * w
               for b, w in net.blob_loss_weights.items() if w != 0)
    # Caffe's own Split layers (inserted where a blob has several readers) have no twin here.
    blobs = {b: fingerprint(v.data, 16) for b, v in net.blobs.items()
             if b not in ("data", "label") and "_split_" not in b}
    net.backward()
    grads = [{"layer": p["layer"], "index": p["index"], **fingerprint(net.params[p["layer"]][p["index"]].diff, 16)}
             for p in params]
    return {"name": name, "prototxt": text, "params": params, "loss": loss,
            "blobs": blobs, "grads": grads}


def main():
    nets = [run("googlenet", googlenet()), run("resnet18", resnet18())]
    doc = {"provenance": "scripts/caffe-golden/nets.py with Caffe "
                         + os.environ.get("CAFFE_VERSION", "(version unknown)") + ", CPU mode",
           "nets": nets}
    with open(sys.argv[1], "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    print(f"{len(nets)} nets -> {sys.argv[1]}")


if __name__ == "__main__":
    main()
