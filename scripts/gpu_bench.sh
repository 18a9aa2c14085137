#!/usr/bin/env bash
# One GPU run of the benchmarks of docs/benchmarks.md, sized to finish within 10 minutes on
# one H200: every step gets a time limit from what is left of a 560 s budget, so a slow step
# cannot take the others down.
#
#   scripts/gpu_bench.sh [OUT]        (default OUT: gpu_bench)
#
# Writes into OUT: stack/ (anode bench: CSV, markdown, PNG plots), models/ and models_b128/
# (anode bench models), preflight/ (a quick run that checks the GPU path first), log.txt and
# environment.txt. Uses $VENV (default .venv) if it exists, else creates it with the system
# site packages (so a preinstalled CUDA torch is used) and installs this package into it;
# without network access the package is used from src/ instead.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT=${1:-gpu_bench}
VENV=${VENV:-.venv}
BUDGET=${BUDGET:-560}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1

# Seconds for the next step: at most $1, and never more than what is left minus $2.
limit() {
    local left=$((BUDGET - SECONDS - ${2:-0}))
    if [ "$left" -lt "$1" ]; then echo $((left > 10 ? left : 10)); else echo "$1"; fi
}

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv --system-site-packages "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
if ! python -c "import anode" 2>/dev/null; then
    if python -c "import torch, numpy, matplotlib, tqdm, checkpoint_schedules" 2>/dev/null; then
        timeout 60 pip install -q --no-deps --no-build-isolation -e . || true
    else
        timeout 90 pip install -q --retries 0 --timeout 10 -e ".[compare]" || true
    fi
    python -c "import anode" 2>/dev/null || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
python - <<'EOF' | tee "$OUT/environment.txt"
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NONE")
try:
    import torchdiffeq
    print("torchdiffeq", torchdiffeq.__version__)
except ImportError:
    print("torchdiffeq not installed: its methods are skipped")
EOF
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "CUDA is not available to this Python; nothing to measure"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/environment.txt" 2>/dev/null || true

BENCH="python -m anode_workbench.cli bench"
ISOLATION=fork

# 1. Preflight (about 30 s): the quick sweep on the GPU. Measurements run in processes forked
#    from a server that never initialised CUDA; exit status 3 (a measurement failed) or a
#    timeout means that does not work here: fall back to a new interpreter per configuration
#    (slower to start, so the sweep below is made smaller).
timeout "$(limit 90 400)" $BENCH --quick --device cuda --out "$OUT/preflight" --isolation fork
status=$?
if [ "$status" -eq 3 ] || [ "$status" -ge 124 ]; then
    echo "preflight with forked processes failed (status $status); using --isolation spawn"
    ISOLATION=spawn
fi

# 2. The issue-7 sweep on GPU-sized input (about 5 minutes): every N_t at L = 4 and every L
#    at N_t = 16 (the target configuration is in both), euler, batch 32, 64 channels, 32x32.
if [ "$ISOLATION" = fork ]; then
    EXTRA=()
else
    EXTRA=(--steps 1,4,16,32 --snapshots 4)
fi
timeout "$(limit 300 150)" $BENCH --device cuda --out "$OUT/stack" --grid cross --fixed-layers 4 \
    --fixed-steps 16 --method euler --batch 32 --channels 64 --size 32 --repeats 5 \
    --isolation "$ISOLATION" "${EXTRA[@]}"
echo "stack sweep exit status $?"

# 3. Model training steps (about 2 minutes): the paper's two models and their baselines at
#    batch 32 as on the CPU, then the two ODE models at batch 128 for throughput.
timeout "$(limit 90 60)" $BENCH models --device cuda --out "$OUT/models" --models "resnet18*,sqnxt23*" \
    --batch 32 --repeats 5 --isolation "$ISOLATION"
echo "models (batch 32) exit status $?"
timeout "$(limit 60 0)" $BENCH models --device cuda --out "$OUT/models_b128" \
    --models "resnet18_ode,sqnxt23_ode" --batch 128 --repeats 5 --isolation "$ISOLATION"
echo "models (batch 128) exit status $?"
echo "total ${SECONDS} s"
ls -R "$OUT"
