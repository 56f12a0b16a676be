#!/usr/bin/env bash
# The GPU checks in one call, the step time limits totalling 520 s by default:
#   1. the kernel and Triton-model tests, compiled on the GPU (pytest-xdist when installed), then
#      tests/test_gpu.py (what only a GPU shows: bf16, autocast, CUDA graphs, determinism, recompiles) and
#      bench/gpu_checks.py: the capturable forward under sync debug mode "error", and CUDA graphs with
#      early exit replayed at exit rates 0, 0.3 and 0.6 against eager
#   2. bench/bench_attention.py and bench/bench_composition.py (triton.testing.do_bench)
#   3. bench/throughput.py: bf16 at batch 256 (the target run, with CUDA graphs, transformers' VitPose
#      when installed, and a plot), bf16 at batch 64, bf16-autocast training steps of the Base pair at
#      256x192 and batch 64 (--train), fp32 at batch 64 and 256; the most important first, each with
#      its own JSON
# Each step has its own time limit; a failing or timed-out step does not stop the others. Writes
# at most 7 files under OUT_DIR (suite.log with every step's output, summary.txt, four JSON files and
# one PNG) and prints the summary. The AOT register/spill tables need no GPU: bench/kernel_resources.py.
#
#   bash bench/gpu_suite.sh OUT_DIR
#
# Time limits (seconds) can be changed through SUITE_PYTEST_S, SUITE_GPU_TESTS_S, SUITE_CHECKS_S, SUITE_KERNELS_S
# (each kernel script), SUITE_BF16_256_S, SUITE_BF16_64_S, SUITE_TRAIN_S and SUITE_FP32_S; SUITE_THROUGHPUT_ARGS is
# added to every throughput run. Wheels in .whl/ at the repository root (bench/offline_wheels.sh: fvcore for the
# GFLOPs column, pycocotools) are installed first when that folder exists, for machines with no package index.
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

KERNEL_TESTS="tests/test_backend.py tests/test_fused_attention.py tests/test_varlen_attention.py
  tests/test_token_composition.py tests/test_model_triton.py tests/test_throughput.py
  tests/test_host_sync.py tests/test_determinism.py tests/test_cuda_graphs.py tests/test_attention_score.py
  tests/test_attention_tiles.py tests/test_torch_library.py"
# the project's pytest options name plugins (pytest-xdist, pytest-benchmark) a GPU image may lack
PYTEST_OPTS=(-q -p no:cacheprovider -o "addopts=-ra")
PARALLEL=""
"$PYTHON" -c "import xdist" 2>/dev/null && PARALLEL="-n 8"
# shellcheck disable=SC2086
step pytest "${SUITE_PYTEST_S:-100}" "$PYTHON" -m pytest "${PYTEST_OPTS[@]}" $PARALLEL $KERNEL_TESTS
step gpu_tests "${SUITE_GPU_TESTS_S:-50}" "$PYTHON" -m pytest "${PYTEST_OPTS[@]}" -rs tests/test_gpu.py
step gpu_checks "${SUITE_CHECKS_S:-40}" "$PYTHON" bench/gpu_checks.py
for script in bench_attention bench_composition; do
  step "$script" "${SUITE_KERNELS_S:-45}" "$PYTHON" "bench/$script.py"
done
# throughput RUN LIMIT ARGS...: one bench/throughput.py run writing OUT_DIR/throughput_RUN.json
throughput() {
  local run=$1 limit=$2
  shift 2
  # shellcheck disable=SC2086
  step "throughput_$run" "$limit" "$PYTHON" bench/throughput.py --no-progress --flop-cache "$OUT_DIR/.flops.json" \
    "$@" ${SUITE_THROUGHPUT_ARGS:-} --json "$OUT_DIR/throughput_$run.json"
}
throughput bf16_256 "${SUITE_BF16_256_S:-100}" --dtype bf16 --batch-size 256 --cuda-graphs \
  --plot "$OUT_DIR/throughput_bf16_256.png"
throughput bf16_64 "${SUITE_BF16_64_S:-45}" --dtype bf16 --batch-size 64 --cuda-graphs --no-hf
throughput train_bf16 "${SUITE_TRAIN_S:-45}" --train --dtype bf16 --resolution 256x192 --batch-size 64 \
  --warmup 2 --iters 8
throughput fp32 "${SUITE_FP32_S:-50}" --dtype fp32 --batch-size 64,256 --warmup 2 --iters 8 --no-hf
rm -f "$OUT_DIR/.flops.json"

# the throughput tables, from the JSON files the runs wrote
for run in bf16_256 bf16_64 train_bf16 fp32; do
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
