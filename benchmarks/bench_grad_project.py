"""Conflict-only gradient projection over a BERT-base-sized parameter list: stock PyTorch (torch.cat
flatten + dot; torch._foreach) vs our backends, same run."""
from __future__ import annotations

import pytest
import torch
from conftest import backends, cached, run, tiny_sizes

from steu_ext import grad_project_, use_backend
from steu_ext.reference import stock

PROVIDERS = ["stock:cat_dot", "stock:foreach"] + [f"ours:{b}" for b in backends("grad_project")]


@cached
def make_lists(device):
    from transformers import BertConfig, BertForSequenceClassification

    with torch.device("meta"):
        cfg = (BertConfig(num_labels=6, vocab_size=1000, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=128) if tiny_sizes() else BertConfig(num_labels=6))
        model = BertForSequenceClassification(cfg)
    shapes = [tuple(p.shape) for p in model.parameters()]
    g = torch.Generator().manual_seed(0)
    ref = [torch.randn(s, generator=g).to(device) for s in shapes]
    # a conflicting forget gradient, so every provider really projects
    base = [(-0.5 * r.cpu() + torch.randn(r.shape, generator=g)).to(device) for r in ref]
    return shapes, ref, base


@pytest.mark.parametrize("provider", PROVIDERS)
def test_grad_project(benchmark, recorder, device, provider):
    shapes, ref, base = make_lists(device)
    P = sum(torch.Size(s).numel() for s in shapes)
    grads = [x.clone() for x in base]
    if provider == "stock:cat_dot":
        fn = lambda: stock.project_cat(grads, ref)  # noqa: E731
    elif provider == "stock:foreach":
        fn = lambda: stock.project_foreach(grads, ref)  # noqa: E731
    else:
        b = provider.split(":")[1]

        def fn():
            with use_backend({"grad_project": b}):
                return grad_project_(grads, ref, mode="conflict")

    run(benchmark, recorder, fn, op="grad_project", provider=provider,
        size=f"bert_base_{len(shapes)}t_{P / 1e6:.1f}M", inner=2, rounds=5, bytes_moved=5 * P * 4,
        items=P, item_name="params")
