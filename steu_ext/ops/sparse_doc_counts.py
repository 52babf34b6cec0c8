"""Sparse document-level token x class counts: the nonzero ``(class, token)`` counts of a batch as sorted
keys ``c * V + t`` with their counts, for label sets (ICD codes: thousands) and vocabularies (LLMs: 128k+)
where a dense ``[C, V]`` array does not fit. Same numbers as :func:`~steu_ext.ops.doc_counts.doc_counts`,
exact, int64.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .. import _backend
from ..reference import sparse_doc_counts as _ref
from .doc_counts import _prepare

__all__ = ["SparseDocCounts", "sparse_doc_counts"]


class SparseDocCounts(NamedTuple):
    keys: torch.Tensor        # int64 [nnz], strictly increasing: c * num_tokens + t
    values: torch.Tensor      # int64 [nnz] >= 1: documents of class c containing token t
    doc_freq: torch.Tensor    # int64 [V]: documents containing token t, n(t)
    n_docs: int               # N
    class_docs: torch.Tensor  # int64 [C]: documents per class, N_c
    num_tokens: int           # V

    def to_dense(self) -> torch.Tensor:
        """The ``[C, V]`` counts (for tests and small problems)."""
        C = self.class_docs.shape[0]
        out = torch.zeros(C * self.num_tokens, dtype=torch.int64, device=self.keys.device)
        out[self.keys] = self.values
        return out.view(C, self.num_tokens)


def sparse_doc_counts(input_ids: torch.Tensor, labels: torch.Tensor, *, num_tokens: int,
                      num_classes: Optional[int] = None, attention_mask: Optional[torch.Tensor] = None,
                      lengths: Optional[torch.Tensor] = None, validate: Optional[bool] = None) -> SparseDocCounts:
    """Like :func:`~steu_ext.ops.doc_counts.doc_counts` (same arguments), but the class x token counts come
    back as their nonzeros: ``keys = c * num_tokens + t`` (sorted) and ``values``. Memory grows with the
    number of distinct (class, token) pairs in the batch, never with ``C x V``."""
    ids, mask, lab = _prepare(input_ids, labels, num_tokens, num_classes, attention_mask, lengths, validate)
    C = lab.shape[1]
    if C * num_tokens >= 2**63:
        raise ValueError(f"{C} classes x {num_tokens} tokens do not fit int64 keys")
    _, fn = _backend.resolve("sparse_doc_counts", ids.device)
    keys, values, doc_freq = fn(ids, mask, lab, num_tokens)
    return SparseDocCounts(keys, values, doc_freq, ids.shape[0], lab.sum(0, dtype=torch.int64), num_tokens)


def _cpp_sparse_doc_counts(ids, mask, labels, num_tokens):
    return torch.ops.steu_ext.sparse_doc_counts(ids, mask, labels, num_tokens)


_backend.register_kernel("sparse_doc_counts", "reference", _ref.sparse_doc_counts)
_backend.register_kernel("sparse_doc_counts", "cpu", _cpp_sparse_doc_counts, _backend.cpu_ext_unavailable)
_backend.register_kernel("sparse_doc_counts", "cuda", _cpp_sparse_doc_counts, _backend.cuda_ext_unavailable)
_backend.register_kernel("sparse_doc_counts", "triton",
                         _backend.lazy(".triton.sparse_doc_counts", "sparse_doc_counts"),
                         _backend.triton_unavailable)
