#!/usr/bin/env python3
"""Golden numbers for Caffe's data layers, computed by a real Caffe.

Run with ../shared/caffe-ref/fixtures as the working directory (see
run.sh). Each case is a net of one data layer (two for one case) over the
fixture images or the tiny-net LMDB; the JSON written to argv[1] holds, for
each of the first batches, the labels and a fingerprint of the data blob
(sum, sum of squares, the values at 64 evenly spaced positions).
`tests/caffe_data.rs` replays them. The TEST cases are deterministic; the
seeded cases set Caffe's random seed before building the net, so their
random crops, mirrors, shuffles and skips are the ones Caffe draws from it. ImageData decodes and resizes with the OpenCV Caffe links
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


MEAN_FILE = 'mean_file: "tiny-net/data/color64_mean.binaryproto"'


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

# Seeded cases: (phase, seed, batches, layers as (layer, transform) pairs).
# A second layer's tops are data2 and label2.
SEEDED = {
    "train_lmdb_mirror_crop": ("TRAIN", 1701, 4, [(LMDB, f"mirror: true crop_size: 48 {MEAN_FILE}")]),
    "train_lmdb_mirror": ("TRAIN", 7, 4, [(LMDB, "mirror: true scale: 0.5")]),
    "train_lmdb_crop_seed_0": ("TRAIN", 0, 4, [(LMDB, "crop_size: 57 mean_value: 110")]),
    # Caffe 1.0's Data layer ignores rand_skip (it draws nothing for it).
    "train_lmdb_rand_skip_ignored": ("TRAIN", 3, 4, [(LMDB.replace("backend", "rand_skip: 5 backend"),
                                                      "crop_size: 60")]),
    "test_lmdb_mirror": ("TEST", 99, 4, [(LMDB, "mirror: true crop_size: 48")]),
    "train_imagedata_shuffle": ("TRAIN", 2024, 7, [(image_data("new_height: 48 new_width: 48 shuffle: true"),
                                                    "mirror: true crop_size: 40")]),
    "train_imagedata_shuffle_rand_skip": ("TRAIN", 5, 7, [(image_data(
        "new_height: 44 new_width: 52 shuffle: true rand_skip: 11"), "crop_size: 40 mean_value: 100")]),
    "train_imagedata_rand_skip": ("TRAIN", 123456789, 4, [(image_data(
        "new_height: 40 new_width: 40 rand_skip: 20"), "mirror: true")]),
    "train_two_layers": ("TRAIN", 31337, 5, [
        (LMDB, "mirror: true crop_size: 50"),
        (image_data("new_height: 36 new_width: 36 shuffle: true"), "mirror: true crop_size: 30")]),
}


# WindowData (R-CNN's fine-tuning feed) over boxes in six fixture photos:
# foreground, background and unused windows (with bg_threshold 0.3), boxes
# at the borders so that context padding reaches outside the image, a gray
# JPEG read as colour. Written to windows.txt before the cases run.
WINDOWS = [
    ("animal/cat.jpg", 360, 480, [(1, 0.8, 100, 50, 300, 250), (0, 0.1, 0, 0, 120, 100),
                                  (2, 0.6, 350, 200, 479, 359), (0, 0.3, 200, 100, 260, 180),
                                  (3, 0.45, 10, 10, 50, 80)]),
    ("animal/chelsea.png", 300, 451, [(1, 0.9, 50, 40, 400, 290), (0, 0.0, 5, 5, 60, 60),
                                      (1, 0.55, 200, 0, 450, 150)]),
    ("object/astronaut.jpg", 512, 512, [(3, 0.7, 100, 100, 400, 511), (0, 0.2, 0, 300, 100, 511)]),
    ("animal/cat_gray.jpg", 360, 480, [(2, 0.75, 60, 60, 420, 300), (0, 0.05, 400, 0, 479, 80)]),
    ("object/page.png", 191, 384, [(1, 0.5, 0, 0, 383, 190), (0, 0.25, 100, 50, 200, 150)]),
    ("object/coffee.jpeg", 400, 600, [(2, 0.95, 150, 20, 450, 380), (0, 0.15, 500, 300, 599, 399)]),
]


def write_window_file():
    with open("windows.txt", "w") as f:
        for i, (path, h, w, boxes) in enumerate(WINDOWS):
            f.write(f"# {i}\n{path}\n3\n{h}\n{w}\n{len(boxes)}\n")
            for box in boxes:
                f.write(" ".join(str(v) for v in box) + "\n")


def window_data(params):
    return f'type: "WindowData" window_data_param {{ source: "windows.txt" root_folder: "images/" {params} }}'


SEEDED.update({
    # Warped windows with 3 pixels of context, mirrored, the mean file read
    # at the crop's offset, scaled.
    "train_window_warp_context": ("TRAIN", 1701, 5, [(window_data(
        "batch_size: 8 context_pad: 3 fg_fraction: 0.25 scale: 0.5"), f"mirror: true crop_size: 24 {MEAN_FILE}")]),
    # Their tightest squares, mean values, half foreground, unused windows.
    "train_window_square": ("TRAIN", 7, 4, [(window_data(
        'batch_size: 6 crop_mode: "square" fg_fraction: 0.5 bg_threshold: 0.3 context_pad: 2 cache_images: true'),
        "crop_size: 20 mean_value: 104 mean_value: 117 mean_value: 123")]),
    # The bare windows warped (no context), mirrored; a TEST net samples too.
    "test_window_warp": ("TEST", 3, 4, [(window_data("batch_size: 5 fg_fraction: 0.6"),
                                         "mirror: true crop_size: 16")]),
})


def net_text(name, layers):
    text = f'name: "{name}"\n'
    for i, (layer, transform) in enumerate(layers):
        suffix = "" if i == 0 else str(i + 1)
        text += (f'layer {{ name: "data{suffix}" top: "data{suffix}" top: "label{suffix}" '
                 f'transform_param {{ {transform} }} {layer} }}\n')
    return text


def run(name, text, phase=caffe.TEST, seed=None, batches=BATCHES, tops=1):
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write(text)
    if seed is not None:
        caffe.set_random_seed(seed)
    net = caffe.Net(f.name, phase)
    os.unlink(f.name)
    out = []
    for _ in range(batches):
        net.forward()
        batch = {}
        for i in range(tops):
            suffix = "" if i == 0 else str(i + 1)
            batch["shape" + suffix] = list(net.blobs["data" + suffix].data.shape)
            batch["labels" + suffix] = [int(v) for v in net.blobs["label" + suffix].data.ravel()]
            batch["data" + suffix] = fingerprint(net.blobs["data" + suffix].data, 64)
        out.append(batch)
    case = {"name": name, "prototxt": text, "batches": out}
    if "windows.txt" in text:
        # The replay writes it beside its net (the fixtures are read-only).
        case["files"] = {"windows.txt": open("windows.txt").read()}
    if seed is not None:
        case["phase"] = "TRAIN" if phase == caffe.TRAIN else "TEST"
        case["seed"] = seed
    return case


def main():
    write_window_file()
    results = [run(n, net_text(n, [(l, t)])) for n, (l, t) in CASES.items()]
    for n, (phase, seed, batches, layers) in SEEDED.items():
        results.append(run(n, net_text(n, layers), getattr(caffe, phase), seed, batches, len(layers)))
    doc = {"provenance": "scripts/caffe-golden/data.py with Caffe "
                         + os.environ.get("CAFFE_VERSION", "(version unknown)")
                         + ", CPU mode, in ../shared/caffe-ref/fixtures",
           "cases": results}
    with open(sys.argv[1], "w") as f:
        json.dump(doc, f, indent=1)
    print(f"{len(results)} data cases -> {sys.argv[1]}")


if __name__ == "__main__":
    main()
