"""Brief supervised fine-tuning of a sequence classifier (used by the demo and tests to obtain the model
that is then unlearned).

``mode="head"`` trains only the output layer on features computed once by the frozen encoder (fast on a
CPU); ``mode="full"`` fine-tunes every parameter with AdamW.
"""
from __future__ import annotations

import random
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._model import Encoded, find_head, is_multi_label


def _loss(z: torch.Tensor, y: torch.Tensor, multi: bool) -> torch.Tensor:
    if multi:
        return F.binary_cross_entropy_with_logits(z, y)
    return F.cross_entropy(z, y.argmax(1))


def _output_layer(model: nn.Module, head_modules: Optional[List[str]]) -> nn.Linear:
    find_head(model, head_modules)  # validates the head exists
    names = head_modules or None
    linears = [m for n, m in model.named_modules() if isinstance(m, nn.Linear)
               and m.out_features == model.config.num_labels
               and (names is None or any(n == h or n.startswith(h + ".") for h in names))]
    if not linears:
        raise ValueError("cannot find the output layer (a Linear with num_labels outputs) of the head")
    return linears[-1]


def train_classifier(model: nn.Module, data: Encoded, idx: Sequence[int], *, mode: str = "head",
                     epochs: int = 20, lr: Optional[float] = None, batch_size: int = 32, seed: int = 0,
                     multi_label: Optional[bool] = None, head_modules: Optional[List[str]] = None,
                     progress: bool = False) -> List[float]:
    """Fine-tune ``model`` in place on documents ``idx`` of ``data``; returns the per-epoch mean loss."""
    if mode not in ("head", "full"):
        raise ValueError(f"mode must be 'head' or 'full', got {mode!r}")
    multi = is_multi_label(model, multi_label)
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    idx = list(idx)
    y_all = data.labels[idx]
    losses: List[float] = []
    device = next(model.parameters()).device
    if mode == "head":
        out = _output_layer(model, head_modules)
        feats: List[torch.Tensor] = []
        hook = out.register_forward_hook(lambda m, inp, o: feats.append(inp[0].detach()))
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                for _, b in data.batches(idx, 64):
                    model(**{k: v.to(device) for k, v in b.items()})
        finally:
            hook.remove()
            model.train(was)
        x = torch.cat(feats)
        opt = torch.optim.AdamW(out.parameters(), lr=lr or 1e-2, weight_decay=0.0)
        for _ in range(epochs):
            perm = torch.randperm(len(idx), generator=gen)
            tot = 0.0
            for i in range(0, len(idx), batch_size):
                j = perm[i:i + batch_size]
                loss = _loss(out(x[j]), y_all[j].to(device), multi)
                opt.zero_grad()
                loss.backward()
                opt.step()
                tot += loss.item() * len(j)
            losses.append(tot / len(idx))
        return losses
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr or 5e-4)
    model.train()
    for _ in range(epochs):
        order = idx[:]
        rng.shuffle(order)
        tot = 0.0
        for part, b in data.batches(order, batch_size):
            z = model(**{k: v.to(device) for k, v in b.items()}).logits
            loss = _loss(z.float(), data.labels[part].to(device), multi)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += loss.item() * len(part)
        losses.append(tot / len(idx))
    model.eval()
    return losses
