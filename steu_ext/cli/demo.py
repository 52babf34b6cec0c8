"""``steu demo``: fine-tune, unlearn one class with STEU, evaluate and report (offline without --data)."""
from __future__ import annotations

import os
import sys

from ._common import (
    EXIT_OK,
    _check_model_path,
    _check_out,
    _config,
    _data_args,
    _load_data,
    _out_arg,
    _output_dir,
    _steu_args,
)


def register(sub) -> None:
    """``steu demo`` and its options."""
    p = sub.add_parser("demo", help="fine-tune, unlearn one class with STEU, evaluate and report",
                       description="Runs STEU end to end. Without --data it uses the embedded synthetic "
                                   "clinical-note corpus and needs no network.")
    _data_args(p, required=False)
    p.add_argument("--target", default=None, help="class to forget, by name or index (default: the first)")
    p.add_argument("--model", default=None, help="HF model name or folder (default: the offline MiniLM "
                                                 "encoder if installed, else a small random BERT)")
    p.add_argument("--n-docs", type=int, default=1200, help="synthetic corpus size")
    _steu_args(p)
    # The synthetic notes run ~200 tokens; 64 of them and STEU's own 5 epochs keep the full fine-tune + edit
    # at ~2.5 min on 2 idle cores (128 tokens and 3 epochs took 1.7x the CPU time and left forget F1 at 0.12).
    p.set_defaults(epochs=5, max_length=64)
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


def cmd_demo(a) -> int:
    from ..experiments.steu_demo import run_experiment, summary_table
    from ..modeling.loading import DEFAULT_MODEL, offline_minilm_path

    _check_out(a.out, a.overwrite, [a.data, a.model])
    _check_model_path(a.model)
    if a.data:
        data, source = _load_data(a), a.data
    else:
        from ..data.loaders import TextClassificationData
        from ..experiments.synthetic import generate_notes

        g = generate_notes(a.n_docs, seed=a.seed)
        data = TextClassificationData(g["text"], g["labels"], g["label_names"], True)
        source = f"synthetic clinical notes ({a.n_docs}, seed {a.seed})"
    model = a.model or DEFAULT_MODEL
    if model == DEFAULT_MODEL and offline_minilm_path() is None:
        print(f"note: {DEFAULT_MODEL} is not installed; using a small randomly initialised BERT", file=sys.stderr)
    from ..modeling.labels import resolve_target

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
