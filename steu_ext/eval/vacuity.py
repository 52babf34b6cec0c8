"""Checks for vacuous unlearning results: a "forget F1 0" that says nothing because there was nothing to
forget, nothing was edited, or too few documents were seen to mean anything.

:func:`vacuity_warnings` returns one plain sentence per problem; callers put them in ``report.json``
(``"warnings": [...]``) and print them under their table (:func:`format_warnings`).
:func:`refuse_vacuous` raises ``ValueError`` where nothing can be learned at all (no forget document, or
nothing to train), before a model is touched.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

__all__ = ["MIN_FORGET_DOCS", "MIN_EVAL_DOCS", "MIN_LEARNED_F1", "vacuity_warnings", "refuse_vacuous",
           "format_warnings"]

MIN_FORGET_DOCS = 20   # fewer forget (training) documents: token statistics too thin to trust
MIN_EVAL_DOCS = 10     # fewer evaluation documents of the target: its F1 moves in steps of >= ~0.1
MIN_LEARNED_F1 = 0.5   # the model's F1 on the target before the edit below this: it barely knew the class


def refuse_vacuous(n_forget_docs: int, target_name: str = "the target", *, k: Optional[int] = None,
                   train_head: bool = True, n_retain_docs: Optional[int] = None) -> None:
    """``ValueError`` when nothing can be learned: no document carries the target, no retain document is
    left, or ``k == 0`` with the head frozen (no parameter would change)."""
    if n_forget_docs <= 0:
        raise ValueError(f"no training document carries {target_name!r}: the forget set is empty, so there is "
                         "nothing to unlearn (check --target and --label-column)")
    if n_retain_docs is not None and n_retain_docs <= 0:
        raise ValueError(f"every training document carries {target_name!r}: nothing to retain")
    if k == 0 and not train_head:
        raise ValueError("k=0 with the head frozen: no parameter would change")


def vacuity_warnings(target_name: str, *, before_forget_f1: Optional[float] = None,
                     k: Optional[int] = None, n_forget_docs: Optional[int] = None,
                     n_eval_target_docs: Optional[int] = None, before_predicted: Optional[int] = None,
                     evaluated: Optional[bool] = None,
                     min_forget_docs: int = MIN_FORGET_DOCS, min_eval_docs: int = MIN_EVAL_DOCS,
                     min_learned_f1: float = MIN_LEARNED_F1) -> List[str]:
    """One warning per reason the result may be vacuous; every argument left ``None`` is not checked.

    ``before_forget_f1``: the target's F1 before the edit; ``before_predicted``: how many evaluation
    documents the model assigned the target before the edit; ``n_forget_docs``: training documents of the
    target; ``n_eval_target_docs``: evaluation documents of the target; ``k``: embedding rows edited;
    ``evaluated=False``: the edit's effect was not measured at all."""
    out: List[str] = []
    t = repr(target_name)
    if evaluated is False:
        out.append("no evaluation data: the edit's effect on the model was not measured (pass --eval-data, or "
                   "run `steu evaluate` on held-out documents)")
    if n_eval_target_docs is not None and n_eval_target_docs == 0:
        out.append(f"no evaluation document carries {t}: its F1 is 0 by definition, before and after, and "
                   "says nothing about forgetting")
    elif before_predicted is not None and before_predicted == 0:
        out.append(f"the model never predicts {t} before the edit (F1 already 0): there is nothing to forget "
                   "and 'forget F1 0' afterwards is vacuous")
    elif before_forget_f1 is not None and before_forget_f1 == 0:
        out.append(f"the model's F1 on {t} is already 0 before the edit: 'forget F1 0' afterwards is vacuous")
    elif before_forget_f1 is not None and before_forget_f1 < min_learned_f1:
        out.append(f"the model reaches only F1 {before_forget_f1:.3f} on {t} before the edit (< "
                   f"{min_learned_f1}): it has barely learned the class, so a low forget F1 afterwards says "
                   "little; fine-tune longer")
    if n_eval_target_docs is not None and 0 < n_eval_target_docs < min_eval_docs:
        out.append(f"only {n_eval_target_docs} evaluation document(s) carry {t} (< {min_eval_docs}): its F1 "
                   "moves in large steps; evaluate on more documents")
    if k is not None and k == 0:
        out.append("k=0: no embedding row is edited, only the classifier head; the class is suppressed at the "
                   "output layer and the representation is untouched (a probe or a few fine-tuning steps "
                   "bring it back)")
    if n_forget_docs is not None and 0 < n_forget_docs < min_forget_docs:
        out.append(f"only {n_forget_docs} training document(s) carry {t} (< {min_forget_docs}): the token "
                   "statistics (PMI) and the edit rest on too few documents to generalise")
    return out


def format_warnings(warnings: Sequence[str]) -> str:
    """The lines printed under a result table (empty string for none)."""
    return "\n".join(f"WARNING: {w}" for w in warnings)
