"""The ``steu`` command.

    steu demo                                   # offline: synthetic clinical notes + the packaged MiniLM encoder
    steu pmi      --data notes.csv --model M --target sepsis --out pmi/
    steu unlearn  --data train.csv --model FINETUNED --target sepsis [--eval-data test.csv] --out run/
    steu evaluate --data test.csv --model FINETUNED [--edit run/edit.safetensors] --target sepsis
    steu compare  --data notes.csv --target sepsis --methods steu,gradient_ascent,retrain --out cmp/
    steu apply-edit  --model BASE --edit run/edit.safetensors --out edited/
    steu revert-edit --model edited/ --edit run/edit.safetensors --out restored/

Exit codes: 0 success, 2 bad input (missing file, unknown column or class, a model without a trained
classification head, a label set that does not match the model, ...), 1 unexpected failure.
Commands that write a folder build it under a temporary name and rename it at the end, so a failed run
leaves no partial output behind.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
from typing import Iterator, List, Optional

EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2


class BadInput(ValueError):
    """A user error: reported in one line with exit code 2."""


# ---- shared arguments ---------------------------------------------------------------------------------
def _data_args(p, required: bool = True) -> None:
    p.add_argument("--data", required=required, help="CSV/TSV/JSONL/parquet file with labelled text")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--label-sep", default=None, help="separator of multiple labels in one cell (multi-label)")


def _out_arg(p, default: Optional[str] = None) -> None:
    p.add_argument("--out", required=default is None, default=default, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def _steu_args(p) -> None:
    p.add_argument("--k", type=int, default=256, help="embedding rows to edit")
    p.add_argument("--measure", default="fwpmi", choices=["fwpmi", "pmi", "ppmi", "npmi"])
    p.add_argument("--alpha", type=float, default=0.0, help="add-alpha smoothing of the PMI estimates")
    p.add_argument("--min-count", type=int, default=1)
    p.add_argument("--epochs", type=int, default=5, help="unlearning epochs over the forget set")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of the embedding rows")
    p.add_argument("--head-lr", type=float, default=1e-2, help="learning rate of the head")
    p.add_argument("--utility-weight", type=float, default=1.0, help="lambda of the retain (utility) loss")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)


def _config(a, **over):
    from .methods.steu import STEUConfig

    kw = dict(k=a.k, measure=a.measure, alpha=a.alpha, min_count=a.min_count, epochs=a.epochs, lr=a.lr,
              head_lr=a.head_lr, utility_weight=a.utility_weight, batch_size=a.batch_size,
              max_length=a.max_length, seed=a.seed)
    kw.update(over)
    return STEUConfig(**kw)


def _load_data(a):
    from .data.loaders import load_text_classification

    return load_text_classification(a.data, a.text_column, a.label_column, a.label_sep)


@contextlib.contextmanager
def _output_dir(path: str, overwrite: bool) -> Iterator[str]:
    """Yield a temporary sibling folder; rename it to ``path`` only if the block succeeds."""
    if os.path.exists(path) and not overwrite:
        raise BadInput(f"output folder {path} already exists (use --overwrite)")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(os.path.abspath(path))}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(tmp, path)


def _load_trained(model_path: str, label_names: Optional[List[str]] = None):
    """A fine-tuned sequence classifier and its tokenizer; errors for a missing model, a model without a
    trained classification head, and a label set different from the data's."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not os.path.exists(model_path) and os.sep in model_path:
        raise BadInput(f"model folder not found: {model_path}")
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(model_path, output_loading_info=True)
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot load a sequence classifier from {model_path!r}: {str(e).splitlines()[0]}") from None
    from .methods._model import find_head

    head = find_head(model)
    missing = set(info.get("missing_keys", ()))
    if any(n in missing for n in head):
        raise BadInput(f"{model_path} has no trained classification head (missing {sorted(missing & set(head))}); "
                       "fine-tune it first, or use `steu demo --model` which fine-tunes a head")
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if label_names is not None:
        generic = all(str(n).startswith("LABEL_") for n in names)
        if (generic and len(names) != len(label_names)) or (not generic and names != list(label_names)):
            raise BadInput(f"the data's label set {list(label_names)} does not match the model's {names}")
        names = list(label_names)
    return model, AutoTokenizer.from_pretrained(model_path), names


def _save_model(model, tok, path: str) -> None:
    model.save_pretrained(path)
    tok.save_pretrained(path)


# ---- commands -----------------------------------------------------------------------------------------
def cmd_demo(a) -> int:
    from .methods.experiment import DEFAULT_MODEL, offline_minilm_path, run_experiment, summary_table

    if a.data:
        data, source = _load_data(a), a.data
    else:
        from .data.loaders import TextClassificationData
        from .data.synthetic import generate_notes

        g = generate_notes(a.n_docs, seed=a.seed)
        data = TextClassificationData(g["text"], g["labels"], g["label_names"], True)
        source = f"synthetic clinical notes ({a.n_docs}, seed {a.seed})"
    model = a.model or DEFAULT_MODEL
    if model == DEFAULT_MODEL and offline_minilm_path() is None:
        print(f"note: {DEFAULT_MODEL} is not installed; using a small randomly initialised BERT", file=sys.stderr)
    target = a.target if a.target is not None else 0
    print(f"data: {source}: {len(data)} documents, classes {data.label_names}")
    with _output_dir(a.out, True) as tmp:
        report = run_experiment(data, target, model=model, out_dir=tmp, config=_config(a),
                                test_fraction=a.test_fraction, finetune_epochs=a.finetune_epochs, seed=a.seed,
                                progress=not a.quiet, extra={"source": source})
    print(f"model: {report['model']}")
    print(f"forgot class {report['target_name']!r} with STEU (k={report['selected_tokens']['k']}):\n")
    print(summary_table(report))
    print(f"\nreport: {os.path.join(a.out, 'report.json')}, plot: {os.path.join(a.out, 'f1_before_after.png')}, "
          f"edit: {os.path.join(a.out, 'edit.safetensors')}")
    return EXIT_OK


def cmd_pmi(a) -> int:
    import torch
    from safetensors.torch import save_file
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from .methods.steu import resolve_target
    from .ops.doc_counts import PMICounter
    from .ops.pmi import select_top_k

    data = _load_data(a)
    names = data.label_names
    targets = [resolve_target(t, names) for t in a.target] if a.target else list(range(len(names)))
    try:
        tok = AutoTokenizer.from_pretrained(a.model)
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot load the tokenizer of {a.model!r}: {str(e).splitlines()[0]}") from None
    V = len(tok)
    if a.k > V:
        raise BadInput(f"k={a.k} is larger than the vocabulary ({V} tokens)")
    counter = PMICounter(V, len(names))
    labels = torch.zeros(len(data), len(names), dtype=torch.uint8)
    for i, ys in enumerate(data.labels):
        labels[i, ys] = 1
    with _output_dir(a.out, a.overwrite) as tmp:
        bar = tqdm(total=len(data), unit="doc", desc="counting", disable=a.quiet)
        for i in range(0, len(data), a.batch_size):
            enc = tok(data.text[i:i + a.batch_size], truncation=True, max_length=a.max_length, padding=True,
                      return_tensors="pt")
            counter.update(enc["input_ids"], labels[i:i + a.batch_size], attention_mask=enc["attention_mask"])
            bar.update(min(a.batch_size, len(data) - i))
        bar.close()
        save_file({k: v.contiguous() for k, v in counter.state_dict().items()}, os.path.join(tmp, "counts.safetensors"))
        tables = {}
        for t in targets:
            if int(counter.class_docs[t]) == 0:
                continue
            scores = counter.scores(t, measure=a.measure, alpha=a.alpha, min_count=a.min_count)
            ids = select_top_k(scores, a.k, exclude_ids=tok.all_special_ids)
            tables[names[t]] = [{"rank": r + 1, "id": int(i), "token": tok.convert_ids_to_tokens(int(i)),
                                 "score": float(scores[i]), "docs_in_class": int(counter.counts[t, i]),
                                 "docs": int(counter.doc_freq[i])} for r, i in enumerate(ids)]
            with open(os.path.join(tmp, f"top_tokens_{t}.csv"), "w") as f:
                f.write("rank,id,token,score,docs_in_class,docs\n")
                for row in tables[names[t]]:
                    tokstr = row["token"].replace('"', '""')
                    f.write(f'{row["rank"]},{row["id"]},"{tokstr}",{row["score"]:.6f},'
                            f'{row["docs_in_class"]},{row["docs"]}\n')
        summary = {"n_docs": counter.n_docs, "class_docs": dict(zip(names, counter.class_docs.tolist())),
                   "vocab_size": V, "tokenizer": a.model, "measure": a.measure, "alpha": a.alpha,
                   "min_count": a.min_count, "max_length": a.max_length, "data": os.path.abspath(a.data),
                   "top_tokens": tables}
        from .eval.report import write_json

        write_json(os.path.join(tmp, "summary.json"), summary)
    for name, rows in tables.items():
        print(f"{name}: " + ", ".join(f"{r['token']} ({r['score']:.2f})" for r in rows[:10]))
    print(f"counts and tables written to {a.out}")
    return EXIT_OK


def _encode_eval(tok, data, names, max_length):
    from .methods._model import Encoded
    from .methods.steu import label_matrix

    return Encoded(tok, data.text, label_matrix(data.labels, len(names)), max_length)


def _check_same_labels(data, names, what: str) -> None:
    if list(data.label_names) != list(names) and not set(data.label_names) <= set(names):
        raise BadInput(f"the {what} label set {data.label_names} does not match the model's {names}")


def _remap(data, names):
    """Re-index ``data``'s labels onto the model's label order."""
    idx = {n: i for i, n in enumerate(names)}
    data.labels = [[idx[data.label_names[y]] for y in ys] for ys in data.labels]
    data.label_names = list(names)
    return data


def _f1_report(model, enc, target, names, multi):
    from .eval.metrics import per_class_f1, unlearning_f1
    from .methods._model import predict_logits, predictions

    z = predict_logits(model, enc)
    return unlearning_f1(per_class_f1(enc.labels, predictions(z, multi)), target, names)


def cmd_unlearn(a) -> int:
    import time

    from .eval.metrics import modified_parameters, snapshot
    from .eval.report import write_json
    from .methods._model import is_multi_label
    from .methods.steu import resolve_target, unlearn

    data = _load_data(a)
    eval_data = None
    if a.eval_data:
        from .data.loaders import load_text_classification

        eval_data = load_text_classification(a.eval_data, a.text_column, a.label_column, a.label_sep)
    model, tok, names = _load_trained(a.model)
    _check_same_labels(data, names, "data's")
    data = _remap(data, names)
    target = resolve_target(a.target, names)
    cfg = _config(a)
    cfg.validate(model.get_input_embeddings().weight.shape[0])
    multi = is_multi_label(model)
    enc_eval = None
    if eval_data is not None:
        _check_same_labels(eval_data, names, "evaluation data's")
        enc_eval = _encode_eval(tok, _remap(eval_data, names), names, a.max_length)
    with _output_dir(a.out, a.overwrite) as tmp:
        before = _f1_report(model, enc_eval, target, names, multi) if enc_eval else None
        original = snapshot(model)
        t0 = time.perf_counter()
        res = unlearn(model, tok, data.text, data.labels, target, config=cfg, label_names=names,
                      progress=not a.quiet)
        wall = time.perf_counter() - t0
        after = _f1_report(model, enc_eval, target, names, multi) if enc_eval else None
        mod = modified_parameters(model, original)
        res.edit.meta["base_model"] = os.path.abspath(a.model) if os.path.exists(a.model) else a.model
        res.edit.save(os.path.join(tmp, "edit.safetensors"))
        if a.save_model:
            _save_model(model, tok, os.path.join(tmp, "model"))
        report = {"method": "steu", "model": a.model, "target": target, "target_name": names[target],
                  "label_names": names, "data": a.data, "eval_data": a.eval_data, "config": vars(cfg),
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
    print(f"edit: {os.path.join(a.out, 'edit.safetensors')}, report: {os.path.join(a.out, 'report.json')}")
    return EXIT_OK


def cmd_evaluate(a) -> int:
    from .methods._model import is_multi_label
    from .methods.edit import STEUEdit
    from .methods.steu import resolve_target

    data = _load_data(a)
    model, tok, names = _load_trained(a.model)
    _check_same_labels(data, names, "data's")
    data = _remap(data, names)
    target = resolve_target(a.target, names)
    if a.edit:
        STEUEdit.load(a.edit).apply(model)
    enc = _encode_eval(tok, data, names, a.max_length)
    rep = _f1_report(model, enc, target, names, is_multi_label(model))
    rep.update({"model": a.model, "edit": a.edit, "data": a.data, "target_name": names[target]})
    print(f"forget F1 ({names[target]}): {rep['forget_f1']:.4f}   retain avg F1: {rep['retain_macro_f1']:.4f}")
    for n, f in rep["per_class_f1"].items():
        print(f"  {n:<32} {f:.4f}")
    if a.out:
        from .eval.report import write_json

        if os.path.exists(a.out) and not a.overwrite:
            raise BadInput(f"{a.out} already exists (use --overwrite)")
        write_json(a.out, rep)
    return EXIT_OK


def cmd_compare(a) -> int:
    from .methods.compare import METHODS, format_table, run_compare
    from .methods.experiment import DEFAULT_MODEL

    methods = [m.strip() for m in a.methods.split(",") if m.strip()] if a.methods else list(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise BadInput(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    if a.data:
        data = _load_data(a)
    else:
        from .data.loaders import TextClassificationData
        from .data.synthetic import generate_notes

        g = generate_notes(a.n_docs, seed=a.seed)
        data = TextClassificationData(g["text"], g["labels"], g["label_names"], True)
    with _output_dir(a.out, a.overwrite) as tmp:
        report = run_compare(data, a.target if a.target is not None else 0, methods=methods,
                             model=a.model or DEFAULT_MODEL, out_dir=tmp, config=_config(a),
                             test_fraction=a.test_fraction, finetune_epochs=a.finetune_epochs, seed=a.seed,
                             top_layers=a.top_layers, progress=not a.quiet)
    print(format_table(report))
    print(f"\nreport: {a.out}/report.json")
    return EXIT_OK


def _edit_cmd(a, revert: bool) -> int:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .methods.edit import STEUEdit

    edit = STEUEdit.load(a.edit)
    if not os.path.exists(a.model) and os.sep in a.model:
        raise BadInput(f"model folder not found: {a.model}")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(a.model)
        tok = AutoTokenizer.from_pretrained(a.model)
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot load a sequence classifier from {a.model!r}: {str(e).splitlines()[0]}") from None
    with _output_dir(a.out, a.overwrite) as tmp:
        (edit.revert if revert else edit.apply)(model, check=not a.force)
        _save_model(model, tok, tmp)
    print(f"{'reverted' if revert else 'applied'} edit {a.edit} ({edit.row_ids.numel()} rows, "
          f"{len(edit.new_head)} head tensors, {edit.num_modified_elements:,} elements): saved to {a.out}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steu", description="Class-level unlearning for clinical text "
                                     "classifiers (STEU).", epilog="exit codes: 0 ok, 2 bad input, 1 failure")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="fine-tune, unlearn one class with STEU, evaluate and report",
                       description="Runs STEU end to end. Without --data it uses the embedded synthetic "
                                   "clinical-note corpus and needs no network.")
    _data_args(p, required=False)
    p.add_argument("--target", default=None, help="class to forget, by name or index (default: the first)")
    p.add_argument("--model", default=None, help="HF model name or folder (default: the offline MiniLM "
                                                 "encoder if installed, else a small random BERT)")
    p.add_argument("--n-docs", type=int, default=1200, help="synthetic corpus size")
    _steu_args(p)
    p.set_defaults(epochs=3)
    p.add_argument("--finetune-epochs", type=int, default=30, help="0 = the model is already fine-tuned")
    p.add_argument("--test-fraction", type=float, default=0.3)
    p.add_argument("--out", default="steu_report", help="report folder (replaced if it exists)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("pmi", help="document-level token statistics and top PMI tokens per class")
    _data_args(p)
    p.add_argument("--model", required=True, help="model name or folder whose tokenizer to use")
    p.add_argument("--target", action="append", help="class name or index (repeatable; default: all)")
    p.add_argument("--k", type=int, default=256)
    p.add_argument("--measure", default="fwpmi", choices=["fwpmi", "pmi", "ppmi", "npmi"])
    p.add_argument("--alpha", type=float, default=0.0)
    p.add_argument("--min-count", type=int, default=1)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--quiet", action="store_true")
    _out_arg(p)
    p.set_defaults(func=cmd_pmi)

    p = sub.add_parser("unlearn", help="unlearn a class from a fine-tuned classifier with STEU")
    _data_args(p)
    p.add_argument("--eval-data", help="held-out labelled file for before/after F1")
    p.add_argument("--model", required=True, help="fine-tuned sequence classifier (name or folder)")
    p.add_argument("--target", required=True, help="class to forget, by name or index")
    _steu_args(p)
    p.add_argument("--save-model", action="store_true", help="also save the edited model (edit file always)")
    p.add_argument("--quiet", action="store_true")
    _out_arg(p)
    p.set_defaults(func=cmd_unlearn)

    p = sub.add_parser("evaluate", help="forget/retain F1 of a classifier (optionally with an edit applied)")
    _data_args(p)
    p.add_argument("--model", required=True)
    p.add_argument("--edit", help="edit file to apply before evaluating")
    p.add_argument("--target", required=True)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--out", help="write the figures to this JSON file")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="run STEU, its ablations and baselines on one dataset; one table")
    _data_args(p, required=False)
    p.add_argument("--target", default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--methods", default=None, help="comma-separated subset (default: all)")
    p.add_argument("--n-docs", type=int, default=1200, help="synthetic corpus size when --data is omitted")
    _steu_args(p)
    p.set_defaults(epochs=3)
    p.add_argument("--top-layers", type=int, default=3, help="encoder layers the layer-based baselines train")
    p.add_argument("--finetune-epochs", type=int, default=30)
    p.add_argument("--test-fraction", type=float, default=0.3)
    p.add_argument("--quiet", action="store_true")
    _out_arg(p, default="steu_compare")
    p.set_defaults(func=cmd_compare)

    for name, revert in (("apply-edit", False), ("revert-edit", True)):
        p = sub.add_parser(name, help=("apply an edit to its base model" if not revert else
                                       "restore the original weights of an edited model"))
        p.add_argument("--model", required=True, help="base model (apply) or edited model (revert)")
        p.add_argument("--edit", required=True, help="edit .safetensors file")
        p.add_argument("--force", action="store_true", help="skip the check that the model matches the edit")
        _out_arg(p)
        p.set_defaults(func=(lambda a, r=revert: _edit_cmd(a, r)))
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        return a.func(a)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"steu {a.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"steu {a.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
