"""Shared test fixtures: seeding, devices (``STEU_TEST_DEVICE``), backends and the real data location."""
from __future__ import annotations

import os
import random
import socket
from pathlib import Path

import pytest
import torch

# Triton kernels run on CPU tensors through the interpreter when there is no GPU (set before triton loads).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import steu_ext
from steu_ext import _backend, datasets

MEDICAL_ABSTRACTS = datasets.path("medical_abstracts")


def devices_under_test():
    """Devices to test on: ``STEU_TEST_DEVICE`` (comma list) or CPU plus CUDA when present."""
    env = os.environ.get("STEU_TEST_DEVICE")
    if env:
        return [d.strip() for d in env.split(",") if d.strip()]
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backends_for(op: str):
    """(device, backend) pairs that can run ``op`` here; unavailable ones are listed as skipped params."""
    out = []
    for dev in devices_under_test():
        for name, why in steu_ext.available_backends(op, dev).items():
            marks = [pytest.mark.skip(reason=why)] if why else []
            out.append(pytest.param(dev, name, id=f"{dev}-{name}", marks=marks))
    return out


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def force_backend():
    """``force_backend(op, name)`` runs ``op`` on backend ``name`` for the rest of the test."""
    saved = _backend._forced

    def force(op: str, name: str):
        spec = dict(_backend._forced or {})
        spec[op] = name
        _backend._forced = spec

    yield force
    _backend._forced = saved


def _real_data(path: Path) -> Path:
    """``path``, which must exist: the data sets ship inside the package (``steu_ext/datasets``), so a
    missing file is a broken checkout or a wrong ``STEU_DATA_ROOT``, never a reason to skip."""
    if not path.exists():
        pytest.fail(f"real data not found at {path} (bundled in steu_ext/datasets; check STEU_DATA_ROOT)")
    return path


def save_tiny_classifier(root: Path, *, n_docs: int, n_train: int, vocab_size: int, max_length: int,
                         epochs: int) -> dict:
    """A tiny BERT fine-tuned end to end on the first ``n_train`` of ``n_docs`` single-label synthetic notes,
    saved with its tokenizer (class names in its config) under ``root/"model"``; returns the notes
    (``generate_notes``), ``names``, ``model`` and ``tok``."""
    from steu_ext.experiments.synthetic import generate_notes
    from steu_ext.experiments.tiny_models import tiny_bert
    from steu_ext.methods.finetune import train_classifier
    from steu_ext.modeling.encoders import Encoded
    from steu_ext.modeling.labels import label_matrix

    g = generate_notes(n_docs, seed=5, max_labels=1)
    names = g["label_names"]
    model, tok = tiny_bert(g["text"], len(names), True, vocab_size=vocab_size)
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {n: i for i, n in enumerate(names)}
    torch.manual_seed(0)
    enc = Encoded(tok, g["text"], label_matrix(g["labels"], len(names)), max_length)
    train_classifier(model, enc, range(n_train), mode="full", epochs=epochs)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return dict(notes=g, names=names, model=model, tok=tok)


@pytest.fixture(scope="session")
def medical_abstracts_root():
    _real_data(MEDICAL_ABSTRACTS / "medical_tc_test.csv")
    return str(MEDICAL_ABSTRACTS)


@pytest.fixture(scope="session")
def pubmedqa_path() -> Path:
    return _real_data(datasets.path("pubmedqa") / "ori_pqal.json")


def torchrun_setup():
    """``(port, env)`` for launching ``torch.distributed.run`` from a test: a free local port, and this
    environment with one thread per process and no rank variables inherited from an outer launcher."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return port, env
