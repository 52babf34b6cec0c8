"""Evaluation of a class-unlearned classifier on held-out documents: per-class F1, forget/retain F1, where
the forgotten class's documents go now, and (optionally) loss-based membership inference."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from ..modeling.encoders import Encoded, predict_logits, predictions
from ..modeling.labels import resolve_target
from .metrics import per_class_f1, unlearning_f1
from .mia import mia_from_logits


def forgotten_class_confusion(y_pred: torch.Tensor, target: int, label_names: Sequence[str],
                              multi_label: bool) -> Dict[str, Any]:
    """How the held-out documents of the target class are predicted: ``predicted[name]`` counts the
    documents predicted as each class (a sigmoid head may predict several classes for one document, so
    these can sum to more than ``docs``); ``no_class`` counts documents with no positive class (sigmoid
    heads; ``None`` for softmax heads, which always predict exactly one)."""
    counts = y_pred.sum(0) if len(y_pred) else torch.zeros(len(label_names), dtype=torch.int64)
    return {
        "target": label_names[target],
        "docs": len(y_pred),
        "predicted": {name: int(counts[c]) for c, name in enumerate(label_names)},
        "no_class": int((y_pred.sum(1) == 0).sum()) if multi_label else None,
    }


def evaluate(model: nn.Module, encoded: Encoded, test_idx: Sequence[int], target, label_names: Sequence[str],
             multi_label: bool, *, member_idx: Optional[Sequence[int]] = None,
             nonmember_idx: Optional[Sequence[int]] = None, batch_size: int = 64) -> Dict[str, Any]:
    """Evaluate ``model`` on documents ``test_idx`` of ``encoded`` for class-level unlearning of ``target``.

    Returns ``per_class_f1``, ``forget_f1``, ``retain_f1`` (per class), ``retain_macro_f1``,
    ``confusion`` (:func:`forgotten_class_confusion` over the held-out target-class documents), ``mia``
    (:func:`~steu_ext.eval.mia.mia_from_logits`, or ``None``) and ``mia_auc``.

    Membership inference runs when ``member_idx`` is given (the forget-set training documents);
    ``nonmember_idx`` defaults to the held-out documents of the target class in ``test_idx``.
    """
    names = list(label_names)
    if model.config.num_labels != len(names):
        raise ValueError(f"{len(names)} label names given but the model has "
                         f"{model.config.num_labels} classes")
    t = resolve_target(target, names)
    test_idx = list(test_idx)
    if not test_idx:
        raise ValueError("test_idx is empty")
    if nonmember_idx is not None and member_idx is None:
        raise ValueError("nonmember_idx given without member_idx")
    mia_idx: list = []
    if member_idx is not None:
        member_idx = list(member_idx)
        if nonmember_idx is None:
            nonmember_idx = [i for i in test_idx if encoded.labels[i, t] > 0]
        nonmember_idx = list(nonmember_idx)
        mia_idx = member_idx + nonmember_idx

    # one forward pass over every document needed (test docs and MIA docs may overlap)
    need = list(dict.fromkeys(test_idx + mia_idx))
    z_all = predict_logits(model, encoded, need, batch_size=batch_size)
    pos = {i: r for r, i in enumerate(need)}

    def logits(idx):
        return z_all[[pos[i] for i in idx]]

    y_true = encoded.labels[test_idx]
    y_pred = predictions(logits(test_idx), multi_label)
    out: Dict[str, Any] = dict(unlearning_f1(per_class_f1(y_true, y_pred), t, names))
    out["test_docs"] = len(test_idx)
    out["confusion"] = forgotten_class_confusion(y_pred[y_true[:, t] > 0], t, names, multi_label)
    out["mia"] = None
    if member_idx is not None:
        out["mia"] = mia_from_logits(logits(member_idx), encoded.labels[member_idx],
                                     logits(nonmember_idx), encoded.labels[nonmember_idx], multi_label)
    out["mia_auc"] = out["mia"]["auc"] if out["mia"] else None
    return out
