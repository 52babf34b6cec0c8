"""A clinical user's first day (issue #14): no copies of patient text, warnings on vacuous results,
progress and compile messages, CLI help."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import save_tiny_classifier

from steu_ext.data.loaders import load_text_classification

MARKER = "PATIENTMARKER-7f3a"
ROOT = Path(__file__).resolve().parents[1]


def _files_under(root: Path):
    return [p for p in root.rglob("*") if p.is_file()]


def _write_inputs(d: Path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [(f"{MARKER} note {i} fever cough", "sepsis" if i % 2 else "asthma") for i in range(20)]
    (d / "notes.csv").write_text("text,label\n" + "".join(f'"{t}",{y}\n' for t, y in rows))
    (d / "notes.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    pq.write_table(pa.table({"text": [t for t, _ in rows], "label": [y for _, y in rows]}), d / "notes.parquet")


def test_loading_user_data_leaves_no_copy(tmp_path):
    """Every supported format is read in memory: nothing appears in the HF datasets cache, in HOME or in
    the temporary folder (HF ``datasets`` used to write an Arrow copy of the whole file)."""
    data = tmp_path / "data"
    data.mkdir()
    _write_inputs(data)
    home, cache, tmp = tmp_path / "home", tmp_path / "hfcache", tmp_path / "tmp"
    for d in (home, cache, tmp):
        d.mkdir()
    env = {**os.environ, "HOME": str(home), "HF_HOME": str(home / "hf"), "HF_DATASETS_CACHE": str(cache),
           "XDG_CACHE_HOME": str(home / ".cache"), "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    code = ("import sys\nfrom steu_ext.data.loaders import load_text_classification\n"
            "for f in sys.argv[1:]:\n    d = load_text_classification(f)\n"
            "    assert len(d) == 20 and d.label_names == ['asthma', 'sepsis'], (f, d.label_names)\n")
    files = [str(data / n) for n in ("notes.csv", "notes.jsonl", "notes.parquet")]
    r = subprocess.run([sys.executable, "-c", code, *files], env=env, cwd=str(tmp_path), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert _files_under(cache) == []
    leaked = [p for root in (home, tmp) for p in _files_under(root) if MARKER.encode() in p.read_bytes()]
    assert leaked == []


def test_loader_formats_and_errors(tmp_path):
    import gzip

    _write_inputs(tmp_path)
    csv_d = load_text_classification(str(tmp_path / "notes.csv"))
    for name in ("notes.jsonl", "notes.parquet"):
        d = load_text_classification(str(tmp_path / name))
        assert d.text == csv_d.text and d.labels == csv_d.labels
    gz = tmp_path / "notes.csv.gz"
    gz.write_bytes(gzip.compress((tmp_path / "notes.csv").read_bytes()))
    assert load_text_classification(str(gz)).text == csv_d.text
    # a JSON array, a UTF-8 BOM, numeric labels, TSV
    (tmp_path / "a.json").write_text('[{"text": "x", "label": 2}, {"text": "y", "label": 10}]')
    assert load_text_classification(str(tmp_path / "a.json")).label_names == ["2", "10"]
    (tmp_path / "b.csv").write_bytes("\ufefftext,label\nx,1\n".encode())
    assert load_text_classification(str(tmp_path / "b.csv")).text == ["x"]
    (tmp_path / "c.tsv").write_text("text\tlabel\na, b\t1\n")
    assert load_text_classification(str(tmp_path / "c.tsv")).text == ["a, b"]
    (tmp_path / "e.csv").write_text("text,label\nx,\n")
    with pytest.raises(ValueError, match="no label"):
        load_text_classification(str(tmp_path / "e.csv"))
    (tmp_path / "f.csv").write_text("text,label\nx,1,2\n")
    with pytest.raises(ValueError, match="line 2: expected 2 fields"):
        load_text_classification(str(tmp_path / "f.csv"))
    (tmp_path / "g.jsonl").write_text('{"text": "x", "label": 1}\n[1]\n')
    with pytest.raises(ValueError, match="line 2 is a JSON list"):
        load_text_classification(str(tmp_path / "g.jsonl"))
    (tmp_path / "h.csv").write_bytes(b"text,label\n\xff,1\n")
    with pytest.raises(ValueError, match="UTF-8"):
        load_text_classification(str(tmp_path / "h.csv"))
    with pytest.raises(ValueError, match="folder"):
        load_text_classification(str(tmp_path))


# ---- vacuous results (steu_ext.eval.vacuity) -------------------------------------------------------------
def test_vacuity_warnings_unit():
    from steu_ext.eval.vacuity import format_warnings, refuse_vacuous, vacuity_warnings

    assert vacuity_warnings("sepsis", before_forget_f1=0.9, k=256, n_forget_docs=500, n_eval_target_docs=80,
                            before_predicted=70, evaluated=True) == []
    w = vacuity_warnings("sepsis", before_forget_f1=0.0, before_predicted=0, k=0, n_forget_docs=3,
                         n_eval_target_docs=4)
    assert len(w) == 4
    assert "never predicts 'sepsis'" in w[0] and "k=0" in w[2] and "only 3 training" in w[3]
    assert "only 4 evaluation" in w[1]
    assert "already 0" in vacuity_warnings("s", before_forget_f1=0.0)[0]
    assert "barely learned" in vacuity_warnings("s", before_forget_f1=0.3)[0]
    assert "F1 is 0 by definition" in vacuity_warnings("s", n_eval_target_docs=0, before_forget_f1=0.0)[0]
    assert "not measured" in vacuity_warnings("s", evaluated=False)[0]
    assert format_warnings(w).count("WARNING: ") == 4 and format_warnings([]) == ""
    with pytest.raises(ValueError, match="forget set is empty"):
        refuse_vacuous(0, "sepsis")
    with pytest.raises(ValueError, match="nothing to retain"):
        refuse_vacuous(5, "sepsis", n_retain_docs=0)
    with pytest.raises(ValueError, match="no parameter would change"):
        refuse_vacuous(5, "sepsis", k=0, train_head=False)
    refuse_vacuous(1, "sepsis", k=0)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """A tiny BERT fine-tuned on synthetic notes (saved), a copy whose head never predicts cardiology, and
    train/test CSVs, the train one with only 5 cardiology notes."""
    import torch

    root = tmp_path_factory.mktemp("usab")
    saved = save_tiny_classifier(root, n_docs=240, n_train=160, vocab_size=600, max_length=32, epochs=2)
    g, names, model, tok = saved["notes"], saved["names"], saved["model"], saved["tok"]
    with torch.no_grad():
        model.classifier.bias[names.index("cardiology")] = -1e4   # never predicted
    model.save_pretrained(root / "mute")
    tok.save_pretrained(root / "mute")
    card = names.index("cardiology")
    kept, seen = [], 0
    for i in range(160):
        if g["labels"][i][0] == card:
            seen += 1
            if seen > 5:
                continue
        kept.append(i)

    def write(name, idx):
        with open(root / name, "w") as f:
            f.write("text,label\n")
            for i in idx:
                f.write('"' + g["text"][i].replace('"', "'") + '",' + names[g["labels"][i][0]] + "\n")

    write("train.csv", kept)
    write("test.csv", range(160, 240))
    write("no_card.csv", [i for i in range(160) if g["labels"][i][0] != card])
    return root


def test_unlearn_warns_about_vacuous_results(small_model, tmp_path, capsys):
    import json

    from steu_ext.cli import main

    run = tmp_path / "run"
    rc = main(["unlearn", "--data", str(small_model / "train.csv"), "--eval-data", str(small_model / "test.csv"),
               "--model", str(small_model / "mute"), "--target", "cardiology", "--k", "0", "--epochs", "1",
               "--max-length", "32", "--out", str(run), "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    rep = json.loads((run / "report.json").read_text())
    w = rep["warnings"]
    assert any("never predicts 'cardiology'" in x for x in w)
    assert any(x.startswith("k=0") for x in w)
    assert any("only 5 training document(s)" in x for x in w)
    assert all(f"WARNING: {x}" in out for x in w)
    # the report names the final edit path (not the temporary build folder); edit and report share permissions
    assert rep["edit"] == str((run / "edit.safetensors").resolve()) and ".partial-" not in json.dumps(rep)
    assert (run / "edit.safetensors").stat().st_mode == (run / "report.json").stat().st_mode
    # evaluate with the edit: the base model is scored too, and the same vacuity is flagged
    rc = main(["evaluate", "--data", str(small_model / "test.csv"), "--model", str(small_model / "mute"),
               "--edit", str(run / "edit.safetensors"), "--target", "cardiology", "--max-length", "32",
               "--out", str(tmp_path / "e.json")])
    assert rc == 0
    ev = json.loads((tmp_path / "e.json").read_text())
    assert any("never predicts" in x for x in ev["warnings"]) and ev["before_edit"]["forget_f1"] == 0.0
    assert "WARNING: the model never predicts" in capsys.readouterr().out


def test_unlearn_without_eval_data_and_with_a_learned_class(small_model, tmp_path, capsys):
    import json

    from steu_ext.cli import main

    run = tmp_path / "run"
    rc = main(["unlearn", "--data", str(small_model / "train.csv"), "--model", str(small_model / "model"),
               "--target", "neurology", "--k", "8", "--epochs", "1", "--max-length", "32", "--out", str(run),
               "--quiet"])
    assert rc == 0
    w = json.loads((run / "report.json").read_text())["warnings"]
    assert len(w) == 1 and "not measured" in w[0]


def test_unlearn_refuses_an_empty_forget_set(small_model, tmp_path, capsys):
    from steu_ext.cli import EXIT_BAD_INPUT, main

    rc = main(["unlearn", "--data", str(small_model / "no_card.csv"), "--model", str(small_model / "model"),
               "--target", "cardiology", "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == EXIT_BAD_INPUT
    assert "forget set is empty" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ---- STEUTrainer surprises (steu_ext.integrations.hf) --------------------------------------------------
@pytest.fixture(scope="module")
def hf_notes():
    from steu_ext.experiments.synthetic import generate_notes
    from steu_ext.experiments.tiny_models import tiny_bert

    d = generate_notes(n_docs=60, seed=0)
    model, tok = tiny_bert(d["text"], len(d["label_names"]), True, vocab_size=400)
    return dict(model=model, tok=tok, texts=d["text"], labels=d["labels"], names=d["label_names"])


def _hf_args(out, **kw):
    from transformers import TrainingArguments

    base = dict(output_dir=str(out), report_to="none", disable_tqdm=True, use_cpu=True, save_strategy="no",
                num_train_epochs=1, per_device_train_batch_size=4)
    base.update(kw)
    return TrainingArguments(**base)


def _hf_trainer(notes, args, **kw):
    import copy

    from steu_ext.integrations.hf import STEUTrainer
    from steu_ext.methods.steu import STEUConfig

    kw.setdefault("steu_config", STEUConfig(k=8, max_length=32))
    kw.setdefault("class_names", notes["names"])
    return STEUTrainer(copy.deepcopy(notes["model"]), args, processing_class=notes["tok"], texts=notes["texts"],
                       labels=notes["labels"], target=notes["names"][0], **kw)


def test_trainer_honours_training_arguments(hf_notes, tmp_path, caplog):
    import logging

    from steu_ext.methods.steu import STEUConfig

    t = _hf_trainer(hf_notes, _hf_args(tmp_path, learning_rate=2e-3, weight_decay=0.1, adam_beta2=0.98,
                                        adam_epsilon=1e-6))
    assert t.steu_config.lr == 2e-3 and t.steu_config.weight_decay == 0.1
    opt = t.create_optimizer()
    g = opt.param_groups[0]
    assert g["lr"] == 2e-3 and g["weight_decay"] == 0.1 and g["betas"] == (0.9, 0.98) and g["eps"] == 1e-6
    assert g["decoupled_weight_decay"] is True
    assert opt.param_groups[1]["lr"] == STEUConfig().head_lr        # the head keeps its own rate
    # defaults leave STEUConfig alone (the rates of unlearn())
    t = _hf_trainer(hf_notes, _hf_args(tmp_path), steu_config=STEUConfig(k=8, max_length=32, lr=5e-3))
    assert t.steu_config.lr == 5e-3 and t.create_optimizer().param_groups[0]["decoupled_weight_decay"] is False
    with pytest.raises(ValueError, match="disagree"):
        _hf_trainer(hf_notes, _hf_args(tmp_path, learning_rate=2e-3),
                    steu_config=STEUConfig(k=8, max_length=32, lr=5e-3))
    with caplog.at_level(logging.WARNING, logger="steu_ext"):
        _hf_trainer(hf_notes, _hf_args(tmp_path, optim="sgd"))
    assert "does not use TrainingArguments.optim='sgd'" in caplog.text


def test_trainer_class_names_rename(hf_notes, tmp_path):
    with pytest.warns(DeprecationWarning, match="class_names"):
        t = _hf_trainer(hf_notes, _hf_args(tmp_path), class_names=None, label_names=hf_notes["names"])
    assert t.plan.label_names == hf_notes["names"]
    with pytest.raises(ValueError, match="class_names only"):
        _hf_trainer(hf_notes, _hf_args(tmp_path), label_names=hf_notes["names"])


def test_trainer_logs_terms_per_epoch_and_eval_loss_is_retain_only(hf_notes, tmp_path):
    import torch

    from steu_ext.modeling.encoders import predict_logits

    ev_texts, ev_labels = hf_notes["texts"][:24], hf_notes["labels"][:24]
    # logging_steps far beyond the run: the terms still appear once per epoch
    t = _hf_trainer(hf_notes, _hf_args(tmp_path, num_train_epochs=2, logging_steps=500),
                    eval_texts=ev_texts, eval_labels=ev_labels)
    t.train()
    logged = [h for h in t.state.log_history if "forget_loss" in h]
    assert len(logged) == 2 and all("utility_loss" in h for h in logged)
    m = t.evaluate()
    assert {"eval_loss", "eval_forget_loss", "eval_forget_f1"} <= m.keys()
    # eval_loss is the BCE over the documents without the target only; eval_forget_loss over the others
    z = predict_logits(t.model, t.eval_dataset.data)
    y = t.eval_dataset.data.labels.float()
    per_doc = torch.nn.functional.binary_cross_entropy_with_logits(z.float(), y, reduction="none").mean(1)
    forget = y[:, 0] > 0
    assert m["eval_loss"] == pytest.approx(float(per_doc[~forget].mean()), rel=1e-5)
    assert m["eval_forget_loss"] == pytest.approx(float(per_doc[forget].mean()), rel=1e-5)
    t.eval_loss_on = "all"
    assert t.evaluate()["eval_loss"] == pytest.approx(float(per_doc.mean()), rel=1e-5)
    with pytest.raises(ValueError, match="eval_loss_on"):
        _hf_trainer(hf_notes, _hf_args(tmp_path), eval_loss_on="forget")


# ---- no silent waits ------------------------------------------------------------------------------------
def test_compile_is_announced_and_timed(tmp_path, monkeypatch, capsys):
    """A first-use compile prints where it caches and, at the end, how long it took (the compile itself is
    replaced by a stub here: a real one takes a minute)."""
    from torch.utils import cpp_extension

    from steu_ext import _build

    calls = []
    monkeypatch.setattr(cpp_extension, "load", lambda **kw: calls.append(kw))
    monkeypatch.setattr(_build, "_build_dir", lambda key: tmp_path / key)
    monkeypatch.setattr(_build, "_ensure_compiler", lambda *a: None)
    monkeypatch.setattr(_build, "_ensure_ninja", lambda *a: None)
    monkeypatch.setattr(_build, "_ops_registered", lambda *a: bool(calls))
    monkeypatch.delenv("STEU_EXT_QUIET_BUILD", raising=False)
    _build._build_and_load(False)
    err = capsys.readouterr().err.splitlines()
    assert len(calls) == 1 and calls[0]["build_directory"].startswith(str(tmp_path))
    assert err[0].startswith("steu_ext: compiling the C++ CPU kernels (first use") and str(tmp_path) in err[0]
    assert err[1].startswith("steu_ext: compiled the C++ CPU kernels in ") and err[1].endswith(" s")
    monkeypatch.setenv("STEU_EXT_QUIET_BUILD", "1")
    calls.clear()
    _build._build_and_load(False)
    assert calls and capsys.readouterr().err == ""


def test_progress_defaults_to_whether_stderr_is_a_terminal(monkeypatch):
    import io

    from steu_ext._progress import show_progress

    class TTY(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stderr", TTY())
    assert show_progress() is True and show_progress(False) is False
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert show_progress() is False and show_progress(True) is True


def test_long_runs_default_to_terminal_progress():
    import inspect

    from steu_ext.data import corpus_pmi
    from steu_ext.methods import baselines, hds

    for fn in (hds.unlearn, baselines.gradient_ascent, corpus_pmi.count_corpus):
        assert inspect.signature(fn).parameters["progress"].default is None, fn


# ---- small items -----------------------------------------------------------------------------------------
def test_cli_help_shows_defaults_and_every_option():
    import argparse

    from steu_ext.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sp in subs.items():
        for act in sp._actions:
            if act.option_strings:
                assert act.help, f"steu {name} {act.option_strings[0]} has no help line"
        text = sp.format_help()
        for act in sp._actions:
            no_default = act.default is None or act.default is False or act.default == argparse.SUPPRESS
            if act.option_strings and not no_default and "default" not in act.help:
                assert f"(default: {act.default})" in " ".join(text.split()), (name, act.option_strings)
    assert "(default: 256)" in subs["unlearn"].format_help()
    assert "--quiet               no progress bars\n" in subs["unlearn"].format_help()


def test_edit_file_permissions_match_a_normal_file(tmp_path):
    import torch

    from steu_ext.methods.edit import STEUEdit

    STEUEdit("w", torch.tensor([1]), torch.zeros(1, 2), torch.ones(1, 2), {}, {}, {}).save(tmp_path / "e.st")
    (tmp_path / "r.json").write_text("{}")
    assert (tmp_path / "e.st").stat().st_mode == (tmp_path / "r.json").stat().st_mode


def test_demo_keeps_an_existing_folder_without_overwrite(tmp_path, capsys):
    from steu_ext.cli import EXIT_BAD_INPUT, main

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("not the tool's")
    rc = main(["demo", "--n-docs", "60", "--out", str(out), "--quiet"])
    assert rc == EXIT_BAD_INPUT and "--overwrite" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "not the tool's"
