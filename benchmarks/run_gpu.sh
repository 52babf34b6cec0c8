#!/usr/bin/env bash
# One batched GPU session (build + tests + sanitizer + benchmarks), e.g. through the device tool:
#   bash benchmarks/run_gpu.sh            # writes logs and results under ${OUT:-gpu_out}
# Needs a CUDA build of torch, nvcc matching torch's CUDA major version, and triton.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export STEU_EXT_BUILD_DIR=${STEU_EXT_BUILD_DIR:-$PWD/.steu_build}
pip install --no-deps --no-build-isolation -q -e . 2>&1 | tail -2
python -m steu_ext.env_report | tee "$OUT/env.txt"
{ time python -m steu_ext.build -v; } > "$OUT/build.log" 2>&1; tail -5 "$OUT/build.log"
# 1) kernels vs references/oracles on CUDA (cuda + triton + reference backends) and opcheck
STEU_TEST_DEVICE=cuda,cpu python -m pytest -q -x tests/test_doc_counts.py tests/test_row_adam.py \
  tests/test_grad_project.py tests/test_opcheck.py tests/test_triton_kernels.py 2>&1 | tee "$OUT/tests_cuda.log" | tail -5
# 2) compute-sanitizer memcheck / racecheck on the CUDA kernels (small sizes)
for tool in memcheck racecheck; do
  STEU_TEST_DEVICE=cuda STEU_EXT_BACKEND=cuda compute-sanitizer --tool $tool --error-exitcode 9 \
    python -m pytest -q -x tests/test_doc_counts.py tests/test_row_adam.py tests/test_grad_project.py \
    -k "cuda-cuda" > "$OUT/sanitizer_$tool.log" 2>&1; echo "compute-sanitizer $tool exit $?"
done
# 3) benchmarks at the performance.md sizes; results appended to benchmarks/results/*-cuda.jsonl
STEU_BENCH_DEVICE=cuda STEU_BENCH_SIZES=full python -m pytest benchmarks -q -s -p no:cacheprovider \
  --benchmark-json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" | grep -E "us|passed|failed"
cp benchmarks/results/*-cuda.jsonl "$OUT/" 2>/dev/null || true
