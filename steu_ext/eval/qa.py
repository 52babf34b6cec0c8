"""Scoring causal LMs on question answering, and the knowledge-unlearning metrics of HDS.

Every item is read as ``prompt = "Question: {question}\\nAnswer:"`` followed by a continuation
``" {option}"`` (``" {option}. {long answer}"`` for training texts with long answers). Continuation
tokens are the ones whose character offset starts at or after the end of the prompt (fast tokenizer
offset mapping), so the same split holds for WordPiece and byte-level BPE tokenizers.

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

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..data.qa import QAItem
from .mia import auc

__all__ = ["prompt_of", "continuation_of", "encode_qa", "continuation_logprobs", "choice_scores", "accuracy",
           "long_answer_nll", "sequence_nll", "forgetting_rate", "chance_corrected_forgetting",
           "preservation", "mia_auc", "evaluate_qa", "token_logprobs"]


def prompt_of(item: QAItem) -> str:
    return f"Question: {item.question}\nAnswer:"


def continuation_of(item: QAItem, option: Optional[int] = None, long_answer: bool = False) -> str:
    text = f" {item.options[item.answer if option is None else option]}"
    if long_answer and item.long_answer:
        text += f". {item.long_answer}"
    return text


def encode_qa(tokenizer, prompt: str, continuation: str, max_length: int) -> Dict[str, list]:
    """Token ids, character offsets and continuation mask of ``prompt + continuation``. Longer than
    ``max_length`` tokens: the prompt loses tokens from its start (after the first token) and a long
    continuation is cut at the end, keeping at least half of ``max_length`` for the continuation."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"QA scoring needs a fast tokenizer (offset mapping); got {type(tokenizer).__name__}")
    text = prompt + continuation
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    ids, offs = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    mask = [s >= len(prompt) and e > s for s, e in offs]
    if len(ids) > max_length:
        # keep the first token (BOS), the end of the prompt and the start of the continuation
        p = mask.index(True) if any(mask) else len(ids)
        c_keep = min(len(ids) - p, max(max_length - p, max_length // 2))
        keep = [0] + list(range(p - (max_length - c_keep - 1), p)) + list(range(p, p + c_keep))
        if max_length - c_keep - 1 <= 0:
            keep = list(range(p, p + max_length))
        ids, offs, mask = [ids[i] for i in keep], [offs[i] for i in keep], [mask[i] for i in keep]
    if not any(mask[1:]):
        raise ValueError(f"max_length={max_length} leaves no answer token after the prompt "
                         f"{prompt[:60]!r}...")
    return {"input_ids": ids, "offsets": offs, "cont_mask": mask, "text": text}


def _pad(seqs: List[List[int]], value: int) -> Tuple[torch.Tensor, torch.Tensor]:
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), value, dtype=torch.long)
    att = torch.zeros((len(seqs), L), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = torch.as_tensor(s)
        att[r, :len(s)] = 1
    return ids, att


def token_logprobs(model: nn.Module, ids: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
    """``[B, L-1]`` log p(token t+1 | tokens <= t) (fp32)."""
    logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
    return torch.gather(F.log_softmax(logits, -1), 2, ids[:, 1:, None]).squeeze(2)


@torch.no_grad()
def continuation_logprobs(model: nn.Module, tokenizer, pairs: Sequence[Tuple[str, str]], *,
                          batch_size: int = 32, max_length: int = 128) -> Tuple[torch.Tensor, torch.Tensor]:
    """Summed log-likelihood of each continuation given its prompt and its token count, ``[N]`` each."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sums, counts = [], []
    try:
        for i in range(0, len(pairs), batch_size):
            encs = [encode_qa(tokenizer, p, c, max_length) for p, c in pairs[i:i + batch_size]]
            ids, att = _pad([e["input_ids"] for e in encs], pad)
            mask = torch.zeros_like(ids, dtype=torch.bool)
            for r, e in enumerate(encs):
                mask[r, :len(e["cont_mask"])] = torch.as_tensor(e["cont_mask"])
            lp = token_logprobs(model, ids.to(device), att.to(device)).cpu().double()
            m = mask[:, 1:]
            sums.append((lp * m).sum(1))
            counts.append(m.sum(1))
    finally:
        model.train(was)
    return torch.cat(sums), torch.cat(counts)


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
