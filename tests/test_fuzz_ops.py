"""Issue #13: property-based fuzz tests (hypothesis) of every op against its pure-PyTorch reference, on random
shapes, dtypes and edge values (size 1, all rows, empty masks, zero gradients, huge/tiny magnitudes). The
backends that can run here (C++ CPU; Triton too under ``TRITON_INTERPRET=1`` when ``STEU_FUZZ_TRITON=1``,
it is slow) are each compared to the reference. Few examples per test: CI time matters."""
from __future__ import annotations

import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import steu_ext  # noqa: E402
from steu_ext import _backend  # noqa: E402
from steu_ext.ops.doc_counts import doc_counts  # noqa: E402
from steu_ext.ops.grad_project import grad_project_  # noqa: E402
from steu_ext.ops.row_adam import multi_adam_, row_adam_  # noqa: E402

FUZZ = settings(max_examples=int(os.environ.get("STEU_FUZZ_EXAMPLES", "25")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}


def _fast_backends(op):
    out = []
    for b, why in steu_ext.available_backends(op, "cpu").items():
        if b == "reference" or why:
            continue
        if b == "triton" and os.environ.get("STEU_FUZZ_TRITON") != "1":
            continue
        out.append(b)
    return out or pytest.skip(f"no non-reference backend for {op} here")


def _run(op, backend, fn):
    with _backend.use_backend({op: backend}):
        return fn()


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@FUZZ
@given(B=st.integers(1, 9), L=st.integers(0, 17), C=st.integers(1, 5), V=st.integers(1, 40),
       density=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 2 ** 16))
def test_fuzz_doc_counts(B, L, C, V, density, seed):
    g = _gen(seed)
    ids = torch.randint(0, V, (B, L), generator=g)
    mask = torch.rand(B, L, generator=g) < (1.0 - density / 2)
    lab = (torch.rand(B, C, generator=g) < 0.5).to(torch.uint8)
    ref = _run("doc_counts", "reference", lambda: doc_counts(ids, lab, num_tokens=V, attention_mask=mask))
    for b in _fast_backends("doc_counts"):
        got = _run("doc_counts", b, lambda: doc_counts(ids, lab, num_tokens=V, attention_mask=mask))
        assert torch.equal(got.counts, ref.counts) and torch.equal(got.doc_freq, ref.doc_freq), b


@st.composite
def _adam_case(draw):
    V = draw(st.integers(1, 24))
    D = draw(st.integers(1, 9))
    K = draw(st.integers(0, V))
    return dict(V=V, D=D, K=K, dtype=draw(st.sampled_from(DTYPES)), gathered=draw(st.booleans()),
                scale=draw(st.sampled_from([0.0, 1e-6, 1.0, 1e4])), step=draw(st.integers(1, 1000)),
                wd=draw(st.sampled_from([0.0, 0.1])), decoupled=draw(st.booleans()),
                maximize=draw(st.booleans()), seed=draw(st.integers(0, 2 ** 16)))


@FUZZ
@given(c=_adam_case())
def test_fuzz_row_adam(c):
    g = _gen(c["seed"])
    V, D, K, dt = c["V"], c["D"], c["K"], c["dtype"]
    rows = torch.randperm(V, generator=g)[:K]
    p0 = torch.randn(V, D, generator=g).to(dt)
    grad = (torch.randn((K if c["gathered"] else V), D, generator=g) * c["scale"]).to(dt)
    m0, v0 = torch.randn(K, D, generator=g), torch.rand(K, D, generator=g)
    kw = dict(lr=1e-2, weight_decay=c["wd"], decoupled=c["decoupled"], maximize=c["maximize"],
              grad_layout="gathered" if c["gathered"] else "full")

    def go(backend):
        p, m, v = p0.clone(), m0.clone(), v0.clone()
        _run("row_adam", backend, lambda: row_adam_(p, grad, rows, m, v, torch.tensor(float(c["step"])), **kw))
        return p, m, v

    want = go("reference")
    others = torch.ones(V, dtype=torch.bool)
    others[rows] = False
    assert torch.equal(want[0][others], p0[others])
    for b in _fast_backends("row_adam"):
        got = go(b)
        atol, rtol = TOL[dt]
        assert torch.equal(got[0][others], p0[others]), b          # unselected rows: bit-identical
        torch.testing.assert_close(got[0].float(), want[0].float(), atol=atol, rtol=rtol)
        torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[2], want[2], atol=1e-5, rtol=1e-5)


@FUZZ
@given(shapes=st.lists(st.lists(st.integers(1, 6), min_size=0, max_size=3), min_size=1, max_size=4),
       dtypes=st.lists(st.sampled_from(DTYPES), min_size=4, max_size=4), step=st.integers(1, 50),
       scale=st.sampled_from([0.0, 1.0, 1e3]), seed=st.integers(0, 2 ** 16))
def test_fuzz_multi_adam(shapes, dtypes, step, scale, seed):
    g = _gen(seed)
    ps = [torch.randn(s, generator=g).to(dtypes[i]) for i, s in enumerate(shapes)]
    gs = [(torch.randn(s, generator=g) * scale).to(dtypes[i]) for i, s in enumerate(shapes)]
    ms = [torch.randn(s, generator=g) for s in shapes]
    vs = [torch.rand(s, generator=g) for s in shapes]

    def go(backend):
        p, m, v = [x.clone() for x in ps], [x.clone() for x in ms], [x.clone() for x in vs]
        steps = [torch.tensor(float(step)) for _ in shapes]
        _run("multi_adam", backend, lambda: multi_adam_(p, gs, m, v, steps, lr=1e-2, weight_decay=0.01,
                                                        decoupled=True))
        return p, m, v

    want = go("reference")
    for b in _fast_backends("multi_adam"):
        got = go(b)
        for i in range(len(shapes)):
            atol, rtol = TOL[dtypes[i]]
            torch.testing.assert_close(got[0][i].float(), want[0][i].float(), atol=atol, rtol=rtol)
            torch.testing.assert_close(got[1][i], want[1][i], atol=1e-5, rtol=1e-5)


@FUZZ
@given(shapes=st.lists(st.lists(st.integers(1, 7), min_size=0, max_size=2), min_size=1, max_size=3),
       fisher=st.booleans(), mode=st.sampled_from(["conflict", "always"]),
       ref_scale=st.sampled_from([0.0, 1e-3, 1.0]), seed=st.integers(0, 2 ** 16))
def test_fuzz_grad_project(shapes, fisher, mode, ref_scale, seed):
    g = _gen(seed)
    grads = [torch.randn(s, generator=g) for s in shapes]
    ref = [torch.randn(s, generator=g) * ref_scale for s in shapes]
    fis = [torch.rand(s, generator=g) for s in shapes] if fisher else None

    def go(backend):
        gg = [x.clone() for x in grads]
        c = _run("grad_project", backend, lambda: grad_project_(gg, ref, fis, mode=mode))
        return c, gg

    want = go("reference")
    for b in _fast_backends("grad_project"):
        got = go(b)
        torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-4)
        for x, y in zip(got[1], want[1]):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
