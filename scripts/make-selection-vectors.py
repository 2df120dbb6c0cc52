#!/usr/bin/env python3
"""Regenerates tests/data/selection_vectors.json: the Flickr Style ids that
assemble_data.py's selection (np.random.seed, np.random.permutation over the
CSV rows, optional label filter, first N) yields, computed with NumPy's legacy
RandomState. Only ids and parameters are stored, never the CSV itself.

Usage: python3 scripts/make-selection-vectors.py ../shared/caffe-ref/flickr_style/flickr_style.csv.gz
"""
import csv, gzip, json, sys
import numpy as np

rows = list(csv.reader(gzip.open(sys.argv[1], "rt")))[1:]
ids = [r[0] for r in rows]
labels = [int(r[3]) for r in rows]
cases = []
for seed, images, label_limit in [(831486, 2000, 0), (1701, 2000, 5), (0, 50, 0), (42, 100, 3), (4294967295, 30, 0)]:
    np.random.seed(seed)
    perm = np.random.permutation(len(rows))
    chosen = [i for i in perm if label_limit <= 0 or labels[i] < label_limit]
    if images > 0:
        chosen = chosen[:images]
    cases.append({
        "seed": seed, "images": images, "labels": label_limit,
        "count": len(chosen),
        "first_ids": [ids[i] for i in chosen[:40]],
        "last_ids": [ids[i] for i in chosen[-10:]],
        "label_histogram": np.bincount([labels[i] for i in chosen], minlength=20).tolist(),
    })
json.dump({"numpy": np.__version__, "cases": cases}, open("tests/data/selection_vectors.json", "w"), indent=1)
print("wrote", len(cases), "cases")
