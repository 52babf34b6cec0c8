"""Triton kernel for ``row_adam_``: one Adam/AdamW step on K selected rows of a ``[V, D]`` table.

One launch over a ``[BLOCK_K, BLOCK_D]``-tiled grid of the ``K x D`` work. Each program reads its rows'
ids, the parameter and gradient rows (gradient row ``rows[k]``, or ``k`` when already gathered) and the fp32
state, and writes parameter rows and state in place. Math is torch.optim.Adam's single-tensor path in fp32
(lerp form for exp_avg); the bias corrections are computed in fp64 from the step tensor read in-kernel
(no host sync), as the reference does. Every element is computed independently: deterministic.

``multi_adam_`` is the same step over every element of a list of dense tensors (a classifier head) in one
launch: each tensor is cut into CHUNK-element chunks, one program per chunk of any tensor, through an int64
table of addresses (param, grad, exp_avg, exp_avg_sq, step) cached per list of addresses, as in
:mod:`steu_ext.triton.grad_project`.

Launches: 1 per call, for either op (+ 1 async table copy when the multi-tensor table is not cached).
"""
# No `from __future__ import annotations` here: Triton reads `x: tl.float64` parameter annotations as
# objects (as strings they are silently ignored and the scalar is passed as fp32).
from collections import OrderedDict

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
    f32_to_bf16,
    ln_or_neg_inf,
    load_f32,
    next_pow2,
    shared_code,
    store_f32,
)

#: largest tile, in elements
TILE = 1024
#: multi_adam_: elements per chunk (one program) and per loop step
CHUNK = 16384
BLOCK = 1024
#: int64 columns of the multi_adam_ table: p, g, exp_avg, exp_avg_sq, step addresses, numel, first chunk, code
NCOL = 8
_CACHE: OrderedDict = OrderedDict()


@triton.jit
def _row_adam_kernel(param_ptr, grad_ptr, rows_ptr, exp_avg_ptr, exp_avg_sq_ptr, step_ptr, V, K, D,
                     lr: tl.float64, ln_beta1: tl.float64, ln_beta2: tl.float64,
                     w1, beta2, one_minus_beta2, eps, weight_decay, decay,
                     DECOUPLED: tl.constexpr, MAXIMIZE: tl.constexpr, GATHERED: tl.constexpr,
                     HAS_WD: tl.constexpr, PARAM_BF16: tl.constexpr, BLOCK_K: tl.constexpr,
                     BLOCK_D: tl.constexpr):
    k = tl.program_id(0).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    k_ok = k < K
    row = tl.load(rows_ptr + k, mask=k_ok, other=0)
    # The Python wrapper rejects out-of-range rows (unless validation is off); skip them here rather than
    # read and write out of bounds, as the CUDA kernel does.
    k_ok = k_ok & (row >= 0) & (row < V)
    ok = k_ok[:, None] & (d < D)[None, :]
    p_off = row[:, None] * D + d[None, :]
    s_off = k[:, None] * D + d[None, :]
    if GATHERED:
        g_off = s_off
    else:
        g_off = p_off

    p = tl.load(param_ptr + p_off, mask=ok, other=0.0).to(tl.float32)
    g = tl.load(grad_ptr + g_off, mask=ok, other=0.0).to(tl.float32)
    m = tl.load(exp_avg_ptr + s_off, mask=ok, other=0.0)
    v = tl.load(exp_avg_sq_ptr + s_off, mask=ok, other=0.0)
    if MAXIMIZE:
        g = -g
    if HAS_WD:
        if DECOUPLED:
            p = p * decay
        else:
            g = g + weight_decay * p
    # exp_avg.lerp_(g, w1), torch's two-sided lerp formula
    m = tl.where(w1 < 0.5, m + w1 * (g - m), g - (g - m) * (1.0 - w1))
    # exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    v = v * beta2 + one_minus_beta2 * g * g

    # bias corrections in fp64 from the step tensor: 1 - beta**t = 1 - exp(t * ln(beta))
    t = tl.load(step_ptr).to(tl.float64)
    bc1 = 1.0 - tl.exp(t * ln_beta1)
    bc2_sqrt = tl.sqrt(1.0 - tl.exp(t * ln_beta2))
    step_size = (lr / bc1).to(tl.float32)
    denom = tl.div_rn(tl.sqrt_rn(v), bc2_sqrt.to(tl.float32)) + eps
    p = p - tl.div_rn(step_size * m, denom)

    if PARAM_BF16:
        p_out = f32_to_bf16(p)
    else:
        p_out = p.to(param_ptr.dtype.element_ty)
    tl.store(param_ptr + p_off, p_out, mask=ok)
    tl.store(exp_avg_ptr + s_off, m, mask=ok)
    tl.store(exp_avg_sq_ptr + s_off, v, mask=ok)


def _block_d(D: int) -> int:
    """Largest power-of-two block <= TILE that wastes at most 1/8 of its lanes on D (small D: next_pow2)."""
    b = min(next_pow2(D), TILE)
    while b > 128 and (-D) % b > b // 8:
        b //= 2
    return b


def row_adam_(param: torch.Tensor, grad: torch.Tensor, rows: torch.Tensor, exp_avg: torch.Tensor,
              exp_avg_sq: torch.Tensor, step: torch.Tensor, lr: float, beta1: float, beta2: float,
              eps: float, weight_decay: float, decoupled: bool, maximize: bool,
              grad_gathered: bool) -> None:
    """In-place Adam/AdamW step on ``param[rows]``; same contract and semantics as
    :func:`steu_ext.reference.row_adam.row_adam_` (``step`` already incremented, read on the device)."""
    check_contiguous("row_adam_", param=param, grad=grad, rows=rows, exp_avg=exp_avg,
                     exp_avg_sq=exp_avg_sq)
    device = param.device
    check_same_device("row_adam_", device, grad=grad, rows=rows, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq,
                      step=step)
    if param.dim() != 2 or rows.dim() != 1 or rows.dtype != torch.int64:
        raise ValueError("steu_ext.triton.row_adam_: expected param [V, D] and int64 rows [K]")
    V, D = param.shape
    K = rows.numel()
    if grad.dtype != param.dtype or tuple(grad.shape) != ((K, D) if grad_gathered else (V, D)):
        raise ValueError(f"steu_ext.triton.row_adam_: grad {tuple(grad.shape)} {grad.dtype} does not match "
                         f"param {tuple(param.shape)} {param.dtype} (gathered={grad_gathered})")
    for name, s in (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        if s.dtype != torch.float32 or tuple(s.shape) != (K, D):
            raise ValueError(f"steu_ext.triton.row_adam_: {name} must be float32 {(K, D)}, got "
                             f"{s.dtype} {tuple(s.shape)}")
    if step.numel() != 1:
        raise ValueError("steu_ext.triton.row_adam_: step must hold one value")
    if K == 0 or D == 0:
        return
    step = step.reshape(()).to(torch.float32)

    lr, beta1, beta2 = float(lr), float(beta1), float(beta2)
    eps, weight_decay = float(eps), float(weight_decay)
    block_d = _block_d(D)
    block_k = min(max(1, TILE // block_d), next_pow2(K))
    grid = (triton.cdiv(K, block_k), triton.cdiv(D, block_d))
    with device_guard(device):
        _row_adam_kernel[grid](
            param, grad, rows, exp_avg, exp_avg_sq, step, V, K, D,
            lr, ln_or_neg_inf(beta1), ln_or_neg_inf(beta2),
            1.0 - beta1, beta2, 1.0 - beta2, eps, weight_decay, 1.0 - lr * weight_decay,
            DECOUPLED=bool(decoupled), MAXIMIZE=bool(maximize), GATHERED=bool(grad_gathered),
            HAS_WD=weight_decay != 0, PARAM_BF16=param.dtype == torch.bfloat16, BLOCK_K=block_k,
            BLOCK_D=block_d, num_warps=4, enable_fp_fusion=True)


@triton.jit
def _multi_adam_kernel(tab_ptr, map_ptr, lr: tl.float64, ln_beta1: tl.float64, ln_beta2: tl.float64,
                       w1, beta2, one_minus_beta2, eps, weight_decay, decay,
                       DECOUPLED: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr,
                       PCODE: tl.constexpr, ALIGNED: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    row = tab_ptr + tl.load(map_ptr + pid) * 8
    p_addr = tl.load(row + 0)
    g_addr = tl.load(row + 1)
    m_addr = tl.load(row + 2)
    v_addr = tl.load(row + 3)
    step_addr = tl.load(row + 4)
    numel = tl.load(row + 5)
    if ALIGNED:
        numel = tl.multiple_of(numel, 16)
    if PCODE >= 0:  # one dtype for the whole list: specialise
        code = PCODE
    else:
        code = tl.load(row + 7)
    start = (pid - tl.load(row + 6)) * CHUNK
    # bias corrections in fp64 from this tensor's step, as in _row_adam_kernel
    t = tl.load(step_addr.to(tl.pointer_type(tl.float32))).to(tl.float64)
    step_size = (lr / (1.0 - tl.exp(t * ln_beta1))).to(tl.float32)
    bc2_sqrt = tl.sqrt(1.0 - tl.exp(t * ln_beta2)).to(tl.float32)
    for i in range(tl.cdiv(tl.minimum(numel - start, CHUNK), BLOCK)):
        idx = start + i * BLOCK + tl.arange(0, BLOCK)
        ok = idx < numel
        p = load_f32(p_addr, idx, ok, code, ALIGNED)
        g = load_f32(g_addr, idx, ok, code, ALIGNED)
        m = load_f32(m_addr, idx, ok, 0, ALIGNED)
        v = load_f32(v_addr, idx, ok, 0, ALIGNED)
        if MAXIMIZE:
            g = -g
        if HAS_WD:
            if DECOUPLED:
                p = p * decay
            else:
                g = g + weight_decay * p
        m = tl.where(w1 < 0.5, m + w1 * (g - m), g - (g - m) * (1.0 - w1))
        v = v * beta2 + one_minus_beta2 * g * g
        denom = tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps
        p = p - tl.div_rn(step_size * m, denom)
        store_f32(p_addr, idx, p, ok, code, ALIGNED)
        store_f32(m_addr, idx, m, ok, 0, ALIGNED)
        store_f32(v_addr, idx, v, ok, 0, ALIGNED)


def _multi_table(params, grads, exp_avgs, exp_avg_sqs, steps):
    """(table [n, NCOL] int64, chunk map, n_chunks, aligned, shared dtype code or -1) on the params' device,
    cached by the list of addresses, sizes and dtypes."""
    device = params[0].device
    entries = tuple((p.data_ptr(), g.data_ptr(), m.data_ptr(), v.data_ptr(), t.data_ptr(), p.numel(),
                     DTYPE_CODES[p.dtype])
                    for p, g, m, v, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps) if p.numel() > 0)
    return chunk_table(_CACHE, device, entries, numel_col=5, chunk=CHUNK, extra=lambda es: (
        all_aligned([a for e in es for a in e[:4]], [e[5] for e in es]), shared_code(e[6] for e in es)))


def multi_adam_(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list, steps: list, lr: float,
                beta1: float, beta2: float, eps: float, weight_decay: float, decoupled: bool,
                maximize: bool) -> None:
    """In-place Adam/AdamW step on every element of each tensor of ``params`` in one launch; same contract
    and semantics as :func:`steu_ext.reference.row_adam.multi_adam_` (fp32 ``steps`` read on the device)."""
    if not len(params) == len(grads) == len(exp_avgs) == len(exp_avg_sqs) == len(steps):
        raise ValueError("steu_ext.triton.multi_adam_: the five lists must have the same length")
    if not params:
        return
    device = params[0].device
    for i, (p, g, m, v, t) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, steps)):
        check_contiguous("multi_adam_", **{f"params[{i}]": p, f"grads[{i}]": g, f"exp_avgs[{i}]": m,
                                            f"exp_avg_sqs[{i}]": v})
        check_same_device("multi_adam_", device, **{f"params[{i}]": p, f"grads[{i}]": g, f"exp_avgs[{i}]": m,
                                                     f"exp_avg_sqs[{i}]": v, f"steps[{i}]": t})
        if p.dtype not in DTYPE_CODES or g.dtype != p.dtype or g.numel() != p.numel():
            raise ValueError(f"steu_ext.triton.multi_adam_: grads[{i}] {g.dtype} {tuple(g.shape)} does not "
                             f"match params[{i}] {p.dtype} {tuple(p.shape)}")
        for name, s in ((f"exp_avgs[{i}]", m), (f"exp_avg_sqs[{i}]", v)):
            if s.dtype != torch.float32 or s.numel() != p.numel():
                raise ValueError(f"steu_ext.triton.multi_adam_: {name} must be float32 with {p.numel()} "
                                 f"elements, got {s.dtype} {tuple(s.shape)}")
        if t.dtype != torch.float32 or t.numel() != 1:
            raise ValueError(f"steu_ext.triton.multi_adam_: steps[{i}] must be one float32 value")
    tab, cmap, n_chunks, aligned, pcode = _multi_table(params, grads, exp_avgs, exp_avg_sqs, steps)
    if n_chunks == 0:
        return
    lr, beta1, beta2 = float(lr), float(beta1), float(beta2)
    eps, weight_decay = float(eps), float(weight_decay)
    with device_guard(device):
        _multi_adam_kernel[(n_chunks,)](
            tab, cmap, lr, ln_or_neg_inf(beta1), ln_or_neg_inf(beta2),
            1.0 - beta1, beta2, 1.0 - beta2, eps, weight_decay, 1.0 - lr * weight_decay,
            DECOUPLED=bool(decoupled), MAXIMIZE=bool(maximize), HAS_WD=weight_decay != 0, PCODE=pcode,
            ALIGNED=aligned, CHUNK=CHUNK, BLOCK=BLOCK, num_warps=4, enable_fp_fusion=True)
