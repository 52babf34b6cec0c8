"""Helpers shared by the Triton kernels: launcher checks, device placement, small device tables, and the
``@triton.jit`` building blocks the kernels use (loads/stores of any float dtype through a raw address,
round-to-nearest bf16 stores, an in-register row sort that also yields each element's predecessor).

Conventions: a float dtype travels into a kernel as a small integer code (:data:`DTYPE_CODES`) so one launch
can serve tensors of mixed dtypes; addresses travel as int64 in tables and are cast to typed pointers
in-kernel (multi-tensor apply without concatenation).
"""
import contextlib
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

import torch
import triton
import triton.language as tl

#: float dtype -> code understood by :func:`load_f32` / :func:`store_f32`
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}

#: int32 key that sorts after every valid token id (ids must be < SENTINEL); small enough that the sum of
#: two keys fits in int32 (see :func:`sort_rows_with_prev`)
SENTINEL_VALUE = 2**30 - 1
SENTINEL = tl.constexpr(SENTINEL_VALUE)


def check_contiguous(op: str, **tensors: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the first non-contiguous tensor (the launchers never copy)."""
    for name, t in tensors.items():
        if t is not None and not t.is_contiguous():
            raise ValueError(f"steu_ext.triton.{op}: {name} must be contiguous "
                             f"(got shape {tuple(t.shape)}, stride {t.stride()})")


def check_same_device(op: str, device: torch.device, **tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        if t is not None and t.device != device:
            raise ValueError(f"steu_ext.triton.{op}: {name} is on {t.device}, expected {device}")


def device_guard(device: torch.device):
    """Make ``device`` current so Triton compiles for it and launches on its current stream."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(1, int(n)))


def ln_or_neg_inf(x: float) -> float:
    """``log(x)`` with ``log(0) = -inf`` (so ``exp(t * ln_or_neg_inf(0)) == 0`` for ``t > 0``)."""
    return math.log(x) if x > 0 else float("-inf")


def int64_table(rows: Iterable[Sequence[int]], device: torch.device) -> torch.Tensor:
    """A flat int64 tensor on ``device`` from host integers, without a host sync: on CUDA the values are
    staged in pinned memory and copied asynchronously on the current stream."""
    flat: list[int] = [int(v) for row in rows for v in row]
    host = torch.tensor(flat, dtype=torch.int64)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def chunk_table(cache: "OrderedDict", device: torch.device, entries: tuple, *, numel_col: int, chunk: int,
                extra: Callable[[tuple], tuple] = lambda entries: (), cache_size: int = 16) -> tuple:
    """Tables of a multi-tensor launch, cached (LRU) by ``(device, entries)``, so a training loop that reuses
    its buffers builds them once: ``(table, chunk map, n_chunks, *extra(entries))``. Each entry is a tuple
    of ints (addresses, length, dtype codes) whose ``numel_col``-th item is the tensor's length; its table
    row is the entry with the tensor's first chunk index inserted after the length. The chunk map gives,
    for every ``chunk``-element chunk of every tensor in order, the tensor's row."""
    key = (str(device), entries)
    hit = cache.get(key)
    if hit is not None:
        cache.move_to_end(key)
        return hit
    rows, chunk_map, first = [], [], 0
    for i, e in enumerate(entries):
        rows.append(e[:numel_col + 1] + (first,) + e[numel_col + 1:])
        nc = triton.cdiv(e[numel_col], chunk)
        chunk_map.extend([i] * nc)
        first += nc
    flat = int64_table(rows + [chunk_map], device)
    ncol = len(rows[0]) if rows else 0
    out = (flat[:ncol * len(rows)], flat[ncol * len(rows):], first, *extra(entries))
    cache[key] = out
    if len(cache) > cache_size:
        cache.popitem(last=False)
    return out


def shared_code(codes) -> int:
    """The dtype code every tensor shares (passed to a kernel as a constexpr), or -1 when they differ."""
    codes = set(codes)
    return codes.pop() if len(codes) == 1 else -1


def all_aligned(addresses: Iterable[int], numels: Iterable[int], align_bytes: int = 16,
                align_elems: int = 16) -> bool:
    """Whether every address is ``align_bytes``-aligned and every length a multiple of ``align_elems``
    (lets a kernel promise vector-friendly alignment to the compiler)."""
    return all(a % align_bytes == 0 for a in addresses) and all(n % align_elems == 0 for n in numels)


# ----------------------------------------------------------------------------------------- jit helpers
@triton.jit
def f32_to_bf16(x):
    """fp32 -> bf16 rounded to nearest even (NaN stays NaN), as torch does. Spelled out in integer ops
    because the Triton interpreter's own fp32 -> bf16 cast truncates; the GPU result is the same as
    ``x.to(tl.bfloat16)``."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
    out = tl.where(is_nan, (bits >> 16) | 0x40, rounded >> 16)
    return out.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _typed(addr, dtype: tl.constexpr, ALIGNED: tl.constexpr):
    ptr = addr.to(tl.pointer_type(dtype))
    if ALIGNED:  # the caller checked 16-byte alignment: allow vector loads/stores
        ptr = tl.multiple_of(ptr, 16)
    return ptr


@triton.jit
def load_f32(addr, idx, mask, code, ALIGNED: tl.constexpr):
    """Elements ``idx`` (masked) of the array at int64 address ``addr`` with dtype code ``code``, as fp32."""
    if code == 0:
        x = tl.load(_typed(addr, tl.float32, ALIGNED) + idx, mask=mask, other=0.0)
    elif code == 1:
        x = tl.load(_typed(addr, tl.float16, ALIGNED) + idx, mask=mask, other=0.0).to(tl.float32)
    else:
        x = tl.load(_typed(addr, tl.bfloat16, ALIGNED) + idx, mask=mask, other=0.0).to(tl.float32)
    return x


@triton.jit
def store_f32(addr, idx, val, mask, code, ALIGNED: tl.constexpr):
    """Store fp32 ``val`` (rounded to nearest-even) into the array at ``addr`` with dtype code ``code``."""
    if code == 0:
        tl.store(_typed(addr, tl.float32, ALIGNED) + idx, val, mask=mask)
    elif code == 1:
        tl.store(_typed(addr, tl.float16, ALIGNED) + idx, val.to(tl.float16), mask=mask)
    else:
        tl.store(_typed(addr, tl.bfloat16, ALIGNED) + idx, f32_to_bf16(val), mask=mask)


@triton.jit
def _bit(D: tl.constexpr, k: tl.constexpr):
    """0/1 along the axis of bit ``k`` of a ``[2] * D`` hypercube (axis 0 = most significant bit)."""
    return tl.reshape(tl.arange(0, 2), [1] * (D - k - 1) + [2] + [1] * k)


@triton.jit
def _compare_and_swap(h, flip, k: tl.constexpr, D: tl.constexpr):
    # partner along bit k = pair sum - self (int32 keys < 2**30: the sum cannot overflow)
    y = tl.sum(h, axis=D - 1 - k, keep_dims=True) - h
    hi = (_bit(D, k) ^ flip) != 0
    return tl.where(hi, tl.maximum(h, y), tl.minimum(h, y))


@triton.jit
def sort_rows_with_prev(x, LOG_R: tl.constexpr, LOG_N: tl.constexpr, NONE: tl.constexpr):
    """Sort each row of int32 ``x`` ``[2**LOG_R, 2**LOG_N]`` (values in ``[0, 2**30)``) ascending and return
    ``(sorted, prev)`` where ``prev[r, j] = sorted[r, j - 1]`` (``NONE`` at ``j = 0``).

    A bitonic network on the hypercube view of the tile, like ``tl.sort``, but built from sum/max reductions
    over size-2 axes (which the interpreter also runs vectorised); ``prev`` is the exclusive prefix max of
    the sorted row, gathered bit by bit (the max of the left sibling block at every set bit of j)."""
    D: tl.constexpr = LOG_R + LOG_N
    h = tl.reshape(x, [2] * D)
    for stage in tl.static_range(1, LOG_N + 1):
        if stage < LOG_N:
            flip = _bit(D, stage)  # alternate directions to build bitonic sequences
        else:
            flip = 0
        for i in tl.static_range(stage):
            h = _compare_and_swap(h, flip, stage - 1 - i, D)
    prev = tl.full([2] * D, NONE, h.dtype)
    blk = h  # max of the aligned block of size 2**k around each element
    for k in tl.static_range(LOG_N):
        right = _bit(D, k) != 0
        left_max = tl.max(tl.where(right, NONE, blk), axis=D - 1 - k, keep_dims=True)
        prev = tl.maximum(prev, tl.where(right, left_max, NONE))
        blk = tl.max(blk, axis=D - 1 - k, keep_dims=True)
    return tl.reshape(h, x.shape), tl.reshape(prev, x.shape)
