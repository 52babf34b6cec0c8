"""Evaluation: membership-inference AUC against a pairwise-count oracle, evaluate() on a tiny model,
and the comparison plots."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from steu_ext.eval.evaluate import evaluate
from steu_ext.eval.metrics import per_class_f1
from steu_ext.eval.mia import auc, membership_auc, per_document_loss
from steu_ext.eval.plots import plot_f1_per_method, plot_tradeoff
from steu_ext.experiments.tiny_models import tiny_bert
from steu_ext.methods.finetune import train_classifier
from steu_ext.methods.steu import label_matrix
from steu_ext.modeling.encoders import Encoded, predict_logits, predictions


def auc_oracle(m, n) -> float:
    """Brute force: every (member, non-member) pair, a win counts 1 and a tie 1/2."""
    wins = sum((1.0 if a > b else 0.5 if a == b else 0.0) for a in m.tolist() for b in n.tolist())
    return wins / (len(m) * len(n))


@pytest.mark.parametrize("nm,nn", [(1, 1), (1, 7), (7, 1), (13, 29), (123, 50)])
@pytest.mark.parametrize("kind", ["ties", "float"])
def test_auc_matches_pairwise_oracle(nm, nn, kind):
    g = torch.Generator().manual_seed(nm * 1000 + nn)
    if kind == "ties":  # few distinct values: most pairs tie, inside and across the groups
        m = torch.randint(0, 4, (nm,), generator=g).float()
        n = torch.randint(1, 5, (nn,), generator=g).float()
    else:
        m, n = torch.randn(nm, generator=g) + 0.5, torch.randn(nn, generator=g)
    assert auc(m, n) == pytest.approx(auc_oracle(m, n), abs=1e-12)


def test_auc_edge_cases():
    assert auc(torch.ones(5), torch.ones(3)) == 0.5
    assert auc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert auc(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])) == 0.0
    assert auc(torch.tensor([float("inf"), 0.0]), torch.tensor([0.0, -float("inf")])) == pytest.approx(
        auc_oracle(torch.tensor([float("inf"), 0.0]), torch.tensor([0.0, -float("inf")])))
    with pytest.raises(ValueError, match="at least one member"):
        auc(torch.zeros(0), torch.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        auc(torch.tensor([float("nan")]), torch.ones(2))


def test_per_document_loss():
    z = torch.randn(6, 4)
    y = F.one_hot(torch.tensor([0, 1, 2, 3, 0, 1]), 4).float()
    y[0, 2] = 1.0  # a multi-label row
    assert torch.allclose(per_document_loss(z, y, True),
                          F.binary_cross_entropy_with_logits(z.double(), y.double(), reduction="none").sum(1))
    assert torch.allclose(per_document_loss(z[1:], y[1:], False),
                          F.cross_entropy(z[1:].double(), y[1:].argmax(1), reduction="none"))
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        per_document_loss(z, y[:, :3], True)


def _tiny_trained(multi_label: bool):
    texts = (["chest pain troponin echo", "cough fever sputum x-ray", "headache seizure eeg scan"] * 12
             + ["chest pain cough fever"] * 4)
    labels = [0, 1, 2] * 12 + [[0, 1]] * 4 if multi_label else [0, 1, 2] * 12 + [0] * 4
    model, tok = tiny_bert(texts, 3, multi_label, vocab_size=80)
    enc = Encoded(tok, texts, label_matrix(labels, 3), max_length=16)
    train = list(range(0, 40, 2))
    train_classifier(model, enc, train, mode="full", epochs=3, seed=0)
    return model, enc, train, [i for i in range(40) if i not in train]


@pytest.mark.parametrize("multi_label", [True, False])
def test_evaluate_tiny_model(multi_label):
    model, enc, train, test = _tiny_trained(multi_label)
    names = ["cardio", "pulm", "neuro"]
    members = [i for i in train if enc.labels[i, 0] > 0]
    rep = evaluate(model, enc, test, "cardio", names, multi_label, member_idx=members)

    y_pred = predictions(predict_logits(model, enc, test), multi_label)
    f1 = per_class_f1(enc.labels[test], y_pred)
    assert rep["per_class_f1"] == dict(zip(names, f1))
    assert rep["forget_f1"] == f1[0]
    assert rep["retain_f1"] == {"pulm": f1[1], "neuro": f1[2]}
    assert rep["retain_macro_f1"] == pytest.approx((f1[1] + f1[2]) / 2)
    assert rep["test_docs"] == len(test)

    held = [r for r, i in enumerate(test) if enc.labels[i, 0] > 0]
    conf = rep["confusion"]
    assert conf["target"] == "cardio" and conf["docs"] == len(held)
    assert conf["predicted"] == {n: int(y_pred[held, c].sum()) for c, n in enumerate(names)}
    if multi_label:
        assert conf["no_class"] == int((y_pred[held].sum(1) == 0).sum())
    else:
        assert conf["no_class"] is None and sum(conf["predicted"].values()) == len(held)

    nonmembers = [test[r] for r in held]
    expect = membership_auc(model, enc, members, nonmembers, multi_label)
    assert rep["mia"] == pytest.approx(expect)
    assert rep["mia_auc"] == expect["auc"] and 0.0 <= rep["mia_auc"] <= 1.0
    assert rep["mia"]["members"] == len(members) and rep["mia"]["nonmembers"] == len(nonmembers)
    # explicit non-members give the same figure
    assert evaluate(model, enc, test, 0, names, multi_label, member_idx=members,
                    nonmember_idx=nonmembers)["mia_auc"] == rep["mia_auc"]

    plain = evaluate(model, enc, test, 0, names, multi_label)
    assert plain["mia"] is None and plain["mia_auc"] is None
    assert plain["per_class_f1"] == rep["per_class_f1"]


def test_evaluate_bad_input():
    model, enc, _, test = _tiny_trained(True)
    with pytest.raises(ValueError, match="unknown class name"):
        evaluate(model, enc, test, "derm", ["a", "b", "c"], True)
    with pytest.raises(ValueError, match="2 label names"):
        evaluate(model, enc, test, 0, ["a", "b"], True)
    with pytest.raises(ValueError, match="without member_idx"):
        evaluate(model, enc, test, 0, ["a", "b", "c"], True, nonmember_idx=test)


def test_plots_write_pngs(tmp_path):
    names = ["a", "b", "c"]
    f1 = {"original": [0.8, 0.7, 0.6], "steu": [0.0, 0.7, 0.61], "retrain": [0.0, 0.72, 0.6]}
    p1 = plot_f1_per_method(str(tmp_path / "f1.png"), names, f1, target=0)
    rows = [{"method": m, "forget_f1": v[0], "retain_macro_f1": sum(v[1:]) / 2} for m, v in f1.items()]
    p2 = plot_tradeoff(str(tmp_path / "tradeoff.png"), rows)
    for p in (p1, p2):
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / p).stat().st_size > 5000
