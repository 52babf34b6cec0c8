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
from collections import defaultdict
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
        """Validate the group before adding it (so a bad parameter fails here, not midway through a step):
        every parameter a dense, contiguous fp32/fp16/bf16 tensor, one device per group; a row-sparse
        group's parameters ``[V, D]`` sharing V and device, its ``rows`` copied (never aliased)."""
        if isinstance(param_group, dict) and isinstance(param_group.get("rows"), torch.Tensor):
            param_group = {**param_group, "rows": param_group["rows"].detach().clone()}
        n_before = len(self.param_groups)
        super().add_param_group(param_group)
        try:
            self._check_group(self.param_groups[-1])
        except BaseException:
            del self.param_groups[n_before:]
            raise

    def _check_group(self, group: Dict[str, Any]) -> None:
        params = group["params"]
        name = type(self).__name__
        for p in params:
            if p.layout != torch.strided:
                raise ValueError(f"{name} needs dense (strided) parameters, got {p.layout}")
            if p.dtype not in PARAM_DTYPES:
                kind = "row-sparse" if "rows" in group else f"{name} dense"
                raise TypeError(f"{kind} parameters must be one of {PARAM_DTYPES}, got {p.dtype} "
                                f"(shape {tuple(p.shape)})")
            if not p.is_contiguous():
                raise ValueError(f"{name} parameters must be contiguous (they are updated in place), got one "
                                 f"of shape {tuple(p.shape)} and stride {p.stride()}")
        if "rows" not in group:
            return
        for p in params:
            if p.dim() != 2:
                raise ValueError(f"a row-sparse group needs 2-D [V, D] parameters, got shape {tuple(p.shape)}")
            if p.shape[0] != params[0].shape[0] or p.device != params[0].device:
                raise ValueError("all parameters of a row-sparse group must share V and device")
        if params:
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
        self._check_grads()   # every gradient first: a bad one must not leave a half-applied step
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
                    row_adam_(p, p.grad, rows, state["exp_avg"], state["exp_avg_sq"], state["step"],
                              grad_layout="full", **kw)
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
                            **kw)
        return loss

    def _check_grads(self) -> None:
        for gi, group in enumerate(self.param_groups):
            rows = group.get("rows")
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                where = f"param_groups[{gi}] parameter of shape {tuple(p.shape)}"
                if g.device != p.device:
                    raise ValueError(f"{where}: its gradient is on {g.device}, the parameter on {p.device}")
                if rows is not None:
                    ok = {tuple(p.shape), (rows.numel(), p.shape[1])}
                    if tuple(g.shape) not in ok or (g.is_sparse and tuple(g.shape) != tuple(p.shape)):
                        raise ValueError(f"{where}: gradient of shape {tuple(g.shape)}, expected {tuple(p.shape)} "
                                         f"or gathered {(rows.numel(), p.shape[1])}")
                    if g.dtype != p.dtype:
                        raise TypeError(f"{where}: gradient dtype {g.dtype} does not match {p.dtype}")
                else:
                    if g.is_sparse:
                        raise ValueError("sparse gradients are supported only in row-sparse groups")
                    if g.shape != p.shape:
                        raise ValueError(f"{where}: gradient of shape {tuple(g.shape)}")

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Load a state saved by this optimizer. Refused with ``ValueError``, the optimizer left unchanged,
        when a group's ``rows`` are missing or appeared (e.g. a ``torch.optim.Adam`` state, which would make
        it update every row), when rows or moments do not fit the parameters, or when the state is malformed."""
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        if not isinstance(groups, list) or not isinstance(state_dict.get("state"), dict):
            raise ValueError("not an optimizer state dict (needs 'state' and 'param_groups')")
        if len(groups) != len(self.param_groups):
            raise ValueError(f"loaded state has {len(groups)} parameter groups, the optimizer has "
                             f"{len(self.param_groups)}")
        for i, (g, mine) in enumerate(zip(groups, self.param_groups)):
            if not isinstance(g, dict):
                raise ValueError(f"param_groups[{i}] of the loaded state is not a dict")
            if ("rows" in g) != ("rows" in mine):
                raise ValueError(f"param_groups[{i}]: the loaded group {'has' if 'rows' in g else 'has no'} "
                                 f"'rows' but this optimizer's group {'has' if 'rows' in mine else 'has none'}: "
                                 "a state saved by another optimizer (e.g. torch.optim.Adam) cannot be loaded")
        saved = copy.deepcopy(state_dict)
        backup_groups = [dict(g) for g in self.param_groups]
        backup_state = {p: dict(st) for p, st in self.state.items()}
        try:
            super().load_state_dict(state_dict)
            self._fix_loaded(saved)
        except BaseException:
            for g, b in zip(self.param_groups, backup_groups):
                g.clear()
                g.update(b)
            self.state = defaultdict(dict, backup_state)
            raise

    def _fix_loaded(self, saved: Dict[str, Any]) -> None:
        # torch casts floating state to the parameter's dtype; ours stays fp32 whatever the parameter is
        params = [p for g in self.param_groups for p in g["params"]]
        for idx, s in saved["state"].items():
            p = params[int(idx)]
            for key in _STATE_FP32:
                if isinstance(s.get(key), torch.Tensor):
                    self.state[p][key] = s[key].to(device=p.device, dtype=torch.float32)
            if "step" in s:
                self.state[p]["step"] = torch.as_tensor(s["step"]).to(device=p.device,
                                                                      dtype=torch.float32).reshape(())
        for group in self.param_groups:
            if "rows" in group:
                p0 = group["params"][0]
                group["rows"] = check_rows(group["rows"], p0.shape[0], p0.device, self._validate)
            for p in group["params"]:
                s = self.state.get(p)
                if not s:
                    continue
                shape = (group["rows"].numel(), p.shape[1]) if "rows" in group else tuple(p.shape)
                for key in _STATE_FP32:
                    if not isinstance(s.get(key), torch.Tensor):
                        raise ValueError(f"the loaded optimizer state lacks {key!r}")
                    if tuple(s[key].shape) != tuple(shape):
                        raise ValueError(f"loaded optimizer state {key} has shape {tuple(s[key].shape)}, "
                                         f"expected {tuple(shape)}: it does not match the group's rows/parameters")
                if not isinstance(s.get("step"), torch.Tensor) or s["step"].numel() != 1:
                    raise ValueError("the loaded optimizer state lacks a scalar 'step'")

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
