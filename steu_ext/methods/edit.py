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

from ..modeling.params import read_tensor

FORMAT = "steu_ext.edit/1"
_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


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

    def validate(self, model: Optional[nn.Module] = None) -> None:
        """Raise ``ValueError``/``TypeError`` unless every tensor of the edit is well formed (ids 1-D integer,
        unique, in range; ``old``/``new`` rows ``[R, D]``; the same head tensors on both sides, of equal shape
        and dtype) and, given ``model``, fits it exactly: the parameters exist, the embedding is ``[V, D]``
        with every id ``< V``, every head tensor has the parameter's shape (no broadcasting) and every tensor
        the parameter's dtype. Nothing is written."""
        if not isinstance(self.embedding, str) or not self.embedding:
            raise ValueError(f"the edit's embedding name must be a non-empty string, got {self.embedding!r}")
        for name, t in (("row_ids", self.row_ids), ("old_rows", self.old_rows), ("new_rows", self.new_rows)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"edit {name} must be a tensor, got {type(t).__name__}")
        ids = self.row_ids
        if ids.dim() != 1 or ids.dtype not in _INT_DTYPES:
            raise ValueError(f"edit row ids must be a 1-D integer tensor, got {ids.dtype} {tuple(ids.shape)}")
        R = ids.numel()
        for name, t in (("old_rows", self.old_rows), ("new_rows", self.new_rows)):
            if t.dim() != 2 or t.shape[0] != R:
                raise ValueError(f"edit {name} has shape {tuple(t.shape)}, expected [{R}, D] ({R} row ids)")
            if not t.is_floating_point():
                raise TypeError(f"edit {name} has dtype {t.dtype}, expected a floating dtype")
        if self.old_rows.shape != self.new_rows.shape or self.old_rows.dtype != self.new_rows.dtype:
            raise ValueError(f"edit old rows ({self.old_rows.dtype} {tuple(self.old_rows.shape)}) and new rows "
                             f"({self.new_rows.dtype} {tuple(self.new_rows.shape)}) differ in shape or dtype")
        if R:
            if int(ids.min()) < 0:
                raise ValueError(f"edit row ids contain {int(ids.min())}: ids must be >= 0")
            if torch.unique(ids).numel() != R:
                raise ValueError("edit row ids contain duplicates: such an edit cannot be reverted exactly")
        if not isinstance(self.old_head, Mapping) or not isinstance(self.new_head, Mapping):
            raise TypeError("edit old_head/new_head must be mappings of parameter name -> tensor")
        if set(self.old_head) != set(self.new_head):
            raise ValueError(f"edit head tensors differ between old {sorted(self.old_head)} and new "
                             f"{sorted(self.new_head)}")
        for n in self.new_head:
            o, w = self.old_head[n], self.new_head[n]
            if not isinstance(o, torch.Tensor) or not isinstance(w, torch.Tensor):
                raise TypeError(f"edit head tensor {n!r} is not a tensor")
            if o.shape != w.shape or o.dtype != w.dtype:
                raise ValueError(f"edit head tensor {n!r}: old {o.dtype} {tuple(o.shape)} and new {w.dtype} "
                                 f"{tuple(w.shape)} differ")
        if self.embedding in self.new_head:
            raise ValueError(f"edit names {self.embedding!r} both as the embedding and as a head tensor")
        if model is None:
            return
        params = _params(model)
        missing = [n for n in [self.embedding, *self.new_head] if n not in params]
        if missing:
            raise ValueError(f"the model has no parameters {missing}; this edit was made for another architecture")
        emb = params[self.embedding]
        if emb.dim() != 2 or emb.shape[1] != self.new_rows.shape[1] or (R and int(ids.max()) >= emb.shape[0]):
            raise ValueError(f"embedding {self.embedding} has shape {tuple(emb.shape)}, incompatible with the edit "
                             f"(rows of width {self.new_rows.shape[1]}, largest id "
                             f"{int(ids.max()) if R else None})")
        if self.new_rows.dtype != emb.dtype:
            raise TypeError(f"the edit's rows are {self.new_rows.dtype}, the model's embedding {self.embedding} is "
                            f"{emb.dtype}: load the model in the dtype the edit was made in")
        for n, t in self.new_head.items():
            p = params[n]
            if p is emb or (p.data_ptr() == emb.data_ptr() and p.numel() and emb.numel()):
                raise ValueError(f"head tensor {n!r} shares its storage with the embedding {self.embedding!r}")
            if tuple(t.shape) != tuple(p.shape):
                raise ValueError(f"head tensor {n!r} of the edit has shape {tuple(t.shape)}, the model's "
                                 f"{tuple(p.shape)}")
            if t.dtype != p.dtype:
                raise TypeError(f"head tensor {n!r} of the edit is {t.dtype}, the model's is {p.dtype}")

    def _write(self, model: nn.Module, src_rows, src_head, expect_rows, expect_head, check: bool, what: str):
        """Validate everything, check the expected values, then write; all-or-nothing."""
        self.validate(model)
        params = _params(model)
        emb = params[self.embedding]
        rows = self.row_ids.to(emb.device, torch.int64)
        if check:
            ok = torch.equal(emb.detach().index_select(0, rows).cpu(), expect_rows) and all(
                torch.equal(params[n].detach().cpu(), expect_head[n]) for n in expect_head)
            if not ok:
                raise ValueError(f"cannot {what}: the model's weights are not the ones this edit expects "
                                 f"(pass check=False to force)")
        with torch.no_grad():
            saved_rows = emb.detach().index_select(0, rows).clone()
            saved_head = {n: params[n].detach().clone() for n in src_head}
            try:
                emb.index_copy_(0, rows, src_rows.to(emb.device))
                for n, t in src_head.items():
                    params[n].copy_(t.to(params[n].device))
            except BaseException:   # put back what was written (e.g. a device OOM midway)
                emb.index_copy_(0, rows, saved_rows)
                for n, t in saved_head.items():
                    params[n].copy_(t)
                raise
        return model

    def apply(self, model: nn.Module, check: bool = True) -> nn.Module:
        """Write the new rows and head into ``model`` (in place); by default first verify that the model
        holds the original values, i.e. is the base this edit was made from."""
        return self._write(model, self.new_rows, self.new_head, self.old_rows, self.old_head, check, "apply")

    def revert(self, model: nn.Module, check: bool = True) -> nn.Module:
        """Restore the original rows and head (in place): the model becomes bit-identical to the base."""
        return self._write(model, self.old_rows, self.old_head, self.new_rows, self.new_head, check, "revert")

    def save(self, path: str | os.PathLike) -> None:
        """Write the edit (safetensors, atomically: a temporary file renamed at the end, removed on failure)."""
        from safetensors.torch import save_file

        from .._outdir import atomic_write

        self.validate()
        tensors = {"rows.ids": self.row_ids.contiguous(), "rows.old": self.old_rows.contiguous(),
                   "rows.new": self.new_rows.contiguous()}
        for n in self.new_head:
            tensors[f"head.old.{n}"] = self.old_head[n].contiguous()
            tensors[f"head.new.{n}"] = self.new_head[n].contiguous()
        md = {"format": FORMAT, "embedding": self.embedding, "head": json.dumps(list(self.new_head)),
              "meta": json.dumps(self.meta)}

        def write(tmp: str) -> None:
            from .._fsutil import chmod_like_new

            save_file(tensors, tmp, metadata=md)
            chmod_like_new(tmp)  # safetensors writes 0600; give the edit the permissions of the report beside it

        atomic_write(os.fspath(path), write)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "STEUEdit":
        """Read and validate an edit file; a missing, truncated, corrupt or inconsistent file is a
        ``FileNotFoundError``/``ValueError`` naming the file and the problem."""
        from safetensors import safe_open

        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"edit file not found: {path}")
        if os.path.isdir(path):
            hint = os.path.join(path, "edit.safetensors")
            raise ValueError(f"{path} is a folder; pass the edit file itself"
                             + (f" ({hint})" if os.path.isfile(hint) else " (an edit .safetensors file)"))
        try:
            with safe_open(path, "pt") as f:
                md = f.metadata() or {}
                keys = set(f.keys())
                if md.get("format") != FORMAT:
                    raise ValueError(f"{path} is not a steu_ext edit (format {md.get('format')!r})")
                missing = [k for k in ("embedding", "head") if k not in md]
                if missing:
                    raise ValueError(f"{path}: the edit file's metadata lacks {missing} (truncated or not "
                                     "written by steu_ext)")
                head = _json(md["head"], path, "head")
                meta = _json(md.get("meta", "{}"), path, "meta")
                if not isinstance(head, list) or not all(isinstance(n, str) for n in head) or len(set(head)) != len(head):
                    raise ValueError(f"{path}: the edit's head list must be distinct parameter names, got {head!r}")
                if not isinstance(meta, dict):
                    raise ValueError(f"{path}: the edit's meta must be a JSON object")
                need = ["rows.ids", "rows.old", "rows.new"] + [f"head.{s}.{n}" for n in head for s in ("old", "new")]
                absent = [k for k in need if k not in keys]
                if absent:
                    raise ValueError(f"{path}: the edit file lacks the tensors {absent}")
                edit = cls(md["embedding"], read_tensor(f, "rows.ids"), read_tensor(f, "rows.old"),
                           read_tensor(f, "rows.new"), {n: read_tensor(f, f"head.old.{n}") for n in head},
                           {n: read_tensor(f, f"head.new.{n}") for n in head}, meta)
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - safetensors raises SafetensorError/OSError for a bad file
            raise ValueError(f"{path} is not a readable edit file (truncated or corrupt?): "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        edit.validate()
        return edit


def _json(text: str, path: str, key: str):
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError, TypeError) as e:
        kind = "nested too deeply" if isinstance(e, RecursionError) else "not valid JSON"
        raise ValueError(f"{path}: the edit's {key!r} metadata is {kind}") from None
