#!/bin/bash
# Everything issue 13 measures on a GPU, in one go, written to one markdown file:
#   1. training throughput of configs/video_realistic.yaml on one GPU (benchmarks/throughput.py:
#      step time, tokens/s, peak memory, achieved TFLOP/s and MFU; fp32, bf16, activation
#      checkpointing, compile), and on all GPUs with FSDP2 when there are several;
#   2. sequential vs Jacobi sampling of the image flow (benchmarks/jacobi.py, batches 1..64);
#   3. sequential vs video-aware Jacobi sampling of the video flow (benchmarks/video.py);
#   4. a 200-step training run of configs/video_realistic.yaml (bf16): steps/s, loss.
# Usage (from anywhere; it works in the repository root):
#   bash benchmarks/gpu.sh --out results/h200                  # all of it, 60 minutes at most
#   bash benchmarks/gpu.sh --out results/h200 --budget 20      # minutes; later parts are skipped
#   bash benchmarks/gpu.sh --out results/h200 --dry-run        # print the commands, run nothing
# Options: --out DIR (required), --budget MINUTES (default 60), --steps N (the training run,
# default 200), --dry-run. PYTHON picks the interpreter (default: python). Without a CUDA device
# it refuses with one line (exit 2); a part that fails or runs out of time is recorded as such
# and the next one still runs. Output: DIR/gpu-results-<UTC date>.md, logs and JSON beside it.
set -euo pipefail

fail() {
    echo "error: $*" >&2
    exit 2
}

OUT=""
BUDGET_MIN=60
STEPS=200
DRY_RUN=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT=${2:-}; shift 2 || fail "--out needs a folder" ;;
        --budget) BUDGET_MIN=${2:-}; shift 2 || fail "--budget needs minutes" ;;
        --steps) STEPS=${2:-}; shift 2 || fail "--steps needs a count" ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
        *) fail "unknown option '$1'; allowed: --out DIR, --budget MINUTES, --steps N, --dry-run" ;;
    esac
done
[[ -n "$OUT" ]] || fail "--out DIR is required (the folder for the results file)"
[[ "$BUDGET_MIN" =~ ^[1-9][0-9]*$ ]] || fail "--budget '$BUDGET_MIN' is not a whole number of minutes >= 1"
[[ "$STEPS" =~ ^[1-9][0-9]*$ ]] || fail "--steps '$STEPS' is not a count >= 1"

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
STAMP=$(date -u +%Y-%m-%dT%H%MZ)
RESULTS="$OUT/gpu-results-$STAMP.md"

GPUS=1
if ((!DRY_RUN)); then
    command -v "$PYTHON" >/dev/null || fail "PYTHON '$PYTHON' is not a command"
    GPUS=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null) ||
        fail "'$PYTHON' cannot import torch (activate the project's environment or set PYTHON)"
    ((GPUS > 0)) || fail "no CUDA device visible to torch (torch.cuda.is_available() is False): this script measures GPUs; on a CPU run benchmarks/throughput.py --quick"
    mkdir -p "$OUT"
fi

# name | seconds at most | command (one line)
PARTS=(
    "throughput-1gpu|1200|$PYTHON benchmarks/throughput.py --device cuda --processes 1 --steps 10 --warmup 3 --threads 4 --variants ddp ddp+bf16 ddp+ac ddp+compile ddp+bf16+compile --json $OUT/throughput-1gpu.json"
    "jacobi-image|600|$PYTHON benchmarks/jacobi.py --device cuda --batches 1 4 16 64 --repeats 5 --json $OUT/jacobi-image.json"
    "jacobi-video|900|$PYTHON benchmarks/video.py --device cuda --batches 1 8 --repeats 5"
    "train-realistic|1500|$PYTHON -m trainers.train --config configs/video_realistic.yaml trainer.max_steps=$STEPS trainer.warmup_steps=20 trainer.mixed_precision=bf16 trainer.checkpoint_every=0 trainer.log_every=10 trainer.progress=false trainer.plot=false trainer.overwrite=true trainer.output_dir=$OUT/video_realistic_run"
)
if ((GPUS > 1)); then
    PARTS+=("throughput-${GPUS}gpu|1200|$PYTHON benchmarks/throughput.py --device cuda --processes $GPUS --steps 10 --warmup 3 --threads 4 --variants ddp ddp+bf16 fsdp2 fsdp2+bf16 fsdp2+bf16+ac+compile --json $OUT/throughput-${GPUS}gpu.json")
fi

if ((DRY_RUN)); then
    echo "results file: $RESULTS (budget $BUDGET_MIN min)"
    for part in "${PARTS[@]}"; do
        IFS='|' read -r name limit command <<<"$part"
        echo "$name (at most ${limit}s): $command"
    done
    exit 0
fi

DEADLINE=$(($(date +%s) + BUDGET_MIN * 60))
{
    echo "# normkit GPU results, $STAMP"
    echo
    echo "- command: \`bash benchmarks/gpu.sh --out $OUT --budget $BUDGET_MIN --steps $STEPS\`"
    echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "- GPUs: $(nvidia-smi -L 2>/dev/null | tr '\n' ';' || echo "$GPUS")"
    echo "- $("$PYTHON" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}")')"
} >"$RESULTS"

summarise_run() {  # steps/s and losses of the training run, from its metrics.jsonl
    "$PYTHON" - "$1" <<'PY'
import json, statistics, sys
from pathlib import Path
path = Path(sys.argv[1]) / "metrics.jsonl"
records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
if not records:
    print("no metrics were written")
    sys.exit()
later = [r["time_per_step"] for r in records[len(records) // 2:]]
print(f"steps logged: {len(records)}, last step {records[-1]['step']}; loss {records[0]['loss']:.4f}"
      f" (step {records[0]['step']}) -> {records[-1]['loss']:.4f}; median time per step over the "
      f"second half {statistics.median(later):.4f} s ({1 / statistics.median(later):.2f} steps/s)")
PY
}

for part in "${PARTS[@]}"; do
    IFS='|' read -r name limit command <<<"$part"
    left=$((DEADLINE - $(date +%s)))
    {
        echo
        echo "## $name"
        echo
        echo "\`$command\`"
        echo
    } >>"$RESULTS"
    if ((left < 60)); then
        echo "skipped: the time budget (--budget $BUDGET_MIN) is spent" >>"$RESULTS"
        continue
    fi
    ((limit < left)) || limit=$left
    echo "running $name (at most ${limit}s) ..."
    start=$(date +%s)
    rc=0
    # shellcheck disable=SC2086  # the command is one line of words, split on purpose
    timeout --kill-after=30 "$limit" $command >"$OUT/$name.log" 2>&1 || rc=$?
    seconds=$(($(date +%s) - start))
    status="exit $rc"
    ((rc != 124)) || status="stopped after ${limit}s (time cap)"
    {
        echo "$status, ${seconds}s"
        echo
        if [[ $name == train-realistic ]]; then
            summarise_run "$OUT/video_realistic_run"
        else
            echo '```text'
            grep -v -e '^\s*$' -e 'it/s\]' "$OUT/$name.log" | tail -n 40
            echo '```'
        fi
    } >>"$RESULTS"
done
echo "wrote $RESULTS"
