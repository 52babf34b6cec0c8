"""``steu unlearn``: unlearn a class from a fine-tuned classifier with STEU."""
from __future__ import annotations

import os
from typing import List

from ._classifier import _check_same_labels, _encode_eval, _f1_report, _load_trained, _remap
from ._common import (
    EXIT_OK,
    BadInput,
    _check_out,
    _config,
    _data_args,
    _load_data,
    _out_arg,
    _output_dir,
    _save_model,
    _steu_args,
)


def register(sub) -> None:
    """``steu unlearn`` and its options."""
    p = sub.add_parser("unlearn", help="unlearn a class from a fine-tuned classifier with STEU")
    _data_args(p)
    p.add_argument("--eval-data", help="held-out labelled file for before/after F1")
    p.add_argument("--model", required=True, help="fine-tuned sequence classifier (name or folder)")
    p.add_argument("--target", required=True, help="class to forget, by name or index")
    _steu_args(p)
    p.add_argument("--counts", default=None, help="folder written by `steu pmi` with the same tokenizer: use its "
                                                  "token statistics instead of counting --data")
    p.add_argument("--save-model", action="store_true", help="also save the edited model (edit file always)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _out_arg(p)
    p.set_defaults(func=cmd_unlearn)


def _n_carrying(data, target: int) -> int:
    return sum(target in ys for ys in data.labels)


def _precomputed_counts(path: str, tok, names: List[str]):
    """Counts saved by `steu pmi`, checked against the model's tokenizer and put in the model's class order."""
    from ..data.corpus_pmi import load_counts

    cc = load_counts(path, tok)
    if sorted(cc.label_names) != sorted(names):
        raise BadInput(f"the counts in {path} are over the classes {cc.label_names}, the model's are {names}")
    order = [cc.label_names.index(n) for n in names]
    c = cc.counter
    from ..ops.sparse_doc_counts import SparsePMICounter

    if isinstance(c, SparsePMICounter):  # STEU takes dense counts: expand when they fit
        if c.num_classes * c.num_tokens * 8 > 4 << 30:
            raise BadInput(f"the sparse counts in {path} ({c.num_classes} classes x {c.num_tokens} tokens) are "
                           "too large to expand for `steu unlearn`; use steu_ext.data.corpus_pmi."
                           "load_class_counts(path, target) for one class")
        from ..ops.doc_counts import PMICounter

        d = PMICounter(c.num_tokens, c.num_classes)
        d.counts, d.doc_freq, d.class_docs, d.n_docs = c.to_dense(), c.doc_freq, c.class_docs, c.n_docs
        c = d
    c.counts, c.class_docs = c.counts[order].contiguous(), c.class_docs[order].contiguous()
    return c


def cmd_unlearn(a) -> int:
    import time

    from ..eval.metrics import modified_parameters, snapshot
    from ..eval.report import write_json
    from ..methods.steu import unlearn
    from ..modeling.encoders import is_multi_label
    from ..modeling.labels import resolve_target

    _check_out(a.out, a.overwrite, [a.data, a.eval_data, a.model, a.counts])
    data = _load_data(a)
    eval_data = None
    if a.eval_data:
        from ..data.loaders import load_text_classification

        eval_data = load_text_classification(a.eval_data, a.text_column, a.label_column, a.label_sep)
    model, tok, names = _load_trained(a.model)
    _check_same_labels(data, names, "data's")
    data = _remap(data, names)
    target = resolve_target(a.target, names)
    cfg = _config(a)
    cfg.validate(model.get_input_embeddings().weight.shape[0])
    from ..eval.vacuity import format_warnings, refuse_vacuous, vacuity_warnings

    n_forget = _n_carrying(data, target)
    refuse_vacuous(n_forget, names[target], k=cfg.k, train_head=cfg.train_head,
                   n_retain_docs=len(data) - n_forget)
    counts = _precomputed_counts(a.counts, tok, names) if a.counts else None
    multi = is_multi_label(model)
    enc_eval = None
    if eval_data is not None:
        _check_same_labels(eval_data, names, "evaluation data's")
        enc_eval = _encode_eval(tok, _remap(eval_data, names), names, a.max_length)
    with _output_dir(a.out, a.overwrite, [a.data, a.eval_data, a.model, a.counts]) as tmp:
        before = _f1_report(model, enc_eval, target, names, multi) if enc_eval else None
        original = snapshot(model)
        t0 = time.perf_counter()
        res = unlearn(model, tok, data.text, data.labels, target, config=cfg, label_names=names,
                      progress=not a.quiet, counts=counts)
        wall = time.perf_counter() - t0
        after = _f1_report(model, enc_eval, target, names, multi) if enc_eval else None
        mod = modified_parameters(model, original)
        warnings = vacuity_warnings(names[target], evaluated=before is not None, k=cfg.k, n_forget_docs=n_forget,
                                    before_forget_f1=before["forget_f1"] if before else None,
                                    before_predicted=before["target_predicted"] if before else None,
                                    n_eval_target_docs=before["target_docs"] if before else None)
        res.edit.meta["base_model"] = os.path.abspath(a.model) if os.path.exists(a.model) else a.model
        res.edit.save(os.path.join(tmp, "edit.safetensors"))
        if a.save_model:
            _save_model(model, tok, os.path.join(tmp, "model"))
        report = {"method": "steu", "model": a.model, "target": target, "target_name": names[target],
                  "warnings": warnings, "edit": os.path.join(tmp, "edit.safetensors"),
                  "model_saved": os.path.join(tmp, "model") if a.save_model else None, "label_names": names, "data": a.data, "eval_data": a.eval_data, "counts": a.counts, "config": vars(cfg),
                  "before": before, "after": after,
                  "params_modified": {"count": mod["modified"], "total": mod["total"], "percent": mod["percent"],
                                      "per_tensor": mod["per_tensor"]},
                  "selected_tokens": [{"id": int(i), "token": tok.convert_ids_to_tokens(int(i)), "score": float(s)}
                                      for i, s in zip(res.selected_tokens, res.token_scores)],
                  "seconds": {**res.seconds, "wall": wall}, "history": res.history}
        write_json(os.path.join(tmp, "report.json"), report)
    print(f"unlearned {names[target]!r}: {mod['modified']:,} parameters modified ({mod['percent']:.3f} %), "
          f"{wall:.1f} s")
    if before and after:
        print(f"forget F1 {before['forget_f1']:.4f} -> {after['forget_f1']:.4f}; retain avg F1 "
              f"{before['retain_macro_f1']:.4f} -> {after['retain_macro_f1']:.4f}")
    if warnings:
        print(format_warnings(warnings))
    print(f"edit: {os.path.join(a.out, 'edit.safetensors')}, report: {os.path.join(a.out, 'report.json')}")
    return EXIT_OK
