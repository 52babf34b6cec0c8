"""Stopping rules for HDS: ``monitor`` objects (:class:`~steu_ext.methods.hds.StopRule`) checked after every
epoch of :func:`steu_ext.methods.hds.unlearn` or ``HDSTrainer``, whose criteria are the QA metrics of
:mod:`steu_ext.eval.qa`.

* :class:`IndistinguishableStop` ("until indistinguishable"): forget accuracy within a band of the
  never-seen level and loss-MIA AUC within a band of 0.5, on items of its own (report on disjoint ones); it
  restores the closest epoch when never met.
* :class:`ForgettingStop` / :func:`forgetting_monitor` keep the paper's "forgetting rate >= target" framing.

Also importable from :mod:`steu_ext.methods.hds` (a lazy re-export).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

from torch import nn

from ..data.qa import QAItem
from ..methods.hds import StopRule
from .qa import accuracy, mia_auc

__all__ = ["ForgettingStop", "IndistinguishableStop", "forgetting_monitor"]


class ForgettingStop(StopRule):
    """The paper's framing: stop once the forgetting rate ``(acc_before - acc) / acc_before`` on ``forget``
    reaches ``target`` (kept for comparison: it rewards over-forgetting, see :class:`IndistinguishableStop`)."""

    def __init__(self, tokenizer, forget: Sequence[QAItem], acc_before: float, target: float = 0.8, *,
                 keep_best: bool = False, **score_kw):
        super().__init__(keep_best)
        if acc_before <= 0:
            raise ValueError("acc_before must be > 0")
        if not forget:
            raise ValueError("the stopping rule needs forget items")
        self.tokenizer, self.forget, self.acc_before, self.target, self.kw = tokenizer, list(forget), \
            float(acc_before), float(target), score_kw

    def check(self, model, epoch):
        acc = accuracy(model, self.tokenizer, self.forget, **self.kw)
        rate = (self.acc_before - acc) / self.acc_before
        return rate >= self.target, (max(self.target - rate, 0.0),), {"forget_acc": acc, "forgetting_rate": rate}


class IndistinguishableStop(StopRule):
    """Stop "until indistinguishable" from a model that never saw the forget items: the accuracy on the
    rule's forget items within ``band`` of ``level`` (the never-seen level) and the loss-based MIA AUC of
    those items against never-seen items of the same domain within ``auc_band`` of 0.5 (both sides: an
    over-forgotten item, with a loss above the never-seen ones, is as recognisable as a remembered one).

    Give the rule its own items (``forget`` a subset of the unlearned items, ``never_seen`` held-out items
    of the domain) and report on disjoint ones. ``level``: the accuracy a model never taught ``forget``
    reaches on them (in the protocol: the gold standard's); None estimates it as the accuracy of ``model``
    (the original, before unlearning) on ``never_seen``, computed at construction. If the rule is never
    met, training runs to its last epoch and :meth:`finish` restores the epoch whose figures came closest
    (``keep_best``)."""

    def __init__(self, tokenizer, forget: Sequence[QAItem], never_seen: Sequence[QAItem], *,
                 level: Optional[float] = None, model: Optional[nn.Module] = None, band: float = 0.05,
                 auc_band: float = 0.05, keep_best: bool = True, long_answer: bool = False, **score_kw):
        super().__init__(keep_best)
        if not forget or not never_seen:
            raise ValueError("the stopping rule needs forget items and never-seen items of the same domain")
        if {i.id for i in forget} & {i.id for i in never_seen}:
            raise ValueError("the stopping rule's forget and never-seen items overlap")
        if not (0 < band < 1 and 0 < auc_band < 0.5):
            raise ValueError("band must be in (0, 1) and auc_band in (0, 0.5)")
        if level is None:
            if model is None:
                raise ValueError("give the never-seen level, or the original model to estimate it from the "
                                 "never-seen items")
            level = accuracy(model, tokenizer, never_seen, **score_kw)
            self.level_source = "accuracy of the original model on the rule's never-seen items"
        else:
            self.level_source = "given"
        if not 0 <= level <= 1:
            raise ValueError(f"level must be an accuracy in [0, 1], got {level!r}")
        self.tokenizer, self.forget, self.never = tokenizer, list(forget), list(never_seen)
        self.level, self.band, self.auc_band, self.long_answer, self.kw = float(level), float(band), \
            float(auc_band), bool(long_answer), score_kw

    def check(self, model, epoch):
        acc = accuracy(model, self.tokenizer, self.forget, **self.kw)
        m = mia_auc(model, self.tokenizer, self.forget, self.never, long_answer=self.long_answer, **self.kw)
        da, dm = abs(acc - self.level), abs(m["auc"] - 0.5)
        met = da <= self.band + 1e-12 and dm <= self.auc_band + 1e-12
        score = (max(da - self.band, 0.0) / self.band + max(dm - self.auc_band, 0.0) / self.auc_band,
                 da / self.band + dm / self.auc_band)
        return met, score, {"forget_acc": acc, "mia_auc": m["auc"], "member_loss": m["member_loss"],
                            "nonmember_loss": m["nonmember_loss"]}

    def record(self) -> Dict[str, Any]:
        return {**super().record(), "level": self.level, "level_source": self.level_source, "band": self.band,
                "auc_band": self.auc_band, "n_forget": len(self.forget), "n_never_seen": len(self.never)}


def forgetting_monitor(tokenizer, forget: Sequence[QAItem], acc_before: float, target: float = 0.8,
                       trace: Optional[List[float]] = None, **score_kw) -> Callable[[nn.Module, int], bool]:
    """A ``monitor`` for :func:`unlearn` that stops once the forgetting rate on ``forget`` reaches
    ``target`` (checked after every epoch; the accuracies are appended to ``trace``). Used to compare
    methods at the same forgetting (the paper's framing; see :class:`IndistinguishableStop`)."""
    rule = ForgettingStop(tokenizer, forget, acc_before, target, **score_kw)
    if trace is None:
        return rule

    def monitor(model: nn.Module, epoch: int) -> bool:
        stop = rule(model, epoch)
        trace.append(rule.trace[-1]["forget_acc"])
        return stop

    return monitor
