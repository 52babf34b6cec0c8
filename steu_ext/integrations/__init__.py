"""Integrations with training frameworks. ``hf`` (re-exporting ``hf_steu`` and ``hf_hds``, one module per
method): STEU inside the Hugging Face ``Trainer`` (:class:`~steu_ext.integrations.hf.STEUTrainer`), the
row-sparse optimizer factory (:func:`~steu_ext.integrations.hf.create_steu_optimizer`) and
:func:`~steu_ext.integrations.hf.load_edited`; HDS in the ``Trainer``
(:class:`~steu_ext.integrations.hf.HDSTrainer`). Names resolve lazily, so importing this package does not
import transformers."""
from __future__ import annotations

import importlib

_HF = ("STEUTrainer", "STEUPairDataset", "STEUExample", "STEUCollator", "EncodedDataset", "encode_dataset",
       "steu_compute_metrics", "create_steu_optimizer", "release_steu_optimizer", "mask_embedding_grad",
       "load_edited")

__all__ = list(_HF)


def __getattr__(name: str):
    if name in _HF:
        return getattr(importlib.import_module(".hf", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
