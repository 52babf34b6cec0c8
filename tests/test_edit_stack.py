"""A stack of edits on one base model (steu_ext.methods.edit_stack, `steu edits`): three consecutive STEU
edits on the bundled medical abstracts, reverted latest-first and out of order where allowed, every step
bit-exact; out-of-order reverts that would clobber a later edit are refused with the reason."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from steu_ext.cli import EXIT_BAD_INPUT, main
from steu_ext.data import load_medical_abstracts, stratified_split
from steu_ext.eval.metrics import snapshot
from steu_ext.experiments.tiny_models import tiny_bert
from steu_ext.methods.edit_stack import STACK_DIR, STACK_FILE, EditStack
from steu_ext.methods.finetune import train_classifier
from steu_ext.methods.steu import STEUConfig, label_matrix, unlearn
from steu_ext.modeling.encoders import Encoded

EMB = "bert.embeddings.word_embeddings.weight"
HEAD = ("classifier.weight", "classifier.bias")


def _same(model, snap, names=None) -> bool:
    return all(torch.equal(p, snap[n]) for n, p in model.named_parameters() if names is None or n in names)


@pytest.fixture(scope="module")
def three_edits(medical_abstracts_root):
    """A tiny BERT fine-tuned on 200 bundled abstracts, and three successive STEU edits, each made on the
    model as the previous ones left it: rows + head (class 0), rows only (class 1), head only (class 2)."""
    data = load_medical_abstracts(medical_abstracts_root)
    data = data.subset(stratified_split(data.labels, 200 / len(data), seed=0)[1])
    names = data.label_names
    model, tok = tiny_bert(data.text, len(names), True, vocab_size=600)
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {n: i for i, n in enumerate(names)}
    Y = label_matrix(data.labels, len(names))
    enc = Encoded(tok, data.text, Y, max_length=32)
    torch.manual_seed(0)
    train_classifier(model, enc, range(len(data)), mode="full", epochs=2, lr=1e-3, seed=0, prior_bias=True)
    base = copy.deepcopy(model)
    configs = [STEUConfig(k=16, epochs=1, max_length=32, objective="paper"),
               STEUConfig(k=16, epochs=1, max_length=32, objective="paper", train_head=False),
               STEUConfig(k=0, epochs=1, max_length=32, objective="paper")]
    edits, states = [], [snapshot(model)]
    for target, cfg in enumerate(configs):
        res = unlearn(model, tok, data.text, Y, target, config=cfg, label_names=names, encoded=enc)
        edits.append(res.edit)
        states.append(snapshot(model))
    assert edits[1].new_head == {} and edits[2].row_ids.numel() == 0 and edits[0].row_ids.numel() > 0
    return dict(base=base, tok=tok, edits=edits, states=states, names=names)


def test_three_edits_push_and_revert_bit_exact(three_edits, tmp_path):
    S0, S1, S2, S3 = three_edits["states"]
    e1, e2, e3 = three_edits["edits"]
    model = copy.deepcopy(three_edits["base"])
    stack = EditStack()
    with pytest.raises(ValueError, match="no edit is applied"):
        stack.revert(model)
    with pytest.raises(ValueError, match="not the ones this edit expects"):
        stack.push(model, e3)                        # made on the head as edit 1 left it, not on the base
    assert _same(model, S0) and not stack.entries
    for e, S in ((e1, S1), (e2, S2), (e3, S3)):
        stack.push(model, e)
        assert _same(model, S)
    assert [x.id for x in stack.entries] == [1, 2, 3] and stack.verify(model) == []

    # edit 1 cannot go while edit 3 (head) is applied; nothing is written
    assert any("later edit 3" in w and "classifier.weight" in w for w in stack.conflicts(1))
    with pytest.raises(ValueError, match="cannot revert edit 1 .*later edit 3"):
        stack.revert(model, 1)
    assert _same(model, S3) and len(stack.entries) == 3

    # persisted and reloaded (safetensors + JSON) in between
    stack.save(tmp_path)
    doc = json.loads((tmp_path / STACK_DIR / STACK_FILE).read_text())
    assert [d["id"] for d in doc["edits"]] == [1, 2, 3] and doc["edits"][1]["head"] == {}
    assert sorted(p.name for p in (tmp_path / STACK_DIR).iterdir()) == [
        "edit-0001.safetensors", "edit-0002.safetensors", "edit-0003.safetensors", STACK_FILE]
    stack = EditStack.load(tmp_path)

    # edit 2 (rows only) out of order: its rows get their values from before it back, the head stays edit 3's
    assert stack.conflicts(2) == []
    stack.revert(model, 2)
    assert _same(model, S1, {EMB}) and _same(model, S3, set(HEAD))
    assert _same(model, S0, {n for n in S0 if n != EMB and n not in HEAD})
    assert stack.verify(model) == []
    # then the latest (edit 3): exactly the model after edit 1; then edit 1: exactly the base
    stack.revert(model)
    assert _same(model, S1)
    stack.revert(model, 1)
    assert _same(model, S0) and stack.entries == []
    stack.save(tmp_path)
    assert sorted(p.name for p in (tmp_path / STACK_DIR).iterdir()) == [STACK_FILE]


def test_stack_detects_outside_changes_and_damage(three_edits, tmp_path):
    e1 = three_edits["edits"][0]
    model = copy.deepcopy(three_edits["base"])
    stack = EditStack()
    stack.push(model, e1)
    with torch.no_grad():
        model.classifier.bias[0] += 1.0
    assert any("head classifier.bias" in p for p in stack.verify(model))
    with pytest.raises(ValueError, match="changed outside the stack"):
        stack.revert(model)
    stack.save(tmp_path)
    f = tmp_path / STACK_DIR / "edit-0001.safetensors"
    f.write_bytes(f.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ValueError, match="checksum"):
        EditStack.load(tmp_path)


def test_steu_edits_cli(three_edits, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    S0, S1, S2, S3 = three_edits["states"]
    base_dir = tmp_path / "base"
    three_edits["base"].save_pretrained(base_dir)
    three_edits["tok"].save_pretrained(base_dir)
    paths = []
    for i, e in enumerate(three_edits["edits"], 1):
        e.save(tmp_path / f"e{i}.safetensors")
        paths.append(str(tmp_path / f"e{i}.safetensors"))

    def weights(folder):
        return AutoModelForSequenceClassification.from_pretrained(folder)

    src = base_dir
    for i, (p, S) in enumerate(zip(paths, (S1, S2, S3)), 1):
        out = tmp_path / f"m{i}"
        assert main(["edits", "apply", "--model", str(src), "--edit", p, "--name", f"request {i}",
                     "--out", str(out)]) == 0
        assert _same(weights(out), S)
        src = out
    assert (tmp_path / "m3" / STACK_DIR / STACK_FILE).is_file()
    capsys.readouterr()
    assert main(["edits", "list", "--model", str(tmp_path / "m3")]) == 0
    out = capsys.readouterr().out
    assert "request 1" in out and "weights match the stack" in out and "edit 2: revertible now" in out
    # refused: edit 1 while edit 3 is applied (exit 2, nothing written)
    rc = main(["edits", "revert", "--model", str(tmp_path / "m3"), "--id", "1", "--out", str(tmp_path / "bad")])
    assert rc == EXIT_BAD_INPUT and "later edit 3" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    # edit 2 out of order, then the rest latest-first, in place: back to the base bit for bit
    m3 = str(tmp_path / "m3")
    assert main(["edits", "revert", "--model", m3, "--id", "2", "--out", m3]) == EXIT_BAD_INPUT  # no --overwrite
    assert main(["edits", "revert", "--model", m3, "--id", "2", "--out", m3, "--overwrite"]) == 0
    assert main(["edits", "revert", "--model", m3, "--out", m3, "--overwrite"]) == 0
    assert _same(weights(m3), S1)
    assert main(["edits", "revert", "--model", m3, "--out", m3, "--overwrite"]) == 0
    assert _same(weights(m3), S0)
    assert json.loads((tmp_path / "m3" / STACK_DIR / STACK_FILE).read_text())["edits"] == []
