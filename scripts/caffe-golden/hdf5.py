#!/usr/bin/env python3
"""HDF5 files written by h5py, and the batches Caffe's HDF5Data layer
reads from them.

Writes tests/data/hdf5/ (argv[1]): a.h5 (7 rows: `data` float32 2x3 per
row, `label` float64, `counts` int32 pairs), b.h5 (5 rows, the same
datasets, `data` gzip-compressed in chunks), c.h5 (4 rows), the file lists
one.txt (a.h5) and three.txt (a.h5 b.h5 c.h5), and caffe_hdf5.json: per
case, the net and the values of every top for each of its first batches;
and for a solver whose training and test nets both shuffle, the weights
it trained and the last batch of each net.
Each case starts from a fresh `srand(1)`, as a fresh Caffe process does
(HDF5Data shuffles with std::random_shuffle, which draws from rand()).
`tests/hdf5_data.rs` replays them.
"""
import ctypes
import json
import os
import sys
import tempfile

import h5py
import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")
import caffe  # noqa: E402

caffe.set_mode_cpu()
LIBC = ctypes.CDLL(None)
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
os.chdir(out)
rng = np.random.RandomState(20261207)


def write(name, rows, gzip=False):
    with h5py.File(name, "w") as f:
        data = rng.randn(rows, 2, 3).astype(np.float32)
        if gzip:
            f.create_dataset("data", data=data, compression="gzip", chunks=(2, 2, 3))
        else:
            f["data"] = data
        f["label"] = rng.randint(0, 5, rows).astype(np.float64)
        f["counts"] = rng.randint(0, 100, (rows, 2)).astype(np.int32)


write("a.h5", 7)
write("b.h5", 5, gzip=True)
write("c.h5", 4)
open("one.txt", "w").write("a.h5\n")
open("three.txt", "w").write("a.h5 b.h5\nc.h5\n")

CASES = {
    # 12 batches of 4 = 3 passes over the 16 rows: files change mid-batch.
    "three_files": ("three.txt", 4, False, ["data", "label"], 12),
    "three_files_shuffled": ("three.txt", 4, True, ["data", "label"], 12),
    # One file: its rows are reshuffled in place after each pass.
    "one_file_shuffled": ("one.txt", 3, True, ["data", "label", "counts"], 8),
    "one_file": ("one.txt", 5, False, ["counts"], 4),
}


def net_text(source, batch, shuffle, tops):
    return ('name: "hdf5"\nlayer { name: "data" type: "HDF5Data" '
            + " ".join(f'top: "{t}"' for t in tops)
            + f' hdf5_data_param {{ source: "{source}" batch_size: {batch} shuffle: {str(shuffle).lower()} }} }}\n')


def run(name, source, batch, shuffle, tops, batches):
    text = net_text(source, batch, shuffle, tops)
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write(text)
    LIBC.srand(1)
    net = caffe.Net(f.name, caffe.TRAIN)
    os.unlink(f.name)
    seen = []
    for _ in range(batches):
        net.forward()
        seen.append({t: {"shape": list(net.blobs[t].data.shape),
                         "data": [float(v) for v in net.blobs[t].data.ravel()]} for t in tops})
    return {"name": name, "prototxt": text, "batches": seen}


# A solver whose training and test nets both shuffle: Caffe's process has
# one rand() sequence, so the test net's shuffles (at set-up, and when its
# rows run out during the test passes) move the training net's on.
SOLVER_NET = """name: "shared_rand"
layer { name: "data" type: "HDF5Data" top: "data" top: "label" include { phase: TRAIN }
  hdf5_data_param { source: "three.txt" batch_size: 3 shuffle: true } }
layer { name: "data" type: "HDF5Data" top: "data" top: "label" include { phase: TEST }
  hdf5_data_param { source: "three.txt" batch_size: 2 shuffle: true } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  inner_product_param { num_output: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "fc" bottom: "label" top: "loss" }
"""
SOLVER = ('net: "shared_rand.prototxt"\ntest_iter: 3\ntest_interval: 4\nbase_lr: 0.01\nmomentum: 0.9\n'
          'lr_policy: "fixed"\nmax_iter: 12\ndisplay: 0\nrandom_seed: 1\nsolver_mode: CPU\n')


def run_solver():
    with open("shared_rand.prototxt", "w") as f:
        f.write(SOLVER_NET)
    with open("shared_rand_solver.prototxt", "w") as f:
        f.write(SOLVER)
    LIBC.srand(1)
    solver = caffe.get_solver("shared_rand_solver.prototxt")
    solver.solve()
    blob = lambda b: {"shape": list(b.shape), "data": [float(v) for v in b.ravel()]}
    result = {"net": SOLVER_NET, "solver": SOLVER,
              "params": [blob(b.data) for b in solver.net.params["fc"]],
              "train_data": blob(solver.net.blobs["data"].data),
              "test_data": blob(solver.test_nets[0].blobs["data"].data)}
    os.unlink("shared_rand.prototxt")
    os.unlink("shared_rand_solver.prototxt")
    return result


doc = {"provenance": "scripts/caffe-golden/hdf5.py with Caffe " + os.environ.get("CAFFE_VERSION", "(version unknown)")
       + f" and h5py {h5py.__version__}, CPU mode",
       "cases": [run(n, *c) for n, c in CASES.items()],
       "solver": run_solver()}
with open("caffe_hdf5.json", "w") as f:
    json.dump(doc, f, indent=1)
print(f"{len(doc['cases'])} HDF5Data cases -> {out}/caffe_hdf5.json")
