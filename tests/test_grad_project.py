"""grad_project_ / grad_project_basis_ / orthonormal_basis against float64 numpy oracles over lists of
tensors of different shapes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import backends_for

from steu_ext import _backend, grad_project_, grad_project_basis_, orthonormal_basis

SHAPES = [(7,), (3, 5), (123,), (2, 3, 4), (1,), ()]
LOW = [torch.bfloat16, torch.float16]


def _use(force_backend, op, device, backend):
    force_backend(op, backend)
    assert _backend.resolve(op, device)[0] == backend


def _np(ts):
    return [t.detach().cpu().double().numpy() for t in ts]


def _rand(shapes, device, dtype=torch.float32, positive=False):
    out = []
    for s in shapes:
        t = torch.randn(s, device=device)
        out.append((t.abs() + 0.1 if positive else t).to(dtype))
    return out


def _strided_like(ts):
    """Non-contiguous copies (same values) of ``ts`` where the shape allows it."""
    out = []
    for t in ts:
        big = torch.zeros((*t.shape, 2), dtype=t.dtype, device=t.device)
        big[..., 0] = t
        out.append(big[..., 0])
    return out


# ----------------------------------------------------------------------------------------------- oracles
def oracle_project(grads, ref, fisher, mode, eps=1e-20):
    g, r = _np(grads), _np(ref)
    f = _np(fisher) if fisher is not None else [np.ones_like(x) for x in r]
    dot = sum(float((gi * fi * ri).sum()) for gi, fi, ri in zip(g, f, r))
    nn = sum(float((ri * fi * ri).sum()) for fi, ri in zip(f, r))
    coef = dot / nn if nn > eps and (mode == "always" or dot < 0) else 0.0
    return [gi - coef * ri for gi, ri in zip(g, r)], coef, dot


def f_inner(a, b, f=None):
    f = f if f is not None else [np.ones_like(x) for x in a]
    return sum(float((ai * fi * bi).sum()) for ai, fi, bi in zip(a, f, b))


def f_norm(a, f=None):
    return f_inner(a, a, f) ** 0.5


# ------------------------------------------------------------------------------------------ grad_project_
@pytest.mark.parametrize("device,backend", backends_for("grad_project"))
@pytest.mark.parametrize("mode", ["conflict", "always"])
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "fisher"])
@pytest.mark.parametrize("sign", [-1.0, 1.0], ids=["conflicting", "agreeing"])
@pytest.mark.parametrize("strided", [False, True], ids=["contig", "strided"])
def test_project_matches_oracle(device, backend, force_backend, mode, weighted, sign, strided):
    _use(force_backend, "grad_project", device, backend)
    ref = _rand(SHAPES, device)
    fisher = _rand(SHAPES, device, positive=True) if weighted else None
    grads = [0.5 * n + sign * 2.0 * r for n, r in zip(_rand(SHAPES, device), ref)]
    if strided:                                   # ref/fisher may be any layout; grads are updated in place
        ref = _strided_like(ref)
        fisher = _strided_like(fisher) if weighted else None
        assert not ref[1].is_contiguous()
    before = [g.clone() for g in grads]
    ref_before = [r.clone() for r in ref]
    fisher_before = [f.clone() for f in fisher] if weighted else None
    want, want_coef, dot = oracle_project(before, ref, fisher, mode)
    assert (dot < 0) == (sign < 0)

    coef = grad_project_(grads, ref, fisher, mode=mode)

    assert isinstance(coef, torch.Tensor) and coef.dim() == 0 and coef.dtype == torch.float32
    for r, rb in zip(ref, ref_before):
        assert torch.equal(r, rb)
    if weighted:
        for f, fb in zip(fisher, fisher_before):
            assert torch.equal(f, fb)
    if mode == "conflict" and sign > 0:           # nothing to remove: the grads are untouched
        assert float(coef) == 0.0
        for g, b in zip(grads, before):
            assert torch.equal(g, b)
        return
    assert want_coef != 0
    np.testing.assert_allclose(float(coef), want_coef, rtol=1e-6)
    for g, w, shape in zip(grads, want, SHAPES):
        assert g.shape == shape and g.dtype == torch.float32
        np.testing.assert_allclose(g.cpu().double().numpy(), w, rtol=1e-5, atol=1e-5)
    f64 = _np(fisher) if weighted else None
    # the result is orthogonal to ref in the (Fisher-weighted) inner product
    assert abs(f_inner(_np(grads), _np(ref), f64)) <= 1e-5 * f_norm(_np(grads), f64) * f_norm(_np(ref), f64)


def test_fisher_weighting_decides_the_conflict():
    # <g, r> = 2 - 1 = 1 > 0 without weights, but <g, r>_F = 2 - 3 = -1 < 0 with F = [1, 3]
    g0 = torch.tensor([2.0, -1.0])
    r, f = [torch.tensor([1.0, 1.0])], [torch.tensor([1.0, 3.0])]
    g = [g0.clone()]
    assert float(grad_project_(g, r, mode="conflict")) == 0.0 and torch.equal(g[0], g0)
    coef = grad_project_(g, r, f, mode="conflict")
    assert float(coef) == -0.25                    # <g, r>_F / <r, r>_F = -1 / 4
    assert torch.equal(g[0], torch.tensor([2.25, -0.75]))


@pytest.mark.parametrize("device,backend", backends_for("grad_project"))
@pytest.mark.parametrize("mode", ["conflict", "always"])
def test_project_zero_ref_is_a_no_op(device, backend, force_backend, mode):
    _use(force_backend, "grad_project", device, backend)
    grads = _rand(SHAPES, device)
    before = [g.clone() for g in grads]
    coef = grad_project_(grads, [torch.zeros_like(g) for g in grads], mode=mode)
    assert float(coef) == 0.0
    for g, b in zip(grads, before):
        assert torch.equal(g, b)
    # a zero-weight Fisher gives <r, r>_F = 0 as well
    coef = grad_project_(grads, _rand(SHAPES, device), [torch.zeros_like(g) for g in grads], mode=mode)
    assert float(coef) == 0.0
    for g, b in zip(grads, before):
        assert torch.equal(g, b)


@pytest.mark.parametrize("device,backend", backends_for("grad_project"))
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "fisher"])
def test_project_low_precision(device, backend, force_backend, dtype, weighted):
    _use(force_backend, "grad_project", device, backend)
    ref = _rand(SHAPES, device, dtype)
    fisher = _rand(SHAPES, device, dtype, positive=True) if weighted else None
    grads = [(0.5 * n.float() - 2.0 * r.float()).to(dtype) for n, r in zip(_rand(SHAPES, device), ref)]
    want, want_coef, _ = oracle_project(grads, ref, fisher, "conflict")
    coef = grad_project_(grads, ref, fisher)
    eps = torch.finfo(dtype).eps
    np.testing.assert_allclose(float(coef), want_coef, rtol=1e-6)
    scale = max(float(np.abs(w).max()) for w in want if w.size)
    for g, w in zip(grads, want):
        assert g.dtype == dtype
        np.testing.assert_allclose(g.cpu().double().numpy(), w, rtol=eps, atol=eps * scale)


# -------------------------------------------------------------------------------------- orthonormal_basis
def _flat(ts):
    return np.concatenate([x.reshape(-1) for x in _np(ts)])


@pytest.mark.parametrize("m", [1, 3, 7])
def test_orthonormal_basis_spans_snapshots(m):
    snaps = [_rand(SHAPES, "cpu") for _ in range(m)]
    if m > 1:   # a dependent snapshot and a zero one add no direction
        snaps.append([a + 2 * b for a, b in zip(snaps[0], snaps[1])])
        snaps.append([torch.zeros_like(a) for a in snaps[0]])
    basis = orthonormal_basis(snaps)
    assert len(basis) == len(SHAPES)
    for b, shape in zip(basis, SHAPES):
        assert b.shape == (m, *shape) and b.dtype == torch.float32 and b.is_contiguous()
    Q = np.stack([np.concatenate([b[j].double().reshape(-1).numpy() for b in basis]) for j in range(m)])
    np.testing.assert_allclose(Q @ Q.T, np.eye(m), atol=1e-6)          # orthonormal
    S = np.stack([_flat(s) for s in snaps])
    for s in S:                                                         # every snapshot is in the span
        assert np.linalg.norm(s - Q.T @ (Q @ s)) <= 1e-5 * max(np.linalg.norm(s), 1.0)
    U = np.linalg.svd(S, full_matrices=False)[2][:m]                    # and the basis is in theirs
    assert np.linalg.norm(Q - (Q @ U.T) @ U) <= 1e-5


def test_orthonormal_basis_errors_and_inputs_untouched():
    with pytest.raises(ValueError, match="need at least one snapshot"):
        orthonormal_basis([])
    snaps = [_rand(SHAPES, "cpu") for _ in range(2)]
    before = [[t.clone() for t in s] for s in snaps]
    orthonormal_basis(snaps)
    for s, b in zip(snaps, before):
        for t, u in zip(s, b):
            assert torch.equal(t, u)


# ------------------------------------------------------------------------------------ grad_project_basis_
def _np_orthonormal(m, shapes, device, dtype=torch.float32, strided=False):
    sizes = [int(np.prod(s)) for s in shapes]
    q, _ = np.linalg.qr(np.random.default_rng(m).standard_normal((sum(sizes), m)))
    out, off = [], 0
    for s, n in zip(shapes, sizes):
        b = torch.from_numpy(q[off:off + n].T.copy()).reshape(m, *s).to(device, dtype)
        out.append(_strided_like([b])[0] if strided else b)
        off += n
    return out


@pytest.mark.parametrize("device,backend", backends_for("grad_project_basis"))
@pytest.mark.parametrize("m", [1, 5])
@pytest.mark.parametrize("strided", [False, True], ids=["contig", "strided"])
def test_basis_projection_matches_oracle(device, backend, force_backend, m, strided):
    _use(force_backend, "grad_project_basis", device, backend)
    basis = _np_orthonormal(m, SHAPES, device, strided=strided)
    grads = _rand(SHAPES, device)
    basis_before = [b.clone() for b in basis]
    B = np.concatenate([b.double().cpu().reshape(m, -1).numpy() for b in basis], 1)   # [m, n]
    g0 = _flat(grads)
    want_c = B @ g0
    want = g0 - B.T @ want_c

    c = grad_project_basis_(grads, basis)

    assert c.shape == (m,) and c.dtype == torch.float32
    np.testing.assert_allclose(c.cpu().double().numpy(), want_c, rtol=1e-5, atol=1e-6)
    got = _flat(grads)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for g, shape in zip(grads, SHAPES):
        assert g.shape == shape
    # orthogonal to every basis direction
    assert np.abs(B @ got).max() <= 1e-5 * np.linalg.norm(g0)
    for b, bb in zip(basis, basis_before):
        assert torch.equal(b, bb)


@pytest.mark.parametrize("device,backend", backends_for("grad_project_basis"))
def test_basis_projection_of_orthonormal_basis_output(device, backend, force_backend):
    _use(force_backend, "grad_project_basis", device, backend)
    snaps = [_rand(SHAPES, device) for _ in range(3)]
    basis = orthonormal_basis(snaps)
    # a gradient inside the span is removed entirely; one orthogonal to it is untouched (up to rounding)
    inside = [a - 0.5 * b + c for a, b, c in zip(*snaps)]
    grad_project_basis_(inside, basis)
    assert max(float(t.abs().max()) if t.numel() else 0.0 for t in inside) <= 1e-5
    ortho = _rand(SHAPES, device)
    grad_project_basis_(ortho, basis)                  # now orthogonal to the basis
    before = [t.clone() for t in ortho]
    c = grad_project_basis_(ortho, basis)
    assert float(c.abs().max()) <= 1e-5
    for t, b in zip(ortho, before):
        torch.testing.assert_close(t, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("device,backend", backends_for("grad_project_basis"))
@pytest.mark.parametrize("dtype", LOW)
def test_basis_projection_low_precision(device, backend, force_backend, dtype):
    _use(force_backend, "grad_project_basis", device, backend)
    m = 3
    basis = _np_orthonormal(m, SHAPES, device, dtype)
    grads = _rand(SHAPES, device, dtype)
    B = np.concatenate([b.double().cpu().reshape(m, -1).numpy() for b in basis], 1)
    g0 = _flat(grads)
    want_c = B @ g0
    want = g0 - B.T @ want_c
    c = grad_project_basis_(grads, basis)
    eps = torch.finfo(dtype).eps
    np.testing.assert_allclose(c.double().cpu().numpy(), want_c, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_flat(grads), want, rtol=eps, atol=eps * np.abs(want).max())
    assert all(g.dtype == dtype for g in grads)


# ------------------------------------------------------------------------------------------- bad inputs
def test_project_bad_inputs():
    g = [torch.randn(3), torch.randn(2, 2)]
    r = [torch.randn(3), torch.randn(2, 2)]
    before = [t.clone() for t in g]
    cases = [
        (dict(ref=r[:1]), ValueError, r"ref must be a list with one tensor per gradient \(2\), got 1"),
        (dict(ref=r + [torch.randn(1)]), ValueError, "ref must be a list with one tensor per gradient"),
        (dict(ref=r[0]), ValueError, "ref must be a list"),
        (dict(fisher=[torch.ones(3)]), ValueError, "fisher must be a list with one tensor per gradient"),
        (dict(grads=[]), ValueError, "grads must be a non-empty list"),
        (dict(grads=g[0]), ValueError, "grads must be a non-empty list"),
        (dict(ref=[r[0], torch.randn(4)]), ValueError, r"ref\[1\] has shape \(4,\), incompatible"),
        (dict(fisher=[torch.ones(3), torch.ones(4)]), ValueError, r"fisher\[1\] has shape \(4,\)"),
        (dict(ref=[r[0].half(), r[1]]), TypeError, r"ref\[0\] dtype torch.float16 differs"),
        (dict(grads=[g[0].double(), g[1]], ref=[r[0].double(), r[1]]), TypeError,
         r"grads\[0\] has dtype torch.float64"),
        (dict(grads=[torch.ones(3, dtype=torch.long), g[1]]), TypeError, r"grads\[0\] has dtype torch.int64"),
        (dict(grads=[g[0], g[1].t()]), ValueError, r"grads\[1\] must be contiguous"),
        (dict(grads=[g[0].tolist(), g[1]]), TypeError, r"grads\[0\] must be a torch.Tensor"),
        (dict(mode="sometimes"), ValueError, "mode must be one of"),
    ]
    for kw, err, msg in cases:
        args = dict(grads=g, ref=r, fisher=None, mode="always")
        args.update(kw)
        with pytest.raises(err, match=msg):
            grad_project_(args.pop("grads"), args.pop("ref"), args.pop("fisher"), **args)
    for t, b in zip(g, before):
        assert torch.equal(t, b)


def test_basis_bad_inputs():
    g = [torch.randn(3), torch.randn(2, 2)]
    b = [torch.randn(2, 3), torch.randn(2, 2, 2)]
    before = [t.clone() for t in g]
    cases = [
        (dict(basis=b[:1]), ValueError, r"basis must be a list with one tensor per gradient \(2\)"),
        (dict(basis=[torch.randn(0, 3), torch.randn(0, 2, 2)]), ValueError, "m >= 1"),
        (dict(basis=[torch.randn(2, 3), torch.randn(3, 2, 2)]), ValueError, "same number m >= 1"),
        (dict(basis=[torch.randn(2, 4), b[1]]), ValueError, r"basis\[0\] has shape \(2, 4\), incompatible"),
        (dict(basis=[torch.randn(3), b[1]]), ValueError, r"basis\[0\] has shape \(3,\)"),
        (dict(basis=[b[0].bfloat16(), b[1]]), TypeError, r"basis\[0\] dtype torch.bfloat16 differs"),
        (dict(grads=[g[0], g[1].t()]), ValueError, r"grads\[1\] must be contiguous"),
        (dict(grads=[]), ValueError, "grads must be a non-empty list"),
    ]
    for kw, err, msg in cases:
        args = dict(grads=g, basis=b)
        args.update(kw)
        with pytest.raises(err, match=msg):
            grad_project_basis_(args["grads"], args["basis"])
    for t, bb in zip(g, before):
        assert torch.equal(t, bb)
