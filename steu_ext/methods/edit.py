"""An auditable, reversible weight edit: exactly which embedding rows and head tensors changed,
with their old and new values, saved as safetensors.

    edit = result.edit
    edit.save("forget_cardiology.safetensors")
    model = AutoModelForSequenceClassification.from_pretrained(base)   # a fresh copy of the base model
    STEUEdit.load("forget_cardiology.safetensors").apply(model)          # now the unlearned model
    edit.revert(model)                                                   # bit-identical to the base again
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional

import torch
from torch import nn

FORMAT = "steu_ext.edit/1"


def _params(model: nn.Module) -> Dict[str, torch.Tensor]:
    return dict(model.named_parameters(remove_duplicate=False))


@dataclass
class STEUEdit:
    embedding: str                 # qualified name of the word-embedding weight
    row_ids: torch.Tensor          # int64 [R]: the rows that changed
    old_rows: torch.Tensor         # [R, D]
    new_rows: torch.Tensor         # [R, D]
    old_head: Dict[str, torch.Tensor]
    new_head: Dict[str, torch.Tensor]
    meta: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_diff(cls, original: Mapping[str, torch.Tensor], model: nn.Module, embedding: str,
                  head: Mapping[str, Any], meta: Optional[Dict[str, Any]] = None) -> "STEUEdit":
        """Build the edit from a snapshot of the original parameters and the edited model; only rows
        with at least one changed element are kept."""
        params = _params(model)
        new = params[embedding].detach()
        old = original[embedding].to(new.device)
        rows = (new != old).any(dim=1).nonzero().flatten()
        return cls(embedding, rows.cpu(), old.index_select(0, rows).cpu().clone(),
                   new.index_select(0, rows).cpu().clone(),
                   {n: original[n].detach().cpu().clone() for n in head},
                   {n: params[n].detach().cpu().clone() for n in head}, dict(meta or {}))

    @property
    def num_modified_elements(self) -> int:
        """Elements whose value differs between old and new (exact)."""
        n = int((self.old_rows != self.new_rows).sum())
        return n + sum(int((self.old_head[k] != self.new_head[k]).sum()) for k in self.new_head)

    @property
    def num_stored_elements(self) -> int:
        return self.new_rows.numel() + sum(t.numel() for t in self.new_head.values())

    def _write(self, model: nn.Module, src_rows, src_head, expect_rows, expect_head, check: bool, what: str):
        params = _params(model)
        missing = [n for n in [self.embedding, *self.new_head] if n not in params]
        if missing:
            raise ValueError(f"the model has no parameters {missing}; this edit was made for another architecture")
        emb = params[self.embedding]
        if emb.shape[1] != self.new_rows.shape[1] or (self.row_ids.numel() and int(self.row_ids.max()) >= emb.shape[0]):
            raise ValueError(f"embedding {self.embedding} has shape {tuple(emb.shape)}, incompatible with the edit")
        rows = self.row_ids.to(emb.device)
        if check:
            ok = torch.equal(emb.detach().index_select(0, rows).cpu(), expect_rows.to(emb.dtype)) and all(
                torch.equal(params[n].detach().cpu(), expect_head[n].to(params[n].dtype)) for n in expect_head)
            if not ok:
                raise ValueError(f"cannot {what}: the model's weights are not the ones this edit expects "
                                 f"(pass check=False to force)")
        with torch.no_grad():
            emb.index_copy_(0, rows, src_rows.to(emb.device, emb.dtype))
            for n, t in src_head.items():
                params[n].copy_(t.to(params[n].device, params[n].dtype))
        return model

    def apply(self, model: nn.Module, check: bool = True) -> nn.Module:
        """Write the new rows and head into ``model`` (in place); by default first verify that the model
        holds the original values, i.e. is the base this edit was made from."""
        return self._write(model, self.new_rows, self.new_head, self.old_rows, self.old_head, check, "apply")

    def revert(self, model: nn.Module, check: bool = True) -> nn.Module:
        """Restore the original rows and head (in place): the model becomes bit-identical to the base."""
        return self._write(model, self.old_rows, self.old_head, self.new_rows, self.new_head, check, "revert")

    def save(self, path: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        tensors = {"rows.ids": self.row_ids.contiguous(), "rows.old": self.old_rows.contiguous(),
                   "rows.new": self.new_rows.contiguous()}
        for n in self.new_head:
            tensors[f"head.old.{n}"] = self.old_head[n].contiguous()
            tensors[f"head.new.{n}"] = self.new_head[n].contiguous()
        tmp = f"{os.fspath(path)}.tmp"
        save_file(tensors, tmp, metadata={"format": FORMAT, "embedding": self.embedding,
                                          "head": json.dumps(list(self.new_head)),
                                          "meta": json.dumps(self.meta)})
        from .._fsutil import chmod_like_new

        chmod_like_new(tmp)  # safetensors writes 0600; give the edit the permissions of the report beside it
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "STEUEdit":
        from safetensors import safe_open

        if not os.path.exists(path):
            raise FileNotFoundError(f"edit file not found: {path}")
        with safe_open(os.fspath(path), "pt") as f:
            md = f.metadata() or {}
            if md.get("format") != FORMAT:
                raise ValueError(f"{path} is not a steu_ext edit (format {md.get('format')!r})")
            head = json.loads(md["head"])
            return cls(md["embedding"], f.get_tensor("rows.ids"), f.get_tensor("rows.old"),
                       f.get_tensor("rows.new"), {n: f.get_tensor(f"head.old.{n}") for n in head},
                       {n: f.get_tensor(f"head.new.{n}") for n in head}, json.loads(md.get("meta", "{}")))
