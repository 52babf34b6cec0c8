"""Baselines change only what they should; run_compare end to end on a small subset of the real medical
abstracts corpus with the tiny model; bad method names fail before any work."""
from __future__ import annotations

import json
import os

import pytest
import torch

from steu_ext.data import load_medical_abstracts, stratified_split
from steu_ext.eval.metrics import modified_parameters, snapshot
from steu_ext.experiments.compare import (
    FINETUNE_DEFAULTS,
    METHODS,
    finetune_settings,
    format_table,
    run_compare,
)
from steu_ext.experiments.tiny_models import tiny_bert
from steu_ext.methods import baselines as bl
from steu_ext.methods.steu import STEUConfig, label_matrix
from steu_ext.modeling.encoders import Encoded, predict_logits

EMB = "bert.embeddings.word_embeddings.weight"
HEAD = {"classifier.weight", "classifier.bias"}
CFG = STEUConfig(k=4, epochs=2, batch_size=4, max_length=16)


def _tiny(multi_label: bool):
    texts = ["chest pain troponin echo", "cough fever sputum", "chest pain angina", "fever cough x-ray",
             "headache seizure eeg"] * 4
    labels = [0, 1, 0, 1, 2] * 4
    model, tok = tiny_bert(texts, 3, multi_label, vocab_size=70)
    return model, tok, texts, labels


def _changed(model, original):
    return set(modified_parameters(model, original)["per_tensor"])


@pytest.mark.parametrize("multi_label", [True, False])
@pytest.mark.parametrize("method", ["gradient_ascent", "direct_suppression", "retain_finetune"])
def test_top_layer_baselines_touch_only_top_layers_and_head(method, multi_label):
    model, tok, texts, labels = _tiny(multi_label)  # 2 layers: top_layers=1 may change layer 1 + head only
    original = snapshot(model)
    res = getattr(bl, method)(model, tok, texts, labels, 0, config=CFG, top_layers=1)
    changed = _changed(model, original)
    allowed = {n for n in original if n.startswith("bert.encoder.layer.1.")} | HEAD
    assert changed <= allowed
    assert set(res.trainable) == allowed
    assert res.trainable_elements == sum(original[n].numel() for n in allowed)
    assert any(n.startswith("bert.encoder.layer.1.") for n in changed) and "classifier.weight" in changed
    assert res.steps == len(res.history) == CFG.epochs * 2  # 8 forget docs in batches of 4
    assert all(p.requires_grad for p in model.parameters())  # flags restored
    if method == "gradient_ascent" and multi_label:
        # the target column only: the other rows of the output layer are untouched
        w0 = original["classifier.weight"]
        w = model.classifier.weight
        assert torch.equal(w[1:], w0[1:]) and not torch.equal(w[0], w0[0])


def test_gradient_ascent_lowers_the_target_logit():
    model, tok, texts, labels = _tiny(True)
    enc = Encoded(tok, texts, label_matrix(labels, 3), 16)
    forget = [i for i, y in enumerate(labels) if y == 0]
    before = predict_logits(model, enc, forget)[:, 0].mean()
    bl.gradient_ascent(model, tok, texts, labels, 0, config=CFG, top_layers=1, encoded=enc)
    assert predict_logits(model, enc, forget)[:, 0].mean() < before - 0.5


@pytest.mark.parametrize("method,allowed", [("steu_embeddings_only", {EMB}), ("steu_head_only", HEAD),
                                            ("steu", {EMB} | HEAD)])
def test_steu_ablations_touch_only_their_part(method, allowed):
    model, tok, texts, labels = _tiny(True)
    original = snapshot(model)
    res = getattr(bl, method)(model, tok, texts, labels, 0, config=CFG)
    changed = _changed(model, original)
    assert changed == allowed and set(res.trainable) == allowed
    head = 3 * 128 + 3 if HEAD <= allowed else 0
    assert res.trainable_elements == res.steu.selected_tokens.numel() * 128 + head
    rows = (model.get_input_embeddings().weight != original[EMB]).any(1).nonzero().flatten().tolist()
    if EMB in allowed:
        assert 0 < len(rows) and set(rows) <= set(res.steu.selected_tokens.tolist())
    else:
        assert rows == [] and res.steu.selected_tokens.numel() == 0
    assert res.steu.edit.num_modified_elements == modified_parameters(model, original)["modified"]


@pytest.mark.parametrize("mode", ["head", "full"])
def test_retrain_uses_retain_docs_only(mode, monkeypatch):
    model, tok, texts, labels = _tiny(True)
    original = snapshot(model)
    seen = {}
    from steu_ext.methods import finetune

    real = finetune.train_classifier

    def spy(m, data, idx, **kw):
        seen["targets"] = data.labels[list(idx), 0].tolist()
        return real(m, data, idx, **kw)

    monkeypatch.setattr(finetune, "train_classifier", spy)
    res = bl.retrain(model, tok, texts, labels, 0, config=CFG, mode=mode, epochs=2)
    assert seen["targets"] == [0.0] * 12  # the 12 retain documents, none with the target label
    changed = _changed(model, original)
    if mode == "head":
        assert changed == HEAD
    else:
        assert {EMB, "bert.encoder.layer.0.attention.self.query.weight"} <= changed
    assert res.settings["retain_docs"] == 12


def test_baselines_bad_input():
    model, tok, texts, labels = _tiny(True)
    original = snapshot(model)
    with pytest.raises(ValueError, match=r"top_layers must be an int in \[0, 2\]"):
        bl.gradient_ascent(model, tok, texts, labels, 0, config=CFG, top_layers=3)
    with pytest.raises(ValueError, match="unknown class name"):
        bl.direct_suppression(model, tok, texts, labels, "derm", config=CFG, label_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="no training document carries"):
        bl.retain_finetune(model, tok, texts, [1] * 20, 0, config=CFG)
    assert not _changed(model, original)


@pytest.fixture(scope="module")
def small_abstracts(medical_abstracts_root):
    data = load_medical_abstracts(medical_abstracts_root)
    _, sub = stratified_split(data.labels, 200 / len(data), seed=0)
    return data.subset(sub)


def test_run_compare_medical_abstracts_tiny(small_abstracts, tmp_path, monkeypatch):
    import steu_ext.modeling.loading as loading

    monkeypatch.setattr(loading, "offline_minilm_path", lambda: None)
    out = tmp_path / "cmp"
    rep = run_compare(small_abstracts, "neoplasms", out_dir=str(out), finetune_epochs=2, top_layers=1,
                      config=STEUConfig(k=16, epochs=1, batch_size=16, max_length=48), progress=False,
                      probe=False, relearn=False)  # the adversarial columns: tests/test_adversarial.py
    rows = {r["method"]: r for r in rep["rows"]}
    assert list(rows) == ["original", *METHODS]
    for name, r in rows.items():
        assert set(r) == {"method", "forget_f1", "retain_macro_f1", "params_modified", "params_percent",
                          "mia_auc", "seconds"}
        assert 0 <= r["forget_f1"] <= 1 and 0 <= r["retain_macro_f1"] <= 1 and 0 <= r["mia_auc"] <= 1
        if name != "original":
            assert r["seconds"] > 0 and r["params_modified"] > 0
    assert rows["original"]["params_modified"] == 0 and rows["original"]["seconds"] is None
    # exact counts, consistent with which parameters each method may touch
    total = rep["results"]["steu"]["params_modified"]["total"]
    assert rows["steu_head_only"]["params_modified"] <= 128 * 5 + 5
    assert rows["steu"]["params_modified"] <= 16 * 128 + 128 * 5 + 5
    assert rows["gradient_ascent"]["params_percent"] > rows["steu"]["params_percent"]
    assert rows["retrain"]["params_percent"] > 90  # tiny model: full fine-tuning from the random base
    assert rows["steu"]["params_percent"] == pytest.approx(100 * rows["steu"]["params_modified"] / total)
    assert rep["results"]["steu"]["trainable_params"] == 16 * 128 + 5 * 128 + 5

    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(rep["rows"]))
    assert on_disk["versions"]["torch"] == torch.__version__
    assert on_disk["config"]["k"] == 16 and on_disk["compare"]["top_layers"] == 1
    assert on_disk["results"]["original"]["confusion"]["docs"] == on_disk["data"]["forget_test_docs"]
    assert all(r["probe_f1"] is None and r["relearn_f1_after"] is None for r in rep["scorecard"])
    assert rows["bias_suppression"]["params_modified"] == 1 and rows["bias_suppression"]["forget_f1"] == 0.0
    for png in ("f1_per_class.png", "tradeoff.png", "scorecard.png"):
        assert (out / png).stat().st_size > 5000

    table = format_table(rep)
    lines = table.splitlines()
    assert len(lines) == 2 + 1 + len(METHODS) and "MIA AUC" in lines[0] and "neoplasms" in lines[0]
    assert len({len(line) for line in lines}) == 1  # aligned
    for m in ("original", *METHODS):
        assert any(line.startswith(m + " ") for line in lines)


def test_run_compare_unknown_method_fails_before_any_work(small_abstracts, tmp_path, monkeypatch):
    import steu_ext.experiments.tiny_models as tiny_models
    import steu_ext.modeling.loading as loading

    def boom(*a, **k):
        raise AssertionError("a model was built")

    monkeypatch.setattr(tiny_models, "tiny_bert", boom)
    monkeypatch.setattr(loading, "load_classifier", boom)
    out = tmp_path / "cmp"
    with pytest.raises(ValueError, match="valid methods are") as e:
        run_compare(small_abstracts, 0, methods=("steu", "influence"), out_dir=str(out))
    assert "'influence'" in str(e.value) and "retain_finetune" in str(e.value)
    with pytest.raises(ValueError, match="needs finetune_epochs > 0"):
        run_compare(small_abstracts, 0, methods=("retrain",), out_dir=str(out), finetune_epochs=0)
    with pytest.raises(ValueError, match="unknown class name"):
        run_compare(small_abstracts, "dermatology", out_dir=str(out))
    assert not os.path.exists(out)


def test_run_compare_too_many_top_layers(small_abstracts, tmp_path, monkeypatch):
    import steu_ext.modeling.loading as loading

    monkeypatch.setattr(loading, "offline_minilm_path", lambda: None)
    out = tmp_path / "cmp"
    with pytest.raises(ValueError, match="top_layers"):
        run_compare(small_abstracts, 0, methods=("gradient_ascent",), out_dir=str(out), top_layers=3,
                    config=STEUConfig(k=8, max_length=32))
    assert not os.path.exists(out)


def test_finetune_settings_shared_by_compare_and_demo(small_abstracts, tmp_path, monkeypatch):
    """One resolution of the original fine-tune's epochs and lr (defaults per mode, checked): the demo's
    ``run_experiment`` now refuses a negative epoch count too (it used to skip the fine-tune silently),
    before any model is built."""
    import steu_ext.experiments.tiny_models as tiny_models
    from steu_ext.experiments.steu_demo import run_experiment

    assert finetune_settings("full", None, None) == (FINETUNE_DEFAULTS["full"]["epochs"],
                                                     FINETUNE_DEFAULTS["full"]["lr"])
    assert finetune_settings("head", 0, 0.5) == (0, 0.5)
    for args, msg in ((("ia3", None, None), "finetune_mode"), (("full", -1, None), "finetune_epochs"),
                      (("head", 2, 0.0), "finetune_lr")):
        with pytest.raises(ValueError, match=msg):
            finetune_settings(*args)

    def boom(*a, **k):
        raise AssertionError("a model was built")

    monkeypatch.setattr(tiny_models, "classifier_or_tiny", boom)
    out = tmp_path / "demo"
    for kw, msg in ((dict(finetune_epochs=-1), "finetune_epochs"), (dict(finetune_lr=-1e-3), "finetune_lr"),
                    (dict(finetune_mode="lora"), "finetune_mode")):
        with pytest.raises(ValueError, match=msg):
            run_experiment(small_abstracts, 0, out_dir=str(out), progress=False, **kw)
        with pytest.raises(ValueError, match=msg):
            run_compare(small_abstracts, 0, out_dir=str(out), **kw)
    assert not os.path.exists(out)
