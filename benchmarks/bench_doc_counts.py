"""Document-level token x class counts: the strongest stock paths a user would write vs our backends, same
run. Throughput in tokens/s over real (unpadded) tokens; every record carries the ratio to the best stock
path measured in the run (``speedup_vs_best_stock``, ``best_stock``).

Stock paths (steu_ext.reference.stock):
  stock:unique_bincount  global ``unique`` of (doc, token) keys, ``index_add`` of the label rows
  stock:sort_rows        per-row sort dedupe, one ``bincount`` per class
  stock:combined_key     per-row sort dedupe, ONE ``bincount`` of ``label * V + token``
  stock:sparse_mm        per-row sort dedupe -> torch.sparse CSR X, ``X^T [Y | 1]``
  stock:scipy            scipy.sparse binary CSR X (duplicates summed, set to 1), ``Y^T X`` (CPU, if installed)
Label kinds: ``multi`` (each of C classes with probability 1.5 / C, rows may be empty) and ``1label``
(exactly one class per document, what the issue's paired measurement used).
"""
from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import backends, cached, full_sizes, run, tiny_sizes

import steu_ext
from steu_ext.reference import stock

# (docs, length, vocab, classes, label kind): performance.md sizes
SIZES = ([(200_000, 512, 30522, 50, "multi"), (200_000, 512, 30522, 50, "1label")] if full_sizes()
         else [(256, 64, 1000, 5, "multi"), (256, 64, 1000, 5, "1label")] if tiny_sizes()
         else [(20_000, 512, 30522, 50, "multi"), (20_000, 512, 30522, 50, "1label")])
STOCK = {
    "stock:unique_bincount": stock.counts_unique_bincount,
    "stock:sort_rows": stock.counts_sort_rows,
    "stock:combined_key": stock.counts_combined_key,
    "stock:sparse_mm": stock.counts_sparse_mm,
    "stock:scipy": stock.counts_scipy,
}
PROVIDERS = list(STOCK) + [f"ours:{b}" for b in backends("doc_counts") if b != "reference"]


def _name(s):
    B, L, V, C, kind = s
    return f"B{B}xL{L}_V{V}_C{C}" + ("" if kind == "multi" else f"_{kind}")


@cached
def make_batch(B, L, V, C, kind, device):
    g = torch.Generator().manual_seed(0)
    ids = (V * torch.rand(B, L, generator=g) ** 3).long().clamp_max(V - 1)  # Zipf-like: frequent low ids
    lengths = torch.randint(L // 2, L + 1, (B,), generator=g)
    mask = torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)
    if kind == "multi":
        labels = (torch.rand(B, C, generator=g) < 1.5 / C).to(torch.uint8)
    else:
        labels = torch.zeros(B, C, dtype=torch.uint8)
        labels[torch.arange(B), torch.randint(0, C, (B,), generator=g)] = 1
    ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
    expect = stock.counts_unique_bincount(ids, mask, labels, V)
    return ids, mask, labels, expect


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", SIZES, ids=_name)
def test_doc_counts(benchmark, recorder, device, size, provider):
    B, L, V, C, kind = size
    ids, mask, labels, expect = make_batch(*size, device)
    if provider == "stock:scipy":
        if not device.startswith("cpu"):
            pytest.skip("scipy runs on the CPU only")
        if importlib.util.find_spec("scipy") is None:
            pytest.skip("scipy is not installed")
    if provider in STOCK:
        f = STOCK[provider]
        fn = lambda: f(ids, mask, labels, V)  # noqa: E731
    else:
        b = provider.split(":")[1]
        lab = labels.argmax(1) if kind == "1label" else labels  # single-label: [B] class ids, as a user passes

        def fn():
            with steu_ext.use_backend({"doc_counts": b}):
                return steu_ext.doc_counts(ids, lab, num_tokens=V, num_classes=C, attention_mask=mask,
                                           validate=False)

    try:
        out = fn()
    except (RuntimeError, NotImplementedError) as e:  # e.g. a sparse layout this device's torch lacks
        if provider.startswith("stock:"):
            pytest.skip(f"{provider} does not run here: {str(e).splitlines()[0][:200]}")
        raise
    assert torch.equal(out[0], expect[0]) and torch.equal(out[1], expect[1])  # same counts everywhere
    heavy = provider.startswith("stock:") and not device.startswith("cuda")
    run(benchmark, recorder, fn, op="doc_counts", provider=provider, size=_name(size),
        inner=1, rounds=3 if heavy else 9, bytes_moved=ids.numel() * ids.element_size() + mask.numel(),
        items=float(mask.sum()), item_name="tokens")
