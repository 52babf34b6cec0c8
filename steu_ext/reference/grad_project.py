"""Pure-PyTorch gradient projection over lists of tensors: fallback and oracle for
``steu_ext::grad_project_`` and ``steu_ext::grad_project_basis_``."""
from __future__ import annotations

from typing import List, Optional

import torch


def grad_project_(grads: List[torch.Tensor], ref: List[torch.Tensor],
                  fisher: Optional[List[torch.Tensor]], conflict_only: bool, eps: float) -> torch.Tensor:
    """g_i <- g_i - coef * r_i with coef = <g, r>_F / <r, r>_F over all tensors at once
    (F = diagonal Fisher weights, 1 if None); when ``conflict_only``, coef = 0 unless <g, r>_F < 0."""
    device = grads[0].device
    dot = torch.zeros((), dtype=torch.float64, device=device)
    nn = torch.zeros((), dtype=torch.float64, device=device)
    for i, (g, r) in enumerate(zip(grads, ref)):
        g64, r64 = g.double(), r.double()
        fr = r64 * fisher[i].double() if fisher is not None else r64
        dot = dot + (g64 * fr).sum()
        nn = nn + (r64 * fr).sum()
    ok = nn > eps
    if conflict_only:
        ok = ok & (dot < 0)
    coef = torch.where(ok, dot / torch.where(nn > 0, nn, torch.ones_like(nn)), torch.zeros_like(nn))
    coef32 = coef.to(torch.float32)
    for g, r in zip(grads, ref):
        g.copy_((g.float() - coef32 * r.float()).to(g.dtype))
    return coef32


def grad_project_basis_(grads: List[torch.Tensor], basis: List[torch.Tensor]) -> torch.Tensor:
    """Remove from g the components along m orthonormal directions; basis[i] is [m, *g_i.shape]."""
    m = basis[0].shape[0]
    c = torch.zeros(m, dtype=torch.float64, device=grads[0].device)
    for g, b in zip(grads, basis):
        c = c + b.reshape(m, -1).double() @ g.reshape(-1).double()
    c32 = c.to(torch.float32)
    for g, b in zip(grads, basis):
        upd = (c32 @ b.reshape(m, -1).float()).reshape(g.shape)
        g.copy_((g.float() - upd).to(g.dtype))
    return c32
