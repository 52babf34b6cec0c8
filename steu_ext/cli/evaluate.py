"""``steu evaluate``: forget/retain F1 of a classifier, optionally with an edit applied."""
from __future__ import annotations

import os

from ._classifier import _check_same_labels, _encode_eval, _f1_report, _load_trained, _remap
from ._common import EXIT_OK, BadInput, _data_args, _load_data


def register(sub) -> None:
    """``steu evaluate`` and its options."""
    p = sub.add_parser("evaluate", help="forget/retain F1 of a classifier (optionally with an edit applied)")
    _data_args(p)
    p.add_argument("--model", required=True, help="fine-tuned sequence classifier (name or folder)")
    p.add_argument("--edit", help="edit file to apply before evaluating (the base is scored too)")
    p.add_argument("--target", required=True, help="the forgotten class, by name or index")
    p.add_argument("--max-length", type=int, default=128, help="tokens per document (longer ones are cut)")
    p.add_argument("--out", help="write the figures to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(a) -> int:
    from ..methods.edit import STEUEdit
    from ..modeling.encoders import is_multi_label
    from ..modeling.labels import resolve_target

    data = _load_data(a)
    model, tok, names = _load_trained(a.model)
    _check_same_labels(data, names, "data's")
    data = _remap(data, names)
    target = resolve_target(a.target, names)
    from ..eval.vacuity import format_warnings, vacuity_warnings

    edit = STEUEdit.load(a.edit) if a.edit else None
    enc = _encode_eval(tok, data, names, a.max_length)
    multi = is_multi_label(model)
    # with an edit, the base model is scored too: a target it never predicted makes "forget F1 0" vacuous
    base = _f1_report(model, enc, target, names, multi) if edit is not None else None
    if edit is not None:
        edit.apply(model)
    rep = _f1_report(model, enc, target, names, multi)
    warnings = vacuity_warnings(names[target], n_eval_target_docs=rep["target_docs"],
                                before_forget_f1=base["forget_f1"] if base else None,
                                before_predicted=base["target_predicted"] if base else None)
    rep.update({"model": a.model, "edit": a.edit, "data": a.data, "target_name": names[target],
                "warnings": warnings})
    if base is not None:
        rep["before_edit"] = {k: base[k] for k in ("forget_f1", "retain_macro_f1", "per_class_f1")}
        print(f"without the edit:  forget F1 ({names[target]}): {base['forget_f1']:.4f}   retain avg F1: "
              f"{base['retain_macro_f1']:.4f}")
    print(f"forget F1 ({names[target]}): {rep['forget_f1']:.4f}   retain avg F1: {rep['retain_macro_f1']:.4f}")
    for n, f in rep["per_class_f1"].items():
        print(f"  {n:<32} {f:.4f}")
    if warnings:
        print(format_warnings(warnings))
    if a.out:
        from ..eval.report import write_json

        if os.path.isdir(a.out):
            raise BadInput(f"--out {a.out} is a folder; name a JSON file")
        if os.path.exists(a.out) and not a.overwrite:
            raise BadInput(f"{a.out} already exists (use --overwrite)")
        write_json(a.out, rep)
    return EXIT_OK
