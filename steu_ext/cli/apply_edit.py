"""``steu apply-edit`` and ``steu revert-edit``: one edit file applied to its base model, or reverted
(one handler, one option set)."""
from __future__ import annotations

from ._common import EXIT_OK, BadInput, _check_model_path, _check_out, _out_arg, _output_dir, _save_model


def register(sub) -> None:
    """``steu apply-edit`` and ``steu revert-edit`` and their options."""
    for name, revert in (("apply-edit", False), ("revert-edit", True)):
        p = sub.add_parser(name, help=("apply an edit to its base model" if not revert else
                                       "restore the original weights of an edited model"))
        p.add_argument("--model", required=True, help="base model (apply) or edited model (revert)")
        p.add_argument("--edit", required=True, help="edit .safetensors file")
        p.add_argument("--force", action="store_true", help="skip the check that the model matches the edit")
        _out_arg(p)
        p.set_defaults(func=(lambda a, r=revert: _edit_cmd(a, r)))


def _edit_cmd(a, revert: bool) -> int:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ..methods.edit import STEUEdit

    _check_out(a.out, a.overwrite, [a.model, a.edit])
    edit = STEUEdit.load(a.edit)
    _check_model_path(a.model)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(a.model)
        tok = AutoTokenizer.from_pretrained(a.model)
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot load a sequence classifier from {a.model!r}: {str(e).splitlines()[0]}") from None
    with _output_dir(a.out, a.overwrite, [a.model, a.edit]) as tmp:
        (edit.revert if revert else edit.apply)(model, check=not a.force)
        _save_model(model, tok, tmp)
    print(f"{'reverted' if revert else 'applied'} edit {a.edit} ({edit.row_ids.numel()} rows, "
          f"{len(edit.new_head)} head tensors, {edit.num_modified_elements:,} elements): saved to {a.out}")
    return EXIT_OK
