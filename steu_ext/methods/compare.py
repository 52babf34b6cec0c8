"""Compatibility shim: the comparison protocol (``run_compare``, ``run_scorecard``, ``format_table``,
``METHODS``...) moved to :mod:`steu_ext.experiments.compare`. ``from steu_ext.methods.compare import ...``
keeps working."""
# compatibility shim (PEP 562): resolved lazily, so importing steu_ext.methods never imports experiments/
import importlib

_TARGET = "steu_ext.experiments.compare"


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_TARGET), name)
