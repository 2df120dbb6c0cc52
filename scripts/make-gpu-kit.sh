#!/usr/bin/env bash
# Builds the CUDA binary here (no GPU needed) and packs what scripts/gpu-check.sh
# needs on a GPU machine into the git-ignored .gpu/: the stripped, gzipped binary
# (~16 MB; the device tool carries 64 MiB in all), the tiny-net fixture and
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
cargo build --release --locked --features cuda
# Copies of the read-only ../shared come out read-only: make them removable.
[ -d .gpu ] && chmod -R u+w .gpu
rm -rf .gpu
mkdir -p .gpu
strip -o .gpu/flickr-style "$CARGO_TARGET_DIR/release/flickr-style"
gzip -f .gpu/flickr-style
cp -r ../shared/caffe-ref/fixtures/tiny-net .gpu/
cp -r ../shared/caffe-ref/models/finetune_flickr_style .gpu/recipe
chmod -R u+w .gpu
du -sh .gpu
