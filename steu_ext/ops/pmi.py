"""PMI-family token scores for a target class from document-level counts, and top-k selection.

With N documents, N_f documents of the target class, n(t) documents containing t and n_f(t) target
documents containing t, and add-alpha smoothing of the two Bernoulli estimates
``P(t|f) = (n_f(t)+a) / (N_f+2a)``, ``P(t) = (n(t)+a) / (N+2a)``, ``P(t,f) = (n_f(t)+a) / (N+2a)``:

* ``pmi``   = log2(P(t|f) / P(t))
* ``ppmi``  = max(pmi, 0)
* ``npmi``  = pmi / -log2 P(t,f)       (0 where P(t,f) = 1)
* ``fwpmi`` = pmi * ln(1 + n_f(t))     (frequency-weighted PMI, STEU's default)

Tokens that can never matter for the class get ``-inf``: n_f(t) = 0, or n(t) < ``min_count``.
"""
from __future__ import annotations

import logging
import math
from typing import Iterable, Optional

import torch

log = logging.getLogger("steu_ext")

MEASURES = ("fwpmi", "pmi", "ppmi", "npmi")


def pmi_scores(counts, target: int, *, measure: str = "fwpmi", alpha: float = 0.0,
               min_count: int = 1) -> torch.Tensor:
    """Scores (float64 ``[V]``) of every token for class ``target``; ``counts`` is a
    :class:`~steu_ext.ops.doc_counts.DocCounts` (or a :class:`PMICounter`'s ``result``)."""
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; expected one of {MEASURES}")
    if not (isinstance(alpha, (int, float)) and alpha >= 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    if not isinstance(min_count, int) or min_count < 0:
        raise ValueError(f"min_count must be an int >= 0, got {min_count!r}")
    C = counts.counts.shape[0]
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < C:
        raise ValueError(f"target class {target!r} is out of range for {C} classes")
    N = float(counts.n_docs)
    Nf = float(counts.class_docs[target])
    if Nf == 0:
        raise ValueError(f"target class {target} has no documents in the counts")
    nf = counts.counts[target].double()
    n = counts.doc_freq.double()
    p_t_f = (nf + alpha) / (Nf + 2 * alpha)
    p_t = (n + alpha) / (N + 2 * alpha)
    with torch.no_grad():
        pmi = torch.log2(p_t_f) - torch.log2(p_t)
        if measure == "pmi":
            s = pmi
        elif measure == "ppmi":
            s = pmi.clamp_min(0.0)
        elif measure == "npmi":
            h = -torch.log2((nf + alpha) / (N + 2 * alpha))
            s = torch.where(h > 0, pmi / torch.where(h > 0, h, torch.ones_like(h)), torch.zeros_like(h))
        else:
            s = pmi * torch.log1p(nf)
        bad = (nf == 0) | (n < min_count) | (n == 0)
        return s.masked_fill(bad, float("-inf"))


def select_top_k(scores: torch.Tensor, k: int, exclude_ids: Optional[Iterable[int]] = ()) -> torch.Tensor:
    """Ids (int64) of the ``k`` best-scoring tokens, best first, ties broken by lower id.

    ``exclude_ids`` (e.g. the tokenizer's special ids) are never selected. Tokens scored ``-inf``/NaN are
    not eligible: if fewer than ``k`` are, all eligible ones are returned (with a warning in the log).
    """
    if not isinstance(scores, torch.Tensor) or scores.dim() != 1:
        raise ValueError("scores must be a 1-D tensor over the vocabulary")
    V = scores.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")
    if k > V:
        raise ValueError(f"k={k} is larger than the vocabulary ({V} tokens)")
    s = scores.clone()
    if exclude_ids is None:
        exclude_ids = ()
    if isinstance(exclude_ids, torch.Tensor):
        ex = exclude_ids.reshape(-1).to(device=s.device, dtype=torch.int64)
    else:
        ex = torch.as_tensor(list(exclude_ids), dtype=torch.int64, device=s.device)
    if ex.numel():
        if int(ex.min()) < 0 or int(ex.max()) >= V:
            raise ValueError(f"exclude_ids must lie in [0, {V})")
        s[ex] = float("-inf")
    s = s.masked_fill(torch.isnan(s), float("-inf"))
    order = torch.sort(s, descending=True, stable=True).indices
    eligible = int((s > float("-inf")).sum())
    if eligible < k:
        log.warning("only %d tokens are eligible for selection (asked for k=%d)", eligible, k)
    return order[: min(k, eligible)].clone()
