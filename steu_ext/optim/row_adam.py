"""``RowSparseAdam`` / ``RowSparseAdamW``: Adam that updates only selected rows of embedding tables.

A parameter group with a ``"rows"`` entry is row-sparse: each of its parameters is a ``[V, D]`` table of
which only the rows ``rows`` are updated, with ``exp_avg``/``exp_avg_sq`` kept as fp32 ``[K, D]``; every
other row stays bit-identical for any number of steps (weight decay included). Groups without ``"rows"``
(e.g. a classifier head) are ordinary Adam/AdamW in the same optimizer, all their tensors updated by one
multi-tensor launch per step (:func:`steu_ext.ops.row_adam.multi_adam_`).

    opt = RowSparseAdamW([
        {"params": [model.get_input_embeddings().weight], "rows": token_ids},
        {"params": model.classifier.parameters()},
    ], lr=1e-3)
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional

import torch
from torch.optim import Optimizer

from ..ops.row_adam import PARAM_DTYPES, check_rows, multi_adam_, row_adam_

__all__ = ["RowSparseAdam", "RowSparseAdamW"]

_STATE_FP32 = ("exp_avg", "exp_avg_sq")


class RowSparseAdam(Optimizer):
    """Adam (L2 weight decay) or, with ``decoupled_weight_decay=True``, AdamW over selected rows.

    Arguments follow :class:`torch.optim.Adam`; ``amsgrad``, ``foreach``, ``fused``, ``capturable`` and
    ``differentiable`` are not supported and raise ``ValueError`` when enabled.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, *, decoupled_weight_decay: bool = False,
                 maximize: bool = False, amsgrad: bool = False, foreach: Optional[bool] = None,
                 fused: Optional[bool] = None, capturable: bool = False, differentiable: bool = False,
                 validate: Optional[bool] = None):
        for name, flag in (("amsgrad", amsgrad), ("foreach", foreach), ("fused", fused),
                           ("capturable", capturable), ("differentiable", differentiable)):
            if flag:
                raise ValueError(f"{type(self).__name__} does not support {name}=True")
        if not 0.0 <= lr:
            raise ValueError(f"invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"invalid epsilon value: {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas: {betas}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"invalid weight_decay value: {weight_decay}")
        self._validate = validate
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if "rows" not in group:
            return
        params = group["params"]
        for p in params:
            if p.dim() != 2:
                raise ValueError(f"a row-sparse group needs 2-D [V, D] parameters, got shape {tuple(p.shape)}")
            if p.dtype not in PARAM_DTYPES:
                raise TypeError(f"row-sparse parameters must be one of {PARAM_DTYPES}, got {p.dtype}")
            if p.shape[0] != params[0].shape[0] or p.device != params[0].device:
                raise ValueError("all parameters of a row-sparse group must share V and device")
        group["rows"] = check_rows(group["rows"], params[0].shape[0], params[0].device, self._validate)

    def _init_state(self, p: torch.Tensor, rows: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
        state = self.state[p]
        if not state:
            shape = (rows.numel(), p.shape[1]) if rows is not None else p.shape
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros(shape, dtype=torch.float32, device=p.device)
            state["exp_avg_sq"] = torch.zeros(shape, dtype=torch.float32, device=p.device)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            rows = group.get("rows")
            beta1, beta2 = group["betas"]
            kw = dict(lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                      weight_decay=group["weight_decay"], decoupled=group["decoupled_weight_decay"],
                      maximize=group["maximize"], validate=False)
            if rows is not None:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self._init_state(p, rows)
                    state["step"] += 1
                    row_adam_(p, p.grad, rows, state["exp_avg"], state["exp_avg_sq"], state["step"], **kw)
                continue
            # dense tensors (a classifier head): one multi-tensor launch per device
            by_device: Dict[torch.device, list] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError("sparse gradients are supported only in row-sparse groups")
                if not p.is_contiguous():
                    raise ValueError("dense parameters must be contiguous")
                by_device.setdefault(p.device, []).append((p, self._init_state(p, None)))
            for items in by_device.values():
                steps = [st["step"] for _, st in items]
                torch._foreach_add_(steps, 1)
                multi_adam_([p for p, _ in items], [p.grad.to(p.dtype) for p, _ in items],
                            [st["exp_avg"] for _, st in items], [st["exp_avg_sq"] for _, st in items], steps,
                            **{k: v for k, v in kw.items() if k != "validate"})
        return loss

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        # torch casts floating state to the parameter's dtype; ours stays fp32 whatever the parameter is
        saved = copy.deepcopy(state_dict)
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for idx, s in saved["state"].items():
            p = params[int(idx)]
            for key in _STATE_FP32:
                if key in s:
                    self.state[p][key] = s[key].to(device=p.device, dtype=torch.float32)
            if "step" in s:
                self.state[p]["step"] = s["step"].to(device=p.device, dtype=torch.float32).reshape(())
        for group in self.param_groups:
            if "rows" in group:
                p0 = group["params"][0]
                group["rows"] = check_rows(group["rows"], p0.shape[0], p0.device, self._validate)
                for p in group["params"]:
                    s = self.state.get(p)
                    if s and tuple(s["exp_avg"].shape) != (group["rows"].numel(), p.shape[1]):
                        raise ValueError("loaded optimizer state does not match the group's rows")

    def state_bytes(self) -> int:
        """Bytes held in optimizer state tensors (for comparisons against dense Adam's 2 x V x D)."""
        return sum(t.numel() * t.element_size() for s in self.state.values() for t in s.values()
                   if isinstance(t, torch.Tensor))


class RowSparseAdamW(RowSparseAdam):
    """:class:`RowSparseAdam` with decoupled weight decay (AdamW), ``weight_decay=1e-2`` by default."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, **kw):
        kw.setdefault("decoupled_weight_decay", True)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **kw)
