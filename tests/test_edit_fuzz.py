"""Issue #13 item 2: property-based fuzz of edit apply/revert (hypothesis): random rows (duplicates and
out-of-range ids included), dtypes and head shapes (broadcastable and wrong ones included). Every apply is
either refused with the model bit-identical, or succeeds, leaves every other row untouched, and revert
restores the model bit-exactly."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from steu_ext.methods.edit import STEUEdit  # noqa: E402

FUZZ = settings(max_examples=int(os.environ.get("STEU_FUZZ_EXAMPLES", "60")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


class Tiny(nn.Module):
    def __init__(self, V, D, C, dtype):
        super().__init__()
        self.emb = nn.Embedding(V, D).to(dtype)
        self.head = nn.Linear(D, C).to(dtype)


def _snap(m):
    return {n: p.detach().clone() for n, p in m.named_parameters()}


def _same(m, snap):
    return all(torch.equal(p, snap[n]) for n, p in m.named_parameters())


@st.composite
def case(draw):
    V, D, C = draw(st.integers(1, 12)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    ids = draw(st.lists(st.integers(-2, V + 1), max_size=V + 2))
    return dict(V=V, D=D, C=C, ids=ids, model_dtype=draw(st.sampled_from(DTYPES)),
                edit_dtype=draw(st.sampled_from(DTYPES)),
                head_rows=draw(st.sampled_from(["ok", "one", "extra"])),
                width=draw(st.sampled_from(["ok", "narrow"])), check=draw(st.booleans()),
                seed=draw(st.integers(0, 2 ** 16)))


@FUZZ
@given(c=case())
def test_fuzz_apply_revert(c):
    torch.manual_seed(c["seed"])
    model = Tiny(c["V"], c["D"], c["C"], c["model_dtype"])
    base = _snap(model)
    V, D, C, dt = c["V"], c["D"], c["C"], c["edit_dtype"]
    ids = torch.tensor(c["ids"], dtype=torch.int64)
    Dw = D if c["width"] == "ok" else max(D - 1, 0)
    safe = ids.clamp(0, V - 1)
    old_rows = base["emb.weight"][safe][:, :Dw].to(dt) if ids.numel() else torch.zeros(0, Dw, dtype=dt)
    new_rows = old_rows + 1
    rows_h = {"ok": C, "one": 1, "extra": C + 1}[c["head_rows"]]
    old_w = torch.zeros(rows_h, D, dtype=dt)
    old_w[: min(rows_h, C)] = base["head.weight"][: min(rows_h, C)].to(dt)
    old_head = {"head.weight": old_w, "head.bias": base["head.bias"].to(dt)}
    new_head = {k: v - 1 for k, v in old_head.items()}
    edit = STEUEdit("emb.weight", ids, old_rows, new_rows, old_head, new_head, {})
    try:
        edit.apply(model, check=c["check"])
    except (ValueError, TypeError):
        assert _same(model, base), "a refused apply changed the model"
        return
    # accepted: it must have been fully valid
    assert dt == c["model_dtype"] and Dw == D and rows_h == C
    assert ids.numel() == len(set(c["ids"])) and all(0 <= i < V for i in c["ids"])
    p = dict(model.named_parameters())
    others = torch.ones(V, dtype=torch.bool)
    others[ids] = False
    assert torch.equal(p["emb.weight"][others], base["emb.weight"][others])
    assert torch.equal(p["emb.weight"][ids], new_rows)
    edit.revert(model)
    assert _same(model, base), "apply then revert is not bit-exact"


def test_edit_save_load_round_trip_fuzzless(tmp_path):
    model = Tiny(8, 3, 2, torch.bfloat16)
    base = _snap(model)
    ids = torch.tensor([0, 7, 3])
    w = base["emb.weight"][ids]
    edit = STEUEdit("emb.weight", ids, w, w * 2, {"head.bias": base["head.bias"]},
                    {"head.bias": base["head.bias"] + 1}, {"k": 3})
    edit.save(tmp_path / "e.safetensors")
    loaded = STEUEdit.load(tmp_path / "e.safetensors")
    loaded.apply(model)
    loaded.revert(model)
    assert _same(model, base)
