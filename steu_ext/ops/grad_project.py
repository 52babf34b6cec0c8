"""Gradient projection over lists of tensors, in place (all tensors form one vector).

* :func:`grad_project_`: remove from g the component along a reference direction r:
  ``g <- g - (<g, r>_F / <r, r>_F) r`` with ``<a, b>_F = sum F*a*b`` (diagonal Fisher weights F, 1 when
  omitted). ``mode="conflict"`` projects only when ``<g, r>_F < 0`` (PCGrad); ``mode="always"`` always.
* :func:`grad_project_basis_`: remove the components along m orthonormal retain directions (OGD/GPM).
* :func:`orthonormal_basis`: build such a basis from a few gradient snapshots.

No host sync: the conflict test and the coefficients stay on the device.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from .. import _backend
from .._validate import check_tensor
from ..reference import grad_project as _ref

__all__ = ["grad_project_", "grad_project_basis_", "orthonormal_basis"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MODES = ("conflict", "always")


def _check_lists(grads, others, other_name: str, shape_of=lambda t: tuple(t.shape)):
    if not isinstance(grads, (list, tuple)) or len(grads) == 0:
        raise ValueError("grads must be a non-empty list of tensors")
    if not isinstance(others, (list, tuple)) or len(others) != len(grads):
        raise ValueError(f"{other_name} must be a list with one tensor per gradient "
                         f"({len(grads)}), got {len(others) if isinstance(others, (list, tuple)) else others!r}")
    device = grads[0].device if isinstance(grads[0], torch.Tensor) else None
    for i, (g, o) in enumerate(zip(grads, others)):
        check_tensor(g, f"grads[{i}]", dtypes=_DTYPES, device=device)
        check_tensor(o, f"{other_name}[{i}]", dtypes=_DTYPES, device=device)
        if not g.is_contiguous():
            raise ValueError(f"grads[{i}] must be contiguous (it is updated in place)")
        if shape_of(o) != tuple(g.shape):
            raise ValueError(f"{other_name}[{i}] has shape {tuple(o.shape)}, incompatible with grads[{i}] "
                             f"{tuple(g.shape)}")
        if o.dtype != g.dtype:
            raise TypeError(f"{other_name}[{i}] dtype {o.dtype} differs from grads[{i}] dtype {g.dtype}")


def grad_project_(grads: Sequence[torch.Tensor], ref: Sequence[torch.Tensor],
                  fisher: Optional[Sequence[torch.Tensor]] = None, *, mode: str = "conflict",
                  eps: float = 1e-20) -> torch.Tensor:
    """Project ``grads`` (in place) against ``ref``; returns the applied coefficient (0-dim fp32 tensor,
    0 where nothing was removed)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    _check_lists(grads, ref, "ref")
    if fisher is not None:
        _check_lists(grads, fisher, "fisher")
    _, fn = _backend.resolve("grad_project", grads[0].device)
    return fn(list(grads), [r.contiguous() for r in ref],
              None if fisher is None else [f.contiguous() for f in fisher], mode == "conflict", float(eps))


def grad_project_basis_(grads: Sequence[torch.Tensor], basis: Sequence[torch.Tensor]) -> torch.Tensor:
    """Remove from ``grads`` (in place) their components along m orthonormal directions; ``basis[i]`` is
    ``[m, *grads[i].shape]``. Returns the removed coefficients (fp32 ``[m]``)."""
    _check_lists(grads, basis, "basis", shape_of=lambda t: tuple(t.shape[1:]))
    m = basis[0].shape[0]
    if m == 0 or any(b.shape[0] != m for b in basis):
        raise ValueError("every basis tensor needs the same number m >= 1 of directions in dim 0")
    _, fn = _backend.resolve("grad_project_basis", grads[0].device)
    return fn(list(grads), [b.contiguous() for b in basis])


def orthonormal_basis(snapshots: Sequence[Sequence[torch.Tensor]], tol: float = 1e-6) -> List[torch.Tensor]:
    """Orthonormal basis (as per-tensor ``[m, *shape]`` slices) spanning gradient snapshots, each a list of
    tensors shaped like the parameters; directions with relative norm below ``tol`` are dropped."""
    if not snapshots:
        raise ValueError("need at least one snapshot")
    shapes = [tuple(t.shape) for t in snapshots[0]]
    mat = torch.stack([torch.cat([t.reshape(-1).double() for t in s]) for s in snapshots], 1)
    q, r = torch.linalg.qr(mat)
    keep = r.diagonal().abs() > tol * r.diagonal().abs().max().clamp_min(1e-300)
    q = q[:, keep].t().to(snapshots[0][0].dtype)
    out, off = [], 0
    for shp in shapes:
        n = int(torch.tensor(shp).prod()) if shp else 1
        out.append(q[:, off:off + n].reshape(q.shape[0], *shp).contiguous())
        off += n
    return out


def _cpp_grad_project_(grads, ref, fisher, conflict_only, eps):
    return torch.ops.steu_ext.grad_project_(grads, ref, fisher, conflict_only, eps)


def _cpp_grad_project_basis_(grads, basis):
    return torch.ops.steu_ext.grad_project_basis_(grads, basis)


_backend.register_kernel("grad_project", "reference", _ref.grad_project_)
_backend.register_kernel("grad_project", "cpu", _cpp_grad_project_, _backend.cpu_ext_unavailable)
_backend.register_kernel("grad_project_basis", "reference", _ref.grad_project_basis_)
_backend.register_kernel("grad_project_basis", "cpu", _cpp_grad_project_basis_, _backend.cpu_ext_unavailable)
_backend.register_kernel("grad_project", "cuda", _cpp_grad_project_, _backend.cuda_ext_unavailable)
_backend.register_kernel("grad_project_basis", "cuda", _cpp_grad_project_basis_, _backend.cuda_ext_unavailable)
_backend.register_kernel("grad_project", "triton", _backend.lazy(".triton.grad_project", "grad_project_"),
                         _backend.triton_unavailable)
_backend.register_kernel("grad_project_basis", "triton",
                         _backend.lazy(".triton.grad_project", "grad_project_basis_"), _backend.triton_unavailable)
