#!/usr/bin/env bash
# Fill carry/ (ignored by git) with what a GPU machine that receives only the checkout needs
# for scripts/gpu_session.sh: the CIFAR-10 mosaic (17 MB, all 60,000 images; see
# ../shared/data/cifar10-mosaic/README.md) and the wheels that machine cannot download
# (checkpoint-schedules). About 18 MB in all.
#
#   scripts/prepare_carry.sh [SHARED]      (default SHARED: ../shared)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${1:-../shared}
for need in "$SHARED/data/cifar10-mosaic/mosaic.jpg" "$SHARED/data/cifar10-mosaic/labels.npy" \
            "$SHARED/data/cifar10-mosaic/unpack.py"; do
    [ -f "$need" ] || { echo "prepare_carry: missing $need" >&2; exit 2; }
done
rm -rf carry
mkdir -p carry/cifar10-mosaic carry/wheels
cp "$SHARED"/data/cifar10-mosaic/{mosaic.jpg,labels.npy,unpack.py,README.md} carry/cifar10-mosaic/
if compgen -G "$SHARED/wheels/*.whl" >/dev/null; then cp "$SHARED"/wheels/*.whl carry/wheels/; fi
du -sh carry
