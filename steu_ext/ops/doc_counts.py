"""Document-level token x class counts (the statistics behind PMI token selection).

For each class c and token t: the number of documents of class c that contain t at least once, plus the
document frequency n(t), the number of documents N and the documents per class N_c. Exact, int64.
"""
from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Union

import torch

from .. import _backend
from .._validate import check_int_tensor, check_range, check_tensor, validation_enabled
from ..reference import doc_counts as _ref

__all__ = ["DocCounts", "doc_counts", "PMICounter"]


class DocCounts(NamedTuple):
    counts: torch.Tensor      # int64 [C, V]: documents of class c containing token t
    doc_freq: torch.Tensor    # int64 [V]: documents containing token t, n(t)
    n_docs: int               # N
    class_docs: torch.Tensor  # int64 [C]: documents per class, N_c


def _prepare(input_ids, labels, num_tokens, num_classes, attention_mask, lengths, validate):
    """Validate and normalise inputs to the kernel contract (ids int64, mask bool, labels uint8 [B, C])."""
    if not isinstance(num_tokens, int) or isinstance(num_tokens, bool) or num_tokens < 1:
        raise ValueError(f"num_tokens (the vocabulary size) must be a positive int, got {num_tokens!r}")
    ids = check_int_tensor(input_ids, "input_ids", ndim=2)
    device = ids.device
    B, L = ids.shape
    if B == 0:
        raise ValueError("input_ids is empty: got a batch of 0 documents")
    do_check = validation_enabled(validate)

    labels = check_tensor(labels, "labels", device=device)
    if labels.dim() == 1:
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"single-label labels must be integer class ids, got dtype {labels.dtype}")
        if num_classes is None:
            raise ValueError("num_classes is required with single-label [B] labels")
        if labels.shape[0] != B:
            raise ValueError(f"labels has {labels.shape[0]} entries but input_ids has {B} documents")
        if do_check:
            check_range(labels, 0, num_classes, "labels", f"{num_classes} classes")
        lab = torch.zeros(B, num_classes, dtype=torch.uint8, device=device)
        lab.scatter_(1, labels.long().clamp(0, num_classes - 1).unsqueeze(1), 1)
    elif labels.dim() == 2:
        if labels.shape[0] != B:
            raise ValueError(f"labels has {labels.shape[0]} rows but input_ids has {B} documents")
        if num_classes is not None and labels.shape[1] != num_classes:
            raise ValueError(f"multi-label labels have {labels.shape[1]} columns, expected {num_classes}")
        if labels.shape[1] == 0:
            raise ValueError("multi-label labels have 0 classes")
        if do_check and labels.numel() and not bool(((labels == 0) | (labels == 1)).all()):
            raise ValueError("multi-label labels must be 0/1 indicators")
        lab = labels.to(torch.uint8).contiguous()
    else:
        raise ValueError(f"labels must be [B] class ids or [B, C] 0/1 indicators, got shape "
                         f"{tuple(labels.shape)}")

    if attention_mask is not None and lengths is not None:
        raise ValueError("pass either attention_mask or lengths, not both")
    if attention_mask is not None:
        m = check_tensor(attention_mask, "attention_mask", ndim=2, device=device)
        if m.shape != ids.shape:
            raise ValueError(f"attention_mask has shape {tuple(m.shape)} but input_ids has {tuple(ids.shape)}")
        mask = m if m.dtype == torch.bool else m != 0  # read-only below: no copy needed
    elif lengths is not None:
        ln = check_int_tensor(lengths, "lengths", ndim=1, device=device)
        if ln.shape[0] != B:
            raise ValueError(f"lengths has {ln.shape[0]} entries but input_ids has {B} documents")
        if do_check:
            check_range(ln, 0, L + 1, "lengths", f"lengths of rows with {L} positions")
        mask = torch.arange(L, device=device).unsqueeze(0) < ln.unsqueeze(1)
    else:
        mask = torch.ones(B, L, dtype=torch.bool, device=device)

    if do_check:
        check_range(ids[mask], 0, num_tokens, "input_ids", f"a vocabulary of {num_tokens} tokens")
    return ids.to(torch.int64).contiguous(), mask.contiguous(), lab


def doc_counts(input_ids: torch.Tensor, labels: torch.Tensor, *, num_tokens: int,
               num_classes: Optional[int] = None, attention_mask: Optional[torch.Tensor] = None,
               lengths: Optional[torch.Tensor] = None, validate: Optional[bool] = None) -> DocCounts:
    """Count, for every class and token, the documents of that class containing the token.

    Args:
        input_ids: integer token ids ``[B, L]``.
        labels: single-label class ids ``[B]`` (then ``num_classes`` is required) or multi-label 0/1
            indicators ``[B, C]`` (rows may be all zero).
        num_tokens: vocabulary size V; every id at a valid position must lie in ``[0, V)``.
        attention_mask: ``[B, L]``, nonzero = real token (any padding side); or ``lengths`` ``[B]``
            (valid prefix length). Neither: every position counts.
        validate: value-range checks (one host sync); default on, ``STEU_EXT_VALIDATE=0`` disables.
    """
    ids, mask, lab = _prepare(input_ids, labels, num_tokens, num_classes, attention_mask, lengths, validate)
    _, fn = _backend.resolve("doc_counts", ids.device)
    counts, doc_freq = fn(ids, mask, lab, num_tokens)
    return DocCounts(counts, doc_freq, ids.shape[0], lab.sum(0, dtype=torch.int64))


def _cpp_doc_counts(ids, mask, labels, num_tokens):
    return torch.ops.steu_ext.doc_counts(ids, mask, labels, num_tokens)


_backend.register_kernel("doc_counts", "reference", _ref.doc_counts)
_backend.register_kernel("doc_counts", "cpu", _cpp_doc_counts, _backend.cpu_ext_unavailable)
_backend.register_kernel("doc_counts", "cuda", _cpp_doc_counts, _backend.cuda_ext_unavailable)
_backend.register_kernel("doc_counts", "triton", _backend.lazy(".triton.doc_counts", "doc_counts"),
                         _backend.triton_unavailable)


class PMICounter:
    """Streaming accumulator of document-level counts for corpora processed in batches.

    ``update`` adds a batch, ``merge`` adds another counter (e.g. from another worker), ``state_dict`` /
    ``load_state_dict`` persist it; ``scores`` / ``top_tokens`` compute PMI-family scores (see
    :mod:`steu_ext.ops.pmi`).
    """

    def __init__(self, num_tokens: int, num_classes: int, device: Union[str, torch.device] = "cpu"):
        if not isinstance(num_tokens, int) or num_tokens < 1:
            raise ValueError(f"num_tokens must be a positive int, got {num_tokens!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_tokens, self.num_classes = num_tokens, num_classes
        self.device = torch.device(device)
        self.counts = torch.zeros(num_classes, num_tokens, dtype=torch.int64, device=self.device)
        self.doc_freq = torch.zeros(num_tokens, dtype=torch.int64, device=self.device)
        self.class_docs = torch.zeros(num_classes, dtype=torch.int64, device=self.device)
        self.n_docs = 0

    def update(self, input_ids: torch.Tensor, labels: torch.Tensor, *,
               attention_mask: Optional[torch.Tensor] = None, lengths: Optional[torch.Tensor] = None,
               validate: Optional[bool] = None) -> "PMICounter":
        r = doc_counts(input_ids, labels, num_tokens=self.num_tokens, num_classes=self.num_classes,
                       attention_mask=attention_mask, lengths=lengths, validate=validate)
        self.counts += r.counts.to(self.device)
        self.doc_freq += r.doc_freq.to(self.device)
        self.class_docs += r.class_docs.to(self.device)
        self.n_docs += r.n_docs
        return self

    def merge(self, other: "PMICounter") -> "PMICounter":
        if not isinstance(other, PMICounter):
            raise TypeError(f"can only merge another PMICounter, got {type(other).__name__}")
        if (other.num_tokens, other.num_classes) != (self.num_tokens, self.num_classes):
            raise ValueError(f"cannot merge counters of shape (V={other.num_tokens}, C={other.num_classes}) "
                             f"into (V={self.num_tokens}, C={self.num_classes})")
        self.counts += other.counts.to(self.device)
        self.doc_freq += other.doc_freq.to(self.device)
        self.class_docs += other.class_docs.to(self.device)
        self.n_docs += other.n_docs
        return self

    @property
    def result(self) -> DocCounts:
        return DocCounts(self.counts, self.doc_freq, self.n_docs, self.class_docs)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {"counts": self.counts.clone(), "doc_freq": self.doc_freq.clone(),
                "class_docs": self.class_docs.clone(),
                "n_docs": torch.tensor(self.n_docs, dtype=torch.int64)}

    def load_state_dict(self, state: Dict[str, Any]) -> "PMICounter":
        counts = state["counts"]
        if tuple(counts.shape) != (self.num_classes, self.num_tokens):
            raise ValueError(f"saved counts have shape {tuple(counts.shape)}, expected "
                             f"({self.num_classes}, {self.num_tokens})")
        self.counts = counts.to(self.device, torch.int64).clone()
        self.doc_freq = state["doc_freq"].to(self.device, torch.int64).clone()
        self.class_docs = state["class_docs"].to(self.device, torch.int64).clone()
        self.n_docs = int(state["n_docs"])
        return self

    @classmethod
    def from_state_dict(cls, state: Dict[str, Any], device: Union[str, torch.device] = "cpu") -> "PMICounter":
        c, v = state["counts"].shape
        return cls(int(v), int(c), device).load_state_dict(state)

    def scores(self, target: int, measure: str = "fwpmi", alpha: float = 0.0, min_count: int = 1):
        from .pmi import pmi_scores

        return pmi_scores(self.result, target, measure=measure, alpha=alpha, min_count=min_count)

    def top_tokens(self, target: int, k: int, exclude_ids=(), **score_kw) -> torch.Tensor:
        from .pmi import select_top_k

        return select_top_k(self.scores(target, **score_kw), k, exclude_ids=exclude_ids)
