"""Compatibility shim: the synthetic clinical-note corpus of the demo moved to
:mod:`steu_ext.experiments.synthetic`. ``from steu_ext.data.synthetic import ...`` keeps working."""
# compatibility shim (PEP 562): resolved lazily, so importing steu_ext.data never imports experiments/
import importlib

_TARGET = "steu_ext.experiments.synthetic"


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_TARGET), name)
