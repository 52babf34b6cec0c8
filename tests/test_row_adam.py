"""RowSparseAdam/RowSparseAdamW and row_adam_ against torch.optim.Adam/AdamW stepping only the selected rows
(as a separate [K, D] parameter fed the gathered gradients), and against a float64 numpy Adam."""
from __future__ import annotations

import copy
import dataclasses
import functools
from unittest import mock

import numpy as np
import pytest
import torch
from conftest import backends_for
from torch import nn

from steu_ext import RowSparseAdam, RowSparseAdamW, _backend, row_adam_

BACKENDS = backends_for("row_adam")
STATE = ("step", "exp_avg", "exp_avg_sq")

# Parity table: (torch reference, ours, state names)
PARITY = [
    (torch.optim.Adam, RowSparseAdam, STATE),
    (torch.optim.AdamW, RowSparseAdamW, STATE),
    (functools.partial(torch.optim.Adam, decoupled_weight_decay=True),
     functools.partial(RowSparseAdam, decoupled_weight_decay=True), STATE),
]
PARITY_IDS = ["Adam", "AdamW", "Adam-decoupled"]
HYPER = dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6)
STEPS = 20


def _use(force_backend, device, backend):
    force_backend("row_adam", backend)
    assert _backend.resolve("row_adam", device)[0] == backend


def _rows(V, K, device):
    rows = torch.randperm(V)[:K]
    if 1 < K and not bool((rows == V - 1).any()):
        rows[-1] = V - 1                                   # the last row is always among them
    return rows.to(device)


def _others(V, rows):
    keep = torch.ones(V, dtype=torch.bool, device=rows.device)
    keep[rows] = False
    return keep


# ------------------------------------------------------------------------------- parity with torch.optim
@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("ref_cls,our_cls,state_names", PARITY, ids=PARITY_IDS)
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("K", [1, 7, 123])
def test_matches_torch_optim(device, backend, force_backend, ref_cls, our_cls, state_names, weight_decay,
                             maximize, K):
    _use(force_backend, device, backend)
    V, D = 123, 7
    rows = _rows(V, K, device)
    table = nn.Parameter(torch.randn(V, D, device=device))
    start = table.detach().clone()
    head = nn.Linear(D, 3).to(device)
    sel = nn.Parameter(table.detach()[rows].clone())      # the oracle steps only the selected rows
    head_ref = copy.deepcopy(head)
    kw = dict(HYPER, weight_decay=weight_decay, maximize=maximize)
    ours = our_cls([{"params": [table], "rows": rows}, {"params": head.parameters()}], **kw)
    ref = ref_cls([sel, *head_ref.parameters()], **kw)
    x = torch.randn(5, D, device=device)
    for _ in range(STEPS):
        g = torch.randn(V, D, device=device)
        table.grad, sel.grad = g.clone(), g[rows].clone()
        for m in (head, head_ref):
            m.zero_grad()
            m(x).square().sum().backward()
        ours.step()
        ref.step()
        assert torch.equal(table.grad, g)                 # the caller's gradient is not modified
        x = x + 0.1 * torch.randn_like(x)
    with torch.no_grad():
        torch.testing.assert_close(table[rows], sel, rtol=1e-5, atol=1e-6)
        assert torch.equal(table[_others(V, rows)], start[_others(V, rows)])
        for p, q in zip(head.parameters(), head_ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    # state: same names as torch, [K, D] fp32 for the table, the dense shape for the head
    st, st_ref = ours.state[table], ref.state[sel]
    assert set(st) == set(st_ref) == set(state_names)
    for name in ("exp_avg", "exp_avg_sq"):
        assert st[name].shape == (K, D) and st[name].dtype == torch.float32
        torch.testing.assert_close(st[name], st_ref[name], rtol=1e-5, atol=1e-7)
    assert float(st["step"]) == float(st_ref["step"]) == STEPS
    for p, q in zip(head.parameters(), head_ref.parameters()):
        assert set(ours.state[p]) == set(ref.state[q])
        torch.testing.assert_close(ours.state[p]["exp_avg_sq"], ref.state[q]["exp_avg_sq"], rtol=1e-5,
                                   atol=1e-7)


@pytest.mark.parametrize("ref_cls,our_cls,state_names", PARITY, ids=PARITY_IDS)
def test_defaults_match_torch(ref_cls, our_cls, state_names):
    p = nn.Parameter(torch.zeros(3, 2))
    ours, ref = our_cls([p]), ref_cls([nn.Parameter(torch.zeros(3, 2))])
    for key in ("lr", "betas", "eps", "weight_decay", "maximize", "decoupled_weight_decay"):
        assert ours.defaults[key] == ref.defaults[key], key


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("our_cls", [RowSparseAdam, RowSparseAdamW])
def test_no_rows_selected(device, backend, force_backend, our_cls):
    _use(force_backend, device, backend)
    V, D = 7, 3
    table = nn.Parameter(torch.randn(V, D, device=device))
    start = table.detach().clone()
    head = nn.Parameter(torch.randn(4, device=device))
    head_ref = nn.Parameter(head.detach().clone())
    opt = our_cls([{"params": [table], "rows": torch.tensor([], dtype=torch.long)}, {"params": [head]}],
                  lr=0.1, weight_decay=0.1)
    ref = (torch.optim.AdamW if our_cls is RowSparseAdamW else torch.optim.Adam)([head_ref], lr=0.1,
                                                                                 weight_decay=0.1)
    for _ in range(5):
        table.grad = torch.randn(V, D, device=device)
        head.grad = torch.randn(4, device=device)
        head_ref.grad = head.grad.clone()
        opt.step()
        ref.step()
    assert torch.equal(table.detach(), start)
    assert opt.state[table]["exp_avg"].shape == (0, D) and opt.state[table]["exp_avg"].dtype == torch.float32
    torch.testing.assert_close(head.detach(), head_ref.detach(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------- sparse gradients
@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("our_cls", [RowSparseAdam, RowSparseAdamW])
def test_sparse_embedding_grads_equal_dense(device, backend, force_backend, our_cls):
    _use(force_backend, device, backend)
    V, D, K = 123, 5, 7
    rows = _rows(V, K, device)
    sparse_emb = nn.Embedding(V, D, sparse=True).to(device)
    dense_emb = nn.Embedding(V, D).to(device)
    with torch.no_grad():
        dense_emb.weight.copy_(sparse_emb.weight)
    start = sparse_emb.weight.detach().clone()
    opts = [our_cls([{"params": [e.weight], "rows": rows}], lr=1e-2, weight_decay=0.1)
            for e in (sparse_emb, dense_emb)]
    for _ in range(STEPS):
        # selected and unselected ids, repeated (so the sparse grad has duplicate indices); integer
        # weights keep every gradient sum exact whatever the summation order
        ids = torch.cat([rows[torch.randint(0, K, (9,), device=device)],
                         torch.randint(0, V, (9,), device=device)]).reshape(3, 6)
        w = torch.randint(-3, 4, (3, 6, D), device=device).float()
        for e, opt in zip((sparse_emb, dense_emb), opts):
            opt.zero_grad()
            (e(ids) * w).sum().backward()
        assert sparse_emb.weight.grad.is_sparse and not dense_emb.weight.grad.is_sparse
        sparse_grad = sparse_emb.weight.grad.clone()
        for opt in opts:
            opt.step()
        assert torch.equal(sparse_emb.weight.grad.to_dense(), sparse_grad.to_dense())  # grad untouched
    assert torch.equal(sparse_emb.weight.detach(), dense_emb.weight.detach())
    assert not torch.equal(sparse_emb.weight.detach()[rows], start[rows])
    assert torch.equal(sparse_emb.weight.detach()[_others(V, rows)], start[_others(V, rows)])
    for name in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(opts[0].state[sparse_emb.weight][name], opts[1].state[dense_emb.weight][name])


# ---------------------------------------------------------------------------- fp16/bf16 with fp32 state
@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("ref_cls,our_cls,weight_decay", [(torch.optim.Adam, RowSparseAdam, 0.0),
                                                          (torch.optim.AdamW, RowSparseAdamW, 0.1)],
                         ids=["Adam", "AdamW"])
def test_low_precision_params_keep_fp32_state(device, backend, force_backend, dtype, ref_cls, our_cls,
                                              weight_decay):
    _use(force_backend, device, backend)
    V, D, K = 37, 5, 7
    rows = _rows(V, K, device)
    table = nn.Parameter(torch.randn(V, D, device=device).to(dtype))
    start = table.detach().clone()
    kw = dict(lr=1e-2, weight_decay=weight_decay)
    ours = our_cls([{"params": [table], "rows": rows}], **kw)
    # oracle 1: fp32 Adam whose parameter is rounded to `dtype` after every step (what a low-precision
    # parameter with fp32 state does); oracle 2: plain fp32 Adam
    rounded = nn.Parameter(table.detach()[rows].float())
    pure = nn.Parameter(table.detach()[rows].float())
    refs = [ref_cls([rounded], **kw), ref_cls([pure], **kw)]
    for _ in range(STEPS):
        g = torch.randn(V, D, device=device).to(dtype)
        table.grad = g
        rounded.grad, pure.grad = g[rows].float(), g[rows].float()
        ours.step()
        for r in refs:
            r.step()
        with torch.no_grad():
            rounded.copy_(rounded.to(dtype).float())
    got = table.detach()[rows].float()
    assert table.dtype == dtype
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(got, rounded.detach(), rtol=2 * eps, atol=2 * eps)
    # each step rounds by at most half an ulp
    bound = STEPS * eps * float(pure.detach().abs().max())
    assert float((got - pure.detach()).abs().max()) <= bound
    assert torch.equal(table.detach()[_others(V, rows)], start[_others(V, rows)])
    st = ours.state[table]
    for name in ("exp_avg", "exp_avg_sq"):
        assert st[name].dtype == torch.float32 and st[name].shape == (K, D)
        torch.testing.assert_close(st[name], refs[0].state[rounded][name], rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------- state_dict round trip
def _make(cls, table, head, rows):
    return cls([{"params": [table], "rows": rows}, {"params": list(head.parameters())}], **HYPER,
               weight_decay=0.05, maximize=False)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("our_cls", [RowSparseAdam, RowSparseAdamW])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_round_trip(device, backend, force_backend, tmp_path, our_cls, dtype):
    _use(force_backend, device, backend)
    V, D, K = 37, 5, 7
    rows = _rows(V, K, device)
    table = nn.Parameter(torch.randn(V, D, device=device).to(dtype))
    head = nn.Linear(D, 2).to(device)

    def grads(n):
        return [(torch.randn(V, D, device=device).to(dtype), [torch.randn_like(p) for p in head.parameters()])
                for _ in range(n)]

    a = _make(our_cls, table, head, rows)
    for g, hg in grads(5):
        table.grad = g
        for p, h in zip(head.parameters(), hg):
            p.grad = h
        a.step()
    path = tmp_path / "opt.pt"
    torch.save(a.state_dict(), path)
    table_b = nn.Parameter(table.detach().clone())
    head_b = copy.deepcopy(head)
    b = _make(our_cls, table_b, head_b, rows.clone())
    b.load_state_dict(torch.load(path))
    assert torch.equal(b.param_groups[0]["rows"], rows)
    sa, sb = a.state[table], b.state[table_b]
    assert set(sb) == set(STATE) and set(a.state_dict()["state"][0]) == set(STATE)
    for name in STATE:
        assert sb[name].dtype == torch.float32, name     # stays fp32 even for a bf16 parameter
        assert torch.equal(sa[name], sb[name]), name
    assert sb["exp_avg"].shape == (K, D)
    for g, hg in grads(5):                              # both continue identically, bit for bit
        table.grad, table_b.grad = g.clone(), g.clone()
        for p, q, h in zip(head.parameters(), head_b.parameters(), hg):
            p.grad, q.grad = h.clone(), h.clone()
        a.step()
        b.step()
    assert torch.equal(table.detach(), table_b.detach())
    for p, q in zip(head.parameters(), head_b.parameters()):
        assert torch.equal(p.detach(), q.detach())
        for name in STATE:
            assert torch.equal(a.state[p][name], b.state[q][name])
    for name in STATE:
        assert torch.equal(a.state[table][name], b.state[table_b][name])


def test_load_state_dict_shape_mismatch():
    V, D = 11, 3
    table = nn.Parameter(torch.randn(V, D))
    opt = RowSparseAdam([{"params": [table], "rows": [1, 2, 3]}])
    table.grad = torch.randn(V, D)
    opt.step()
    sd = opt.state_dict()
    sd["state"][0]["exp_avg"] = torch.zeros(4, D)
    fresh = RowSparseAdam([{"params": [nn.Parameter(table.detach().clone())], "rows": [1, 2, 3]}])
    with pytest.raises(ValueError, match="does not match the group's rows"):
        fresh.load_state_dict(sd)


# ---------------------------------------------------------------------------- functional row_adam_
def np_adam(p, g, m, v, t, *, lr, b1, b2, eps, wd, decoupled, maximize):
    """One Adam/AdamW step in float64 numpy (the textbook formulas); returns new (p, m, v)."""
    g = -g if maximize else g
    if wd:
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    mhat = m / (1 - b1 ** t)
    vhat = v / (1 - b2 ** t)
    return p - lr * mhat / (np.sqrt(vhat) + eps), m, v


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("decoupled,weight_decay,maximize", [(False, 0.0, False), (False, 0.1, True),
                                                             (True, 0.1, False)])
def test_functional_grad_forms_match_numpy(device, backend, force_backend, decoupled, weight_decay, maximize):
    _use(force_backend, device, backend)
    V, D, K = 123, 7, 7
    rows = _rows(V, K, device)
    start = torch.randn(V, D, device=device)
    kw = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=weight_decay, decoupled=decoupled,
              maximize=maximize)
    forms = ("dense", "gathered", "sparse", "strided")
    params = {f: start.clone() for f in forms}
    states = {f: (torch.zeros(K, D, device=device), torch.zeros(K, D, device=device)) for f in forms}
    ridx = rows.cpu().numpy()
    p64 = start.cpu().double().numpy()[ridx]
    m64, v64 = np.zeros((K, D)), np.zeros((K, D))
    for t in range(1, 6):
        g = torch.randn(V, D, device=device)
        given = {"dense": g.clone(), "gathered": g[rows].clone(),
                 "sparse": g.to_sparse(1), "strided": g.t().contiguous().t()}
        assert not given["strided"].is_contiguous()
        before = {f: x.clone() for f, x in given.items()}
        for f in forms:
            row_adam_(params[f], given[f], rows, *states[f], torch.tensor(float(t), device=device), **kw)
        for f in forms:                                   # the caller's gradient is left as it was
            a, b = given[f], before[f]
            assert torch.equal(a.to_dense() if a.is_sparse else a, b.to_dense() if b.is_sparse else b)
        p64, m64, v64 = np_adam(p64, g.cpu().double().numpy()[ridx], m64, v64, t, lr=kw["lr"], b1=0.9,
                                b2=0.999, eps=1e-8, wd=weight_decay, decoupled=decoupled, maximize=maximize)
    for f in forms:
        assert torch.equal(params[f], params["dense"]), f
        assert torch.equal(states[f][0], states["dense"][0]) and torch.equal(states[f][1], states["dense"][1])
    keep = _others(V, rows)
    assert torch.equal(params["dense"][keep], start[keep])
    np.testing.assert_allclose(params["dense"][rows].cpu().double().numpy(), p64, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(states["dense"][0].cpu().double().numpy(), m64, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(states["dense"][1].cpu().double().numpy(), v64, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_functional_fully_sparse_coo_grad(device, backend, force_backend):
    # a [V, D] COO tensor with both dims sparse (g.to_sparse()) is as much a "sparse COO [V, D]" grad as
    # the row-sparse form nn.Embedding(sparse=True) produces (g.to_sparse(1))
    _use(force_backend, device, backend)
    V, D = 7, 3
    rows = torch.tensor([5, 1], device=device)
    g = torch.randn(V, D, device=device)
    g[1, 0] = 0                                            # an element absent from the sparse indices
    out = []
    for grad in (g, g.to_sparse()):
        p, m, v = torch.zeros(V, D, device=device), torch.zeros(2, D, device=device), torch.zeros(2, D,
                                                                                               device=device)
        row_adam_(p, grad, rows, m, v, torch.ones((), device=device), lr=0.1)
        out.append((p, m, v))
    for a, b in zip(*out):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_functional_row_forms_and_edge_sizes(device, backend, force_backend):
    _use(force_backend, device, backend)
    V, D = 7, 1
    start = torch.randn(V, D, device=device)
    g = torch.randn(V, D, device=device)
    results = []
    # the same rows given as an int64 tensor, an int32 tensor, a strided tensor and a Python list
    for rows in (torch.tensor([6, 0, 3], device=device), torch.tensor([6, 0, 3], dtype=torch.int32,
                                                                      device=device),
                 torch.tensor([6, 9, 0, 9, 3, 9], device=device)[::2], [6, 0, 3]):
        p = start.clone()
        m, v = torch.zeros(3, D, device=device), torch.zeros(3, D, device=device)
        row_adam_(p, g, rows, m, v, torch.ones((), device=device), lr=0.1)
        results.append((p, m, v))
    for p, m, v in results[1:]:
        assert torch.equal(p, results[0][0]) and torch.equal(m, results[0][1])
    p = results[0][0]
    assert torch.equal(p[[1, 2, 4, 5]], start[[1, 2, 4, 5]])
    # first Adam step moves each selected element by lr * sign(g) (up to eps)
    torch.testing.assert_close(p[[6, 0, 3]], start[[6, 0, 3]] - 0.1 * g[[6, 0, 3]].sign(), rtol=0,
                               atol=1e-5)
    # K = 0: nothing changes
    p = start.clone()
    row_adam_(p, g, torch.tensor([], dtype=torch.long, device=device), torch.zeros(0, D, device=device),
              torch.zeros(0, D, device=device), torch.ones((), device=device), lr=0.1)
    assert torch.equal(p, start)


# ------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("option", ["amsgrad", "foreach", "fused", "capturable", "differentiable"])
@pytest.mark.parametrize("cls", [RowSparseAdam, RowSparseAdamW])
def test_unsupported_options(cls, option):
    with pytest.raises(ValueError, match=f"does not support {option}=True"):
        cls([nn.Parameter(torch.zeros(2, 2))], **{option: True})


def test_optimizer_bad_arguments():
    t = nn.Parameter(torch.zeros(5, 2))
    for kw, msg in [(dict(lr=-1.0), "learning rate"), (dict(eps=-1.0), "epsilon"),
                    (dict(betas=(1.0, 0.9)), "betas"), (dict(betas=(0.9, -0.1)), "betas"),
                    (dict(weight_decay=-0.1), "weight_decay")]:
        with pytest.raises(ValueError, match=msg):
            RowSparseAdam([t], **kw)
    for rows, err, msg in [([1, 1], ValueError, "duplicate"),
                           ([0, 5], ValueError, r"rows contains 5, outside the valid range \[0, 5\)"),
                           ([-1, 2], ValueError, "rows contains -1"),
                           (torch.tensor([0.0, 1.0]), TypeError, "rows has dtype torch.float32"),
                           (torch.tensor([[0, 1]]), ValueError, "rows must be 1-D"),
                           ([[0, 1]], ValueError, "rows must be 1-D"),
                           ("ab", TypeError, "rows must be a 1-D tensor or sequence of ints")]:
        with pytest.raises(err, match=msg):
            RowSparseAdam([{"params": [t], "rows": rows}])
    with pytest.raises(ValueError, match=r"2-D \[V, D\] parameters, got shape \(5,\)"):
        RowSparseAdam([{"params": [nn.Parameter(torch.zeros(5))], "rows": [0]}])
    with pytest.raises(TypeError, match="row-sparse parameters must be one of"):
        RowSparseAdam([{"params": [nn.Parameter(torch.zeros(5, 2, dtype=torch.float64))], "rows": [0]}])
    with pytest.raises(ValueError, match="share V"):
        RowSparseAdam([{"params": [t, nn.Parameter(torch.zeros(4, 2))], "rows": [0]}])
    dense = nn.Parameter(torch.zeros(5, 2))
    opt = RowSparseAdam([dense])
    dense.grad = torch.eye(5, 2).to_sparse()
    with pytest.raises(ValueError, match="sparse gradients are supported only in row-sparse groups"):
        opt.step()


def test_functional_bad_inputs():
    V, D, K = 5, 3, 2
    p = torch.zeros(V, D)
    g = torch.zeros(V, D)
    rows = torch.tensor([0, 4])
    m, v = torch.zeros(K, D), torch.zeros(K, D)
    one = torch.ones(())

    def call(p=p, g=g, rows=rows, m=m, v=v, step=one, **kw):
        row_adam_(p, g, rows, m, v, step, **{"lr": 0.1, **kw})

    cases = [
        (dict(rows=torch.tensor([0, 0])), ValueError, "duplicate"),
        (dict(rows=torch.tensor([0, 5])), ValueError, r"rows contains 5, outside the valid range \[0, 5\)"),
        (dict(rows=torch.tensor([-2, 1])), ValueError, "rows contains -2"),
        (dict(rows=torch.tensor([0.0, 1.0])), TypeError, "rows has dtype"),
        (dict(m=torch.zeros(K + 1, D)), ValueError, r"exp_avg has shape \(3, 3\), expected \(2, 3\)"),
        (dict(v=torch.zeros(K, D + 1)), ValueError, r"exp_avg_sq has shape \(2, 4\), expected \(2, 3\)"),
        (dict(m=torch.zeros(K, D, dtype=torch.bfloat16)), TypeError, "exp_avg has dtype"),
        (dict(m=torch.zeros(D, K).t()), ValueError, "exp_avg must be contiguous"),
        (dict(g=torch.zeros(V, D + 1)), ValueError, r"grad has shape \(5, 4\)"),
        (dict(g=torch.zeros(K + 1, D)), ValueError, r"grad has shape \(3, 3\)"),
        (dict(g=torch.zeros(V + 1, D).to_sparse()), ValueError, "sparse grad has shape"),
        (dict(g=torch.zeros(V, D, dtype=torch.float16)), TypeError, "grad dtype torch.float16 does not"),
        (dict(g=torch.zeros(V * D)), ValueError, "grad must be 2-D"),
        (dict(p=torch.zeros(V)), ValueError, "param must be 2-D"),
        (dict(p=torch.zeros(V, D, dtype=torch.float64), g=g.double()), TypeError, "param has dtype"),
        (dict(p=torch.zeros(D, V).t(), g=torch.zeros(V, D)), ValueError, "param must be contiguous"),
        (dict(step=torch.ones(2)), ValueError, "step must be a single-element tensor"),
        (dict(beta1=1.0), ValueError, "betas must lie in"),
    ]
    for kw, err, msg in cases:
        with pytest.raises(err, match=msg):
            call(**kw)
    assert torch.equal(p, torch.zeros(V, D)) and torch.equal(m, torch.zeros(K, D))   # nothing applied


# ------------------------------------------------------------------- multi_adam_: dense tensors, one launch
MULTI_BACKENDS = backends_for("multi_adam")
# awkward sizes: 1, 7, 123, an empty tensor, a 2-D head, and one longer than a 16 Ki-element chunk
MULTI_SHAPES = [(1,), (7,), (123,), (0,), (6, 29), (16391,)]


def _multi_inputs(device, dtypes, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g).to(dt).to(device) for s, dt in zip(MULTI_SHAPES, dtypes)]
    grads = [torch.randn(s, generator=g).to(dt).to(device) for s, dt in zip(MULTI_SHAPES, dtypes)]
    return params, grads


@pytest.mark.parametrize("device,backend", MULTI_BACKENDS)
@pytest.mark.parametrize("decoupled,weight_decay,maximize", [(False, 0.0, False), (False, 0.1, True),
                                                             (True, 0.1, False)])
@pytest.mark.parametrize("mixed", [False, True], ids=["fp32", "mixed-dtypes"])
def test_multi_adam_matches_torch_adam(device, backend, force_backend, decoupled, weight_decay, maximize,
                                       mixed):
    """Every tensor of the list equals torch.optim.Adam(W) run on it alone, over steps where the tensors
    have different step counts (one of them skips the first two steps)."""
    force_backend("multi_adam", backend)
    dtypes = ([torch.float32, torch.bfloat16, torch.float16, torch.float32, torch.float32, torch.bfloat16]
              if mixed else [torch.float32] * len(MULTI_SHAPES))
    params, grads = _multi_inputs(device, dtypes)
    grads_before = [x.clone() for x in grads]
    ours = [p.clone() for p in params]
    m = [torch.zeros(p.shape, dtype=torch.float32, device=device) for p in params]
    v = [torch.zeros(p.shape, dtype=torch.float32, device=device) for p in params]
    steps = [torch.zeros((), dtype=torch.float32, device=device) for _ in params]
    # torch reference on fp32 copies, each tensor its own optimizer
    refs = [p.float().clone().requires_grad_(True) for p in params]
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    opts = [cls([r], lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=weight_decay, maximize=maximize,
                foreach=False) for r in refs]
    for t in range(4):
        live = [i for i in range(len(params)) if not (i == 2 and t < 2)]
        for i in live:
            steps[i] += 1
        steu_ext_multi_adam([ours[i] for i in live], [grads[i] for i in live], [m[i] for i in live],
                            [v[i] for i in live], [steps[i] for i in live], lr=1e-2, beta1=0.8, beta2=0.99,
                            eps=1e-6, weight_decay=weight_decay, decoupled=decoupled, maximize=maximize)
        for i in live:
            refs[i].grad = grads[i].float()
            opts[i].step()
            if dtypes[i] != torch.float32:      # the reference keeps the parameter in the low precision too
                with torch.no_grad():
                    refs[i].copy_(refs[i].to(dtypes[i]).float())
    for i, dt in enumerate(dtypes):
        assert torch.equal(grads[i], grads_before[i])            # the caller's gradients are untouched
        assert ours[i].dtype == dt
        tol = dict(rtol=1e-5, atol=1e-6) if dt == torch.float32 else dict(rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(ours[i].float(), refs[i].detach(), **tol)
        assert float(steps[i]) == (2 if i == 2 else 4)
        torch.testing.assert_close(m[i], opts[i].state[refs[i]]["exp_avg"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device,backend", MULTI_BACKENDS)
def test_multi_adam_backends_agree_with_reference(device, backend, force_backend):
    """One call on mixed dtypes: the backend equals the reference (fp32 bit-for-bit up to 1 ulp)."""
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float32, torch.float32, torch.float32]
    outs = []
    for b in ("reference", backend):
        force_backend("multi_adam", b)
        params, grads = _multi_inputs(device, dtypes, seed=3)
        gen = torch.Generator().manual_seed(4)
        m = [torch.randn(p.shape, generator=gen).to(device) for p in params]
        v = [torch.rand(p.shape, generator=gen).to(device) for p in params]
        steps = [torch.tensor(float(i + 1), device=device) for i in range(len(params))]
        steu_ext_multi_adam(params, grads, m, v, steps, lr=3e-3, weight_decay=0.01, decoupled=True)
        outs.append((params, m, v))
    for a, b in zip(outs[0], outs[1]):
        for x, y in zip(a, b):
            torch.testing.assert_close(x.float(), y.float(), rtol=2e-6, atol=1e-7)


def test_optimizer_dense_group_is_one_launch(force_backend):
    """All dense tensors of a group (here a 3-tensor head) are updated by one multi_adam_ call per step."""
    force_backend("multi_adam", "reference")
    calls = []
    real = _backend.resolve("multi_adam", "cpu")[1]

    def counting(*args):
        calls.append(len(args[0]))
        return real(*args)

    head = nn.Sequential(nn.Linear(8, 5), nn.Linear(5, 3, bias=False))
    opt = RowSparseAdamW(head.parameters(), lr=1e-2)
    x = torch.randn(4, 8)
    with mock.patch.dict(_backend._KERNELS, {("multi_adam", name): dataclasses.replace(k, fn=counting)
                                             for (op, name), k in _backend._KERNELS.items()
                                             if op == "multi_adam"}):
        for _ in range(3):
            opt.zero_grad()
            head(x).sum().backward()
            opt.step()
    assert calls == [3, 3, 3]


def test_multi_adam_bad_inputs():
    p, g = torch.zeros(4), torch.zeros(4)
    m, v, t = torch.zeros(4), torch.zeros(4), torch.ones(())
    ok = dict(lr=1e-2)
    with pytest.raises(ValueError, match="grads has 0 tensors"):
        steu_ext_multi_adam([p], [], [m], [v], [t], **ok)
    with pytest.raises(TypeError, match="list of tensors"):
        steu_ext_multi_adam(p, g, m, v, t, **ok)
    with pytest.raises(TypeError, match="params\\[0\\] has dtype"):
        steu_ext_multi_adam([p.long()], [g.long()], [m], [v], [t], **ok)
    with pytest.raises(ValueError, match="grads\\[0\\] is"):
        steu_ext_multi_adam([p], [torch.zeros(5)], [m], [v], [t], **ok)
    with pytest.raises(TypeError, match="exp_avgs\\[0\\] has dtype"):
        steu_ext_multi_adam([p], [g], [m.double()], [v], [t], **ok)
    with pytest.raises(ValueError, match="exp_avg_sqs\\[0\\] must be contiguous with 4"):
        steu_ext_multi_adam([p], [g], [m], [torch.zeros(3)], [t], **ok)
    with pytest.raises(TypeError, match="steps\\[0\\] has dtype"):
        steu_ext_multi_adam([p], [g], [m], [v], [torch.ones((), dtype=torch.int64)], **ok)
    with pytest.raises(ValueError, match="contiguous"):
        q = torch.zeros(4, 2).t()
        steu_ext_multi_adam([q], [torch.zeros(2, 4)], [torch.zeros(8)], [torch.zeros(8)], [t], **ok)
    with pytest.raises(ValueError, match="sparse"):
        steu_ext_multi_adam([p], [torch.zeros(4).to_sparse()], [m], [v], [t], **ok)
    steu_ext_multi_adam([], [], [], [], [], **ok)                 # nothing to do
    assert torch.equal(p, torch.zeros(4)) and torch.equal(m, torch.zeros(4))


def steu_ext_multi_adam(*args, **kw):
    from steu_ext.ops.row_adam import multi_adam_
    return multi_adam_(*args, **kw)
