#!/usr/bin/env python3
"""Golden numbers for a class score's gradient at an inner blob (what
Grad-CAM and `explain` use), computed by a real Caffe (pycaffe).

Run in a copy of ../shared/caffe-ref/fixtures/tiny-net (see run.sh). The
tiny net's TEST phase with `force_backward: true` and the iteration-30
weights reads the first batch of 8 records of its LMDB; each image's fc8
gradient is one-hot at its best class (the first maximum), and
`backward(start="fc8", end="fc6")` leaves in conv3's diff the gradient of
that class score with respect to conv3 after its in-place ReLU (relu3 has
not run backward). The JSON written to argv[1] holds the classes, conv3's
values and gradient (fingerprints), and each image's Grad-CAM map: the
gradient averaged over the 7x7 positions per channel, the channels weighed
by it and summed, negatives set to 0 (Selvaraju et al. 2017), in f64.
`tests/explain.rs` replays them.
"""
import json
import os
import sys

import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")
import caffe  # noqa: E402
from golden import array, fingerprint  # noqa: E402

caffe.set_mode_cpu()


def main():
    text = "force_backward: true\n" + open("train_val.prototxt").read()
    with open("gradcam.prototxt", "w") as f:
        f.write(text)
    net = caffe.Net("gradcam.prototxt", caffe.TEST, weights="snapshots/tiny_iter_30.caffemodel")
    os.unlink("gradcam.prototxt")
    net.forward()
    scores = net.blobs["fc8"].data.copy()
    classes = [int(np.argmax(s)) for s in scores]
    net.blobs["fc8"].diff[...] = 0
    for i, c in enumerate(classes):
        net.blobs["fc8"].diff[i, c] = 1
    net.backward(start="fc8", end="fc6")
    a = net.blobs["conv3"].data.astype(np.float64)
    g = net.blobs["conv3"].diff.astype(np.float64)
    alpha = g.mean(axis=(2, 3))
    cams = np.maximum((alpha[:, :, None, None] * a).sum(axis=1), 0)
    doc = {
        "provenance": "scripts/caffe-golden/gradcam.py with Caffe "
                      + os.environ.get("CAFFE_VERSION", "(version unknown)") + ", CPU mode, float32",
        "weights": "snapshots/tiny_iter_30.caffemodel",
        "scores": array(scores),
        "classes": classes,
        "conv3": fingerprint(a, 16),
        "conv3_diff": fingerprint(g, 16),
        "cams": array(cams),
    }
    with open(sys.argv[1], "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    print(f"Grad-CAM of {len(classes)} images -> {sys.argv[1]}")


if __name__ == "__main__":
    main()
