"""The ``steu`` command.

    steu demo                                   # offline: synthetic clinical notes + the packaged MiniLM encoder
    steu pmi      --data notes.csv --model M --target sepsis --out pmi/
    steu unlearn  --data train.csv --model FINETUNED --target sepsis [--eval-data test.csv] --out run/
    steu evaluate --data test.csv --model FINETUNED [--edit run/edit.safetensors] --target sepsis
    steu compare  --data notes.csv --target sepsis --methods steu,gradient_ascent,retrain --out cmp/
    steu hds      --data pubmedqa/ --teach-tiny --hierarchy concepts.yaml --forget-domains surgery --out hds/
    steu hierarchy --from-mesh desc2025.xml --forget-branch E04=surgery --out concepts.yaml
    steu apply-edit  --model BASE --edit run/edit.safetensors --out edited/
    steu revert-edit --model edited/ --edit run/edit.safetensors --out restored/
    steu edits list|apply|revert --model FOLDER [--edit E] [--id N] --out OUT   # a stack of edits

Exit codes: 0 success, 2 bad input (missing file, unknown column or class, a model without a trained
classification head, a label set that does not match the model, ...), 1 unexpected failure.
Commands that write a folder build it under a temporary name and rename it at the end, so a failed run
leaves no partial output behind.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
from typing import List, Optional

EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2


class BadInput(ValueError):
    """A user error: reported in one line with exit code 2."""


# ---- shared arguments ---------------------------------------------------------------------------------
def _data_args(p, required: bool = True) -> None:
    p.add_argument("--data", required=required, help="CSV/TSV/JSONL/parquet file with labelled text")
    p.add_argument("--text-column", default="text", help="column (CSV) or field (JSONL) holding the text")
    p.add_argument("--label-column", default="label", help="column or field holding the class name(s) or id(s)")
    p.add_argument("--label-sep", default=None, help="separator of multiple labels in one cell (multi-label)")


def _out_arg(p, default: Optional[str] = None) -> None:
    p.add_argument("--out", required=default is None, default=default, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def _steu_args(p) -> None:
    p.add_argument("--k", type=int, default=256, help="embedding rows to edit")
    p.add_argument("--measure", default="fwpmi", choices=["fwpmi", "pmi", "ppmi", "npmi"],
                   help="token score used to select the rows")
    p.add_argument("--alpha", type=float, default=0.0, help="add-alpha smoothing of the PMI estimates")
    p.add_argument("--min-count", type=int, default=1, help="ignore tokens in fewer documents than this")
    p.add_argument("--epochs", type=int, default=5, help="unlearning epochs over the forget set")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of the embedding rows")
    p.add_argument("--head-lr", type=float, default=1e-2, help="learning rate of the head")
    p.add_argument("--utility-weight", type=float, default=1.0, help="lambda of the retain (utility) loss")
    p.add_argument("--batch-size", type=int, default=16, help="forget (and as many retain) documents per step")
    p.add_argument("--max-length", type=int, default=128, help="tokens per document (longer ones are cut)")
    p.add_argument("--seed", type=int, default=0, help="random seed (splits, batches, initialisation)")


def _config(a, **over):
    from ..methods.steu import STEUConfig

    kw = dict(k=a.k, measure=a.measure, alpha=a.alpha, min_count=a.min_count, epochs=a.epochs, lr=a.lr,
              head_lr=a.head_lr, utility_weight=a.utility_weight, batch_size=a.batch_size,
              max_length=a.max_length, seed=a.seed)
    kw.update(over)
    return STEUConfig(**kw)


def _load_data(a):
    from ..data.loaders import load_text_classification

    return load_text_classification(a.data, a.text_column, a.label_column, a.label_sep)


def _check_out(path: str, overwrite: bool, inputs=()) -> None:
    """The `_output_dir` checks, up front (before any slow work)."""
    from .._outdir import check_output_dir

    check_output_dir(path, overwrite, inputs)


def _finalize_output(tmp: str, final: str) -> None:
    _final_paths(tmp, final)
    from .._fsutil import chmod_tree_like_new

    chmod_tree_like_new(tmp)  # safetensors files are 0600 otherwise: edits, models and reports alike


def _output_dir(path: str, overwrite: bool, inputs=()):
    """A temporary sibling folder renamed to ``path`` only if the block succeeds (see :mod:`steu_ext._outdir`:
    refuses ``.``, home, a folder holding an input, and any non-empty folder steu did not write); reports
    name the final paths and files get the umask's permissions."""
    from .._outdir import output_dir

    return output_dir(path, overwrite, inputs, finalize=_finalize_output)


def _check_model_path(name: Optional[str], what: str = "model folder") -> None:
    """A ``--model`` that is clearly a local path (absolute, ``./``, ``~``, or more than ``org/name``) but does
    not exist: say so, instead of the hub's repo-id error."""
    if not name or os.path.exists(name):
        return
    n = str(name)
    looks_local = (os.path.isabs(n) or n.startswith((".", "~")) or n.endswith(("/", os.sep))
                   or n.count("/") > 1 or (os.sep != "/" and os.sep in n))
    if looks_local:
        raise BadInput(f"{what} not found: {n}")


def _final_paths(tmp: str, final: str) -> None:
    """Point the paths recorded in the reports (``*.json``, ``*.md``) under the temporary folder ``tmp`` at
    where the folder will be (``final``), so a report names the edit path a user can open."""
    pairs = [(tmp, final), (json.dumps(tmp)[1:-1], json.dumps(final)[1:-1])]
    for d, _, files in os.walk(tmp):
        for f in files:
            if not f.endswith((".json", ".md")):
                continue
            p = os.path.join(d, f)
            with open(p, encoding="utf-8") as fh:
                text = fh.read()
            new = text
            for old, repl in pairs:
                new = new.replace(old, repl)
            if new != text:
                with open(p, "w", encoding="utf-8") as fh:
                    fh.write(new)


def _load_trained(model_path: str, label_names: Optional[List[str]] = None):
    """A fine-tuned sequence classifier and its tokenizer; errors for a missing model, a model without a
    trained classification head, and a label set different from the data's."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _check_model_path(model_path)
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(model_path, output_loading_info=True)
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot load a sequence classifier from {model_path!r}: {str(e).splitlines()[0]}") from None
    from ..methods._model import find_head

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
    from ..methods.experiment import DEFAULT_MODEL, offline_minilm_path, run_experiment, summary_table

    _check_out(a.out, a.overwrite, [a.data, a.model])
    _check_model_path(a.model)
    if a.data:
        data, source = _load_data(a), a.data
    else:
        from ..data.loaders import TextClassificationData
        from ..data.synthetic import generate_notes

        g = generate_notes(a.n_docs, seed=a.seed)
        data = TextClassificationData(g["text"], g["labels"], g["label_names"], True)
        source = f"synthetic clinical notes ({a.n_docs}, seed {a.seed})"
    model = a.model or DEFAULT_MODEL
    if model == DEFAULT_MODEL and offline_minilm_path() is None:
        print(f"note: {DEFAULT_MODEL} is not installed; using a small randomly initialised BERT", file=sys.stderr)
    from ..methods._labels import resolve_target

    # names before positions (classes named "1".."5"), ambiguity refused: resolved here, passed as a position
    target = resolve_target(a.target, data.label_names) if a.target is not None else 0
    print(f"data: {source}: {len(data)} documents, classes {data.label_names}")
    with _output_dir(a.out, a.overwrite, [a.data, a.model]) as tmp:
        report = run_experiment(data, target, model=model, out_dir=tmp, config=_config(a),
                                test_fraction=a.test_fraction, finetune_epochs=a.finetune_epochs,
                                finetune_mode=a.finetune_mode, finetune_lr=a.finetune_lr,
                                probe_fraction=a.probe_fraction, seed=a.seed,
                                progress=not a.quiet, extra={"source": source})
    print(f"model: {report['model']}")
    print(f"forgot class {report['target_name']!r} with STEU (k={report['selected_tokens']['k']}):\n")
    print(summary_table(report))
    print(f"\nreport: {os.path.join(a.out, 'report.json')}, plot: {os.path.join(a.out, 'f1_before_after.png')}, "
          f"edit: {os.path.join(a.out, 'edit.safetensors')}")
    return EXIT_OK


def _default_workers() -> int:
    """Tokenizer processes per rank: the cores this rank may use, less one for reading and counting."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    per_rank = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return per_rank - 1 if per_rank >= 2 else 0


def _check_pmi_out(a, summary_file: str, checkpoint_dir: str) -> None:
    """`steu pmi --out`: refuse unsafe folders (see :mod:`steu_ext._outdir`); an existing folder must be one
    of ours (marker, summary or checkpoints) and, once finished, needs --overwrite."""
    from .._outdir import MARKER, check_output_dir

    out = a.out
    check_output_dir(out, True, [a.data, a.model], marker_files=(MARKER, summary_file, checkpoint_dir))
    if os.path.isdir(out) and os.path.exists(os.path.join(out, summary_file)) and not a.overwrite:
        raise BadInput(f"output folder {out} already exists (use --overwrite)")


def _prepare_pmi_out(out: str, overwrite: bool) -> None:
    """Empty an old folder of ours (with --overwrite) and (re)create ``out`` with our marker file."""
    import shutil

    from .._outdir import MARKER

    if overwrite and os.path.isdir(out) and os.listdir(out):
        shutil.rmtree(out)   # checked by _check_pmi_out: a folder steu wrote
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, MARKER), "w") as f:
        f.write("written by steu_ext; `--overwrite` may replace this folder\n")


def _remove_if_unused(out: str) -> None:
    """Remove ``out`` if it holds nothing but our marker (and empty folders)."""
    import shutil

    from .._outdir import MARKER

    for root, _dirs, files in os.walk(out):
        if any(f != MARKER or root != out for f in files):
            return
    shutil.rmtree(out, ignore_errors=True)


def cmd_pmi(a) -> int:
    """Stream the corpus, count with checkpoints (resumable, torchrun-aware), write counts and tables."""
    from transformers import AutoTokenizer

    from ..data.corpus_pmi import CHECKPOINT_DIR, SUMMARY_FILE, init_distributed, precompute_pmi

    # cheap checks first: none of these may wait until the whole corpus has been counted
    if a.k < 1:
        raise BadInput(f"--k must be >= 1, got {a.k}")
    if a.min_count < 0:
        raise BadInput(f"--min-count must be >= 0, got {a.min_count}")
    if a.alpha < 0:
        raise BadInput(f"--alpha must be >= 0, got {a.alpha}")
    _hds_device(a.device)
    _check_model_path(a.model)
    try:
        tok = AutoTokenizer.from_pretrained(a.model)
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot load the tokenizer of {a.model!r}: {str(e).splitlines()[0]}") from None
    if a.k > len(tok):
        raise BadInput(f"k={a.k} is larger than the vocabulary ({len(tok)} tokens)")
    from ..data.stream import resolve_shards

    try:
        resolve_shards(a.data)
    except (OSError, ValueError) as e:
        raise BadInput(str(e)) from None
    out = a.out
    # Written in place (not via _output_dir) so that a killed run can resume from out/checkpoints;
    # summary.json is written last and marks a finished run.
    _check_pmi_out(a, SUMMARY_FILE, CHECKPOINT_DIR)
    rank, world, started = init_distributed(a.device)
    fresh = not os.path.exists(out)
    try:
        if rank == 0:
            _prepare_pmi_out(out, a.overwrite)
        if world > 1:
            import torch.distributed as dist

            dist.barrier()
        labels = [s.strip() for s in a.labels.split(",") if s.strip()] if a.labels else None
        workers = _default_workers() if a.workers is None else a.workers
        cc = precompute_pmi(a.data, tok, out, targets=a.target, k=a.k, measure=a.measure, alpha=a.alpha,
                            min_count=a.min_count, resume=not a.no_resume, text_column=a.text_column,
                            label_column=a.label_column, label_names=labels, label_sep=a.label_sep, fmt=a.format,
                            max_length=a.max_length, workers=workers, block_size=a.block_size, device=a.device,
                            checkpoint_every=a.checkpoint_every, checkpoint_seconds=a.checkpoint_seconds,
                            unknown_labels=a.unknown_labels, on_malformed=a.on_malformed, progress=not a.quiet,
                            counts_format=a.counts_format,
                            extra_summary={"tokenizer_name": a.model, "workers_per_rank": workers})
    except BaseException:
        if rank == 0 and fresh:
            _remove_if_unused(out)   # a run that stopped before any checkpoint leaves no folder behind
        raise
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rank == 0:
        with open(os.path.join(out, SUMMARY_FILE)) as f:
            tables = json.load(f)["top_tokens"]
        for name, rows in tables.items():
            print(f"{name}: " + ", ".join(f"{r['token']} ({r['score']:.2f})" for r in rows[:10]))
        s = cc.seconds
        print(f"{cc.n_docs:,} documents, {cc.n_tokens:,} tokens in {s['wall']:.1f} s ({s['docs_per_s']:,.0f} docs/s, "
              f"{s['tokens_per_s']:,.0f} tokens/s, {world} rank(s) x {workers} tokenizer workers); "
              f"{cc.n_skipped} records skipped")
        sm = cc.summary()
        print(f"{sm['counts_format']} counts: {sm['nnz']:,} nonzero class-token pairs of "
              f"{len(cc.label_names):,} x {cc.counter.num_tokens:,}")
        print(f"counts and tables written to {out}")
    return EXIT_OK


def _encode_eval(tok, data, names, max_length):
    from ..methods._labels import label_matrix
    from ..methods._model import Encoded

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
    from ..eval.metrics import per_class_f1, unlearning_f1
    from ..methods._model import predict_logits, predictions

    pred = predictions(predict_logits(model, enc), multi)
    rep = unlearning_f1(per_class_f1(enc.labels, pred), target, names)
    # how often the target is true / predicted: the vacuity checks (steu_ext.eval.vacuity) need them
    rep["target_docs"] = int((enc.labels[:, target] > 0).sum())
    rep["target_predicted"] = int((pred[:, target] > 0).sum())
    return rep


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
    from ..methods._labels import resolve_target
    from ..methods._model import is_multi_label
    from ..methods.steu import unlearn

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


def cmd_evaluate(a) -> int:
    from ..methods._labels import resolve_target
    from ..methods._model import is_multi_label
    from ..methods.edit import STEUEdit

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


def cmd_compare(a) -> int:
    from ..methods.compare import METHODS, format_table, run_compare
    from ..methods.experiment import DEFAULT_MODEL

    _check_out(a.out, a.overwrite, [a.data, a.model, a.cache_dir])
    methods = [m.strip() for m in a.methods.split(",") if m.strip()] if a.methods else list(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise BadInput(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    if a.data:
        data = _load_data(a)
    else:
        from ..data.loaders import TextClassificationData
        from ..data.synthetic import generate_notes

        g = generate_notes(a.n_docs, seed=a.seed)
        data = TextClassificationData(g["text"], g["labels"], g["label_names"], True)
    from ..eval.probe import ProbeConfig
    from ..eval.relearn import RelearnConfig
    from ..eval.scorecard import format_scorecard

    pcfg = ProbeConfig(pooling=a.probe_pooling, max_train_docs=a.probe_train_docs, seed=a.seed)
    rcfg = RelearnConfig(steps=a.relearn_steps, target_docs=a.relearn_docs, other_docs=a.relearn_docs,
                         params=a.relearn_params, eval_every=a.relearn_eval_every,
                         max_eval_docs=a.relearn_eval_docs, seed=a.seed)
    if a.max_docs is not None:
        from ..data.loaders import stratified_split

        if a.max_docs < 2:
            raise BadInput(f"--max-docs must be >= 2, got {a.max_docs}")
        if a.max_docs < len(data):
            _, sub = stratified_split(data.labels, a.max_docs / len(data), seed=a.seed)
            data = data.subset(sub)
    seeds = None
    if a.seeds:
        try:
            seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
        except ValueError:
            raise BadInput(f"--seeds must be comma-separated integers, got {a.seeds!r}") from None
        if not seeds or len(set(seeds)) != len(seeds):
            raise BadInput(f"--seeds must be distinct integers, got {a.seeds!r}")
    kw = dict(methods=methods, model=a.model or DEFAULT_MODEL, config=_config(a), test_fraction=a.test_fraction,
              finetune_epochs=a.finetune_epochs, finetune_mode=a.finetune_mode, finetune_lr=a.finetune_lr,
              probe_fraction=a.probe_fraction if not a.no_probe else 0.0, max_train_docs=a.max_train_docs,
              cache_dir=a.cache_dir, top_layers=a.top_layers, progress=not a.quiet, probe=not a.no_probe,
              relearn=not a.no_relearn, inspect_edits=not a.no_inspect, probe_config=pcfg, relearn_config=rcfg)
    from ..methods._labels import resolve_target

    # names before positions (classes named "1".."5"), ambiguity refused: resolved here, passed as a position
    target = resolve_target(a.target, data.label_names) if a.target is not None else 0
    if seeds is not None:
        from ..methods.compare import run_scorecard

        with _output_dir(a.out, a.overwrite, [a.data, a.model, a.cache_dir]) as tmp:
            res = run_scorecard(data, [target], seeds=seeds, out_dir=tmp, **kw)
        with open(os.path.join(a.out, "scorecard.md")) as f:
            print(f.read())
        print(f"scorecard: {a.out}/scorecard.md (+ .json, scorecard_probe_vs_retain.png); per seed: "
              f"{a.out}/{next(iter(res['by_target'])).replace(os.sep, '_')}/seed_N/")
        return EXIT_OK
    with _output_dir(a.out, a.overwrite, [a.data, a.model, a.cache_dir]) as tmp:
        report = run_compare(data, target, seed=a.seed, out_dir=tmp, **kw)
    print(format_table(report))
    print("\nscorecard:\n" + format_scorecard(report))
    for w in report.get("warnings", []):
        print(f"warning: {w}")
    print(f"\nreport: {a.out}/report.json, scorecard: {a.out}/scorecard.md")
    return EXIT_OK


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


def _load_qa(a):
    from ..data import qa

    if a.format == "pubmedqa":
        if a.hierarchy and a.forget_domains and not a.forget_mesh:   # from the items' MESHES through the hierarchy
            from ..data.concepts import load_hierarchy

            return qa.load_pubmedqa(a.data, hierarchy=load_hierarchy(a.hierarchy),
                                    forget_domains=a.forget_domains.split(","))
        return qa.load_pubmedqa(a.data, forget_mesh=a.forget_mesh.split(",") if a.forget_mesh else qa.SURGICAL_MESH)
    if a.format == "medmcqa":
        return qa.load_medmcqa(a.data, forget_subjects=a.forget_values.split(",") if a.forget_values else ("Surgery",))
    if not a.domain_column or not a.forget_values:
        raise BadInput("--format jsonl needs --domain-column and --forget-values")
    opts = a.options_column.split(",")
    return qa.load_qa_jsonl(a.data, question=a.question_column, options=opts[0] if len(opts) == 1 else opts,
                            answer=a.answer_column, long_answer=a.long_answer_column, domain=a.domain_column,
                            forget_values=a.forget_values.split(","))


def _hds_device(name: Optional[str]):
    """``--device``: the given one (checked), else cuda when available, else cpu."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise BadInput(f"--device {name!r} is not a device (cpu, cuda, cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"--device {name}: CUDA is not available here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise BadInput(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda"):
        raise BadInput(f"--device {name!r}: use cpu or cuda[:N]")
    return dev


def cmd_hds(a) -> int:
    """Unlearn a QA domain from a causal LM with HDS (or one of its ablations / baselines)."""
    import time

    import torch

    from ..data.concepts import load_hierarchy
    from ..data.qa import split_domain, subsample
    from ..eval.qa import continuation_of, evaluate_qa, prompt_of
    from ..eval.report import write_json
    from ..methods import hds

    _check_out(a.out, a.overwrite, [a.data, a.model, a.hierarchy])
    if bool(a.model) == bool(a.teach_tiny):
        raise BadInput("give exactly one of --model (a causal LM folder or name) and --teach-tiny")
    if not 0.0 <= a.never_seen_fraction < 1.0:
        raise BadInput("--never-seen-fraction must be in [0, 1)")
    if a.stop_at_forgetting is not None and not 0.0 < a.stop_at_forgetting <= 1.0:
        raise BadInput("--stop-at-forgetting must be in (0, 1]")
    if not 0.0 < a.stop_fraction < 1.0:
        raise BadInput("--stop-fraction must be in (0, 1)")
    qt_auto = str(a.question_target).lower() == "auto"
    if not qt_auto:
        try:
            a.question_target = float(a.question_target)
        except ValueError:
            raise BadInput(f"--question-target must be 'auto' or a number, got {a.question_target!r}") from None
    items = _load_qa(a)
    hierarchy = load_hierarchy(a.hierarchy) if a.hierarchy else None
    layers = [int(x) for x in a.lora_layers.split(",")] if a.lora_layers else None
    base = hds.HDSConfig(forget_loss=a.forget_loss, retain_loss=a.retain_loss, retain_weight=a.retain_weight,
                         projection=a.projection, fisher=not a.no_fisher, subspace=a.subspace,
                         adapter=a.adapter, lora_r=a.lora_r, lr=a.lr, lora_layers=layers,
                         lora_targets=a.lora_targets if a.lora_targets == "all-linear" else a.lora_targets.split(","),
                         epochs=a.epochs, batch_size=a.batch_size, max_length=a.max_length,
                         forget_domains=a.forget_domains.split(",") if a.forget_domains else None,
                         clip_norm=a.clip_norm, noise_multiplier=a.noise_multiplier, seed=a.seed,
                         autocast_dtype="bfloat16" if a.bf16 else None, question_weight=a.question_weight,
                         question_target=None if qt_auto or a.question_weight == 0 else a.question_target)
    if not qt_auto and a.question_weight > 0:
        base.validate()
    cfg = hds.baseline_config(a.method, base)
    device = _hds_device(a.device)
    dtype = getattr(torch, a.dtype)
    forget_all, retain = split_domain(items)
    forget_all = subsample(forget_all, a.max_forget, a.seed)
    retain = subsample(retain, a.max_retain, a.seed)
    n_never = int(round(a.never_seen_fraction * len(forget_all)))
    forget, never = forget_all[n_never:], forget_all[:n_never]
    if not forget:
        raise BadInput("no forget items left after holding out the never-seen ones")
    # the stop half (stopping rule, question target) and the report half (the figures) of both sets
    ks, kn = int(round(a.stop_fraction * len(forget))), int(round(a.stop_fraction * len(never)))
    halves = 0 < ks < len(forget) and 0 < kn < len(never)
    f_stop, f_rep = (forget[:ks], forget[ks:]) if halves else (forget, forget)
    n_stop, n_rep = (never[:kn], never[kn:]) if halves else (never, never)
    rule_name = "forgetting" if a.stop_at_forgetting is not None else (a.stop or "indistinguishable")
    if rule_name == "indistinguishable" and not halves:
        if a.stop == "indistinguishable":
            raise BadInput(f"--stop indistinguishable needs at least 2 forget and 2 never-seen items (have "
                           f"{len(forget)} and {len(never)}): raise --never-seen-fraction or use more data")
        logging.getLogger("steu_ext").warning("too few never-seen items for the indistinguishable stopping rule "
                                              "(default): training %d epochs", a.epochs)
        rule_name = "none"
    if qt_auto and cfg.question_weight > 0 and not halves:
        raise BadInput("--question-target auto needs at least 2 never-seen items, so that the estimate and the "
                       "reported MIA use different ones (raise --never-seen-fraction, or give a number)")
    if a.teach_tiny:
        model, tok = hds.tiny_causal_lm([prompt_of(i) + continuation_of(i) for i in items], seed=a.seed)
        taught = hds.teach(model, tok, forget + retain, max_length=a.max_length, seed=a.seed)
        model.to(device=device, dtype=dtype)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        _check_model_path(a.model)
        try:
            model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype)
            tok = AutoTokenizer.from_pretrained(a.model)
        except (OSError, ValueError) as e:
            raise BadInput(f"cannot load a causal LM from {a.model!r}: {str(e).splitlines()[0]}") from None
        model.to(device)
        taught = None
    kw = {"max_length": a.max_length}
    q_est = None
    if cfg.question_weight > 0 and qt_auto:
        q_est = hds.estimate_question_target(model, tok, n_stop, max_length=a.max_length,
                                             exclude=forget + retain + (n_rep if halves else []))
        cfg.question_target = q_est["value"]
        print(f"question target {q_est['value']:.3f} nats/token: median question NLL of the model on {q_est['n']} "
              "never-seen items (stop half)")
    cfg.validate()
    with _output_dir(a.out, a.overwrite, [a.data, a.model, a.hierarchy]) as tmp:
        before = evaluate_qa(model, tok, f_rep, retain, n_rep or None, **kw)
        t0 = time.perf_counter()
        monitor = None
        if rule_name == "forgetting":
            acc0 = before["forget_acc"] if not halves else hds.accuracy(model, tok, f_stop, **kw)
            monitor = hds.ForgettingStop(tok, f_stop, acc0, a.stop_at_forgetting, **kw)
        elif rule_name == "indistinguishable":
            monitor = hds.IndistinguishableStop(tok, f_stop, n_stop, model=model, band=a.band, auc_band=a.auc_band,
                                                **kw)
        res = hds.unlearn(model, tok, forget, retain, hierarchy=hierarchy, config=cfg, monitor=monitor,
                          progress=not a.quiet)
        wall = time.perf_counter() - t0
        after = evaluate_qa(res.model, tok, f_rep, retain, n_rep or None, before=before, **kw)
        if res.adapter_state is not None:
            res.save_adapter(os.path.join(tmp, "adapter"))
        if a.save_model:
            _save_model(res.model, tok, os.path.join(tmp, "model"))
        budget = None
        if cfg.adapter == "lora":
            budget = {"this_model": hds.lora_budget(model, cfg)}
        report = {"method": a.method, "model": a.model or "tiny (taught with --teach-tiny)", "data": a.data,
                  "format": a.format, "hierarchy": a.hierarchy, "config": res.config,
                  "n_forget": len(forget), "n_retain": len(retain), "n_never_seen": len(never),
                  "halves": {"stop": {"forget": len(f_stop), "never_seen": len(n_stop)},
                             "report": {"forget": len(f_rep), "never_seen": len(n_rep)}, "disjoint": halves},
                  "question_target": (q_est and {k: v for k, v in q_est.items() if k != "ids"})
                  or ({"value": cfg.question_target, "given": True} if cfg.question_weight > 0 else None),
                  "taught": taught, "before": before, "after": after, "params_modified": res.params,
                  "lora_budget": budget, "stopping": res.stopping,
                  "adapter": "adapter/ (unmerged PEFT adapter; hds.load_adapter / PeftModel.from_pretrained)"
                             if res.adapter_state is not None else None,
                  "privacy": ("no privacy guarantee is claimed: clipping is per batch and no accountant runs"
                              if cfg.noise_multiplier > 0 else None),
                  "seconds": {**res.seconds, "wall": wall}, "history": res.history}
        write_json(os.path.join(tmp, "report.json"), report)
    p = res.params
    stop_txt = "" if res.stopping is None else (
        f"; stopping rule {'met at epoch ' + str(res.stopping['met_at_epoch']) if res.stopping['met'] else 'not met'}"
        + (f" (best epoch {res.stopping['best_epoch']} restored)" if res.stopping.get("restored_best") else ""))
    mia = f", MIA AUC {after['mia_auc']:.3f}" if "mia_auc" in after else ""
    print(f"HDS ({a.method}): forget acc {before['forget_acc']:.3f} -> {after['forget_acc']:.3f} "
          f"(forgetting rate {after['forgetting_rate']:.3f}){mia}, retain acc {before['retain_acc']:.3f} -> "
          f"{after['retain_acc']:.3f} (preservation {after['preservation']:.3f}); {p['modified']:,} of "
          f"{p['total']:,} parameters trained ({p['percent']:.3f} %), {p['merged_modified']:,} changed if merged "
          f"({p['merged_percent']:.3f} %){stop_txt}; {wall:.1f} s")
    print(f"report: {os.path.join(a.out, 'report.json')}")
    return EXIT_OK


def cmd_hierarchy(a) -> int:
    """Build an HDS concept hierarchy file from MeSH descriptor XML or a UMLS release folder."""
    from ..data.concept_sources import LevelMap, from_mesh, from_umls, write_hierarchy

    if bool(a.from_mesh) == bool(a.from_umls):
        raise BadInput("give exactly one of --from-mesh desc.xml and --from-umls DIR")
    forget = {}
    for spec in a.forget_branch or []:
        branch, _, domain = spec.partition("=")
        if not branch or not domain:
            raise BadInput(f"--forget-branch {spec!r}: use BRANCH=DOMAIN, e.g. E04=surgery")
        forget[branch.strip()] = domain.strip()
    if not forget:
        raise BadInput("give at least one --forget-branch BRANCH=DOMAIN (e.g. E04=surgery)")

    def split(v):
        return [x.strip() for x in v.split(",") if x.strip()] if v else []

    levels = LevelMap(forget, basic=split(a.basic_branches), clinical=split(a.clinical_branches),
                      specialty_depth=a.specialty_depth)
    if a.from_mesh:
        h, rep = from_mesh(a.from_mesh, levels, min_term_chars=a.min_term_chars, permuted=a.permuted,
                           on_malformed=a.on_malformed)
        src = f"MeSH descriptors {os.path.basename(a.from_mesh)}"
    else:
        h, rep = from_umls(a.from_umls, levels, sab=a.sab, term_sabs=split(a.term_sabs) or None,
                           min_term_chars=a.min_term_chars, on_malformed=a.on_malformed)
        src = f"UMLS {os.path.basename(os.path.normpath(a.from_umls))} (hierarchy of {a.sab})"
    header = (f"steu hierarchy: built from {src}\nforget branches {forget}; level 1 {levels.basic}, level 2 "
              f"{levels.clinical}; levels 3/4 below / beyond depth {levels.specialty_depth} of a forget branch")
    try:
        write_hierarchy(h, a.out, overwrite=a.overwrite, header=header)
    except FileExistsError as e:
        raise BadInput(str(e)) from None
    for msg in rep.problems[:20]:
        print(f"skipped: {msg}", file=sys.stderr)
    if rep.skipped > 20:
        print(f"... {rep.skipped - 20} more malformed lines/records skipped", file=sys.stderr)
    levels_txt = ", ".join(f"level {k}: {v}" for k, v in sorted(rep.by_level.items()))
    print(f"{rep.concepts:,} concepts ({levels_txt}), {rep.terms:,} terms from {rep.records:,} records; "
          f"skipped {rep.skipped} malformed; dropped terms: {rep.dropped_terms['shared']} shared, "
          f"{rep.dropped_terms['short']} too short -> {a.out}")
    return EXIT_OK


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (flags, ``None``) or the help text
    already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or "default" in text:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steu", description="Class-level unlearning for clinical text "
                                     "classifiers (STEU).", epilog="exit codes: 0 ok, 2 bad input, 1 failure")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser = functools.partial(sub.add_parser, formatter_class=_HelpFormatter)

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
    p.add_argument("--finetune-mode", default="full", choices=["full", "head"],
                   help="fine-tune every parameter (as deployed classifiers are) or only the head")
    p.add_argument("--finetune-epochs", type=int, default=None,
                   help="default: 4 (full) / 30 (head); 0 = the model is already fine-tuned")
    p.add_argument("--finetune-lr", type=float, default=None, help="default: 1e-4 (full) / 1e-2 (head)")
    p.add_argument("--test-fraction", type=float, default=0.3, help="share of the documents held out for F1")
    p.add_argument("--probe-fraction", type=float, default=0.15,
                   help="share of the documents held out to fit the linear probe (0: no probe)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _out_arg(p, default="steu_report")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("pmi", help="document-level token statistics and top PMI tokens per class",
                       description="Streams CSV/TSV/JSONL/parquet (plain or .gz) of any size, a folder or glob of "
                                   "such shards, or an HF datasets folder (save_to_disk); resumable (re-run "
                                   "the same command after a crash); under torchrun the ranks share the input.")
    _data_args(p)
    p.add_argument("--format", default=None, choices=["csv", "tsv", "jsonl", "parquet", "arrow"],
                   help="input format (default: from the file extension)")
    p.add_argument("--model", required=True, help="model name or folder whose tokenizer to use")
    p.add_argument("--target", action="append", help="class name or index (repeatable; default: all)")
    p.add_argument("--labels", default=None, help="comma-separated class names in order (default: the labels "
                                                  "found while reading, sorted); other labels are an error")
    p.add_argument("--unknown-labels", default="error", choices=["error", "skip"],
                   help="a label outside --labels: stop with an error, or report and skip the record")
    p.add_argument("--on-malformed", default="skip", choices=["skip", "error"],
                   help="malformed or empty records: report (line numbers) and skip, or stop")
    p.add_argument("--k", type=int, default=256, help="top tokens per class to list")
    p.add_argument("--measure", default="fwpmi", choices=["fwpmi", "pmi", "ppmi", "npmi"], help="token score")
    p.add_argument("--alpha", type=float, default=0.0, help="add-alpha smoothing of the PMI estimates")
    p.add_argument("--min-count", type=int, default=1, help="ignore tokens in fewer documents than this")
    p.add_argument("--max-length", type=int, default=512, help="tokens per document (longer ones are cut)")
    p.add_argument("--workers", type=int, default=None,
                   help="tokenizer processes per rank (default: this rank's cores - 1; 0 = in-process)")
    p.add_argument("--block-size", "--batch-size", dest="block_size", type=int, default=512,
                   help="records per tokenization job (also the unit of sharding across ranks)")
    p.add_argument("--device", default="cpu", help="where to count: cpu or cuda")
    p.add_argument("--checkpoint-every", type=int, default=100_000, help="documents between checkpoints")
    p.add_argument("--checkpoint-seconds", type=float, default=300.0, help="seconds between checkpoints")
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints in --out and count afresh")
    p.add_argument("--counts-format", default="auto", choices=["auto", "dense", "sparse"],
                   help="dense [C, V] counts, sparse (memory grows with the nonzero class-token pairs: "
                        "thousands of labels, LLM vocabularies), or auto: dense while C x V x 8 bytes <= 1 GiB")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _out_arg(p)
    p.set_defaults(func=cmd_pmi)

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

    p = sub.add_parser("evaluate", help="forget/retain F1 of a classifier (optionally with an edit applied)")
    _data_args(p)
    p.add_argument("--model", required=True, help="fine-tuned sequence classifier (name or folder)")
    p.add_argument("--edit", help="edit file to apply before evaluating (the base is scored too)")
    p.add_argument("--target", required=True, help="the forgotten class, by name or index")
    p.add_argument("--max-length", type=int, default=128, help="tokens per document (longer ones are cut)")
    p.add_argument("--out", help="write the figures to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="run STEU, its ablations and baselines on one dataset; one table")
    _data_args(p, required=False)
    p.add_argument("--target", default=None, help="class to forget, by name or index (default: the first)")
    p.add_argument("--model", default=None, help="HF model name or folder to fine-tune (default: the offline "
                                                 "MiniLM encoder if installed, else a small random BERT)")
    p.add_argument("--methods", default=None, help="comma-separated subset (default: all)")
    p.add_argument("--n-docs", type=int, default=1200, help="synthetic corpus size when --data is omitted")
    _steu_args(p)
    p.set_defaults(epochs=3)
    p.add_argument("--top-layers", type=int, default=3, help="encoder layers the layer-based baselines train")
    p.add_argument("--seeds", default=None,
                   help="comma-separated seeds (each = data split + fine-tuning + unlearning seed): one run per "
                        "seed and a mean ± sd scorecard (default: --seed only)")
    p.add_argument("--finetune-mode", default="full", choices=["full", "head"],
                   help="fine-tune every parameter (as deployed models are) or only the head on a frozen "
                        "encoder (fast, but then the probe cannot tell the models apart)")
    p.add_argument("--finetune-epochs", type=int, default=None, help="default: 4 (full) / 30 (head)")
    p.add_argument("--finetune-lr", type=float, default=None, help="default: 1e-4 (full) / 1e-2 (head)")
    p.add_argument("--test-fraction", type=float, default=0.3, help="share of the documents held out for F1")
    p.add_argument("--probe-fraction", type=float, default=0.15,
                   help="share of the documents held out as the probe's labelled split (never trained on)")
    p.add_argument("--max-docs", type=int, default=None, help="use a stratified subset of this many documents")
    p.add_argument("--max-train-docs", type=int, default=None, help="cap on the training split (CPU budgets)")
    p.add_argument("--cache-dir", default=None,
                   help="store and reuse the fine-tuned original and gold standard here (weights only)")
    g = p.add_argument_group("adversarial evaluation (scorecard)")
    g.add_argument("--no-probe", action="store_true", help="skip the linear-probe recovery")
    g.add_argument("--probe-pooling", default="mean", choices=["cls", "mean", "pooled"],
                   help="feature reported as probe F1/AUROC (all three are computed)")
    g.add_argument("--probe-train-docs", type=int, default=None, help="cap on the probe's training documents")
    g.add_argument("--no-relearn", action="store_true", help="skip the relearning attack (the slowest part)")
    g.add_argument("--relearn-steps", type=int, default=24, help="relearning attack step budget")
    g.add_argument("--relearn-docs", type=int, default=32,
                   help="labelled target-class documents the attacker holds (as many others are mixed in)")
    g.add_argument("--relearn-params", default="all", choices=["all", "head"],
                   help="what the relearning attacker fine-tunes")
    g.add_argument("--relearn-eval-every", type=int, default=2, help="attack steps between F1 checks")
    g.add_argument("--relearn-eval-docs", type=int, default=200, help="held-out documents scored per check")
    g.add_argument("--no-inspect", action="store_true", help="skip the STEU edit inspection")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _out_arg(p, default="steu_compare")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("hds", help="unlearn a QA domain from a causal LM with HDS (or an ablation/baseline)",
                       description="Hierarchical dual-strategy unlearning: concept-weighted forget loss, retain "
                                   "loss, Fisher-weighted gradient projection, LoRA. --teach-tiny first teaches a "
                                   "small random Llama the QA pairs (offline protocol).")
    p.add_argument("--data", required=True, help="PubMedQA ori_pqal.json (or its folder), MedMCQA or QA JSONL")
    p.add_argument("--format", default="pubmedqa", choices=["pubmedqa", "medmcqa", "jsonl"],
                   help="layout of --data")
    p.add_argument("--forget-mesh", default=None, help="pubmedqa: comma-separated MeSH substrings of the forget "
                                                       "domain (default: with --hierarchy and --forget-domains, the "
                                                       "items whose MESHES name a level 3-4 concept of those domains; "
                                                       "else surgical procedures)")
    p.add_argument("--forget-values", default=None, help="medmcqa: forget subject_name(s) (default Surgery); "
                                                         "jsonl: forget values of --domain-column")
    p.add_argument("--question-column", default="question", help="jsonl: the question field")
    p.add_argument("--options-column", default="options", help="jsonl: list column, or comma-separated columns")
    p.add_argument("--answer-column", default="answer", help="jsonl: the answer (index, letter or option text)")
    p.add_argument("--long-answer-column", default=None, help="jsonl: an explanation field (optional)")
    p.add_argument("--domain-column", default=None, help="jsonl: the field whose --forget-values mark the "
                                                         "forget domain")
    p.add_argument("--model", default=None, help="causal LM (folder or name) that knows the QA pairs")
    p.add_argument("--teach-tiny", action="store_true", help="teach a small random Llama the QA pairs first")
    p.add_argument("--hierarchy", default=None, help="concept hierarchy YAML/JSON (token interventions)")
    p.add_argument("--forget-domains", default=None, help="hierarchy domains to target (default: all)")
    p.add_argument("--method", default="hds", choices=["hds", "hds_no_projection", "hds_no_tokens", "ga", "npo",
                                                       "graddiff"], help="HDS, an ablation or a baseline")
    p.add_argument("--forget-loss", default="npo", choices=["ga", "npo"],
                   help="gradient ascent or negative preference optimisation on the forget items")
    p.add_argument("--retain-loss", default="nll", choices=["nll", "kl", "none"],
                   help="loss that keeps the retain items' answers")
    p.add_argument("--retain-weight", type=float, default=1.0, help="lambda")
    p.add_argument("--question-weight", type=float, default=0.0,
                   help="weight of the term that holds the forget items' question tokens at --question-target "
                        "(so that the MIA cannot tell them from never-seen items); 0 = off")
    p.add_argument("--question-target", default="auto",
                   help="mean question-token NLL (nats) to hold them at (with --question-weight > 0); auto: "
                        "the median question NLL of the model on the stop half of the never-seen items "
                        "(never taught, not the reported ones), reported in report.json")
    p.add_argument("--projection", default="conflict", choices=["conflict", "always", "none"],
                   help="project the forget gradient off the retain gradient when they conflict, always, or never")
    p.add_argument("--no-fisher", action="store_true", help="plain PCGrad inner product")
    p.add_argument("--subspace", type=int, default=0, help="project against the last m retain gradients")
    p.add_argument("--adapter", default="lora", choices=["lora", "none"],
                   help="train LoRA adapters, or every parameter")
    p.add_argument("--lora-r", type=int, default=4, help="LoRA rank")
    p.add_argument("--lora-targets", default="all-linear", help="comma-separated module names, or all-linear")
    p.add_argument("--lora-layers", default=None, help="comma-separated decoder layer indices (default: all)")
    p.add_argument("--lr", type=float, default=1e-2, help="1e-2 suits LoRA; use ~3e-4 for the full-parameter "
                                                           "baselines ga/npo/graddiff")
    p.add_argument("--epochs", type=int, default=30, help="most epochs (passes over the forget items)")
    p.add_argument("--stop", default=None, choices=["indistinguishable", "none"],
                   help="indistinguishable: stop once the forget items' accuracy is within --band of the never-seen "
                        "level (the model's accuracy on never-seen items) and the MIA AUC within --auc-band of 0.5, "
                        "both on the stop half; the closest epoch is kept when never met (the default when there "
                        "are >= 2 never-seen items). none: --epochs epochs")
    p.add_argument("--band", type=float, default=0.05, help="accuracy band around the never-seen level")
    p.add_argument("--auc-band", type=float, default=0.05, help="MIA AUC band around 0.5")
    p.add_argument("--stop-fraction", type=float, default=0.5,
                   help="share of the forget and never-seen items the stopping rule (and --question-target auto) "
                        "may use; the figures are reported on the rest")
    p.add_argument("--stop-at-forgetting", type=float, default=None,
                   help="the paper's framing instead: stop once the forgetting rate (on the stop half) reaches this")
    p.add_argument("--batch-size", type=int, default=16, help="forget (and as many retain) items per step")
    p.add_argument("--max-length", type=int, default=64, help="tokens per prompt + answer")
    p.add_argument("--clip-norm", type=float, default=None, help="DP-style clipping (no privacy claim)")
    p.add_argument("--noise-multiplier", type=float, default=0.0, help="DP-style gradient noise (no privacy "
                                                                       "claim)")
    p.add_argument("--max-forget", type=int, default=None, help="subsample the forget domain")
    p.add_argument("--max-retain", type=int, default=None, help="subsample the retain domain")
    p.add_argument("--never-seen-fraction", type=float, default=0.2,
                   help="forget-domain items held out (never taught/unlearned) for the MIA")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="dtype of the model's weights (bfloat16 halves the memory of a large LM)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the forward passes (A100/H100); the "
                                                       "Fisher EMA and the projection stay fp32")
    p.add_argument("--seed", type=int, default=0, help="random seed (subsampling, batches, initialisation)")
    p.add_argument("--save-model", action="store_true", help="also save the unlearned (merged) model; the edit "
                                                             "itself is always written as adapter/ (unmerged PEFT)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _out_arg(p)
    p.set_defaults(func=cmd_hds)

    p = sub.add_parser("hierarchy", help="build an HDS concept hierarchy from MeSH XML or a UMLS release",
                       description="Streams MeSH descriptor XML (desc20XX.xml) or a UMLS folder (MRCONSO.RRF with "
                                   "MRHIER.RRF or MRREL.RRF) into the 4-level hierarchy file HDS reads. Levels: "
                                   "forget branches -> 3 (root and --specialty-depth levels below) / 4 (deeper); "
                                   "basic branches -> 1; clinical branches -> 2; preserving levels win over "
                                   "targeted ones. Malformed lines are reported with their line numbers.")
    p.add_argument("--from-mesh", default=None, help="MeSH descriptor XML file")
    p.add_argument("--from-umls", default=None, help="UMLS META folder (MRCONSO.RRF + MRHIER.RRF or MRREL.RRF)")
    p.add_argument("--forget-branch", action="append", help="BRANCH=DOMAIN, repeatable: a MeSH tree number "
                                                             "(E04=surgery) or, for UMLS, a CUI")
    p.add_argument("--basic-branches", default="A,G", help="level 1 (basic biology) branches, comma-separated")
    p.add_argument("--clinical-branches", default="C23,E01,M01,N05",
                   help="level 2 (general clinical skills) branches, comma-separated")
    p.add_argument("--specialty-depth", type=int, default=1,
                   help="forget-branch nodes at most this deep below the branch are level 3, deeper ones level 4")
    p.add_argument("--sab", default="MSH", help="UMLS: the source vocabulary whose hierarchy places the concepts")
    p.add_argument("--term-sabs", default=None, help="UMLS: source vocabularies whose strings become terms "
                                                      "(default: --sab)")
    p.add_argument("--permuted", action="store_true", help="MeSH: also the permuted (inverted) entry terms")
    p.add_argument("--min-term-chars", type=int, default=3, help="drop shorter terms")
    p.add_argument("--on-malformed", default="skip", choices=["skip", "error"],
                   help="malformed lines/records: report (line numbers) and skip, or stop")
    p.add_argument("--out", required=True, help="hierarchy file to write (.yaml, .yml or .json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing hierarchy file")
    p.set_defaults(func=cmd_hierarchy)

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

    for name, revert in (("apply-edit", False), ("revert-edit", True)):
        p = sub.add_parser(name, help=("apply an edit to its base model" if not revert else
                                       "restore the original weights of an edited model"))
        p.add_argument("--model", required=True, help="base model (apply) or edited model (revert)")
        p.add_argument("--edit", required=True, help="edit .safetensors file")
        p.add_argument("--force", action="store_true", help="skip the check that the model matches the edit")
        _out_arg(p)
        p.set_defaults(func=(lambda a, r=revert: _edit_cmd(a, r)))
    return parser


def _one_line(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    if isinstance(e, OSError) and e.filename and str(e.filename) not in msg:
        msg = f"{msg}: {e.filename}"
    return " ".join(line.strip() for line in msg.splitlines() if line.strip())


def _sigterm_as_exit():
    """SIGTERM (a job scheduler, ``kill``) as SystemExit, so that temporary outputs are cleaned up; returns the
    handler to restore (None when not in the main thread)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, handler)


def main(argv: Optional[List[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    previous = _sigterm_as_exit()
    try:
        return _main(a)
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)


def _main(a) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        return a.func(a)
    except KeyError as e:   # a missing key/column: say what was missing, not just its repr
        print(f"steu {a.command}: error: missing entry {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (FileNotFoundError, ValueError) as e:
        print(f"steu {a.command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RecursionError:
        print(f"steu {a.command}: error: an input file is nested too deeply to read", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:   # unwritable or full output folder, over-long path, unreadable input, ...
        print(f"steu {a.command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"steu {a.command}: interrupted", file=sys.stderr)
        return 130

