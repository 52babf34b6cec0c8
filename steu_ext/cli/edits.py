"""``steu edits list|apply|revert``: the stack of edits recorded in a model folder."""
from __future__ import annotations

import os

from ._common import EXIT_OK, BadInput, _HelpFormatter, _out_arg, _output_dir, _save_model


def register(sub) -> None:
    """``steu edits`` with its actions ``list``, ``apply``, ``revert`` and their options."""
    p = sub.add_parser("edits", help="a stack of edits on one model folder: list, apply, revert",
                       description="A model folder records the edits applied to it in steu_edits/ (safetensors + "
                                   "JSON). apply: add an edit made on the folder's current weights; revert: take "
                                   "out the latest, or an earlier one whose rows and head entries no later edit "
                                   "touched; every step bit-exact.")
    es = p.add_subparsers(dest="action", required=True)
    for action, text in (("list", "the applied edits, whether the weights match, which can be reverted"),
                         ("apply", "apply an edit on top of the stack"),
                         ("revert", "revert the latest edit, or --id an earlier one")):
        q = es.add_parser(action, help=text, formatter_class=_HelpFormatter)
        q.add_argument("--model", required=True, help="model folder (with or without steu_edits/)")
        if action == "apply":
            q.add_argument("--edit", required=True, help="edit .safetensors file made on the folder's weights")
            q.add_argument("--name", default=None, help="a name for the record (default: the forgotten class)")
        if action == "revert":
            q.add_argument("--id", type=int, default=None, help="edit id (see `steu edits list`; default: latest)")
        if action != "list":
            _out_arg(q)
        q.set_defaults(func=cmd_edits, command="edits")


def cmd_edits(a) -> int:
    """``steu edits list|apply|revert``: the stack of edits recorded in a model folder."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ..methods.edit import STEUEdit
    from ..methods.edit_stack import EditStack

    if not os.path.isdir(a.model):
        raise BadInput(f"model folder not found: {a.model}")
    stack = EditStack.load(a.model)
    edit = STEUEdit.load(a.edit) if a.action == "apply" else None
    try:
        model = AutoModelForSequenceClassification.from_pretrained(a.model)
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot load a sequence classifier from {a.model!r}: {str(e).splitlines()[0]}") from None
    if a.action == "list":
        if not stack.entries:
            print(f"{a.model}: no edits applied")
            return EXIT_OK
        print(f"{'id':>4}  {'name':<24} {'rows':>6} {'head elements':>14} {'elements':>10}  applied")
        for e in stack.list():
            print(f"{e['id']:>4}  {str(e['name'])[:24]:<24} {len(e['rows']):>6} {sum(e['head'].values()):>14} "
                  f"{e['elements_modified']:>10}  {e['applied_at']}")
        problems = stack.verify(model)
        print("weights match the stack" if not problems else "WARNING: " + "; ".join(problems))
        for e in stack.entries[:-1]:
            why = stack.conflicts(e.id)
            print(f"edit {e.id}: " + ("revertible now" if not why else "revert needs later edits reverted first ("
                                      + "; ".join(why) + ")"))
        return EXIT_OK
    tok = AutoTokenizer.from_pretrained(a.model)
    if a.action == "apply":
        entry = stack.push(model, edit, name=a.name)
        what = f"applied edit {entry.id} ({entry.name!r}) from {a.edit}"
    else:
        entry = stack.revert(model, a.id)
        what = f"reverted edit {entry.id} ({entry.name!r})"
    same = os.path.abspath(a.out) == os.path.abspath(a.model)
    if same and not a.overwrite:
        raise BadInput("--out is the model folder: pass --overwrite to update it in place")
    # in place (--out is --model, with --overwrite): allowed only for a folder steu wrote (marker file)
    with _output_dir(a.out, a.overwrite, [getattr(a, "edit", None)] + ([] if same else [a.model])) as tmp:
        _save_model(model, tok, tmp)
        stack.save(tmp)
    print(f"{what}: {len(stack.entries)} edit(s) applied, saved to {a.out}")
    return EXIT_OK
