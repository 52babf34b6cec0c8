"""The ``steu`` command: the demo end to end (small and fast here) and its bad-input exit codes."""
from __future__ import annotations

import json
import os

import pytest
from conftest import save_tiny_classifier

from steu_ext.cli import EXIT_BAD_INPUT, main
from steu_ext.experiments.synthetic import generate_notes


def test_demo_tiny_model_writes_report(tmp_path, monkeypatch):
    # the fallback path (no pretrained encoder): a tiny random BERT, fully fine-tuned, then unlearned
    import steu_ext.modeling.loading as loading

    monkeypatch.setattr(loading, "offline_minilm_path", lambda: None)
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
    import steu_ext.modeling.loading as loading

    monkeypatch.setattr(loading, "offline_minilm_path", lambda: None)
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
    import steu_ext.modeling.loading as loading

    monkeypatch.setattr(loading, "offline_minilm_path", lambda: None)
    csv = tmp_path / "d.csv"
    csv.write_text("text,label\n" + "".join(f"chest pain {i},a\nfever cough {i},b\n" for i in range(10)))
    out = tmp_path / "rep"
    args = [a.replace("{csv}", str(csv)) for a in args]
    rc = main(["demo", *args, "--finetune-epochs", "1", "--epochs", "1", "--out", str(out), "--quiet"])
    assert rc == EXIT_BAD_INPUT
    assert msg in capsys.readouterr().err
    assert not os.path.exists(out / "report.json")


# ---- pmi / unlearn / evaluate / apply-edit / revert-edit on a saved fine-tuned tiny model ---------------
@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny BERT fine-tuned on synthetic notes, saved with its tokenizer, plus train/test CSVs."""
    root = tmp_path_factory.mktemp("cli")
    saved = save_tiny_classifier(root, n_docs=300, n_train=200, vocab_size=800, max_length=64, epochs=3)
    g, names = saved["notes"], saved["names"]
    for name, part in (("train.csv", range(200)), ("test.csv", range(200, 300))):
        with open(root / name, "w") as f:
            f.write("text,label\n")
            for i in part:
                f.write('"' + g["text"][i].replace('"', "'") + '",' + names[g["labels"][i][0]] + "\n")
    return root


def test_pmi_command(saved_model, tmp_path):
    out = tmp_path / "pmi"
    rc = main(["pmi", "--data", str(saved_model / "train.csv"), "--model", str(saved_model / "model"),
               "--target", "cardiology", "--k", "20", "--out", str(out), "--quiet"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_docs"] == 200 and list(summary["top_tokens"]) == ["cardiology"]
    rows = summary["top_tokens"]["cardiology"]
    assert len(rows) == 20 and all(r["docs_in_class"] > 0 for r in rows)
    assert rows == sorted(rows, key=lambda r: -r["score"])
    assert (out / "counts.safetensors").exists() and (out / "top_tokens_0.csv").exists()


def test_unlearn_evaluate_apply_revert(saved_model, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification

    run = tmp_path / "run"
    rc = main(["unlearn", "--data", str(saved_model / "train.csv"), "--eval-data", str(saved_model / "test.csv"),
               "--model", str(saved_model / "model"), "--target", "cardiology", "--k", "32", "--epochs", "2",
               "--max-length", "64", "--save-model", "--out", str(run), "--quiet"])
    assert rc == 0
    rep = json.loads((run / "report.json").read_text())
    assert rep["after"]["forget_f1"] <= rep["before"]["forget_f1"]
    assert rep["params_modified"]["count"] > 0
    edit = str(run / "edit.safetensors")
    # apply the edit to the base -> the saved edited model; revert -> the base again, bit for bit
    rc = main(["apply-edit", "--model", str(saved_model / "model"), "--edit", edit, "--out", str(tmp_path / "a")])
    assert rc == 0
    applied = AutoModelForSequenceClassification.from_pretrained(tmp_path / "a")
    edited = AutoModelForSequenceClassification.from_pretrained(run / "model")
    base = AutoModelForSequenceClassification.from_pretrained(saved_model / "model")
    assert all(torch.equal(p, q) for p, q in zip(applied.parameters(), edited.parameters()))
    rc = main(["revert-edit", "--model", str(tmp_path / "a"), "--edit", edit, "--out", str(tmp_path / "r")])
    assert rc == 0
    restored = AutoModelForSequenceClassification.from_pretrained(tmp_path / "r")
    assert all(torch.equal(p, q) for p, q in zip(restored.parameters(), base.parameters()))
    # evaluate with the edit applied reproduces the unlearn report's "after" figures
    rc = main(["evaluate", "--data", str(saved_model / "test.csv"), "--model", str(saved_model / "model"),
               "--edit", edit, "--target", "cardiology", "--max-length", "64", "--out", str(tmp_path / "e.json")])
    assert rc == 0
    ev = json.loads((tmp_path / "e.json").read_text())
    assert ev["forget_f1"] == rep["after"]["forget_f1"] and ev["retain_macro_f1"] == rep["after"]["retain_macro_f1"]
    # the edit refuses a model that is not its base (here: the edited one), and leaves no output
    rc = main(["apply-edit", "--model", str(run / "model"), "--edit", edit, "--out", str(tmp_path / "bad")])
    assert rc == EXIT_BAD_INPUT and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("case,msg", [
    ("missing_model", "model folder not found"),
    ("no_head", "no trained classification head"),
    ("label_mismatch", "does not match the model"),
    ("unknown_class", "unknown class name"),
    ("missing_edit", "edit file not found"),
    ("unknown_method", "unknown method"),
])
def test_commands_bad_input(saved_model, tmp_path, capsys, case, msg):
    from transformers import BertModel

    out = tmp_path / "out"
    data, model = str(saved_model / "train.csv"), str(saved_model / "model")
    if case == "missing_model":
        args = ["unlearn", "--data", data, "--model", str(tmp_path / "nope" / "m"), "--target", "0"]
    elif case == "no_head":
        BertModel.from_pretrained(model).save_pretrained(tmp_path / "enc")  # encoder only, no head
        args = ["unlearn", "--data", data, "--model", str(tmp_path / "enc"), "--target", "0"]
    elif case == "label_mismatch":
        (tmp_path / "other.csv").write_text("text,label\nchest pain,a\nfever,b\n")
        args = ["unlearn", "--data", str(tmp_path / "other.csv"), "--model", model, "--target", "0"]
    elif case == "unknown_class":
        args = ["unlearn", "--data", data, "--model", model, "--target", "oncology"]
    elif case == "missing_edit":
        args = ["apply-edit", "--model", model, "--edit", str(tmp_path / "e.safetensors")]
    else:
        args = ["compare", "--data", data, "--methods", "steu,magic"]
    rc = main([*args, "--out", str(out)])
    assert rc == EXIT_BAD_INPUT
    assert msg in capsys.readouterr().err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


# The subcommands and their options, in help order (pinned when cli.py became one module per subcommand).
STEU_ARGS = ("--k --measure --alpha --min-count --epochs --lr --head-lr --utility-weight --batch-size --max-length "
             "--seed")
DATA_ARGS = "--data --text-column --label-column --label-sep"
CLI_OPTIONS = {
    "demo": f"{DATA_ARGS} --target --model --n-docs {STEU_ARGS} --finetune-mode --finetune-epochs --finetune-lr "
            "--test-fraction --probe-fraction --quiet --out --overwrite",
    "pmi": f"{DATA_ARGS} --format --model --target --labels --unknown-labels --on-malformed --k --measure --alpha "
           "--min-count --max-length --workers --block-size/--batch-size --device --checkpoint-every "
           "--checkpoint-seconds --no-resume --counts-format --quiet --out --overwrite",
    "unlearn": f"{DATA_ARGS} --eval-data --model --target {STEU_ARGS} --counts --save-model --quiet --out --overwrite",
    "evaluate": f"{DATA_ARGS} --model --edit --target --max-length --out --overwrite",
    "compare": f"{DATA_ARGS} --target --model --methods --n-docs {STEU_ARGS} --top-layers --seeds --finetune-mode "
               "--finetune-epochs --finetune-lr --test-fraction --probe-fraction --max-docs --max-train-docs "
               "--cache-dir --no-probe --probe-pooling --probe-train-docs --no-relearn --relearn-steps "
               "--relearn-docs --relearn-params --relearn-eval-every --relearn-eval-docs --no-inspect --quiet --out "
               "--overwrite",
    "hds": "--data --format --forget-mesh --forget-values --question-column --options-column --answer-column "
           "--long-answer-column --domain-column --model --teach-tiny --hierarchy --forget-domains --method "
           "--forget-loss --retain-loss --retain-weight --question-weight --question-target --projection "
           "--no-fisher --subspace --adapter --lora-r --lora-targets --lora-layers --lr --epochs --stop --band "
           "--auc-band --stop-fraction --stop-at-forgetting --batch-size --max-length --clip-norm "
           "--noise-multiplier --max-forget --max-retain --never-seen-fraction --device --dtype --bf16 --seed "
           "--save-model --quiet --out --overwrite",
    "hierarchy": "--from-mesh --from-umls --forget-branch --basic-branches --clinical-branches --specialty-depth "
                 "--sab --term-sabs --permuted --min-term-chars --on-malformed --out --overwrite",
    "edits": "",
    "edits list": "--model",
    "edits apply": "--model --edit --name --out --overwrite",
    "edits revert": "--model --id --out --overwrite",
    "apply-edit": "--model --edit --force --out --overwrite",
    "revert-edit": "--model --edit --force --out --overwrite",
}


def test_cli_subcommands_and_options_are_pinned():
    import argparse

    from steu_ext.cli import build_parser

    got = {}

    def walk(parser, path):
        if path:
            got[" ".join(path)] = " ".join("/".join(a.option_strings) for a in parser._actions
                                           if a.option_strings and a.dest != "help")
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    walk(sp, [*path, name])

    walk(build_parser(), [])
    assert list(got) == list(CLI_OPTIONS)          # the subcommands, in help order
    assert got == CLI_OPTIONS
