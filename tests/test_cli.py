"""The ``steu`` command: the demo end to end (small and fast here) and its bad-input exit codes."""
from __future__ import annotations

import json
import os

import pytest

from steu_ext.cli import EXIT_BAD_INPUT, main
from steu_ext.data.synthetic import generate_notes


def test_demo_tiny_model_writes_report(tmp_path, monkeypatch):
    # the fallback path (no pretrained encoder): a tiny random BERT, fully fine-tuned, then unlearned
    import steu_ext.methods.experiment as ex

    monkeypatch.setattr(ex, "offline_minilm_path", lambda: None)
    out = tmp_path / "rep"
    rc = main(["demo", "--n-docs", "240", "--k", "32", "--epochs", "2", "--finetune-epochs", "4",
               "--max-length", "64", "--out", str(out), "--quiet"])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["model"].startswith("tiny random BERT")
    assert rep["target_name"] == "cardiology"
    assert rep["params_modified"]["count"] == rep["edit"]["elements_modified"] > 0
    assert 0 < rep["params_modified"]["percent"] < 100
    assert set(rep["before"]) >= {"forget_f1", "retain_macro_f1", "retain_f1", "per_class_f1"}
    assert (out / "f1_before_after.png").stat().st_size > 1000
    assert (out / "edit.safetensors").exists()


def test_demo_on_a_csv_file(tmp_path, monkeypatch):
    import steu_ext.methods.experiment as ex

    monkeypatch.setattr(ex, "offline_minilm_path", lambda: None)
    g = generate_notes(160, seed=3, max_labels=1)
    csv = tmp_path / "notes.csv"
    with open(csv, "w") as f:
        f.write("note,dx\n")
        for t, y in zip(g["text"], g["labels"]):
            f.write('"' + t.replace('"', "'") + '",' + g["label_names"][y[0]] + "\n")
    out = tmp_path / "rep"
    rc = main(["demo", "--data", str(csv), "--text-column", "note", "--label-column", "dx",
               "--target", "neurology", "--k", "16", "--epochs", "1", "--finetune-epochs", "2",
               "--max-length", "48", "--out", str(out), "--quiet"])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["target_name"] == "neurology"
    assert rep["label_names"] == sorted(g["label_names"])


@pytest.mark.parametrize("args,msg", [
    (["--data", "/nonexistent/notes.csv"], "not found"),
    (["--data", "{csv}", "--text-column", "body"], "no column"),
    (["--data", "{csv}", "--target", "oncology"], "unknown class name"),
    (["--data", "{csv}", "--k", "100000000"], "larger than the vocabulary"),
])
def test_demo_bad_input(tmp_path, capsys, monkeypatch, args, msg):
    import steu_ext.methods.experiment as ex

    monkeypatch.setattr(ex, "offline_minilm_path", lambda: None)
    csv = tmp_path / "d.csv"
    csv.write_text("text,label\n" + "".join(f"chest pain {i},a\nfever cough {i},b\n" for i in range(10)))
    out = tmp_path / "rep"
    args = [a.replace("{csv}", str(csv)) for a in args]
    rc = main(["demo", *args, "--finetune-epochs", "1", "--epochs", "1", "--out", str(out), "--quiet"])
    assert rc == EXIT_BAD_INPUT
    assert msg in capsys.readouterr().err
    assert not os.path.exists(out / "report.json")
