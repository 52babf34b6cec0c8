"""The HDS edit as a LoRA adapter: where the adapters go and what share of the model they train
(:func:`wrap_lora`, :func:`lora_config`, :func:`lora_budget`), and the edit's life after training — saved as an
unmerged PEFT adapter with a fingerprint of the base weights it adapts (:func:`save_adapter`,
:func:`adapter_of`), applied to a base model only when the fingerprints match (:func:`load_adapter`), removed
bit-exactly (:func:`remove_adapter`), and the number of base elements a merge would change
(:func:`merged_changes`). The method itself is :mod:`steu_ext.methods.hds` (which re-exports these names)."""
from __future__ import annotations

import copy
import os
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple, Union

import torch
from torch import nn

if TYPE_CHECKING:  # annotations only: hds imports this module
    from .hds import HDSConfig

__all__ = ["wrap_lora", "lora_config", "lora_budget", "ADAPTER_META", "ADAPTER_FORMAT", "base_fingerprint",
           "merged_changes", "save_adapter", "adapter_of", "load_adapter", "remove_adapter"]


def wrap_lora(model: nn.Module, cfg: HDSConfig) -> nn.Module:
    """``peft`` LoRA adapters on ``cfg.lora_targets`` (module names, or ``"all-linear"``: every linear
    layer but the output head), in the decoder layers ``cfg.lora_layers`` (all when None); only they train.
    ``ValueError`` when a named module or layer does not exist."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(model, cfg))


def lora_config(model: nn.Module, cfg: HDSConfig):
    """The ``peft.LoraConfig`` of ``cfg`` for ``model``, checked against the model's modules and layers."""
    from peft import LoraConfig

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = cfg.lora_targets if isinstance(cfg.lora_targets, str) else list(cfg.lora_targets)
    wanted = [] if targets == "all-linear" else ([targets] if isinstance(targets, str) else targets)
    missing = [t for t in wanted if t not in names]
    if missing:
        raise ValueError(f"lora_targets {missing} match no module of {type(model).__name__} "
                         f"(module names include {sorted(names)[:20]})")
    layers = None
    if cfg.lora_layers is not None:
        n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
        layers = sorted(set(int(i) for i in cfg.lora_layers))
        if n is not None and layers[-1] >= n:
            raise ValueError(f"lora_layers {layers} out of range: the model has {n} layers (0..{n - 1})")
        if targets == "all-linear":   # peft takes layers_to_transform with module names only
            out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
            targets = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                              if isinstance(m, nn.Linear) and m is not out})
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=targets, lora_dropout=0.0,
                      bias="none", layers_to_transform=layers)


def lora_budget(model_or_config, cfg: HDSConfig) -> Dict[str, Any]:
    """LoRA parameters ``cfg`` trains on a model, and their share of its parameters, without training:
    ``model_or_config`` is a model or a ``transformers`` config (e.g. a 7B Llama's), instantiated on the
    meta device (no memory) and wrapped with peft's own module matching.
    Returns ``{"lora_params", "total", "percent", "modules"}``."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    conf = getattr(model_or_config, "config", None) if isinstance(model_or_config, nn.Module) else model_or_config
    if conf is not None:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(conf)
    else:   # a module without a transformers config: a meta copy of its structure
        model = copy.deepcopy(model_or_config).to("meta")
    total = sum(p.numel() for p in model.parameters())
    with torch.device("meta"):
        wrapped = get_peft_model(model, lora_config(model, cfg))
    lora = sum(p.numel() for n, p in wrapped.named_parameters() if "lora_" in n)
    modules = sum(1 for n, _ in wrapped.named_modules() if n.endswith(".lora_A"))
    return {"lora_params": lora, "total": total, "percent": 100.0 * lora / total, "modules": modules}


ADAPTER_META = "steu_hds.json"
ADAPTER_FORMAT = "steu_ext.hds_adapter/1"


def _lora_modules(model: nn.Module) -> Dict[str, nn.Module]:
    """peft LoRA layers of a peft model by their base-model module name (``model.layers.0.mlp.down_proj``)."""
    out = {}
    for n, m in model.named_modules():
        if hasattr(m, "base_layer") and hasattr(m, "lora_A"):
            name = n[len("base_model.model."):] if n.startswith("base_model.model.") else n
            out[name] = m
    return out


def base_fingerprint(weights: Dict[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``weights`` (sorted by name)."""
    import hashlib

    h = hashlib.sha256()
    for n in sorted(weights):
        t = weights[n].detach().cpu().contiguous()
        h.update(f"{n}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _adapted_base_weights(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {f"{n}.weight": m.base_layer.weight for n, m in _lora_modules(model).items()}


def merged_changes(model: nn.Module) -> int:
    """Elements of the base weights that merging ``model``'s LoRA adapters would change (exactly: the
    merged value ``W + delta`` in the weight's dtype differs from ``W``), without merging."""
    changed = 0
    with torch.no_grad():
        for m in _lora_modules(model).values():
            w = m.base_layer.weight
            for name in m.active_adapters:
                if name in m.lora_A:
                    changed += int(((w + m.get_delta_weight(name).to(w.dtype)) != w).sum())
    return changed


def save_adapter(folder: Union[str, os.PathLike], state: Dict[str, torch.Tensor], config: Dict[str, Any],
                 fingerprint: Optional[str], info: Optional[Dict[str, Any]] = None, *,
                 overwrite: bool = False) -> str:
    """Write a PEFT adapter folder (see :meth:`HDSResult.save_adapter`), built under a temporary name and
    renamed at the end. An existing ``folder`` is replaced only with ``overwrite`` and only when it is an
    HDS adapter folder (it holds ``steu_hds.json``); anything else there is never touched."""
    import json
    import shutil

    from safetensors.torch import save_file

    folder = os.fspath(folder)
    if os.path.exists(folder):
        if not overwrite:
            raise FileExistsError(f"{folder} exists (pass overwrite=True to replace an HDS adapter folder)")
        if not os.path.isfile(os.path.join(folder, ADAPTER_META)):
            raise FileExistsError(f"{folder} exists and is not an HDS adapter folder (no {ADAPTER_META}): "
                                  "not replacing it")
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(folder)}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()},
                  os.path.join(tmp, "adapter_model.safetensors"), metadata={"format": "pt"})
        cfg = dict(config)
        with open(os.path.join(tmp, "adapter_config.json"), "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True, default=_json_default)
        with open(os.path.join(tmp, ADAPTER_META), "w") as f:
            json.dump({"format": ADAPTER_FORMAT, "base_fingerprint": fingerprint, **(info or {})}, f, indent=1,
                      default=_json_default)
        from .._fsutil import chmod_tree_like_new

        chmod_tree_like_new(tmp)  # safetensors writes 0600: the adapter gets the permissions of its JSON files
        if os.path.exists(folder):
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _json_default(o):
    if isinstance(o, (set, frozenset, tuple)):
        return sorted(o) if isinstance(o, (set, frozenset)) else list(o)
    if hasattr(o, "value"):          # enums (peft's TaskType, ...)
        return o.value
    return str(o)


def adapter_of(model: nn.Module) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any], str]:
    """(state, config dict, base fingerprint) of a peft model's default adapter, as :func:`save_adapter`
    writes them."""
    from peft import get_peft_model_state_dict

    state = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}
    config = model.peft_config["default"].to_dict()
    return state, config, base_fingerprint(_adapted_base_weights(model))


def load_adapter(model: nn.Module, folder: Union[str, os.PathLike], *, check: bool = True) -> nn.Module:
    """Apply a saved HDS adapter to ``model`` (the base it was made from): returns the peft model (the
    adapter unmerged; ``model``'s weights are not changed, :func:`remove_adapter` gives them back
    bit-exact). With ``check`` (default) the base weights the adapter modifies must hash to the
    fingerprint saved with it (``ValueError`` otherwise, before anything is returned)."""
    import json

    from peft import PeftModel

    folder = os.fspath(folder)
    meta_path = os.path.join(folder, ADAPTER_META)
    for need in ("adapter_config.json", "adapter_model.safetensors"):
        if not os.path.isfile(os.path.join(folder, need)):
            raise FileNotFoundError(f"{folder} is not a PEFT adapter folder: {need} missing")
    meta = {}
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("format") != ADAPTER_FORMAT:
            raise ValueError(f"{meta_path}: unknown format {meta.get('format')!r}")
    wrapped = PeftModel.from_pretrained(model, folder, is_trainable=False)
    if check:
        want = meta.get("base_fingerprint")
        if want is None:
            remove_adapter(wrapped)
            raise ValueError(f"{folder} has no base fingerprint ({ADAPTER_META}); pass check=False to apply it "
                             "without checking the base model")
        got = base_fingerprint(_adapted_base_weights(wrapped))
        if got != want:
            remove_adapter(wrapped)
            raise ValueError(f"the model is not the base the adapter in {folder} was made from (the weights it "
                             "adapts differ); pass check=False to apply it anyway")
    return wrapped


def remove_adapter(model: nn.Module) -> nn.Module:
    """Revert :func:`load_adapter`: the base model with its original weights (the adapter was never
    merged, so they are bit-exact). A merged adapter cannot be removed exactly: ``ValueError``."""
    if not hasattr(model, "unload"):
        raise ValueError("not a peft model: no adapter to remove")
    for m in _lora_modules(model).values():
        if getattr(m, "merged", False):
            raise ValueError("the adapter was merged into the weights: removing it would not restore the "
                             "original weights exactly")
    return model.unload()
