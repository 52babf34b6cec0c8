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


def _distinct_per_row(ids: torch.Tensor, mask: torch.Tensor, V: int):
    """Each document's distinct tokens: per-row sort, keep first occurrences (masked positions -> V).
    Returns (doc int64 [n], tok int64 [n], per-document distinct counts [B]); sorted by (doc, tok)."""
    x = torch.where(mask, ids, torch.full_like(ids, V))
    s = torch.sort(x, dim=1).values
    keep = s < V
    keep[:, 1:] &= s[:, 1:] != s[:, :-1]
    per_doc = keep.sum(1)
    tok = s[keep]
    doc = torch.repeat_interleave(torch.arange(ids.shape[0], device=ids.device), per_doc)
    return doc, tok, per_doc


def counts_combined_key(ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, V: int):
    """Per-row sort dedupe, then ONE ``bincount`` over the combined key ``label * V + token`` (a multi-label
    document's distinct tokens repeated once per label it carries) and one for doc_freq."""
    C = labels.shape[1]
    doc, tok, _ = _distinct_per_row(ids, mask, V)
    df = torch.bincount(tok, minlength=V)
    nl = labels.sum(1, dtype=torch.int64)
    d_lab, c_lab = labels.nonzero(as_tuple=True)          # (doc, class) pairs, sorted by doc
    rep = nl[doc]                                           # copies of each (doc, token) entry
    if bool((nl == 1).all()):                               # single-label: no repeat needed
        key = c_lab[doc] * V + tok
    else:
        start = torch.cumsum(nl, 0) - nl                    # first (doc, class) pair of each document
        tok_r = torch.repeat_interleave(tok, rep)
        ends = torch.cumsum(rep, 0)
        j = torch.arange(int(ends[-1]) if len(ends) else 0, device=ids.device) - torch.repeat_interleave(ends - rep, rep)
        key = c_lab[torch.repeat_interleave(start[doc], rep) + j] * V + tok_r
    counts = torch.bincount(key, minlength=C * V).view(C, V)
    return counts, df


def counts_sparse_mm(ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, V: int):
    """Binary doc x token sparse matrix X (torch.sparse, CSR from the per-row sort dedupe), then
    ``X^T [Y | 1]`` as one sparse x dense product: counts (Y^T X) and doc_freq (1^T X) together."""
    B, C = labels.shape
    doc, tok, per_doc = _distinct_per_row(ids, mask, V)
    dt = torch.float32 if B < 2**24 else torch.float64   # exact: every count <= B
    crow = torch.zeros(B + 1, dtype=torch.int64, device=ids.device)
    torch.cumsum(per_doc, 0, out=crow[1:])
    X = torch.sparse_csr_tensor(crow, tok, torch.ones(tok.shape[0], dtype=dt, device=ids.device), (B, V))
    Y1 = torch.cat([labels.to(dt), torch.ones(B, 1, dtype=dt, device=ids.device)], 1)
    out = (X.t() @ Y1).round().to(torch.int64).t()       # [C + 1, V]
    return out[:C].contiguous(), out[C].contiguous()


def counts_scipy(ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, V: int):
    """scipy.sparse: binary CSR X from the masked (doc, token) pairs (duplicates summed, then set to 1),
    ``Y^T X`` sparse x sparse, and doc_freq from X's column counts. CPU tensors only."""
    import numpy as np
    import scipy.sparse as sp

    B, C = labels.shape
    m = mask.numpy()
    doc = np.broadcast_to(np.arange(B)[:, None], m.shape)[m]
    X = sp.csr_matrix((np.ones(doc.shape[0], dtype=np.int64), (doc, ids.numpy()[m])), shape=(B, V))
    X.sum_duplicates()
    X.data[:] = 1
    Y = sp.csr_matrix(labels.numpy().astype(np.int64))
    counts = torch.from_numpy((Y.T @ X).toarray())
    df = torch.from_numpy(np.bincount(X.indices, minlength=V).astype(np.int64))
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
