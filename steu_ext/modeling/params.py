"""Parameter snapshots: a detached copy of every parameter, taken before an edit so that what changed can
be counted exactly (:func:`steu_ext.eval.metrics.modified_parameters`) or restored; and tensors read back
from a safetensors file into memory of their own (:func:`read_tensor`), so that a resumed run computes
with them exactly as the run that wrote them did."""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn

__all__ = ["snapshot", "read_tensor", "ALIGNMENT"]

# bytes: what the CPU allocator guarantees (c10's gAlignment) and the widest vector loads assume
ALIGNMENT = 64


def snapshot(model: nn.Module) -> Dict[str, torch.Tensor]:
    """A detached copy of every parameter, for exact before/after comparisons."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def read_tensor(f, key: str) -> torch.Tensor:
    """``f.get_tensor(key)`` (``f`` a ``safetensors.safe_open`` handle) copied into freshly allocated,
    64-byte-aligned memory that nothing else shares.

    ``get_tensor`` hands out the file's bytes at the offsets the file gives: only 8- or 16-byte aligned.
    A BLAS picks its kernels (and so its summation order) by the alignment of the data it is given (MKL
    on AVX-512 CPUs looks at 64 bytes), so a class direction read back from a checkpoint and used in a
    matrix-vector product rounded differently from the aligned original: the run resumed from that
    checkpoint drifted from the uninterrupted one by an ulp per step (seen in CI; on the 2-core AMD CPU used
    for development a 4-byte shift changes such products too). Everything a resume computes with is read
    through here."""
    return f.get_tensor(key).clone(memory_format=torch.contiguous_format)
