#!/usr/bin/env bash
# Regenerates the golden numbers of tests/caffe_layers.rs,
# tests/caffe_solvers.rs, tests/caffe_data.rs, tests/caffe_nets.rs,
# tests/caffe_fillers.rs, tests/explain.rs and tests/hdf5_data.rs (with its h5py files) with a
# real Caffe: Debian bullseye's
# `caffe`/`python3-caffe` packages (Caffe 1.0.0, git 2018-08-21, CPU),
# installed into a debootstrap chroot because newer Debian releases dropped
# them. Needs root, debootstrap and deb.debian.org; not run by CI.
#
#   sudo scripts/caffe-golden/run.sh [CHROOT_DIR]     (default /tmp/bullseye)
set -euo pipefail
root=${1:-/tmp/bullseye}
here=$(cd "$(dirname "$0")" && pwd)
data="$here/../../tests/data"
fixtures=$(realpath "$here/../../../shared/caffe-ref/fixtures")
if [ ! -x "$root/usr/bin/caffe" ]; then
    debootstrap --variant=minbase bullseye "$root" http://deb.debian.org/debian
    chroot "$root" bash -c 'apt-get update && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends caffe python3-caffe python3-numpy python3-lmdb python3-h5py'
fi
version="$(chroot "$root" dpkg-query -W -f '${Version}' caffe) (Debian bullseye)"
chroot "$root" python3 -c 'import h5py' 2>/dev/null || chroot "$root" bash -c \
    'DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-h5py >/dev/null'
cp "$here"/{golden,layers,solvers,data,nets,fillers,hdf5,gradcam}.py "$root/tmp/"
rm -rf "$root/tmp/fixtures" && mkdir "$root/tmp/fixtures"
cp -r "$fixtures/tiny-net" "$fixtures/images" "$root/tmp/fixtures/" && chmod -R u+w "$root/tmp/fixtures"
chroot "$root" env CAFFE_VERSION="$version" OPENBLAS_NUM_THREADS=1 \
    python3 /tmp/layers.py /tmp/caffe_layers.json
chroot "$root" env CAFFE_VERSION="$version" OPENBLAS_NUM_THREADS=1 \
    bash -c 'cd /tmp/fixtures/tiny-net && python3 /tmp/solvers.py /tmp/caffe_solvers.json'
chroot "$root" env CAFFE_VERSION="$version" \
    bash -c 'cd /tmp/fixtures && python3 /tmp/data.py /tmp/caffe_data.json'
chroot "$root" env CAFFE_VERSION="$version" OPENBLAS_NUM_THREADS=1 \
    bash -c 'cd /tmp/fixtures/tiny-net && python3 /tmp/gradcam.py /tmp/caffe_gradcam.json'
chroot "$root" env CAFFE_VERSION="$version" OPENBLAS_NUM_THREADS=1 \
    python3 /tmp/nets.py /tmp/caffe_nets.json
chroot "$root" env CAFFE_VERSION="$version" \
    bash -c 'cd /tmp/fixtures && python3 /tmp/fillers.py /tmp/caffe_fillers.json'
# HDF5 files written by h5py and the batches HDF5Data reads from them.
rm -rf "$root/tmp/hdf5"
chroot "$root" env CAFFE_VERSION="$version" python3 /tmp/hdf5.py /tmp/hdf5
rm -rf "$data/hdf5" && cp -r "$root/tmp/hdf5" "$data/hdf5"
cp "$root/tmp/"caffe_{layers,solvers,data,nets,fillers,gradcam}.json "$data/"
echo "wrote $data/caffe_{layers,solvers,data,nets,fillers,gradcam}.json"
