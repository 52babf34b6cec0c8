"""Relearning attack: how fast does a forgotten class come back under a small, ordinary fine-tune?

The adversary takes a copy of the (unlearned) model and fine-tunes it on a few dozen labelled documents of
the forgotten class mixed with as many documents of the other classes (so it is a fair supervised
fine-tune, not a push towards one label), for a fixed budget of optimizer steps. Every ``eval_every``
steps it measures the target class's F1 on held-out documents. Reported: the number of steps until that
F1 reaches half of the *original* model's F1 (``None`` when it does not within the budget) and the F1 after
the budget. An edit that removed the information should relearn no faster than the gold standard (a model
retrained without the class), which starts from scratch on those few documents.

The model passed in is never modified (the attack trains a deep copy).
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.encoders import Encoded, find_head, predict_logits, predictions
from .metrics import per_class_f1


@dataclass
class RelearnConfig:
    target_docs: int = 32  # labelled documents of the forgotten class the attacker holds
    other_docs: int = 32  # documents of the other classes mixed in
    steps: int = 24  # optimizer-step budget
    batch_size: int = 16
    eval_every: int = 2  # measure target F1 every this many steps (and after the last)
    params: str = "all"  # "all": an ordinary full fine-tune; "head": the head only
    lr: float = 5e-5  # encoder + embeddings (params="all")
    head_lr: float = 1e-2  # classification head
    max_eval_docs: Optional[int] = 200  # held-out documents scored at each evaluation (None: all)
    seed: int = 0

    def validate(self) -> None:
        if self.params not in ("all", "head"):
            raise ValueError(f"params must be 'all' or 'head', got {self.params!r}")
        for name in ("target_docs", "steps", "batch_size", "eval_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.other_docs, int) or self.other_docs < 0:
            raise ValueError(f"other_docs must be an int >= 0, got {self.other_docs!r}")
        if not (self.lr > 0 and self.head_lr > 0):
            raise ValueError("lr and head_lr must be > 0")
        if self.max_eval_docs is not None and self.max_eval_docs < 2:
            raise ValueError(f"max_eval_docs must be >= 2 or None, got {self.max_eval_docs}")


def target_f1(
    model: nn.Module,
    encoded: Encoded,
    idx: Sequence[int],
    target: int,
    multi_label: bool,
    batch_size: int = 64,
) -> float:
    """Held-out F1 of class ``target`` on documents ``idx`` (eval mode, no gradients)."""
    idx = list(idx)
    z = predict_logits(model, encoded, idx, batch_size=batch_size)
    return per_class_f1(encoded.labels[idx], predictions(z, multi_label))[target]


def relearn_docs(
    encoded: Encoded,
    pool_idx: Sequence[int],
    eval_idx: Sequence[int],
    target: int,
    config: Optional[RelearnConfig] = None,
) -> Tuple[List[int], List[int]]:
    """``(attack_idx, eval_idx)``: the attacker's labelled documents drawn from ``pool_idx`` (up to
    ``target_docs`` of the target class and ``other_docs`` others) and the held-out documents scored
    (``eval_idx`` capped at ``max_eval_docs``, the target-class share kept). Fixed seed."""
    cfg = config or RelearnConfig()
    cfg.validate()
    pool_idx, eval_idx = list(pool_idx), list(eval_idx)
    if set(pool_idx) & set(eval_idx):
        raise ValueError("the attacker's documents and the held-out documents overlap")
    y = encoded.labels[:, target] > 0
    rng = random.Random(cfg.seed)
    pos = [i for i in pool_idx if y[i]]
    neg = [i for i in pool_idx if not y[i]]
    if not pos:
        raise ValueError(
            "the relearning attack needs labelled documents of the target class; the pool has none"
        )
    attack = sorted(
        rng.sample(pos, min(cfg.target_docs, len(pos))) + rng.sample(neg, min(cfg.other_docs, len(neg)))
    )
    epos = [i for i in eval_idx if y[i]]
    eneg = [i for i in eval_idx if not y[i]]
    if not epos:
        raise ValueError("the held-out documents contain no document of the target class")
    n = cfg.max_eval_docs
    if n is not None and len(eval_idx) > n:
        k = min(len(epos), max(1, round(n * len(epos) / len(eval_idx))))
        eval_idx = sorted(rng.sample(epos, k) + rng.sample(eneg, min(len(eneg), n - k)))
    return attack, eval_idx


def _loss(z: torch.Tensor, y: torch.Tensor, multi: bool) -> torch.Tensor:
    if multi:
        return F.binary_cross_entropy_with_logits(z, y)
    return F.cross_entropy(z, y.argmax(1))


def relearn_attack(
    model: nn.Module,
    encoded: Encoded,
    pool_idx: Sequence[int],
    eval_idx: Sequence[int],
    target: int,
    *,
    multi_label: bool,
    reference_f1: Optional[float] = None,
    config: Optional[RelearnConfig] = None,
    head_modules: Optional[List[str]] = None,
) -> Dict[str, Any]:
    """Fine-tune a copy of ``model`` on :func:`relearn_docs` (``pool_idx`` = the attacker's labelled pool,
    ``eval_idx`` = held-out documents) and track the target class's F1.

    ``reference_f1`` is the original model's target F1 on the same evaluation documents; ``None`` uses
    this model's own F1 before the attack (i.e. ``model`` *is* the original). Returns ``steps_to_half``
    (first evaluated step with F1 >= reference/2; 0 if it already is; ``None`` if not within the budget),
    ``f1_start``, ``f1_after`` (after the budget), ``curve`` and the settings. Training runs in eval mode
    (no dropout), so a fixed seed gives the same result."""
    cfg = config or RelearnConfig()
    cfg.validate()
    t0 = time.perf_counter()
    C = encoded.labels.shape[1]
    if not 0 <= int(target) < C:
        raise ValueError(f"target class {target} is out of range for {C} classes")
    attack, evald = relearn_docs(encoded, pool_idx, eval_idx, target, cfg)
    m = copy.deepcopy(model)
    m.eval()
    head = find_head(m, head_modules)
    for p in m.parameters():
        p.requires_grad_(False)
    groups = [{"params": list(head.values()), "lr": cfg.head_lr}]
    if cfg.params == "all":
        head_ids = {id(p) for p in head.values()}
        groups.append({"params": [p for p in m.parameters() if id(p) not in head_ids], "lr": cfg.lr})
    for g in groups:
        for p in g["params"]:
            p.requires_grad_(True)
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    device = next(m.parameters()).device

    f1_start = target_f1(m, encoded, evald, target, multi_label)
    ref = f1_start if reference_f1 is None else float(reference_f1)
    half = 0.5 * ref
    curve = [{"step": 0, "f1": f1_start}]
    rng = random.Random(cfg.seed)
    order: List[int] = []
    losses = []
    for step in range(1, cfg.steps + 1):
        if len(order) < cfg.batch_size:
            more = attack[:]
            rng.shuffle(more)
            order += more
        batch, order = order[: cfg.batch_size], order[cfg.batch_size :]
        b = encoded.batch(batch)
        z = m(**{k: v.to(device) for k, v in b.items()}).logits.float()
        loss = _loss(z, encoded.labels[batch].to(device), multi_label)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % cfg.eval_every == 0 or step == cfg.steps:
            curve.append({"step": step, "f1": target_f1(m, encoded, evald, target, multi_label)})
    del m, opt
    reached = [c["step"] for c in curve if c["f1"] >= half and ref > 0]
    return {
        "steps_to_half": reached[0] if reached else None,
        "f1_start": f1_start,
        "f1_after": curve[-1]["f1"],
        "reference_f1": ref,
        "half": half,
        "budget": cfg.steps,
        "recovered_fraction": curve[-1]["f1"] / ref if ref > 0 else None,
        "curve": curve,
        "losses": losses,
        "attack_docs": {
            "target": sum(1 for i in attack if encoded.labels[i, target] > 0),
            "other": sum(1 for i in attack if encoded.labels[i, target] == 0),
        },
        "eval_docs": len(evald),
        "config": asdict(cfg),
        "seconds": time.perf_counter() - t0,
    }
