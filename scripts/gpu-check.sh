#!/usr/bin/env bash
# GPU check of the CUDA build, as one script for a GPU machine (which has no
# Rust toolchain and no network): op checks against the CPU kernels, the
# tiny-net fixture trajectory (fp32, and bf16 on a GPU), `evaluate` (ensemble, test-time views),
# `classify`, `features` and `probe` on the device vs the CPU, `time` at batch 50 and 256, and end-to-end
# training throughput from an LMDB of raw 256x256 datums (fp32, and TF32 and
# bf16 on a GPU) and from JPEG files, and the data feed alone from each (with
# the machine's JPEG decode-and-resize ceiling beside it); then,
# with the cuDNN build (flickr-style-cudnn, where the machine has libcudnn.so.9),
# its op checks, fixture trajectory, `time` rows and LMDB end-to-end rows.
# Writes a Markdown report to $OUT/gpu-check.md (or ./gpu-check.md).
#
# Here (build machine; .gpu/ is git-ignored, and what it holds is never committed):
#   scripts/make-gpu-kit.sh      (CUDA build, stripped gzipped binary and fixtures into .gpu/)
# There (device tool, carry [".gpu"]):
#   bash scripts/gpu-check.sh .gpu
#
# DEVICE="" runs everything on the CPU instead (to try the script itself);
# IMAGES, ITERS, TIME_ITERS, BATCHES and E2E_BATCH make it smaller or larger;
# COMPARE_BATCH (empty: none) adds `time` rows there with TF32 on, in bf16
# mixed precision, and with the fused kernels off (FLICKR_STYLE_NO_FUSED=1,
# the tensor-op compositions);
# STEP_TIMEOUT (seconds) bounds each command.
set -uo pipefail
KIT=$(cd "${1:-.gpu}" && pwd)
BIN=${BIN:-$KIT/flickr-style}
DEVICE=${DEVICE---gpu 0}
IMAGES=${IMAGES:-2560}
ITERS=${ITERS:-20}
TIME_ITERS=${TIME_ITERS:-5}
BATCHES=${BATCHES:-50 256}
COMPARE_BATCH=${COMPARE_BATCH-256}
E2E_BATCH=${E2E_BATCH:-256}
# No single step may eat the device budget.
STEP_TIMEOUT=${STEP_TIMEOUT:-150}
run() { timeout "$STEP_TIMEOUT" "$BIN" "$@"; }
# finetune follows a solver's solver_mode (GPU is Caffe's default), so a CPU
# run of a CUDA build says --cpu.
TRAIN_DEVICE=${DEVICE:---cpu}
REPORT=${OUT:-.}/gpu-check.md
mkdir -p "${OUT:-.}"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
unpack() { # $1 = binary path; prints the runnable path
  if [ ! -e "$1" ] && [ -e "$1.gz" ]; then
    gunzip -c "$1.gz" >"$WORK/${1##*/}" && chmod +x "$WORK/${1##*/}" && echo "$WORK/${1##*/}"
  else
    echo "$1"
  fi
}
BIN=$(unpack "$BIN")
CUDNN_BIN=$(unpack "${CUDNN_BIN:-$KIT/flickr-style-cudnn}")

# cuBLAS/cuRAND come with the machine's PyTorch wheels (see ../shared/cuda).
if command -v python3 >/dev/null; then
  NV=$(python3 -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])' 2>/dev/null)/nvidia
  for d in "$NV"/*/lib "$NV"/cu13/lib; do [ -d "$d" ] && LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"; done
  export LD_LIBRARY_PATH
fi
FAILED=0
say() { echo "$@" | tee -a "$REPORT"; }
fail() { FAILED=1; say "FAILED: $*"; }
: >"$REPORT"
say "# gpu-check $(date -u +%FT%TZ)"
say ""
say "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo none)"
say "Device arguments: '${DEVICE}'; CPU cores: $(nproc)"
if ldd "$BIN" | grep -q "not found"; then ldd "$BIN" | tee -a "$REPORT"; fi
say ""

say "## Ops: the GPU code paths (tensor-op compositions, then fused kernels) vs the CPU kernels"
run check-ops $DEVICE >"$WORK/ops.txt" 2>&1 || fail "check-ops"
cat "$WORK/ops.txt" | tee -a "$REPORT"
say ""

say "## tiny-net fixture: 30 iterations vs Caffe"
# $1 label, $2 tolerance, $3 extra flags
tiny() {
  local tag=${1//[^a-z0-9]/_}
  (cd "$KIT/tiny-net" && run finetune --solver solver.prototxt --weights snapshots/init_iter_0.caffemodel \
    --snapshot-prefix "$WORK/tiny$tag" --metrics "$WORK/tiny$tag.jsonl" $TRAIN_DEVICE $3) >"$WORK/tiny$tag.log" 2>&1 || { fail "tiny-net finetune ($1)"; tail -5 "$WORK/tiny$tag.log" | tee -a "$REPORT"; }
  python3 - "$WORK/tiny$tag.jsonl" "$KIT/tiny-net/pycaffe/trajectory_full_precision.csv" "$1" "$2" <<'EOF' | tee -a "$REPORT"
import json, os, sys
label, tol = sys.argv[3], float(sys.argv[4])
ours = [json.loads(l) for l in open(sys.argv[1])] if os.path.exists(sys.argv[1]) else []
train = {r["iter"]: r["loss"] for r in ours if r["phase"] == "train"}
tests = [(r["iter"], r["outputs"]) for r in ours if r["phase"] == "test"]
caffe = {int(l.split(",")[0]): float(l.split(",")[1]) for l in open(sys.argv[2]).read().split("\n")[1:] if l}
worst = max((abs(train[i] - caffe[i]) / abs(caffe[i]) for i in caffe if i in train), default=float("inf"))
print(f"{label}: iterations compared: {len(train)} of {len(caffe)}, max relative loss error {worst:.2e} (pass <= {tol:g})")
for it, o in tests:
    print(f"  test at {it}: " + ", ".join(f"{k} = {v:.6g}" for k, v in sorted(o.items())))
sys.exit(0 if len(train) == 30 and worst <= tol else 1)
EOF
  [ "${PIPESTATUS[0]}" = 0 ] || fail "tiny-net trajectory ($1)"
}
tiny "fp32" 1e-4 ""
if [ -n "$DEVICE" ]; then tiny "bf16 mixed precision" 2e-2 "--bf16"; fi
say ""

say "## evaluate and classify on the device vs the CPU (an ensemble, flipped, turned and warped test-time views)"
for dev in device cpu; do
  flags=""
  [ "$dev" = device ] && flags=$DEVICE
  (cd "$KIT/tiny-net" && run evaluate --model train_val.prototxt --ensemble --tta dihedral \
    --weights snapshots/tiny_iter_15.caffemodel,snapshots/tiny_iter_30.caffemodel --out "$WORK/eval_$dev" $flags) \
    >"$WORK/eval_$dev.log" 2>&1 || { fail "evaluate ($dev)"; tail -3 "$WORK/eval_$dev.log" | tee -a "$REPORT"; }
  (cd "$KIT/tiny-net" && run classify --model train_val.prototxt --weights snapshots/tiny_iter_30.caffemodel \
    --tta affine:4 --top-k 4 --out "$WORK/classify_$dev.csv" "$KIT/images" $flags) \
    >"$WORK/classify_$dev.log" 2>&1 || { fail "classify ($dev)"; tail -3 "$WORK/classify_$dev.log" | tee -a "$REPORT"; }
done
python3 - "$WORK" <<'EOF2' | tee -a "$REPORT"
import csv, json, os, sys
w = sys.argv[1]
def number(x):
    try:
        return float(x)
    except ValueError:
        return None
def numbers(path):  # each row's numeric cells (probabilities; names and paths left out)
    if not os.path.exists(path):
        return None
    rows = list(csv.reader(open(path)))[1:]
    return [[v for v in map(number, r) if v is not None] for r in rows]
worst, ok = 0.0, True
for name in ["eval_{}/predictions.csv", "classify_{}.csv"]:
    a, b = numbers(os.path.join(w, name.format("device"))), numbers(os.path.join(w, name.format("cpu")))
    if a is None or b is None or len(a) != len(b) or not a:
        print(f"{name.format('*')}: missing or of different lengths"); ok = False; continue
    d = max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    worst = max(worst, d)
    print(f"{name.format('*')}: {len(a)} rows, max |device - cpu| {d:.2e}")
try:
    m = [json.load(open(os.path.join(w, f"eval_{d}/metrics.json"))) for d in ("device", "cpu")]
    print(f"accuracy device {m[0]['accuracy']:.6f} cpu {m[1]['accuracy']:.6f}")
    ok = ok and m[0]["accuracy"] == m[1]["accuracy"]
except (OSError, KeyError, ValueError) as e:
    print(f"metrics.json: {e}"); ok = False
print(f"pass: max difference <= 1e-4 and equal accuracy: {ok and worst <= 1e-4}")
sys.exit(0 if ok and worst <= 1e-4 else 1)
EOF2
[ "${PIPESTATUS[0]}" = 0 ] || fail "evaluate/classify device vs CPU"
say ""

say "## features and the linear probe on the device vs the CPU"
for dev in device cpu; do
  flags=""
  [ "$dev" = device ] && flags=$DEVICE
  (cd "$KIT/tiny-net" && run features --model train_val.prototxt --weights snapshots/tiny_iter_30.caffemodel \
    --blobs fc7,pool2 --out "$WORK/feat_$dev" $flags) >"$WORK/feat_$dev.log" 2>&1 \
    || { fail "features ($dev)"; tail -3 "$WORK/feat_$dev.log" | tee -a "$REPORT"; }
  (cd "$KIT/tiny-net" && run probe --solver solver.prototxt --weights snapshots/init_iter_0.caffemodel \
    --out "$WORK/probe_$dev" --max-iter 30 $flags) >"$WORK/probe_$dev.log" 2>&1 \
    || { fail "probe ($dev)"; tail -3 "$WORK/probe_$dev.log" | tee -a "$REPORT"; }
done
python3 - "$WORK" <<'EOF3' | tee -a "$REPORT"
import ast, os, struct, sys
w = sys.argv[1]
def npy(path):  # float32 C-order .npy, without NumPy
    b = open(path, "rb").read()
    n = struct.unpack("<H", b[8:10])[0]
    shape = ast.literal_eval(b[10:10 + n].decode())["shape"]
    data = b[10 + n:]
    return shape, struct.unpack(f"<{len(data) // 4}f", data)
ok = True
for blob in ["fc7", "pool2"]:
    try:
        (sa, a), (sb, b) = (npy(os.path.join(w, f"feat_{d}/{blob}.npy")) for d in ("device", "cpu"))
    except OSError as e:
        print(f"{blob}.npy: {e}"); ok = False; continue
    scale = max(max(abs(v) for v in b), 1e-30)
    d = max(abs(x - y) for x, y in zip(a, b)) / scale
    print(f"features {blob}: shape {sa} vs {sb}, max |device - cpu| / max |cpu| {d:.2e}")
    ok = ok and sa == sb and d <= 1e-4
def last_test(path):
    lines = [l for l in open(path) if l.startswith("test images at iteration")] if os.path.exists(path) else []
    return lines[-1].strip() if lines else None
a, b = (last_test(os.path.join(w, f"probe_{d}.log")) for d in ("device", "cpu"))
print(f"probe device: {a}")
print(f"probe cpu:    {b}")
nums = lambda l: [float(t.strip(",")) for t in l.split() if t.strip(",").replace(".", "", 1).isdigit()]
ok = ok and a is not None and b is not None and len(nums(a)) == len(nums(b)) and all(
    abs(x - y) <= 2e-4 for x, y in zip(nums(a), nums(b)))
print(f"pass: features within 1e-4 and the probe's test outputs within 2e-4: {ok}")
sys.exit(0 if ok else 1)
EOF3
[ "${PIPESTATUS[0]}" = 0 ] || fail "features/probe device vs CPU"
say ""

# The Flickr net with our own data layers in front of its third layer (conv1).
net_with_data() { # $1 = data layer text, $2 = output file
  python3 - "$KIT/recipe/train_val.prototxt" "$1" "$2" <<'EOF'
import sys
text = open(sys.argv[1]).read()
starts = [i for i in range(len(text)) if text.startswith("layer {", i) and (i == 0 or text[i - 1] == "\n")]
name = text[:starts[0]]
open(sys.argv[3], "w").write(name + sys.argv[2] + "\n" + text[starts[2]:])
EOF
}
input_layer() { # $1 = batch
  echo "layer { name: \"data\" type: \"Input\" top: \"data\" top: \"label\" input_param { shape { dim: $1 dim: 3 dim: 227 dim: 227 } shape { dim: $1 } } }"
}

say "## time: Flickr CaffeNet training step (synthetic data, mean of $TIME_ITERS iterations after a warm-up)"
say "| batch | kernels | forward ms | backward ms | SGD update ms | step ms | images/s |"
say "|---|---|---|---|---|---|---|"
# $1 batch, $2 label, $3 extra flags, $4 environment assignment (or empty)
time_row() {
  local b=$1 label=$2 flags=$3 envs=$4 out="$WORK/time$1-${2//[^a-z0-9]/_}.txt"
  net_with_data "$(input_layer "$b")" "$WORK/time$b.prototxt"
  if env $envs timeout "$STEP_TIMEOUT" "$BIN" time --model "$WORK/time$b.prototxt" --iterations "$TIME_ITERS" $DEVICE $flags >"$out" 2>&1; then
    f=$(sed -n 's/^Average Forward pass: \(.*\) ms./\1/p' "$out")
    k=$(sed -n 's/^Average Backward pass: \(.*\) ms./\1/p' "$out")
    u=$(sed -n 's/^Average SGD update: \(.*\) ms./\1/p' "$out")
    s=$(sed -n 's/^Average training step (forward, backward, update): \([0-9.]*\) ms.*/\1/p' "$out")
    say "| $b | $label | $f | $k | $u | $s | $(python3 -c "print(round($b * 1000 / $s))") |"
  else
    fail "time at batch $b ($label): $(tail -1 "$out")"
  fi
}
for b in $BATCHES; do
  time_row "$b" "${DEVICE:+fused, fp32}${DEVICE:-CPU kernels}" "" ""
done
if [ -n "$COMPARE_BATCH" ] && [ -n "$DEVICE" ]; then
  time_row "$COMPARE_BATCH" "fused, TF32" "--tf32" ""
  time_row "$COMPARE_BATCH" "fused, bf16" "--bf16" ""
  time_row "$COMPARE_BATCH" "compositions, fp32" "" "FLICKR_STYLE_NO_FUSED=1"
fi
say ""

say "## End to end: finetune throughput at batch $E2E_BATCH ($ITERS iterations after 5 warm-up ones, timed inside the run)"
if python3 -c "import numpy, PIL" 2>/dev/null; then
python3 - "$WORK/img" "$IMAGES" <<'EOF'
# Varied 320x240 JPEGs (gradients plus noise), 20 labels.
import os, sys
import numpy as np
from PIL import Image
out, n = sys.argv[1], int(sys.argv[2])
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(0)
yy, xx = np.mgrid[0:240, 0:320]
with open(os.path.join(out, "list.txt"), "w") as f:
    for i in range(n):
        base = (xx * rng.uniform(0.2, 0.8) + yy * rng.uniform(0.2, 0.8))[..., None] * rng.uniform(0.3, 1.0, 3)
        img = np.clip(base + rng.normal(0, 20, (240, 320, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(out, f"{i:05d}.jpg"), quality=90)
        f.write(f"{i:05d}.jpg {i % 20}\n")
EOF
else
  # No numpy/PIL on this machine: repeat the kit's fixture photos instead.
  say "(numpy/PIL missing: the JPEG set repeats the kit's $(ls "$KIT"/images/*.jpg | wc -l) fixture photos)"
  mkdir -p "$WORK/img"
  srcs=("$KIT"/images/*.jpg)
  for ((i = 0; i < IMAGES; i++)); do
    name=$(printf '%05d.jpg' "$i")
    cp "${srcs[i % ${#srcs[@]}]}" "$WORK/img/$name"
    echo "$name $((i % 20))"
  done >"$WORK/img/list.txt"
fi
run to-lmdb --resize-height 256 --resize-width 256 "$WORK/img/" "$WORK/img/list.txt" "$WORK/lmdb" >"$WORK/lmdb.log" 2>&1 || { fail "to-lmdb"; tail -3 "$WORK/lmdb.log"; }
run compute-mean "$WORK/lmdb" "$WORK/mean.binaryproto" >"$WORK/mean.log" 2>&1 || { fail "compute-mean"; tail -3 "$WORK/mean.log"; }
e2e() { # $1 = source, $2 = arithmetic label, $3 = data layer text, $4 = extra flags
  local tag="$1-${2//[^a-zA-Z0-9]/_}"
  net_with_data "$3" "$WORK/$tag.prototxt"
  printf 'net: "%s"\nbase_lr: 0.001\nlr_policy: "fixed"\nmomentum: 0.9\nweight_decay: 0.0005\nmax_iter: %d\ndisplay: 0\nsnapshot_after_train: false\nrandom_seed: 1\n' \
    "$WORK/$tag.prototxt" $((5 + ITERS)) >"$WORK/$tag.solver"
  run finetune --solver "$WORK/$tag.solver" --metrics "$WORK/$tag.jsonl" $TRAIN_DEVICE $4 >"$WORK/$tag.log" 2>&1 || { fail "$1 finetune ($2)"; tail -3 "$WORK/$tag.log" | tee -a "$REPORT"; return; }
  # Timed inside the run (each metrics line carries its wall-clock seconds):
  # from iteration 4's line to iteration 4+ITERS's, so start-up and warm-up are left out.
  say "$(python3 - "$WORK/$tag.jsonl" "$1" "$2" "$ITERS" "$E2E_BATCH" <<'PY'
import json, sys
path, src, label, n, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
t = {r["iter"]: r["elapsed_s"] for r in map(json.loads, open(path)) if r["phase"] == "train"}
secs = t[4 + n] - t[4]
print(f"| {src} | {label} | {secs * 1000 / n:.1f} | {n * batch / secs:.0f} |")
PY
)"
}
# The feed alone: a net of just the data layer, so `time`'s forward pass is
# the wait for the next batch (decoded, transformed and, on a GPU, copied).
feed() { # $1 = source, $2 = data layer text
  printf 'name: "feed"\n%s\n' "$2" >"$WORK/feed-$1.prototxt"
  local out="$WORK/feed-$1.txt"
  if run time --model "$WORK/feed-$1.prototxt" --iterations "$ITERS" $DEVICE >"$out" 2>&1; then
    local f=$(sed -n 's/^Average Forward pass: \(.*\) ms./\1/p' "$out")
    say "| $1 | $f | $(python3 -c "print(round($E2E_BATCH * 1000 / $f))") |"
  else
    fail "$1 feed: $(tail -1 "$out")"
  fi
}
say "| source | arithmetic | ms per iteration | images/s |"
say "|---|---|---|---|"
tp="transform_param { mirror: true crop_size: 227 mean_file: \"$WORK/mean.binaryproto\" }"
lmdb_layer="layer { name: \"data\" type: \"Data\" top: \"data\" top: \"label\" include { phase: TRAIN } $tp data_param { source: \"$WORK/lmdb\" batch_size: $E2E_BATCH backend: LMDB } }"
jpeg_layer="layer { name: \"data\" type: \"ImageData\" top: \"data\" top: \"label\" include { phase: TRAIN } $tp image_data_param { source: \"$WORK/img/list.txt\" root_folder: \"$WORK/img/\" batch_size: $E2E_BATCH shuffle: true new_height: 256 new_width: 256 } }"
e2e lmdb fp32 "$lmdb_layer" ""
if [ -n "$DEVICE" ]; then
  # An fp32 step bounds end-to-end speed; these show whether the feed keeps up with faster steps.
  e2e lmdb TF32 "$lmdb_layer" "--tf32"
  e2e lmdb bf16 "$lmdb_layer" "--bf16"
  # The feed's affine warps (bilinear, on the CPU workers) against an fp32 step.
  e2e lmdb "fp32 + augment plankton" "$lmdb_layer" "--augment plankton"
fi
e2e jpeg fp32 "$jpeg_layer" ""
say ""
say "## Data feed alone at batch $E2E_BATCH (crop 227, mirror, mean file; mean of $ITERS batches)"
say "| source | ms per batch | images/s |"
say "|---|---|---|"
feed lmdb "$lmdb_layer"
feed jpeg "$jpeg_layer"
# The machine's ceiling for the JPEG rows: compute-mean decodes and resizes
# the same files on every core (its running sum costs little beside that).
if run compute-mean --root "$WORK/img/" --resize-height 256 --resize-width 256 "$WORK/img/list.txt" \
  "$WORK/jpeg-mean.binaryproto" >"$WORK/jpeg-mean.log" 2>&1; then
  say "$(python3 - "$WORK/jpeg-mean.log" "$E2E_BATCH" <<'PY'
import re, sys
n, secs = map(float, re.search(r"Averaged (\d+) images of \S+ in ([0-9.]+) s", open(sys.argv[1]).read()).groups())
print(f"| jpeg decode + resize alone (compute-mean of the list, every core) | {secs * 1000 * int(sys.argv[2]) / n:.1f} | {n / secs:.0f} |")
PY
)"
else
  fail "compute-mean of the JPEG list: $(tail -1 "$WORK/jpeg-mean.log")"
fi
say ""

say "## cuDNN build: convolutions (forward, backward data, backward filter) on cuDNN"
if [ -z "$DEVICE" ]; then
  say "Skipped: a CPU run."
elif [ ! -x "$CUDNN_BIN" ]; then
  say "Skipped: no flickr-style-cudnn in the kit."
elif ldd "$CUDNN_BIN" | grep -q "not found"; then
  say "Skipped: the cuDNN build cannot start here:"
  ldd "$CUDNN_BIN" | grep "not found" | tee -a "$REPORT"
else
  BIN=$CUDNN_BIN
  run check-ops $DEVICE >"$WORK/ops-cudnn.txt" 2>&1 || fail "check-ops (cuDNN build)"
  head -1 "$WORK/ops-cudnn.txt" | tee -a "$REPORT"
  say "| op | forward | backward | finite diff | result |"
  say "|---|---|---|---|---|"
  grep -E "\[cudnn|FAILED|failed|passed|rror" "$WORK/ops-cudnn.txt" | tee -a "$REPORT"
  say ""
  tiny "fp32, cuDNN" 1e-4 ""
  tiny "bf16, cuDNN" 2e-2 "--bf16"
  say ""
  say "| batch | kernels | forward ms | backward ms | SGD update ms | step ms | images/s |"
  say "|---|---|---|---|---|---|---|"
  for b in $BATCHES; do time_row "$b" "cuDNN, fp32" "" ""; done
  if [ -n "$COMPARE_BATCH" ]; then
    time_row "$COMPARE_BATCH" "cuDNN, TF32" "--tf32" ""
    time_row "$COMPARE_BATCH" "cuDNN, bf16" "--bf16" ""
  fi
  say ""
  say "| source | arithmetic | ms per iteration | images/s |"
  say "|---|---|---|---|"
  e2e lmdb "fp32, cuDNN" "$lmdb_layer" ""
  e2e lmdb "TF32, cuDNN" "$lmdb_layer" "--tf32"
  e2e lmdb "bf16, cuDNN" "$lmdb_layer" "--bf16"
fi
cat "$WORK"/time*.txt >"${OUT:-.}/gpu-check-time.txt" 2>/dev/null
say ""
if [ "$FAILED" = 0 ]; then say "All checks passed."; else say "SOME CHECKS FAILED (see above)."; fi
exit "$FAILED"
