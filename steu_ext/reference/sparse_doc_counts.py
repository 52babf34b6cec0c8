"""Pure-PyTorch sparse document-level token x class counts: the fallback on every device and the test
oracle for the kernels (same semantics as ``steu_ext::sparse_doc_counts``)."""
from __future__ import annotations

from typing import Tuple

import torch


def sparse_doc_counts(ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                      num_tokens: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids int64 [B, L], mask bool [B, L], labels uint8 [B, C] 0/1 ->
    (keys int64 [nnz]: ``c * V + t``, strictly increasing; values int64 [nnz] >= 1: documents of class c
    containing t; doc_freq int64 [V]). The nonzero entries of :func:`.doc_counts.doc_counts`'s ``counts``
    in row-major order, without ever forming the dense ``[C, V]`` array."""
    B, _ = ids.shape
    V = int(num_tokens)
    device = ids.device
    doc = torch.arange(B, device=device).unsqueeze(1).expand_as(ids)[mask]
    tok = ids[mask]
    # distinct (document, token) pairs, sorted by document
    keys = torch.unique(doc * V + tok)
    d, t = keys // V, keys % V
    doc_freq = torch.bincount(t, minlength=V)
    # each pair once per class its document carries: labels as CSR (row pointers over the nonzeros)
    ld, lc = labels.nonzero(as_tuple=True)
    n_lab = torch.bincount(ld, minlength=B)
    ptr = torch.zeros(B + 1, dtype=torch.int64, device=device)
    ptr[1:] = n_lab.cumsum(0)
    rep = n_lab[d]
    total = int(rep.sum())
    if total == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty.clone(), doc_freq
    group_start = torch.repeat_interleave(rep.cumsum(0) - rep, rep)
    within = torch.arange(total, device=device) - group_start
    cls = lc[torch.repeat_interleave(ptr[d], rep) + within]
    out, counts = torch.unique(cls * V + torch.repeat_interleave(t, rep), return_counts=True)
    return out, counts.to(torch.int64), doc_freq
