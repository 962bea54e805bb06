#!/usr/bin/env bash
# `make gpu-check`: the checks a GPU machine lent for a few minutes should run, prepared on the CPU.
#
# Installs nothing from the network: packages the machine lacks travel as wheels in .whl/ (see
# ../.library/device/README.md or docs/benchmarks.md) and are installed from there into /tmp. Runs, each
# under its own time limit, and writes each one's output into one folder as it goes (a run stopped at
# a time limit keeps what finished):
#
#   summary.txt      machine, versions, and one line per step with its exit code, time and verdicts
#   tests.txt        make test-gpu (pytest -m gpu)
#   egl.txt          benchmarks/egl.py --device cuda
#   inference.txt    benchmarks/inference.py --device cuda
#   paper000.txt     the paper-000 study on the GPU: benchmarks/label_efficiency.py --device cuda
#                    --parallel N at full width (10 / 40 / all labelled x SSL-GAN and ConvNet x 3 seeds),
#                    one line per finished fit, then the table and the targets of issue 16
#   paper000_seq.txt the same fits of one seed run one at a time (the sequential reference)
#   gpu_util.csv     nvidia-smi samples (1 s) during the parallel study
#   paper001.txt     benchmarks/collaborative.py --device cuda (paper 001's ablations, GPU-sized)
#   (inference.txt also gets step memory: benchmarks/memory.py --device cuda, paper 001's configs' peak GPU memory)
#
# The study's verdicts (GPU >= 70% busy while it runs; >= 4x faster than sequential) are appended to
# summary.txt by benchmarks/gpu_check_report.py. Settings (environment variables):
#   GPU_CHECK_OUT   output folder (default: $OUT on the device machine, else runs/gpu-check)
#   GPU_CHECK_STEPS steps to run, in order (default: "tests egl inference paper000 paper001 memory")
#   GPU_CHECK_DEVICE cuda (default) or cpu (only to try the script itself on a CPU box)
#   P000_PARALLEL / P000_EPOCHS / P000_WIDTH / P000_IMAGES / P000_SEEDS / P000_LABELS / P000_LIMIT
#   P001_ARGS / P001_LIMIT, MEMORY_LIMIT, PYTHON (default python3, or .venv/bin/python when it exists)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${GPU_CHECK_OUT:-${OUT:-runs/gpu-check}}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
STEPS=${GPU_CHECK_STEPS:-"tests egl inference paper000 paper001 memory"}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
P000_PARALLEL=${P000_PARALLEL:-8}
P000_EPOCHS=${P000_EPOCHS:-5}
P000_WIDTH=${P000_WIDTH:-1}
P000_IMAGES=${P000_IMAGES:-541}
P000_SEEDS=${P000_SEEDS:-"0 1 2"}
P000_LABELS=${P000_LABELS:-"10 40 all"}
P000_LIMIT=${P000_LIMIT:-240}
P000_EXTRA=${P000_EXTRA:-}
P001_ARGS=${P001_ARGS:-"--seeds 0 --size 512 --width 1 --source-size 1152 765 --batch-size 16 --workers 8 --steps-seg 150 --steps-grading 150 --joint-batches 40"}
P001_LIMIT=${P001_LIMIT:-120}
MEMORY_LIMIT=${MEMORY_LIMIT:-150}
WORK=${GPU_CHECK_WORK:-/tmp/retinalab-gpu-check}
SUMMARY="$OUT_DIR/summary.txt"

export PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true RETINALAB_CACHE="$WORK/cache"
# wheels carried for what the machine lacks (albumentations, jsonargparse, smp, wandb, ...): no network
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/retinalab-site .whl/*.whl \
        || { echo "installing the wheels in .whl/ failed" | tee -a "$SUMMARY"; exit 2; }
    export PYTHONPATH=/tmp/retinalab-site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}  # retinalab from this checkout, installed or not

{
    echo "# make gpu-check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "steps: $STEPS; device $DEVICE; output $OUT_DIR"
    "$PYTHON" - <<'PY'
import os, platform
import torch
print(f"python {platform.python_version()}, torch {torch.__version__}, cuda {torch.version.cuda}, {os.cpu_count()} CPU cores")
print("GPU:", ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "none")
try:
    import pytorch_lightning, wandb, albumentations, jsonargparse, segmentation_models_pytorch
    print(f"lightning {pytorch_lightning.__version__}, wandb {wandb.__version__}, albumentations {albumentations.__version__}, "
          f"jsonargparse {jsonargparse.__version__}, smp {segmentation_models_pytorch.__version__}")
except ImportError as e:
    print(f"MISSING PACKAGE: {e} (carry it as a cp312 wheel in .whl/)")
PY
} 2>&1 | tee -a "$SUMMARY"
if [ "$DEVICE" = cuda ] && ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device visible: nothing to check here (GPU_CHECK_DEVICE=cpu tries the script on the CPU)" | tee -a "$SUMMARY"
    exit 3
fi

# step NAME LIMIT_S COMMAND...: run it with its output in $OUT_DIR/NAME.txt, record exit code and time
# (STEP_FILE=OTHER appends to $OUT_DIR/OTHER.txt instead: the device returns at most 8 files)
step() {
    local name=$1 limit=$2
    shift 2
    local file=${STEP_FILE:-$name}
    echo "== $name (limit ${limit} s): $(printf '%q ' "$@")" | tee -a "$SUMMARY"
    local start=$SECONDS
    if [ "$file" = "$name" ]; then
        timeout --kill-after=15 "$limit" "$@" > "$OUT_DIR/$file.txt" 2>&1
    else
        echo "== $name" >> "$OUT_DIR/$file.txt"
        timeout --kill-after=15 "$limit" "$@" >> "$OUT_DIR/$file.txt" 2>&1
    fi
    local rc=$?
    local note=""
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && note=" (stopped at its time limit; what finished is kept)"
    echo "   exit $rc after $((SECONDS - start)) s$note -> $file.txt" | tee -a "$SUMMARY"
    return 0
}

P000=(benchmarks/label_efficiency.py --device "$DEVICE" --width "$P000_WIDTH" --epochs "$P000_EPOCHS" --images "$P000_IMAGES"
      --presets scarce --arms SSL-GAN "ConvNet, equal steps")
[ "$DEVICE" = cuda ] && P000+=(--precision bf16-mixed)
for s in $STEPS; do
    case $s in
    tests) step tests 120 "$PYTHON" -m pytest -q -m gpu -rs -p no:cacheprovider ;;
    egl) step egl 60 "$PYTHON" benchmarks/egl.py --device "$DEVICE" ;;
    inference) step inference 60 "$PYTHON" benchmarks/inference.py --device "$DEVICE" --seconds 1 ;;
    paper000)
        mkdir -p "$WORK"
        sampler=""
        if command -v nvidia-smi > /dev/null; then
            nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 1000 > "$OUT_DIR/gpu_util.csv" &
            sampler=$!
        fi
        # shellcheck disable=SC2086
        step paper000 "$P000_LIMIT" "$PYTHON" "${P000[@]}" --parallel "$P000_PARALLEL" --seeds $P000_SEEDS --labels $P000_LABELS \
            --work "$WORK/p000" $P000_EXTRA
        [ -n "$sampler" ] && kill "$sampler" 2> /dev/null
        # the sequential reference: the same fits of one seed, one process at a time, all cores each
        # shellcheck disable=SC2086
        step paper000_seq "$((P000_LIMIT / 2))" "$PYTHON" "${P000[@]}" --parallel 1 --seeds ${P000_SEEDS%% *} --labels $P000_LABELS \
            --work "$WORK/p000_seq" $P000_EXTRA
        "$PYTHON" benchmarks/gpu_check_report.py --parallel-work "$WORK/p000" --sequential-work "$WORK/p000_seq" \
            --util "$OUT_DIR/gpu_util.csv" 2>&1 | tee -a "$SUMMARY"
        ;;
    paper001)
        # shellcheck disable=SC2086
        step paper001 "$P001_LIMIT" "$PYTHON" benchmarks/collaborative.py --device "$DEVICE" --work "$WORK/p001" $P001_ARGS ;;
    memory)
        # paper 001's configs: peak GPU memory at 4 photographs a step and at each config's own batch
        STEP_FILE=inference step memory "$MEMORY_LIMIT" "$PYTHON" benchmarks/memory.py --device "$DEVICE" --batches 4 --full --work "$WORK/memory" ;;
    *) echo "unknown step $s (tests egl inference paper000 paper001 memory)" | tee -a "$SUMMARY" ;;
    esac
done
echo "done: $(date -u +%H:%M:%SZ); every output is in $OUT_DIR" | tee -a "$SUMMARY"
