"""HDS: token weights from the concept hierarchy, the geometric constraint (the update's retain-gradient
component is removed), bf16 (autocast and bf16 base weights), configuration errors, the HF trainer (bf16,
refused setups, and, slow, DDP with torchrun on CPU equal to one process), the CLI, and end-to-end runs on
a PubMedQA subset in fp32 and bf16 (slow)."""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import torchrun_setup

from steu_ext.data.concepts import ConceptHierarchy, example_hierarchy_path, load_hierarchy
from steu_ext.data.qa import QAItem
from steu_ext.eval import stopping
from steu_ext.experiments import tiny_models
from steu_ext.methods import hds

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
    return tiny_models.tiny_causal_lm(texts, hidden=32, layers=1, heads=2)


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


def test_question_token_weights(tiny):
    """``question_weight``: the question's tokens of forget items get it (preservation-critical ones 0, on
    top of the unchanged ``fw``/``kw``), the template and answer tokens do not; retain items get no forget
    weight, only a keep weight of 1 on their question; 0 reproduces the examples of before exactly."""
    from steu_ext.eval.qa import continuation_of, encode_qa, prompt_of

    _, tok = tiny
    old = hds.HDSConfig(level_weights={1: 0.5, 2: 0.25, 3: 1.5, 4: 3.0}, answer_weight=2.0)
    new = copy.deepcopy(old)
    new.question_weight, new.question_target = 0.75, 6.0
    e = encode_qa(tok, prompt_of(ITEMS[0]), continuation_of(ITEMS[0]), old.max_length)

    def weights(ex, word, which):
        s = e["text"].index(word)
        return [float(ex[which][t]) for t, (a, b) in enumerate(e["offsets"]) if a < s + len(word) and b > s]

    for tags in (True, False):
        for c in (old, new):
            c.token_interventions = tags
        a = hds.encode_examples(tok, ITEMS[:3], old, forget=True, hierarchy=HIER)
        b = hds.encode_examples(tok, ITEMS[:3], new, forget=True, hierarchy=HIER)
        zero = hds.encode_examples(tok, ITEMS[:3], dataclasses.replace(new, question_weight=0.0), forget=True,
                                   hierarchy=HIER)
        for x, y, z in zip(a, b, zero):
            assert set(y) - set(x) == {"qw"} and set(z) == set(x)                # 0: no extra key ...
            for k in x:                                                           # ... and equal weights
                assert torch.equal(torch.as_tensor(x[k]), torch.as_tensor(y[k])), k
                assert torch.equal(torch.as_tensor(x[k]), torch.as_tensor(z[k])), k
        ex = b[0]
        assert set(weights(ex, "cholecystectomy", "qw")) == {0.75}             # targeted: qw on top of fw
        assert set(weights(ex, "safe", "qw")) == {0.75}                        # neutral question words
        assert weights(ex, "patients", "qw") == [0.0 if tags else 0.75]        # preserved (level 2)
        assert weights(ex, "cells", "qw") == [0.0 if tags else 0.75]           # preserved (level 1)
        for word in ("Question", ":", "Answer", " yes"):                        # template and answer: none
            assert set(weights(ex, word, "qw")) == {0.0}, word
        assert float(ex["qw"][0]) == float(ex["qw"][-1]) == 0.0                  # [CLS], [SEP]
    # retain items: no forget weight, the answer keep weight unchanged, keep weight 1 on the question
    r_old = hds.encode_examples(tok, ITEMS[3:], old, forget=False)
    r_new = hds.encode_examples(tok, ITEMS[3:], new, forget=False)
    for x, y in zip(r_old, r_new):
        assert set(y) - set(x) == {"qk"}
        assert torch.equal(x["fw"], y["fw"]) and y["fw"].sum() == 0 and torch.equal(x["kw"], y["kw"])
        assert set(y["qk"].tolist()) == {0.0, 1.0} and float((y["qk"] * y["kw"]).sum()) == 0.0
    # collate pads them; without the option the batch has exactly the keys of before
    fb = hds.collate(b, tok.pad_token_id)
    assert fb["qw"].shape == fb["fw"].shape and float(fb["qw"].sum()) == pytest.approx(
        sum(float(x["qw"].sum()) for x in b))
    assert set(hds.collate(a, tok.pad_token_id)) == {"input_ids", "attention_mask", "fw", "kw"}


def test_question_objective_holds_the_target(tiny):
    """``question_objective`` = mean over sequences of ``wbar * |m - target|``: gradient ascent on a
    question below the target, descent above it; it is added to the forget loss, and with
    ``retain_loss="nll"`` the retain questions' NLL (normalised on its own) to the keep loss."""
    lp = torch.tensor([[-1.0, -3.0, -9.0], [-8.0, -6.0, 0.0]], requires_grad=True)
    w = torch.tensor([[2.0, 2.0, 0.0], [2.0, 2.0, 0.0]])
    loss = hds.question_objective(lp, w, 5.0)
    assert float(loss.detach()) == pytest.approx((2 * abs(2.0 - 5.0) + 2 * abs(7.0 - 5.0)) / 2)
    (g,) = torch.autograd.grad(loss, lp)
    assert (g[0, :2] > 0).all() and (g[1, :2] < 0).all() and float(g[:, 2].abs().sum()) == 0.0
    assert float(hds.question_objective(lp.detach(), torch.zeros_like(w), 5.0)) == 0.0   # no question tokens

    model, tok = tiny
    work = hds.wrap_lora(copy.deepcopy(model), hds.HDSConfig(lora_r=2))
    params = [p for p in work.parameters() if p.requires_grad]
    plain = hds.HDSConfig(forget_loss="ga")
    cfg = dataclasses.replace(plain, question_weight=0.5, question_target=4.0)
    fb0, rb0 = _batches(tok, plain)
    fb, rb = _batches(tok, cfg)
    lf0, lk0 = hds.HDSGradient(plain, params).losses(work.eval(), fb0, rb0)
    lf, lk = hds.HDSGradient(cfg, params).losses(work, fb, rb)
    from steu_ext.eval.qa import token_logprobs

    with torch.no_grad():
        lpf = token_logprobs(work, fb["input_ids"], fb["attention_mask"])
        lpr = token_logprobs(work, rb["input_ids"], rb["attention_mask"])
    q = hds.question_objective(lpf, fb["qw"][:, 1:], 4.0)
    assert float(q) > 0
    lf, lk, lf0, lk0 = (float(x.detach()) for x in (lf, lk, lf0, lk0))
    assert lf == pytest.approx(lf0 + float(q), rel=1e-5)
    assert lk == pytest.approx(lk0 + float(hds.keep_nll(lpr, rb["qk"][:, 1:])), rel=1e-5)


def test_question_term_global_denominators_one_rank(tiny, tmp_path):
    """With a process group, the question term and the retain-question keep term use the normalisers
    summed over the ranks; on one gloo rank they are the batch's own, so the losses are unchanged."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available() or dist.is_initialized():
        pytest.skip("needs torch.distributed with gloo and no process group yet")
    model, tok = tiny
    work = hds.wrap_lora(copy.deepcopy(model), hds.HDSConfig(lora_r=2)).eval()
    params = [p for p in work.parameters() if p.requires_grad]
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        for loss in ("ga", "npo"):
            cfg = hds.HDSConfig(forget_loss=loss, question_weight=0.5, question_target=4.0)
            fb, rb = _batches(tok, cfg)
            if loss == "npo":
                fb["ref"] = torch.zeros(fb["input_ids"].shape[0])
            g = hds.HDSGradient(cfg, params, distributed=True)
            d = g.global_denominators(fb, rb)
            assert float(d["sequences"]) == 3 and float(d["retain_question"]) == float(rb["qk"][:, 1:].sum())
            for a, b in zip(g.losses(work, fb, rb, d), g.losses(work, fb, rb)):
                assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-6)
    finally:
        dist.destroy_process_group()


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
    ({"autocast_dtype": "float16"}, "float16' is not supported: fp16 needs loss scaling"),
    ({"autocast_dtype": "int8"}, "autocast_dtype must be None or one of"),
    ({"question_weight": -0.5, "question_target": 6.0}, "question_weight must be a finite number >= 0"),
    ({"question_weight": float("nan"), "question_target": 6.0}, "question_weight must be a finite number"),
    ({"question_weight": 1.0}, "question_weight > 0 needs question_target"),
    ({"question_weight": 1.0, "question_target": 0.0}, "question_target must be a finite number > 0"),
    ({"question_target": float("inf")}, "question_target must be a finite number > 0"),
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
    assert all(f.data_ptr() % 64 == 0 for f in tr2.hds_grad.fisher)  # read into aligned memory (read_tensor)
    a, b = tr.unlearned_model(), tr2.unlearned_model()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=n)   # resumed run ends where the full run did


# --------------------------------------------------------------------------------------------------
# bf16: autocast, bf16 parameters and base weights; the trainer's precision and parallelism options


@pytest.fixture
def grad_project_dtypes(monkeypatch):
    """Records the dtypes of every list that reaches ``grad_project_`` (and still runs it)."""
    seen = []
    real = hds.grad_project_

    def spy(grads, ref, fisher=None, **kw):
        seen.append({t.dtype for t in list(grads) + list(ref) + list(fisher or [])})
        return real(grads, ref, fisher, **kw)

    monkeypatch.setattr(hds, "grad_project_", spy)
    return seen


def test_projection_in_fp32_for_bf16_parameters(tiny, grad_project_dtypes):
    """Every trainable tensor bf16, forward under bf16 autocast: g_f and g_r are projected in fp32 against
    an fp32 Fisher EMA, and the update lands in ``.grad`` as bf16, orthogonal to g_r up to bf16 rounding."""
    model, tok = tiny
    model = hds.wrap_lora(copy.deepcopy(model), hds.HDSConfig(lora_r=2)).to(torch.bfloat16)
    params = [p for p in model.parameters() if p.requires_grad]
    assert {p.dtype for p in params} == {torch.bfloat16}
    cfg = hds.HDSConfig(forget_loss="ga", projection="always", retain_weight=0.0, autocast_dtype="bfloat16")
    fb, rb = _batches(tok, cfg)
    g = hds.HDSGradient(cfg, params)
    lf, lk = g.losses(model, fb, rb)
    gf = [x.float() for x in _grads(model, params, lf)]
    gr = [x.float() for x in _grads(model, params, lk)]
    g.accumulate(model, fb, rb)
    assert grad_project_dtypes == [{torch.float32}]
    assert {f.dtype for f in g.fisher} == {torch.float32}
    assert {p.grad.dtype for p in params} == {torch.bfloat16}
    F = [x * x for x in gr]
    c = _dot(gf, gr, F) / _dot(gr, gr, F)
    assert abs(c) > 1e-3                                                 # something was removed
    for p, a, b in zip(params, gf, gr):
        torch.testing.assert_close(p.grad, (a - c * b).to(torch.bfloat16), rtol=1e-2, atol=1e-6)
    upd = [p.grad.float() for p in params]
    assert abs(_dot(upd, gr, F)) <= 1e-2 * (_dot(gf, gf, F) * _dot(gr, gr, F)) ** 0.5


def test_bf16_base_weights(tiny, grad_project_dtypes):
    """A model loaded in bf16, with LoRA (peft keeps the adapters fp32) and with every parameter training
    (bf16 gradients), with and without autocast: HDS trains, its losses follow the fp32 run's, only fp32
    reaches the projection, and the caller's bf16 model is untouched."""
    model, tok = tiny
    base = copy.deepcopy(model).to(torch.bfloat16)
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    refs = {}
    for adapter, autocast in (("lora", "bfloat16"), ("lora", None), ("none", "bfloat16")):
        cfg = hds.HDSConfig(epochs=5, batch_size=3, lora_r=2, adapter=adapter, lr=1e-2 if adapter == "lora" else 1e-3)
        if adapter not in refs:   # fp32 weights, no autocast
            refs[adapter] = hds.unlearn(model, tok, ITEMS[:3], ITEMS[3:], hierarchy=HIER, config=cfg)
        ref = refs[adapter]
        cfg.autocast_dtype = autocast
        res = hds.unlearn(base, tok, ITEMS[:3], ITEMS[3:], hierarchy=HIER, config=cfg)
        assert next(res.model.parameters()).dtype == torch.bfloat16
        if adapter == "lora":
            assert {t.dtype for t in res.adapter.values()} == {torch.float32}
        f = [h["forget_loss"] for h in res.history]
        assert f[0] == pytest.approx(2 / 0.1 * 0.6931, rel=1e-3) and f[-1] < f[0] - 0.2, f   # NPO descends
        for h, r in zip(res.history, ref.history):
            assert h["forget_loss"] == pytest.approx(r["forget_loss"], rel=0.01)
            assert h["keep_loss"] == pytest.approx(r["keep_loss"], rel=0.01)
        assert res.params["modified"] > 0 and res.params["merged_modified"] > 0
    assert grad_project_dtypes and all(d == {torch.float32} for d in grad_project_dtypes)
    assert all(p.dtype == torch.bfloat16 and torch.equal(p, before[n]) for n, p in base.named_parameters())


def _hds_trainer(model, tok, out, hds_config=None, eval_items=None, **kw):
    from transformers import TrainingArguments

    from steu_ext.integrations.hf import HDSTrainer

    base = dict(output_dir=str(out), max_steps=3, per_device_train_batch_size=2, save_strategy="no",
                logging_steps=1, use_cpu=True, report_to=[], lr_scheduler_type="constant", seed=0,
                disable_tqdm=True)
    base.update(kw)
    return HDSTrainer(model, TrainingArguments(**base), processing_class=tok, forget_items=ITEMS[:3],
                      retain_items=ITEMS[3:], hierarchy=HIER, eval_items=eval_items,
                      hds_config=hds_config or hds.HDSConfig(lora_r=2, lr=1e-2))


def test_hds_trainer_bf16(tiny, tmp_path):
    """``bf16=True``: the forward passes run in bf16 (a hook on a LoRA-wrapped linear sees bf16 outputs),
    the trainable tensors, their gradients and the Fisher EMA stay fp32, and the run follows the fp32 run."""
    model, tok = tiny
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    runs = {}
    for bf16 in (False, True):
        cfg = hds.HDSConfig(lora_r=2, lr=1e-2)
        tr = _hds_trainer(model, tok, tmp_path / str(bf16), hds_config=cfg, bf16=bf16)
        assert tr.hds_config.autocast_dtype == ("bfloat16" if bf16 else None) and cfg.autocast_dtype is None
        out_dtypes = set()
        lin = next(m for m in tr.model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer"))
        lin.register_forward_hook(lambda mod, i, o: out_dtypes.add(o.dtype))
        grad_dtypes = set()
        tr.create_optimizer().register_step_pre_hook(
            lambda opt, a, k: grad_dtypes.update(p.grad.dtype for p in tr.hds_grad.params))
        tr.train()
        assert out_dtypes == {torch.bfloat16 if bf16 else torch.float32}
        assert {p.dtype for p in tr.hds_grad.params} == grad_dtypes == {torch.float32}
        assert {f.dtype for f in tr.hds_grad.fisher} == {torch.float32}
        runs[bf16] = [h["loss"] for h in tr.state.log_history if "loss" in h]
        assert tr.params_report()["modified"] > 0
    assert len(runs[True]) == 3 and runs[True] != runs[False]                  # autocast changed something ...
    assert runs[True] == pytest.approx(runs[False], rel=1e-2)                  # ... by bf16 rounding only
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_hds_trainer_question_weight(tiny, tmp_path):
    """``question_weight > 0`` in the trainer: the batches carry the question weights (``qw`` on the forget
    side, ``qk`` on the retain side) and the objective gains the question term (the first step's loss,
    same weights in both runs, is higher by at least W * min |m - T| over the items); the caller's model is
    untouched. (Its effect on a taught model is the end-to-end test's: the trainer and ``unlearn`` share
    ``HDSGradient``; this untaught random model barely moves in 6 clipped steps.)"""
    model, tok = tiny
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    m = hds.question_nll(model, tok, ITEMS[:3])
    start = float(m.mean())
    first, keys = {}, {}
    for w in (0.0, 4.0):
        cfg = hds.HDSConfig(lora_r=2, lr=5e-2, question_weight=w, question_target=start + 3.0 if w else None)
        tr = _hds_trainer(model, tok, tmp_path / str(w), hds_config=cfg, max_steps=6)
        seen, inner = [], tr.hds_grad.accumulate

        def spy(m, fb, rb, scale=1.0, _seen=seen, _inner=inner):
            _seen.append((set(fb), set(rb or {})))
            return _inner(m, fb, rb, scale)

        tr.hds_grad.accumulate = spy
        tr.train()
        keys[w] = seen[0]
        first[w] = next(h["loss"] for h in tr.state.log_history if "loss" in h)
        assert tr.params_report()["modified"] > 0
    assert "qw" not in keys[0.0][0] and "qk" not in keys[0.0][1]
    assert "qw" in keys[4.0][0] and "qk" in keys[4.0][1]
    assert first[4.0] - first[0.0] >= 4.0 * float((m - (start + 3.0)).abs().min()) - 1e-3, (first, m)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_hds_trainer_refuses_fp16_fsdp_deepspeed(tiny, tmp_path):
    from transformers import TrainingArguments

    model, tok = tiny
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="does not support fp16: fp16 needs loss scaling"):
        _hds_trainer(model, tok, tmp_path / "a", fp16=True)
    with pytest.raises(ValueError, match="does not support FSDP"):
        _hds_trainer(model, tok, tmp_path / "b", fsdp=True)
    args = TrainingArguments(output_dir=str(tmp_path / "c"), use_cpu=True, report_to=[])
    args.deepspeed = {"zero_optimization": {"stage": 2}}   # (building it for real needs deepspeed installed)
    from steu_ext.integrations.hf import HDSTrainer

    with pytest.raises(ValueError, match="does not support DeepSpeed"):
        HDSTrainer(model, args, processing_class=tok, forget_items=ITEMS[:3], retain_items=ITEMS[3:])
    with pytest.raises(ValueError, match="autocast_dtype='float16' is not supported"):
        HDSTrainer(model, TrainingArguments(output_dir=str(tmp_path / "d"), use_cpu=True, report_to=[]),
                   processing_class=tok, forget_items=ITEMS[:3], retain_items=ITEMS[3:],
                   hds_config=hds.HDSConfig(autocast_dtype="float16"))
    # without a process group, a distributed HDSGradient says so instead of computing a local update
    work = hds.wrap_lora(copy.deepcopy(model), hds.HDSConfig(lora_r=2))
    g = hds.HDSGradient(hds.HDSConfig(), [p for p in work.parameters() if p.requires_grad], distributed=True)
    fb, rb = _batches(tok, hds.HDSConfig())
    with pytest.raises(RuntimeError, match="process group"):
        g.accumulate(work, fb, rb)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


# DDP: the same HDSTrainer script run by one process (batch 2b) and by torchrun with 2 gloo processes
# (batch b each); rank 0 writes what it trained and the examples every rank saw

_DDP_WORKER = textwrap.dedent("""
    import json, os, sys, torch, torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments
    from steu_ext.data.concepts import ConceptHierarchy
    from steu_ext.data.qa import QAItem
    from steu_ext.integrations import hf
    from steu_ext.methods.hds import HDSConfig

    base, data, out, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    d = json.load(open(data))
    items = lambda rows: [QAItem(r["id"], r["question"], tuple(r["options"]), r["answer"]) for r in rows]
    seen = []                       # (epoch, forget index) of every example this process loads
    get = hf.HDSPairDataset.__getitem__
    hf.HDSPairDataset.__getitem__ = lambda self, i: (seen.append((self.epoch, int(i))), get(self, i))[1]
    model, tok = AutoModelForCausalLM.from_pretrained(base), AutoTokenizer.from_pretrained(base)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    args = TrainingArguments(output_dir=out, num_train_epochs=2, per_device_train_batch_size=batch,
                             use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="no",
                             logging_steps=1, seed=0, lr_scheduler_type="constant",
                             ddp_backend="gloo" if distributed else None)
    t = hf.HDSTrainer(model, args, processing_class=tok, forget_items=items(d["forget"]),
                      retain_items=items(d["retain"]), hierarchy=ConceptHierarchy.from_dict(d["hierarchy"]),
                      hds_config=HDSConfig(**d["config"]))
    t.train()
    trained = {n: p.detach().clone() for n, p in t.accelerator.unwrap_model(t.model).named_parameters()
               if p.requires_grad}
    res = {"world": args.world_size, "wrapped": type(t.model_wrapped).__name__, "params": trained,
           "fisher": [f.clone() for f in t.hds_grad.fisher], "seen": [seen], "same": True,
           "loss": [h["loss"] for h in t.state.log_history if "loss" in h]}
    if distributed:
        flat = torch.cat([p.reshape(-1) for p in trained.values()] + [f.reshape(-1) for f in res["fisher"]])
        every = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
        dist.all_gather(every, flat)
        res["same"] = all(torch.equal(every[0], f) for f in every)
        res["seen"] = [None] * dist.get_world_size()
        dist.all_gather_object(res["seen"], seen)
    if args.process_index == 0:
        torch.save(res, os.path.join(out, "result.pt"))
    if distributed:
        dist.barrier()
        dist.destroy_process_group()  # a gloo group left to the interpreter's exit can abort a rank
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown: a rank sometimes aborts there ("terminate called without an
    #             active exception", seen in CI after the work and the checks were done)
""")


@pytest.mark.slow
@pytest.mark.parametrize("question_weight", [0.0, 4.0], ids=["plain", "question_term"])
def test_hds_trainer_ddp_two_processes_equals_one(tiny, tmp_path, question_weight):
    """torchrun with 2 gloo processes on batches of 2 each ends with the same LoRA weights and Fisher EMA
    (max abs difference ~1e-7) as one process on batches of 4.

    Why the runs are exactly comparable: HDSTrainer's sampler (``hds.epoch_order``, as in ``unlearn``) draws
    the same permutation of the 8 forget examples in both runs, and accelerate's batch sharding gives rank r the per-rank batches
    r, r + 2, ... of that permutation, so global step k covers the same 4 examples as the one-process
    step k (asserted from what each process loaded); the retain partner of an example depends only on
    (seed, epoch, index); LoRA is initialised from the same seed. The questions differ in length and in
    tagged concepts, so the ranks' token-weight sums differ: the losses must be normalised over the global
    batch (and the gradients summed) to match one process, a plain average of per-rank means does not
    (it differs by ~3e-2 here). The config (GA, projection always, Fisher, clip + noise) makes every
    rank-dependent part count: Fisher EMA and projection on the global gradients, global clip norm, and
    the same noise draws on every rank. ``question_term``: also the question term and the retain questions'
    keep loss, whose normalisers (forget sequences, retain question-token count) are global too."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    model, tok = tiny
    base = tmp_path / "base"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    suffix = ["", " now", " in cells", " at risk today", " again", " here and there", " for patients", " too"]

    def rows(offset, tag):
        return [{"id": f"{tag}{k}", "question": QUESTIONS[offset + k % 3][0] + suffix[k],
                 "options": ["yes", "no", "maybe"], "answer": (QUESTIONS[offset + k % 3][1] + k) % 3}
                for k in range(8)]

    data = tmp_path / "data.json"
    data.write_text(json.dumps({
        "forget": rows(0, "f"), "retain": rows(3, "r"),
        "hierarchy": {"concepts": [{"concept": c.name, "level": c.level, "domain": c.domain,
                                    "terms": list(c.terms)} for c in HIER.concepts]},
        "config": {"lora_r": 2, "lr": 1e-2, "forget_loss": "ga", "projection": "always", "clip_norm": 1.0,
                   "noise_multiplier": 0.01, "question_weight": question_weight,
                   "question_target": 7.0 if question_weight else None}}))
    worker = tmp_path / "worker.py"
    worker.write_text(_DDP_WORKER)
    port, env = torchrun_setup()
    cmds = {1: [sys.executable, str(worker), str(base), str(data), str(tmp_path / "one"), "4"],
            2: [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                "127.0.0.1", "--master-port", str(port), str(worker), str(base), str(data), str(tmp_path / "two"),
                "2"]}
    procs = {n: subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for n, c in cmds.items()}
    for n, p in procs.items():
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, f"{n} process(es):\n{out[-4000:]}"
    one = torch.load(tmp_path / "one" / "result.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "result.pt", weights_only=True)
    assert one["world"] == 1 and two["world"] == 2 and two["wrapped"] == "DistributedDataParallel"
    assert two["same"]                                    # every rank holds the same weights and Fisher EMA
    # global step k saw the same examples: rank 0's batch then rank 1's == the one-process batch
    steps_one = [one["seen"][0][i:i + 4] for i in range(0, 16, 4)]
    steps_two = [two["seen"][0][i:i + 2] + two["seen"][1][i:i + 2] for i in range(0, 8, 2)]
    assert steps_one == steps_two and len(steps_one) == 4
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)   # the logged loss is the global batch's
    assert one["params"].keys() == two["params"].keys()
    moved = max(float(p.abs().max()) for p in one["params"].values())
    diff = max(float((one["params"][n] - two["params"][n]).abs().max()) for n in one["params"])
    assert diff <= 1e-6 * max(moved, 1.0), diff
    for a, b in zip(one["fisher"], two["fisher"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# one method, two entry points; the stopping rules; the unmerged adapter; the parameter budget


def test_unlearn_and_trainer_are_the_same_computation(tiny, tmp_path):
    """``hds.unlearn`` and ``HDSTrainer`` with default ``TrainingArguments`` (linear schedule, max_grad_norm
    1.0 -- neither used: HDS's rate is constant and its clipping is ``clip_norm``) train the same model:
    same data order, pairs, LoRA initialisation, losses (per-epoch forget / keep means) and weights."""
    from transformers import TrainingArguments

    from steu_ext.integrations.hf import HDSTrainer

    model, tok = tiny
    cfg = hds.HDSConfig(lora_r=2, lr=2e-2, epochs=3, batch_size=2, seed=3, forget_domains=["surgery"])
    res = hds.unlearn(model, tok, ITEMS[:3], ITEMS[3:], hierarchy=HIER, config=cfg)
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=3, per_device_train_batch_size=2,
                             save_strategy="no", logging_steps=100, use_cpu=True, report_to=[], seed=3,
                             disable_tqdm=True)
    tr = HDSTrainer(model, args, processing_class=tok, forget_items=ITEMS[:3], retain_items=ITEMS[3:],
                    hierarchy=HIER, hds_config=cfg)
    tr.train()
    assert args.max_grad_norm == 1.0                                   # the caller's arguments are untouched
    logged = [h for h in tr.state.log_history if "forget_loss" in h]
    assert len(logged) == 3                                            # logged once per epoch at least
    assert [h["forget_loss"] for h in logged] == pytest.approx([h["forget_loss"] for h in res.history], rel=1e-5)
    assert [h["keep_loss"] for h in logged] == pytest.approx([h["keep_loss"] for h in res.history], rel=1e-5)
    ours = tr.unlearned_model()
    moved = 0.0
    for (n, p), q in zip(res.model.named_parameters(), ours.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=n)
        moved = max(moved, float((p - dict(model.named_parameters())[n]).detach().abs().max()))
    assert moved > 1e-3                                                # ... and they did train
    assert tr.params_report() == res.params


def test_hds_trainer_evaluate_logs_forget_and_retain_metrics(tiny, tmp_path):
    """``evaluate()`` (issue #14 item 6) used to fail ("You must specify exactly one of input_ids or
    inputs_embeds"): without an eval dataset it scores the QA items, with the pair dataset it returns
    the HDS objective and its two terms."""
    model, tok = tiny
    tr = _hds_trainer(model, tok, tmp_path, eval_items={"never_seen": ITEMS[3:]})
    tr.train()
    m = tr.evaluate()
    assert {"eval_forget_acc", "eval_retain_acc", "eval_forget_loss", "eval_keep_loss", "eval_loss",
            "eval_mia_auc"} <= set(m)
    assert 0 <= m["eval_forget_acc"] <= 1 and m["eval_loss"] == pytest.approx(m["eval_forget_loss"]
                                                                              + m["eval_keep_loss"])
    m2 = tr.evaluate(eval_dataset=tr.train_dataset)
    assert {"eval_loss", "eval_forget_loss", "eval_keep_loss"} <= set(m2)
    assert m2["eval_loss"] == pytest.approx(m2["eval_forget_loss"] + m2["eval_keep_loss"], rel=1e-5)
    assert any("eval_forget_acc" in h for h in tr.state.log_history)
    with pytest.raises(ValueError, match="unknown key"):
        _hds_trainer(model, tok, tmp_path / "b", eval_items={"held_out": ITEMS})


class _Scripted(hds.StopRule):
    """A stopping rule whose figures are given: (met, score) per epoch."""

    def __init__(self, script, **kw):
        super().__init__(**kw)
        self.script = script

    def check(self, model, epoch):
        met, score = self.script[epoch]
        return met, (score,), {"score": score}


def test_stop_rule_stops_when_met_and_restores_the_best_epoch_otherwise(tiny):
    model, tok = tiny
    cfg = hds.HDSConfig(lora_r=2, lr=5e-2, epochs=4, batch_size=3)
    rule = _Scripted([(False, 3.0), (True, 0.0), (False, 5.0), (False, 5.0)])
    res = hds.unlearn(model, tok, ITEMS[:3], ITEMS[3:], hierarchy=HIER, config=cfg, monitor=rule)
    assert res.epochs == 2 and res.stopping["met"] and res.stopping["met_at_epoch"] == 1
    assert not res.stopping["restored_best"]
    # never met: the best epoch (1) is restored, i.e. the weights after 2 epochs of the same run
    snap = {}

    class Never(_Scripted):
        def check(self, m, epoch):
            if epoch == 1:
                snap.update({n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad})
            return super().check(m, epoch)

    rule = Never([(False, 3.0), (False, 1.0), (False, 2.0), (False, 4.0)])
    res = hds.unlearn(model, tok, ITEMS[:3], ITEMS[3:], hierarchy=HIER, config=cfg, monitor=rule, merge=False)
    assert res.epochs == 4 and res.stopping["restored_best"] and res.stopping["best_epoch"] == 1
    for n, p in res.model.named_parameters():
        if n in snap:
            assert torch.equal(p, snap[n]), n


def test_indistinguishable_stop_figures_and_bad_input(tiny):
    model, tok = tiny
    forget, never = ITEMS[:3], ITEMS[3:]
    rule = stopping.IndistinguishableStop(tok, forget, never, model=model, band=0.05, auc_band=0.05)
    from steu_ext.eval.qa import accuracy, mia_auc

    assert rule.level == accuracy(model, tok, never)
    stop = rule(model, 0)
    t = rule.trace[-1]
    assert t["forget_acc"] == accuracy(model, tok, forget) and t["mia_auc"] == mia_auc(model, tok, forget, never)["auc"]
    assert stop == (abs(t["forget_acc"] - rule.level) <= 0.05 and abs(t["mia_auc"] - 0.5) <= 0.05)
    assert stopping.IndistinguishableStop(tok, forget, never, level=t["forget_acc"], auc_band=0.49)(model, 0) == \
        (abs(t["mia_auc"] - 0.5) <= 0.49)
    with pytest.raises(ValueError, match="overlap"):
        stopping.IndistinguishableStop(tok, forget, forget[:1], level=0.5)
    with pytest.raises(ValueError, match="never-seen level"):
        stopping.IndistinguishableStop(tok, forget, never)
    with pytest.raises(ValueError, match="needs forget items"):
        stopping.IndistinguishableStop(tok, [], never, level=0.5)


def test_trainer_stop_rule(tiny, tmp_path):
    """The trainer checks the rule after every epoch and stops where ``unlearn`` stops."""
    from transformers import TrainingArguments

    from steu_ext.integrations.hf import HDSTrainer

    model, tok = tiny
    cfg = hds.HDSConfig(lora_r=2, lr=5e-2, epochs=5, batch_size=3)
    script = [(False, 3.0), (False, 2.0), (True, 0.0), (False, 1.0), (False, 1.0)]
    res = hds.unlearn(model, tok, ITEMS[:3], ITEMS[3:], hierarchy=HIER, config=cfg, monitor=_Scripted(script))
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=5, per_device_train_batch_size=3,
                             save_strategy="no", use_cpu=True, report_to=[], seed=0, disable_tqdm=True)
    tr = HDSTrainer(model, args, processing_class=tok, forget_items=ITEMS[:3], retain_items=ITEMS[3:],
                    hierarchy=HIER, hds_config=cfg, stop_rule=_Scripted(script))
    tr.train()
    assert res.epochs == 3 and tr.state.global_step == 3 and tr.stopping["met_at_epoch"] == 2
    assert any("stop_score" in h for h in tr.state.log_history)
    with pytest.raises(TypeError, match="StopRule"):
        HDSTrainer(model, args, processing_class=tok, forget_items=ITEMS[:3], retain_items=ITEMS[3:],
                   stop_rule=lambda m, e: True)


def test_question_target_estimated_from_never_taught_items_only(tiny):
    model, tok = tiny
    est = hds.estimate_question_target(model, tok, ITEMS[3:], exclude=ITEMS[:3])
    q = hds.question_nll(model, tok, ITEMS[3:])
    assert est["value"] == pytest.approx(float(q.median())) and est["n"] == 3
    assert est["ids"] == [i.id for i in ITEMS[3:]]
    with pytest.raises(ValueError, match="never saw"):
        hds.estimate_question_target(model, tok, ITEMS[2:], exclude=ITEMS[:3])
    with pytest.raises(ValueError, match="needs never-taught items"):
        hds.estimate_question_target(model, tok, [])


def test_adapter_is_unmerged_peft_and_reversible(tiny, tmp_path):
    """The edit ships as a PEFT adapter: peft loads it, the adapted model computes what the merged result
    does, removing it gives back the base weights bit-exact, and a different base is refused."""
    from peft import PeftModel

    model, tok = tiny
    cfg = hds.HDSConfig(lora_r=2, lr=5e-2, epochs=2, batch_size=3, lora_targets=["down_proj", "o_proj"])
    res = hds.unlearn(model, tok, ITEMS[:3], ITEMS[3:], hierarchy=HIER, config=cfg)
    out = tmp_path / "adapter"
    res.save_adapter(out)
    assert {p.name for p in out.iterdir()} == {"adapter_config.json", "adapter_model.safetensors", "steu_hds.json"}
    meta = json.loads((out / "steu_hds.json").read_text())
    assert meta["params"]["trainable"] == res.params["trainable"] and meta["base_fingerprint"]
    ids = torch.tensor([[2, 7, 9, 11, 5]])
    want = res.model(input_ids=ids).logits
    base = copy.deepcopy(model)
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), str(out))          # plain peft loads it
    torch.testing.assert_close(peft_model(input_ids=ids).logits, want, rtol=1e-4, atol=1e-5)
    applied = hds.load_adapter(base, out)
    torch.testing.assert_close(applied(input_ids=ids).logits, want, rtol=1e-4, atol=1e-5)
    restored = hds.remove_adapter(applied)
    assert all(torch.equal(p, before[n]) for n, p in restored.named_parameters())
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model.layers[0].mlp.down_proj.weight[0, 0] += 1.0
    with pytest.raises(ValueError, match="not the base"):
        hds.load_adapter(other, out)
    assert not any("lora" in n for n, _ in other.named_parameters())                # left as it was
    hds.load_adapter(copy.deepcopy(other), out, check=False)
    # never overwrite what we did not write
    with pytest.raises(FileExistsError):
        res.save_adapter(out)
    res.save_adapter(out, overwrite=True)
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not an HDS adapter folder"):
        res.save_adapter(foreign, overwrite=True)
    assert (foreign / "keep.txt").read_text() == "user data"
    full = hds.unlearn(model, tok, ITEMS[:3], ITEMS[3:], config=hds.baseline_config("ga", hds.HDSConfig(epochs=1)))
    with pytest.raises(ValueError, match="no adapter"):
        full.save_adapter(tmp_path / "full")


def test_merged_change_count_without_merging(tiny):
    model, tok = tiny
    cfg = hds.HDSConfig(lora_r=2, lr=5e-2, epochs=2, batch_size=3)
    res = hds.unlearn(model, tok, ITEMS[:3], ITEMS[3:], hierarchy=HIER, config=cfg, merge=False)
    assert hasattr(res.model, "peft_config")                                       # unmerged
    merged = copy.deepcopy(res.model).merge_and_unload()
    changed = sum(int((p != dict(model.named_parameters())[n]).sum()) for n, p in merged.named_parameters())
    assert res.params["merged_modified"] == changed > 0


def test_lora_budget_counts_what_peft_trains(tiny):
    """Placement and rank reach <= 0.5 % of the tiny model; the same config's share of a 7B Llama is
    computed from the config (meta device), equal to the closed form."""
    from transformers import LlamaConfig

    model, tok = tiny
    for targets, layers, r in (("all-linear", None, 4), (["down_proj", "o_proj"], None, 2),
                               (["down_proj"], [0], 1)):
        cfg = hds.HDSConfig(lora_targets=targets, lora_layers=layers, lora_r=r)
        b = hds.lora_budget(model, cfg)
        wrapped = hds.wrap_lora(copy.deepcopy(model), cfg)
        assert b["lora_params"] == sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
        assert b["total"] == sum(p.numel() for p in model.parameters())
    llama7b = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=32)
    b = hds.lora_budget(llama7b, hds.HDSConfig(lora_targets=["down_proj", "o_proj"], lora_r=2))
    assert b["total"] == 6_738_415_616
    assert b["lora_params"] == 32 * (2 * (4096 + 4096) + 2 * (11008 + 4096)) and b["modules"] == 64
    half = hds.lora_budget(llama7b, hds.HDSConfig(lora_targets=["down_proj", "o_proj"], lora_r=2,
                                                 lora_layers=list(range(16))))
    assert half["lora_params"] * 2 == b["lora_params"]
    with pytest.raises(ValueError, match="out of range"):
        hds.lora_budget(model, hds.HDSConfig(lora_layers=[5]))
    with pytest.raises(ValueError, match="lora_layers must be"):
        hds.HDSConfig(lora_layers=[-1]).validate()


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
    assert rep["config"]["question_weight"] == 0.0 and rep["config"]["question_target"] is None
    assert rep["stopping"]["rule"] == "ForgettingStop"
    # the edit: an unmerged PEFT adapter next to the report
    assert {p.name for p in (out / "adapter").iterdir()} == {"adapter_config.json", "adapter_model.safetensors",
                                                            "steu_hds.json"}
    assert rep["params_modified"]["merged_modified"] >= rep["params_modified"]["modified"] > 0
    out = tmp_path / "run_q"
    assert main(base + ["--teach-tiny", "--question-weight", "2", "--question-target", "6.5", "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["config"]["question_weight"] == 2.0 and rep["config"]["question_target"] == 6.5
    # --question-target auto (the default): from the stop half of the never-seen items only; the stopping
    # rule "until indistinguishable" (default) uses the same half, the figures the other
    out = tmp_path / "run_auto"
    assert main(base + ["--teach-tiny", "--question-weight", "2", "--never-seen-fraction", "0.5", "--lora-layers",
                        "0", "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["halves"] == {"stop": {"forget": 2, "never_seen": 2}, "report": {"forget": 1, "never_seen": 1},
                             "disjoint": True}
    assert rep["question_target"]["n"] == 2 and rep["config"]["question_target"] == rep["question_target"]["value"] > 0
    assert rep["stopping"]["rule"] == "IndistinguishableStop" and rep["stopping"]["n_never_seen"] == 2
    assert rep["config"]["lora_layers"] == [0]
    assert main(base + ["--teach-tiny", "--question-weight", "2", "--out", str(tmp_path / "x")]) == 2   # 1 never-seen
    assert main(base + ["--teach-tiny", "--stop", "indistinguishable", "--out", str(tmp_path / "x")]) == 2
    assert main(base + ["--teach-tiny", "--question-target", "high", "--out", str(tmp_path / "x")]) == 2
    # a model in bf16 with bf16 autocast on the CPU
    out = tmp_path / "run_bf16"
    assert main(base + ["--teach-tiny", "--dtype", "bfloat16", "--bf16", "--device", "cpu", "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["config"]["autocast_dtype"] == "bfloat16" and rep["params_modified"]["modified"] > 0
    assert main(base + ["--teach-tiny", "--device", "tpu", "--out", str(tmp_path / "x")]) == 2
    if not torch.cuda.is_available():
        assert main(base + ["--teach-tiny", "--device", "cuda", "--out", str(tmp_path / "x")]) == 2
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
def pubmedqa_run(pubmedqa_path):
    """Teach a tiny Llama 24 surgical + 72 other PubMedQA questions (>= 90 % answered), then unlearn the
    surgical ones with HDS in fp32 until the forgetting rate reaches 0.8 (checked after every epoch; 24
    never-seen surgical questions are the MIA non-members). Shared by the fp32 and bf16 end-to-end tests.
    Tiny matrices: one intra-op thread is as fast and does not fight other processes for the cores."""
    from steu_ext.data.qa import load_pubmedqa, split_domain, subsample
    from steu_ext.eval.qa import continuation_of, evaluate_qa, prompt_of

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        items = load_pubmedqa(pubmedqa_path)
        f, r = split_domain(items)
        f, retain = subsample(f, None, 0), subsample(r, 72, 0)
        forget, never = f[:24], f[24:48]
        model, tok = tiny_models.tiny_causal_lm([prompt_of(i) + continuation_of(i) for i in items], hidden=64)
        taught = tiny_models.teach(model, tok, forget + retain, check_every=10)
        before = evaluate_qa(model, tok, forget, retain, never)
        hierarchy = load_hierarchy(example_hierarchy_path())
        res = hds.unlearn(model, tok, forget, retain, hierarchy=hierarchy,
                          config=hds.HDSConfig(epochs=60, forget_domains=["surgery"]),
                          monitor=stopping.forgetting_monitor(tok, forget, before["forget_acc"], 0.8))
        after = evaluate_qa(res.model, tok, forget, retain, never, before=before)
        yield dict(model=model, tok=tok, forget=forget, retain=retain, never=never, taught=taught, before=before,
                   hierarchy=hierarchy, res=res, after=after)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_end_to_end_pubmedqa_forgets_surgery_and_beats_ga(pubmedqa_run):
    """HDS (fp32) reaches a forgetting rate of 0.8 with preservation >= 0.9. "Same forgetting": plain GA
    then trains until it reaches the rate HDS achieved; preservation is compared there (GA may overshoot by
    up to one epoch)."""
    from steu_ext.eval.qa import evaluate_qa

    r = pubmedqa_run
    model, tok, forget, retain, never, before = (r[k] for k in ("model", "tok", "forget", "retain", "never",
                                                                  "before"))
    assert r["taught"]["accuracy"] >= 0.9
    res, after = r["res"], r["after"]
    assert after["forgetting_rate"] >= 0.8
    assert after["preservation"] >= 0.9
    assert res.params["percent"] < 5.0 and res.params["modified"] <= res.params["trainable"]

    ga_cfg = hds.baseline_config("ga", hds.HDSConfig(epochs=60, lr=3e-4))
    ga = hds.unlearn(model, tok, forget, retain, config=ga_cfg,
                     monitor=stopping.forgetting_monitor(tok, forget, before["forget_acc"], after["forgetting_rate"]))
    ga_after = evaluate_qa(ga.model, tok, forget, retain, never, before=before)
    assert ga_after["forgetting_rate"] >= after["forgetting_rate"]          # GA reached the same forgetting
    assert after["preservation"] > ga_after["preservation"]


@pytest.mark.slow
def test_end_to_end_pubmedqa_bf16(pubmedqa_run):
    """What users run on GPUs: the taught model loaded in bf16 and trained under bf16 autocast (LoRA
    adapters fp32, merged into the bf16 weights at the end). Same protocol as the fp32 run: HDS still
    reaches a forgetting rate of 0.8 and preserves the other questions about as well as fp32 (measured
    here: both forget 0.826 with preservation 1.04; the bf16 run needs a few epochs fewer or more)."""
    from steu_ext.eval.qa import evaluate_qa

    r = pubmedqa_run
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = copy.deepcopy(r["model"]).to(torch.bfloat16)
        before = evaluate_qa(model, r["tok"], r["forget"], r["retain"], r["never"])
        assert before["forget_acc"] >= 0.9 and before["retain_acc"] >= 0.9     # bf16 rounding kept the knowledge
        cfg = hds.HDSConfig(epochs=60, forget_domains=["surgery"], autocast_dtype="bfloat16")
        res = hds.unlearn(model, r["tok"], r["forget"], r["retain"], hierarchy=r["hierarchy"], config=cfg,
                          monitor=stopping.forgetting_monitor(r["tok"], r["forget"], before["forget_acc"], 0.8))
        after = evaluate_qa(res.model, r["tok"], r["forget"], r["retain"], r["never"], before=before)
    finally:
        torch.set_num_threads(threads)
    assert next(res.model.parameters()).dtype == torch.bfloat16
    assert after["forgetting_rate"] >= 0.8                          # measured on the merged bf16 model
    assert after["preservation"] >= 0.9
    assert after["preservation"] >= r["after"]["preservation"] - 0.05
    assert res.params["percent"] < 5.0


@pytest.mark.slow
def test_end_to_end_pubmedqa_question_weight_moves_mia_toward_chance(pubmedqa_run, pubmedqa_path):
    """The loss-based MIA reads question and answer; plain HDS leaves the memorised questions' loss low,
    so its AUC stays ~1. With ``question_weight=2`` and ``question_target`` = the median question NLL
    of the taught model on 48 retain-domain questions it was never taught (not the MIA's never-seen
    surgical items), the forget items' loss comes close to the never-seen items' and the AUC moves
    toward 0.5, while HDS still reaches a forgetting rate of 0.8 with preservation >= 0.9.

    Measured here (fp32): question_weight 0: forgetting 0.826, preservation 1.04, MIA AUC 1.000 (member /
    never-seen loss 3.31 / 6.41), 41 epochs; question_weight 2 (target 7.08): forgetting 0.870,
    preservation 1.01, MIA AUC 0.595 (6.16 / 6.49), 24 epochs. Larger weights (4-16) got the AUC to
    0.51-0.75 too but stalled the forgetting rate at 0.13-0.61 within 60 epochs (the model then answers
    the forget items about as it answers never-seen ones: 0.54 accuracy before unlearning)."""
    from steu_ext.data.qa import load_pubmedqa, split_domain, subsample
    from steu_ext.eval.qa import evaluate_qa

    r = pubmedqa_run
    model, tok, forget, retain, never, before = (r[k] for k in ("model", "tok", "forget", "retain", "never",
                                                                  "before"))
    _, other = split_domain(load_pubmedqa(pubmedqa_path))
    shuffled = subsample(other, None, 0)
    assert {i.id for i in shuffled[:72]} == {i.id for i in retain}          # the fixture's retain items ...
    held_out = shuffled[72:120]                                              # ... and the next 48, never taught
    assert not {i.id for i in held_out} & {i.id for i in forget + retain + never}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        target = float(hds.question_nll(model, tok, held_out).median())
        cfg = hds.HDSConfig(epochs=60, forget_domains=["surgery"], question_weight=2.0, question_target=target)
        res = hds.unlearn(model, tok, forget, retain, hierarchy=r["hierarchy"], config=cfg,
                          monitor=stopping.forgetting_monitor(tok, forget, before["forget_acc"], 0.8))
        after = evaluate_qa(res.model, tok, forget, retain, never, before=before)
    finally:
        torch.set_num_threads(threads)
    base = r["after"]                                                        # question_weight 0
    assert 6.0 < target < 8.0 and res.config["question_weight"] == 2.0
    assert base["mia_auc"] >= 0.95
    assert after["forgetting_rate"] >= 0.8 and after["preservation"] >= 0.9
    assert abs(after["mia_auc"] - 0.5) <= abs(base["mia_auc"] - 0.5) - 0.25    # clearly toward chance ...
    assert after["mia_auc"] >= 0.4                                             # ... without overshooting
    gap, base_gap = (after["mia_nonmember_loss"] - after["mia_member_loss"],
                     base["mia_nonmember_loss"] - base["mia_member_loss"])
    assert 0 <= gap < 0.5 * base_gap
