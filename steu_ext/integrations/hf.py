"""The Hugging Face ``Trainer`` integration, one module per method; this module re-exports both.

* :mod:`steu_ext.integrations.hf_steu` — STEU for sequence classifiers: :class:`STEUTrainer`, the
  row-sparse optimizer factory (:func:`create_steu_optimizer`, :func:`release_steu_optimizer`,
  :func:`mask_embedding_grad`), its dataset, collator and metrics, and :func:`load_edited`. Its module
  docstring describes batching, dropout, checkpoints and exact resume, mixed precision and DDP.
* :mod:`steu_ext.integrations.hf_hds` — HDS for causal LMs: :class:`HDSTrainer` and its dataset,
  sampler and collator.

    from transformers import TrainingArguments
    from steu_ext.integrations.hf import STEUTrainer, load_edited
    from steu_ext.methods.steu import STEUConfig

    args = TrainingArguments(output_dir="out", num_train_epochs=5, per_device_train_batch_size=16,
                             lr_scheduler_type="constant", save_steps=50, use_cpu=True)
    trainer = STEUTrainer(model, args, processing_class=tok, texts=train_texts, labels=train_labels,
                          target="sepsis", class_names=names, steu_config=STEUConfig(k=256),
                          eval_dataset=None)          # or STEUTrainer.encode(...) of held-out documents
    trainer.train()                                   # or .train(resume_from_checkpoint=True)
    trainer.edit().save("forget_sepsis.safetensors")  # exactly what changed, old and new values
    model = load_edited("my-finetuned-clinical-bert", "forget_sepsis.safetensors")
"""
from __future__ import annotations

from .hf_hds import HDS_STATE_NAME, HDSCollator, HDSEpochSampler, HDSPairDataset, HDSTrainer
from .hf_steu import (
    STATE_NAME,
    EncodedDataset,
    STEUCollator,
    STEUExample,
    STEUPairDataset,
    STEUTrainer,
    create_steu_optimizer,
    encode_dataset,
    load_edited,
    mask_embedding_grad,
    release_steu_optimizer,
    steu_compute_metrics,
)

__all__ = ["STEUTrainer", "STEUPairDataset", "STEUExample", "STEUCollator", "EncodedDataset",
           "encode_dataset", "steu_compute_metrics", "create_steu_optimizer", "mask_embedding_grad",
           "load_edited", "release_steu_optimizer", "STATE_NAME", "HDSTrainer", "HDSPairDataset", "HDSCollator",
           "HDSEpochSampler", "HDS_STATE_NAME"]
