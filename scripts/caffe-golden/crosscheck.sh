#!/usr/bin/env bash
# Does a real Caffe read what flickr-style writes? Runs our binary on the
# tiny-net fixture (../shared/caffe-ref/fixtures/tiny-net), then Debian
# bullseye's Caffe 1.0.0 (CPU, in the chroot that run.sh sets up) on the
# results, and prints a table:
#   - `caffe train -snapshot` resumes from our iteration-15 .solverstate and
#     retraces Caffe's resume from its own (fixture resume_from_15_loss.csv),
#     ending on the fixture's resumed_iter_30.caffemodel;
#   - pycaffe loads our iteration-30 .caffemodel: blob for blob against
#     Caffe's tiny_iter_30.caffemodel;
#   - `caffe test` with our weights gives our `test` scores;
#   - `compute_image_mean` on our `to-lmdb` LMDB writes our `compute-mean` file;
#   - pycaffe runs our `deploy` net with our weights on the LMDB's records:
#     its probabilities against the softmax of our `features` fc8;
#   - a Caffe Data layer reads our `features --lmdb` LMDB (float_data
#     Datums): its batches against our fc8.npy and the labels;
#   - `pipeline` on the fixture photos as class folders (the tiny net as
#     the recipe, cropped to 64, with --lmdb and --class-weights): Caffe
#     trains with the train_val.prototxt, solver.prototxt, LMDBs, mean and
#     InfogainLoss matrix it wrote, retracing the pipeline's own training
#     (its random crops come from the solver's random_seed, as Caffe's do:
#     the same losses and weights), and `caffe test` with the pipeline's
#     weights gives its evaluation's accuracy, loss and probabilities;
#   - two Caffe Data layers read our to-lmdb images and the targets-lmdb
#     beside them in step (each record's first target is its image's label);
#   - Flickr Style's own recipe (CaffeNet: ImageData with random crops and
#     mirrors, Dropout, every layer from its filler) on the fixture photos at
#     batch 8, 4 iterations from the same random_seed: the same losses;
#   - a net whose fc7b shares fc7's blobs (`param { name }`): Caffe's run
#     gives our losses, and `caffe train -snapshot` resumes from our
#     iteration-6 .solverstate to our iteration-12 weights;
#   - `caffe train -snapshot` resumes from our Adam and AdaDelta
#     .solverstates (a second set of histories) to our weights;
#   - HDF5 snapshots (`snapshot_format: HDF5`) both ways: Caffe resumes
#     from our .solverstate.h5, pycaffe loads our .caffemodel.h5, and ours
#     resumes from Caffe's .solverstate.h5;
#   - `snapshot_diff`: our caffemodels' diffs (the last step, as Caffe's)
#     against Caffe's after 3 iterations of SGD and of Adam, and h5py reads
#     the diff group of our HDF5 snapshot;
#   - a net file with train/val/deploy variants by stage (DIGITS' style):
#     `caffe train -stage train` gives the losses of our `finetune --stage
#     train`, and `caffe test -stage val -level 1` the outputs of our `test`
#     with the same flags;
#   - HDF5Output: our file of one TEST batch against the one `caffe test`
#     writes; a Filter in front of fc8: `caffe train`'s losses against ours;
#   - WindowData feeding the tiny net: `caffe train`'s losses against ours;
#   - every field number, default and enum value of proto/caffe.proto is Caffe's.
# Needs root (chroot) and a built binary; not run by CI.
#
#   sudo scripts/caffe-golden/crosscheck.sh [CHROOT_DIR] [BINARY]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=${1:-/tmp/bullseye}
bin=$(realpath "${2:-$here/../../target/release/flickr-style}")
fixtures=$(realpath "$here/../../../shared/caffe-ref/fixtures")
[ -x "$root/usr/bin/caffe" ] || { echo "no Caffe in $root: run scripts/caffe-golden/run.sh first" >&2; exit 1; }
chroot "$root" python3 -c 'import lmdb' 2>/dev/null || chroot "$root" bash -c \
    'DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-lmdb >/dev/null'

work=$root/xc
rm -rf "$work" && mkdir -p "$work"
cp -r "$fixtures/tiny-net" "$fixtures/images" "$work/"
chmod -R u+w "$work"
cd "$work/tiny-net"
mkdir -p ours
log=$work/ours.log
# Ours: train 30 iterations (snapshots at 15 and 30), test, features, deploy,
# and an LMDB with its mean from the fixture images.
"$bin" finetune --solver solver.prototxt --weights snapshots/init_iter_0.caffemodel \
    --snapshot-prefix ours/tiny >"$log" 2>&1
"$bin" test --model train_val.prototxt --weights ours/tiny_iter_30.caffemodel \
    --iterations 3 >ours/test.txt 2>>"$log"
"$bin" features --model train_val.prototxt --weights ours/tiny_iter_30.caffemodel \
    --blobs fc8 --out ours/features --lmdb >>"$log" 2>&1
"$bin" deploy train_val.prototxt ours/deploy.prototxt --batch 8 >>"$log" 2>&1
"$bin" to-lmdb --resize-height 64 --resize-width 64 ../images ../images/list.txt ours/lmdb >>"$log" 2>&1
"$bin" compute-mean ours/lmdb ours/mean.binaryproto >>"$log" 2>&1
awk '{print $1 "," $2 "," ($2 * $2) / 3}' ../images/list.txt >ours/targets.csv
"$bin" targets-lmdb ours/lmdb ours/targets.csv ours/targets_lmdb >>"$log" 2>&1

# The whole pipeline on the photos as class folders, the tiny net as recipe.
# Its files name absolute paths under $work: a link makes them resolve in
# the chroot too.
mkdir -p "$root$(dirname "$work")" && ln -sfn /xc "$root$work"
mkdir -p ../recipe && cp train_val.prototxt solver.prototxt ../recipe/
sed -i 's/    mirror: false/    mirror: false\n    crop_size: 64/' ../recipe/train_val.prototxt
(cd .. && "$bin" pipeline --folders images --out pipeline --recipe recipe \
    --weights tiny-net/snapshots/init_iter_0.caffemodel --lmdb --max-iter 6 \
    --test-fraction 0.25 --class-weights 0.5 >"$work/ours_pipeline.log" 2>&1)
mkdir -p ours/pipeline && cp ../pipeline/snapshots/finetune_cw0.5_iter_6.caffemodel ours/pipeline/
# Again in gray, padded to squares: one-channel LMDBs and gray-weights' conv1.
(cd .. && "$bin" pipeline --folders images --out pipeline_gray --recipe recipe \
    --weights tiny-net/snapshots/init_iter_0.caffemodel --lmdb --max-iter 6 \
    --test-fraction 0.25 --gray --pad-square border >"$work/ours_gray.log" 2>&1)
gray_weights=$(ls ../pipeline_gray/snapshots/*_iter_6.caffemodel)
gray_eval=$(ls -d ../pipeline_gray/evaluation*)
cp "$gray_weights" ours/pipeline/gray_iter_6.caffemodel

# A net whose fc7b shares fc7's blobs (`param { name }`, the shared_params
# case of solvers.py): ours trains 12 iterations with a snapshot at 6.
python3 - <<'PY'
net = open("train_val.prototxt").read()
fc7 = 'top: "fc7"\n  param { lr_mult: 1 decay_mult: 1 }\n  param { lr_mult: 2 decay_mult: 0 }'
relu7 = 'layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }'
out = (net.replace(fc7, 'top: "fc7"\n  param { name: "fc7_w" }\n  param { name: "fc7_b" }', 1)
       .replace(relu7, relu7 + '\nlayer { name: "fc7b" type: "InnerProduct" bottom: "fc7" top: "fc7b" '
                'param { name: "fc7_w" lr_mult: 3 decay_mult: 0.5 } param { name: "fc7_b" lr_mult: 6 decay_mult: 0 } '
                'inner_product_param { num_output: 64 } }', 1)
       .replace('bottom: "fc7"\n  top: "fc8"', 'bottom: "fc7b"\n  top: "fc8"', 1))
assert out.count("fc7_w") == 2 and 'bottom: "fc7b"' in out
open("shared.prototxt", "w").write(out)
PY
sed -e 's/train_val.prototxt/shared.prototxt/' -e 's/max_iter: 30/max_iter: 12/' -e 's/snapshot: 15/snapshot: 6/' \
    -e 's/test_interval: 15/test_interval: 6/' solver.prototxt >solver_shared.prototxt
"$bin" finetune --solver solver_shared.prototxt --weights snapshots/init_iter_0.caffemodel \
    --snapshot-prefix ours/shared >ours_shared.log 2>&1
# One net file holding its train, val and deploy variants by stage (as
# DIGITS writes nets), plus a top-2 accuracy only from level 1: ours trains
# it with --stage train (the solver's test_state picks val) and tests it
# with --stage val --level 1.
python3 - <<'PY'
net = open("train_val.prototxt").read()
out = (net.replace("include { phase: TRAIN }", 'include { stage: "train" }', 1)
       .replace("include { phase: TEST }", 'include { stage: "val" }', 1)
       .replace('  top: "accuracy"\n', '  top: "accuracy"\n  include { stage: "val" }\n', 1)
       .replace('  top: "loss"\n', '  top: "loss"\n  exclude { stage: "deploy" }\n', 1)
       + 'layer { name: "top2" type: "Accuracy" bottom: "fc8" bottom: "label" top: "top2" '
         'accuracy_param { top_k: 2 } include { stage: "val" min_level: 1 } }\n'
       + 'layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" include { stage: "deploy" } }\n')
assert out.count("stage:") == 6
open("stages.prototxt", "w").write(out)
PY
sed -e 's/train_val.prototxt/stages.prototxt/' -e 's/max_iter: 30/max_iter: 6/' -e 's/snapshot: 15/snapshot: 6/' \
    -e 's/test_interval: 15/test_interval: 6/' -e 's|snapshots/tiny|snapshots/stages|' solver.prototxt >solver_stages.prototxt
echo 'test_state { stage: "val" }' >>solver_stages.prototxt
"$bin" finetune --solver solver_stages.prototxt --stage train --weights snapshots/init_iter_0.caffemodel \
    --snapshot-prefix ours/stages >ours_stages.log 2>&1
"$bin" test --model stages.prototxt --stage val --level 1 --weights ours/stages_iter_6.caffemodel \
    --iterations 3 >ours/stages_test.txt 2>>"$log"
# HDF5Output: the tiny net's TEST scores and labels of one batch, written by
# ours and by Caffe (h5out.prototxt names each its own file); and a Filter
# training fc8 on the images whose label is not 0 (the loss told not to pass
# the Filter's labels a gradient), 6 iterations.
python3 - <<'PY'
net = open("train_val.prototxt").read()
dump = ('layer { name: "dump" type: "HDF5Output" bottom: "fc8" bottom: "label" '
        'hdf5_output_param { file_name: "%s" } include { phase: TEST } }\n')
open("h5out.prototxt", "w").write(net + dump % "ours/dump.h5")
open("h5out_caffe.prototxt", "w").write(net + dump % "caffe_dump.h5")
filt = (net.replace('layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }',
                    'layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }\n'
                    'layer { name: "select" type: "Filter" bottom: "fc7" bottom: "label" bottom: "label" '
                    'top: "fc7f" top: "labelf" }', 1)
        .replace('bottom: "fc7"\n  top: "fc8"', 'bottom: "fc7f"\n  top: "fc8"', 1)
        .replace('bottom: "fc8"\n  bottom: "label"', 'bottom: "fc8"\n  bottom: "labelf"')
        .replace('top: "loss"\n', 'top: "loss"\n  propagate_down: true\n  propagate_down: false\n', 1))
assert filt.count("labelf") == 3
open("filter.prototxt", "w").write(filt)
PY
"$bin" test --model h5out.prototxt --weights ours/tiny_iter_30.caffemodel --iterations 1 >>"$log" 2>&1
sed -e 's/train_val.prototxt/filter.prototxt/' -e 's/max_iter: 30/max_iter: 6/' -e 's/snapshot: 15/snapshot: 6/' \
    -e 's/test_interval: 15/test_interval: 6/' -e 's|snapshots/tiny|snapshots/filter|' solver.prototxt >solver_filter.prototxt
"$bin" finetune --solver solver_filter.prototxt --weights snapshots/init_iter_0.caffemodel \
    --snapshot-prefix ours/filter >ours_filter.log 2>&1
# WindowData (R-CNN's feed): the tiny net reading mirrored, context-padded
# boxes of the fixture photos in both phases, 6 iterations.
python3 - <<'PY'
net = open("train_val.prototxt").read()
third = net.index("layer {", net.index("layer {", net.index("layer {") + 1) + 1)
window = ('layer {{ name: "data" type: "WindowData" top: "data" top: "label" include {{ phase: {} }}\n'
          '  transform_param {{ mirror: true crop_size: 64 mean_file: "data/color64_mean.binaryproto" }}\n'
          '  window_data_param {{ source: "windows.txt" root_folder: "../images/" batch_size: 8 '
          'context_pad: 4 fg_fraction: 0.5 }} }}\n')
head = net[:net.index("layer {")]
open("window.prototxt", "w").write(head + window.format("TRAIN") + window.format("TEST") + net[third:])
open("windows.txt", "w").write(
    "# 0\nanimal/cat.jpg\n3 360 480\n3\n1 0.9 100 50 300 250\n0 0.1 0 0 120 100\n2 0.6 350 200 479 359\n"
    "# 1\nobject/astronaut.jpg\n3 512 512\n2\n3 0.8 100 100 400 511\n0 0.2 0 300 100 511\n"
    "# 2\nobject/coffee.jpeg\n3 400 600\n2\n2 0.95 150 20 450 380\n0 0.15 500 300 599 399\n")
PY
sed -e 's/train_val.prototxt/window.prototxt/' -e 's/max_iter: 30/max_iter: 6/' -e 's/snapshot: 15/snapshot: 6/' \
    -e 's/test_interval: 15/test_interval: 6/' -e 's|snapshots/tiny|snapshots/window|' solver.prototxt >solver_window.prototxt
"$bin" finetune --solver solver_window.prototxt --weights snapshots/init_iter_0.caffemodel \
    --snapshot-prefix ours/window >ours_window.log 2>&1
# Adam and AdaDelta keep a second set of histories after the first in the
# .solverstate: ours trains 12 iterations of each (a snapshot at 6).
for kind in Adam AdaDelta; do
    case $kind in
    Adam) extra='type: "Adam"\nmomentum2: 0.999\nbase_lr: 0.001' ;;
    AdaDelta) extra='type: "AdaDelta"\ndelta: 1e-6\nbase_lr: 1.0' ;;
    esac
    grep -v '^base_lr' solver.prototxt | sed -e 's/max_iter: 30/max_iter: 12/' -e 's/snapshot: 15/snapshot: 6/' \
        -e 's/test_interval: 15/test_interval: 6/' -e "s|snapshots/tiny|snapshots/$kind|" >"solver_$kind.prototxt"
    printf "$extra\n" >>"solver_$kind.prototxt"
    "$bin" finetune --solver "solver_$kind.prototxt" --weights snapshots/init_iter_0.caffemodel \
        --snapshot-prefix "ours/$kind" >"ours_$kind.log" 2>&1
done
# snapshot_diff: 3 iterations of SGD and of Adam each way, the diffs in the
# caffemodels compared; ours also as HDF5 (its diff group).
mkdir -p sd
for kind in SGD Adam; do
    sed -e 's/max_iter: 30/max_iter: 3/' -e 's/snapshot: 15/snapshot: 3/' -e 's/test_initialization: true/test_initialization: false/' \
        -e "s|snapshots/tiny|sd/caffe_$kind|" solver.prototxt >"sd_$kind.prototxt"
    echo 'snapshot_diff: true' >>"sd_$kind.prototxt"
    [ "$kind" = Adam ] && printf 'type: "Adam"\nmomentum2: 0.999\n' >>"sd_$kind.prototxt" \
        && sed -i 's/base_lr: 0.01/base_lr: 0.001/' "sd_$kind.prototxt"
    "$bin" finetune --solver "sd_$kind.prototxt" --weights snapshots/init_iter_0.caffemodel \
        --snapshot-prefix "sd/ours_$kind" >"ours_sd_$kind.log" 2>&1
done
(cat sd_SGD.prototxt && echo 'snapshot_format: HDF5') >sd_SGD_h5.prototxt
"$bin" finetune --solver sd_SGD_h5.prototxt --weights snapshots/init_iter_0.caffemodel \
    --snapshot-prefix sd/ours_SGD >ours_sd_h5.log 2>&1
# HDF5 snapshots (snapshot_format: HDF5): ours of the tiny net's 30 iterations.
(cat solver.prototxt && echo 'snapshot_format: HDF5') >solver_h5.prototxt
"$bin" finetune --solver solver_h5.prototxt --weights snapshots/init_iter_0.caffemodel \
    --snapshot-prefix ours/h5 >ours_h5.log 2>&1
sed -e 's|snapshots/tiny|caffe_h5/tiny|' -e 's/max_iter: 30/max_iter: 15/' solver_h5.prototxt >solver_h5_caffe.prototxt
mkdir -p caffe_h5

# Caffe on our files.
in_root() { chroot "$root" env OPENBLAS_NUM_THREADS=1 GLOG_minloglevel=0 bash -c "cd /xc/tiny-net && $1"; }
in_root "caffe train -solver solver.prototxt -snapshot ours/tiny_iter_15.solverstate" >caffe_resume.log 2>&1
in_root "caffe test -model train_val.prototxt -weights ours/tiny_iter_30.caffemodel -iterations 3" >caffe_test.log 2>&1
in_root "compute_image_mean ours/lmdb ours/caffe_mean.binaryproto" >caffe_mean.log 2>&1
in_root "caffe train -solver $work/pipeline/solver.prototxt -weights snapshots/init_iter_0.caffemodel" \
    >caffe_pipeline_train.log 2>&1
in_root "caffe test -model $work/pipeline/train_val.prototxt -weights ours/pipeline/finetune_cw0.5_iter_6.caffemodel -iterations 1" \
    >caffe_pipeline_test.log 2>&1
in_root "caffe train -solver $work/pipeline_gray/solver.prototxt -weights $(ls ../pipeline_gray/*.caffemodel | head -1 | sed "s|^\.\.|$work|")" \
    >caffe_gray_train.log 2>&1
in_root "caffe test -model $work/pipeline_gray/train_val.prototxt -weights ours/pipeline/gray_iter_6.caffemodel -iterations 1" \
    >caffe_gray_test.log 2>&1
echo "${gray_eval#../}" >gray_eval.txt
in_root "caffe train -solver solver_stages.prototxt -stage train -weights snapshots/init_iter_0.caffemodel" \
    >caffe_stages.log 2>&1
in_root "caffe test -model stages.prototxt -stage val -level 1 -weights ours/stages_iter_6.caffemodel -iterations 3" \
    >caffe_stages_test.log 2>&1
in_root "caffe test -model h5out_caffe.prototxt -weights ours/tiny_iter_30.caffemodel -iterations 1" >caffe_h5out.log 2>&1
in_root "caffe train -solver solver_filter.prototxt -weights snapshots/init_iter_0.caffemodel" >caffe_filter.log 2>&1
in_root "caffe train -solver solver_window.prototxt -weights snapshots/init_iter_0.caffemodel" >caffe_window.log 2>&1
in_root "caffe train -solver solver_shared.prototxt -weights snapshots/init_iter_0.caffemodel" >caffe_shared.log 2>&1
in_root "caffe train -solver solver_shared.prototxt -snapshot ours/shared_iter_6.solverstate" >caffe_shared_resume.log 2>&1
for kind in Adam AdaDelta; do
    in_root "caffe train -solver solver_$kind.prototxt -snapshot ours/${kind}_iter_6.solverstate" >"caffe_${kind}_resume.log" 2>&1
done
for kind in SGD Adam; do
    in_root "caffe train -solver sd_$kind.prototxt -weights snapshots/init_iter_0.caffemodel" >"caffe_sd_$kind.log" 2>&1
done
in_root "caffe train -solver solver_h5.prototxt -snapshot ours/h5_iter_15.solverstate.h5" >caffe_h5_resume.log 2>&1
# ... and Caffe's HDF5 snapshot at 15, which ours resumes from.
in_root "caffe train -solver solver_h5_caffe.prototxt -weights snapshots/init_iter_0.caffemodel" >caffe_h5_train.log 2>&1
"$bin" finetune --solver solver_h5.prototxt --snapshot caffe_h5/tiny_iter_15.solverstate.h5 \
    --snapshot-prefix ours/h5_from_caffe >ours_h5_from_caffe.log 2>&1

# Flickr Style's recipe as Caffe ships it, from its fillers, both ways.
flickr=$work/flickr
recipe_dir=$(realpath "$here/../../../shared/caffe-ref/models/finetune_flickr_style")
mkdir -p "$flickr/data/ilsvrc12" "$flickr/data/flickr_style" "$flickr/models/finetune_flickr_style"
cp -r "$work/images" "$flickr/"
"$bin" convert-mean "$(realpath "$here/../../../shared/caffe-ref/ilsvrc12/ilsvrc_2012_mean.npy")" \
    "$flickr/data/ilsvrc12/imagenet_mean.binaryproto" >>"$log" 2>&1
sed 's|^|images/|' "$work/images/list.txt" >"$flickr/data/flickr_style/train.txt"
cp "$flickr/data/flickr_style/train.txt" "$flickr/data/flickr_style/test.txt"
sed 's/batch_size: 50/batch_size: 8/' "$recipe_dir/train_val.prototxt" >"$flickr/models/finetune_flickr_style/train_val.prototxt"
grep -v -E '^(test_iter|test_interval|display|max_iter|snapshot|snapshot_prefix|#)' "$recipe_dir/solver.prototxt" \
    >"$flickr/models/finetune_flickr_style/solver.prototxt"
printf 'test_iter: 1\ntest_interval: 1000\ntest_initialization: false\ndisplay: 1\nmax_iter: 4\nsnapshot_after_train: false\nrandom_seed: 20261129\nsolver_mode: CPU\n' \
    >>"$flickr/models/finetune_flickr_style/solver.prototxt"
(cd "$flickr" && "$bin" finetune --solver models/finetune_flickr_style/solver.prototxt >ours_flickr.log 2>&1)
chroot "$root" env OPENBLAS_NUM_THREADS=1 GLOG_minloglevel=0 bash -c \
    "cd /xc/flickr && caffe train -solver models/finetune_flickr_style/solver.prototxt" >caffe_flickr.log 2>&1
cat >check.py <<'EOF'
import csv, re, sys
import numpy as np
import caffe, lmdb
from caffe.proto import caffe_pb2

def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))

def losses(path):
    return {int(m.group(1)): float(m.group(2)) for m in
            re.finditer(r"Iteration (\d+) \(.*\), loss = ([-\d.e]+)", open(path).read())}

def weights(path):
    net = caffe.Net("train_val.prototxt", caffe.TEST, weights=path)
    return {k: [b.data.copy() for b in v] for k, v in net.params.items()}

def blob_err(a, b):
    return max(rel(x, y) for k in b for x, y in zip(a[k], b[k]))

def retraced(folder, caffe_log, ours_log, caffe_model, ours_model):
    """Caffe's training on a pipeline's files against the pipeline's own:
    the logged losses and the final weights (Caffe's snapshot overwrote
    the pipeline's, which was copied to ours/ first)."""
    got, want = losses(caffe_log), losses(ours_log)
    dl = max(abs(got[i] - want[i]) / want[i] for i in want) if want and got.keys() == want.keys() else 1.0
    def w(path):
        net = caffe.Net(f"../{folder}/train_val.prototxt", caffe.TEST, weights=path)
        return {k: [b.data.copy() for b in v] for k, v in net.params.items()}
    dw = blob_err(w(caffe_model), w(ours_model))
    return (f"losses 0-{len(want) - 1} within {dl:.1e} (log prints 6 digits), iteration-6 weights {dw:.1e} relative",
            len(want) == 6 and dl < 2e-5 and dw < 1e-5)

rows = []
want = {int(r["iteration"]): float(r["loss"]) for r in csv.DictReader(
    l for l in open("resume_from_15_loss.csv") if not l.startswith("#"))}
got = losses("caffe_resume.log")
err = max(abs(got[i] - want[i]) / want[i] for i in want)
rows.append(("caffe train -snapshot ours/tiny_iter_15.solverstate: losses 15-29 vs Caffe's resume from its own",
             f"{len(got)} iterations, largest difference {err:.1e} (log prints 6 digits)", len(got) == 15 and err < 1e-5))
e = blob_err(weights("snapshots/tiny_iter_30.caffemodel"), weights("../../xc-fixture/resumed_iter_30.caffemodel"))
rows.append(("its iteration-30 weights vs the fixture's resumed_iter_30.caffemodel", f"{e:.1e} relative", e < 1e-5))
e = blob_err(weights("ours/tiny_iter_30.caffemodel"), weights("../../xc-fixture/tiny_iter_30.caffemodel"))
rows.append(("pycaffe loads our tiny_iter_30.caffemodel: vs Caffe's own run", f"{e:.1e} relative", e < 1e-5))

test = open("caffe_test.log").read()
acc = float(re.findall(r"\] accuracy = ([\d.e-]+)", test)[-1])
loss = float(re.findall(r"\] loss = ([\d.e-]+)", test)[-1])
ours = open("ours/test.txt").read()
oacc = float(re.search(r"accuracy = ([\d.e-]+)", ours).group(1))
oloss = float(re.search(r"loss = ([\d.e-]+)", ours).group(1))
rows.append(("caffe test with our weights vs our test", f"accuracy {acc} / {oacc}, loss {loss} / {oloss}",
             abs(acc - oacc) < 1e-6 and abs(loss - oloss) / loss < 1e-5))

def mean(path):
    b = caffe_pb2.BlobProto(); b.ParseFromString(open(path, "rb").read())
    return np.array(b.data)
same = open("ours/caffe_mean.binaryproto", "rb").read() == open("ours/mean.binaryproto", "rb").read()
rows.append(("compute_image_mean on our LMDB vs our compute-mean", "byte-identical" if same else
             f"differs, {rel(mean('ours/mean.binaryproto'), mean('ours/caffe_mean.binaryproto')):.1e}", same))

deploy = caffe.Net("ours/deploy.prototxt", caffe.TEST, weights="ours/tiny_iter_30.caffemodel")
m = mean("data/color64_mean.binaryproto").reshape(3, 64, 64)
env = lmdb.open("data/color64_lmdb", readonly=True, lock=False)
images = []
with env.begin() as txn:
    for _, v in txn.cursor():
        d = caffe_pb2.Datum(); d.ParseFromString(v)
        images.append(np.frombuffer(d.data, np.uint8).reshape(d.channels, d.height, d.width) - m)
probs = []
for i in range(0, len(images), 8):
    deploy.blobs["data"].data[...] = np.stack(images[i:i + 8])
    probs.append(deploy.forward()["prob"].copy())
probs = np.concatenate(probs)
fc8 = np.load("ours/features/fc8.npy").astype(np.float64)
soft = np.exp(fc8 - fc8.max(1, keepdims=True)); soft /= soft.sum(1, keepdims=True)
e = rel(soft, probs)
rows.append(("pycaffe runs our deploy.prototxt with our weights on the 24 records vs our features fc8",
             f"{e:.1e} relative", e < 1e-5))

feat = "ours/features_net.prototxt"
open(feat, "w").write('layer { name: "d" type: "Data" top: "x" top: "y" '
                      'data_param { source: "ours/features/fc8_lmdb" batch_size: 8 backend: LMDB } }\n')
net = caffe.Net(feat, caffe.TEST)
xs, ys = [], []
for _ in range(3):
    net.forward()
    xs.append(net.blobs["x"].data.reshape(8, -1).copy())
    ys.append(net.blobs["y"].data.copy())
labels = [int(l.split()[1]) for l in open("../images/list.txt")]
same_labels = list(np.concatenate(ys).astype(int)) == labels
e = rel(np.concatenate(xs), fc8)
rows.append(("a Caffe Data layer reads our features --lmdb (fc8 as float_data Datums)",
             f"{e:.1e} from fc8.npy, labels {'equal' if same_labels else 'DIFFER'}", e == 0 and same_labels))

import json
trained = "Optimization Done" in open("caffe_pipeline_train.log").read()
rows.append(("caffe train with the pipeline's train_val, solver, LMDBs, mean and InfogainLoss matrix",
             "6 iterations" if trained else "FAILED", trained))
rows.append(("... retraces the pipeline's training (random crops of its 256x256 datums from random_seed)",
             *retraced("pipeline", "caffe_pipeline_train.log", "../ours_pipeline.log",
                       "../pipeline/snapshots/finetune_cw0.5_iter_6.caffemodel",
                       "ours/pipeline/finetune_cw0.5_iter_6.caffemodel")))
test = open("caffe_pipeline_test.log").read()
acc = float(re.findall(r"\] accuracy = ([\d.e-]+)", test)[-1])
loss = float(re.findall(r"\] loss = ([\d.e-]+)", test)[-1])
m = json.load(open("../pipeline/evaluation_cw0.5/metrics.json"))
net = caffe.Net("../pipeline/train_val.prototxt", caffe.TEST,
                weights="ours/pipeline/finetune_cw0.5_iter_6.caffemodel")
net.forward()
fc8 = net.blobs["fc8"].data.astype(np.float64)
p = np.exp(fc8 - fc8.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
lines = list(csv.reader(open("../pipeline/evaluation_cw0.5/probabilities.csv")))[1:]
e = float(np.abs(np.array([[float(v) for v in r[2:]] for r in lines]) - p).max())
rows.append(("caffe test with the pipeline's weights vs its evaluation",
             f"accuracy {acc} / {m['accuracy']}, loss {loss} / {m['log_loss']:.5g}, probabilities within {e:.1e}",
             abs(acc - m["accuracy"]) < 1e-6 and abs(loss - m["log_loss"]) / loss < 1e-4 and e < 1e-6))

trained = "Optimization Done" in open("caffe_gray_train.log").read()
rows.append(("caffe train with pipeline --gray --pad-square's files (one-channel LMDBs, gray-weights' conv1)",
             "6 iterations" if trained else "FAILED", trained))
rows.append(("... retraces the gray pipeline's training",
             *retraced("pipeline_gray", "caffe_gray_train.log", "../ours_gray.log",
                       "../pipeline_gray/snapshots/finetune_padded_gray_iter_6.caffemodel",
                       "ours/pipeline/gray_iter_6.caffemodel")))
test = open("caffe_gray_test.log").read()
acc = float(re.findall(r"\] accuracy = ([\d.e-]+)", test)[-1])
loss = float(re.findall(r"\] loss = ([\d.e-]+)", test)[-1])
m = json.load(open("../" + open("gray_eval.txt").read().strip() + "/metrics.json"))
rows.append(("caffe test with the gray pipeline's weights vs its evaluation",
             f"accuracy {acc} / {m['accuracy']}, loss {loss} / {m['log_loss']:.5g}",
             abs(acc - m["accuracy"]) < 1e-6 and abs(loss - m["log_loss"]) / loss < 1e-4))

pair = "ours/pair.prototxt"
open(pair, "w").write(
    'layer { name: "images" type: "Data" top: "x" top: "label" '
    'data_param { source: "ours/lmdb" batch_size: 8 backend: LMDB } }\n'
    'layer { name: "targets" type: "Data" top: "t" '
    'data_param { source: "ours/targets_lmdb" batch_size: 8 backend: LMDB } }\n')
net = caffe.Net(pair, caffe.TEST)
in_step = True
for _ in range(4):
    net.forward()
    t = net.blobs["t"].data.reshape(8, -1)
    in_step &= bool(np.array_equal(t[:, 0], net.blobs["label"].data)) and bool(
        np.allclose(t[:, 1], net.blobs["label"].data ** 2 / 3))
got, want = losses("caffe_flickr.log"), losses("../flickr/ours_flickr.log")
dl = max(abs(got[i] - want[i]) / abs(want[i]) for i in want) if want and got.keys() == want.keys() else 1.0
rows.append(("Flickr Style's recipe from its fillers (ImageData crops and mirrors, Dropout), batch 8, random_seed set",
             f"losses 0-{len(want) - 1} within {dl:.1e} (log prints 6 digits)", len(want) == 4 and dl < 1e-5))
rows.append(("two Caffe Data layers read our images and targets-lmdb in step (4 batches, a wrap-around)",
             "each record's targets are its label's" if in_step else "OUT OF STEP", in_step))

ours, got = losses("ours_stages.log"), losses("caffe_stages.log")
dl = max(abs(got[i] - ours[i]) / ours[i] for i in ours) if len(ours) == 6 and got.keys() == ours.keys() else 1.0
rows.append(("caffe train -stage train on a net file holding train/val/deploy variants by stage (DIGITS' style) "
             "vs ours finetune --stage train, 6 iterations", f"losses within {dl:.1e} (log prints 6 digits)", dl < 1e-5))
test = open("caffe_stages_test.log").read()
got = {k: float(v) for k, v in re.findall(r"caffe.cpp:\d+\] (\w+) = ([\d.e-]+)", test)}
ours = {k: float(v) for k, v in re.findall(r"^(\w+) = ([\d.e-]+)", open("ours/stages_test.txt").read(), re.M)}
same = sorted(got) == sorted(ours) == ["accuracy", "loss", "top2"] and all(
    abs(got[k] - ours[k]) <= 1e-5 * max(1.0, abs(ours[k])) for k in ours)
rows.append(("caffe test -stage val -level 1 (a top-2 accuracy from level 1) vs ours test --stage val --level 1",
             ", ".join(f"{k} {got.get(k)} / {ours[k]}" for k in sorted(ours)), same))

ours = losses("ours_shared.log")
got = losses("caffe_shared.log")
dl = max(abs(got[i] - ours[i]) / ours[i] for i in ours) if len(ours) == 12 and got.keys() == ours.keys() else 1.0
rows.append(("fc7's blobs shared with fc7b (param { name }): Caffe's run vs ours, 12 iterations",
             f"losses within {dl:.1e} (log prints 6 digits)", dl < 1e-5))
got = losses("caffe_shared_resume.log")
dl = max(abs(got[i] - ours[i]) / ours[i] for i in got) if sorted(got) == list(range(6, 12)) else 1.0
def shared(path):
    net = caffe.Net("shared.prototxt", caffe.TEST, weights=path)
    return {k: [b.data.copy() for b in v] for k, v in net.params.items()}
dw = blob_err(shared("snapshots/tiny_iter_12.caffemodel"), shared("ours/shared_iter_12.caffemodel"))
rows.append(("... caffe train -snapshot ours/shared_iter_6.solverstate: losses 6-11, iteration-12 weights vs ours",
             f"losses within {dl:.1e}, weights {dw:.1e} relative", dl < 1e-5 and dw < 1e-5))
want = {int(r["iteration"]): float(r["loss"]) for r in csv.DictReader(
    l for l in open("resume_from_15_loss.csv") if not l.startswith("#"))}
got = losses("caffe_h5_resume.log")
err = max(abs(got[i] - want[i]) / want[i] for i in want) if sorted(got) == sorted(want) else 1.0
e = blob_err(weights("ours/h5_iter_30.caffemodel.h5"), weights("ours/tiny_iter_30.caffemodel"))
rows.append(("HDF5 snapshots: caffe train -snapshot ours/h5_iter_15.solverstate.h5 (losses 15-29 vs Caffe's resume); "
             "pycaffe loads our h5_iter_30.caffemodel.h5 (vs our .caffemodel)",
             f"losses within {err:.1e}; weights {e:.1e}", err < 1e-5 and e == 0.0))
got = losses("ours_h5_from_caffe.log")
err = max(abs(got[i] - want[i]) / want[i] for i in want) if sorted(got) == sorted(want) else 1.0
rows.append(("... ours resumes from Caffe's iteration-15 .solverstate.h5: losses 15-29 vs Caffe's resume",
             f"{len(got)} iterations, largest difference {err:.1e}", err < 1e-5))
for kind in ("Adam", "AdaDelta"):
    ours, got = losses(f"ours_{kind}.log"), losses(f"caffe_{kind}_resume.log")
    dl = max(abs(got[i] - ours[i]) / ours[i] for i in got) if sorted(got) == list(range(6, 12)) else 1.0
    dw = blob_err(weights(f"snapshots/{kind}_iter_12.caffemodel"), weights(f"ours/{kind}_iter_12.caffemodel"))
    rows.append((f"caffe train -snapshot our {kind} iteration-6 .solverstate (two history sets): losses 6-11, "
                 "iteration-12 weights vs ours", f"losses within {dl:.1e}, weights {dw:.1e} relative",
                 dl < 1e-5 and dw < 1e-5))

def with_diffs(path):
    n = caffe_pb2.NetParameter()
    n.ParseFromString(open(path, "rb").read())
    return {(l.name, j): (np.array(b.data), np.array(b.diff)) for l in n.layer for j, b in enumerate(l.blobs)}

for kind, tol, why in (("SGD", 1e-5, ""), ("Adam", 1e-3, " (Adam's steps magnify the weights' 1e-7 float differences)")):
    got, want = with_diffs(f"sd/ours_{kind}_iter_3.caffemodel"), with_diffs(f"sd/caffe_{kind}_iter_3.caffemodel")
    same = got.keys() == want.keys() and all(len(got[k][1]) == len(want[k][1]) == len(want[k][0]) for k in want)
    e = max(rel(got[k][1], want[k][1]) for k in want if np.abs(want[k][1]).max() > 0) if same else 1.0
    rows.append((f"snapshot_diff, {kind}, 3 iterations: our caffemodel's diffs vs Caffe's{why}",
                 f"{len(want)} blobs, diffs within {e:.1e} relative", same and e < tol))
import h5py
h5 = h5py.File("sd/ours_SGD_iter_3.caffemodel.h5", "r")
binary = with_diffs("sd/ours_SGD_iter_3.caffemodel")
ok = all(np.array_equal(h5[f"diff/{l}/{j}"][()].ravel(), binary[(l, j)][1]) for (l, j) in binary)
rows.append(("... HDF5: h5py reads our .caffemodel.h5's diff group, equal to the binary snapshot's diffs",
             "equal" if ok else "DIFFERENT", ok))

with h5py.File("ours/dump.h5", "r") as o, h5py.File("caffe_dump.h5", "r") as c:
    same = all(o[k].shape == c[k].shape and o[k].dtype == c[k].dtype for k in ("data", "label"))
    e = max(rel(o[k][()], c[k][()]) for k in ("data", "label")) if same else 1.0
    shapes = ", ".join(f"{k} {o[k].shape}" for k in ("data", "label"))
rows.append(("HDF5Output in a TEST net, one batch: our file vs the one caffe test writes",
             f"{shapes}; values within {e:.1e} relative", same and e < 1e-5))
got, want = losses("caffe_filter.log"), losses("ours_filter.log")
e = max(abs(got[i] - want[i]) / want[i] for i in want) if want and got.keys() == want.keys() else 1.0
rows.append(("caffe train with fc8 behind a Filter (items with label != 0) vs our finetune: losses 0-5",
             f"within {e:.1e} (the log prints 6 digits)", len(want) == 6 and e < 2e-5))
got, want = losses("caffe_window.log"), losses("ours_window.log")
e = max(abs(got[i] - want[i]) / want[i] for i in want) if want and got.keys() == want.keys() else 1.0
rows.append(("caffe train fed by WindowData (mirrored, context-padded boxes, both phases) vs our finetune: losses 0-5",
             f"within {e:.1e} (the log prints 6 digits)", len(want) == 6 and e < 2e-5))

print("| check | result | ok |\n|---|---|---|")
for what, result, ok in rows:
    print(f"| {what} | {result} | {'ok' if ok else 'FAILED'} |")
sys.exit(0 if all(r[2] for r in rows) else 1)
EOF
mkdir -p "$root/xc-fixture"
cp "$fixtures/tiny-net/snapshots/"{resumed_iter_30,tiny_iter_30}.caffemodel "$root/xc-fixture/"
cp "$here/../../proto/caffe.proto" "$root/tmp/ours.proto"
cp "$here/proto_check.py" "$root/tmp/"
chroot "$root" python3 /tmp/proto_check.py
echo "Caffe: $(chroot "$root" dpkg-query -W -f '${Version}' caffe) (Debian bullseye, CPU); ours: $("$bin" --version)"
echo
in_root "GLOG_minloglevel=2 python3 check.py"
