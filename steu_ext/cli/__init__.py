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

One module per subcommand (``demo``, ``pmi``, ``unlearn``, ``evaluate``, ``compare``, ``hds``,
``hierarchy``, ``edits``, ``apply_edit`` for apply-edit/revert-edit) declares its options in
``register(sub)`` next to its handler; what they share lives in ``_common``.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from typing import List, Optional

from . import apply_edit, compare, demo, edits, evaluate, hds, hierarchy, pmi, unlearn
from ._common import EXIT_BAD_INPUT, EXIT_FAIL, EXIT_OK, BadInput, _HelpFormatter, _one_line, _sigterm_as_exit
from .compare import cmd_compare
from .demo import cmd_demo
from .edits import cmd_edits
from .evaluate import cmd_evaluate
from .hds import _load_qa, cmd_hds
from .hierarchy import cmd_hierarchy
from .pmi import cmd_pmi
from .unlearn import cmd_unlearn

__all__ = ["EXIT_OK", "EXIT_FAIL", "EXIT_BAD_INPUT", "BadInput", "build_parser", "main", "cmd_demo", "cmd_pmi",
           "cmd_unlearn", "cmd_evaluate", "cmd_compare", "cmd_hds", "cmd_hierarchy", "cmd_edits",
           "_load_qa", "_sigterm_as_exit"]   # the last two: used by the tests

_SUBCOMMANDS = (demo, pmi, unlearn, evaluate, compare, hds, hierarchy, edits, apply_edit)   # the help's order


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steu", description="Class-level unlearning for clinical text "
                                     "classifiers (STEU).", epilog="exit codes: 0 ok, 2 bad input, 1 failure")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser = functools.partial(sub.add_parser, formatter_class=_HelpFormatter)

    for module in _SUBCOMMANDS:
        module.register(sub)
    return parser


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
