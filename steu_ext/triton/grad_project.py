"""Triton kernels for ``grad_project_`` and ``grad_project_basis_``: projections over a whole list of tensors.

Multi-tensor apply without concatenation: every tensor is cut into CHUNK-element chunks and one program
handles one chunk of any tensor. A small int64 table on the device gives, per tensor, the addresses of its
grad / ref (or basis) / fisher arrays, its length, its first chunk and its dtype codes, plus a chunk -> tensor
map; kernels cast the addresses to typed pointers, so tensors of any mix of shapes and dtypes share each
launch. The table is built on the host, copied asynchronously (pinned memory) and cached per list of
addresses, so a training loop that reuses its buffers pays nothing for it after the first step. A dtype that
every tensor shares is passed as a constexpr (no per-block dtype branch); when every address is 16-byte
aligned and every length a multiple of 16 the kernels promise so to the compiler (vector loads/stores).

Launches per call (whatever the number of tensors or dtypes): 3 — chunk dot products (fp64 products and
accumulators, one partial per chunk in a buffer: no float atomics), one single-program kernel summing the
partials in a fixed order and computing the coefficient(s) on the device, and the in-place update reading
the coefficient(s) from device memory. No host sync. (+ 1 async table copy when the table is not cached.)
"""
# No `from __future__ import annotations` in kernel modules: Triton reads `x: tl.float64` parameter
# annotations as objects (as strings they are silently ignored and the scalar is passed as fp32).
from collections import OrderedDict
from typing import Optional

import torch
import triton
import triton.language as tl

from ._utils import (
    DTYPE_CODES,
    all_aligned,
    check_contiguous,
    check_same_device,
    chunk_table,
    device_guard,
    load_f32,
    next_pow2,
    shared_code,
    store_f32,
)

#: elements per chunk (one program); a multiple of every BLOCK below
CHUNK = 16384
#: elements per loop step of the 1-D kernels
BLOCK = 1024
#: elements per step of the basis dot tile [MB directions, BLOCK_N elements]
BASIS_TILE = 2048
#: directions per basis tile (more are done in groups)
MAX_MB = 8
#: int64 columns of the per-tensor table: g_addr, o_addr, f_addr, numel, first_chunk, gcode, ocode, fcode
NCOL = 8
#: launch options (fp fusion explicit: contracting a*b+c to fma only removes roundings)
_OPTS = {"num_warps": 4, "enable_fp_fusion": True}
_CACHE: OrderedDict = OrderedDict()


@triton.jit
def _grad_project_dot_kernel(tab_ptr, map_ptr, part_ptr, n_chunks, HAS_F: tl.constexpr, GCODE: tl.constexpr,
                             ALIGNED: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    row = tab_ptr + tl.load(map_ptr + pid) * 8
    g_addr = tl.load(row + 0)
    r_addr = tl.load(row + 1)
    f_addr = tl.load(row + 2)
    numel = tl.load(row + 3)
    if ALIGNED:  # every address 16-byte aligned and every length a multiple of 16: vector access
        numel = tl.multiple_of(numel, 16)
    if GCODE >= 0:  # one dtype for the whole list: specialise (no per-block dtype branches)
        code = GCODE
    else:
        code = tl.load(row + 5)
    start = (pid - tl.load(row + 4)) * CHUNK
    n_blocks = tl.cdiv(tl.minimum(numel - start, CHUNK), BLOCK)
    acc_dot = tl.zeros([BLOCK], tl.float64)
    acc_nn = tl.zeros([BLOCK], tl.float64)
    for i in range(n_blocks):
        idx = start + i * BLOCK + tl.arange(0, BLOCK)
        mask = idx < numel
        g = load_f32(g_addr, idx, mask, code, ALIGNED).to(tl.float64)
        r = load_f32(r_addr, idx, mask, code, ALIGNED).to(tl.float64)
        if HAS_F:
            fr = r * load_f32(f_addr, idx, mask, code, ALIGNED).to(tl.float64)
        else:
            fr = r
        acc_dot += g * fr
        acc_nn += r * fr
    tl.store(part_ptr + pid, tl.sum(acc_dot, axis=0))
    tl.store(part_ptr + n_chunks + pid, tl.sum(acc_nn, axis=0))


@triton.jit
def _grad_project_coef_kernel(part_ptr, coef_ptr, n_chunks, eps: tl.float64, CONFLICT_ONLY: tl.constexpr,
                              BLOCK: tl.constexpr):
    acc_dot = tl.zeros([BLOCK], tl.float64)
    acc_nn = tl.zeros([BLOCK], tl.float64)
    for i in range(tl.cdiv(n_chunks, BLOCK)):
        idx = i * BLOCK + tl.arange(0, BLOCK)
        mask = idx < n_chunks
        acc_dot += tl.load(part_ptr + idx, mask=mask, other=0.0)
        acc_nn += tl.load(part_ptr + n_chunks + idx, mask=mask, other=0.0)
    dot = tl.sum(acc_dot, axis=0)
    nn = tl.sum(acc_nn, axis=0)
    ok = nn > eps
    if CONFLICT_ONLY:
        ok = ok & (dot < 0)
    coef = tl.where(ok, dot / tl.where(nn > 0, nn, 1.0), 0.0)
    tl.store(coef_ptr, coef.to(tl.float32))


@triton.jit
def _grad_project_update_kernel(tab_ptr, map_ptr, coef_ptr, GCODE: tl.constexpr, ALIGNED: tl.constexpr,
                                CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    coef = tl.load(coef_ptr)
    if coef != 0:  # nothing to remove: leave the gradient untouched
        pid = tl.program_id(0)
        row = tab_ptr + tl.load(map_ptr + pid) * 8
        g_addr = tl.load(row + 0)
        r_addr = tl.load(row + 1)
        numel = tl.load(row + 3)
        if ALIGNED:
            numel = tl.multiple_of(numel, 16)
        if GCODE >= 0:
            code = GCODE
        else:
            code = tl.load(row + 5)
        start = (pid - tl.load(row + 4)) * CHUNK
        n_blocks = tl.cdiv(tl.minimum(numel - start, CHUNK), BLOCK)
        for i in range(n_blocks):
            idx = start + i * BLOCK + tl.arange(0, BLOCK)
            mask = idx < numel
            g = load_f32(g_addr, idx, mask, code, ALIGNED)
            r = load_f32(r_addr, idx, mask, code, ALIGNED)
            store_f32(g_addr, idx, g - coef * r, mask, code, ALIGNED)


@triton.jit
def _grad_project_basis_dot_kernel(tab_ptr, map_ptr, part_ptr, m, GCODE: tl.constexpr, BCODE: tl.constexpr,
                                   ALIGNED: tl.constexpr, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr,
                                   MB: tl.constexpr):
    # part[pid, j] = sum over the chunk of g * basis_j, for j in [0, m), in groups of MB directions
    pid = tl.program_id(0)
    row = tab_ptr + tl.load(map_ptr + pid) * 8
    g_addr = tl.load(row + 0)
    b_addr = tl.load(row + 1)
    numel = tl.load(row + 3)
    if ALIGNED:
        numel = tl.multiple_of(numel, 16)
    if GCODE >= 0:
        gcode = GCODE
    else:
        gcode = tl.load(row + 5)
    if BCODE >= 0:
        bcode = BCODE
    else:
        bcode = tl.load(row + 6)
    start = (pid - tl.load(row + 4)) * CHUNK
    n_blocks = tl.cdiv(tl.minimum(numel - start, CHUNK), BLOCK_N)
    for j0 in range(0, m, MB):
        jj = j0 + tl.arange(0, MB)
        j_ok = jj < m
        acc = tl.zeros([MB, BLOCK_N], tl.float64)
        for i in range(n_blocks):
            idx = start + i * BLOCK_N + tl.arange(0, BLOCK_N)
            mask = idx < numel
            g = load_f32(g_addr, idx, mask, gcode, ALIGNED).to(tl.float64)
            b = load_f32(b_addr, jj.to(tl.int64)[:, None] * numel + idx[None, :],
                         j_ok[:, None] & mask[None, :], bcode, ALIGNED).to(tl.float64)
            acc += b * g[None, :]
        tl.store(part_ptr + pid.to(tl.int64) * m + jj, tl.sum(acc, axis=1), mask=j_ok)


@triton.jit
def _grad_project_basis_coef_kernel(part_ptr, c_ptr, n_chunks, m, BLOCK_C: tl.constexpr, MB: tl.constexpr):
    # c[j] = sum over chunks of part[chunk, j], in a fixed order; stored as fp32
    for j0 in range(0, m, MB):
        jj = j0 + tl.arange(0, MB)
        j_ok = jj < m
        acc = tl.zeros([BLOCK_C, MB], tl.float64)
        for i in range(tl.cdiv(n_chunks, BLOCK_C)):
            ci = i * BLOCK_C + tl.arange(0, BLOCK_C)
            mask = (ci < n_chunks)[:, None] & j_ok[None, :]
            acc += tl.load(part_ptr + ci.to(tl.int64)[:, None] * m + jj[None, :], mask=mask, other=0.0)
        tl.store(c_ptr + jj, tl.sum(acc, axis=0).to(tl.float32), mask=j_ok)


@triton.jit
def _grad_project_basis_update_kernel(tab_ptr, map_ptr, c_ptr, m, GCODE: tl.constexpr, BCODE: tl.constexpr,
                                      ALIGNED: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    # g <- g - sum_j c[j] * basis_j, in fp32
    pid = tl.program_id(0)
    row = tab_ptr + tl.load(map_ptr + pid) * 8
    g_addr = tl.load(row + 0)
    b_addr = tl.load(row + 1)
    numel = tl.load(row + 3)
    if ALIGNED:
        numel = tl.multiple_of(numel, 16)
    if GCODE >= 0:
        gcode = GCODE
    else:
        gcode = tl.load(row + 5)
    if BCODE >= 0:
        bcode = BCODE
    else:
        bcode = tl.load(row + 6)
    start = (pid - tl.load(row + 4)) * CHUNK
    n_blocks = tl.cdiv(tl.minimum(numel - start, CHUNK), BLOCK)
    for i in range(n_blocks):
        idx = start + i * BLOCK + tl.arange(0, BLOCK)
        mask = idx < numel
        upd = tl.zeros([BLOCK], tl.float32)
        for j in range(m):
            upd += tl.load(c_ptr + j) * load_f32(b_addr, j * numel + idx, mask, bcode, ALIGNED)
        g = load_f32(g_addr, idx, mask, gcode, ALIGNED)
        store_f32(g_addr, idx, g - upd, mask, gcode, ALIGNED)


# ---------------------------------------------------------------------------------------------- launchers
def _chunk_table(grads: list[torch.Tensor], others: list[torch.Tensor],
                 fisher: Optional[list[torch.Tensor]]):
    """(table [n, NCOL] int64, chunk map [n_chunks] int64, n_chunks, aligned, (grad dtype code, other dtype
    code) or -1 where they differ) on the grads' device; cached by the list of addresses, sizes and dtypes."""
    device = grads[0].device
    fs = fisher if fisher is not None else [None] * len(grads)
    entries = tuple((g.data_ptr(), o.data_ptr(), f.data_ptr() if f is not None else 0, g.numel(),
                     DTYPE_CODES[g.dtype], DTYPE_CODES[o.dtype], DTYPE_CODES[f.dtype] if f is not None else 0)
                    for g, o, f in zip(grads, others, fs) if g.numel() > 0)
    # a dtype code shared by every tensor is passed as a constexpr (-1: mixed, read per tensor)
    return chunk_table(_CACHE, device, entries, numel_col=3, chunk=CHUNK, extra=lambda es: (
        all_aligned([a for e in es for a in e[:3] if a], [e[3] for e in es]),
        (shared_code(e[4] for e in es), shared_code(e[5] for e in es))))


def _check_list(op: str, grads, others, other_name: str, basis: bool = False) -> None:
    if len(grads) == 0 or len(others) != len(grads):
        raise ValueError(f"steu_ext.triton.{op}: need one {other_name} tensor per gradient "
                         f"({len(grads)}), got {len(others)}")
    device = grads[0].device
    for i, (g, o) in enumerate(zip(grads, others)):
        check_contiguous(op, **{f"grads[{i}]": g, f"{other_name}[{i}]": o})
        check_same_device(op, device, **{f"grads[{i}]": g, f"{other_name}[{i}]": o})
        for name, t in ((f"grads[{i}]", g), (f"{other_name}[{i}]", o)):
            if t.dtype not in DTYPE_CODES:
                raise TypeError(f"steu_ext.triton.{op}: {name} has unsupported dtype {t.dtype}")
        n = o.numel() // o.shape[0] if basis and o.dim() and o.shape[0] else o.numel()
        if n != g.numel() or (basis and (o.dim() == 0 or o.shape[0] != others[0].shape[0])):
            raise ValueError(f"steu_ext.triton.{op}: {other_name}[{i}] shape {tuple(o.shape)} does not fit "
                             f"grads[{i}] {tuple(g.shape)}")
        if not basis and o.dtype != g.dtype:
            raise TypeError(f"steu_ext.triton.{op}: {other_name}[{i}] dtype {o.dtype} differs from "
                            f"grads[{i}] {g.dtype}")


def grad_project_(grads: list[torch.Tensor], ref: list[torch.Tensor], fisher: Optional[list[torch.Tensor]],
                  conflict_only: bool, eps: float) -> torch.Tensor:
    """``g <- g - coef * r`` over all tensors at once, ``coef = <g, r>_F / <r, r>_F`` (0 unless
    ``<r, r>_F > eps`` and, when ``conflict_only``, ``<g, r>_F < 0``). Returns coef (0-dim fp32, on the
    device). Same semantics as :func:`steu_ext.reference.grad_project.grad_project_`."""
    _check_list("grad_project_", grads, ref, "ref")
    if fisher is not None:
        _check_list("grad_project_", grads, fisher, "fisher")
    device = grads[0].device
    tab, cmap, n_chunks, aligned, (gcode, _) = _chunk_table(grads, ref, fisher)
    if n_chunks == 0:
        return torch.zeros((), dtype=torch.float32, device=device)
    part = torch.empty(2 * n_chunks, dtype=torch.float64, device=device)
    coef = torch.empty((), dtype=torch.float32, device=device)
    with device_guard(device):
        _grad_project_dot_kernel[(n_chunks,)](tab, cmap, part, n_chunks, HAS_F=fisher is not None,
                                              GCODE=gcode, ALIGNED=aligned, CHUNK=CHUNK, BLOCK=BLOCK, **_OPTS)
        _grad_project_coef_kernel[(1,)](part, coef, n_chunks, float(eps), CONFLICT_ONLY=bool(conflict_only),
                                        BLOCK=BLOCK, **_OPTS)
        _grad_project_update_kernel[(n_chunks,)](tab, cmap, coef, GCODE=gcode, ALIGNED=aligned, CHUNK=CHUNK,
                                                 BLOCK=BLOCK, **_OPTS)
    return coef


def grad_project_basis_(grads: list[torch.Tensor], basis: list[torch.Tensor]) -> torch.Tensor:
    """``g <- g - sum_j c_j b_j`` with ``c_j = <b_j, g>`` over all tensors at once; ``basis[i]`` is
    ``[m, *grads[i].shape]`` (any float dtype). Returns c (fp32 ``[m]``, on the device). Same semantics as
    :func:`steu_ext.reference.grad_project.grad_project_basis_`."""
    _check_list("grad_project_basis_", grads, basis, "basis", basis=True)
    device = grads[0].device
    m = basis[0].shape[0]
    if m == 0:
        return torch.zeros(0, dtype=torch.float32, device=device)
    tab, cmap, n_chunks, aligned, (gcode, bcode) = _chunk_table(grads, basis, None)
    if n_chunks == 0:
        return torch.zeros(m, dtype=torch.float32, device=device)
    part = torch.empty(n_chunks * m, dtype=torch.float64, device=device)
    c = torch.empty(m, dtype=torch.float32, device=device)
    mb = min(next_pow2(m), MAX_MB)
    with device_guard(device):
        _grad_project_basis_dot_kernel[(n_chunks,)](tab, cmap, part, m, GCODE=gcode, BCODE=bcode,
                                                    ALIGNED=aligned, CHUNK=CHUNK, BLOCK_N=BASIS_TILE // mb,
                                                    MB=mb, **_OPTS)
        _grad_project_basis_coef_kernel[(1,)](part, c, n_chunks, m, BLOCK_C=max(16, BASIS_TILE // 4 // mb),
                                              MB=mb, **_OPTS)
        _grad_project_basis_update_kernel[(n_chunks,)](tab, cmap, c, m, GCODE=gcode, BCODE=bcode,
                                                       ALIGNED=aligned, CHUNK=CHUNK, BLOCK=BLOCK, **_OPTS)
    return c
