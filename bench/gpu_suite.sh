#!/usr/bin/env bash
# Everything a lent GPU machine should run, in one call of under 10 minutes:
#   1. pytest -q tests/            (kernel parity tests, compiled on the GPU)
#   2. bench/bench_attention.py, bench/bench_composition.py, bench/kernel_resources.py (those that exist)
#   3. bench/throughput.py at batch 64 and 256, in bf16 and in fp32, with --json and --plot
# Each step has its own time limit; a failing or timed-out step does not stop the others. Writes
# at most 6 files under OUT_DIR (suite.log with every step's output, summary.txt, and the JSON and PNG
# of each throughput run) and prints the summary.
#
#   bash bench/gpu_suite.sh OUT_DIR
#
# Time limits (seconds) can be changed through SUITE_PYTEST_S, SUITE_KERNELS_S (each kernel script),
# SUITE_BF16_S and SUITE_FP32_S; SUITE_THROUGHPUT_ARGS is added to both throughput runs. Python wheels missing on the machine (e.g. fvcore and its needs, for
# the GFLOPs column; without it the released code's counts are shown, labelled) are installed from
# .whl/ at the repository root when that folder exists.
set -u

OUT_DIR=${1:?usage: bash bench/gpu_suite.sh OUT_DIR}
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
LOG="$OUT_DIR/suite.log"
SUMMARY="$OUT_DIR/summary.txt"
: >"$LOG"
: >"$SUMMARY"
cd "$REPO" || exit 1

export PYTHONUNBUFFERED=1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python3}

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >>"$LOG" 2>&1 && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

# step NAME LIMIT_S COMMAND...: run with a time limit, log its output, record its status and duration
step() {
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS status
  printf '\n===== %s (limit %ss): %s\n' "$name" "$limit" "$*" >>"$LOG"
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  case $rc in
    0) status="ok" ;;
    124 | 137) status="TIMED OUT" ;;
    *) status="FAILED (rc $rc)" ;;
  esac
  printf '%-22s %-16s %4ss\n' "$name" "$status" "$((SECONDS - start))" | tee -a "$SUMMARY"
}

{
  echo "gpu_suite $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '-')"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$PYTHON" -c "import torch, importlib.metadata as m; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'triton', m.version('triton'), 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')"
} 2>&1 | tee -a "$SUMMARY" "$LOG"

step pytest "${SUITE_PYTEST_S:-240}" "$PYTHON" -m pytest -q -p no:cacheprovider tests/
for script in bench_attention bench_composition kernel_resources; do
  if [ -f "bench/$script.py" ]; then
    step "$script" "${SUITE_KERNELS_S:-60}" "$PYTHON" "bench/$script.py"
  else
    printf '%-22s %-16s\n' "$script" "skipped (absent)" | tee -a "$SUMMARY"
  fi
done
step throughput_bf16 "${SUITE_BF16_S:-90}" "$PYTHON" bench/throughput.py --dtype bf16 --batch-size 64,256 \
  --cuda-graphs --no-progress --flop-cache none ${SUITE_THROUGHPUT_ARGS:-} \
  --json "$OUT_DIR/throughput_bf16.json" --plot "$OUT_DIR/throughput_bf16.png"
step throughput_fp32 "${SUITE_FP32_S:-120}" "$PYTHON" bench/throughput.py --dtype fp32 --batch-size 64,256 \
  --warmup 3 --iters 10 --no-progress --flop-cache none ${SUITE_THROUGHPUT_ARGS:-} \
  --json "$OUT_DIR/throughput_fp32.json" --plot "$OUT_DIR/throughput_fp32.png"

# the throughput tables, from the JSON files the runs wrote
for run in bf16 fp32; do
  json="$OUT_DIR/throughput_$run.json"
  [ -f "$json" ] || continue
  "$PYTHON" - "$json" <<'EOF' 2>&1 | tee -a "$SUMMARY"
import json, sys
from sharpose.benchmark import BenchmarkResult, Record, format_header, format_table
data = json.load(open(sys.argv[1]))
result = BenchmarkResult(data["environment"], data["settings"], [Record(**r) for r in data["records"]], data["notes"])
print(f"\n{sys.argv[1]}\n{format_header(result)}\n{format_table(result.records)}")
EOF
done
echo "logs: $LOG"
