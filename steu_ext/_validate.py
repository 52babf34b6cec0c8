"""Input checks shared by the op wrappers: clear Python errors before any kernel launch.

Checks that need a device->host sync (value ranges, uniqueness) can be skipped by passing
``validate=False`` to an op, or globally with ``STEU_EXT_VALIDATE=0``; shape/dtype/device checks always run.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def validation_enabled(validate: Optional[bool]) -> bool:
    if validate is not None:
        return bool(validate)
    return os.environ.get("STEU_EXT_VALIDATE", "1").strip().lower() not in ("0", "false", "no", "off")


def check_tensor(x, name: str, *, ndim: Optional[int] = None, dtypes: Optional[Sequence] = None,
                 device: Optional[torch.device] = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    if dtypes is not None and x.dtype not in dtypes:
        raise TypeError(f"{name} has dtype {x.dtype}; expected one of {[str(d) for d in dtypes]}")
    if device is not None and x.device != device:
        raise ValueError(f"{name} is on {x.device} but the other inputs are on {device}")
    return x


def check_int_tensor(x, name: str, **kw) -> torch.Tensor:
    return check_tensor(x, name, dtypes=_INT_DTYPES, **kw)


def check_range(x: torch.Tensor, lo: int, hi: int, name: str, what: str) -> None:
    """Raise if any element of ``x`` lies outside ``[lo, hi)`` (one host sync)."""
    if x.numel() == 0:
        return
    mn, mx = torch.aminmax(x)
    mn, mx = int(mn), int(mx)
    if mn < lo or mx >= hi:
        bad = mn if mn < lo else mx
        raise ValueError(f"{name} contains {bad}, outside the valid range [{lo}, {hi}) of {what}")
