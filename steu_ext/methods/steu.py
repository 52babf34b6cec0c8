"""STEU — Sparse Token Embedding Unlearning (class-level unlearning of encoder classifiers).

Count document-level token x class statistics over the training corpus with the model's own tokenizer,
score tokens for the target class (fw-PMI by default), select k, then train *only* those word-embedding
rows plus the classifier head with

    L = L_forget(forget batch) + lambda * L_utility(retain batch) [+ mu * L_repr(forget batch)]

multi-label (sigmoid) heads: L_forget = BCE(sigmoid(z_t), 0); L_utility = mean over c != t of
BCE(sigmoid(z_c), sigmoid(z0_c)) against the frozen original model z0. Single-label (softmax) heads:
L_forget = -log(1 - p_t); L_utility = KL(softmax(z0 without t) || softmax(z without t)).
An epoch is one pass over the forget documents; retain batches cycle alongside.

``objective="paper"`` is exactly that (the paper's setting). It is *behavioural*: the head switches the
class off within a few steps, after which the forget loss gives the embedding rows almost no gradient, so
the encoder's representation still carries the class and a linear probe refitted on the edited model reads
it back (see ``benchmarks/results/scorecard_medical_abstracts.md``). The default
``objective="representation"`` adds a representation-level forget term. Before training, a logistic
regression is fitted on the *original* model's frozen features of the training documents (mean-pooled last
layer and [CLS]) for "carries the target class"; its weight vector w_f is the direction along which the
representation separates the class. Then, for each forget document and each feature f,

    L_repr = relu(w_f . h_f(x) + b_f - a_f) ** 2,   a_f = mean over retain documents of the original's w_f . h_f + b_f

pushes the forget documents' features along the class direction back to where the retain documents sit, and
no further: the edited rows must make a forget document look like an ordinary other-class document to the
adversary's own tool, while the pretrained knowledge a never-trained model would also have is left alone
(over-removal is itself a tell). The same k rows + head change; nothing else.

The steps before training are reusable: :func:`prepare` (validate, tokenize, split forget/retain, count,
score, select rows, teacher logits z0) and :func:`steu_param_groups` (freeze all but the selected rows
and the head; RowSparseAdam groups). ``steu_ext.integrations.hf.STEUTrainer`` runs the same method in
the Hugging Face ``Trainer`` loop.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .._progress import show_progress
from ..modeling.encoders import (
    Encoded,
    embedding_param_name,
    find_head,
    is_multi_label,
    last_hidden,
    pooled_features,
    predict_logits,
)
from ..modeling.labels import label_matrix, resolve_target  # noqa: F401  (also importable from here)
from ..modeling.params import snapshot
from ..ops.doc_counts import PMICounter
from ..ops.pmi import MEASURES, select_top_k
from ..optim import RowSparseAdam
from .edit import STEUEdit

log = logging.getLogger("steu_ext")


OBJECTIVES = ("representation", "paper")


@dataclass
class STEUConfig:
    k: int = 256                      # embedding rows to edit
    measure: str = "fwpmi"            # token score: fwpmi | pmi | ppmi | npmi
    alpha: float = 0.0                # add-alpha smoothing of the PMI estimates
    min_count: int = 1                # ignore tokens in fewer documents than this
    epochs: int = 5
    lr: float = 1e-3                  # embedding rows
    head_lr: float = 1e-2             # classifier head
    weight_decay: float = 0.0
    utility_weight: float = 1.0       # lambda
    batch_size: int = 16              # forget and retain batch size
    max_length: int = 128
    train_embeddings: bool = True     # ablation switches
    train_head: bool = True
    head_modules: Optional[List[str]] = None
    multi_label: Optional[bool] = None  # None: from model.config.problem_type
    seed: int = 0
    objective: str = "representation"  # "representation" (default) | "paper" (behavioural, as published)
    repr_weight: float = 1.0          # mu: weight of the representation-level forget term
    repr_features: Tuple[str, ...] = ("mean", "cls")  # pooled last-layer features the term acts on
    repr_C: float = 1.0               # inverse L2 strength of the logistic regression giving the direction
    repr_refit_every: int = 0         # refit the directions on the edited model every N epochs (0: never)

    def validate(self, vocab_size: int) -> None:
        if self.measure not in MEASURES:
            raise ValueError(f"unknown measure {self.measure!r}; expected one of {MEASURES}")
        if not isinstance(self.k, int) or self.k < 0:
            raise ValueError(f"k must be an int >= 0, got {self.k!r}")
        if self.k > vocab_size:
            raise ValueError(f"k={self.k} is larger than the vocabulary ({vocab_size} tokens)")
        for name in ("epochs", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not (self.train_embeddings or self.train_head):
            raise ValueError("nothing to train: train_embeddings and train_head are both off")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; expected one of {OBJECTIVES}")
        if self.objective == "representation":
            if not self.repr_weight >= 0 or not self.repr_C > 0:
                raise ValueError("repr_weight must be >= 0 and repr_C > 0")
            if not isinstance(self.repr_refit_every, int) or self.repr_refit_every < 0:
                raise ValueError(f"repr_refit_every must be an int >= 0, got {self.repr_refit_every!r}")
            bad = [f for f in self.repr_features if f not in ("mean", "cls")]
            if bad or not self.repr_features:
                raise ValueError(f"repr_features must be a non-empty subset of ('mean', 'cls'), got "
                                 f"{self.repr_features!r}")


@dataclass
class STEUResult:
    model: nn.Module
    edit: STEUEdit
    selected_tokens: torch.Tensor     # int64 [k'] selected row ids, best first
    token_scores: torch.Tensor        # float64 [k'] their scores
    history: List[Dict[str, float]] = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=dict)


def split_forget_retain(data: Encoded, target: int, names: Sequence[str]):
    """Indices of the documents carrying ``target`` (forget set) and of the rest (retain set)."""
    forget = [i for i in range(len(data)) if data.labels[i, target] > 0]
    retain = [i for i in range(len(data)) if data.labels[i, target] == 0]
    if not forget:
        raise ValueError(f"no training document carries the target class {names[target]!r}")
    if not retain:
        raise ValueError("every training document carries the target class: nothing to retain")
    return forget, retain

def count_tokens(data: Encoded, num_tokens: int, num_classes: int, batch_size: int = 512) -> PMICounter:
    """Document-level token x class counts over the tokenized corpus."""
    counter = PMICounter(num_tokens, num_classes)
    idx = list(range(len(data)))
    for part, b in data.batches(idx, batch_size):
        counter.update(b["input_ids"], data.labels[part].to(torch.uint8), attention_mask=b["attention_mask"])
    return counter


def _precomputed(counts: PMICounter, V: int, C: int) -> PMICounter:
    """Check precomputed counts against the model (C classes, V embedding rows); zero-pad the vocabulary
    when the embedding table has more rows than the tokenizer has tokens (ids beyond it never occur)."""
    if not isinstance(counts, PMICounter):
        raise TypeError(f"counts must be a PMICounter, got {type(counts).__name__}")
    if counts.num_classes != C:
        raise ValueError(f"the precomputed counts have {counts.num_classes} classes, the model has {C}")
    if counts.num_tokens > V:
        raise ValueError(f"the precomputed counts cover {counts.num_tokens} tokens, more than the model's "
                         f"{V} embedding rows: they were made with another tokenizer")
    if counts.num_tokens == V:
        return counts
    out = PMICounter(V, C, counts.device)
    out.counts[:, :counts.num_tokens] = counts.counts
    out.doc_freq[:counts.num_tokens] = counts.doc_freq
    out.class_docs.copy_(counts.class_docs)
    out.n_docs = counts.n_docs
    return out


def forget_loss(z: torch.Tensor, target: int, multi_label: bool) -> torch.Tensor:
    if multi_label:
        return F.softplus(z[:, target]).mean()  # == BCE(sigmoid(z_t), 0)
    others = torch.cat([z[:, :target], z[:, target + 1:]], 1)
    return (torch.logsumexp(z, 1) - torch.logsumexp(others, 1)).mean()  # -log(1 - p_t)


def utility_loss(z: torch.Tensor, z0: torch.Tensor, target: int, multi_label: bool) -> torch.Tensor:
    keep = [c for c in range(z.shape[1]) if c != target]
    if not keep:
        return z.new_zeros(())
    z, z0 = z[:, keep], z0[:, keep]
    if multi_label:
        return F.binary_cross_entropy_with_logits(z, torch.sigmoid(z0))
    return F.kl_div(F.log_softmax(z, 1), F.log_softmax(z0, 1), log_target=True, reduction="batchmean")


@dataclass
class ClassDirection:
    """Where the original model's representation separates the target class: a logistic regression on
    one pooled feature (raw feature space: ``w . h + b`` is its logit) and ``aim``, the mean of that logit
    over the retain documents."""
    feature: str                      # "mean" | "cls"
    w: torch.Tensor                   # float32 [D]
    b: float
    aim: float
    forget_mean: float                # mean logit over the forget documents (before unlearning)


@torch.no_grad()
def class_directions(model: nn.Module, data: Encoded, forget: Sequence[int], retain: Sequence[int], *,
                     features: Sequence[str] = ("mean", "cls"), C: float = 1.0, batch_size: int = 64
                     ) -> Dict[str, ClassDirection]:
    """Fit, on the frozen ``model``'s features of the forget + retain documents, an L2 logistic regression
    (standardised features, lbfgs, deterministic) per pooled feature for "carries the target class"; returns
    each as a :class:`ClassDirection` in raw feature space. ``model`` is run in eval mode and not changed."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    idx = list(forget) + list(retain)
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    feats: Dict[str, List[torch.Tensor]] = {f: [] for f in features}
    try:
        for _, b in data.batches(idx, batch_size):
            b = {k: v.to(device) for k, v in b.items()}
            pooled = pooled_features(last_hidden(model(**b, output_hidden_states=True)), b["attention_mask"])
            for f in features:
                feats[f].append(pooled[f].cpu())
    finally:
        model.train(was)
    y = torch.zeros(len(idx), dtype=torch.bool)
    y[:len(forget)] = True
    out = {}
    for f in features:
        x = torch.cat(feats[f]).double()
        mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
        with threadpool_limits(1):  # one BLAS thread: the fit is bit-reproducible (exact resume, equal ranks)
            clf = LogisticRegression(C=C, max_iter=2000).fit(((x - mu) / sd).numpy(), y.numpy())
        w = torch.from_numpy(clf.coef_[0]) / sd
        b = float(clf.intercept_[0]) - float((w * mu).sum())
        logit = x @ w + b
        out[f] = ClassDirection(f, w.float(), b, float(logit[~y].mean()), float(logit[y].mean()))
    return out


def representation_loss(hidden: torch.Tensor, attention_mask: torch.Tensor,
                        directions: Dict[str, ClassDirection]) -> torch.Tensor:
    """``sum_f mean_docs relu(w_f . h_f + b_f - aim_f) ** 2`` over the documents of ``hidden`` (the forget
    documents' last-layer states): zero once each sits no further along the class direction than the
    original's retain documents do on average."""
    pooled = pooled_features(hidden, attention_mask)
    loss = hidden.new_zeros((), dtype=torch.float32)
    for f, d in directions.items():
        logit = pooled[f] @ d.w.to(pooled[f].device) + d.b
        loss = loss + F.relu(logit - d.aim).pow(2).mean()
    return loss


@dataclass
class STEUPlan:
    """Everything STEU decides before training (see :func:`prepare`): the resolved target, the
    forget/retain split of the tokenized corpus, the selected embedding rows and the frozen original
    model's logits on the retain documents (the distillation targets)."""
    target: int
    label_names: List[str]
    multi_label: bool
    embedding: str                    # qualified name of the word-embedding weight
    head: Dict[str, nn.Parameter]     # the classifier head's parameters, by qualified name
    data: Encoded                     # the tokenized training corpus
    forget: List[int]                 # documents carrying the target label
    retain: List[int]                 # the others
    rows: torch.Tensor                # int64 [k'] selected rows, best first
    scores: torch.Tensor              # float64 [V] token scores
    teacher_logits: Optional[torch.Tensor] = None  # float32 [len(retain), C] on CPU (z0)
    seconds: Dict[str, float] = field(default_factory=dict)
    directions: Optional[Dict[str, ClassDirection]] = None  # objective="representation": the class directions

    @property
    def row_scores(self) -> torch.Tensor:
        return self.scores[self.rows] if self.rows.numel() else torch.zeros(0, dtype=torch.float64)


def prepare(model: nn.Module, tokenizer, texts: Sequence[str], labels, target, *,
            config: Optional[STEUConfig] = None, label_names: Optional[Sequence[str]] = None,
            encoded: Optional[Encoded] = None, teacher_logits: bool = True,
            counts: Optional[PMICounter] = None) -> STEUPlan:
    """STEU's steps before training, shared by :func:`unlearn` and the HF ``STEUTrainer``: validate the
    input, tokenize, split forget/retain, count document-level token x class statistics, score, select
    the top-k rows (special tokens excluded) and, with ``teacher_logits=True``, compute the frozen
    original model's logits on the retain documents. Does not modify ``model``.

    ``counts``: precomputed counts (a :class:`PMICounter`, e.g. ``load_counts(dir, tokenizer).counter``
    from ``steu pmi``, rows in the model's class order) used instead of counting ``texts``."""
    cfg = config or STEUConfig()
    C = model.config.num_labels
    names = list(label_names) if label_names is not None else [str(i) for i in range(C)]
    if len(names) != C:
        raise ValueError(f"{len(names)} label names given but the model has {C} classes")
    target = resolve_target(target, names)
    emb_name = embedding_param_name(model)
    V = dict(model.named_parameters())[emb_name].shape[0]
    cfg.validate(V)
    multi = is_multi_label(model, cfg.multi_label)
    head = find_head(model, cfg.head_modules)
    if len(texts) == 0:
        raise ValueError("the training corpus is empty")
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")

    t0 = time.perf_counter()
    data = encoded or Encoded(tokenizer, texts, label_matrix(labels, C), cfg.max_length)
    forget, retain = split_forget_retain(data, target, names)
    t_tok = time.perf_counter()

    counter = count_tokens(data, V, C) if counts is None else _precomputed(counts, V, C)
    scores = counter.scores(target, measure=cfg.measure, alpha=cfg.alpha, min_count=cfg.min_count)
    special = [i for i in getattr(tokenizer, "all_special_ids", []) if 0 <= i < V]
    if cfg.train_embeddings:
        rows = select_top_k(scores, cfg.k, exclude_ids=special)
    else:
        rows = torch.zeros(0, dtype=torch.long)
    t_sel = time.perf_counter()
    plan = STEUPlan(target, names, multi, emb_name, head, data, forget, retain, rows, scores,
                    seconds={"tokenize": t_tok - t0, "count_and_select": t_sel - t_tok})
    if teacher_logits:
        plan.teacher_logits = predict_logits(model, data, retain, batch_size=64)
        plan.seconds["teacher_logits"] = time.perf_counter() - t_sel
    if cfg.objective == "representation" and cfg.repr_weight > 0 and cfg.train_embeddings and rows.numel():
        t_dir = time.perf_counter()
        plan.directions = class_directions(model, data, forget, retain, features=cfg.repr_features,
                                           C=cfg.repr_C)
        plan.seconds["class_directions"] = time.perf_counter() - t_dir
    return plan


def steu_param_groups(model: nn.Module, embedding: str, rows: Optional[torch.Tensor],
                      head: Dict[str, nn.Parameter], *, lr: float,
                      head_lr: Optional[float]) -> List[Dict[str, Any]]:
    """Freeze every parameter of ``model``, then make trainable the embedding table (a row-sparse group:
    only ``rows`` are ever updated) and the ``head`` parameters; returns the parameter groups for
    :class:`~steu_ext.optim.RowSparseAdam`. No embedding group when ``rows`` is empty or None, no head
    group when ``head_lr`` is None."""
    params = dict(model.named_parameters(remove_duplicate=False))
    train_rows = rows is not None and rows.numel() > 0
    train_head = head_lr is not None and bool(head)
    if not (train_rows or train_head):
        raise ValueError("nothing to train: no embedding rows selected and no head")
    if train_rows and embedding not in params:
        raise ValueError(f"the model has no parameter {embedding!r}")
    for p in model.parameters():
        p.requires_grad_(False)
    groups: List[Dict[str, Any]] = []
    if train_rows:
        emb = params[embedding]
        emb.requires_grad_(True)
        groups.append({"params": [emb], "rows": rows.to(emb.device), "lr": lr})
    if train_head:
        for p in head.values():
            p.requires_grad_(True)
        groups.append({"params": list(head.values()), "lr": head_lr})
    return groups


def unlearn(model: nn.Module, tokenizer, texts: Sequence[str], labels, target, *,
            config: Optional[STEUConfig] = None, label_names: Optional[Sequence[str]] = None,
            encoded: Optional[Encoded] = None, progress: Optional[bool] = None,
            counts: Optional[PMICounter] = None) -> STEUResult:
    """Unlearn class ``target`` (index or name) from ``model`` in place with STEU.

    ``texts``/``labels`` are the training corpus (labels: class ids, lists of ids, or a 0/1 matrix);
    documents carrying the target label form the forget set, the rest the retain set. ``counts``:
    precomputed token statistics (see :func:`prepare`) instead of counting ``texts``.
    """
    cfg = config or STEUConfig()
    t0 = time.perf_counter()
    # 1-3: tokenize, count, score, select; the frozen original model's logits on the retain set
    plan = prepare(model, tokenizer, texts, labels, target, config=cfg, label_names=label_names,
                   encoded=encoded, teacher_logits=False, counts=counts)
    target, names, multi, head, data = plan.target, plan.label_names, plan.multi_label, plan.head, plan.data
    forget, retain, rows, emb_name = plan.forget, plan.retain, plan.rows, plan.embedding
    directions = plan.directions
    t_sel = time.perf_counter()

    original = snapshot(model)
    emb = dict(model.named_parameters())[emb_name]
    device = emb.device
    z0 = predict_logits(model, data, retain, batch_size=64)
    z0_of = {i: r for r, i in enumerate(retain)}

    # 4: freeze everything except the selected rows and the head
    saved_flags = {n: p.requires_grad for n, p in model.named_parameters()}
    groups = steu_param_groups(model, emb_name, rows if cfg.train_embeddings else None, head, lr=cfg.lr,
                               head_lr=cfg.head_lr if cfg.train_head else None)
    opt = RowSparseAdam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

    # 5: train; eval mode keeps dropout off so the frozen parts compute exactly what the original did
    was_training = model.training
    model.eval()
    rng = random.Random(cfg.seed)
    history: List[Dict[str, float]] = []
    retain_order: List[int] = []
    steps_per_epoch = (len(forget) + cfg.batch_size - 1) // cfg.batch_size
    bar = None
    if show_progress(progress):
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.epochs * steps_per_epoch, desc="STEU", unit="step")
    try:
        for epoch in range(cfg.epochs):
            if directions is not None and cfg.repr_refit_every and epoch and epoch % cfg.repr_refit_every == 0:
                # where the *edited* model still separates the class (stronger removal, costs retain F1)
                directions = class_directions(model, data, forget, retain, features=cfg.repr_features,
                                              C=cfg.repr_C)
            f_order = forget[:]
            rng.shuffle(f_order)
            for s in range(steps_per_epoch):
                fb = f_order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
                if len(retain_order) < cfg.batch_size:
                    more = retain[:]
                    rng.shuffle(more)
                    retain_order += more
                rb, retain_order = retain_order[:cfg.batch_size], retain_order[cfg.batch_size:]
                batch = {k: v.to(device) for k, v in data.batch(fb + rb).items()}
                out = model(**batch, output_hidden_states=directions is not None)
                z = out.logits.float()
                lf = forget_loss(z[:len(fb)], target, multi)
                lu = utility_loss(z[len(fb):], z0[[z0_of[i] for i in rb]].to(device), target, multi)
                loss = lf + cfg.utility_weight * lu
                if directions is not None:
                    lr_ = representation_loss(last_hidden(out)[:len(fb)], batch["attention_mask"][:len(fb)],
                                              directions)
                    loss = loss + cfg.repr_weight * lr_
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                rec = {"epoch": epoch, "loss": loss.item(), "forget_loss": lf.item(), "utility_loss": lu.item()}
                if directions is not None:
                    rec["repr_loss"] = lr_.item()
                history.append(rec)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(forget=f"{rec['forget_loss']:.3f}", utility=f"{rec['utility_loss']:.4f}")
    finally:
        if bar is not None:
            bar.close()
        opt.zero_grad(set_to_none=True)
        for n, p in model.named_parameters():
            p.requires_grad_(saved_flags[n])
        model.train(was_training)
    t_end = time.perf_counter()

    meta = {"method": "steu", "target": target, "target_name": names[target], "label_names": names,
            "config": asdict(cfg), "selected_tokens": rows.tolist(), "multi_label": multi,
            "base_model": getattr(model.config, "_name_or_path", None)}
    if plan.directions is not None:
        meta["class_directions"] = {f: {"aim": d.aim, "forget_mean_before": d.forget_mean}
                                    for f, d in plan.directions.items()}
    edit = STEUEdit.from_diff(original, model, emb_name, head if cfg.train_head else {}, meta)
    seconds = {"tokenize": plan.seconds["tokenize"], "count_and_select": plan.seconds["count_and_select"],
               **({"class_directions": plan.seconds["class_directions"]} if "class_directions" in plan.seconds
                  else {}),
               "train": t_end - t_sel, "total": t_end - t0}
    return STEUResult(model, edit, rows, plan.row_scores, history, seconds)
