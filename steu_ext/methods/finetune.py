"""Supervised fine-tuning of a sequence classifier: the model that is then unlearned, and the gold
standard (the same training without the forget documents).

``mode="full"`` fine-tunes every parameter with AdamW (linear warm-up over the first ``warmup`` fraction of
the steps, then linear decay; dropout on), as deployed classifiers are trained; ``mode="head"`` trains only
the output layer on features computed once by the frozen encoder (fast on a CPU, but then every model
shares one encoder and a probe cannot tell them apart).

:func:`finetune_cached` stores the fine-tuned weights under a key that covers everything the result depends
on (base weights, documents, labels, settings, seed), so a multi-seed comparison fine-tunes each original
and gold standard once.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._progress import show_progress
from ..modeling.encoders import Encoded, is_multi_label, output_layer

log = logging.getLogger("steu_ext")


def _loss(z: torch.Tensor, y: torch.Tensor, multi: bool) -> torch.Tensor:
    if multi:
        return F.binary_cross_entropy_with_logits(z, y)
    return F.cross_entropy(z, y.argmax(1))


def train_classifier(model: nn.Module, data: Encoded, idx: Sequence[int], *, mode: str = "head",
                     epochs: int = 20, lr: Optional[float] = None, batch_size: int = 32, seed: int = 0,
                     multi_label: Optional[bool] = None, head_modules: Optional[List[str]] = None,
                     progress: Optional[bool] = None, warmup: float = 0.1, weight_decay: float = 0.01,
                     prior_bias: bool = False) -> List[float]:
    """Fine-tune ``model`` in place on documents ``idx`` of ``data``; returns the per-epoch mean loss.

    ``mode="full"``: AdamW on every parameter at ``lr`` (default 5e-4; 1e-4 or less for pretrained
    encoders), ``weight_decay``, linear warm-up over ``warmup`` of the steps then linear decay to 0, dropout
    on; the model is left in eval mode. ``mode="head"``: the output layer only, constant ``lr`` (1e-2).

    ``prior_bias=True`` first sets the output layer's bias to the class priors of documents ``idx``
    (log-odds for sigmoid heads, log-probabilities for softmax heads) — the usual start for a freshly
    initialised head: without it, a sigmoid head spends its first epochs learning that every class is rare
    and a short fine-tune can end predicting no class at all."""
    if mode not in ("head", "full"):
        raise ValueError(f"mode must be 'head' or 'full', got {mode!r}")
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup must lie in [0, 1), got {warmup}")
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    if not len(idx):
        raise ValueError("no documents to fine-tune on")
    multi = is_multi_label(model, multi_label)
    if prior_bias:
        set_prior_bias(model, data.labels[list(idx)], multi, head_modules)
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    idx = list(idx)
    y_all = data.labels[idx]
    losses: List[float] = []
    device = next(model.parameters()).device
    if mode == "head":
        out = output_layer(model, head_modules)
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
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr or 5e-4,
                            weight_decay=weight_decay)
    total = epochs * ((len(idx) + batch_size - 1) // batch_size)
    warm = int(warmup * total)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    bar = None
    if show_progress(progress):
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc="fine-tune", unit="step")
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
            sched.step()
            tot += loss.item() * len(part)
            if bar is not None:
                bar.update(1)
        losses.append(tot / len(idx))
    if bar is not None:
        bar.close()
    model.eval()
    return losses


@torch.no_grad()
def set_prior_bias(model: nn.Module, labels: torch.Tensor, multi_label: bool,
                   head_modules: Optional[List[str]] = None) -> None:
    """Output-layer bias := the class priors of ``labels`` ``[N, C]`` (log-odds for sigmoid heads,
    log-probabilities for softmax heads; clamped away from 0 and 1)."""
    out = output_layer(model, head_modules)
    if out.bias is None:
        raise ValueError("the output layer has no bias to initialise")
    p = labels.float().mean(0).clamp(1e-4, 1 - 1e-4)
    prior = torch.log(p / (1 - p)) if multi_label else torch.log(p / p.sum())
    out.bias.copy_(prior.to(out.bias.dtype))


def _digest(model: nn.Module, data: Encoded, idx: Sequence[int], settings: Dict[str, Any]) -> str:
    """SHA-256 over the starting weights, the documents' token ids and labels, and the settings."""
    h = hashlib.sha256()
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(json.dumps(type(model).__name__).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    for i in idx:
        h.update(torch.tensor(data.input_ids[i], dtype=torch.int64).numpy().tobytes())
        h.update(data.labels[i].float().numpy().tobytes())
    return h.hexdigest()


def finetune_cached(model: nn.Module, data: Encoded, idx: Sequence[int], *, cache_dir: Optional[str],
                    **kw) -> Dict[str, Any]:
    """:func:`train_classifier` (same keyword arguments), or load its result when ``cache_dir`` already
    holds it. The key covers ``model``'s starting weights, the documents ``idx`` (token ids and labels) and
    every setting, so a changed input can never hit a stale entry. The cache holds only weights
    (safetensors, one file per key, written atomically), never text. Returns ``{"losses", "cached",
    "path"}`` (``losses`` is None for a cache hit)."""
    if cache_dir is None:
        return {"losses": train_classifier(model, data, idx, **kw), "cached": False, "path": None}
    from safetensors.torch import load_file, save_file

    settings = {k: v for k, v in kw.items() if k != "progress"}
    key = _digest(model, data, idx, settings)
    path = os.path.join(cache_dir, f"finetune-{key[:32]}.safetensors")
    if os.path.exists(path):
        state = load_file(path)
        tied = set(model.state_dict()) - set(_untie(model.state_dict()))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - tied:
            raise ValueError(f"the cached fine-tune {path} does not match the model")
        model.eval()
        log.info("fine-tuned weights from the cache: %s", path)
        return {"losses": None, "cached": True, "path": path}
    losses = train_classifier(model, data, idx, **kw)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(_untie(state), tmp, metadata={"settings": json.dumps(settings, default=str)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"losses": losses, "cached": False, "path": path}


def _untie(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied weights): keep the first of each."""
    seen, out = set(), {}
    for k, v in state.items():
        key = (v.data_ptr(), v.numel(), v.dtype) if v.numel() else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen.add(key)
        out[k] = v
    return out
