#!/usr/bin/env bash
# One GPU, at most about 10 minutes: the ANODE paper's comparison at full network size.
#
# Trains ODE-ResNet-18 (Euler, N_t = 2) with gradient=anode and gradient=backsolve and the
# plain ResNet-18, identical settings, seeds 0 and 1, on a 20,000-image subset of CIFAR-10
# for 5 epochs (`anode compare --preset gpu-short`), recording backsolve's gradient error
# every epoch, then writes the plots and the table. A hard time limit (LIMIT_S, default
# 540 s) stops training; the report is then drawn from the finished epochs, and running the
# script again resumes where it stopped.
#
# usage: scripts/gpu_compare.sh [COMPARISON_DIR]     (default runs/compare-gpu-short)
# env:   DATA_ROOT  CIFAR-10 folder (default ../shared/data/cifar10-jpeg)
#        LIMIT_S    seconds of training before the report (default 540)
#        OUT        if set to a folder: the table, plots, summary and per-run metrics are
#                   copied there as well
set -uo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-runs/compare-gpu-short}
DATA_ROOT=${DATA_ROOT:-../shared/data/cifar10-jpeg}
LIMIT_S=${LIMIT_S:-540}

if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
command -v anode >/dev/null || { echo "anode is not installed (pip install -e .)" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 2

start=$(date +%s)
timeout --signal=INT --kill-after=30 "$LIMIT_S" \
    anode compare --preset gpu-short --data-root "$DATA_ROOT" --out "$DIR" --no-progress
rc=$?
echo "compare exited with status $rc after $(( $(date +%s) - start )) s (124: stopped at the time limit)"
anode compare --report-only "$DIR" || exit 2

if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
    cp "$DIR"/compare_curves.png "$DIR"/compare_gradient_error.png "$DIR"/compare_table.md \
       "$DIR"/summary.json "$DIR"/compare.json "$OUT"/ 2>/dev/null
    for run in "$DIR"/runs/*/; do
        name=$(basename "$run")
        mkdir -p "$OUT/runs/$name"
        cp "$run"/metrics.jsonl "$run"/config.json "$OUT/runs/$name"/ 2>/dev/null
        [ -f "$run/diverged.json" ] && cp "$run/diverged.json" "$OUT/runs/$name"/
    done
fi
exit 0
