"""A stack of edits on one base model: deletion requests that arrive one at a time, each an
:class:`~steu_ext.methods.edit.STEUEdit` made on the model as it was after the previous ones.

A model folder records the edits applied to it under ``steu_edits/``: ``stack.json`` (the applied edits in
order, with what each touched) and one safetensors file per edit (old and new values; no pickle).

* :meth:`EditStack.push` applies an edit (checking that the model holds the values the edit expects) and
  records it;
* :meth:`EditStack.revert` takes one back out: the latest always; an earlier one only when none of the
  embedding rows and head entries it changed was changed by a later edit still applied (otherwise
  ``ValueError`` naming the later edit and what it touched). The reverted entries get their values from
  before the edit back, bit for bit; every other entry keeps its value.

Granularity: embedding rows (an edit stores whole rows) and head elements (an edit stores whole head
tensors, but touches only the elements whose old and new values differ).

    stack = EditStack.load("model_dir")              # empty when the folder has no steu_edits/
    stack.push(model, STEUEdit.load("forget_a.safetensors"), name="request 17")
    stack.revert(model)                              # the latest; revert(model, edit_id=1): an earlier one
    stack.save("model_dir")                          # steu_edits/stack.json + edit files
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

import torch
from torch import nn

from .edit import STEUEdit

__all__ = ["EditStack", "StackEntry", "STACK_DIR", "STACK_FILE", "STACK_FORMAT"]

STACK_DIR = "steu_edits"
STACK_FILE = "stack.json"
STACK_FORMAT = "steu_ext.edit_stack/1"


def _params(model: nn.Module) -> Dict[str, torch.Tensor]:
    return dict(model.named_parameters(remove_duplicate=False))


def _head_masks(edit: STEUEdit) -> Dict[str, torch.Tensor]:
    """Per head tensor, the elements the edit changed (old != new)."""
    return {n: edit.old_head[n] != edit.new_head[n] for n in edit.new_head}


@dataclass
class StackEntry:
    id: int                       # 1, 2, ... in the order applied (never reused within a folder)
    name: str
    file: str                     # the edit's file under steu_edits/
    sha256: Optional[str]         # of that file (None until first saved)
    applied_at: str
    edit: STEUEdit = field(repr=False)
    source: Optional[str] = field(default=None, repr=False)   # where the file is now (None: not yet written)

    def summary(self) -> Dict[str, Any]:
        masks = _head_masks(self.edit)
        return {"id": self.id, "name": self.name, "file": self.file, "sha256": self.sha256,
                "applied_at": self.applied_at, "embedding": self.edit.embedding,
                "rows": self.edit.row_ids.tolist(),
                "head": {n: int(m.sum()) for n, m in masks.items()},
                "elements_modified": self.edit.num_modified_elements,
                "target_name": self.edit.meta.get("target_name"), "method": self.edit.meta.get("method")}


class EditStack:
    """The edits applied, in order, to one model (see the module docstring)."""

    def __init__(self, entries: Optional[List[StackEntry]] = None, next_id: int = 1):
        self.entries: List[StackEntry] = list(entries or [])
        self.next_id = next_id

    # -- persistence ----------------------------------------------------------------------------------

    @classmethod
    def load(cls, folder: Union[str, os.PathLike]) -> "EditStack":
        """The stack recorded in ``folder/steu_edits`` (empty when there is none)."""
        root = os.path.join(os.fspath(folder), STACK_DIR)
        path = os.path.join(root, STACK_FILE)
        if not os.path.exists(path):
            if os.path.isdir(root) and os.listdir(root):
                raise ValueError(f"{root} exists but has no {STACK_FILE}: not an edit stack")
            return cls()
        with open(path, encoding="utf-8") as f:
            try:
                doc = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not valid JSON: {e}") from None
        if doc.get("format") != STACK_FORMAT:
            raise ValueError(f"{path} is not a steu_ext edit stack (format {doc.get('format')!r})")
        entries = []
        for rec in doc["edits"]:
            fpath = os.path.join(root, rec["file"])
            if not os.path.isfile(fpath):
                raise ValueError(f"{path} lists edit {rec['id']} in {rec['file']}, which is missing")
            if _sha256(fpath) != rec["sha256"]:
                raise ValueError(f"{fpath} does not match the checksum recorded in {path}: the stack is damaged")
            entries.append(StackEntry(rec["id"], rec["name"], rec["file"], rec["sha256"], rec["applied_at"],
                                      STEUEdit.load(fpath), source=fpath))
        return cls(entries, int(doc.get("next_id", 1 + max((e.id for e in entries), default=0))))

    def save(self, folder: Union[str, os.PathLike]) -> str:
        """Write ``folder/steu_edits`` (edit files first, then ``stack.json`` atomically); files of edits
        no longer on the stack are removed (they were written by this class)."""
        from .._fsutil import chmod_like_new

        root = os.path.join(os.fspath(folder), STACK_DIR)
        os.makedirs(root, exist_ok=True)
        for e in self.entries:
            path = os.path.join(root, e.file)
            if e.source is None:
                e.edit.save(path)
            elif os.path.abspath(e.source) != os.path.abspath(path):
                shutil.copyfile(e.source, path)
                chmod_like_new(path)
            digest = _sha256(path)
            if e.sha256 is not None and digest != e.sha256:
                raise ValueError(f"{path} does not match its recorded checksum")
            e.sha256, e.source = digest, path
        doc = {"format": STACK_FORMAT, "next_id": self.next_id,
               "edits": [{k: v for k, v in e.summary().items()} for e in self.entries]}
        tmp = os.path.join(root, STACK_FILE + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
        chmod_like_new(tmp)
        os.replace(tmp, os.path.join(root, STACK_FILE))
        keep = {e.file for e in self.entries} | {STACK_FILE}
        for name in os.listdir(root):
            if name.startswith("edit-") and name.endswith(".safetensors") and name not in keep:
                os.remove(os.path.join(root, name))
        return root

    # -- operations -----------------------------------------------------------------------------------

    def list(self) -> List[Dict[str, Any]]:
        return [e.summary() for e in self.entries]

    def _find(self, edit_id: Optional[int]) -> int:
        if not self.entries:
            raise ValueError("no edit is applied: nothing to revert")
        if edit_id is None:
            return len(self.entries) - 1
        for i, e in enumerate(self.entries):
            if e.id == edit_id:
                return i
        raise ValueError(f"no applied edit has id {edit_id}; applied: {[e.id for e in self.entries]}")

    def push(self, model: nn.Module, edit: STEUEdit, name: Optional[str] = None) -> StackEntry:
        """Apply ``edit`` to ``model`` (in place; ``ValueError`` before any write when the model does not
        hold the values the edit was made from) and record it on top of the stack."""
        if self.entries and edit.embedding != self.entries[0].edit.embedding:
            raise ValueError(f"the edit is for {edit.embedding}, the stack's edits for "
                             f"{self.entries[0].edit.embedding}: another architecture")
        edit.apply(model, check=True)
        eid = self.next_id
        file = f"edit-{eid:04d}.safetensors"
        entry = StackEntry(eid, name or edit.meta.get("target_name") or f"edit {eid}", file, None,
                           time.strftime("%Y-%m-%dT%H:%M:%S%z"), edit)
        self.entries.append(entry)
        self.next_id += 1
        return entry

    def conflicts(self, edit_id: Optional[int] = None) -> List[str]:
        """Why edit ``edit_id`` (default: the latest) cannot be reverted now: one line per later edit that
        changed one of its rows or head elements (empty: it can be)."""
        i = self._find(edit_id)
        e = self.entries[i].edit
        rows = set(e.row_ids.tolist())
        masks = _head_masks(e)
        out = []
        for later in self.entries[i + 1:]:
            shared_rows = sorted(rows & set(later.edit.row_ids.tolist()))
            lm = _head_masks(later.edit)
            shared_head = {n: int((masks[n] & lm[n]).sum()) for n in masks if n in lm and bool((masks[n] & lm[n]).any())}
            if shared_rows or shared_head:
                what = []
                if shared_rows:
                    what.append(f"{len(shared_rows)} embedding row(s) ({shared_rows[:5]}{'...' if len(shared_rows) > 5 else ''})")
                if shared_head:
                    what.append("head " + ", ".join(f"{n} ({k} element(s))" for n, k in shared_head.items()))
                out.append(f"later edit {later.id} ({later.name!r}) changed " + " and ".join(what))
        return out

    def revert(self, model: nn.Module, edit_id: Optional[int] = None) -> StackEntry:
        """Take edit ``edit_id`` (default: the latest) out of ``model`` (in place) and off the stack.
        ``ValueError`` before any write when a later edit touched the same rows or head elements, or when
        the model does not hold the values the stack says it should."""
        i = self._find(edit_id)
        entry = self.entries[i]
        why = self.conflicts(entry.id)
        if why:
            raise ValueError(f"cannot revert edit {entry.id} ({entry.name!r}) while later edits are applied: "
                             + "; ".join(why) + ". Revert those first.")
        e = entry.edit
        params = _params(model)
        missing = [n for n in [e.embedding, *e.new_head] if n not in params]
        if missing:
            raise ValueError(f"the model has no parameters {missing}: not the model of this stack")
        emb = params[e.embedding]
        rows = e.row_ids.to(emb.device)
        masks = _head_masks(e)
        ok = torch.equal(emb.detach().index_select(0, rows).cpu(), e.new_rows.to(emb.dtype)) and all(
            torch.equal(params[n].detach().cpu()[m], e.new_head[n].to(params[n].dtype)[m]) for n, m in masks.items())
        if not ok:
            raise ValueError(f"cannot revert edit {entry.id} ({entry.name!r}): the model does not hold the values "
                             "it wrote (the weights were changed outside the stack)")
        with torch.no_grad():
            emb.index_copy_(0, rows, e.old_rows.to(emb.device, emb.dtype))
            for n, m in masks.items():
                p = params[n]
                dev_m = m.to(p.device)
                p[dev_m] = e.old_head[n].to(p.device, p.dtype)[dev_m]
        del self.entries[i]
        return entry

    def verify(self, model: nn.Module) -> List[str]:
        """Problems found comparing ``model`` with the stack: every entry an applied edit wrote and no later
        one overwrote must hold that edit's new value (empty list: consistent)."""
        params = _params(model)
        problems = []
        for i, entry in enumerate(self.entries):
            e = entry.edit
            if any(n not in params for n in [e.embedding, *e.new_head]):
                problems.append(f"edit {entry.id}: the model lacks its parameters")
                continue
            later_rows = {r for x in self.entries[i + 1:] for r in x.edit.row_ids.tolist()}
            emb = params[e.embedding].detach().cpu()
            for j, r in enumerate(e.row_ids.tolist()):
                if r not in later_rows and not torch.equal(emb[r], e.new_rows[j].to(emb.dtype)):
                    problems.append(f"edit {entry.id}: embedding row {r} differs from the value it wrote")
                    break
            for n, m in _head_masks(e).items():
                for x in self.entries[i + 1:]:
                    if n in x.edit.new_head:
                        m = m & ~_head_masks(x.edit)[n]
                cur = params[n].detach().cpu()
                if not torch.equal(cur[m], e.new_head[n].to(cur.dtype)[m]):
                    problems.append(f"edit {entry.id}: head {n} differs from the values it wrote")
        return problems


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def copy_model_folder(src: str, dst: str) -> None:
    """Copy a model folder's files (not its edit stack) into ``dst``."""
    for name in os.listdir(src):
        if name == STACK_DIR:
            continue
        s = os.path.join(src, name)
        (shutil.copytree if os.path.isdir(s) else shutil.copy2)(s, os.path.join(dst, name))
