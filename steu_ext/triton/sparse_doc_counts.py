"""Triton kernels for ``sparse_doc_counts``: the nonzero (class, token) document counts as sorted keys.

Each document's row is first sorted with ``torch.sort`` (a segmented sort per row; ignored positions become
a sentinel that sorts last), so the first key of each run is a distinct token of the document. Then one
program per document, in chunks of ``BLOCK`` positions (the predecessor of a key is read from memory, so
runs crossing chunk boundaries are exact):

1. ``_distinct_kernel`` counts the document's distinct tokens and adds 1 to ``doc_freq[t]`` for each
   (integer atomics: exact in any order);
2. after an exclusive scan of ``distinct x labels`` per document (torch), ``_emit_kernel`` writes the key
   ``c * V + t`` of every (class of the document, distinct token) pair at its own slot (a running prefix
   sum of the first-of-run flags gives each distinct token its position).

The pairs are finally reduced with ``torch.unique(return_counts=True)`` (sorted keys, exact counts).
Launches: 2 kernels + sort, scan and unique.
"""
import torch
import triton
import triton.language as tl

from ._utils import SENTINEL, SENTINEL_VALUE, check_contiguous, device_guard, next_pow2

#: positions a program handles at once
BLOCK = 1024


@triton.jit
def _distinct_kernel(keys_ptr, df_ptr, nd_ptr, L, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    n = tl.zeros([BLOCK], tl.int32)
    for j0 in range(0, L, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        ok = j < L
        s = tl.load(keys_ptr + b * L + j, mask=ok, other=SENTINEL)
        prev = tl.load(keys_ptr + b * L + j - 1, mask=ok & (j > 0), other=-1)
        first = (s != prev) & (s != SENTINEL)
        tl.atomic_add(df_ptr + tl.where(first, s, 0).to(tl.int64), tl.full([BLOCK], 1, tl.int64), mask=first,
                      sem="relaxed")
        n += first.to(tl.int32)
    tl.store(nd_ptr + b, tl.sum(n, axis=0).to(tl.int64))


@triton.jit
def _emit_kernel(keys_ptr, nd_ptr, pair_off_ptr, lab_ptr_ptr, lab_cls_ptr, out_ptr, L, V,
                 BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    nd = tl.load(nd_ptr + b)
    base = tl.load(pair_off_ptr + b)
    l0 = tl.load(lab_ptr_ptr + b)
    l1 = tl.load(lab_ptr_ptr + b + 1)
    V64 = tl.cast(V, tl.int64)
    carry = tl.cast(0, tl.int64)
    if l1 > l0:
        for j0 in range(0, L, BLOCK):
            j = j0 + tl.arange(0, BLOCK)
            ok = j < L
            s = tl.load(keys_ptr + b * L + j, mask=ok, other=SENTINEL)
            prev = tl.load(keys_ptr + b * L + j - 1, mask=ok & (j > 0), other=-1)
            first = (s != prev) & (s != SENTINEL)
            f = first.to(tl.int64)
            pos = carry + tl.cumsum(f, axis=0) - 1
            tok = tl.where(first, s, 0).to(tl.int64)
            for q in range(l0, l1):
                c = tl.load(lab_cls_ptr + q)
                tl.store(out_ptr + base + (q - l0) * nd + pos, c * V64 + tok, mask=first)
            carry += tl.sum(f, axis=0)


def sparse_doc_counts(ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                      num_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids int64 [B, L], mask bool [B, L], labels uint8 [B, C] (contiguous) -> (keys, values, doc_freq);
    same semantics as :func:`steu_ext.reference.sparse_doc_counts` (ids outside ``[0, V)`` at masked-in
    positions are ignored; the wrapper rejects them when validating)."""
    if ids.dtype != torch.int64 or mask.dtype != torch.bool or labels.dtype != torch.uint8:
        raise TypeError(f"steu_ext.triton.sparse_doc_counts: expected ids int64, mask bool, labels uint8; got "
                        f"{ids.dtype}, {mask.dtype}, {labels.dtype}")
    if ids.dim() != 2 or mask.shape != ids.shape or labels.dim() != 2 or labels.shape[0] != ids.shape[0]:
        raise ValueError(f"steu_ext.triton.sparse_doc_counts: bad shapes ids {tuple(ids.shape)}, mask "
                         f"{tuple(mask.shape)}, labels {tuple(labels.shape)}")
    check_contiguous("sparse_doc_counts", ids=ids, mask=mask, labels=labels)
    V = int(num_tokens)
    if not 1 <= V <= SENTINEL_VALUE:
        raise ValueError(f"steu_ext.triton.sparse_doc_counts: num_tokens must be in [1, {SENTINEL_VALUE}], "
                         f"got {V}")
    B, L = ids.shape
    device = ids.device
    doc_freq = torch.zeros(V, dtype=torch.int64, device=device)
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    if B == 0 or L == 0 or labels.shape[1] == 0:
        return empty, empty.clone(), doc_freq
    keep = mask & (ids >= 0) & (ids < V)
    keys = torch.where(keep, ids, SENTINEL_VALUE).to(torch.int32).sort(dim=1).values.contiguous()
    ld, lc = labels.nonzero(as_tuple=True)
    n_lab = torch.bincount(ld, minlength=B)
    lab_ptr = torch.zeros(B + 1, dtype=torch.int64, device=device)
    lab_ptr[1:] = n_lab.cumsum(0)
    nd = torch.empty(B, dtype=torch.int64, device=device)
    block = min(BLOCK, next_pow2(L))
    with device_guard(device):
        _distinct_kernel[(B,)](keys, doc_freq, nd, L, BLOCK=block)
        pairs = nd * n_lab
        pair_off = pairs.cumsum(0) - pairs
        total = int(pairs.sum())
        if total == 0:
            return empty, empty.clone(), doc_freq
        out = torch.empty(total, dtype=torch.int64, device=device)
        _emit_kernel[(B,)](keys, nd, pair_off, lab_ptr, lc.to(torch.int64).contiguous(), out, L, V, BLOCK=block)
    uk, cnt = torch.unique(out, return_counts=True)
    return uk, cnt.to(torch.int64), doc_freq
