#!/usr/bin/env python3
"""Cross-checks `flickr-style deploy` and `classify` against OpenCV's own
Caffe importer (cv2.dnn.readNetFromCaffe, OpenCV 4.x; 5.x dropped it): the
deploy net and a caffemodel are loaded by OpenCV, each image is prepared as
the deploy comment says (OpenCV's bilinear resize, centre crop, mean image),
and OpenCV's class probabilities are compared with the CSV `classify` wrote.

    flickr-style deploy train_val.prototxt deploy.prototxt
    flickr-style convert-mean mean.binaryproto mean.npy
    flickr-style classify --model train_val.prototxt --weights W --top-k K --out ours.csv IMAGES
    python3 scripts/opencv-check.py deploy.prototxt W mean.npy ours.csv [--crop N] [--size H W]

Prints one line per image and the largest difference; exits 1 above 1e-4.
Needs numpy and opencv-python(-headless) < 5 (e.g. in a virtualenv).
"""
import argparse
import csv
import sys

import cv2
import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("deploy")
    ap.add_argument("weights")
    ap.add_argument("mean", help="mean image as .npy (C x H x W), the pre-crop size")
    ap.add_argument("ours", help="the CSV written by flickr-style classify")
    ap.add_argument("--crop", type=int, default=0, help="centre crop side (0: none)")
    args = ap.parse_args()

    net = cv2.dnn.readNetFromCaffe(args.deploy, args.weights)
    mean = np.load(args.mean).astype(np.float32)
    mean = mean.reshape(mean.shape[-3:])  # convert-mean may write 1 x C x H x W
    _, h, w = mean.shape
    worst = 0.0
    rows = list(csv.DictReader(open(args.ours)))
    for row in rows:
        img = cv2.imread(row["image"], cv2.IMREAD_COLOR)
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        x = img.transpose(2, 0, 1).astype(np.float32) - mean
        if args.crop:
            top, left = (h - args.crop) // 2, (w - args.crop) // 2
            x = x[:, top : top + args.crop, left : left + args.crop]
        net.setInput(x[np.newaxis])
        prob = net.forward().reshape(-1)
        k = 1
        diffs = []
        while f"class_{k}" in row:
            c, p = int(row[f"class_{k}"]), float(row[f"probability_{k}"])
            diffs.append(abs(prob[c] - p))
            k += 1
        d = max(diffs)
        worst = max(worst, d)
        print(f"{row['image']}: OpenCV top class {int(prob.argmax())}, ours {row['class_1']}, max |diff| {d:.2e}")
    print(f"{len(rows)} images, largest difference {worst:.2e} (pass <= 1e-4)")
    sys.exit(0 if rows and worst <= 1e-4 else 1)


if __name__ == "__main__":
    main()
