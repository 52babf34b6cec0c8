"""Triton kernel for ``row_adam_``: one Adam/AdamW step on K selected rows of a ``[V, D]`` table.

One launch over a ``[BLOCK_K, BLOCK_D]``-tiled grid of the ``K x D`` work. Each program reads its rows'
ids, the parameter and gradient rows (gradient row ``rows[k]``, or ``k`` when already gathered) and the fp32
state, and writes parameter rows and state in place. Math is torch.optim.Adam's single-tensor path in fp32
(lerp form for exp_avg); the bias corrections are computed in fp64 from the step tensor read in-kernel
(no host sync), as the reference does. Every element is computed independently: deterministic.

Launches: 1.
"""
# No `from __future__ import annotations` here: Triton reads `x: tl.float64` parameter annotations as
# objects (as strings they are silently ignored and the scalar is passed as fp32).
import torch
import triton
import triton.language as tl

from ._utils import check_contiguous, check_same_device, device_guard, f32_to_bf16, ln_or_neg_inf, next_pow2

#: largest tile, in elements
TILE = 1024


@triton.jit
def _row_adam_kernel(param_ptr, grad_ptr, rows_ptr, exp_avg_ptr, exp_avg_sq_ptr, step_ptr, K, D,
                     lr: tl.float64, ln_beta1: tl.float64, ln_beta2: tl.float64,
                     w1, beta2, one_minus_beta2, eps, weight_decay, decay,
                     DECOUPLED: tl.constexpr, MAXIMIZE: tl.constexpr, GATHERED: tl.constexpr,
                     HAS_WD: tl.constexpr, PARAM_BF16: tl.constexpr, BLOCK_K: tl.constexpr,
                     BLOCK_D: tl.constexpr):
    k = tl.program_id(0).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    k_ok = k < K
    ok = k_ok[:, None] & (d < D)[None, :]
    row = tl.load(rows_ptr + k, mask=k_ok, other=0)
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
            param, grad, rows, exp_avg, exp_avg_sq, step, K, D,
            lr, ln_or_neg_inf(beta1), ln_or_neg_inf(beta2),
            1.0 - beta1, beta2, 1.0 - beta2, eps, weight_decay, 1.0 - lr * weight_decay,
            DECOUPLED=bool(decoupled), MAXIMIZE=bool(maximize), GATHERED=bool(grad_gathered),
            HAS_WD=weight_decay != 0, PARAM_BF16=param.dtype == torch.bfloat16, BLOCK_K=block_k,
            BLOCK_D=block_d, num_warps=4, enable_fp_fusion=True)
