"""Scoring causal LMs on question answering, and the knowledge-unlearning metrics of HDS.

Every item is read as ``prompt = "Question: {question}\\nAnswer:"`` followed by a continuation
``" {option}"`` (``" {option}. {long answer}"`` for training texts with long answers). Continuation
tokens are the ones whose character offset starts at or after the end of the prompt (fast tokenizer
offset mapping), so the same split holds for WordPiece and byte-level BPE tokenizers. The text format
(:func:`prompt_of`, :func:`continuation_of`) lives in :mod:`steu_ext.data.qa` and the token-scoring
primitives (:func:`encode_qa`, :func:`token_logprobs`, :func:`continuation_logprobs`) in
:mod:`steu_ext.modeling.causal_lm`; both are re-exported here.

* multiple choice (MedMCQA, PubMedQA's yes/no/maybe): the option with the highest summed log-likelihood;
* long answer: mean per-token negative log-likelihood of the reference long answer given the prompt;
* forgetting rate (relative) = (acc_before - acc_after) / acc_before on the forget domain; chance-corrected
  = (acc_before - acc_after) / (acc_before - chance): 1 means "down to chance", above 1 "below chance"
  (systematically wrong answers, which are themselves a trace of the forgotten knowledge); not clipped;
* preservation = acc_after / acc_before on the retain domain;
* membership inference: ROC AUC of ``-loss`` (mean token NLL of the training text) of the forget items
  (members) against never-seen items of the same domain (non-members); 0.5 = indistinguishable.
  The loss covers the whole training text (question and answer).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from ..data.qa import QAItem, continuation_of, prompt_of  # noqa: F401  (prompt_of, continuation_of: re-exported)
from ..modeling.causal_lm import continuation_logprobs, encode_qa, token_logprobs  # noqa: F401  (re-exported)
from .mia import auc

__all__ = ["prompt_of", "continuation_of", "encode_qa", "continuation_logprobs", "choice_scores", "accuracy",
           "long_answer_nll", "sequence_nll", "forgetting_rate", "chance_corrected_forgetting",
           "preservation", "mia_auc", "evaluate_qa", "token_logprobs"]


def choice_scores(model: nn.Module, tokenizer, items: Sequence[QAItem], *, batch_size: int = 32,
                  max_length: int = 128) -> List[torch.Tensor]:
    """Per item, the summed log-likelihood of every option (``[K_i]`` float64)."""
    pairs = [(prompt_of(it), f" {o}") for it in items for o in it.options]
    s, _ = continuation_logprobs(model, tokenizer, pairs, batch_size=batch_size, max_length=max_length)
    out, k = [], 0
    for it in items:
        out.append(s[k:k + len(it.options)])
        k += len(it.options)
    return out


def accuracy(model: nn.Module, tokenizer, items: Sequence[QAItem], **kw) -> float:
    """Fraction of items whose right option has the highest log-likelihood."""
    if not items:
        raise ValueError("accuracy of an empty item list")
    scores = choice_scores(model, tokenizer, items, **kw)
    return sum(int(int(s.argmax()) == it.answer) for s, it in zip(scores, items)) / len(items)


def long_answer_nll(model: nn.Module, tokenizer, items: Sequence[QAItem], **kw) -> Optional[float]:
    """Mean per-token NLL of the reference long answers given the prompts (None when no item has one)."""
    pairs = [(prompt_of(it), f" {it.long_answer}") for it in items if it.long_answer]
    if not pairs:
        return None
    s, n = continuation_logprobs(model, tokenizer, pairs, **kw)
    return float(-(s.sum() / n.sum()))


def sequence_nll(model: nn.Module, tokenizer, items: Sequence[QAItem], *, long_answer: bool = False,
                 **kw) -> torch.Tensor:
    """Per item, the mean token NLL of its whole training text (question and answer, ``[N]`` float64)."""
    pairs = [("", prompt_of(it) + continuation_of(it, long_answer=long_answer)) for it in items]
    s, n = continuation_logprobs(model, tokenizer, pairs, **kw)
    return -s / n.clamp_min(1)


def forgetting_rate(acc_before: float, acc_after: float) -> float:
    if acc_before <= 0:
        raise ValueError("forgetting rate is undefined when the accuracy before unlearning is 0")
    return (acc_before - acc_after) / acc_before


def chance_corrected_forgetting(acc_before: float, acc_after: float, chance: float) -> float:
    if acc_before <= chance:
        raise ValueError(f"chance-corrected forgetting is undefined: accuracy before ({acc_before:.3f}) "
                         f"is not above chance ({chance:.3f})")
    return (acc_before - acc_after) / (acc_before - chance)


def preservation(acc_before: float, acc_after: float) -> float:
    if acc_before <= 0:
        raise ValueError("preservation is undefined when the accuracy before unlearning is 0")
    return acc_after / acc_before


def mia_auc(model: nn.Module, tokenizer, members: Sequence[QAItem], nonmembers: Sequence[QAItem], *,
            long_answer: bool = False, **kw) -> Dict[str, float]:
    """Loss-based membership inference, forget items vs never-seen items (``long_answer``: whether the
    training text included the long answer)."""
    lm = sequence_nll(model, tokenizer, members, long_answer=long_answer, **kw)
    ln = sequence_nll(model, tokenizer, nonmembers, long_answer=long_answer, **kw)
    return {"auc": auc(-lm, -ln), "member_loss": float(lm.mean()), "nonmember_loss": float(ln.mean())}


def evaluate_qa(model: nn.Module, tokenizer, forget: Sequence[QAItem], retain: Sequence[QAItem],
                never_seen: Optional[Sequence[QAItem]] = None, *, before: Optional[Dict[str, float]] = None,
                chance: Optional[float] = None, long_answer: bool = False, **kw) -> Dict[str, float]:
    """Accuracies on both domains, long-answer NLL, MIA AUC (when ``never_seen`` is given) and, with the
    ``before`` figures of the original model, forgetting rates and preservation. ``chance`` defaults to
    1 / number of options of the forget items; ``long_answer`` says whether the training texts had the
    long answers (for the MIA loss)."""
    out: Dict[str, float] = {"forget_acc": accuracy(model, tokenizer, forget, **kw),
                             "retain_acc": accuracy(model, tokenizer, retain, **kw)}
    fl = long_answer_nll(model, tokenizer, forget, **kw)
    if fl is not None:
        out["forget_long_answer_nll"] = fl
        out["retain_long_answer_nll"] = long_answer_nll(model, tokenizer, retain, **kw)
    if never_seen:
        m = mia_auc(model, tokenizer, forget, never_seen, long_answer=long_answer, **kw)
        out.update({"mia_auc": m["auc"], "mia_member_loss": m["member_loss"],
                    "mia_nonmember_loss": m["nonmember_loss"]})
    if before is not None:
        if chance is None:
            chance = sum(1.0 / len(it.options) for it in forget) / len(forget)
        out["forgetting_rate"] = forgetting_rate(before["forget_acc"], out["forget_acc"])
        out["forgetting_rate_chance_corrected"] = chance_corrected_forgetting(before["forget_acc"],
                                                                             out["forget_acc"], chance)
        out["preservation"] = preservation(before["retain_acc"], out["retain_acc"])
    return out
