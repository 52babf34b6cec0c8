"""Issue #13 item 12: STEUTrainer and create_steu_optimizer leave the caller's model as they found it
(apart from the trained weights): requires_grad flags come back, the gradient hook can be removed."""
from __future__ import annotations

import copy

import numpy as np
import pytest

pytest.importorskip("transformers")
from transformers import TrainingArguments  # noqa: E402

from steu_ext.experiments.synthetic import generate_notes  # noqa: E402
from steu_ext.experiments.tiny_models import tiny_bert  # noqa: E402
from steu_ext.integrations.hf import STEUTrainer, create_steu_optimizer, release_steu_optimizer  # noqa: E402
from steu_ext.methods.steu import STEUConfig  # noqa: E402


@pytest.fixture(scope="module")
def notes():
    d = generate_notes(n_docs=40, seed=0)
    model, tok = tiny_bert(d["text"], len(d["label_names"]), True, vocab_size=300)
    return dict(model=model, tok=tok, texts=d["text"], labels=d["labels"], names=d["label_names"])


def _flags(model):
    return {n: p.requires_grad for n, p in model.named_parameters()}


def test_create_and_release_steu_optimizer(notes):
    model = copy.deepcopy(notes["model"])
    model.bert.encoder.layer[0].attention.self.query.weight.requires_grad_(False)   # a caller's own choice
    before = _flags(model)
    opt = create_steu_optimizer(model, [5, 9, 11], lr=1e-2, head_lr=1e-2)
    assert sum(_flags(model).values()) < sum(before.values())
    emb = model.get_input_embeddings().weight
    assert opt.grad_mask_handle is not None
    release_steu_optimizer(opt)
    assert _flags(model) == before
    assert opt.grad_mask_handle is None
    # the hook is gone: a gradient outside the rows is no longer zeroed
    emb.grad = None
    (emb.sum()).backward()
    assert bool((emb.grad != 0).all())
    release_steu_optimizer(opt)   # idempotent


def test_steu_trainer_restores_requires_grad(notes, tmp_path):
    model = copy.deepcopy(notes["model"])
    before = _flags(model)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", disable_tqdm=True, use_cpu=True,
                             save_strategy="no", max_steps=1, per_device_train_batch_size=4)
    labels = np.zeros((len(notes["texts"]), len(notes["names"])), dtype=np.int64)   # numpy [N, C] (item 10)
    for i, ys in enumerate(notes["labels"]):
        labels[i, ys] = 1
    t = STEUTrainer(model, args, processing_class=notes["tok"], texts=notes["texts"], labels=labels,
                    target=notes["names"][0], label_names=notes["names"],
                    steu_config=STEUConfig(k=8, max_length=24))
    assert sum(_flags(model).values()) < sum(before.values())      # frozen for training
    forget_docs = sum(1 for ys in notes["labels"] if 0 in ys)
    assert len(t.plan.forget) == forget_docs                         # numpy matrix read as a matrix
    t.train()
    assert _flags(model) == before                                   # given back after training
