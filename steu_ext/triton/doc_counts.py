"""Triton kernel for ``doc_counts``: document-level token x class counts, exact, int64.

One program takes ``ROWS`` documents as a ``[ROWS, BLOCK_L]`` tile (BLOCK_L = next power of two >= L).
Ignored positions (mask false, or an id outside ``[0, V)``) become a sentinel key; each row is sorted in
registers by a bitonic network that also gives every sorted key its predecessor
(:func:`._utils.sort_rows_with_prev`), and the first key of each run is a distinct token of that document.
For each distinct token the program atomically adds 1 to ``doc_freq[t]`` and to ``counts[c, t]`` for every
class c the document carries (integer atomics: exact and independent of the order programs run in).

Rows longer than ``MAX_BLOCK_L`` are first sorted row by row with ``torch.sort`` (a segmented sort of each
document, not a global one); the kernel then walks each sorted row in chunks and compares every key with
its predecessor read from memory, which is exact across chunk boundaries.

Launches: 1 kernel (+ two zero-fills of the outputs; + where/sort/cast for rows longer than MAX_BLOCK_L).
"""
import torch
import triton
import triton.language as tl

from ._utils import SENTINEL, SENTINEL_VALUE, check_contiguous, device_guard, next_pow2, sort_rows_with_prev

#: longest row (after rounding to a power of two) sorted in registers by one program
MAX_BLOCK_L = 4096
#: target elements per program tile
TILE = 2048
#: most documents per program (short rows)
MAX_ROWS = 256


@triton.jit
def _doc_counts_kernel(keys_ptr, mask_ptr, labels_ptr, counts_ptr, df_ptr, B, L, C, V,
                       ROWS: tl.constexpr, BLOCK_L: tl.constexpr, LOG_R: tl.constexpr, LOG_L: tl.constexpr,
                       PRESORTED: tl.constexpr):
    # PRESORTED=False: keys_ptr is the raw int64 ids [B, L] and BLOCK_L >= L (one pass per tile);
    # PRESORTED=True: keys_ptr holds int32 keys [B, L], each row sorted, ignored positions = SENTINEL.
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_ok = r < B
    V64 = tl.cast(V, tl.int64)  # (an int argument equal to 1 arrives as a constexpr)
    for j0 in range(0, L, BLOCK_L):
        j = j0 + tl.arange(0, BLOCK_L)
        pos_ok = row_ok[:, None] & (j < L)[None, :]
        off = r[:, None] * L + j[None, :]
        if PRESORTED:
            s = tl.load(keys_ptr + off, mask=pos_ok, other=SENTINEL)
            prev = tl.load(keys_ptr + off - 1, mask=pos_ok & (j > 0)[None, :], other=-1)
        else:
            ids = tl.load(keys_ptr + off, mask=pos_ok, other=-1)
            keep = tl.load(mask_ptr + off, mask=pos_ok, other=0) != 0
            keep = keep & (ids >= 0) & (ids < V64)
            s = tl.where(keep, ids, SENTINEL).to(tl.int32)
            if LOG_L > 0:
                s, prev = sort_rows_with_prev(s, LOG_R, LOG_L, -1)
            else:
                prev = tl.full([ROWS, BLOCK_L], -1, tl.int32)
        first = (s != prev) & (s != SENTINEL)
        tok = tl.where(first, s, 0).to(tl.int64)
        one = tl.full([ROWS, BLOCK_L], 1, tl.int64)
        tl.atomic_add(df_ptr + tok, one, mask=first, sem="relaxed")
        for c in range(C):
            lab = tl.load(labels_ptr + r * C + c, mask=row_ok, other=0)
            if tl.max(lab, axis=0) != 0:  # skip classes no document of the tile carries
                tl.atomic_add(counts_ptr + c * V64 + tok, one, mask=first & (lab != 0)[:, None],
                              sem="relaxed")


def doc_counts(ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
               num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids int64 [B, L], mask bool [B, L], labels uint8 [B, C] (all contiguous) ->
    (counts int64 [C, V], doc_freq int64 [V]). Same semantics as :func:`steu_ext.reference.doc_counts`;
    ids outside ``[0, V)`` at masked-in positions are ignored (the wrapper rejects them when validating)."""
    if ids.dtype != torch.int64 or mask.dtype != torch.bool or labels.dtype != torch.uint8:
        raise TypeError(f"steu_ext.triton.doc_counts: expected ids int64, mask bool, labels uint8; got "
                        f"{ids.dtype}, {mask.dtype}, {labels.dtype}")
    if ids.dim() != 2 or mask.shape != ids.shape or labels.dim() != 2 or labels.shape[0] != ids.shape[0]:
        raise ValueError(f"steu_ext.triton.doc_counts: bad shapes ids {tuple(ids.shape)}, mask "
                         f"{tuple(mask.shape)}, labels {tuple(labels.shape)}")
    check_contiguous("doc_counts", ids=ids, mask=mask, labels=labels)
    V = int(num_tokens)
    if not 1 <= V <= SENTINEL_VALUE:
        raise ValueError(f"steu_ext.triton.doc_counts: num_tokens must be in [1, {SENTINEL_VALUE}], got {V}")
    B, L = ids.shape
    C = labels.shape[1]
    device = ids.device
    counts = torch.zeros(C, V, dtype=torch.int64, device=device)
    doc_freq = torch.zeros(V, dtype=torch.int64, device=device)
    if B == 0 or L == 0:
        return counts, doc_freq

    block_l = next_pow2(L)
    presorted = block_l > MAX_BLOCK_L
    if presorted:
        keep = mask & (ids >= 0) & (ids < V)
        keys = torch.where(keep, ids, SENTINEL_VALUE).to(torch.int32).sort(dim=1).values
        block_l, rows = MAX_BLOCK_L, 1
    else:
        keys = ids
        rows = min(max(1, TILE // block_l), MAX_ROWS, next_pow2(B))
    num_warps = 8 if rows * block_l >= 4096 else 4
    grid = (triton.cdiv(B, rows),)
    with device_guard(device):
        _doc_counts_kernel[grid](keys, mask.view(torch.uint8), labels, counts, doc_freq, B, L, C, V,
                                 ROWS=rows, BLOCK_L=block_l, LOG_R=rows.bit_length() - 1,
                                 LOG_L=block_l.bit_length() - 1, PRESORTED=presorted, num_warps=num_warps,
                                 enable_fp_fusion=False)
    return counts, doc_freq
