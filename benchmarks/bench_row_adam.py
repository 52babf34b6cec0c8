"""Row-sparse Adam on K of V embedding rows: stock PyTorch (fused Adam on the full table, SparseAdam,
gather -> Adam -> index_copy) vs our op and optimizer, same run; optimizer-state bytes recorded."""
from __future__ import annotations

import pytest
import torch
from conftest import backends, cached, full_sizes, run, tiny_sizes

from steu_ext import RowSparseAdam, row_adam_, use_backend
from steu_ext.reference import stock

SIZES = ([(30522, 768, 61), (128256, 4096, 256), (128256, 4096, 1282)] if full_sizes()
         else [(1000, 64, 16)] if tiny_sizes() else [(30522, 768, 61), (30522, 768, 1282)])
PROVIDERS = ["stock:adam_fused_full", "stock:sparse_adam", "stock:gather_adam"] + [
    f"ours:{b}{suffix}" for b in backends("row_adam") for suffix in ("", ":optimizer")]


@cached
def make_inputs(V, D, K, device):
    # on a GPU the (up to 2 GiB) inputs are drawn there: seconds saved of a time-boxed device run
    g = torch.Generator(device=device if device.startswith("cuda") else "cpu").manual_seed(0)
    rows = torch.randperm(V, generator=g, device=g.device)[:K].to(device)
    weight = torch.randn(V, D, generator=g, device=g.device).to(device)
    grad = torch.zeros(V, D, device=device)
    grad[rows] = torch.randn(K, D, generator=g, device=g.device).to(device)
    return rows, weight, grad


def _provider(name, V, D, K, device):
    """(step function, optimizer-state bytes) for one provider, on fresh copies of the inputs."""
    rows, weight, grad = make_inputs(V, D, K, device)
    fused = True if device.startswith("cuda") or hasattr(torch, "_fused_adam_") else None
    if name == "stock:adam_fused_full":
        p = torch.nn.Parameter(weight.clone())
        p.grad = grad.clone()
        return torch.optim.Adam([p], lr=1e-3, fused=fused).step, 2 * V * D * 4
    if name == "stock:sparse_adam":
        p = torch.nn.Parameter(weight.clone())
        p.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), grad[rows], (V, D)).coalesce()
        return torch.optim.SparseAdam([p], lr=1e-3).step, 2 * V * D * 4
    if name == "stock:gather_adam":
        g = stock.GatherAdam(weight.clone(), rows, lr=1e-3, fused=fused)
        return (lambda: g.step(grad)), 2 * K * D * 4
    _, b, *opt = name.split(":")
    if opt:
        p = torch.nn.Parameter(weight.clone())
        p.grad = grad.clone()
        o = RowSparseAdam([{"params": [p], "rows": rows}], lr=1e-3, validate=False)

        def step():
            with use_backend({"row_adam": b}):
                o.step()

        return step, 2 * K * D * 4
    w = weight.clone()
    m, v = torch.zeros(K, D, device=device), torch.zeros(K, D, device=device)
    t = torch.ones((), device=device)

    def op():
        with use_backend({"row_adam": b}):
            row_adam_(w, grad, rows, m, v, t, lr=1e-3, validate=False)

    return op, 2 * K * D * 4


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "V{}_D{}_K{}".format(*s))
def test_row_adam(benchmark, recorder, device, size, provider):
    V, D, K = size
    fn, state_bytes = _provider(provider, V, D, K, device)
    slow = provider == "stock:adam_fused_full" and not device.startswith("cuda")
    run(benchmark, recorder, fn, op="row_adam", provider=provider, size="V{}_D{}_K{}".format(*size),
        inner=2 if slow else 20, rounds=5 if slow else 9, bytes_moved=7 * K * D * 4,
        extra={"optimizer_state_bytes": state_bytes})


# Dense head next to the rows: the tensors of a BERT-base classifier head (pooler 768x768 + bias, classifier
# 6x768 + bias) and, at full size, the LoRA adapters of a 7B-class model (2 x 32 layers x 4 modules of
# r=8 x 4096): torch.optim.Adam (foreach, one launch per tensor group chunk; fused where available) vs one
# multi_adam_ launch.
HEADS = {"bert_head": [(768, 768), (768,), (6, 768), (6,)]}
if full_sizes():
    HEADS["lora_r8_x256"] = [(8, 4096)] * 256
HEAD_PROVIDERS = ["stock:adam_foreach", "stock:adam_fused"] + [f"ours:{b}" for b in backends("multi_adam")]


@cached
def make_head(name, device):
    g = torch.Generator().manual_seed(1)
    params = [torch.randn(s, generator=g).to(device) for s in HEADS[name]]
    grads = [torch.randn(s, generator=g).to(device) for s in HEADS[name]]
    return params, grads


@pytest.mark.parametrize("provider", HEAD_PROVIDERS)
@pytest.mark.parametrize("head", list(HEADS))
def test_multi_adam(benchmark, recorder, device, head, provider):
    params, grads = make_head(head, device)
    n = sum(p.numel() for p in params)
    if provider.startswith("stock:"):
        fused = provider == "stock:adam_fused"
        if fused and not (device.startswith("cuda") or hasattr(torch, "_fused_adam_")):
            pytest.skip("no fused Adam on this device")
        ps = [torch.nn.Parameter(p.clone()) for p in params]
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        opt = torch.optim.Adam(ps, lr=1e-3, fused=True) if fused else torch.optim.Adam(ps, lr=1e-3, foreach=True)
        fn = opt.step
    else:
        from steu_ext.ops.row_adam import multi_adam_

        b = provider.split(":")[1]
        ps = [p.clone() for p in params]
        ms = [torch.zeros_like(p) for p in ps]
        vs = [torch.zeros_like(p) for p in ps]
        steps = [torch.ones((), device=device) for _ in ps]

        def fn():
            with use_backend({"multi_adam": b}):
                multi_adam_(ps, grads, ms, vs, steps, lr=1e-3)

    run(benchmark, recorder, fn, op="multi_adam", provider=provider, size=f"{head}_{len(params)}x_{n}",
        inner=10, rounds=9, bytes_moved=7 * n * 4)
