"""Row-sparse Adam/AdamW step: update only K selected rows of a ``[V, D]`` table, with ``[K, D]`` state.

The functional op behind :class:`steu_ext.optim.RowSparseAdam`; every row not in ``rows`` is left
bit-identical.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .. import _backend
from .._validate import check_int_tensor, check_range, check_tensor, validation_enabled
from ..reference import row_adam as _ref

__all__ = ["row_adam_", "multi_adam_", "check_rows", "gather_sparse_rows"]

PARAM_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_rows(rows, num_rows: int, device: torch.device, validate: Optional[bool] = None) -> torch.Tensor:
    """Validate a row-id set (1-D integer, unique, in ``[0, num_rows)``) and return it as int64."""
    if isinstance(rows, torch.Tensor):
        r = check_int_tensor(rows, "rows", ndim=1)
    else:
        try:
            r = torch.as_tensor(list(rows), dtype=torch.int64)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"rows must be a 1-D tensor or sequence of ints: {e}") from None
        if r.dim() != 1:
            raise ValueError(f"rows must be 1-D, got shape {tuple(r.shape)}")
    r = r.to(device=device, dtype=torch.int64)
    if validation_enabled(validate) and r.numel():
        check_range(r, 0, num_rows, "rows", f"a table with {num_rows} rows")
        if torch.unique(r).numel() != r.numel():
            raise ValueError("rows contains duplicate ids")
    return r.contiguous()


def gather_sparse_rows(grad: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Gradient rows ``[K, D]`` for ``rows`` from a sparse COO gradient (``nn.Embedding(sparse=True)``)."""
    g = grad.coalesce()
    V, D = g.shape
    pos = torch.full((V,), -1, dtype=torch.int64, device=g.device)
    pos[rows] = torch.arange(rows.numel(), device=g.device)
    idx, vals = g.indices(), g.values()
    sel = pos[idx[0]]
    keep = sel >= 0
    out = torch.zeros(rows.numel(), D, dtype=g.dtype, device=g.device)
    if g.sparse_dim() == 1:  # row-sparse layout of nn.Embedding(sparse=True): values [nnz, D]
        out.index_add_(0, sel[keep], vals[keep])
    else:  # element-sparse layout: values [nnz]
        out.index_put_((sel[keep], idx[1][keep]), vals[keep], accumulate=True)
    return out


def row_adam_(param: torch.Tensor, grad: torch.Tensor, rows: torch.Tensor, exp_avg: torch.Tensor,
              exp_avg_sq: torch.Tensor, step: torch.Tensor, *, lr: float, beta1: float = 0.9,
              beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0, decoupled: bool = False,
              maximize: bool = False, validate: Optional[bool] = None,
              grad_layout: Optional[str] = None) -> None:
    """One in-place Adam (``decoupled=False``) or AdamW (``decoupled=True``) step on ``param[rows]``.

    ``param`` ``[V, D]`` fp32/fp16/bf16; ``grad`` ``[V, D]`` (dense), ``[K, D]`` rows already gathered, or a
    sparse COO ``[V, D]``; ``exp_avg``/``exp_avg_sq`` fp32 ``[K, D]``; ``step`` a 0-dim tensor holding the
    step count *after* this step (>= 1: the caller increments it first). Mutates param, exp_avg and exp_avg_sq.

    ``grad_layout``: ``"full"`` (``grad[i]`` is row ``i`` of the table) or ``"gathered"`` (``grad[j]`` is row
    ``rows[j]``); by default it is taken from the shape. When ``K == V`` the shape cannot tell: then a
    ``rows`` that is not ``0..V-1`` in order needs ``grad_layout`` (a ``ValueError`` otherwise; with
    ``validate=False`` the gradient is taken as full).
    """
    check_tensor(param, "param", ndim=2, dtypes=PARAM_DTYPES)
    device = param.device
    V, D = param.shape
    rows = check_rows(rows, V, device, validate)
    K = rows.numel()
    check_tensor(grad, "grad", ndim=2, device=device)
    if grad_layout not in (None, "full", "gathered"):
        raise ValueError(f"grad_layout must be 'full', 'gathered' or None, got {grad_layout!r}")
    if grad.is_sparse:
        if tuple(grad.shape) != (V, D):
            raise ValueError(f"sparse grad has shape {tuple(grad.shape)}, expected {(V, D)}")
        if grad_layout == "gathered":
            raise ValueError("a sparse COO grad is a full [V, D] layout, not a gathered one")
        grad, gathered = gather_sparse_rows(grad, rows), True
    elif grad_layout is not None:
        gathered = grad_layout == "gathered"
        want = (K, D) if gathered else (V, D)
        if tuple(grad.shape) != want:
            raise ValueError(f"grad has shape {tuple(grad.shape)}; a {grad_layout} grad must be {want}")
    elif tuple(grad.shape) == (V, D):
        gathered = False
        if K == V and validation_enabled(validate) and not torch.equal(rows, torch.arange(V, device=device)):
            raise ValueError(f"grad has shape {(V, D)} and rows selects all {V} rows out of order: say whether "
                             "the grad is the full table or gathered in the order of rows with "
                             "grad_layout='full' or 'gathered'")
    elif tuple(grad.shape) == (K, D):
        gathered = True
    else:
        raise ValueError(f"grad has shape {tuple(grad.shape)}; expected {(V, D)} or gathered {(K, D)}")
    if grad.dtype != param.dtype:
        raise TypeError(f"grad dtype {grad.dtype} does not match param dtype {param.dtype}")
    for name, s in (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        check_tensor(s, name, ndim=2, dtypes=(torch.float32,), device=device)
        if tuple(s.shape) != (K, D):
            raise ValueError(f"{name} has shape {tuple(s.shape)}, expected {(K, D)}")
        if not s.is_contiguous():
            raise ValueError(f"{name} must be contiguous (it is updated in place)")
    check_tensor(step, "step", device=device)
    if step.numel() != 1:
        raise ValueError("step must be a single-element tensor")
    if validation_enabled(validate) and not float(step.reshape(())) >= 1:   # one host sync
        raise ValueError(f"step must be >= 1 (the count after this step: increment it first), got "
                         f"{float(step.reshape(()))}")
    if not param.is_contiguous():
        raise ValueError("param must be contiguous (it is updated in place)")
    if not 0.0 <= beta1 < 1.0 or not 0.0 <= beta2 < 1.0:
        raise ValueError(f"betas must lie in [0, 1), got ({beta1}, {beta2})")
    if K == 0:
        return
    _, fn = _backend.resolve("row_adam", device)
    fn(param, grad.contiguous(), rows, exp_avg, exp_avg_sq, step.reshape(()).float(), float(lr),
       float(beta1), float(beta2), float(eps), float(weight_decay), bool(decoupled), bool(maximize),
       gathered)


def multi_adam_(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                exp_avgs: Sequence[torch.Tensor], exp_avg_sqs: Sequence[torch.Tensor],
                steps: Sequence[torch.Tensor], *, lr: float, beta1: float = 0.9, beta2: float = 0.999,
                eps: float = 1e-8, weight_decay: float = 0.0, decoupled: bool = False,
                maximize: bool = False, validate: Optional[bool] = None) -> None:
    """One in-place Adam/AdamW step on every element of each dense tensor of a list, in one launch.

    For the dense parameters of a model (a classifier head, LoRA adapters) next to the row-sparse tables:
    ``params[i]`` (any shape, contiguous, fp32/fp16/bf16, mixed dtypes allowed), ``grads[i]`` of the same
    shape and dtype, ``exp_avgs[i]``/``exp_avg_sqs[i]`` contiguous fp32 with as many elements, ``steps[i]``
    a single-element fp32 tensor holding the step count *after* this step (>= 1), all on one device. Mutates
    params, exp_avgs and exp_avg_sqs; same arithmetic as :func:`row_adam_` (torch.optim.Adam's).
    """
    lists = {"params": params, "grads": grads, "exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs,
             "steps": steps}
    n = len(params)
    for name, lst in lists.items():
        if not isinstance(lst, (list, tuple)):
            raise TypeError(f"{name} must be a list of tensors, got {type(lst).__name__}")
        if len(lst) != n:
            raise ValueError(f"{name} has {len(lst)} tensors, params has {n}")
    if n == 0:
        return
    device = params[0].device
    for i in range(n):
        p, g = params[i], grads[i]
        check_tensor(p, f"params[{i}]", dtypes=PARAM_DTYPES, device=device)
        check_tensor(g, f"grads[{i}]", device=device)
        if g.is_sparse:
            raise ValueError(f"grads[{i}] is sparse; sparse gradients need the row-sparse op row_adam_")
        if g.shape != p.shape or g.dtype != p.dtype:
            raise ValueError(f"grads[{i}] is {g.dtype} {tuple(g.shape)}, params[{i}] is {p.dtype} "
                             f"{tuple(p.shape)}")
        if not p.is_contiguous():
            raise ValueError(f"params[{i}] must be contiguous (it is updated in place)")
        for name in ("exp_avgs", "exp_avg_sqs"):
            s = lists[name][i]
            check_tensor(s, f"{name}[{i}]", dtypes=(torch.float32,), device=device)
            if s.numel() != p.numel() or not s.is_contiguous():
                raise ValueError(f"{name}[{i}] must be contiguous with {p.numel()} elements, got shape "
                                 f"{tuple(s.shape)}")
        check_tensor(steps[i], f"steps[{i}]", dtypes=(torch.float32,), device=device)
        if steps[i].numel() != 1:
            raise ValueError(f"steps[{i}] must be a single-element tensor")
    if not 0.0 <= beta1 < 1.0 or not 0.0 <= beta2 < 1.0:
        raise ValueError(f"betas must lie in [0, 1), got ({beta1}, {beta2})")
    if validation_enabled(validate):   # one host sync for all steps
        low = float(torch.stack([t.reshape(()) for t in steps]).min())
        if not low >= 1:
            raise ValueError(f"every step must be >= 1 (the count after this step: increment it first), got {low}")
    _, fn = _backend.resolve("multi_adam", device)
    fn(list(params), [g.contiguous() for g in grads], list(exp_avgs), list(exp_avg_sqs),
       [t.reshape(()) for t in steps], float(lr), float(beta1), float(beta2), float(eps), float(weight_decay),
       bool(decoupled), bool(maximize))


def _cpp_multi_adam_(*args):
    torch.ops.steu_ext.multi_adam_(*args)


def _cpp_row_adam_(*args):
    torch.ops.steu_ext.row_adam_(*args)


_backend.register_kernel("row_adam", "reference", _ref.row_adam_)
_backend.register_kernel("row_adam", "cpu", _cpp_row_adam_, _backend.cpu_ext_unavailable)
_backend.register_kernel("row_adam", "cuda", _cpp_row_adam_, _backend.cuda_ext_unavailable)
_backend.register_kernel("row_adam", "triton", _backend.lazy(".triton.row_adam", "row_adam_"),
                         _backend.triton_unavailable)
_backend.register_kernel("multi_adam", "reference", _ref.multi_adam_)
_backend.register_kernel("multi_adam", "cpu", _cpp_multi_adam_, _backend.cpu_ext_unavailable)
_backend.register_kernel("multi_adam", "cuda", _cpp_multi_adam_, _backend.cuda_ext_unavailable)
_backend.register_kernel("multi_adam", "triton", _backend.lazy(".triton.row_adam", "multi_adam_"),
                         _backend.triton_unavailable)
