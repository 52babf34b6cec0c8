"""Sparse document-level token x class counts: the nonzero ``(class, token)`` counts of a batch as sorted
keys ``c * V + t`` with their counts, for label sets (ICD codes: thousands) and vocabularies (LLMs: 128k+)
where a dense ``[C, V]`` array does not fit. Same numbers as :func:`~steu_ext.ops.doc_counts.doc_counts`,
exact, int64.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .. import _backend
from ..reference import sparse_doc_counts as _ref
from .doc_counts import _prepare

__all__ = ["SparseDocCounts", "sparse_doc_counts", "SparsePMICounter"]


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
    # documents per class, without the int64 copy of [B, C] that lab.sum(0, dtype=int64) makes (37 MB for
    # a block of 512 documents with 9,000 classes)
    class_docs = torch.bincount(lab.nonzero()[:, 1], minlength=C)
    return SparseDocCounts(keys, values, doc_freq, ids.shape[0], class_docs, num_tokens)


def _cpp_sparse_doc_counts(ids, mask, labels, num_tokens):
    return torch.ops.steu_ext.sparse_doc_counts(ids, mask, labels, num_tokens)


_backend.register_kernel("sparse_doc_counts", "reference", _ref.sparse_doc_counts)
_backend.register_kernel("sparse_doc_counts", "cpu", _cpp_sparse_doc_counts, _backend.cpu_ext_unavailable)
_backend.register_kernel("sparse_doc_counts", "cuda", _cpp_sparse_doc_counts, _backend.cuda_ext_unavailable)
_backend.register_kernel("sparse_doc_counts", "triton",
                         _backend.lazy(".triton.sparse_doc_counts", "sparse_doc_counts"),
                         _backend.triton_unavailable)


# ---- streaming accumulator ---------------------------------------------------------------------------
_COUNT_BITS = 20
_COUNT_LIMIT = 1 << _COUNT_BITS  # a batch's count of a pair below this packs with its key in one word
_KEY_LIMIT = 1 << (63 - _COUNT_BITS)
class _Bucket:
    """The counts of ``width`` consecutive (internal) classes as CSR: ``ptr`` [width + 1] row pointers,
    ``tok`` int32 token ids (sorted within a row), ``val`` int64 counts."""

    __slots__ = ("ptr", "tok", "val")

    def __init__(self, width: int):
        self.ptr = torch.zeros(width + 1, dtype=torch.int64)
        self.tok = torch.zeros(0, dtype=torch.int32)
        self.val = torch.zeros(0, dtype=torch.int64)


class _Rows:
    """``counts[c]`` of a :class:`SparsePMICounter` as a dense ``[V]`` row (what :func:`pmi_scores` reads),
    without forming ``[C, V]``."""

    def __init__(self, counter: "SparsePMICounter"):
        self._c = counter
        self.shape = (counter.num_classes, counter.num_tokens)

    def __getitem__(self, c):
        if isinstance(c, tuple):  # counts[c, t]
            return self._c.row(int(c[0]))[c[1]]
        return self._c.row(int(c))


class _SparseResult(NamedTuple):
    counts: _Rows
    doc_freq: torch.Tensor
    n_docs: int
    class_docs: torch.Tensor


class SparsePMICounter:
    """Streaming accumulator of document-level counts whose memory grows with the nonzero (class, token)
    pairs, not with ``C x V``: the counts for ICD-sized label sets and LLM vocabularies.

    Same interface and numbers as :class:`~steu_ext.ops.doc_counts.PMICounter` (``update``, ``merge``,
    ``scores``, ``top_tokens``, ``class_docs``, ``doc_freq``, ``n_docs``); ``counts[c]`` is a dense row,
    ``row_sparse(c)`` the row's nonzeros. Each batch's pairs (sorted keys ``c * V + t`` from
    :func:`sparse_doc_counts`) wait in a pending list, merged into per-class-range CSR buckets once they
    reach a quarter of the stored nonzeros (or ``merge_min`` pairs): the temporary memory of a merge is one
    bucket's, and every batch costs amortised O(its pairs) sorting work. Counts live on the CPU (the kernel
    runs on ``device``).
    """

    #: classes per bucket (the unit of merging)
    BUCKET = 128

    def __init__(self, num_tokens: int, num_classes: int, device: Union[str, torch.device] = "cpu",
                 merge_min: int = 1 << 18):
        if not isinstance(num_tokens, int) or isinstance(num_tokens, bool) or num_tokens < 1:
            raise ValueError(f"num_tokens must be a positive int, got {num_tokens!r}")
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if num_classes * num_tokens >= 2**63:
            raise ValueError(f"{num_classes} classes x {num_tokens} tokens do not fit int64 keys")
        self.num_tokens, self.num_classes = num_tokens, num_classes
        self.device = torch.device(device)
        self.merge_min = int(merge_min)
        self.doc_freq = torch.zeros(num_tokens, dtype=torch.int64)
        self._class_docs = torch.zeros(num_classes, dtype=torch.int64)
        self.n_docs = 0
        self._buckets: List[Optional[_Bucket]] = []
        # pending pairs: int64 words key << 20 | count (8 bytes a pair) or, when a key or count is too large
        # for that, (keys, counts) arrays
        self._pending: List[Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]] = []
        self._pending_nnz = 0
        self._nnz = 0
        self._order: Optional[torch.Tensor] = None  # class i is internal row _order[i]; None = identity

    # -- adding
    def update(self, input_ids: torch.Tensor, labels: torch.Tensor, *,
               attention_mask: Optional[torch.Tensor] = None, lengths: Optional[torch.Tensor] = None,
               validate: Optional[bool] = None) -> "SparsePMICounter":
        r = sparse_doc_counts(input_ids, labels, num_tokens=self.num_tokens, num_classes=self.num_classes,
                              attention_mask=attention_mask, lengths=lengths, validate=validate)
        self._stage(r.keys, r.values, r.doc_freq, r.class_docs, r.n_docs)
        del r  # the batch's pairs are packed now: free them before a merge needs memory
        return self._maybe_flush()

    def add_pairs(self, keys: torch.Tensor, values: torch.Tensor, doc_freq: torch.Tensor,
                  class_docs: torch.Tensor, n_docs: int) -> "SparsePMICounter":
        """Add one batch's sparse counts (keys sorted, in this counter's internal class numbering)."""
        self._stage(keys, values, doc_freq, class_docs, n_docs)
        return self._maybe_flush()

    def _stage(self, keys, values, doc_freq, class_docs, n_docs) -> None:
        if self._order is not None:
            raise RuntimeError("cannot add to a counter whose classes were reordered")
        keys, values = keys.cpu(), values.cpu()
        if keys.numel():
            if int(keys[-1]) >= self.num_classes * self.num_tokens or int(keys[0]) < 0:
                raise ValueError("pair keys out of range for this counter")
            k, v = keys.numpy(), values.numpy()
            if int(keys[-1]) < _KEY_LIMIT and 0 <= int(v.min()) and int(v.max()) < _COUNT_LIMIT:
                w = np.left_shift(k, _COUNT_BITS)
                w |= v
                self._pending.append(w)
            else:
                self._pending.append((k.copy(), v.astype(np.int64, copy=True)))
            self._pending_nnz += keys.numel()
        self.doc_freq += doc_freq.cpu()
        cd = class_docs.cpu()
        self._class_docs[: cd.shape[0]] += cd
        self.n_docs += int(n_docs)

    def _maybe_flush(self) -> "SparsePMICounter":
        if self._pending_nnz >= max(self.merge_min, self._nnz // 4):
            self.flush()
        return self

    def add_classes(self, num_classes: int) -> "SparsePMICounter":
        """Grow to ``num_classes`` (new classes get empty rows; existing keys stay valid)."""
        if num_classes > self.num_classes:
            if self._order is not None:
                raise RuntimeError("cannot add classes to a counter whose classes were reordered")
            self._class_docs = torch.cat([self._class_docs,
                                          torch.zeros(num_classes - self.num_classes, dtype=torch.int64)])
            self.num_classes = num_classes
        return self

    def flush(self) -> "SparsePMICounter":
        """Merge the pending pairs into the buckets."""
        if not self._pending:
            return self
        if all(isinstance(p, np.ndarray) for p in self._pending):
            # one key-and-count word per pair: a plain sort of int64 (timsort: it merges the already sorted
            # runs of the batches), no permutation to apply
            packed = np.concatenate(self._pending)
            self._pending, self._pending_nnz = [], 0
            packed.sort(kind="stable")
            vals = packed & (_COUNT_LIMIT - 1)
            keys = np.right_shift(packed, _COUNT_BITS, out=packed)  # in place
            del packed
        else:
            parts = [(p >> _COUNT_BITS, p & (_COUNT_LIMIT - 1)) if isinstance(p, np.ndarray) else p
                     for p in self._pending]
            self._pending, self._pending_nnz = [], 0
            keys, vals = np.concatenate([k for k, _ in parts]), np.concatenate([v for _, v in parts])
            del parts
            order = np.argsort(keys, kind="stable")
            keys, vals = keys[order], vals[order]
            del order
        return self._merge_sorted(keys, vals)

    def _merge_sorted(self, keys: np.ndarray, vals: np.ndarray) -> "SparsePMICounter":
        """Merge sorted ``keys`` (repeats allowed) with their counts into the buckets."""
        if not len(keys):
            return self
        # sum the counts of a key seen in several batches
        dup = keys[1:] == keys[:-1]
        if dup.any():
            starts = np.flatnonzero(np.concatenate(([True], ~dup)))
            del dup
            vals = np.add.reduceat(vals, starts)
            keys = keys[starts]
            del starts
        else:
            del dup
        span = self.BUCKET * self.num_tokens
        first, last = int(keys[0]) // span, int(keys[-1]) // span
        bounds = np.searchsorted(keys, np.arange(first, last + 2, dtype=np.int64) * span).tolist()
        for i, k in enumerate(range(first, last + 1)):
            if bounds[i] < bounds[i + 1]:
                self._merge_bucket(k, keys[bounds[i]: bounds[i + 1]], vals[bounds[i]: bounds[i + 1]])
        return self

    def _merge_bucket(self, k: int, keys: np.ndarray, vals: np.ndarray) -> None:
        """Add sorted unique ``keys`` with counts ``vals`` to bucket ``k``: keys already stored are added to
        in place; new ones are inserted (one pass over the bucket)."""
        while len(self._buckets) <= k:
            self._buckets.append(None)
        V, w = self.num_tokens, self.BUCKET
        b = self._buckets[k]
        if b is not None and b.tok.numel():
            ptr = b.ptr.numpy()
            old = np.repeat(np.arange(k * w, k * w + w, dtype=np.int64) * V, np.diff(ptr))
            old += b.tok.numpy()
            pos = np.searchsorted(old, keys)
            hit = pos < len(old)
            hit[hit] = old[pos[hit]] == keys[hit]
            oval = b.val.numpy()
            oval[pos[hit]] += vals[hit]
            if hit.all():
                return
            miss = ~hit
            mpos = pos[miss]
            self._nnz += int(miss.sum())
            keys = np.insert(old, mpos, keys[miss])
            del old
            vals = np.insert(oval, mpos, vals[miss])
        else:
            self._nnz += len(keys)
            keys, vals = keys.copy(), vals.astype(np.int64, copy=True)
        nb = _Bucket(w)
        rows = keys // V - k * w
        nb.ptr[1:] = torch.from_numpy(np.bincount(rows, minlength=w).cumsum())
        keys -= (rows + k * w) * V
        nb.tok = torch.from_numpy(keys.astype(np.int32))
        nb.val = torch.from_numpy(vals)
        self._buckets[k] = nb

    def merge(self, other: "SparsePMICounter") -> "SparsePMICounter":
        """Add another counter's counts (same vocabulary; classes by position)."""
        if not isinstance(other, SparsePMICounter):
            raise TypeError(f"can only merge another SparsePMICounter, got {type(other).__name__}")
        if other.num_tokens != self.num_tokens or other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge counters of shape (V={other.num_tokens}, C={other.num_classes}) "
                             f"into (V={self.num_tokens}, C={self.num_classes})")
        for c in range(other.num_classes):
            tok, val = other.row_sparse(c)
            if tok.numel():
                self._pending.append(((tok.to(torch.int64) + c * self.num_tokens).numpy(), val.numpy().copy()))
                self._pending_nnz += tok.numel()
        self.doc_freq += other.doc_freq
        self._class_docs += other.class_docs
        self.n_docs += other.n_docs
        return self.flush()

    # -- reading
    @property
    def nnz(self) -> int:
        self.flush()
        return self._nnz

    @property
    def class_docs(self) -> torch.Tensor:
        return self._class_docs if self._order is None else self._class_docs[self._order]

    def _internal(self, c: int) -> int:
        if not 0 <= c < self.num_classes:
            raise ValueError(f"class {c} is out of range for {self.num_classes} classes")
        return c if self._order is None else int(self._order[c])

    def row_sparse(self, c: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Class ``c``'s nonzero counts: (token ids int32 sorted, counts int64)."""
        self.flush()
        r = self._internal(c)
        k, j = divmod(r, self.BUCKET)
        b = self._buckets[k] if k < len(self._buckets) else None
        if b is None:
            return torch.zeros(0, dtype=torch.int32), torch.zeros(0, dtype=torch.int64)
        s, e = int(b.ptr[j]), int(b.ptr[j + 1])
        return b.tok[s:e], b.val[s:e]

    def row(self, c: int) -> torch.Tensor:
        """Class ``c``'s counts as a dense int64 ``[V]`` row."""
        tok, val = self.row_sparse(c)
        out = torch.zeros(self.num_tokens, dtype=torch.int64)
        out[tok.long()] = val
        return out

    def reorder(self, order: Sequence[int]) -> "SparsePMICounter":
        """Renumber the classes: class ``i`` becomes the current class ``order[i]`` (no data is moved)."""
        order = torch.as_tensor(list(order), dtype=torch.int64)
        if sorted(order.tolist()) != list(range(self.num_classes)):
            raise ValueError(f"order must be a permutation of the {self.num_classes} classes")
        self._order = order if self._order is None else self._order[order]
        if bool((self._order == torch.arange(self.num_classes)).all()):
            self._order = None
        return self

    @property
    def counts(self) -> _Rows:
        return _Rows(self)

    @property
    def result(self) -> _SparseResult:
        return _SparseResult(_Rows(self), self.doc_freq, self.n_docs, self.class_docs)

    def to_dense(self) -> torch.Tensor:
        """The ``[C, V]`` counts (tests, small problems)."""
        return torch.stack([self.row(c) for c in range(self.num_classes)])

    def csr(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(indptr int64 [C + 1], indices int32 [nnz], values int64 [nnz]) in class order (a copy)."""
        rows = [self.row_sparse(c) for c in range(self.num_classes)]
        indptr = torch.zeros(self.num_classes + 1, dtype=torch.int64)
        indptr[1:] = torch.tensor([t.numel() for t, _ in rows], dtype=torch.int64).cumsum(0)
        return (indptr, torch.cat([t for t, _ in rows]) if rows else torch.zeros(0, dtype=torch.int32),
                torch.cat([v for _, v in rows]) if rows else torch.zeros(0, dtype=torch.int64))

    @classmethod
    def from_csr(cls, indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor,
                 doc_freq: torch.Tensor, class_docs: torch.Tensor, n_docs: int) -> "SparsePMICounter":
        C, V = class_docs.shape[0], doc_freq.shape[0]
        out = cls(int(V), int(C))
        w = cls.BUCKET
        for k in range((C + w - 1) // w):
            c0, c1 = k * w, min(C, k * w + w)
            s, e = int(indptr[c0]), int(indptr[c1])
            if e > s:
                b = _Bucket(w)
                b.ptr[: c1 - c0 + 1] = indptr[c0: c1 + 1] - s
                b.ptr[c1 - c0 + 1:] = e - s
                b.tok = indices[s:e].to(torch.int32).clone()
                b.val = values[s:e].to(torch.int64).clone()
                while len(out._buckets) <= k:
                    out._buckets.append(None)
                out._buckets[k] = b
                out._nnz += e - s
        out.doc_freq = doc_freq.to(torch.int64).clone()
        out._class_docs = class_docs.to(torch.int64).clone()
        out.n_docs = int(n_docs)
        return out

    def nbytes(self) -> int:
        """Bytes held by the counts (buckets, pending pairs, doc_freq, class_docs)."""
        n = sum(b.ptr.numel() * 8 + b.tok.numel() * 4 + b.val.numel() * 8 for b in self._buckets if b)
        pend = sum(p.nbytes if isinstance(p, np.ndarray) else p[0].nbytes + p[1].nbytes for p in self._pending)
        return n + pend + (self.num_tokens + self.num_classes) * 8

    def scores(self, target: int, measure: str = "fwpmi", alpha: float = 0.0, min_count: int = 1):
        from .pmi import pmi_scores

        return pmi_scores(self.result, target, measure=measure, alpha=alpha, min_count=min_count)

    def top_tokens(self, target: int, k: int, exclude_ids=(), **score_kw) -> torch.Tensor:
        from .pmi import select_top_k

        return select_top_k(self.scores(target, **score_kw), k, exclude_ids=exclude_ids)
