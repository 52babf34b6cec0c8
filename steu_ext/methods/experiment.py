"""Compatibility shim: the demo experiment moved to :mod:`steu_ext.experiments.steu_demo`, loading a
classifier to :mod:`steu_ext.modeling.loading` and ``tiny_bert`` to :mod:`steu_ext.experiments.tiny_models`.
``from steu_ext.methods.experiment import ...`` keeps working for the names below."""
# compatibility shim (PEP 562): resolved lazily, so importing steu_ext.methods never imports experiments/
import importlib

_MOVED = {
    "DEFAULT_MODEL": "steu_ext.modeling.loading",
    "offline_minilm_path": "steu_ext.modeling.loading",
    "load_classifier": "steu_ext.modeling.loading",
    "tiny_bert": "steu_ext.experiments.tiny_models",
    "run_experiment": "steu_ext.experiments.steu_demo",
    "summary_table": "steu_ext.experiments.steu_demo",
    "probe_f1": "steu_ext.experiments.steu_demo",
}

__all__ = list(_MOVED)


def __getattr__(name: str):
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_MOVED))
