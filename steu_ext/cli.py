"""The ``steu`` command.

    steu demo                      # offline: synthetic clinical notes + the packaged MiniLM encoder
    steu demo --data notes.csv --text-column text --label-column dx --target sepsis --model bert-base-uncased

Exit codes: 0 success, 2 bad input (missing file, unknown column or class, ...), 1 unexpected failure.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2


def _demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="fine-tune, unlearn one class with STEU, evaluate and report",
                       description="Runs STEU end to end. Without --data it uses the embedded synthetic "
                                   "clinical-note corpus and needs no network.")
    p.add_argument("--data", help="CSV/TSV/JSONL/parquet file with labelled text (default: synthetic notes)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--label-sep", default=None, help="separator of multiple labels in one cell (multi-label)")
    p.add_argument("--target", default=None, help="class to forget, by name or index (default: the first)")
    p.add_argument("--model", default=None, help="HF model name or folder (default: the offline MiniLM "
                                                 "encoder if installed, else a small random BERT)")
    p.add_argument("--n-docs", type=int, default=1200, help="synthetic corpus size")
    p.add_argument("--k", type=int, default=256, help="embedding rows to edit")
    p.add_argument("--measure", default="fwpmi", choices=["fwpmi", "pmi", "ppmi", "npmi"])
    p.add_argument("--epochs", type=int, default=3, help="unlearning epochs over the forget set")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of the embedding rows")
    p.add_argument("--head-lr", type=float, default=1e-2, help="learning rate of the head")
    p.add_argument("--utility-weight", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--finetune-epochs", type=int, default=30, help="0 = the model is already fine-tuned")
    p.add_argument("--test-fraction", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="steu_report", help="report folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_demo(a) -> int:
    from .methods.experiment import DEFAULT_MODEL, offline_minilm_path, run_experiment, summary_table
    from .methods.steu import STEUConfig

    if a.data:
        from .data.loaders import load_text_classification

        data = load_text_classification(a.data, a.text_column, a.label_column, a.label_sep)
        source = a.data
    else:
        from .data.synthetic import generate_notes

        g = generate_notes(a.n_docs, seed=a.seed)
        from .data.loaders import TextClassificationData

        data = TextClassificationData(g["text"], g["labels"], g["label_names"], True)
        source = f"synthetic clinical notes ({a.n_docs}, seed {a.seed})"
    model = a.model or DEFAULT_MODEL
    if model == DEFAULT_MODEL and offline_minilm_path() is None:
        print(f"note: {DEFAULT_MODEL} is not installed; using a small randomly initialised BERT", file=sys.stderr)
    cfg = STEUConfig(k=a.k, measure=a.measure, epochs=a.epochs, lr=a.lr, head_lr=a.head_lr,
                     utility_weight=a.utility_weight, batch_size=a.batch_size, max_length=a.max_length,
                     seed=a.seed)
    target = a.target if a.target is not None else 0
    print(f"data: {source}: {len(data)} documents, classes {data.label_names}")
    report = run_experiment(data, target, model=model, out_dir=a.out, config=cfg,
                            test_fraction=a.test_fraction, finetune_epochs=a.finetune_epochs, seed=a.seed,
                            progress=not a.quiet, extra={"source": source})
    print(f"model: {report['model']}")
    print(f"forgot class {report['target_name']!r} with STEU (k={report['selected_tokens']['k']}):\n")
    print(summary_table(report))
    print(f"\nreport: {os.path.join(a.out, 'report.json')}, plot: {os.path.join(a.out, 'f1_before_after.png')}, "
          f"edit: {report['edit']['path']}")
    return EXIT_OK


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="steu", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _demo_parser(sub)
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        if a.command == "demo":
            return _run_demo(a)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"steu {a.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
