"""Parameter snapshots: a detached copy of every parameter, taken before an edit so that what changed can
be counted exactly (:func:`steu_ext.eval.metrics.modified_parameters`) or restored."""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn

__all__ = ["snapshot"]


def snapshot(model: nn.Module) -> Dict[str, torch.Tensor]:
    """A detached copy of every parameter, for exact before/after comparisons."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}
