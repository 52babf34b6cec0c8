"""``torch.library.opcheck`` on every C++ op (schema, fake/meta kernel, mutation annotations) and
``torch.compile(fullgraph=True)`` tracing through them."""
from __future__ import annotations

import pytest
import torch
from conftest import devices_under_test

import steu_ext


def _devices():
    out = []
    for dev in devices_under_test():
        key = "cpu" if dev == "cpu" else "cuda"
        why = steu_ext.available_backends("doc_counts", dev).get(key)
        out.append(pytest.param(dev, marks=[pytest.mark.skip(reason=why)] if why else [], id=dev))
    return out


def sample_inputs(op: str, device: str):
    """A few argument tuples per op, including awkward sizes."""
    g = torch.Generator().manual_seed(0)
    out = []
    if op == "doc_counts":
        for B, L, C, V in ((1, 1, 1, 1), (7, 13, 3, 50), (5, 0, 2, 9)):
            ids = torch.randint(0, V, (B, L), generator=g)
            mask = torch.rand(B, L, generator=g) > 0.3
            labels = (torch.rand(B, C, generator=g) > 0.5).to(torch.uint8)
            out.append((ids.to(device), mask.to(device), labels.to(device), V))
    elif op == "row_adam_":
        for V, D, K, dtype, gathered in ((10, 3, 4, torch.float32, False), (7, 5, 7, torch.bfloat16, True),
                                         (5, 1, 1, torch.float16, False)):
            p = torch.randn(V, D, generator=g).to(dtype)
            rows = torch.randperm(V, generator=g)[:K]
            grad = torch.randn((K if gathered else V), D, generator=g).to(dtype)
            st = [torch.randn(K, D, generator=g), torch.rand(K, D, generator=g)]
            out.append((p.to(device), grad.to(device), rows.to(device), st[0].to(device), st[1].to(device),
                        torch.tensor(3.0, device=device), 1e-2, 0.9, 0.999, 1e-8, 0.01, gathered, False, gathered))
    elif op == "multi_adam_":
        shapes, dtypes = [(3, 4), (7,), (1,)], [torch.float32, torch.bfloat16, torch.float16]
        params = [torch.randn(s, generator=g).to(dt).to(device) for s, dt in zip(shapes, dtypes)]
        grads = [torch.randn(s, generator=g).to(dt).to(device) for s, dt in zip(shapes, dtypes)]
        m = [torch.randn(s, generator=g).to(device) for s in shapes]
        v = [torch.rand(s, generator=g).to(device) for s in shapes]
        steps = [torch.tensor(float(i + 1), device=device) for i in range(len(shapes))]
        out.append((params, grads, m, v, steps, 1e-2, 0.9, 0.999, 1e-8, 0.01, True, False))
    elif op == "grad_project_":
        shapes = [(3, 4), (7,), ()]
        for fisher in (False, True):
            grads = [torch.randn(s, generator=g).to(device) for s in shapes]
            ref = [(-x.cpu() + 0.1 * torch.randn(x.shape, generator=g)).to(device) for x in grads]
            fis = [torch.rand(s, generator=g).to(device) for s in shapes] if fisher else None
            out.append((grads, ref, fis, True, 1e-20))
    elif op == "grad_project_basis_":
        shapes = [(3, 4), (5,)]
        q = torch.linalg.qr(torch.randn(17, 2, generator=g))[0].t().contiguous()
        basis = [q[:, :12].reshape(2, 3, 4).contiguous().to(device), q[:, 12:].contiguous().to(device)]
        out.append(([torch.randn(s, generator=g).to(device) for s in shapes], basis))
    return out


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("op", ["doc_counts", "row_adam_", "multi_adam_", "grad_project_",
                                "grad_project_basis_"])
def test_opcheck(op, device):
    for args in sample_inputs(op, device):
        torch.library.opcheck(getattr(torch.ops.steu_ext, op).default, args,
                              test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("device", _devices())
def test_compile_fullgraph_traces_ops(device):
    def f(ids, mask, labels, p, grad, rows, m, v, step):
        counts, df = torch.ops.steu_ext.doc_counts(ids, mask, labels, 50)
        torch.ops.steu_ext.row_adam_(p, grad, rows, m, v, step, 1e-2, 0.9, 0.999, 1e-8, 0.0, True, False, False)
        return counts.sum(0) + df, p * 2

    args = sample_inputs("doc_counts", device)[1][:3]
    adam = sample_inputs("row_adam_", device)[0]
    eager_p, comp_p = adam[0].clone(), adam[0].clone()
    m1, v1, m2, v2 = adam[3].clone(), adam[4].clone(), adam[3].clone(), adam[4].clone()
    ref = f(*args, eager_p, adam[1], adam[2], m1, v1, adam[5])
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = compiled(*args, comp_p, adam[1], adam[2], m2, v2, adam[5])
    assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])
    assert torch.equal(eager_p, comp_p) and torch.equal(m1, m2) and torch.equal(v1, v2)
