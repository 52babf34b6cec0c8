"""Triton-specific checks the op tests do not make: block and tile edges, the long-row and multi-chunk paths,
mixed dtypes in one launch, launcher errors, launches skipped for empty work, and that every kernel compiles
for Hopper (sm_90, offline: no GPU needed) with the vector loads and atomics the design relies on.

Without a GPU the kernels run under ``TRITON_INTERPRET=1`` (set by conftest), so sizes stay small."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from steu_ext import _backend
from steu_ext.reference import doc_counts as ref_dc
from steu_ext.reference import grad_project as ref_gp
from steu_ext.reference import row_adam as ref_ra

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(_backend.triton_unavailable(torch.device(DEVICE)) is not None,
                                reason=str(_backend.triton_unavailable(torch.device(DEVICE))))


@pytest.fixture(scope="module")
def tk():
    from steu_ext.triton import doc_counts, grad_project, row_adam

    return doc_counts, row_adam, grad_project


class _NoLaunch:
    """Stands in for a kernel that must not be launched."""

    def __getitem__(self, grid):
        raise AssertionError(f"kernel launched with grid {grid}")


# ------------------------------------------------------------------------------------------- doc_counts
def _dc_inputs(B, L, V, C, *, junk=True):
    ids = torch.randint(0, V, (B, L))
    mask = torch.rand(B, L) < 0.8
    if junk:  # out-of-range ids where the mask is off must be ignored
        ids = torch.where(mask, ids, torch.full_like(ids, V + 7))
    labels = (torch.rand(B, C) < 0.5).to(torch.uint8)
    return ids.to(DEVICE), mask.to(DEVICE), labels.to(DEVICE)


def _assert_dc_equal(tk, ids, mask, labels, V):
    counts, df = tk[0].doc_counts(ids, mask, labels, V)
    want_counts, want_df = ref_dc.doc_counts(ids, mask, labels, V)
    assert counts.dtype == df.dtype == torch.int64
    assert torch.equal(counts.cpu(), want_counts.cpu()) and torch.equal(df.cpu(), want_df.cpu())


# (B, L): rows of 1, exact powers of two and one past them; B across the per-program row tile
@pytest.mark.parametrize("B,L", [(1, 1), (3, 2), (5, 16), (5, 17), (9, 64), (2, 65), (300, 3)])
def test_doc_counts_tile_edges(tk, B, L):
    _assert_dc_equal(tk, *_dc_inputs(B, L, V=11, C=3), V=11)


def test_doc_counts_realistic_row(tk):
    # a 512-token row with heavy repetition (V=50) and a full vocabulary id range
    ids, mask, labels = _dc_inputs(6, 512, V=50, C=4)
    ids[0] = torch.arange(512, device=ids.device) % 50
    mask[0] = True
    _assert_dc_equal(tk, ids, mask, labels, V=50)


@pytest.mark.parametrize("L", [37, 32])
def test_doc_counts_long_rows_are_presorted(tk, monkeypatch, L):
    # rows longer than MAX_BLOCK_L are row-sorted by torch and walked in chunks; shrink the limit to test it
    monkeypatch.setattr(tk[0], "MAX_BLOCK_L", 8)
    ids, mask, labels = _dc_inputs(7, L, V=9, C=2)
    ids[1] = 3                                      # one token repeated across every chunk boundary
    mask[1] = True
    _assert_dc_equal(tk, ids, mask, labels, V=9)


def test_doc_counts_ignores_out_of_range_ids(tk):
    ids = torch.tensor([[1, -5, 2, 9], [4, 4, 100, 0]], device=DEVICE)
    mask = torch.ones(2, 4, dtype=torch.bool, device=DEVICE)
    labels = torch.tensor([[1, 0], [1, 1]], dtype=torch.uint8, device=DEVICE)
    counts, df = tk[0].doc_counts(ids, mask, labels, 5)
    want = ref_dc.doc_counts(ids.clamp(0, 4), mask & (ids >= 0) & (ids < 5), labels, 5)
    assert torch.equal(counts, want[0]) and torch.equal(df, want[1])


def test_doc_counts_launcher_errors(tk):
    ids, mask, labels = _dc_inputs(4, 6, V=5, C=2)
    with pytest.raises(ValueError, match="ids must be contiguous"):
        tk[0].doc_counts(ids.t().contiguous().t(), mask, labels, 5)
    with pytest.raises(ValueError, match="num_tokens must be in"):
        tk[0].doc_counts(ids, mask, labels, 2**31)
    with pytest.raises(TypeError, match="expected ids int64"):
        tk[0].doc_counts(ids.int(), mask, labels, 5)


@pytest.mark.parametrize("B,L", [(0, 5), (4, 0)])
def test_doc_counts_empty_does_not_launch(tk, monkeypatch, B, L):
    monkeypatch.setattr(tk[0], "_doc_counts_kernel", _NoLaunch())
    ids, mask, labels = _dc_inputs(B, L, V=5, C=2)
    counts, df = tk[0].doc_counts(ids, mask, labels, 5)
    assert counts.shape == (2, 5) and not counts.any() and df.shape == (5,) and not df.any()


# --------------------------------------------------------------------------------------------- row_adam
def _adam_pair(tk, V, D, K, dtype=torch.float32, gathered=False, step=1.0, **hyper):
    kw = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False, maximize=False)
    kw.update(hyper)
    param = torch.randn(V, D, device=DEVICE).to(dtype)
    rows = torch.randperm(V, device=DEVICE)[:K]
    grad = torch.randn(K if gathered else V, D, device=DEVICE).to(dtype)
    m0, v0 = torch.randn(K, D, device=DEVICE), torch.rand(K, D, device=DEVICE)
    out = []
    for fn in (tk[1].row_adam_, ref_ra.row_adam_):
        p, m, v = param.clone(), m0.clone(), v0.clone()
        fn(p, grad, rows, m, v, torch.tensor(float(step), device=DEVICE), kw["lr"], kw["beta1"], kw["beta2"],
           kw["eps"], kw["weight_decay"], kw["decoupled"], kw["maximize"], gathered)
        out.append((p, m, v))
    return param, rows, out


def _assert_adam_close(param, rows, out, dtype=torch.float32):
    (p, m, v), (rp, rm, rv) = out
    keep = torch.ones(param.shape[0], dtype=torch.bool, device=param.device)
    keep[rows] = False
    assert torch.equal(p[keep], param[keep])                      # rows not selected are untouched
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == torch.float32 else dict(rtol=0, atol=0)
    if dtype != torch.float32:                                   # at most one ulp apart after rounding
        tol = dict(rtol=torch.finfo(dtype).eps, atol=1e-6)
    torch.testing.assert_close(p.float(), rp.float(), **tol)
    torch.testing.assert_close(m, rm, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(v, rv, rtol=1e-6, atol=1e-7)


# D across the block picker (1, powers of two and one past, wasteful non-powers) and K across BLOCK_K tiles
@pytest.mark.parametrize("V,D,K", [(5, 1, 5), (300, 3, 300), (9, 127, 4), (9, 129, 4), (6, 1030, 2)])
@pytest.mark.parametrize("gathered", [False, True], ids=["dense", "gathered"])
def test_row_adam_tile_edges(tk, V, D, K, gathered):
    _assert_adam_close(*_adam_pair(tk, V, D, K, gathered=gathered))


@pytest.mark.parametrize("hyper", [
    dict(beta1=0.0),                                 # ln(beta1) = -inf: beta1**t = 0
    dict(beta1=0.3, beta2=0.5),                      # lerp weight >= 0.5: torch's other lerp formula
    dict(step=10000.0),                              # bias corrections ~ 1
    dict(step=3.0, weight_decay=0.1),                # step read from the tensor, coupled decay
    dict(step=2.0, weight_decay=0.1, decoupled=True, maximize=True),
], ids=["beta1=0", "lerp-high", "step=1e4", "step=3-wd", "adamw-max"])
def test_row_adam_hyper_edges(tk, hyper):
    step = hyper.pop("step", 1.0)
    _assert_adam_close(*_adam_pair(tk, 17, 9, 5, step=step, **hyper))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_row_adam_low_precision_rounding(tk, dtype):
    # the update is written back rounded to nearest even (the interpreter's own bf16 cast truncates)
    _assert_adam_close(*_adam_pair(tk, 33, 40, 20, dtype=dtype), dtype=dtype)


def test_row_adam_launcher_errors_and_empty(tk, monkeypatch):
    V, D, K = 6, 4, 3
    p, g = torch.randn(V, D, device=DEVICE), torch.randn(V, D, device=DEVICE)
    rows = torch.arange(K, device=DEVICE)
    m, v = torch.zeros(K, D, device=DEVICE), torch.zeros(K, D, device=DEVICE)
    step = torch.tensor(1.0, device=DEVICE)
    args = (1e-3, 0.9, 0.999, 1e-8, 0.0, False, False, False)
    with pytest.raises(ValueError, match="grad must be contiguous"):
        tk[1].row_adam_(p, g.t().contiguous().t(), rows, m, v, step, *args)
    with pytest.raises(ValueError, match="exp_avg must be float32"):
        tk[1].row_adam_(p, g, rows, m.double(), v, step, *args)
    monkeypatch.setattr(tk[1], "_row_adam_kernel", _NoLaunch())
    empty = torch.zeros(0, D, device=DEVICE)
    tk[1].row_adam_(p, g, rows[:0], empty, empty.clone(), step, *args)   # K = 0: nothing to do


@pytest.mark.parametrize("gathered", [False, True], ids=["dense", "gathered"])
def test_row_adam_skips_out_of_range_rows(tk, gathered):
    # With validation off (STEU_EXT_VALIDATE=0) bad row ids reach the kernel: like the CUDA kernel it must
    # skip them (their state rows stay as they were), never read or write outside the table. The table is
    # a view into a larger buffer so that rows -1 and V would land on the guard rows around it.
    V, D = 5, 8
    buf = torch.randn(V + 2, D, device=DEVICE)
    gbuf = torch.randn(V + 2, D, device=DEVICE)
    param, grad = buf[1:V + 1], gbuf[1:V + 1]
    rows = torch.tensor([1, -1, V, 3], device=DEVICE)
    ok = torch.tensor([0, 3], device=DEVICE)                 # positions k of the valid rows
    K = rows.numel()
    g = torch.randn(K, D, device=DEVICE) if gathered else grad
    m0, v0 = torch.randn(K, D, device=DEVICE), torch.rand(K, D, device=DEVICE)
    before = buf.clone()
    m, v = m0.clone(), v0.clone()
    args = (1e-2, 0.9, 0.999, 1e-8, 0.0, False, False, gathered)
    tk[1].row_adam_(param, g, rows, m, v, torch.tensor(2.0, device=DEVICE), *args)
    want_p, want_m, want_v = before[1:V + 1].clone(), m0[ok].clone(), v0[ok].clone()
    ref_ra.row_adam_(want_p, g[ok] if gathered else g, rows[ok], want_m, want_v,
                     torch.tensor(2.0, device=DEVICE), *args)
    assert torch.equal(buf[0], before[0]) and torch.equal(buf[-1], before[-1])   # guard rows untouched
    torch.testing.assert_close(param, want_p, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(m[ok], want_m, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(v[ok], want_v, rtol=1e-6, atol=1e-7)
    assert torch.equal(m[1:3], m0[1:3]) and torch.equal(v[1:3], v0[1:3])        # skipped rows' state


# ----------------------------------------------------------------------------------------- grad_project
def _mixed_list(aligned):
    """Tensors spanning several chunks, several dtypes and an empty one; all lengths multiples of 16 (and
    so 16-byte aligned addresses from the allocator) when ``aligned``."""
    if aligned:
        specs = [((40000,), torch.float32), ((16, 16), torch.bfloat16), ((3, 32), torch.float16)]
    else:
        specs = [((40001,), torch.float32), ((33,), torch.bfloat16), ((0,), torch.float32),
                 ((5, 3), torch.float16), ((), torch.float32)]
    return [torch.randn(s, device=DEVICE).to(dt) for s, dt in specs]


@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "fisher"])
@pytest.mark.parametrize("conflict_only", [True, False], ids=["conflict", "always"])
def test_grad_project_chunks_and_mixed_dtypes(tk, aligned, weighted, conflict_only):
    ref = _mixed_list(aligned)
    grads = [(0.3 * torch.randn_like(r.float()) - 2 * r.float()).to(r.dtype) for r in ref]
    fisher = [(torch.rand_like(r.float()) + 0.1).to(r.dtype) for r in ref] if weighted else None
    if aligned:
        assert tk[2]._chunk_table(grads, ref, fisher)[3], "expected the aligned (vector) path"
    assert tk[2]._chunk_table(grads, ref, fisher)[4] == (-1, -1)   # mixed dtypes: codes read per tensor
    ours, theirs = [g.clone() for g in grads], [g.clone() for g in grads]
    coef = tk[2].grad_project_(ours, ref, fisher, conflict_only, 1e-20)
    want = ref_gp.grad_project_(theirs, ref, fisher, conflict_only, 1e-20)
    assert coef.dtype == torch.float32 and coef.dim() == 0 and float(coef) != 0
    torch.testing.assert_close(coef, want, rtol=1e-6, atol=0)
    for o, t in zip(ours, theirs):
        assert o.dtype == t.dtype
        eps = torch.finfo(o.dtype).eps
        torch.testing.assert_close(o.float(), t.float(), rtol=eps, atol=eps * 4)
    # deterministic: the same inputs give bit-identical results
    again = [g.clone() for g in grads]
    assert torch.equal(tk[2].grad_project_(again, ref, fisher, conflict_only, 1e-20), coef)
    assert all(torch.equal(a, o) for a, o in zip(again, ours))


@pytest.mark.parametrize("m", [3, 10])   # 10 > MAX_MB: directions handled in two groups
def test_grad_project_basis_groups_and_basis_dtype(tk, m):
    shapes = [(20000,), (7, 3), (0,), ()]
    grads = [torch.randn(s, device=DEVICE) for s in shapes]
    # basis in another dtype than the gradient it projects (the launcher accepts any float mix)
    basis = [torch.randn((m, *s), device=DEVICE).to(torch.bfloat16) * 0.01 for s in shapes]
    ours, theirs = [g.clone() for g in grads], [g.clone() for g in grads]
    c = tk[2].grad_project_basis_(ours, basis)
    want = ref_gp.grad_project_basis_(theirs, basis)
    assert c.shape == (m,) and c.dtype == torch.float32
    torch.testing.assert_close(c, want, rtol=1e-5, atol=1e-6)
    for o, t in zip(ours, theirs):
        torch.testing.assert_close(o, t, rtol=1e-5, atol=1e-5)


def test_grad_project_table_is_cached(tk):
    grads = [torch.randn(20000, device=DEVICE), torch.randn(3, device=DEVICE)]
    ref = [torch.randn_like(g) for g in grads]
    first = tk[2]._chunk_table(grads, ref, None)
    assert tk[2]._chunk_table(grads, ref, None) is first           # same buffers: no new table, no copy
    tab, cmap, n_chunks, _, codes = first
    assert codes == (0, 0)                                          # all fp32: specialised kernels
    assert n_chunks == 2 + 1 and cmap.tolist() == [0, 0, 1]
    assert tab.view(-1, tk[2].NCOL)[:, 3].tolist() == [20000, 3]   # numel column


def test_grad_project_launcher_errors_and_empty(tk, monkeypatch):
    g = [torch.randn(4, 3, device=DEVICE)]
    with pytest.raises(ValueError, match=r"ref\[0\] must be contiguous"):
        tk[2].grad_project_(g, [torch.randn(3, 4, device=DEVICE).t()], None, True, 1e-20)
    with pytest.raises(ValueError, match=r"basis\[0\] must be contiguous"):
        tk[2].grad_project_basis_(g, [torch.randn(4, 3, 2, device=DEVICE).transpose(0, 2)])
    with pytest.raises(TypeError, match="differs"):
        tk[2].grad_project_(g, [g[0].half()], None, True, 1e-20)
    for name in ("_grad_project_dot_kernel", "_grad_project_basis_dot_kernel"):
        monkeypatch.setattr(tk[2], name, _NoLaunch())
    empty = [torch.zeros(0, device=DEVICE), torch.zeros(2, 0, device=DEVICE)]
    assert float(tk[2].grad_project_(empty, [e.clone() for e in empty], None, False, 1e-20)) == 0.0
    c = tk[2].grad_project_basis_(empty, [torch.zeros(3, *e.shape, device=DEVICE) for e in empty])
    assert c.shape == (3,) and not c.any()


# ------------------------------------------------------------------------------------- Hopper compilation
def _ptx(fn, sig, const, aligned=(), num_warps=4):
    """PTX for sm_90 from Triton's compiler, mimicking the JIT's launch-time specialisation: the pointers and
    lengths named in ``aligned`` are 16-divisible; int arguments equal to 1 are passed in ``const``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = fn.arg_names
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in aligned}
    src = ASTSource(fn, {**sig, **{k: "constexpr" for k in const}}, const, attrs)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": num_warps, "enable_fp_fusion": True})
    return k.asm["ptx"].split(".section")[0]


def _ops(ptx):
    """Global loads/stores (with vector width) and 64-bit atomics used in a PTX listing."""
    pat = r"\b((?:ld|st)\.global(?:\.v\d)?|(?:atom|red)\.global[.a-z]*\.u64|(?:div|sqrt)\.rn\.f(?:32|64))\b"
    return sorted(set(re.findall(pat, ptx)))


def _hopper_report():
    """Compile every kernel (run in a subprocess without TRITON_INTERPRET) and summarise the PTX."""
    from triton.backends import backends

    if "nvidia" not in backends:
        return {"skip": "this triton has no NVIDIA backend"}
    from steu_ext.triton import doc_counts as dc
    from steu_ext.triton import grad_project as gp
    from steu_ext.triton import row_adam as ra

    def drop(sig, names):
        return {k: v for k, v in sig.items() if k not in names}

    def c(*args):
        return _ops(_ptx(*args))

    out = {}
    dc_sig = dict(keys_ptr="*i64", mask_ptr="*u8", labels_ptr="*u8", counts_ptr="*i64", df_ptr="*i64",
                  B="i32", L="i32", C="i32", V="i32")
    dc_al = ["keys_ptr", "mask_ptr", "labels_ptr", "counts_ptr", "df_ptr", "L"]
    out["doc_counts"] = c(dc._doc_counts_kernel, dc_sig,
                          dict(ROWS=2, BLOCK_L=32, LOG_R=1, LOG_L=5, PRESORTED=False), dc_al)
    ones = dict(B=1, L=1, C=1, V=1)  # the JIT turns int arguments equal to 1 into constexprs
    out["doc_counts_ones"] = c(dc._doc_counts_kernel, drop(dc_sig, ones),
                               dict(ones, ROWS=1, BLOCK_L=1, LOG_R=0, LOG_L=0, PRESORTED=False))
    out["doc_counts_presorted"] = c(dc._doc_counts_kernel, {**dc_sig, "keys_ptr": "*i32"},
                                    dict(ROWS=1, BLOCK_L=64, LOG_R=0, LOG_L=6, PRESORTED=True), dc_al)

    ra_sig = dict(param_ptr="*bf16", grad_ptr="*bf16", rows_ptr="*i64", exp_avg_ptr="*fp32",
                  exp_avg_sq_ptr="*fp32", step_ptr="*fp32", V="i32", K="i32", D="i32", lr="fp64",
                  ln_beta1="fp64", ln_beta2="fp64", w1="fp32", beta2="fp32", one_minus_beta2="fp32",
                  eps="fp32", weight_decay="fp32", decay="fp32")
    ra_const = dict(DECOUPLED=True, MAXIMIZE=False, GATHERED=False, HAS_WD=True, PARAM_BF16=True, BLOCK_K=1,
                    BLOCK_D=1024)
    out["row_adam"] = c(ra._row_adam_kernel, ra_sig, ra_const, list(ra_sig)[:6] + ["D"])
    out["row_adam_ones"] = c(ra._row_adam_kernel, drop(ra_sig, ("K", "D")),
                             dict(ra_const, K=1, D=1, BLOCK_D=1, PARAM_BF16=False))
    out["fp64_params"] = sorted(p.name for k in (ra._row_adam_kernel, gp._grad_project_coef_kernel)
                                for p in k.params if p.annotation_type == "fp64")
    ma_sig = dict(tab_ptr="*i64", map_ptr="*i64", lr="fp64", ln_beta1="fp64", ln_beta2="fp64", w1="fp32",
                  beta2="fp32", one_minus_beta2="fp32", eps="fp32", weight_decay="fp32", decay="fp32")
    for code, al in ((-1, True), (0, True), (2, False)):   # mixed dtypes / fp32 / bf16 unaligned
        out[f"multi_adam_{code}_{al}"] = c(ra._multi_adam_kernel, ma_sig,
                                            dict(DECOUPLED=True, MAXIMIZE=False, HAS_WD=True, PCODE=code,
                                                 ALIGNED=al, CHUNK=ra.CHUNK, BLOCK=ra.BLOCK))
    out["multi_adam_fp64_params"] = sorted(p.name for p in ra._multi_adam_kernel.params
                                           if p.annotation_type == "fp64")

    tab = {"tab_ptr": "*i64", "map_ptr": "*i64"}
    chunks = dict(CHUNK=gp.CHUNK, BLOCK=gp.BLOCK)
    for al in (True, False):   # mixed dtypes (dtype read per tensor), aligned or not
        out[f"gp_dot_{al}"] = c(gp._grad_project_dot_kernel, {**tab, "part_ptr": "*fp64", "n_chunks": "i32"},
                                dict(chunks, HAS_F=True, ALIGNED=al, GCODE=-1))
        out[f"gp_update_{al}"] = c(gp._grad_project_update_kernel, {**tab, "coef_ptr": "*fp32"},
                                   dict(chunks, ALIGNED=al, GCODE=-1))
    for code in (0, 2):        # one dtype for the whole list (fp32, bf16): specialised
        out[f"gp_dot_code{code}"] = c(gp._grad_project_dot_kernel,
                                      {**tab, "part_ptr": "*fp64", "n_chunks": "i32"},
                                      dict(chunks, HAS_F=False, ALIGNED=True, GCODE=code))
        out[f"gp_update_code{code}"] = c(gp._grad_project_update_kernel, {**tab, "coef_ptr": "*fp32"},
                                         dict(chunks, ALIGNED=True, GCODE=code))
    coef_sig = {"part_ptr": "*fp64", "coef_ptr": "*fp32", "n_chunks": "i32", "eps": "fp64"}
    out["gp_coef"] = c(gp._grad_project_coef_kernel, coef_sig, dict(CONFLICT_ONLY=True, BLOCK=gp.BLOCK))
    out["gp_coef_ones"] = c(gp._grad_project_coef_kernel, drop(coef_sig, ["n_chunks"]),
                            dict(n_chunks=1, CONFLICT_ONLY=False, BLOCK=gp.BLOCK))
    bdot_sig = {**tab, "part_ptr": "*fp64", "m": "i32"}
    out["basis_dot"] = c(gp._grad_project_basis_dot_kernel, bdot_sig,
                         dict(ALIGNED=True, CHUNK=gp.CHUNK, BLOCK_N=256, MB=8, GCODE=-1, BCODE=-1))
    out["basis_dot_ones"] = c(gp._grad_project_basis_dot_kernel, drop(bdot_sig, ["m"]),
                              dict(m=1, ALIGNED=True, CHUNK=gp.CHUNK, BLOCK_N=2048, MB=1, GCODE=0, BCODE=2))
    bcoef_sig = {"part_ptr": "*fp64", "c_ptr": "*fp32", "n_chunks": "i32", "m": "i32"}
    out["basis_coef"] = c(gp._grad_project_basis_coef_kernel, bcoef_sig, dict(BLOCK_C=64, MB=8))
    out["basis_coef_ones"] = c(gp._grad_project_basis_coef_kernel, drop(bcoef_sig, ["n_chunks", "m"]),
                               dict(n_chunks=1, m=1, BLOCK_C=512, MB=1))
    bupd_sig = {**tab, "c_ptr": "*fp32", "m": "i32"}
    out["basis_update"] = c(gp._grad_project_basis_update_kernel, bupd_sig,
                            dict(chunks, ALIGNED=True, GCODE=-1, BCODE=-1))
    out["basis_update_ones"] = c(gp._grad_project_basis_update_kernel, drop(bupd_sig, ["m"]),
                                 dict(chunks, m=1, ALIGNED=True, GCODE=1, BCODE=1))
    return out


def test_kernels_compile_for_hopper():
    """Compile every kernel for sm_90 with Triton's own compiler and ptxas (no GPU needed): catches what the
    interpreter does not (types, layouts, lowering, constexpr-specialised arguments), and checks the PTX for
    the vector loads, 64-bit atomics and IEEE fp32 division/sqrt the design relies on."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    here = Path(__file__).resolve().parent
    # the child runs from tests/: it finds this checkout's steu_ext without an install (the device machine)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(here.parent), os.environ.get("PYTHONPATH", "")) if p)
    code = f"import json, {Path(__file__).stem} as t; print(json.dumps(t._hopper_report()))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=here,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in out:
        pytest.skip(out["skip"])
    for name in ("doc_counts", "doc_counts_ones", "doc_counts_presorted"):
        assert any(op.endswith(".u64") and op.startswith(("red.", "atom.")) for op in out[name]), out[name]
    want = {"ld.global.v4", "st.global.v4", "div.rn.f32", "sqrt.rn.f32"}
    assert want <= set(out["row_adam"]), out["row_adam"]
    # scalars annotated tl.float64 reach the kernels as doubles (a string annotation would silently be fp32)
    assert out["fp64_params"] == ["eps", "ln_beta1", "ln_beta2", "lr"]
    assert out["multi_adam_fp64_params"] == ["ln_beta1", "ln_beta2", "lr"]
    for name in ("multi_adam_-1_True", "multi_adam_0_True"):                       # aligned: vectorised
        assert {"ld.global.v4", "st.global.v4", "div.rn.f32", "sqrt.rn.f32"} <= set(out[name]), out[name]
    assert "ld.global.v4" not in out["multi_adam_2_False"]
    vector = ("gp_dot_True", "gp_update_True", "gp_dot_code0", "gp_update_code0", "gp_dot_code2",
              "gp_update_code2", "basis_dot", "basis_update")
    for name in vector:                                                             # aligned: vectorised
        assert "ld.global.v4" in out[name], (name, out[name])
    assert "st.global.v4" in out["gp_update_True"], out["gp_update_True"]
    assert "ld.global.v4" not in out["gp_dot_False"]                                # unaligned: scalar
