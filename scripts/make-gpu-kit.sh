#!/usr/bin/env bash
# Builds the CUDA binaries here (no GPU needed) and packs what scripts/gpu-check.sh
# needs on a GPU machine into the git-ignored .gpu/: the stripped, gzipped binaries
# (`--features cuda`, and `--features cudnn` as flickr-style-cudnn; ~16 MB each,
# the device tool carries 64 MiB in all), the tiny-net fixture and
# Caffe's Flickr Style recipe. Then, on the device: carry [".gpu"], run
#   bash scripts/gpu-check.sh .gpu
# The first CUDA build takes 15-25 min on 2 cores; later ones about a minute.
# TOOLKIT (default /tmp/cuda13) and CARGO_TARGET_DIR (default target/cuda)
# say where the CUDA toolkit and the build go; CUDA_COMPUTE_CAP (default 90,
# Hopper) what the kernels are compiled for.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLKIT=${TOOLKIT:-/tmp/cuda13}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}
cargo fetch --locked -q
[ -x "$TOOLKIT/bin/nvcc" ] || bash ../shared/cuda/prepare-toolkit.sh "$TOOLKIT"
# shellcheck disable=SC1091
source "$TOOLKIT/env.sh"
# Linking the cuDNN build needs libcudnn.so.9, cuDNN's small front library
# (it loads the engine libraries at run time): take just that file from the
# cuDNN wheel. The GPU machine's own cuDNN (PyTorch's wheel) is used there.
CUDNN_WHEEL=nvidia-cudnn-cu13==9.28.1.4
if [ ! -e "$TOOLKIT/lib/libcudnn.so.9" ]; then
  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_27_x86_64 \
    --python-version 3.11 -d "$TOOLKIT.cudnn" "$CUDNN_WHEEL"
  python3 - "$TOOLKIT.cudnn" "$TOOLKIT/lib" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/nvidia_cudnn_cu13-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("nvidia/cudnn/lib/libcudnn.so.9") as src:
    with open(sys.argv[2] + "/libcudnn.so.9", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
  ln -sf libcudnn.so.9 "$TOOLKIT/lib/libcudnn.so"
fi
# The cuDNN module's own unit tests (shapes, algorithm rules, CPU refusal) need
# no GPU: run them against the link-time driver stub before packing.
LD_LIBRARY_PATH="$TOOLKIT/lib:$TOOLKIT/lib/stubs" cargo test --release --locked --features cudnn --lib cudnn
# Copies of the read-only ../shared come out read-only: make them removable.
[ -d .gpu ] && chmod -R u+w .gpu
rm -rf .gpu
mkdir -p .gpu
# Both builds share the target folder (cargo keeps each feature set's artifacts).
for variant in cuda cudnn; do
  cargo build --release --locked --features "$variant"
  name=flickr-style
  [ "$variant" = cudnn ] && name=flickr-style-cudnn
  strip -o ".gpu/$name" "$CARGO_TARGET_DIR/release/flickr-style"
  gzip -f ".gpu/$name"
done
cp -r ../shared/caffe-ref/fixtures/tiny-net .gpu/
cp -r ../shared/caffe-ref/models/finetune_flickr_style .gpu/recipe
# JPEGs for gpu-check's end-to-end set where the GPU machine lacks numpy/PIL.
mkdir -p .gpu/images
cp ../shared/caffe-ref/fixtures/images/*/*.jpg .gpu/images/
chmod -R u+w .gpu
du -sh .gpu
