#!/usr/bin/env python3
"""Golden numbers for Caffe's data layers, computed by a real Caffe.

Run with ../shared/caffe-ref/fixtures as the working directory (see
run.sh). Each case is a net of one deterministic data layer (TEST phase:
no random crop or mirror, no shuffling) over the fixture images or the
tiny-net LMDB; the JSON written to argv[1] holds, for each of the first
BATCHES batches, the labels and a fingerprint of the data blob (sum, sum of
squares, the values at 64 evenly spaced positions). `tests/caffe_data.rs`
replays them. ImageData decodes and resizes with the OpenCV Caffe links
(4.5 in Debian bullseye), so this also checks our decoders and resize.
"""
import json
import os
import sys
import tempfile

import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")
import caffe  # noqa: E402
from golden import fingerprint  # noqa: E402

caffe.set_mode_cpu()
BATCHES = 4  # 3 batches of 8 cover the 24 images; the 4th wraps around

LMDB = 'type: "Data" data_param { source: "tiny-net/data/color64_lmdb" batch_size: 8 backend: LMDB }'


def image_data(params):
    return ('type: "ImageData" image_data_param { source: "images/list.txt" root_folder: "images/" '
            f'batch_size: 8 {params} }}')


CASES = {
    "lmdb_mean_file": (LMDB, 'mean_file: "tiny-net/data/color64_mean.binaryproto"'),
    "lmdb_crop_mean_file_scale": (LMDB, 'crop_size: 48 scale: 0.5 '
                                        'mean_file: "tiny-net/data/color64_mean.binaryproto"'),
    "lmdb_crop_mean_value": (LMDB, 'crop_size: 57 mean_value: 104 mean_value: 117 mean_value: 123'),
    "lmdb_one_mean_value_scale": (LMDB, 'mean_value: 110 scale: 0.017'),
    "imagedata_resize": (image_data("new_height: 40 new_width: 50"), ""),
    "imagedata_resize_crop_mean": (image_data("new_height: 48 new_width: 48"),
                                   'crop_size: 40 mean_value: 104 mean_value: 117 mean_value: 123'),
    "imagedata_gray": (image_data("new_height: 32 new_width: 36 is_color: false"),
                       'mean_value: 120 scale: 0.0078125'),
}



def run(name, layer, transform):
    text = (f'name: "{name}"\nlayer {{ name: "data" top: "data" top: "label" '
            f'transform_param {{ {transform} }} {layer} }}\n')
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write(text)
    net = caffe.Net(f.name, caffe.TEST)
    os.unlink(f.name)
    batches = []
    for _ in range(BATCHES):
        net.forward()
        batches.append({"shape": list(net.blobs["data"].data.shape),
                        "labels": [int(v) for v in net.blobs["label"].data.ravel()],
                        "data": fingerprint(net.blobs["data"].data, 64)})
    return {"name": name, "prototxt": text, "batches": batches}


def main():
    results = [run(n, l, t) for n, (l, t) in CASES.items()]
    doc = {"provenance": "scripts/caffe-golden/data.py with Caffe "
                         + os.environ.get("CAFFE_VERSION", "(version unknown)")
                         + ", CPU mode, TEST phase, in ../shared/caffe-ref/fixtures",
           "cases": results}
    with open(sys.argv[1], "w") as f:
        json.dump(doc, f, indent=1)
    print(f"{len(results)} data cases -> {sys.argv[1]}")


if __name__ == "__main__":
    main()
