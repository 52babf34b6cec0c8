"""Shared test fixtures: seeding, devices (``STEU_TEST_DEVICE``), backends and the real data location."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

# Triton kernels run on CPU tensors through the interpreter when there is no GPU (set before triton loads).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import steu_ext
from steu_ext import _backend

DATA_ROOT = Path(os.environ.get("STEU_DATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data"))
MEDICAL_ABSTRACTS = DATA_ROOT / "medical_abstracts"


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


@pytest.fixture(scope="session")
def medical_abstracts_root():
    if not (MEDICAL_ABSTRACTS / "medical_tc_test.csv").exists():
        if os.environ.get("CI"):  # in CI the real-data tests must run, never silently skip
            pytest.fail(f"real data not found at {MEDICAL_ABSTRACTS} (set STEU_DATA_ROOT)")
        pytest.skip(f"real data not found at {MEDICAL_ABSTRACTS} (set STEU_DATA_ROOT)")
    return str(MEDICAL_ABSTRACTS)
