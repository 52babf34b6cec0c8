"""ICD-scale token statistics: dense ``PMICounter`` vs ``SparsePMICounter`` on a synthetic ICD-like corpus.

Documents of 256 tokens drawn from a Zipf(1.1) distribution over the vocabulary, each with Poisson(15)
distinct labels drawn from a Zipf(1.0) distribution over C classes, counted in blocks of 512 documents
with ``counter.update`` (the counting step of ``steu pmi``; tokenization is benchmarked in
``bench_corpus_pmi.py``), one thread (as in ``steu pmi``, where the other cores tokenize). Each
(configuration, provider) runs in its own process so that its peak RSS is its own:

* ``peak_rss_increase``: peak RSS while counting minus the RSS before (the corpus itself excluded; the
  kernel's scratch, the accumulator and its merges included), from ``VmHWM`` reset via ``clear_refs``;
* ``csr_bytes``: bytes of the final CSR (indptr int64, indices int32, values int64, doc_freq, class_docs);
  ``block_bytes``: one block's input (ids int64, mask, labels uint8 [B, C]); ``block_with_pairs_bytes``:
  that plus the block's (key, count) pairs from the kernel (16 bytes a pair), which are also in flight;
  target: ``peak_rss_increase <= 2 x (csr_bytes + block_bytes)`` (the strict reading: input only);
* ``docs_per_s``: documents counted per second; target: sparse >= 0.8 x dense where both run;
* ``nnz`` and ``density = nnz / (C x V)``.

Dense runs only where its memory (about 2.5 x C x V x 8 bytes: counts, the kernel's output and its
per-thread buffers) fits in the available memory with a margin. Results are appended to
``benchmarks/results/sparse_counts-cpu.jsonl`` and summarised in ``sparse_counts-cpu.md`` (a section per run).

    python benchmarks/bench_sparse_counts.py            # ~1-2 minutes on 2 cores: 1,024 documents
    STEU_BENCH_SIZES=full python benchmarks/bench_sparse_counts.py   # 8,192 documents, dense at C=9000 too
    STEU_BENCH_SPARSE_DOCS=20000 python benchmarks/bench_sparse_counts.py
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
FULL = os.environ.get("STEU_BENCH_SIZES", "ci") == "full"
DOCS = int(os.environ.get("STEU_BENCH_SPARSE_DOCS", 8192 if FULL else 1024))
B, L, LABELS = 512, 256, 15
CONFIGS = [  # (C, V, documents)
    (50, 30522, DOCS),        # few classes: dense is the fast path (auto picks it)
    (2000, 30522, DOCS),      # dense fits comfortably
    (9000, 30522, DOCS),      # ICD full-code scale, BERT vocabulary: dense 2.2 GB (dense with STEU_BENCH_SIZES=full)
    (9000, 128256, DOCS),     # ICD scale, Llama-3 vocabulary: dense 9.2 GB (sparse only here)
    (9000, 128256, 8 * DOCS),  # sparse memory once the counts, not the block in flight, dominate
]


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _corpus(C: int, V: int, n: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    pt = 1.0 / np.arange(1, V + 1) ** 1.1
    pt /= pt.sum()
    pc = 1.0 / np.arange(1, C + 1) ** 1.0
    pc /= pc.sum()
    perm_t, perm_c = rng.permutation(V), rng.permutation(C)  # frequent ids spread over the range
    ids = perm_t[rng.choice(V, size=(n, L), p=pt)].astype(np.int64)
    rows, cols = [], []
    for d in range(n):
        k = max(1, min(C, rng.poisson(LABELS)))
        labs = set()
        while len(labs) < k:
            labs.update(perm_c[rng.choice(C, size=k - len(labs), p=pc)].tolist())
        rows += [d] * len(labs)
        cols += sorted(labs)
    return ids, np.array(rows), np.array(cols)


def child(C: int, V: int, provider: str, docs: int = DOCS) -> dict:
    import torch

    from steu_ext import PMICounter
    from steu_ext.ops.sparse_doc_counts import SparsePMICounter

    torch.set_num_threads(1)
    ids, rows, cols = _corpus(C, V, docs)
    ids_t = torch.from_numpy(ids)
    blocks = []
    for b0 in range(0, docs, B):
        b1 = min(docs, b0 + B)
        sel = (rows >= b0) & (rows < b1)
        lab = torch.zeros(b1 - b0, C, dtype=torch.uint8)
        lab[torch.from_numpy(rows[sel] - b0), torch.from_numpy(cols[sel])] = 1
        blocks.append((ids_t[b0:b1], lab))
    # warm up the kernels (and the JIT build) on a tiny problem, then reset the peak
    w = torch.zeros(2, 3, dtype=torch.uint8)
    w[:, 0] = 1
    (PMICounter if provider == "dense" else SparsePMICounter)(V, 3).update(ids_t[:2], w, validate=False)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _rss("VmRSS")
    t0 = time.perf_counter()
    counter = PMICounter(V, C) if provider == "dense" else SparsePMICounter(V, C)
    for x, lab in blocks:
        counter.update(x, lab, validate=False)
    if provider == "sparse":
        nnz = counter.nnz  # includes the last merge
    else:
        nnz = int((counter.counts != 0).sum())
    secs = time.perf_counter() - t0
    peak = _rss("VmHWM")
    # (after the measurement) the largest block's pair output: what one block in flight adds besides its input
    from steu_ext.ops.sparse_doc_counts import sparse_doc_counts

    pairs = max(sparse_doc_counts(x, lab, num_tokens=V, validate=False).keys.numel() for x, lab in blocks[:2])
    return {"seconds": secs, "docs_per_s": docs / secs, "docs": docs, "peak_rss_increase": peak - before, "nnz": nnz,
            "rss_before": before, "block_pairs": pairs}


def main() -> None:
    import torch

    RESULTS.mkdir(exist_ok=True)
    date = datetime.datetime.now().isoformat(timespec="seconds")
    base = {"kernel": "sparse_counts", "unit": "docs/s", "device": f"{platform.machine()} ({os.cpu_count()} cores)",
            "torch": torch.__version__, "date": date, "docs": DOCS, "block": B, "doc_len": L,
            "labels_per_doc": LABELS, "threads": 1, "sizes": "full" if FULL else "ci",
            "loadavg_1m": os.getloadavg()[0]}
    recs = []
    for C, V, docs in CONFIGS:
        size = f"C{C}_V{V}_N{docs}"
        dense_need = int(2.5 * C * V * 8) + (1 << 30)
        for provider in ("dense", "sparse"):
            if provider == "dense" and docs != DOCS:
                continue
            if provider == "dense" and C * V > 2000 * 30522 and not FULL:
                recs.append({**base, "provider": "dense", "size": size, "skipped":
                             "not in the short run (minutes per block here); STEU_BENCH_SIZES=full runs it"})
                print(f"{size} dense: skipped (short run)", flush=True)
                continue
            if provider == "dense" and dense_need > _available():
                recs.append({**base, "provider": "dense", "size": size, "skipped":
                             f"needs ~{dense_need / 2**30:.1f} GiB, {_available() / 2**30:.1f} GiB available"})
                print(f"{size} dense: skipped (does not fit)", flush=True)
                continue
            out = subprocess.run([sys.executable, __file__, "--child", str(C), str(V), provider, str(docs)],
                                 capture_output=True, text=True, timeout=600)
            if out.returncode != 0:
                recs.append({**base, "provider": provider, "size": size, "error": out.stderr[-500:]})
                print(f"{size} {provider}: failed\n{out.stderr[-2000:]}", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            csr = (C + 1) * 8 + r["nnz"] * 12 + V * 8 + C * 8
            block = B * L * 9 + B * C  # the input of one block: ids int64, mask bool, labels uint8 [B, C]
            block_out = block + 16 * r["block_pairs"]  # ... plus its pairs (keys, counts int64) from the kernel
            rec = {**base, "provider": provider, "size": size, "C": C, "V": V, **r, "csr_bytes": csr,
                   "block_bytes": block, "block_with_pairs_bytes": block_out, "dense_bytes": C * V * 8,
                   "density": r["nnz"] / (C * V),
                   "p50": r["docs_per_s"]}
            if provider == "sparse":
                rec["mem_target_ok"] = r["peak_rss_increase"] <= 2 * (csr + block)
                rec["mem_ratio"] = r["peak_rss_increase"] / (csr + block)
                rec["mem_ratio_block_with_pairs"] = r["peak_rss_increase"] / (csr + block_out)
                d = next((x for x in recs if x["size"] == size and x["provider"] == "dense" and "p50" in x), None)
                if d is not None:
                    rec["vs_dense"] = r["docs_per_s"] / d["docs_per_s"]
                    rec["throughput_target_ok"] = rec["vs_dense"] >= 0.8
            recs.append(rec)
            print(f"{size} {provider}: {r['docs_per_s']:,.0f} docs/s, peak +{r['peak_rss_increase'] / 2**20:,.0f} MiB, "
                  f"nnz {r['nnz']:,}", flush=True)
    with open(RESULTS / "sparse_counts-cpu.jsonl", "a") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    lines = [f"# Sparse vs dense token x class counts (CPU, {date})", "",
             f"Synthetic ICD-like documents ({L} Zipf tokens, ~{LABELS} Zipf labels each), blocks of {B}, "
             f"1 thread, `{base['device']}`, torch {base['torch']}. Counting only (no tokenizer). "
             "Generated by `python benchmarks/bench_sparse_counts.py`.", "",
             "| C | V | docs | provider | docs/s | peak RSS increase | dense C×V×8 | CSR bytes | nnz | nnz/(C×V) "
             "| peak / (CSR + block input) | peak / (CSR + block input + its pairs) | sparse / dense docs/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    mib = lambda x: f"{x / 2**20:,.1f} MiB"  # noqa: E731
    for r in recs:
        if "p50" not in r:
            lines.append(f"| {r['size']} | | | {r['provider']} | {r.get('skipped') or 'error'} | | | | | | | | |")
            continue
        lines.append(
            f"| {r['C']:,} | {r['V']:,} | {r['docs']:,} | {r['provider']} | {r['docs_per_s']:,.0f} | {mib(r['peak_rss_increase'])} "
            f"| {mib(r['dense_bytes'])} | {mib(r['csr_bytes'])} | {r['nnz']:,} | {r['density']:.2e} | "
            + (f"{r['mem_ratio']:.2f} ({'ok' if r['mem_target_ok'] else 'MISSED'}: ≤ 2)" if "mem_ratio" in r else "")
            + " | " + (f"{r['mem_ratio_block_with_pairs']:.2f}" if "mem_ratio" in r else "")
            + " | " + (f"{r['vs_dense']:.2f} ({'ok' if r['throughput_target_ok'] else 'MISSED'}: ≥ 0.8)"
                       if "vs_dense" in r else "") + " |")
    md = RESULTS / "sparse_counts-cpu.md"  # one section per run, appended
    with open(md, "a") as f:
        f.write(("\n" if md.exists() and md.stat().st_size else "") + "\n".join(lines).replace("# Sparse", "## Sparse", 1)
                + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))))
    else:
        main()
