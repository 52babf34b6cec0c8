"""One dispatch point: which implementation (reference / C++ CPU / CUDA / Triton) runs an op on a device.

Choice, per op and device:
  * ``STEU_EXT_BACKEND`` (env) or :func:`set_backend` forces a backend, for every op (``"reference"``)
    or per op (``"doc_counts=cpu,row_adam=reference"``). A forced backend that cannot run raises with
    the reason.
  * otherwise the fastest available backend for the device is taken: ``cpu`` (C++) on CPU tensors,
    ``cuda`` then ``triton`` on CUDA tensors; anything that cannot load falls back quietly to the
    pure-PyTorch ``reference`` (the reason is logged at debug level).
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Tuple, Union

import torch

log = logging.getLogger("steu_ext")

BACKENDS = ("reference", "cpu", "cuda", "triton")
_AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}


@dataclass(frozen=True)
class _Kernel:
    fn: Callable
    # returns None when usable on that device, else the reason it is not
    unavailable: Callable[[torch.device], Optional[str]]


_KERNELS: Dict[Tuple[str, str], _Kernel] = {}
_forced: Optional[Dict[str, str]] = None  # set by set_backend(); None = use the environment


def register_kernel(op: str, backend: str, fn: Callable,
                    unavailable: Optional[Callable[[torch.device], Optional[str]]] = None) -> None:
    """Register ``fn`` as the ``backend`` implementation of ``op``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    _KERNELS[(op, backend)] = _Kernel(fn, unavailable or (lambda device: None))


def _parse(spec: str) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        op, sep, name = part.rpartition("=")
        name = name.strip()
        if name not in BACKENDS:
            raise ValueError(f"STEU_EXT_BACKEND: unknown backend {name!r} in {spec!r}; "
                             f"expected one of {BACKENDS}")
        out[op.strip() if sep else "*"] = name
    return out


def _requested(op: str) -> Optional[str]:
    spec = _forced if _forced is not None else _parse(os.environ.get("STEU_EXT_BACKEND", ""))
    return spec.get(op, spec.get("*"))


def set_backend(spec: Union[None, str, Dict[str, str]]) -> None:
    """Force backends from Python (same syntax as ``STEU_EXT_BACKEND``); ``None`` returns to the env."""
    global _forced
    if spec is None:
        _forced = None
    elif isinstance(spec, str):
        _forced = _parse(spec)
    else:
        _forced = _parse(",".join(f"{k}={v}" for k, v in spec.items()))


@contextlib.contextmanager
def use_backend(spec: Union[str, Dict[str, str]]) -> Iterator[None]:
    """Context manager form of :func:`set_backend`."""
    global _forced
    saved = _forced
    set_backend(spec)
    try:
        yield
    finally:
        _forced = saved


def available_backends(op: str, device: Union[str, torch.device]) -> Dict[str, Optional[str]]:
    """``{backend: None if usable else reason}`` for every backend registered for ``op``."""
    device = torch.device(device)
    return {b: _KERNELS[(op, b)].unavailable(device) for b in BACKENDS if (op, b) in _KERNELS}


def resolve(op: str, device: Union[str, torch.device]) -> Tuple[str, Callable]:
    """The backend name and function that run ``op`` on ``device``.

    Under ``torch.compile`` the choice is made once, outside the traced code (the availability checks take
    locks, may build the extension and register the fake kernels, none of which Dynamo can trace), and
    baked into the graph: changing ``STEU_EXT_BACKEND`` afterwards needs ``torch._dynamo.reset()``."""
    if torch.compiler.is_compiling():
        name = _resolve_name_constant(op, str(torch.device(device)))
        return name, _KERNELS[(op, name)].fn
    return _resolve(op, device)


@torch._dynamo.assume_constant_result
def _resolve_name_constant(op: str, device: str) -> str:
    """:func:`resolve`'s backend name, run eagerly when Dynamo meets it (its result is a graph constant)."""
    return _resolve(op, device)[0]


def _resolve(op: str, device: Union[str, torch.device]) -> Tuple[str, Callable]:
    device = torch.device(device)
    want = _requested(op)
    if want is not None:
        k = _KERNELS.get((op, want))
        if k is None:
            raise RuntimeError(f"steu_ext: backend {want!r} was requested for {op} "
                               f"but has no implementation of it (have: "
                               f"{[b for b in BACKENDS if (op, b) in _KERNELS]})")
        why = k.unavailable(device)
        if why is not None:
            raise RuntimeError(f"steu_ext: backend {want!r} was requested for {op} on {device} "
                               f"but cannot run: {why}")
        return want, k.fn
    for name in _AUTO_ORDER.get(device.type, ("reference",)):
        k = _KERNELS.get((op, name))
        if k is None:
            continue
        why = k.unavailable(device)
        if why is None:
            return name, k.fn
        log.debug("steu_ext: %s backend %r unavailable on %s: %s", op, name, device, why)
    return "reference", _KERNELS[(op, "reference")].fn


def cpu_ext_unavailable(device: torch.device) -> Optional[str]:
    """Availability test shared by every C++ CPU kernel."""
    if device.type != "cpu":
        return f"the C++ CPU kernels run on CPU tensors, not {device.type}"
    from . import _build

    if not _build.cpu_ops_available():
        return f"the C++ extension could not be built/loaded: {_build.cpu_ops_error()}"
    from .ops._fake import register_fakes

    register_fakes()
    return None


def cuda_ext_unavailable(device: torch.device) -> Optional[str]:
    """Availability test shared by every CUDA kernel (csrc/cuda, JIT-built with nvcc)."""
    if device.type != "cuda":
        return f"the CUDA kernels run on CUDA tensors, not {device.type}"
    from . import _build

    loader = getattr(_build, "cuda_ops_available", None)
    if loader is None:
        return "this build of steu_ext has no CUDA kernels"
    if not loader():
        return f"the CUDA extension could not be built/loaded: {_build.cuda_ops_error()}"
    return None


def triton_unavailable(device: torch.device) -> Optional[str]:
    """Triton kernels run on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (tests)."""
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if device.type != "cuda" and not (device.type == "cpu" and interpret):
        return f"Triton kernels run on CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), not {device.type}"
    try:
        import triton  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means unavailable
        return f"triton cannot be imported ({e}); pip install triton"
    return None


def lazy(module: str, name: str) -> Callable:
    """A kernel entry that imports ``module`` (relative to steu_ext) on first call, keeping imports light."""
    cache: Dict[str, Callable] = {}

    def call(*args, **kwargs):
        fn = cache.get("fn")
        if fn is None:
            import importlib

            fn = cache["fn"] = getattr(importlib.import_module(module, __package__), name)
        return fn(*args, **kwargs)

    call.__name__ = f"{module}.{name}"
    return call
