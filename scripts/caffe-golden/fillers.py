#!/usr/bin/env python3
"""Golden numbers for Caffe's fillers, computed by a real Caffe.

Run with ../shared/caffe-ref/fixtures as the working directory (see
run.sh). Each case sets Caffe's random seed, builds a TRAIN net of layers
with fillers (after a data layer, whose set-up draws come first, in some
cases) and records every parameter blob as Caffe filled it: its shape, the
SHA-256 of its float32 bytes (so a single differing value shows) and a
fingerprint to read. `tests/caffe_fillers.rs` builds the same nets from the
same seeds and expects the very same bytes.
"""
import hashlib
import json
import os
import sys
import tempfile

import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")
import caffe  # noqa: E402
from golden import fingerprint  # noqa: E402

caffe.set_mode_cpu()

INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 9 } } }\n'
LMDB = ('layer { name: "data" type: "Data" top: "data" top: "label" '
        'transform_param { mirror: true crop_size: 9 } '
        'data_param { source: "tiny-net/data/color64_lmdb" batch_size: 2 backend: LMDB } }\n')


def ip(name, bottom, n, weight, bias=None):
    b = f" bias_filler {{ {bias} }}" if bias else ""
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}" '
            f'inner_product_param {{ num_output: {n} weight_filler {{ {weight} }}{b} }} }}\n')


def conv(name, bottom, n, weight, bias=None, extra="", kind="Convolution"):
    b = f" bias_filler {{ {bias} }}" if bias else ""
    return (f'layer {{ name: "{name}" type: "{kind}" bottom: "{bottom}" top: "{name}" '
            f'convolution_param {{ num_output: {n} kernel_size: 3 {extra} weight_filler {{ {weight} }}{b} }} }}\n')


CASES = {
    # Large spreads and 60,000 values: thousands of ziggurat rejections and
    # dozens of draws from the normal's tail.
    "gaussian": (1701, INPUT + ip("fc", "data", 250, 'type: "gaussian" std: 0.7 mean: 0.1',
                                  'type: "gaussian" std: 2'), ),
    "uniform": (7, INPUT + conv("conv", "data", 16, 'type: "uniform" min: -0.3 max: 0.5',
                                'type: "uniform" min: 0 max: 1'), ),
    "xavier_and_msra": (0, INPUT
                        + conv("c1", "data", 8, 'type: "xavier"')
                        + conv("c2", "c1", 6, 'type: "xavier" variance_norm: AVERAGE', extra="pad: 1")
                        + conv("c3", "c2", 5, 'type: "xavier" variance_norm: FAN_OUT', extra="pad: 1")
                        + conv("c4", "c3", 4, 'type: "msra"', extra="pad: 1")
                        + conv("c5", "c4", 4, 'type: "msra" variance_norm: FAN_OUT', extra="pad: 1",
                               bias='type: "msra"')),
    "positive_unitball_and_sparse": (31337, INPUT
                                     + ip("unit", "data", 20, 'type: "positive_unitball"')
                                     + ip("sparse", "unit", 64, 'type: "gaussian" std: 1 sparse: 5')),
    "prelu_scale_bias_deconv": (99, INPUT
                                + 'layer { name: "pr" type: "PReLU" bottom: "data" top: "pr" '
                                  'prelu_param { filler { type: "gaussian" std: 0.3 } } }\n'
                                + 'layer { name: "sc" type: "Scale" bottom: "pr" top: "sc" '
                                  'scale_param { filler { type: "uniform" min: 0.5 max: 1.5 } bias_term: true '
                                  'bias_filler { type: "gaussian" std: 0.1 } } }\n'
                                + 'layer { name: "bi" type: "Bias" bottom: "sc" top: "bi" '
                                  'bias_param { filler { type: "xavier" } } }\n'
                                + conv("de", "bi", 4, 'type: "msra"', bias='type: "uniform" min: -1 max: 1',
                                       extra="stride: 2", kind="Deconvolution")),
    # The data layer draws first (its transformer's seeds and its thread's).
    "after_a_data_layer": (4242, LMDB + conv("conv", "data", 12, 'type: "gaussian" std: 0.05',
                                             'type: "constant" value: 0.2')
                           + ip("fc", "conv", 10, 'type: "xavier"', 'type: "gaussian" std: 0.01')),
}


def run(name, seed, text):
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write(f'name: "{name}"\n' + text)
    caffe.set_random_seed(seed)
    net = caffe.Net(f.name, caffe.TRAIN)
    os.unlink(f.name)
    params = []
    for layer, blobs in net.params.items():
        for i, b in enumerate(blobs):
            data = np.ascontiguousarray(b.data, dtype="<f4")
            params.append({"layer": layer, "index": i, "shape": list(data.shape),
                           "sha256": hashlib.sha256(data.tobytes()).hexdigest(),
                           **fingerprint(data, 8)})
    return {"name": name, "seed": seed, "prototxt": f'name: "{name}"\n' + text, "params": params}


def main():
    results = [run(n, seed, text) for n, (seed, text) in CASES.items()]
    doc = {"provenance": "scripts/caffe-golden/fillers.py with Caffe "
                         + os.environ.get("CAFFE_VERSION", "(version unknown)")
                         + ", CPU mode, TRAIN phase, in ../shared/caffe-ref/fixtures",
           "cases": results}
    with open(sys.argv[1], "w") as f:
        json.dump(doc, f, indent=1)
    print(f"{len(results)} filler cases -> {sys.argv[1]}")


if __name__ == "__main__":
    main()
