"""What the ``steu`` subcommands share: exit codes and the one-line user error, the help formatter, argument
groups (data, output folder, STEU options), output folders built under a temporary name, model-path and device
checks, error formatting and SIGTERM handling."""
from __future__ import annotations

import argparse
import json
import os
from typing import Optional

EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2


class BadInput(ValueError):
    """A user error: reported in one line with exit code 2."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (flags, ``None``) or the help text
    already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or "default" in text:
            return text
        return super()._get_help_string(action)


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


# ---- output folders -----------------------------------------------------------------------------------
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


# ---- models and devices -------------------------------------------------------------------------------
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


def _save_model(model, tok, path: str) -> None:
    model.save_pretrained(path)
    tok.save_pretrained(path)


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


# ---- errors and signals -------------------------------------------------------------------------------
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
