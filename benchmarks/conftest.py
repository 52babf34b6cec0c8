"""Benchmark harness: pytest-benchmark times each (kernel, provider, size); every record is also written,
long-format, to ``benchmarks/results/<op>-<device>.jsonl`` (appended, never overwritten) with p20/p50/p80,
the ratio against the stock provider measured in the same run, and achieved bandwidth as a % of a
device-to-device copy measured in the same run.

    python -m pytest benchmarks -q                       # CPU, CI-sized
    STEU_BENCH_DEVICE=cuda STEU_BENCH_SIZES=full python -m pytest benchmarks -q   # the GPU targets

``STEU_BENCH_SIZES=tiny`` (seconds: a rehearsal of the harness, not a measurement), ``STEU_BENCH_ROUNDS=N``
caps every benchmark's rounds, ``STEU_BENCH_RESULTS=DIR`` writes the JSONL there instead (run_gpu.sh).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest
import torch

RESULTS = Path(os.environ.get("STEU_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def bench_device() -> str:
    return os.environ.get("STEU_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def sizes_mode() -> str:
    """``ci`` (default), ``full`` (the performance.md sizes) or ``tiny`` (dry runs)."""
    mode = os.environ.get("STEU_BENCH_SIZES", "ci")
    if mode not in ("ci", "full", "tiny"):
        raise ValueError(f"STEU_BENCH_SIZES must be ci, full or tiny, got {mode!r}")
    return mode


def full_sizes() -> bool:
    return sizes_mode() == "full"


def tiny_sizes() -> bool:
    return sizes_mode() == "tiny"


def max_rounds(rounds: int) -> int:
    """``rounds``, capped by ``STEU_BENCH_ROUNDS`` when set."""
    cap = os.environ.get("STEU_BENCH_ROUNDS")
    return max(1, min(rounds, int(cap))) if cap else rounds


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _quantiles(xs: List[float]) -> Dict[str, float]:
    xs = sorted(xs)
    q = lambda f: xs[min(len(xs) - 1, int(round(f * (len(xs) - 1))))]  # noqa: E731
    return {"p20": q(0.2), "p50": statistics.median(xs), "p80": q(0.8)}


def time_per_call(fn: Callable[[], object], device: str, *, inner: int, rounds: int, warmup: int = 3) -> List[float]:
    """Seconds per call of ``fn``: ``rounds`` samples, each averaging ``inner`` back-to-back calls
    (CUDA events on a GPU, so no per-call sync is timed)."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(rounds):
        if device.startswith("cuda"):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            for _ in range(inner):
                fn()
            e.record()
            e.synchronize()
            out.append(s.elapsed_time(e) / 1e3 / inner)
        else:
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            out.append((time.perf_counter() - t) / inner)
    return out


class Recorder:
    def __init__(self, device: str):
        self.device = device
        self.records: List[dict] = []
        self._copy_bw: Optional[float] = None
        self.meta = {
            "device": torch.cuda.get_device_name() if device.startswith("cuda") else
            f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
            "torch": torch.__version__, "cuda": torch.version.cuda, "triton": _triton_version(),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "sizes": sizes_mode(), "commit": _git_commit(),
        }

    @property
    def copy_bandwidth(self) -> float:
        """Bytes/s (read + write) of a device-to-device copy of 256 MiB (GPU) / 64 MiB (CPU)."""
        if self._copy_bw is None:
            n = (256 if self.device.startswith("cuda") else 1 if tiny_sizes() else 64) * 2**20 // 4
            src = torch.randn(n, device=self.device)
            dst = torch.empty_like(src)
            t = statistics.median(time_per_call(lambda: dst.copy_(src), self.device, inner=10, rounds=10))
            self._copy_bw = 2 * n * 4 / t
        return self._copy_bw

    def add(self, op: str, provider: str, size: str, times: List[float], *, bytes_moved: Optional[float] = None,
            items: Optional[float] = None, item_name: str = "items", extra: Optional[dict] = None) -> dict:
        rec = {"kernel": op, "provider": provider, "size": size, **_quantiles(times), "unit": "s",
               **self.meta, **(extra or {})}
        if bytes_moved:
            rec["bytes"] = bytes_moved
            rec["bandwidth_GBps"] = bytes_moved / rec["p50"] / 1e9
            rec["pct_of_copy_bw"] = 100 * bytes_moved / rec["p50"] / self.copy_bandwidth
            rec["copy_bw_GBps"] = self.copy_bandwidth / 1e9
        if items:
            rec[f"{item_name}_per_s"] = items / rec["p50"]
        self.records.append(rec)
        return rec

    def finish(self) -> None:
        if not self.records:
            return
        # ratio against the stock providers measured in this run (stock time / ours: > 1 means we are faster)
        by_size: Dict[tuple, List[dict]] = {}
        for r in self.records:
            by_size.setdefault((r["kernel"], r["size"]), []).append(r)
        for recs in by_size.values():
            stock = [r for r in recs if r["provider"].startswith("stock:")]
            best = min(stock, key=lambda r: r["p50"]) if stock else None
            for r in recs:
                if best is not None:
                    r["best_stock"] = best["provider"]
                    r["speedup_vs_best_stock"] = best["p50"] / r["p50"]
            # the same by CPU seconds (on a loaded machine the wall-time ratio mixes in the load)
            stock_cpu = [r for r in stock if r.get("cpu_s_p50")]
            best_cpu = min(stock_cpu, key=lambda r: r["cpu_s_p50"]) if stock_cpu else None
            for r in recs:
                if best_cpu is not None and r.get("cpu_s_p50"):
                    r["best_stock_cpu"] = best_cpu["provider"]
                    r["speedup_vs_best_stock_cpu"] = best_cpu["cpu_s_p50"] / r["cpu_s_p50"]
        RESULTS.mkdir(parents=True, exist_ok=True)
        dev = "cuda" if self.device.startswith("cuda") else "cpu"
        for op in sorted({r["kernel"] for r in self.records}):
            with open(RESULTS / f"{op}-{dev}.jsonl", "a") as f:
                for r in self.records:
                    if r["kernel"] == op:
                        f.write(json.dumps(r) + "\n")


def _git_commit() -> Optional[str]:
    """The checkout's commit (``+dirty`` with uncommitted changes), so a record names the code it timed."""
    import subprocess

    try:
        root = Path(__file__).resolve().parents[1]
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except Exception:  # noqa: BLE001 - no git, not a checkout (the device machine's copy has no .git)
        return None


def _triton_version() -> Optional[str]:
    try:
        import triton

        return triton.__version__
    except Exception:  # noqa: BLE001
        return None


_RECORDER: Optional[Recorder] = None


def recorder_is_cuda(rec: Optional[Recorder]) -> bool:
    return rec is not None and rec.device.startswith("cuda")


@pytest.fixture(scope="session")
def recorder():
    global _RECORDER
    _RECORDER = Recorder(bench_device())
    yield _RECORDER
    _RECORDER.finish()
    for r in _RECORDER.records:
        extra = f"  {r['pct_of_copy_bw']:.0f}% copy BW" if "pct_of_copy_bw" in r else ""
        sp = f"  x{r['speedup_vs_best_stock']:.2f} vs {r['best_stock']}" if "speedup_vs_best_stock" in r else ""
        if "speedup_vs_best_stock_cpu" in r and not recorder_is_cuda(_RECORDER):
            sp += f" (cpu-s x{r['speedup_vs_best_stock_cpu']:.2f} vs {r['best_stock_cpu']})"
        print(f"{r['kernel']:>12} {r['size']:<28} {r['provider']:<26} {r['p50'] * 1e6:>12.1f} us{extra}{sp}")


@pytest.fixture
def device():
    return bench_device()


def run(benchmark, recorder: Recorder, fn: Callable[[], object], *, op: str, provider: str, size: str,
        inner: int = 5, rounds: int = 7, **kw) -> dict:
    """Time ``fn`` with pytest-benchmark (its statistics in the pytest-benchmark report) and record it."""
    dev = recorder.device
    times: List[float] = []
    cpu: List[float] = []
    capped = max_rounds(rounds)

    def sample():
        c = _cpu_seconds()
        times.extend(time_per_call(fn, dev, inner=inner, rounds=1, warmup=0))
        cpu.append((_cpu_seconds() - c) / inner)

    for _ in range(2 if capped == rounds else 1):
        fn()
    sync(dev)
    benchmark.pedantic(sample, rounds=capped, iterations=1)
    extra = dict(kw.pop("extra", None) or {})
    # CPU seconds of this process per call (every thread): the work done, whatever else the machine runs;
    # with the 1-minute load average, the context a wall time on a shared machine needs.
    extra.update(cpu_s_p50=statistics.median(cpu), load_avg_1min=os.getloadavg()[0])
    return recorder.add(op, provider, size, times, extra=extra, **kw)


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # microseconds (os.times() has clock ticks: 10 ms)
    return r.ru_utime + r.ru_stime


def backends(op: str, device: Optional[str] = None) -> List[str]:
    """Our backends that can run ``op`` on the benchmark device (the reference only where asked)."""
    import steu_ext

    return [b for b, why in steu_ext.available_backends(op, device or bench_device()).items() if why is None]


def cached(fn):
    """Memoise input builders so every provider of a size times the same data, built once."""
    memo: Dict[tuple, object] = {}

    def wrapper(*args):
        if args not in memo:
            memo.clear()
            memo[args] = fn(*args)
        return memo[args]

    return wrapper
