"""Document-level token x class counts: stock PyTorch (global unique + bincount; per-row sort + bincount)
vs our backends, same run. Throughput in tokens/s over real (unpadded) tokens."""
from __future__ import annotations

import pytest
import torch
from conftest import backends, cached, full_sizes, run

import steu_ext
from steu_ext.reference import stock

# (docs, length, vocab, classes): performance.md sizes
SIZES = [(200_000, 512, 30522, 50)] if full_sizes() else [(20_000, 512, 30522, 5), (20_000, 512, 30522, 50)]
PROVIDERS = ["stock:unique_bincount", "stock:sort_rows"] + [
    f"ours:{b}" for b in backends("doc_counts") if b != "reference"]  # the reference is stock:unique_bincount


@cached
def make_batch(B, L, V, C, device):
    g = torch.Generator().manual_seed(0)
    ids = (V * torch.rand(B, L, generator=g) ** 3).long().clamp_max(V - 1)  # Zipf-like: frequent low ids
    lengths = torch.randint(L // 2, L + 1, (B,), generator=g)
    mask = torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)
    labels = (torch.rand(B, C, generator=g) < 1.5 / C).to(torch.uint8)
    ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
    expect = stock.counts_sort_rows(ids, mask, labels, V)
    return ids, mask, labels, expect


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "B{}xL{}_V{}_C{}".format(*s))
def test_doc_counts(benchmark, recorder, device, size, provider):
    B, L, V, C = size
    ids, mask, labels, expect = make_batch(B, L, V, C, device)
    if provider == "stock:unique_bincount":
        fn = lambda: stock.counts_unique_bincount(ids, mask, labels, V)  # noqa: E731
    elif provider == "stock:sort_rows":
        fn = lambda: stock.counts_sort_rows(ids, mask, labels, V)  # noqa: E731
    else:
        b = provider.split(":")[1]

        def fn():
            with steu_ext.use_backend({"doc_counts": b}):
                return steu_ext.doc_counts(ids, labels, num_tokens=V, attention_mask=mask, validate=False)

    out = fn()
    assert torch.equal(out[0], expect[0]) and torch.equal(out[1], expect[1])  # same counts everywhere
    heavy = provider.startswith("stock:") and not device.startswith("cuda")
    run(benchmark, recorder, fn, op="doc_counts", provider=provider, size="B{}xL{}_V{}_C{}".format(*size),
        inner=1, rounds=3 if heavy else 9, bytes_moved=ids.numel() * ids.element_size() + mask.numel(),
        items=float(mask.sum()), item_name="tokens")
