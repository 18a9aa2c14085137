#!/usr/bin/env bash
# One 15-minute GPU session, prepared: the measurements of docs/results.md's GPU section.
#
# Run from the project root of a fresh machine that received the checkout and carry/ (made
# by scripts/prepare_carry.sh; no package index, no ../shared needed):
#
#   OUT=/path/to/out bash scripts/gpu_session.sh                          # on one GPU
#   ANODE_SESSION=rehearse OUT=/tmp/out-rehearse bash scripts/gpu_session.sh   # tiny, on a CPU
#
# Steps, each under its own time limit taken from a budget of BUDGET seconds (560 on a GPU:
# the session's 15 minutes less the machine's start and the copying of results), so that a
# slow step cannot take the later ones down:
#   1. setup (~15 s): unpack the CIFAR-10 mosaic into the official python layout in $WORK,
#      unpack the carried wheels into $WORK/site; the project runs from src/.
#   2. tests (<= 50 s): the CUDA test and the tests of recipes, models and autograd uses.
#   3. bench (<= 75 s): `anode bench models` of the paper's two networks and baselines.
#   4. training (what is left, ~375 s; at most 420), all at once on the one device:
#      - `anode compare --recipe fast`, ResNet family (Euler, N_t = 2): plain, anode and
#        backsolve; its anode run is the recipe's measurement (resnet18_ode, anode);
#      - `anode compare --recipe fast`, SqueezeNext family (midpoint, N_t = 2), SQNXT_EPOCHS
#        epochs (the one-cycle schedule is fitted to them);
#      - `anode train --recipe fast --model resnet18_ode_noact`: the variant whose ODE
#        function does not end in a ReLU, reported next to the paper's.
#      A time limit stops them with SIGINT: finished epochs are kept and the reports drawn.
#   5. report (<= 30 s): $OUT/results_gpu.md, the GPU section of docs/results.md, with its
#      tables and the plots copied into $OUT.
# Every step's exit status and seconds go to $OUT/steps.tsv, its output to $OUT/log.txt.
#
# env: OUT (required) output folder; ANODE_SESSION gpu (default) or rehearse;
#      CARRY (carry) the carried folder; WORK (/tmp/anode-session) data, runs, checkpoints;
#      BUDGET seconds of the whole script; T_TRAIN seconds of the training step (default:
#      what the budget leaves, at most 420); RESNET_EPOCHS, SQNXT_EPOCHS epochs of the two
#      comparisons (default: the recipe's 20 and 8); NOACT=0 skips the noact run; PY
#      (python3) the Python that has torch.
# Worst case 575 s: setup, tests and bench at their limits, training stopped at its limit
# (and killed 20 s later), both reports redrawn at their 30 s limits.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the output folder}"
MODE=${ANODE_SESSION:-gpu}
CARRY=${CARRY:-carry}
WORK=${WORK:-/tmp/anode-session}
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd)
exec > >(tee -a "$OUT/log.txt") 2>&1
printf 'step\tstatus\tseconds\n' > "$OUT/steps.tsv"

case "$MODE" in
gpu)
    BUDGET=${BUDGET:-560}; DEVICE=cuda; SIZE=full; NOACT_MODEL=resnet18_ode_noact
    BENCH_MODELS="resnet18,resnet18_ode,sqnxt23,sqnxt23_ode"; BENCH_ARGS=(--batch 256 --repeats 3)
    SIZES=(); SQNXT_EPOCHS=${SQNXT_EPOCHS:-8}
    TESTS=(tests/library/test_revolve.py tests/workbench/test_accel.py tests/workbench/test_recipes.py tests/library/test_models.py
           tests/library/test_autograd_uses.py)
    ;;
rehearse)
    # The same steps on a CPU at tiny sizes: every command line and file of the GPU session
    # is exercised, in a few minutes on two cores.
    BUDGET=${BUDGET:-1500}; DEVICE=cpu; SIZE=small; NOACT_MODEL=resnet_ode_small_noact
    BENCH_MODELS="resnet_small,resnet_ode_small"; BENCH_ARGS=(--batch 8 --repeats 1 --size 16)
    SIZES=(--subset 512 --test-subset 200 --epoch-test-subset 100 --batch-size 64)
    RESNET_EPOCHS=${RESNET_EPOCHS:-2}; SQNXT_EPOCHS=${SQNXT_EPOCHS:-2}
    TESTS=(tests/workbench/test_recipes.py)
    ;;
*) echo "ANODE_SESSION must be gpu or rehearse, got $MODE" >&2; exit 2 ;;
esac
RESNET_EPOCHS=${RESNET_EPOCHS:-}
NOACT=${NOACT:-1}
PY=${PY:-python3}
DATA="$WORK/data"

# Seconds for the next step: at most $1, and never more than what is left of the budget
# minus $2 (kept for the steps after it); at least 10.
limit() {
    local left=$((BUDGET - SECONDS - ${2:-0}))
    if [ "$left" -lt "$1" ]; then echo $((left > 10 ? left : 10)); else echo "$1"; fi
}
# step NAME COMMAND...: run, record status and seconds.
step() {
    local name=$1 start=$SECONDS status
    shift
    echo "=== $name ($(date +%T), ${SECONDS} s into the session)"
    "$@"
    status=$?
    printf '%s\t%s\t%s\n' "$name" "$status" $((SECONDS - start)) >> "$OUT/steps.tsv"
    echo "=== $name: exit status $status after $((SECONDS - start)) s"
    return 0
}

# 1. setup -------------------------------------------------------------------------------
setup() {
    [ -f "$CARRY/cifar10-mosaic/mosaic.jpg" ] || { echo "no $CARRY/cifar10-mosaic (run scripts/prepare_carry.sh)"; return 2; }
    if [ ! -f "$DATA/cifar-10-batches-py/test_batch" ]; then
        timeout 120 "$PY" "$CARRY/cifar10-mosaic/unpack.py" "$CARRY/cifar10-mosaic" "$DATA" || return 3
    fi
    # A wheel is a zip archive: unpacked onto the path it imports without pip or an index.
    mkdir -p "$WORK/site"
    for whl in "$CARRY"/wheels/*.whl; do
        [ -f "$whl" ] && "$PY" -m zipfile -e "$whl" "$WORK/site"
    done
    "$PY" - <<'EOF' | tee "$OUT/environment.txt"
import platform, sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU: " + platform.processor() + ")")
for name in ("torchdiffeq", "checkpoint_schedules", "xdist", "hypothesis"):
    try:
        mod = __import__(name)
        print(name, getattr(mod, "__version__", "present"))
    except ImportError:
        print(name, "missing")
import anode
print("anode from", anode.__file__)
EOF
    git log -1 --format='commit %H %s' >> "$OUT/environment.txt" 2>/dev/null || true
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$OUT/environment.txt" 2>/dev/null || true
}
export PYTHONPATH="$WORK/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
ANODE=("$PY" -m anode_workbench.cli)
step setup setup
[ -f "$DATA/cifar-10-batches-py/test_batch" ] || { echo "setup failed: no data in $DATA"; exit 2; }
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "CUDA is not available; nothing to measure"; exit 1
fi

# 2. tests -------------------------------------------------------------------------------
XDIST=()
"$PY" -c "import xdist" 2>/dev/null && XDIST=(-n 8)
step tests timeout -k 5 "$(limit 50 450)" "$PY" -m pytest -q -x -p no:cacheprovider "${XDIST[@]}" "${TESTS[@]}"

# 3. bench -------------------------------------------------------------------------------
step bench timeout -k 5 "$(limit 75 420)" "${ANODE[@]}" bench models --device "$DEVICE" \
    --models "$BENCH_MODELS" "${BENCH_ARGS[@]}" --out "$OUT/models"

# 4. training ----------------------------------------------------------------------------
T_TRAIN=${T_TRAIN:-$(limit 420 70)}
echo "training: $T_TRAIN s for the comparisons and the noact run"
COMMON=(--recipe fast --seeds 0 --jobs 3 --device "$DEVICE" --data-root "$DATA" --no-progress "${SIZES[@]}")
compare_resnet() {
    timeout -s INT -k 20 "$T_TRAIN" "${ANODE[@]}" compare "${COMMON[@]}" --family resnet --size "$SIZE" \
        --method euler --n-steps 2 ${RESNET_EPOCHS:+--epochs "$RESNET_EPOCHS"} --out "$WORK/compare-resnet"
}
compare_sqnxt() {
    timeout -s INT -k 20 "$T_TRAIN" "${ANODE[@]}" compare "${COMMON[@]}" --family sqnxt --size "$SIZE" \
        --method midpoint --n-steps 2 --epochs "$SQNXT_EPOCHS" --out "$WORK/compare-sqnxt"
}
train_noact() {
    # Two threads: the loop runs on the GPU; the comparisons' processes need the cores.
    timeout -s INT -k 20 "$T_TRAIN" "${ANODE[@]}" train --recipe fast --model "$NOACT_MODEL" \
        --device "$DEVICE" --data-root "$DATA" --threads 2 --no-progress "${SIZES[@]}" \
        ${RESNET_EPOCHS:+--epochs "$RESNET_EPOCHS"} --out "$WORK/train-noact"
}
# The jobs are waited for by their ids: a bare `wait` would also wait for the `tee` of the
# log (a process substitution), which never ends.
JOBS=()
step compare-resnet compare_resnet & JOBS+=($!)
step compare-sqnxt compare_sqnxt & JOBS+=($!)
if [ "$NOACT" = 1 ]; then step train-noact train_noact & JOBS+=($!); fi
wait "${JOBS[@]}"

# 5. report ------------------------------------------------------------------------------
collect() {
    local family
    for family in resnet sqnxt; do
        local dir="$WORK/compare-$family" dest="$OUT/compare-$family"
        [ -f "$dir/compare.json" ] || continue
        # A time limit may have stopped the report inside matplotlib: draw it again.
        timeout 30 "${ANODE[@]}" compare --report-only "$dir" >/dev/null
        mkdir -p "$dest"
        cp "$dir"/compare.json "$dir"/compare_table.md "$dir"/summary.json "$dir"/*.png "$dest"/ 2>/dev/null
        for run in "$dir"/runs/*/; do
            [ -d "$run" ] || continue
            mkdir -p "$dest/runs/$(basename "$run")"
            cp "$run"/metrics.jsonl "$run"/config.json "$run"/diverged.json "$dest/runs/$(basename "$run")"/ 2>/dev/null
        done
    done
    if [ -d "$WORK/train-noact" ]; then
        mkdir -p "$OUT/train-noact"
        cp "$WORK"/train-noact/{metrics.jsonl,config.json,curves.png} "$OUT/train-noact"/ 2>/dev/null
    fi
    "$PY" scripts/session_report.py "$OUT" "$MODE"
}
step report collect
echo "session: ${SECONDS} s in all"
ls -R "$OUT" | head -80
exit 0
