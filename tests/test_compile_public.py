"""Issue #13 item 11: ``torch.compile(fullgraph=True)`` traces the public wrappers (``doc_counts``,
``grad_project_``, ``RowSparseAdam.step``), not only the raw ``torch.ops.steu_ext.*``. Backend choice,
extension loading and fake registration happen outside the traced code. Tiny sizes, ``aot_eager`` (it
runs the fake kernels and functionalizes the in-place ops) to keep CPU time short; run in a fresh Dynamo
state each time (the first call of a process is the case that used to fail)."""
from __future__ import annotations

import pytest
import torch

import steu_ext
from steu_ext.ops.doc_counts import doc_counts
from steu_ext.ops.grad_project import grad_project_
from steu_ext.optim import RowSparseAdam


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compile(f):
    return torch.compile(f, fullgraph=True, backend="aot_eager")


def _backends(op):
    return [pytest.param(b, marks=[pytest.mark.skip(reason=why)] if why else [])
            for b, why in steu_ext.available_backends(op, "cpu").items() if b in ("reference", "cpu")]


@pytest.mark.parametrize("backend", _backends("doc_counts"))
def test_compile_doc_counts(backend, force_backend):
    force_backend("doc_counts", backend)

    def f(ids, lab, mask):
        r = doc_counts(ids, lab, num_tokens=20, attention_mask=mask, validate=False)
        return r.counts, r.doc_freq, r.class_docs

    ids = torch.randint(0, 20, (4, 6))
    lab = (torch.rand(4, 3) > 0.5).to(torch.uint8)
    mask = torch.rand(4, 6) > 0.2
    for got, want in zip(_compile(f)(ids, lab, mask), f(ids, lab, mask)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("backend", _backends("grad_project"))
def test_compile_grad_project(backend, force_backend):
    force_backend("grad_project", backend)
    g = [torch.randn(3, 4), torch.randn(5)]
    ref = [-x + 0.1 * torch.randn(x.shape) for x in g]
    g_eager = [x.clone() for x in g]
    c_eager = grad_project_(g_eager, ref)
    c = _compile(lambda a, b: grad_project_(a, b))(g, ref)
    assert torch.allclose(c, c_eager) and float(c) != 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g, g_eager))


@pytest.mark.parametrize("backend", _backends("row_adam"))
def test_compile_row_sparse_adam_step(backend, force_backend):
    force_backend("row_adam", backend)
    force_backend("multi_adam", backend)

    def make():
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(10, 4))
        h = torch.nn.Parameter(torch.randn(3))
        opt = RowSparseAdam([{"params": [p], "rows": [1, 2, 7]}, {"params": [h]}], lr=0.1)
        return p, h, opt

    p1, h1, o1 = make()
    p2, h2, o2 = make()
    step = _compile(lambda: o2.step())
    for i in range(2):
        for p, h in ((p1, h1), (p2, h2)):
            p.grad = torch.full_like(p, float(i + 1))
            h.grad = torch.full_like(h, -1.0)
        o1.step()
        step()
    assert torch.allclose(p1, p2) and torch.allclose(h1, h2)
    assert torch.equal(p1[0], p2[0])
