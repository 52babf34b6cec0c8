"""Linear-probe recovery: is the forgotten class still readable from the model's representation?

An adversary who holds the (possibly unlearned) model freezes it and fits a fresh logistic regression
for "carries the target class" on features of a labelled probe split, then scores held-out documents.
If the probe's F1/AUROC stay near the original model's, the edit only changed the output behaviour and the
information is still in the representation. The gold standard (retrain without the forget set) gives the
reference: what a model that never saw the class still encodes about it (a pretrained encoder knows a lot
about a topic before any fine-tuning).

Features (all from one forward pass, eval mode, no gradients):

- ``cls``: the last layer's hidden state at position 0 ([CLS]);
- ``mean``: the attention-masked mean of the last layer's hidden states;
- ``pooled``: what the output layer reads (for BERT the pooler output; for DistilBERT the
  pre-classifier activation) — refitting the head on these is the "just retrain the head" attack.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..modeling.encoders import Encoded, output_layer
from .mia import auc

POOLINGS = ("cls", "mean", "pooled")


@dataclass
class ProbeConfig:
    pooling: str = "mean"  # the feature reported as "probe F1/AUROC" (all are computed)
    C: float = 1.0  # inverse L2 strength of the logistic regression
    max_iter: int = 2000
    max_train_docs: Optional[int] = None  # cap on the labelled probe-train documents (None: all)
    batch_size: int = 64
    seed: int = 0

    def validate(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown probe pooling {self.pooling!r}; expected one of {POOLINGS}")
        if not self.C > 0:
            raise ValueError(f"C must be > 0, got {self.C}")
        if self.max_iter < 1 or self.batch_size < 1:
            raise ValueError("max_iter and batch_size must be >= 1")
        if self.max_train_docs is not None and self.max_train_docs < 2:
            raise ValueError(f"max_train_docs must be >= 2 or None, got {self.max_train_docs}")


@torch.no_grad()
def extract_features(
    model: nn.Module,
    encoded: Encoded,
    idx: Sequence[int],
    batch_size: int = 64,
    head_modules: Optional[List[str]] = None,
) -> Dict[str, torch.Tensor]:
    """``{"cls", "mean", "pooled"}`` -> float32 ``[len(idx), D]`` features of documents ``idx`` (CPU).
    The model is run in eval mode and its training flag restored; nothing else about it changes."""
    idx = list(idx)
    if not idx:
        raise ValueError("no documents to extract features from")
    out_layer = output_layer(model, head_modules)
    pooled: List[torch.Tensor] = []
    hook = out_layer.register_forward_hook(lambda m, inp, o: pooled.append(inp[0].detach().float().cpu()))
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    cls, mean = [], []
    try:
        for _, b in encoded.batches(idx, batch_size):
            b = {k: v.to(device) for k, v in b.items()}
            o = model(**b, output_hidden_states=True)
            h = o.hidden_states[-1].float()
            m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
            cls.append(h[:, 0].cpu())
            mean.append(((h * m).sum(1) / m.sum(1).clamp_min(1)).cpu())
    finally:
        hook.remove()
        model.train(was)
    return {"cls": torch.cat(cls), "mean": torch.cat(mean), "pooled": torch.cat(pooled)}


def _binary_scores(y_true: torch.Tensor, score: torch.Tensor) -> Dict[str, float]:
    pred = score > 0.5
    t = y_true.bool()
    tp, fp, fn = int((t & pred).sum()), int((~t & pred).sum()), int((t & ~pred).sum())
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {
        "f1": f1,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "auroc": auc(score[t], score[~t]),
    }


def fit_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    C: float = 1.0,
    max_iter: int = 2000,
) -> Dict[str, float]:
    """Standardise, fit an L2 logistic regression (lbfgs, deterministic) on ``train``, score ``test``:
    F1 / precision / recall at probability 0.5 and AUROC (ties count one half)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    ytr, yte = train_y.bool(), test_y.bool()
    for name, y in (("probe-train", ytr), ("probe-test", yte)):
        if bool(y.all()) or not bool(y.any()):
            raise ValueError(
                f"the {name} documents need both target-class and other documents "
                f"(have {int(y.sum())} of {len(y)} positive)"
            )
    scaler = StandardScaler().fit(train_x.double().numpy())
    clf = LogisticRegression(C=C, max_iter=max_iter)
    clf.fit(scaler.transform(train_x.double().numpy()), ytr.numpy())
    score = torch.from_numpy(clf.predict_proba(scaler.transform(test_x.double().numpy()))[:, 1])
    return _binary_scores(yte, score)


def _cap(idx: List[int], y: torch.Tensor, n: Optional[int], seed: int) -> List[int]:
    """At most ``n`` of ``idx``, keeping the share of target-class documents (fixed seed)."""
    if n is None or len(idx) <= n:
        return idx
    rng = random.Random(seed)
    pos = [i for i, v in zip(idx, y.tolist()) if v]
    neg = [i for i, v in zip(idx, y.tolist()) if not v]
    k = min(len(pos), max(1, round(n * len(pos) / len(idx))))
    return sorted(rng.sample(pos, k) + rng.sample(neg, min(len(neg), n - k)))


def probe_train_docs(
    encoded: Encoded, train_idx: Sequence[int], target: int, config: Optional[ProbeConfig] = None
) -> List[int]:
    """The probe-train documents :func:`probe_recovery` uses: ``train_idx`` capped at
    ``config.max_train_docs`` with the target-class share kept (fixed seed)."""
    cfg = config or ProbeConfig()
    train_idx = list(train_idx)
    return _cap(train_idx, encoded.labels[train_idx, target] > 0, cfg.max_train_docs, cfg.seed)


def probe_recovery(
    model: nn.Module,
    encoded: Encoded,
    train_idx: Sequence[int],
    test_idx: Sequence[int],
    target: int,
    *,
    config: Optional[ProbeConfig] = None,
    head_modules: Optional[List[str]] = None,
    features: Optional[Dict[str, torch.Tensor]] = None,
) -> Dict[str, Any]:
    """Fit a linear probe for class ``target`` on frozen features of ``train_idx`` and score ``test_idx``.

    Returns ``f1``/``auroc`` for ``config.pooling`` and ``per_pooling`` (every feature type), the doc
    counts and seconds. ``features`` may pass precomputed :func:`extract_features` output for
    ``train_idx`` (capped) + ``test_idx`` in that order, e.g. when two models share an unchanged encoder.
    The model is never modified."""
    cfg = config or ProbeConfig()
    cfg.validate()
    C = encoded.labels.shape[1]
    if not 0 <= int(target) < C:
        raise ValueError(f"target class {target} is out of range for {C} classes")
    t0 = time.perf_counter()
    train_idx, test_idx = list(train_idx), list(test_idx)
    if not train_idx or not test_idx:
        raise ValueError("probe_recovery needs probe-train and held-out documents")
    if set(train_idx) & set(test_idx):
        raise ValueError("the probe-train and held-out documents overlap")
    y = encoded.labels[:, target] > 0
    train_idx = probe_train_docs(encoded, train_idx, target, cfg)
    n = len(train_idx)
    if features is None:
        features = extract_features(model, encoded, train_idx + test_idx, cfg.batch_size, head_modules)
    elif any(len(f) != n + len(test_idx) for f in features.values()):
        raise ValueError(f"precomputed features must have {n + len(test_idx)} rows (probe-train + held-out)")
    ytr, yte = y[train_idx], y[test_idx]
    per = {p: fit_probe(f[:n], ytr, f[n:], yte, cfg.C, cfg.max_iter) for p, f in features.items()}
    return {
        "pooling": cfg.pooling,
        "f1": per[cfg.pooling]["f1"],
        "auroc": per[cfg.pooling]["auroc"],
        "per_pooling": per,
        "train_docs": n,
        "train_positive": int(ytr.sum()),
        "test_docs": len(test_idx),
        "test_positive": int(yte.sum()),
        "config": asdict(cfg),
        "seconds": time.perf_counter() - t0,
    }
