"""HDS: token weights from the concept hierarchy, the geometric constraint (the update's retain-gradient
component is removed), configuration errors, the HF trainer, the CLI, and one end-to-end run on a
PubMedQA subset (slow)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from steu_ext.data.concepts import ConceptHierarchy, example_hierarchy_path, load_hierarchy
from steu_ext.data.qa import QAItem
from steu_ext.methods import hds

DATA_ROOT = Path(os.environ.get("STEU_DATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data"))

QUESTIONS = [("Is laparoscopic cholecystectomy safe in patients with cells?", 0, True),
             ("Does splenectomy change the risk?", 1, True),
             ("Is gastrectomy followed by surgery?", 2, True),
             ("Do cells make protein?", 0, False),
             ("Is the blood test useful for diagnosis?", 1, False),
             ("Are patients at risk of mortality?", 2, False)]
ITEMS = [QAItem(str(i), q, ("yes", "no", "maybe"), a, forget=f) for i, (q, a, f) in enumerate(QUESTIONS)]
HIER = ConceptHierarchy.from_dict({"concepts": [
    {"concept": "Cell", "level": 1, "domain": "biology", "terms": ["cells", "protein"]},
    {"concept": "Risk", "level": 2, "domain": "clinical", "terms": ["risk", "patients"]},
    {"concept": "Surgery", "level": 3, "domain": "surgery", "terms": ["surgery", "laparoscopic"]},
    {"concept": "Ectomy", "level": 4, "domain": "surgery", "terms": ["cholecystectomy", "splenectomy"]}]})


@pytest.fixture(scope="module")
def tiny():
    # words seen once (cholecystectomy, laparoscopic, ...) are split into several WordPiece tokens
    texts = [f"Question: {q}" for q, _, _ in QUESTIONS] + ["Question: Answer: yes no maybe"] * 2
    torch.manual_seed(0)
    return hds.tiny_causal_lm(texts, hidden=32, layers=1, heads=2)


def _batches(tok, cfg):
    fex = hds.encode_examples(tok, ITEMS[:3], cfg, forget=True, hierarchy=HIER)
    rex = hds.encode_examples(tok, ITEMS[3:], cfg, forget=False)
    return hds.collate(fex, tok.pad_token_id), hds.collate(rex, tok.pad_token_id)


def test_token_weights_from_hierarchy(tiny):
    from steu_ext.eval.qa import continuation_of, encode_qa, prompt_of

    _, tok = tiny
    cfg = hds.HDSConfig(level_weights={1: 0.5, 2: 0.25, 3: 1.5, 4: 3.0}, answer_weight=2.0)
    ex = hds.encode_examples(tok, ITEMS[:1], cfg, forget=True, hierarchy=HIER)[0]
    e = encode_qa(tok, prompt_of(ITEMS[0]), continuation_of(ITEMS[0]), cfg.max_length)
    assert e["input_ids"] == ex["input_ids"]

    def weights(word, which):
        s = e["text"].index(word)
        return [float(ex[which][t]) for t, (a, b) in enumerate(e["offsets"]) if a < s + len(word) and b > s]

    assert len(weights("cholecystectomy", "fw")) > 2                   # several sub-word tokens ...
    assert set(weights("cholecystectomy", "fw")) == {3.0}               # ... all targeted, level 4
    assert set(weights("laparoscopic", "fw")) == {1.5} and set(weights("laparoscopic", "kw")) == {0.0}
    assert weights("patients", "fw") == [0.0] and weights("patients", "kw") == [0.25]   # level 2: preserved
    assert weights("cells", "fw") == [0.0] and weights("cells", "kw") == [0.5]          # level 1
    assert set(weights("safe", "fw")) == {0.0} and set(weights("safe", "kw")) == {0.0}  # neutral
    assert weights(" yes", "fw") == [2.0]                                               # the answer
    assert float(ex["fw"].sum()) == pytest.approx(2.0 + 1.5 * len(weights("laparoscopic", "fw"))
                                                  + 3.0 * len(weights("cholecystectomy", "fw")))
    # no interventions: uniform forget weight on the answer only; retain samples: keep weight on the answer
    ans = [float(m) for m in e["cont_mask"]]
    flat = hds.encode_examples(tok, ITEMS[:1], hds.HDSConfig(token_interventions=False, answer_weight=1.0), forget=True,
                               hierarchy=HIER)[0]
    assert flat["fw"].tolist() == ans and flat["kw"].sum() == 0 and sum(ans) == 1
    ret = hds.encode_examples(tok, ITEMS[3:4], cfg, forget=False)[0]
    assert ret["fw"].sum() == 0 and ret["kw"].sum() == 1 and ret["kw"][-2] == 1   # "yes" before [SEP]


def _grads(model, params, loss):
    return [g.detach() for g in torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True,
                                                    materialize_grads=True)]


def _dot(a, b, w=None):
    return sum(float(((x * y) if w is None else (x * y * f)).double().sum()) for x, y, f in
               zip(a, b, w if w is not None else a))


@pytest.mark.parametrize("fisher", [False, True], ids=["euclid", "fisher"])
def test_projection_removes_retain_component(tiny, fisher):
    model, tok = tiny
    model = hds.wrap_lora(__import__("copy").deepcopy(model), hds.HDSConfig(lora_r=2))
    params = [p for p in model.parameters() if p.requires_grad]
    cfg = hds.HDSConfig(forget_loss="ga", projection="always", fisher=fisher, retain_weight=0.0)
    fb, rb = _batches(tok, cfg)
    g = hds.HDSGradient(cfg, params)
    lf, lk = g.losses(model, fb, rb)
    gf, gr = _grads(model, params, lf), _grads(model, params, lk)   # the unprojected gradients
    assert abs(_dot(gf, gr)) > 1e-6                                    # there is something to remove
    g.accumulate(model, fb, rb)
    upd = [p.grad for p in params]
    F = [x * x for x in gr] if fisher else None                         # first step: Fisher EMA = g_r**2
    # the update is g_f minus a multiple of g_r, and has no (Fisher-weighted) component along g_r
    c = _dot(gf, gr, F) / _dot(gr, gr, F)
    for u, a, b in zip(upd, gf, gr):
        torch.testing.assert_close(u, a - c * b, rtol=1e-4, atol=1e-6)
    assert abs(_dot(upd, gr, F)) <= 1e-5 * (_dot(gf, gf, F) * _dot(gr, gr, F)) ** 0.5
    if not fisher:
        # first order: a small step along the projected update leaves the retain loss unchanged, the
        # unprojected forget gradient does not
        def keep_after(direction, eps=1e-3):
            with torch.no_grad():
                for p, d in zip(params, direction):
                    p.sub_(eps * d)
                val = float(g.losses(model, fb, rb)[1])
                for p, d in zip(params, direction):
                    p.add_(eps * d)
            return val - float(lk.detach())
        assert abs(keep_after(upd)) < 0.05 * abs(keep_after(gf))


def test_subspace_projection_and_conflict_mode(tiny):
    model, tok = tiny
    model = hds.wrap_lora(__import__("copy").deepcopy(model), hds.HDSConfig(lora_r=2))
    params = [p for p in model.parameters() if p.requires_grad]
    cfg = hds.HDSConfig(forget_loss="ga", subspace=3, retain_weight=0.0)
    fb, rb = _batches(tok, cfg)
    g = hds.HDSGradient(cfg, params)
    seen = []
    for _ in range(3):   # three different retain gradients (the parameters move between steps)
        seen.append(_grads(model, params, g.losses(model, fb, rb)[1]))
        for p in params:
            p.grad = None
        g.accumulate(model, fb, rb)
        with torch.no_grad():
            for p in params:
                p.sub_(0.05 * p.grad)
    upd = [p.grad for p in params]
    for gr in seen:   # orthogonal to every retained direction
        assert abs(_dot(upd, gr)) <= 1e-4 * (_dot(upd, upd) * _dot(gr, gr)) ** 0.5
    # conflict mode: a forget gradient that exactly opposes the retain gradient (gradient ascent on the
    # retain batch itself: g_f = -g_r) is removed entirely
    cfg2 = hds.HDSConfig(forget_loss="ga", projection="conflict", fisher=False, retain_weight=0.0)
    g2 = hds.HDSGradient(cfg2, params)
    same = dict(rb, fw=rb["kw"], kw=torch.zeros_like(rb["kw"]))   # no preserved tokens in it
    for p in params:
        p.grad = None
    g2.accumulate(model, same, rb)
    assert float(g2.last_coef) == pytest.approx(-1.0, rel=1e-4)
    assert max(float(p.grad.abs().max()) for p in params) < 1e-5 * max(float(a.abs().max()) for a in seen[-1])


def test_npo_and_kl_losses_at_the_original_model(tiny):
    """At the start (LoRA B = 0) the model is the original: NPO's loss is 2/beta * log 2 and the KL keep loss
    is 0; with every parameter trainable the KL reference is a frozen copy."""
    import copy

    model, tok = tiny
    for adapter in ("lora", "none"):
        cfg = hds.HDSConfig(forget_loss="npo", npo_beta=0.5, retain_loss="kl", adapter=adapter, lora_r=2)
        fex = hds.encode_examples(tok, ITEMS[:3], cfg, forget=True, hierarchy=HIER)
        hds._ref_sums(model, fex, tok.pad_token_id)
        fb = hds.collate(fex, tok.pad_token_id)
        rb = hds.collate(hds.encode_examples(tok, ITEMS[3:], cfg, forget=False), tok.pad_token_id)
        work = hds.wrap_lora(copy.deepcopy(model), cfg) if adapter == "lora" else copy.deepcopy(model)
        ref = None if adapter == "lora" else copy.deepcopy(model).requires_grad_(False)
        g = hds.HDSGradient(cfg, [p for p in work.parameters() if p.requires_grad], ref)
        lf, lk = g.losses(work.eval(), fb, rb)
        assert float(lf.detach()) == pytest.approx(2 / 0.5 * torch.log(torch.tensor(2.0)).item(), rel=1e-4)
        assert abs(float(lk.detach())) < 1e-6
        g.accumulate(work, fb, rb)
        assert any(float(p.grad.abs().sum()) > 0 for p in g.params)


def test_unlearn_returns_a_copy_and_counts_exactly(tiny):
    model, tok = tiny
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = hds.HDSConfig(epochs=2, batch_size=2, lora_r=2, lr=1e-2, clip_norm=1.0, noise_multiplier=0.1)
    res = hds.unlearn(model, tok, ITEMS[:3], ITEMS[3:], hierarchy=HIER, config=cfg)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())   # caller's model untouched
    assert res.model is not model and type(res.model) is type(model)
    p = res.params
    assert p["total"] == sum(t.numel() for t in before.values())
    assert p["trainable"] == sum(t.numel() for t in res.adapter.values())
    # lora_B starts at zero and lora_A at random values: after two noisy steps every element moved
    assert 0 < p["modified"] <= p["trainable"] and p["percent"] == pytest.approx(100 * p["modified"] / p["total"])
    changed = sum(int((q != before[n]).sum()) for n, q in res.model.named_parameters())
    assert p["merged_modified"] == changed > 0
    assert res.steps == 4 and res.epochs == 2 and len(res.history) == 2
    full = hds.unlearn(model, tok, ITEMS[:3], ITEMS[3:], config=hds.baseline_config("ga", hds.HDSConfig(epochs=1)))
    assert full.adapter is None and full.params["trainable"] == p["total"]


@pytest.mark.parametrize("kw,msg", [
    ({"forget_loss": "dpo"}, "forget_loss must be one of"),
    ({"retain_loss": "none"}, "projection needs a retain gradient"),
    ({"projection": "sometimes"}, "projection must be one of"),
    ({"noise_multiplier": 1.0}, "needs clip_norm"),
    ({"level_weights": {5: 1.0}}, "unknown level"),
    ({"lora_targets": ["c_attn"]}, "match no module"),
    ({"forget_domains": ["cardiology"]}, "not in the hierarchy"),
    ({"epochs": 0}, "epochs must be an int >= 1"),
])
def test_bad_config_is_rejected_before_training(tiny, kw, msg):
    model, tok = tiny
    with pytest.raises(ValueError, match=msg):
        hds.unlearn(model, tok, ITEMS[:3], ITEMS[3:], hierarchy=HIER, config=hds.HDSConfig(**kw))


def test_bad_inputs(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="forget set is empty"):
        hds.unlearn(model, tok, [], ITEMS[3:])
    with pytest.raises(ValueError, match="retain set is empty"):
        hds.unlearn(model, tok, ITEMS[:3], [])
    with pytest.raises(ValueError, match="unknown method"):
        hds.baseline_config("retrain")


def test_hds_trainer_trains_checkpoints_and_resumes(tiny, tmp_path):
    from transformers import TrainingArguments

    from steu_ext.integrations.hf import HDS_STATE_NAME, HDSTrainer

    model, tok = tiny
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = hds.HDSConfig(lora_r=2, lr=1e-2)

    def make(out):
        args = TrainingArguments(output_dir=str(out), max_steps=3, per_device_train_batch_size=2, save_steps=2,
                                 logging_steps=1, use_cpu=True, report_to=[], lr_scheduler_type="constant",
                                 seed=0, disable_tqdm=True)
        return HDSTrainer(model, args, processing_class=tok, forget_items=ITEMS[:3], retain_items=ITEMS[3:],
                          hierarchy=HIER, hds_config=cfg)

    tr = make(tmp_path / "a")
    tr.train()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())   # works on a copy
    rep = tr.params_report()
    assert 0 < rep["modified"] <= rep["trainable"] < rep["total"] and rep["merged_modified"] > 0
    assert os.path.isfile(tmp_path / "a" / "checkpoint-2" / HDS_STATE_NAME)
    assert any("loss" in h for h in tr.state.log_history)
    tr2 = make(tmp_path / "b")
    tr2.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    assert tr2.hds_grad.fisher is not None
    a, b = tr.unlearned_model(), tr2.unlearned_model()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=n)   # resumed run ends where the full run did
    with pytest.raises(ValueError, match="fp16/bf16"):
        HDSTrainer(model, TrainingArguments(output_dir=str(tmp_path / "c"), use_cpu=True, bf16=True),
                   processing_class=tok, forget_items=ITEMS[:3], retain_items=ITEMS[3:])


def test_cli_hds(tmp_path):
    from steu_ext.cli import main

    rows = [{"question": q, "options": ["yes", "no", "maybe"], "answer": a, "domain": "surgery" if f else "general"}
            for q, a, f in QUESTIONS] * 2
    for i, r in enumerate(rows):
        r["question"] = f"{r['question']} ({i})"
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    h = tmp_path / "h.json"
    h.write_text(json.dumps({"concepts": [{"concept": c.name, "level": c.level, "domain": c.domain,
                                           "terms": list(c.terms)} for c in HIER.concepts]}))
    out = tmp_path / "run"
    base = ["hds", "--data", str(data), "--format", "jsonl", "--domain-column", "domain", "--forget-values", "surgery",
            "--hierarchy", str(h), "--forget-domains", "surgery", "--epochs", "2", "--lora-r", "2", "--quiet"]
    assert main(base + ["--teach-tiny", "--stop-at-forgetting", "0.99", "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["n_forget"] + rep["n_never_seen"] == 6 and rep["n_retain"] == 6
    assert {"forgetting_rate", "forgetting_rate_chance_corrected", "preservation", "mia_auc"} <= set(rep["after"])
    assert rep["params_modified"]["modified"] > 0 and rep["config"]["forget_domains"] == ["surgery"]
    # bad input: exit 2 with one line, no output folder left behind
    assert main(base + ["--out", str(tmp_path / "x")]) == 2                      # neither --model nor --teach-tiny
    assert main(base + ["--teach-tiny", "--stop-at-forgetting", "2", "--out", str(tmp_path / "x")]) == 2
    assert main(base[:2] + [str(tmp_path / "missing.jsonl")] + base[3:] + ["--teach-tiny", "--out",
                                                                          str(tmp_path / "y")]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("concepts:\n  - {concept: A, level: 7, domain: d, terms: [a]}")
    args = base + ["--teach-tiny", "--out", str(tmp_path / "z")]
    args[args.index(str(h))] = str(bad)
    assert main(args) == 2
    assert not any(p.name.startswith((".x", ".y", ".z", "x", "y", "z")) for p in tmp_path.iterdir())


@pytest.fixture(scope="module")
def pubmedqa_path():
    p = DATA_ROOT / "pubmedqa" / "ori_pqal.json"
    if not p.exists():
        if os.environ.get("CI"):
            pytest.fail(f"real data not found at {p} (set STEU_DATA_ROOT)")
        pytest.skip(f"real data not found at {p} (set STEU_DATA_ROOT)")
    return p


@pytest.fixture
def one_thread():
    """Tiny matrices: one intra-op thread is as fast and does not fight other processes for the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_end_to_end_pubmedqa_forgets_surgery_and_beats_ga(pubmedqa_path, one_thread):
    """Teach a tiny Llama 24 surgical + 72 other PubMedQA questions (>= 90 % answered), then unlearn the
    surgical ones (24 never-seen surgical questions are the MIA non-members). "Same forgetting": HDS and
    plain GA both train until their forgetting rate reaches a target, checked after every epoch: HDS 0.8,
    GA then the rate HDS achieved; preservation is compared there (GA may overshoot by up to one epoch)."""
    from steu_ext.data.qa import load_pubmedqa, split_domain, subsample
    from steu_ext.eval.qa import continuation_of, evaluate_qa, prompt_of

    items = load_pubmedqa(pubmedqa_path)
    f, r = split_domain(items)
    f, retain = subsample(f, None, 0), subsample(r, 72, 0)
    forget, never = f[:24], f[24:48]
    model, tok = hds.tiny_causal_lm([prompt_of(i) + continuation_of(i) for i in items], hidden=64)
    taught = hds.teach(model, tok, forget + retain, check_every=10)
    assert taught["accuracy"] >= 0.9
    before = evaluate_qa(model, tok, forget, retain, never)
    hierarchy = load_hierarchy(example_hierarchy_path())

    cfg = hds.HDSConfig(epochs=60, forget_domains=["surgery"])
    res = hds.unlearn(model, tok, forget, retain, hierarchy=hierarchy, config=cfg,
                      monitor=hds.forgetting_monitor(tok, forget, before["forget_acc"], 0.8))
    after = evaluate_qa(res.model, tok, forget, retain, never, before=before)
    assert after["forgetting_rate"] >= 0.8
    assert after["preservation"] >= 0.9
    assert res.params["percent"] < 5.0 and res.params["modified"] <= res.params["trainable"]

    ga_cfg = hds.baseline_config("ga", hds.HDSConfig(epochs=60, lr=3e-4))
    ga = hds.unlearn(model, tok, forget, retain, config=ga_cfg,
                     monitor=hds.forgetting_monitor(tok, forget, before["forget_acc"], after["forgetting_rate"]))
    ga_after = evaluate_qa(ga.model, tok, forget, retain, never, before=before)
    assert ga_after["forgetting_rate"] >= after["forgetting_rate"]          # GA reached the same forgetting
    assert after["preservation"] > ga_after["preservation"]
