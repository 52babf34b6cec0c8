"""Pure-PyTorch row-sparse Adam/AdamW step: the fallback and the oracle for ``steu_ext::row_adam_``.

Exactly torch.optim.Adam's single-tensor math, applied to the K rows ``rows`` of ``param`` only;
``multi_adam_`` is the same step on every element of each tensor of a list."""
from __future__ import annotations

import torch


def row_adam_(param: torch.Tensor, grad: torch.Tensor, rows: torch.Tensor, exp_avg: torch.Tensor,
              exp_avg_sq: torch.Tensor, step: torch.Tensor, lr: float, beta1: float, beta2: float,
              eps: float, weight_decay: float, decoupled: bool, maximize: bool,
              grad_gathered: bool) -> None:
    if rows.numel() == 0:
        return
    p = param.index_select(0, rows).float()
    g = (grad if grad_gathered else grad.index_select(0, rows)).float()
    if maximize:
        g = -g
    if weight_decay != 0:
        if decoupled:
            p.mul_(1 - lr * weight_decay)
        else:
            g = g.add(p, alpha=weight_decay)
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    # bias corrections from the step tensor: no host sync on an accelerator
    t = step.to(torch.float64)
    bc1 = 1 - torch.pow(beta1, t)
    bc2_sqrt = torch.sqrt(1 - torch.pow(beta2, t))
    step_size = (lr / bc1).to(torch.float32)
    denom = (exp_avg_sq.sqrt() / bc2_sqrt.to(torch.float32)).add_(eps)
    p.sub_(step_size * exp_avg / denom)
    param.index_copy_(0, rows, p.to(param.dtype))


def multi_adam_(params, grads, exp_avgs, exp_avg_sqs, steps, lr: float, beta1: float, beta2: float, eps: float,
                weight_decay: float, decoupled: bool, maximize: bool) -> None:
    one = None
    for p, g, m, v, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        if p.numel() == 0:
            continue
        if one is None or one.device != p.device:
            one = torch.zeros(1, dtype=torch.int64, device=p.device)
        # a tensor is a one-row table with that row selected
        row_adam_(p.view(1, -1), g.reshape(1, -1), one, m.view(1, -1), v.view(1, -1), t, lr, beta1, beta2,
                  eps, weight_decay, decoupled, maximize, False)
