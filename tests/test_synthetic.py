"""The embedded synthetic clinical-note corpus and the data loaders."""
from __future__ import annotations

import pytest

from steu_ext.data import load_medical_abstracts, load_text_classification, stratified_split
from steu_ext.experiments.synthetic import CATEGORIES, generate_notes


def test_generate_notes_is_seeded_multilabel_and_varied():
    a, b, c = generate_notes(300, seed=1), generate_notes(300, seed=1), generate_notes(300, seed=2)
    assert a == b and a["text"] != c["text"]
    assert a["label_names"] == list(CATEGORIES)
    assert all(1 <= len(y) <= 2 and len(set(y)) == len(y) for y in a["labels"])
    assert any(len(y) == 2 for y in a["labels"]) and any(len(y) == 1 for y in a["labels"])
    assert {c for y in a["labels"] for c in y} == set(range(len(CATEGORIES)))
    assert len(set(a["text"])) == 300
    words = [len(t.split()) for t in a["text"]]
    assert 40 <= min(words) and max(words) <= 250


@pytest.mark.parametrize("kw", [dict(n_docs=0), dict(max_labels=0), dict(max_labels=99), dict(p_multi=1.5)])
def test_generate_notes_rejects_bad_arguments(kw):
    with pytest.raises(ValueError):
        generate_notes(**kw)


def test_stratified_split_keeps_class_shares():
    labels = [[i % 3] for i in range(300)]
    train, test = stratified_split(labels, 0.2, seed=0)
    assert sorted(train + test) == list(range(300)) and not set(train) & set(test)
    for c in range(3):
        assert sum(labels[i] == [c] for i in test) == 20
    assert stratified_split(labels, 0.2, seed=0) == (train, test)


def test_load_medical_abstracts(medical_abstracts_root):
    d = load_medical_abstracts(medical_abstracts_root)
    assert len(d) == 2888 and len(d.label_names) == 5 and d.label_names[0] == "neoplasms"
    assert all(len(y) == 1 and 0 <= y[0] < 5 for y in d.labels)


def test_load_jsonl_multilabel_and_errors(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"t": "a", "y": ["x", "z"]}\n{"t": "b", "y": []}\n{"t": "c", "y": ["z"]}\n')
    d = load_text_classification(str(p), "t", "y")
    assert d.multi_label and d.label_names == ["x", "z"] and d.labels == [[0, 1], [], [1]]
    q = tmp_path / "d.csv"
    q.write_text("t,y\na,x|z\nb,z\n")
    d = load_text_classification(str(q), "t", "y", label_sep="|")
    assert d.labels == [[0, 1], [1]]
    with pytest.raises(ValueError, match="no column"):
        load_text_classification(str(q), "text", "y")
    with pytest.raises(ValueError, match="unknown label"):
        load_text_classification(str(q), "t", "y", label_sep="|", label_names=["x"])
    with pytest.raises(FileNotFoundError):
        load_text_classification(str(tmp_path / "none.csv"))
    (tmp_path / "d.txt").write_text("a x\n")
    with pytest.raises(ValueError, match="unsupported"):
        load_text_classification(str(tmp_path / "d.txt"))
