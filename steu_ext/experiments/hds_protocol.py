"""The offline HDS protocol with a gold standard: what "never saw the forget items" looks like.

:func:`build_protocol`:

1. the forget domain of PubMedQA from the items' own ``MESHES`` through a concept hierarchy
   (:func:`steu_ext.data.qa.load_pubmedqa` with ``hierarchy``/``forget_domains``);
2. seeded, disjoint subsets: forget items (taught, then unlearned), never-seen items of the forget domain
   (never taught: the MIA's non-members), retain items (taught, kept). Forget and never-seen items are
   each split in two: the **stop** half, which a stopping rule and the question-target estimate may use,
   and the **report** half, on which the figures are reported;
3. a tiny random Llama (:func:`steu_ext.experiments.tiny_models.tiny_causal_lm`) that first learns medical language
   (``pretrain_epochs`` passes over the bundled medical abstracts and the PubMedQA contexts of items in
   no subset; a few abstracts are held out to measure that competence), then is taught forget + retain
   items until it answers them (:func:`steu_ext.experiments.tiny_models.teach`);
4. the **gold standard**: the same pretrained model (same seed), taught the retain items only, for the
   same number of epochs with the same learning rate and batch size. Its accuracy and per-token NLL on
   the forget items are the "never seen" level every method is measured against.

Everything is CPU-sized (hidden 64, 2 layers: ~0.3 M parameters).
"""
from __future__ import annotations

import copy
import csv
import random
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..data.concepts import ConceptHierarchy, example_hierarchy_path, load_hierarchy
from ..data.qa import QAItem, continuation_of, load_pubmedqa, prompt_of, split_domain
from ..eval.qa import evaluate_qa, sequence_nll
from ..modeling.causal_lm import token_logprobs
from . import tiny_models

__all__ = ["Protocol", "build_protocol", "pretrain", "text_nll", "gold_distance", "medical_texts"]


@dataclass
class Protocol:
    model: nn.Module                  # pretrained, then taught forget + retain
    gold: nn.Module                   # pretrained, then taught retain only (same schedule)
    tokenizer: Any
    hierarchy: ConceptHierarchy
    forget_stop: List[QAItem]
    forget_report: List[QAItem]
    never_stop: List[QAItem]
    never_report: List[QAItem]
    retain: List[QAItem]
    heldout_texts: List[str]          # medical text in no training set (language competence)
    info: Dict[str, Any] = field(default_factory=dict)

    @property
    def forget(self) -> List[QAItem]:
        return self.forget_stop + self.forget_report

    @property
    def never(self) -> List[QAItem]:
        return self.never_stop + self.never_report

    def figures(self, model: nn.Module, *, max_length: int = 64) -> Dict[str, Any]:
        """A model's figures on the report items (forget accuracy, retain accuracy, MIA forget vs
        never-seen, the forget items' mean NLL per token) and its held-out medical-text NLL."""
        f = evaluate_qa(model, self.tokenizer, self.forget_report, self.retain, self.never_report,
                        max_length=max_length)
        nll = sequence_nll(model, self.tokenizer, self.forget_report, max_length=max_length)
        return {"forget_acc": f["forget_acc"], "retain_acc": f["retain_acc"], "mia_auc": f["mia_auc"],
                "mia_member_loss": f["mia_member_loss"], "mia_nonmember_loss": f["mia_nonmember_loss"],
                "forget_nll": float(nll.mean()), "forget_nll_items": nll.tolist(),
                "heldout_text_nll": text_nll(model, self.tokenizer, self.heldout_texts, max_length=128)}


def medical_texts(data_root=None) -> List[str]:
    """The bundled medical abstracts (2,888 PubMed abstracts), as plain texts."""
    from .. import datasets

    root = datasets.path("medical_abstracts") if data_root is None else data_root
    with open(f"{root}/medical_tc_test.csv", newline="", encoding="utf-8") as f:
        return [r["medical_abstract"] for r in csv.DictReader(f) if r.get("medical_abstract")]


def pretrain(model: nn.Module, tokenizer, texts: Sequence[str], *, epochs: int = 1, lr: float = 3e-3,
             batch_size: int = 32, block: int = 128, seed: int = 0) -> Dict[str, Any]:
    """Causal-LM training (in place) on ``texts`` cut into blocks of ``block`` tokens: the tiny model's
    medical language. Returns ``{"tokens", "blocks", "epochs", "loss", "seconds"}``."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    bos = tokenizer.cls_token_id
    ids: List[int] = []
    for t in texts:
        ids += tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
    n = (len(ids) // (block - 1))
    blocks = torch.tensor(ids[:n * (block - 1)]).view(n, block - 1)
    blocks = torch.cat([torch.full((n, 1), bos), blocks], 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    device = next(model.parameters()).device
    loss = float("nan")
    model.train()
    for _ in range(epochs):
        order = list(range(n))
        rng.shuffle(order)
        for s in range(0, n, batch_size):
            b = blocks[order[s:s + batch_size]].to(device)
            lp = token_logprobs(model, b, torch.ones_like(b))
            step = -lp.mean()
            opt.zero_grad(set_to_none=True)
            step.backward()
            opt.step()
            loss = float(step.detach())
    model.eval()
    return {"tokens": len(ids), "blocks": n, "epochs": epochs, "loss": loss, "seconds": time.perf_counter() - t0}


@torch.no_grad()
def text_nll(model: nn.Module, tokenizer, texts: Sequence[str], *, max_length: int = 128) -> float:
    """Mean NLL per token of ``texts`` (each cut to ``max_length`` tokens)."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    tot, cnt = 0.0, 0
    for t in texts:
        ids = tokenizer(t, truncation=True, max_length=max_length, return_tensors="pt")["input_ids"].to(device)
        lp = token_logprobs(model, ids, torch.ones_like(ids))
        tot -= float(lp.sum())
        cnt += lp.numel()
    model.train(was)
    return tot / max(cnt, 1)


def gold_distance(figs: Dict[str, Any], gold: Dict[str, Any]) -> Dict[str, float]:
    """How far a model's report figures are from the gold standard's: forget accuracy difference,
    forget NLL difference (mean per token) and mean absolute per-item NLL difference."""
    a, b = figs["forget_nll_items"], gold["forget_nll_items"]
    return {"forget_acc_gap": figs["forget_acc"] - gold["forget_acc"],
            "forget_nll_gap": figs["forget_nll"] - gold["forget_nll"],
            "forget_nll_item_mad": sum(abs(x - y) for x, y in zip(a, b)) / max(len(a), 1)}


def build_protocol(data, *, n_forget: int = 80, n_never: int = 80, n_retain: int = 240,
                   stop_fraction: float = 0.5, seed: int = 0, hidden: int = 64, layers: int = 2,
                   pretrain_epochs: int = 1, pretrain_abstracts: Optional[int] = None,
                   pretrain_contexts: Optional[int] = None, n_heldout_texts: int = 60,
                   hierarchy: Optional[ConceptHierarchy] = None, forget_domains: Sequence[str] = ("surgery",),
                   max_length: int = 64, teach_epochs: int = 200, log=print) -> Protocol:
    """Build the protocol (see the module docstring). ``pretrain_epochs=0`` skips the medical-language
    stage; ``pretrain_abstracts`` / ``pretrain_contexts`` cap the abstracts and contexts used (all when None)."""
    if not 0 < stop_fraction < 1:
        raise ValueError("stop_fraction must be in (0, 1)")
    t0 = time.perf_counter()
    hierarchy = hierarchy if hierarchy is not None else load_hierarchy(example_hierarchy_path())
    items = load_pubmedqa(data, hierarchy=hierarchy, forget_domains=list(forget_domains))
    f, r = split_domain(items)
    rng = random.Random(seed)
    rng.shuffle(f)
    rng.shuffle(r)
    if n_forget + n_never > len(f) or n_retain > len(r):
        raise ValueError(f"the forget domain has {len(f)} items and the rest {len(r)}: cannot take {n_forget} + "
                         f"{n_never} and {n_retain}")
    forget, never, retain = f[:n_forget], f[n_forget:n_forget + n_never], r[:n_retain]
    ks, kn = int(round(stop_fraction * n_forget)), int(round(stop_fraction * n_never))
    if not (0 < ks < n_forget and 0 < kn < n_never):
        raise ValueError("each of the stop and report halves needs at least one forget and one never-seen item")
    used = {i.id for i in forget + never + retain}
    abstracts = medical_texts()
    random.Random(seed + 1).shuffle(abstracts)
    heldout, abstracts = abstracts[:n_heldout_texts], abstracts[n_heldout_texts:]
    if pretrain_abstracts is not None:
        abstracts = abstracts[:pretrain_abstracts]
    contexts = [i.context for i in items if i.id not in used and i.context]
    if pretrain_contexts is not None:
        contexts = contexts[:pretrain_contexts]
    corpus = abstracts + contexts if pretrain_epochs > 0 else []
    qa_texts = [prompt_of(i) + continuation_of(i) for i in items]
    model, tok = tiny_models.tiny_causal_lm(qa_texts + corpus, seed=seed, hidden=hidden, layers=layers)
    pre = None
    if pretrain_epochs > 0:
        pre = pretrain(model, tok, corpus, epochs=pretrain_epochs, seed=seed)
        log(f"pretrained on {len(abstracts)} abstracts + {len(contexts)} contexts: {pre}")
    gold = copy.deepcopy(model)
    taught = tiny_models.teach(model, tok, forget + retain, epochs=teach_epochs, max_length=max_length, seed=seed)
    log(f"taught forget + retain: {taught}")
    gold_taught = tiny_models.teach(gold, tok, retain, epochs=taught["epochs"], target_acc=None, max_length=max_length,
                            seed=seed)
    log(f"gold standard (retain only, {taught['epochs']} epochs): {gold_taught}")
    p = Protocol(model, gold, tok, hierarchy, forget[:ks], forget[ks:], never[:kn], never[kn:], retain, heldout)
    p.info = {"n_forget_domain": len(f), "n_other": len(r), "n_items": len(items), "seed": seed,
              "vocab": len(tok), "params_total": sum(q.numel() for q in model.parameters()),
              "model": f"LlamaForCausalLM hidden {hidden}, {layers} layers, deterministic WordPiece vocab {len(tok)}",
              "pretrain": pre, "pretrain_texts": {"abstracts": len(abstracts), "contexts": len(contexts)},
              "taught": taught, "gold_taught": gold_taught, "forget_domains": list(forget_domains),
              "sizes": {"forget_stop": ks, "forget_report": n_forget - ks, "never_stop": kn,
                        "never_report": n_never - kn, "retain": len(retain), "heldout_texts": len(heldout)},
              "seconds": time.perf_counter() - t0}
    return p
