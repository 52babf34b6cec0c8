"""Issue #13 items 4 and 10: class targets and label matrices are never silently misread."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from steu_ext.modeling.labels import label_matrix, resolve_target

DIGITS = ["1", "2", "3", "4", "5"]            # the medical abstracts' class names


# ---- 4. targets ---------------------------------------------------------------------------------------------
def test_digit_class_names_are_names_first():
    assert resolve_target("1", DIGITS) == 0      # was position 1 (class "2")
    assert resolve_target("5", DIGITS) == 4      # was out of range: class "5" could not be named
    assert resolve_target("#1", DIGITS) == 1     # explicit position


def test_ambiguous_targets_are_refused():
    assert resolve_target(1, DIGITS) == 1        # a Python int is a position by type (class "2")
    with pytest.raises(ValueError, match="numeric names"):
        resolve_target("0", DIGITS)              # not a name; a position reading would be a guess
    assert resolve_target(0, ["0", "1", "2"]) == 0   # position and name agree: fine


def test_plain_names_and_positions():
    names = ["cardiology", "neurology", "oncology"]
    assert resolve_target("neurology", names) == 1
    assert resolve_target("2", names) == 2
    assert resolve_target(np.int64(1), names) == 1
    assert resolve_target(torch.tensor(2), names) == 2
    with pytest.raises(ValueError, match="unknown class name"):
        resolve_target("surgery", names)
    with pytest.raises(ValueError, match="out of range"):
        resolve_target(3, names)
    with pytest.raises(TypeError):
        resolve_target(True, names)
    with pytest.raises(TypeError):
        resolve_target(1.0, names)


def test_cli_demo_target_digit_name(tmp_path, monkeypatch, capsys):
    """`--target 1` on classes named 1..5 forgets class "1" (checked before any training)."""
    import steu_ext.cli as cli

    seen = {}

    def fake_run(data, target, **kw):
        seen["target"] = target
        raise ValueError("stop here")

    import steu_ext.experiments.steu_demo as ex

    monkeypatch.setattr(ex, "run_experiment", fake_run)
    csv = tmp_path / "d.csv"
    csv.write_text("text,label\n" + "".join(f"note {i},{i % 5 + 1}\n" for i in range(20)))
    rc = cli.main(["demo", "--data", str(csv), "--target", "1", "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == cli.EXIT_BAD_INPUT and seen["target"] == 0
    rc = cli.main(["demo", "--data", str(csv), "--target", "0", "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == cli.EXIT_BAD_INPUT and "numeric names" in capsys.readouterr().err


# ---- 10. label matrices --------------------------------------------------------------------------------------
def test_numpy_multilabelbinarizer_matrix_is_a_matrix():
    from sklearn.preprocessing import MultiLabelBinarizer

    y = MultiLabelBinarizer(classes=[0, 1, 2, 3]).fit_transform([[2], [3], [0, 2], [1]])
    m = label_matrix(y, 4)
    assert m.tolist() == y.astype(np.float32).tolist()     # not "every document is class 0 and/or 1"
    with pytest.raises(ValueError, match="4 columns"):
        label_matrix(y, 5)


def test_pandas_dataframe_and_series():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame([[0, 1, 0], [1, 0, 1]], columns=["a", "b", "c"])
    assert label_matrix(df, 3).tolist() == [[0, 1, 0], [1, 0, 1]]
    assert label_matrix(pd.Series([2, 0]), 3).tolist() == [[0, 0, 1], [1, 0, 0]]


def test_hf_datasets_float_multi_hot_rows():
    rows = [[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 1.0]]      # what a datasets Sequence(float) column holds
    assert label_matrix(rows, 4).tolist() == rows
    with pytest.raises(ValueError, match="multi-hot"):
        label_matrix([[0.0, 1.0], [1.0]], 4)
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"labels": rows})
    assert label_matrix(ds["labels"], 4).tolist() == rows


def test_int_multi_hot_rows_and_ambiguity():
    assert label_matrix([[0, 1, 1], [1, 0, 0]], 3).tolist() == [[0, 1, 1], [1, 0, 0]]
    with pytest.raises(ValueError, match="ambiguous"):
        label_matrix([[0, 1], [1, 0]], 2)                    # ids {0, 1} or class 1 only?
    assert label_matrix(torch.tensor([[0, 1], [1, 0]]), 2).tolist() == [[0, 1], [1, 0]]   # a tensor is a matrix


def test_ids_and_lists_of_ids_still_work():
    assert label_matrix([2, 0], 3).tolist() == [[0, 0, 1], [1, 0, 0]]
    assert label_matrix([[0, 2], [1]], 3).tolist() == [[1, 0, 1], [0, 1, 0]]
    assert label_matrix(np.array([1, 2]), 3).tolist() == [[0, 1, 0], [0, 0, 1]]
    assert label_matrix(torch.tensor([1, 2]), 3).tolist() == [[0, 1, 0], [0, 0, 1]]
    assert label_matrix(np.array([[0, 2], [1]], dtype=object), 3).tolist() == [[1, 0, 1], [0, 1, 0]]
    with pytest.raises(ValueError, match="out of range"):
        label_matrix([[0, 3]], 3)
    with pytest.raises(ValueError, match="out of range"):
        label_matrix(np.array([3]), 3)
    with pytest.raises(TypeError, match="string"):
        label_matrix(["cardiology"], 3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        label_matrix(np.array([[0.0, 2.0, 0.0]]), 3)


def test_encode_dataset_reads_numpy_matrix():
    from steu_ext.experiments.synthetic import generate_notes
    from steu_ext.experiments.tiny_models import tiny_bert
    from steu_ext.integrations.hf import encode_dataset

    d = generate_notes(n_docs=12, seed=0)
    _, tok = tiny_bert(d["text"], len(d["label_names"]), True, vocab_size=200)
    C = len(d["label_names"])
    y = np.zeros((12, C), dtype=np.int64)
    for i, ys in enumerate(d["labels"]):
        y[i, ys] = 1
    ds = encode_dataset(tok, d["text"], y, C, multi_label=True, max_length=16)
    got = torch.stack([torch.as_tensor(ds[i]["labels"]) for i in range(12)])
    assert got.tolist() == y.astype(np.float32).tolist()
