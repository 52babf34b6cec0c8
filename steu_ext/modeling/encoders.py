"""Helpers for HF sequence classifiers (encoder models with a classification head), shared by the methods,
the evaluation and the integrations: locating the embedding table, the head and its output layer, batching
tokenized text (:class:`Encoded`), running predictions, pooling last-layer features."""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

# model_type -> attribute names of the classification head (everything after the pooled features)
HEAD_MODULES: Dict[str, Tuple[str, ...]] = {
    "bert": ("classifier",),
    "distilbert": ("pre_classifier", "classifier"),
    "roberta": ("classifier",),
    "xlm-roberta": ("classifier",),
    "camembert": ("classifier",),
    "electra": ("classifier",),
    "albert": ("classifier",),
    "mpnet": ("classifier",),
    "deberta": ("pooler", "classifier"),
    "deberta-v2": ("pooler", "classifier"),
    "modernbert": ("head", "classifier"),
}


def find_head(model: nn.Module, head_modules: Optional[Sequence[str]] = None) -> Dict[str, nn.Parameter]:
    """Parameters of the classification head, by qualified name (``head_modules`` overrides the lookup
    by ``model.config.model_type``)."""
    names = list(head_modules) if head_modules else None
    if names is None:
        mt = getattr(getattr(model, "config", None), "model_type", None)
        names = list(HEAD_MODULES.get(mt, ()))
        if not names and hasattr(model, "classifier"):
            names = ["classifier"]
    if not names:
        raise ValueError(f"cannot find the classification head of a {type(model).__name__}; "
                         "pass head_modules=[...] with the head's module names")
    modules = dict(model.named_modules())
    out: Dict[str, nn.Parameter] = {}
    for name in names:
        if name not in modules:
            raise ValueError(f"the model has no module {name!r} (is it a sequence classifier?)")
        for pname, p in modules[name].named_parameters():
            out[f"{name}.{pname}"] = p
    if not out:
        raise ValueError(f"head modules {names} have no parameters")
    return out


def output_layer(model: nn.Module, head_modules: Optional[List[str]]) -> nn.Linear:
    """The head's output layer: the last ``nn.Linear`` with ``num_labels`` outputs inside the head modules
    (:func:`find_head`, which also validates that the head exists)."""
    find_head(model, head_modules)  # validates the head exists
    names = head_modules or None
    linears = [m for n, m in model.named_modules() if isinstance(m, nn.Linear)
               and m.out_features == model.config.num_labels
               and (names is None or any(n == h or n.startswith(h + ".") for h in names))]
    if not linears:
        raise ValueError("cannot find the output layer (a Linear with num_labels outputs) of the head")
    return linears[-1]


def embedding_param_name(model: nn.Module) -> str:
    """Qualified name of the input word-embedding weight (via ``get_input_embeddings()``)."""
    emb = model.get_input_embeddings()
    if emb is None or not isinstance(getattr(emb, "weight", None), torch.Tensor):
        raise ValueError(f"{type(model).__name__} has no input embedding table")
    for name, p in model.named_parameters(remove_duplicate=False):
        if p is emb.weight:
            return name
    raise ValueError("the input embedding weight is not a parameter of the model")


def is_multi_label(model: nn.Module, override: Optional[bool] = None) -> bool:
    if override is not None:
        return bool(override)
    return getattr(model.config, "problem_type", None) == "multi_label_classification"


class Encoded:
    """Tokenized texts (unpadded id lists) with a ``[N, C]`` float label matrix; yields padded batches."""

    def __init__(self, tokenizer, texts: Sequence[str], labels: torch.Tensor, max_length: int,
                 batch_size: int = 256):
        self.tokenizer = tokenizer
        self.input_ids: List[List[int]] = []
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[i:i + batch_size]), truncation=True, max_length=max_length)
            self.input_ids.extend(enc["input_ids"])
        self.labels = labels

    def __len__(self) -> int:
        return len(self.input_ids)

    def subset(self, idx: Sequence[int]) -> "Encoded":
        out = Encoded.__new__(Encoded)
        out.tokenizer, out.labels = self.tokenizer, self.labels[list(idx)]
        out.input_ids = [self.input_ids[i] for i in idx]
        return out

    def batch(self, idx: Sequence[int]) -> Dict[str, torch.Tensor]:
        ids = [self.input_ids[i] for i in idx]
        L = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(ids), L), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), L), dtype=torch.long)
        for r, x in enumerate(ids):
            input_ids[r, :len(x)] = torch.tensor(x)
            mask[r, :len(x)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def batches(self, idx: Sequence[int], batch_size: int) -> Iterator[Tuple[List[int], Dict[str, torch.Tensor]]]:
        idx = list(idx)
        for i in range(0, len(idx), batch_size):
            part = idx[i:i + batch_size]
            yield part, self.batch(part)


@torch.no_grad()
def predict_logits(model: nn.Module, data: Encoded, idx: Optional[Sequence[int]] = None,
                   batch_size: int = 64) -> torch.Tensor:
    """Logits ``[len(idx), C]`` in eval mode (float32, on CPU)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    idx = range(len(data)) if idx is None else idx
    out = []
    for _, b in data.batches(idx, batch_size):
        out.append(model(**{k: v.to(device) for k, v in b.items()}).logits.float().cpu())
    model.train(was_training)
    C = model.config.num_labels
    return torch.cat(out) if out else torch.zeros(0, C)


def predictions(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """0/1 predictions ``[N, C]``: sigmoid > 0.5 for multi-label heads, one-hot argmax otherwise."""
    if multi_label:
        return (logits > 0).to(torch.int64)
    return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(torch.int64)


def pooled_features(hidden: torch.Tensor, attention_mask: torch.Tensor) -> Dict[str, torch.Tensor]:
    """``{"mean", "cls"}`` float32 ``[B, D]``: the attention-masked mean and the first position ([CLS]) of a
    last-layer hidden state ``[B, L, D]`` — the features a linear probe reads (:mod:`steu_ext.eval.probe`)."""
    h = hidden.float()
    m = attention_mask.unsqueeze(-1).to(h.dtype)
    return {"mean": (h * m).sum(1) / m.sum(1).clamp_min(1), "cls": h[:, 0]}


def last_hidden(outputs) -> torch.Tensor:
    """The last layer's hidden states of a forward pass run with ``output_hidden_states=True``."""
    hs = getattr(outputs, "hidden_states", None)
    if not hs:
        raise ValueError("the model returned no hidden states (output_hidden_states=True is not supported "
                         "by this architecture); use STEUConfig(objective='paper')")
    return hs[-1]
