"""The gold-standard protocol on a CI-sized subset: disjoint subsets and halves, the gold standard taught
everything but the forget items on the same schedule, no protocol item's context in the pretraining text,
and the "until indistinguishable" stopping rule using the stop half only while the figures come from the
report half."""
from __future__ import annotations

import pytest
import torch

from steu_ext.eval import stopping
from steu_ext.eval.qa import accuracy
from steu_ext.experiments import hds_protocol as hp
from steu_ext.experiments import tiny_models
from steu_ext.methods import hds


@pytest.fixture(scope="module")
def small(pubmedqa_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield hp.build_protocol(pubmedqa_path, n_forget=8, n_never=8, n_retain=16, hidden=32, layers=1,
                                pretrain_epochs=1, pretrain_abstracts=12, n_heldout_texts=4, teach_epochs=30,
                                seed=0, log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)


def test_gold_standard_construction(small):
    p = small
    ids = {k: {i.id for i in getattr(p, k)} for k in ("forget_stop", "forget_report", "never_stop", "never_report",
                                                       "retain")}
    assert [len(v) for v in ids.values()] == [4, 4, 4, 4, 16]
    keys = list(ids)
    assert all(not ids[a] & ids[b] for x, a in enumerate(keys) for b in keys[x + 1:])   # pairwise disjoint
    assert all(i.forget for i in p.forget + p.never) and not any(i.forget for i in p.retain)
    # same schedule: the gold standard ran exactly the epochs the original needed, on the retain items only
    assert p.info["gold_taught"]["epochs"] == p.info["taught"]["epochs"]
    assert p.info["pretrain"]["tokens"] > 0
    # the gold standard never saw the forget items: they are as unfamiliar to it as the never-seen ones,
    # while the original model learned them
    from steu_ext.eval.qa import sequence_nll

    g_f = float(sequence_nll(p.gold, p.tokenizer, p.forget).mean())
    o_f = float(sequence_nll(p.model, p.tokenizer, p.forget).mean())
    g_r = float(sequence_nll(p.gold, p.tokenizer, p.retain).mean())
    assert o_f < g_f and g_r < g_f
    figs = p.figures(p.gold)
    assert set(figs) >= {"forget_acc", "retain_acc", "mia_auc", "forget_nll", "heldout_text_nll"}
    d = hp.gold_distance(p.figures(p.model), figs)
    assert d["forget_nll_gap"] < 0 and d["forget_nll_item_mad"] > 0


def test_pretraining_text_holds_no_protocol_item(small, pubmedqa_path, monkeypatch):
    """The contexts of the forget, never-seen and retain items are not in the medical-language stage."""
    seen = {}

    def spy(model, tok, texts, **kw):
        seen["texts"] = list(texts)
        return {"tokens": 1, "blocks": 0, "epochs": 0, "loss": 0.0, "seconds": 0.0}

    monkeypatch.setattr(hp, "pretrain", spy)
    monkeypatch.setattr(tiny_models, "teach", lambda *a, **k: {"accuracy": 1.0, "epochs": 1, "seconds": 0.0})
    p = hp.build_protocol(pubmedqa_path, n_forget=8, n_never=8, n_retain=16, hidden=16, layers=1,
                          pretrain_abstracts=5, n_heldout_texts=3, seed=0, log=lambda *_: None)
    texts = set(seen["texts"])
    assert not any(i.context in texts for i in p.forget + p.never + p.retain)
    assert not set(p.heldout_texts) & texts and len(seen["texts"]) > 5


def test_stopping_rule_uses_the_stop_half(small):
    p = small
    level = accuracy(p.gold, p.tokenizer, p.forget_stop)
    rule = stopping.IndistinguishableStop(p.tokenizer, p.forget_stop, p.never_stop, level=level)
    res = hds.unlearn(p.model, p.tokenizer, p.forget, p.retain, hierarchy=p.hierarchy, monitor=rule,
                      config=hds.HDSConfig(epochs=3, lora_r=2, lora_targets=["o_proj", "down_proj"],
                                           forget_domains=["surgery"]))
    st = res.stopping
    assert st["n_forget"] == 4 and st["n_never_seen"] == 4 and st["level"] == level
    assert len(st["trace"]) == res.epochs and st["rule"] == "IndistinguishableStop"
    t = st["trace"][-1] if not st["restored_best"] else next(x for x in st["trace"] if x["epoch"] == st["best_epoch"])
    from steu_ext.eval.qa import mia_auc

    model = res.model
    assert t["mia_auc"] == pytest.approx(mia_auc(model, p.tokenizer, p.forget_stop, p.never_stop)["auc"])
    assert st["met"] == any(x["met"] for x in st["trace"])
    assert res.params["trainable"] / res.params["total"] <= 0.005 * 10   # the budget option works on this model


@pytest.mark.slow
def test_readme_hds_block_runs_as_written(tmp_path, monkeypatch, capsys):
    """The README's HDS Python block (issue #14 item 6: it had no model) runs as written."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## HDS: unlearning a knowledge domain"):]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "hds.unlearn(" in block and "tiny_causal_lm" in block
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(block, "README.md", "exec"), {})
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "hds_adapter" / "adapter_model.safetensors").is_file()
    assert capsys.readouterr().out.strip()
