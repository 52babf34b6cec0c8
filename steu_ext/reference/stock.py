"""Stock-PyTorch ways of doing what our ops do: the baselines every benchmark times in the same run.

These are what a user would write without steu_ext (see ../shared/docs/performance.md)."""
from __future__ import annotations

from typing import List, Optional

import torch


# ---- document-level token x class counts -------------------------------------------------------------
def counts_unique_bincount(ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, V: int):
    """Global ``unique`` of (doc, token) keys, then ``bincount``/``index_add`` per class."""
    B = ids.shape[0]
    doc = torch.arange(B, device=ids.device).unsqueeze(1).expand_as(ids)[mask]
    keys = torch.unique(doc * V + ids[mask])
    d, t = keys // V, keys % V
    df = torch.bincount(t, minlength=V)
    counts = torch.zeros(V, labels.shape[1], dtype=torch.int64, device=ids.device)
    counts.index_add_(0, t, labels.index_select(0, d).to(torch.int64))
    return counts.t(), df


def counts_sort_rows(ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, V: int):
    """Per-row sort, keep first occurrences, then ``bincount`` per class (masked positions -> V)."""
    x = torch.where(mask, ids, torch.full_like(ids, V))
    s = torch.sort(x, dim=1).values
    first = torch.ones_like(s, dtype=torch.bool)
    first[:, 1:] = s[:, 1:] != s[:, :-1]
    keep = first & (s < V)
    C = labels.shape[1]
    df = torch.bincount(s[keep], minlength=V + 1)[:V]
    counts = torch.stack([torch.bincount(s[keep & labels[:, c:c + 1].bool()], minlength=V + 1)[:V]
                          for c in range(C)])
    return counts, df


# ---- row-sparse Adam ------------------------------------------------------------------------------------
class GatherAdam:
    """Gather the K rows, step ``torch.optim.Adam`` on a [K, D] copy, ``index_copy_`` back."""

    def __init__(self, weight: torch.Tensor, rows: torch.Tensor, lr: float = 1e-3, fused: Optional[bool] = None):
        self.weight, self.rows = weight, rows
        self.buf = torch.nn.Parameter(weight.detach().index_select(0, rows).float())
        self.opt = torch.optim.Adam([self.buf], lr=lr, fused=fused)

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        self.buf.copy_(self.weight.index_select(0, self.rows))
        self.buf.grad = grad.index_select(0, self.rows).float()
        self.opt.step()
        self.weight.index_copy_(0, self.rows, self.buf.to(self.weight.dtype))


# ---- gradient projection over a list of tensors -------------------------------------------------------
def project_cat(grads: List[torch.Tensor], ref: List[torch.Tensor]) -> torch.Tensor:
    """Flatten with ``torch.cat``, dot products, conflict test, update each tensor."""
    g = torch.cat([x.reshape(-1) for x in grads])
    r = torch.cat([x.reshape(-1) for x in ref])
    dot, nn = torch.dot(g, r), torch.dot(r, r)
    coef = torch.where(dot < 0, dot / nn, torch.zeros_like(dot))
    torch._foreach_add_(grads, torch._foreach_mul(ref, -coef))
    return coef


def project_foreach(grads: List[torch.Tensor], ref: List[torch.Tensor]) -> torch.Tensor:
    """``torch._foreach`` products and sums, conflict test, foreach update."""
    dot = torch.stack([p.sum() for p in torch._foreach_mul(grads, ref)]).sum()
    nn = torch.stack([p.sum() for p in torch._foreach_mul(ref, ref)]).sum()
    coef = torch.where(dot < 0, dot / nn, torch.zeros_like(dot))
    torch._foreach_add_(grads, torch._foreach_mul(ref, -coef))
    return coef
