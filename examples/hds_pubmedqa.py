"""HDS on PubMedQA, offline: unlearn surgical knowledge from a causal LM while keeping the rest.

The bundled PubMedQA labelled set (1,000 yes/no/maybe questions with MeSH headings) is split with the
bundled surgery-vs-general concept hierarchy into a forget domain (surgery) and a retain domain. A small
random Llama is first taught the QA pairs (so it "knows" them; a real medical LLM would already), then HDS
unlearns the forget domain with concept-weighted token losses, a Fisher-weighted gradient projection and
LoRA adapters. Reports accuracy on both domains and the membership-inference AUC against held-out
("never seen") surgical items, and writes the edit as a PEFT adapter.

    python examples/hds_pubmedqa.py           # a few minutes on a CPU
    python examples/hds_pubmedqa.py --ci      # CI-sized, seconds

To use your own model: ``AutoModelForCausalLM.from_pretrained(...)`` in place of steps 2-3.
"""
from __future__ import annotations

import argparse
import os

import torch

from steu_ext import datasets
from steu_ext.data.concepts import example_hierarchy_path, load_hierarchy
from steu_ext.data.qa import load_pubmedqa, split_domain, subsample
from steu_ext.eval.qa import continuation_of, evaluate_qa, prompt_of
from steu_ext.experiments.tiny_models import teach, tiny_causal_lm
from steu_ext.methods import hds


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ci", action="store_true", help="tiny sizes (well under a minute on a CPU)")
    ap.add_argument("--out", default="example_hds", help="folder for the adapter")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    n_forget, n_never, n_retain, teach_epochs, epochs, hidden = ((12, 6, 24, 200, 10, 32) if a.ci else
                                                                 (60, 20, 120, 200, 10, 64))
    max_length = 48 if a.ci else 64

    # 1. the forget domain: items whose own MeSH headings name a level 3-4 "surgery" concept
    hierarchy = load_hierarchy(example_hierarchy_path())
    items = load_pubmedqa(datasets.path("pubmedqa"), hierarchy=hierarchy, forget_domains=["surgery"])
    forget_all, retain = split_domain(items)
    forget_all = subsample(forget_all, n_forget + n_never, seed=0)
    forget, never = forget_all[:n_forget], forget_all[n_forget:]   # never: held out for the MIA
    retain = subsample(retain, n_retain, seed=0)
    print(f"{len(items)} PubMedQA items: unlearning {len(forget)} surgical ones ({len(never)} held out), "
          f"keeping {len(retain)} others")

    # 2-3. a model that knows the QA pairs: a small random Llama taught them (fully offline)
    model, tok = tiny_causal_lm([prompt_of(i) + continuation_of(i) for i in items], seed=0, hidden=hidden,
                                layers=1 if a.ci else 2)
    taught = teach(model, tok, forget + retain, epochs=teach_epochs, max_length=max_length, seed=0)
    print(f"taught: accuracy {taught['accuracy']:.3f} after {taught['epochs']} epochs")

    # 4. HDS (LoRA adapters; the base model is not modified) and the figures before / after
    cfg = hds.HDSConfig(epochs=epochs, lora_r=2 if a.ci else 4, max_length=max_length,
                        forget_domains=["surgery"], seed=0)
    before = evaluate_qa(model, tok, forget, retain, never, max_length=max_length)
    res = hds.unlearn(model, tok, forget, retain, hierarchy=hierarchy, config=cfg)
    after = evaluate_qa(res.model, tok, forget, retain, never, before=before, max_length=max_length)
    print(f"\n{'':24} {'before':>8} {'after':>8}")
    for key, name in (("forget_acc", "forget accuracy"), ("retain_acc", "retain accuracy"),
                      ("mia_auc", "MIA AUC (0.5 = ideal)")):
        print(f"{name:24} {before[key]:8.3f} {after[key]:8.3f}")
    print(f"forgetting rate {after['forgetting_rate']:.3f}, preservation {after['preservation']:.3f}; "
          f"{res.params['modified']:,} base-equivalent elements changed in {res.epochs} epochs")

    # 5. the edit: an unmerged PEFT adapter (peft.PeftModel.from_pretrained(base, folder) loads it)
    path = res.save_adapter(os.path.join(a.out, "adapter"), overwrite=True)
    print(f"adapter: {path}")
    return {"before": before, "after": after, "adapter": path, "taught": taught}


if __name__ == "__main__":
    main()
