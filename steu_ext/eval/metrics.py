"""Metrics of class-level unlearning: per-class F1, forget/retain F1 and exact parameter-change counts
(against a :func:`~steu_ext.modeling.params.snapshot`, re-exported here)."""
from __future__ import annotations

from typing import Dict, List, Mapping, Sequence

import torch
from torch import nn

from ..modeling.params import snapshot  # noqa: F401  (re-exported: lives in the model-helper layer)


def per_class_f1(y_true: torch.Tensor, y_pred: torch.Tensor) -> List[float]:
    """Binary F1 of every class over all documents; ``y_true``/``y_pred`` are 0/1 ``[N, C]``.
    A class with no true and no predicted positives scores 0."""
    if y_true.shape != y_pred.shape or y_true.dim() != 2:
        raise ValueError(f"y_true {tuple(y_true.shape)} and y_pred {tuple(y_pred.shape)} must both be [N, C]")
    t, p = y_true.bool(), y_pred.bool()
    tp = (t & p).sum(0).double()
    fp = (~t & p).sum(0).double()
    fn = (t & ~p).sum(0).double()
    denom = 2 * tp + fp + fn
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(denom))
    return [float(x) for x in f1]


def unlearning_f1(f1: Sequence[float], target: int, label_names: Sequence[str]) -> Dict[str, object]:
    """Forget F1 (the target class), per-class retain F1 and their macro average."""
    retain = {label_names[c]: f1[c] for c in range(len(f1)) if c != target}
    return {
        "forget_f1": f1[target],
        "retain_f1": retain,
        "retain_macro_f1": sum(retain.values()) / max(len(retain), 1),
        "per_class_f1": {label_names[c]: f1[c] for c in range(len(f1))},
    }


def modified_parameters(model: nn.Module, original: Mapping[str, torch.Tensor]) -> Dict[str, object]:
    """Exact count (element by element) of parameters that differ from ``original``."""
    changed, total, per_tensor = 0, 0, {}
    for name, p in model.named_parameters():
        total += p.numel()
        n = int((p.detach() != original[name].to(p.device)).sum())
        if n:
            per_tensor[name] = n
            changed += n
    return {"modified": changed, "total": total, "percent": 100.0 * changed / max(total, 1),
            "per_tensor": per_tensor}
