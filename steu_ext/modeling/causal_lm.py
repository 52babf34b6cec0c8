"""Token-level scoring of causal LMs: a prompt + continuation tokenized with the continuation's mask,
per-token log-probabilities, and summed continuation log-likelihoods. The primitives under HDS's losses
(:mod:`steu_ext.methods.hds`) and the QA metrics (:mod:`steu_ext.eval.qa`).

Continuation tokens are the ones whose character offset starts at or after the end of the prompt (fast
tokenizer offset mapping), so the same split holds for WordPiece and byte-level BPE tokenizers.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["encode_qa", "token_logprobs", "continuation_logprobs", "pad_id"]


def pad_id(tokenizer) -> int:
    """The id batches are padded with: the tokenizer's pad token, or 0 for a tokenizer without one (many
    causal LMs; the padded positions are masked out)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


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
    pad = pad_id(tokenizer)
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
