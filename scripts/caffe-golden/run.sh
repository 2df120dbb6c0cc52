#!/usr/bin/env bash
# Regenerates tests/data/caffe_layers.json with a real Caffe: Debian
# bullseye's `caffe`/`python3-caffe` packages (Caffe 1.0.0, git 2018-08-21,
# CPU), installed into a debootstrap chroot because newer Debian releases
# dropped them. Needs root, debootstrap and deb.debian.org; not run by CI.
#
#   sudo scripts/caffe-golden/run.sh [CHROOT_DIR]     (default /tmp/bullseye)
set -euo pipefail
root=${1:-/tmp/bullseye}
here=$(cd "$(dirname "$0")" && pwd)
out="$here/../../tests/data/caffe_layers.json"
if [ ! -x "$root/usr/bin/caffe" ]; then
    debootstrap --variant=minbase bullseye "$root" http://deb.debian.org/debian
    chroot "$root" bash -c 'apt-get update && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends caffe python3-caffe python3-numpy'
fi
version=$(chroot "$root" dpkg-query -W -f '${Version}' caffe)
cp "$here/layers.py" "$root/tmp/layers.py"
chroot "$root" env CAFFE_VERSION="$version (Debian bullseye)" \
    python3 /tmp/layers.py /tmp/caffe_layers.json
cp "$root/tmp/caffe_layers.json" "$out"
echo "wrote $out"
