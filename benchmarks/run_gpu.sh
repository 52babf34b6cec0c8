#!/usr/bin/env bash
# The whole GPU check as ONE command (about 7.5 minutes on the H200; the device tool allows 10 a call):
#
#   bash benchmarks/gpu_kit.sh        # here, once, optional: .gpu_kit/ (data + tokenizer) for the PMI stage
#   device run:  command "bash benchmarks/run_gpu.sh", carry [".gpu_kit"], timeout_s 540
#   here, after: bash benchmarks/run_gpu.sh --unpack /work/.device/.../results-cuda.tgz
#
# It writes exactly two files into $OUT (the device tool brings back at most 8): run_gpu.log (everything
# printed) and results-cuda.tgz (gpu_run/: env report, build log, each stage's log, JUnit XML, the new
# benchmark records gpu_run/results/*-cuda.jsonl and pytest-benchmark's JSON). `--unpack` extracts it into
# gpu_run/ here and appends the records to benchmarks/results/*-cuda.jsonl (never overwrites them).
#
# Stages, in order; each is time-boxed with `timeout` against one overall deadline (STEU_GPU_BUDGET seconds,
# default 450), and one that fails or times out does not stop the next:
#   env    nvidia-smi; TORCH_CUDA_ARCH_LIST = the visible GPUs' compute capability (9.0 on the H200, so one
#          target is compiled); MAX_JOBS = the machine's cores
#   build  python -m steu_ext.build -v: the C++ CPU and the CUDA extension (sm_90 only)
#   test   the oracle tests of doc_counts / row_adam / grad_project on CUDA (cuda, triton, reference
#          backends), torch.library.opcheck and the Triton sm_90 compile check (4 xdist workers; the nvcc
#          compile-only tests of test_cuda_build.py are left out: the build stage did the real thing)
#   bench  the performance.md sizes (STEU_BENCH_SIZES=full) with fewer rounds (STEU_BENCH_ROUNDS=5), one
#          pytest per benchmark file, so a timeout costs that file alone; SIGINT first, so pytest still
#          writes the records it has
#   pmi    corpus PMI end to end vs the tokenizer alone, workers W = 1, 4, 15, if >= 60 s remain and
#          .gpu_kit/ travelled (the device has no ../shared/data and no MiniLM)
#
# Rehearsal on a machine without a GPU: the same stages on the CPU with tiny sizes (CPU extension only,
# Triton through its interpreter, W = 1, 2), results in a temporary folder (benchmarks/results untouched):
#   bash benchmarks/run_gpu.sh --dry-run          # or STEU_GPU_DRY=1; OUT defaults to /tmp/steu_gpu_dry
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ "${1:-}" = "--unpack" ]; then
  tgz=${2:?usage: run_gpu.sh --unpack results-cuda.tgz}
  case $tgz in /*) ;; *) tgz=$OLDPWD/$tgz ;; esac   # relative to where it was called from
  tar xzf "$tgz" -C "$ROOT" gpu_run || exit 1
  mkdir -p benchmarks/results
  for f in gpu_run/results/*-cuda.jsonl; do   # a --dry-run's tiny CPU records stay in gpu_run/ only
    [ -e "$f" ] || continue
    cat "$f" >> "benchmarks/results/$(basename "$f")"
    echo "appended $(wc -l < "$f") records to benchmarks/results/$(basename "$f")"
  done
  exit 0
fi

DRY=${STEU_GPU_DRY:-0}
[ "${1:-}" = "--dry-run" ] && DRY=1
PY=${PYTHON:-$(command -v python3 || command -v python)}
if [ "$DRY" = 1 ]; then
  OUT=${OUT:-/tmp/steu_gpu_dry}
  DEV=cpu
else
  OUT=${OUT:-$ROOT/gpu_out}
  DEV=cuda
fi
BUDGET=${STEU_GPU_BUDGET:-450}
T0=$(date +%s)
DEADLINE=$((T0 + BUDGET))
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/steu_gpu_run.XXXXXX")
W=$WORK/gpu_run
mkdir -p "$W/results"
LOG=$OUT/run_gpu.log
exec > >(tee "$LOG") 2>&1
TEE_PID=$!

export PYTHONUNBUFFERED=1
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}   # the tree itself, no pip install (it costs time)
export STEU_EXT_BUILD_DIR=${STEU_EXT_BUILD_DIR:-$ROOT/.steu_build}
export STEU_BENCH_RESULTS=$W/results                 # fresh records only; --unpack appends them here
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
if [ -d .gpu_kit/data ]; then export STEU_DATA_ROOT=${STEU_DATA_ROOT:-$ROOT/.gpu_kit/data}; fi
if [ -d .gpu_kit/minilm_tokenizer ]; then
  export STEU_BENCH_TOKENIZER=${STEU_BENCH_TOKENIZER:-$ROOT/.gpu_kit/minilm_tokenizer}
fi

left() { echo $((DEADLINE - $(date +%s))); }
stamp() { echo "== +$(($(date +%s) - T0))s ($(left)s left) $*"; }
declare -A STATUS
# box NAME CAP RESERVE CMD...: run CMD under `timeout` for min(CAP, time left - RESERVE) seconds (RESERVE:
# kept for the later stages, about 20 s each); skipped under 10 s. SIGINT first (pytest then writes its records
# and reports), SIGKILL 15 s later.
box() {
  local name=$1 cap=$2 reserve=$3
  shift 3
  local t=$(($(left) - reserve))
  [ "$t" -gt "$cap" ] && t=$cap
  if [ "$t" -lt 10 ]; then
    stamp "$name: skipped (no time left)"
    STATUS[$name]="skipped"
    return 0
  fi
  stamp "$name (time box ${t}s): $*"
  timeout -s INT -k 15 "$t" bash -c '"$@"' "$name" "$@"   # a new bash: the stage functions are exported
  local rc=$?
  case $rc in
    0) STATUS[$name]="ok" ;;
    124 | 137) STATUS[$name]="TIMED OUT after ${t}s" ;;
    *) STATUS[$name]="FAILED (exit $rc)" ;;
  esac
  # A build killed mid-way leaves its lock, and every later load would wait for it (minutes): the stage's
  # processes are gone now, so any lock in our build folder is stale.
  rm -f "$STEU_EXT_BUILD_DIR"/*/lock
  stamp "$name: ${STATUS[$name]}"
  return 0
}

# ---- env -------------------------------------------------------------------------------------------------
stamp "env: $DEV mode, budget ${BUDGET}s, MAX_JOBS=$MAX_JOBS, out $OUT"
if [ "$DRY" = 1 ]; then
  export TRITON_INTERPRET=1 STEU_TEST_DEVICE=cpu STEU_BENCH_DEVICE=cpu STEU_BENCH_SIZES=tiny
  export STEU_BENCH_ROUNDS=${STEU_BENCH_ROUNDS:-2}
  export STEU_BENCH_PMI_DOCS=${STEU_BENCH_PMI_DOCS:-96} STEU_BENCH_PMI_WORKERS=${STEU_BENCH_PMI_WORKERS:-1,2}
  BUILD_ARGS=--cpu-only
else
  unset TRITON_INTERPRET
  export STEU_TEST_DEVICE=cuda STEU_BENCH_DEVICE=cuda STEU_BENCH_SIZES=full
  export STEU_BENCH_ROUNDS=${STEU_BENCH_ROUNDS:-5}
  export STEU_BENCH_PMI_DOCS=${STEU_BENCH_PMI_DOCS:-20000} STEU_BENCH_PMI_WORKERS=${STEU_BENCH_PMI_WORKERS:-1,4,15}
  BUILD_ARGS=
  nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee "$W/nvidia_smi.txt"
  if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | sort -u | paste -sd';')
    [ -z "$arch" ] && arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null)
    [ -n "$arch" ] && export TORCH_CUDA_ARCH_LIST=$arch
  fi
  echo "TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-unset}"
fi
export STEU_BENCH_PMI_ROUNDS=${STEU_BENCH_PMI_ROUNDS:-1}
PYTEST="$PY -m pytest -q -p no:cacheprovider -o addopts=-ra"
"$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST+=" --timeout=120"
# On the GPU machine (16 cores) the tests run in 4 pytest-xdist workers when it is there: much of their time
# is Triton compiling each kernel specialisation, which then proceeds 4 at a time.
XDIST=
[ "$DRY" != 1 ] && "$PY" -c "import xdist" 2>/dev/null && XDIST="-n 4"
export W DEV PY PYTEST BUILD_ARGS XDIST

# ---- build -----------------------------------------------------------------------------------------------
build() {  # the extensions, then the environment report (which would otherwise build them untimed)
  { time $PY -m steu_ext.build -v $BUILD_ARGS; } > "$W/build.log" 2>&1
  local rc=$?
  tail -6 "$W/build.log"
  timeout 60 $PY -m steu_ext.env_report > "$W/env.txt" 2>&1
  head -30 "$W/env.txt"
  return $rc
}
export -f build
box build 210 140 build

# ---- test ------------------------------------------------------------------------------------------------
run_tests() {
  $PYTEST --maxfail=50 --junitxml="$W/tests_$DEV.xml" tests/test_doc_counts.py tests/test_row_adam.py \
    tests/test_grad_project.py tests/test_opcheck.py tests/test_triton_kernels.py $XDIST \
    ${STEU_GPU_TEST_ARGS:-} > "$W/tests_$DEV.log" 2>&1
  local rc=$?
  grep -E "^(FAILED|ERROR)|passed|failed" "$W/tests_$DEV.log" | tail -40
  return $rc
}
export -f run_tests
box test 150 80 run_tests

# ---- bench -----------------------------------------------------------------------------------------------
bench() {  # bench FILE
  local name
  name=$(basename "$1" .py)
  (cd benchmarks && $PYTEST -s "$(basename "$1")" --benchmark-json "$W/$name-$DEV.json") > "$W/$name.log" 2>&1
  local rc=$?
  grep -E "  us |x[0-9.]+ vs |passed|failed|error" "$W/$name.log" | tail -40
  return $rc
}
export -f bench
box bench_doc_counts 60 60 bench benchmarks/bench_doc_counts.py
box bench_row_adam 60 40 bench benchmarks/bench_row_adam.py
box bench_grad_project 40 20 bench benchmarks/bench_grad_project.py
box bench_steu_step 60 0 bench benchmarks/bench_steu_step.py

# ---- pmi -------------------------------------------------------------------------------------------------
if [ "$(left)" -ge 60 ]; then
  box pmi 600 10 bench benchmarks/bench_corpus_pmi.py
else
  stamp "pmi: skipped ($(left)s left, needs 60)"
  STATUS[pmi]="skipped"
fi

# ---- pack ------------------------------------------------------------------------------------------------
stamp summary
for s in build test bench_doc_counts bench_row_adam bench_grad_project bench_steu_step pmi; do
  printf '  %-20s %s\n' "$s" "${STATUS[$s]:-not run}"
done | tee "$W/summary.txt"
ls "$W/results"/*.jsonl >/dev/null 2>&1 && wc -l "$W/results"/*.jsonl
TGZ=$OUT/results-$DEV$([ "$DRY" = 1 ] && echo -dry).tgz
tar czf "$TGZ" -C "$WORK" gpu_run && echo "packed $(du -h "$TGZ" | cut -f1) into $TGZ"
rm -rf "$WORK"
stamp done
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null
exit 0
