"""Pure-PyTorch document-level token x class counts: the fallback on every device and the test oracle
for the kernels (same semantics as ``steu_ext::doc_counts``)."""
from __future__ import annotations

from typing import Tuple

import torch


def doc_counts(ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
               num_tokens: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """ids int64 [B, L], mask bool [B, L], labels uint8 [B, C] 0/1 ->
    (counts int64 [C, V]: docs of class c containing t; doc_freq int64 [V]: docs containing t).
    Positions where ``mask`` is false are ignored entirely."""
    B, _ = ids.shape
    C = labels.shape[1]
    V = int(num_tokens)
    device = ids.device
    doc = torch.arange(B, device=device).unsqueeze(1).expand_as(ids)[mask]
    tok = ids[mask]
    # one key per (document, token) occurrence; unique() de-duplicates within each document
    keys = torch.unique(doc * V + tok)
    d, t = keys // V, keys % V
    doc_freq = torch.bincount(t, minlength=V)
    counts_t = torch.zeros(V, C, dtype=torch.int64, device=device)
    counts_t.index_add_(0, t, labels.index_select(0, d).to(torch.int64))
    return counts_t.t().contiguous(), doc_freq
