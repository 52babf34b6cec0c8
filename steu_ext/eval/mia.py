"""Loss-based membership inference: can an attacker tell the forget-set training documents of the
target class (members) from held-out documents of the same class (non-members) by the model's loss?

The attack scores every document by ``-loss`` on its true labels (a trained-on document usually has a
lower loss) and the figure is the ROC AUC of members vs non-members: 0.5 means indistinguishable, 1.0
that every member scores above every non-member. The AUC is the Mann-Whitney statistic with ties
counted one half, computed from average ranks in torch (no sklearn).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.encoders import Encoded, is_multi_label, predict_logits


def per_document_loss(logits: torch.Tensor, labels: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Loss of every document on its true labels, ``[N]`` float64.

    Sigmoid heads: BCE-with-logits summed over the classes; softmax heads: cross-entropy of the labelled
    class (``labels`` is the ``[N, C]`` 0/1 matrix; its argmax is the class).
    """
    if logits.dim() != 2 or logits.shape != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must both be [N, C]")
    z, y = logits.double(), labels.to(torch.float64)
    if multi_label:
        return F.binary_cross_entropy_with_logits(z, y, reduction="none").sum(1)
    return F.cross_entropy(z, y.argmax(1), reduction="none")


def auc(member_scores: torch.Tensor, nonmember_scores: torch.Tensor) -> float:
    """P(member score > non-member score) + 0.5 P(equal): the Mann-Whitney U statistic over
    ``n_members * n_nonmembers``, from average ranks (ties share their mean rank)."""
    m = torch.as_tensor(member_scores).detach().flatten().double().cpu()
    n = torch.as_tensor(nonmember_scores).detach().flatten().double().cpu()
    if m.numel() == 0 or n.numel() == 0:
        raise ValueError(f"the AUC needs at least one member and one non-member "
                         f"(got {m.numel()} and {n.numel()})")
    s = torch.cat([m, n])
    if torch.isnan(s).any():
        raise ValueError("scores contain NaN")
    order = torch.argsort(s, stable=True)
    _, inverse, counts = torch.unique_consecutive(s[order], return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()                 # 1-based rank of the last element of each tie group
    mean_rank = ends - (counts.double() - 1) / 2     # mean of ranks (end - count + 1) .. end
    ranks = torch.empty_like(s)
    ranks[order] = mean_rank[inverse]
    nm, nn_ = m.numel(), n.numel()
    u = ranks[:nm].sum() - nm * (nm + 1) / 2
    return float(u / (nm * nn_))


def mia_from_logits(member_logits: torch.Tensor, member_labels: torch.Tensor,
                    nonmember_logits: torch.Tensor, nonmember_labels: torch.Tensor,
                    multi_label: bool) -> Dict[str, float]:
    """The attack from precomputed logits: AUC plus the mean loss of each group."""
    lm = per_document_loss(member_logits, member_labels, multi_label)
    ln = per_document_loss(nonmember_logits, nonmember_labels, multi_label)
    return {"auc": auc(-lm, -ln), "members": int(lm.numel()), "nonmembers": int(ln.numel()),
            "member_loss": float(lm.mean()), "nonmember_loss": float(ln.mean())}


def membership_auc(model: nn.Module, encoded: Encoded, member_idx: Sequence[int],
                   nonmember_idx: Sequence[int], multi_label: Optional[bool] = None,
                   batch_size: int = 64) -> Dict[str, float]:
    """Run the model on members and non-members of ``encoded`` and return :func:`mia_from_logits`."""
    multi = is_multi_label(model, multi_label)
    member_idx, nonmember_idx = list(member_idx), list(nonmember_idx)
    z = predict_logits(model, encoded, member_idx + nonmember_idx, batch_size=batch_size)
    y = encoded.labels[member_idx + nonmember_idx]
    k = len(member_idx)
    return mia_from_logits(z[:k], y[:k], z[k:], y[k:], multi)
