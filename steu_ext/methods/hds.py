"""HDS — Hierarchical Dual-Strategy knowledge unlearning for causal LMs (``methods.md`` §2).

Per step, with a forget batch (items of the forget domain) and a retain batch:

* **token interventions** (strategy 2): a concept hierarchy (:mod:`steu_ext.data.concepts`) tags the
  tokens of every training text. In forget samples, answer tokens and tokens of targeted concepts
  (levels 3-4 of a forget domain) carry the forget loss, weighted per level; tokens of
  preservation-critical concepts (levels 1-2) carry the retain loss instead. Without interventions the
  forget loss covers the answer tokens uniformly, as in plain GA/NPO.
* **question tokens** (optional, ``question_weight > 0``; off by default): the loss-based membership
  inference of :func:`steu_ext.eval.qa.mia_auc` reads the whole training text, and a question the model
  memorised keeps its low loss when only the answer and the targeted concepts are unlearned, so the forget
  items stay recognisable (AUC ~1). The question tokens of forget items (all but the preservation-critical
  ones) then get a target-aware term: per item, with ``m`` its mean question-token NLL,
  ``question_weight * |m - question_target|`` (:func:`question_objective`). The aim is member loss ~
  never-seen loss (AUC -> 0.5); an ever-growing member loss (plain GA, AUC -> 0) is just as recognisable.
  Why this form, from runs on the PubMedQA protocol: NPO's bound is no help (on a sum over ~25 question
  tokens its weight vanishes long before a memorised question reaches the never-seen level: AUC stayed
  1.0); a one-sided hinge ``relu(target - m)`` (stop pushing at the target) overshot in long runs (AUC
  0.24-0.27: the items keep rising through the targeted concepts' forget loss and the shared LoRA
  weights), so items above the target are pulled back to it. ``question_target`` (nats per token) must
  come from questions the model never saw that are not the MIA's held-out items, e.g. the median of
  :func:`question_nll` over held-out retain-domain questions (the taught retain questions are no proxy:
  their loss is as low as the members'). So that the term removes these items' memorisation rather than
  the model's grasp of question text in general, the retain items' question tokens join the keep loss,
  normalised on their own (without it every question's loss rose: never-seen retain-domain questions
  5.8 -> 9.8 nats/token). Expect the forgetting rate to settle near the never-seen level: a model that no
  longer recognises the questions answers them as it answers never-seen ones (PubMedQA protocol: 0.50-0.54
  accuracy, i.e. a forgetting rate ~0.45), so a far higher target (0.8, i.e. systematically wrong answers,
  itself a trace of the items) may take long or not be reached.
* **losses**: forget = gradient ascent (minimise the weighted mean log-likelihood) or NPO
  (``2/beta * softplus(beta * (log pi - log pi_ref))`` per sequence, pi_ref the frozen original model);
  keep = NLL (or KL to the frozen original model) on the retain answers plus the preservation-critical
  tokens of the forget samples. GradDiff = forget + lambda * keep.
* **geometric constraint** (strategy 1): g_f (forget) and g_r (keep) come from two backward passes;
  g_f is projected in place with :func:`steu_ext.grad_project_` over all trainable tensors at once,
  Fisher-weighted (F = EMA of g_r**2, updated with ``_foreach`` ops, no host sync), on conflict only or
  always; or against an orthonormal basis of the last ``subspace`` retain gradients
  (:func:`steu_ext.grad_project_basis_`; rebuilding that basis by QR costs one host sync per step).
  The update is ``g_f' + lambda * g_r``. With Adam the step is
  rescaled per coordinate afterwards, so orthogonality holds for the gradient, exactly so for ``sgd``.
* **parameter budget**: LoRA adapters via ``peft`` (``adapter="lora"``; placement ``lora_targets`` /
  ``lora_layers``, rank ``lora_r``; :func:`lora_budget` computes the share a placement trains, also for
  a config only, e.g. a 7B Llama's, on the meta device) or every parameter (``adapter="none"``, the
  classic baselines). The result reports the exact number of adapter elements trained and of base
  elements a merge would change (:func:`merged_changes`), and ships the edit as an **unmerged PEFT
  adapter** (:meth:`HDSResult.save_adapter`, :func:`load_adapter` with a base-fingerprint check,
  :func:`remove_adapter` restores the base weights bit-exact).
* **stopping**: ``monitor`` rules checked after every epoch; a :class:`StopRule` also restores its best
  epoch when never met and lands its record in the result. The rules themselves are evaluation criteria
  and live in :mod:`steu_ext.eval.stopping`: ``IndistinguishableStop`` ("until indistinguishable": forget
  accuracy within a band of the never-seen level and loss-MIA AUC within a band of 0.5, on items of its
  own; report on disjoint ones) and ``ForgettingStop`` (the paper's "forgetting rate >= target" framing).
  :func:`estimate_question_target` takes ``question_target`` from never-taught items.
* **one computation, two entry points**: :func:`unlearn` and ``HDSTrainer`` share :func:`epoch_order`,
  :func:`retain_position`, the LoRA initialisation, :class:`HDSGradient`, a constant learning rate and
  ``clip_norm`` as the only clipping, so at equal settings they train the same weights.
* **DP-style noise** (optional): the batch update is clipped to ``clip_norm`` and Gaussian noise of
  std ``noise_multiplier * clip_norm`` is added. Clipping is per batch, not per example, and no
  accountant runs: **no privacy guarantee or budget is claimed**.
* **precision**: ``autocast_dtype="bfloat16"`` runs the forward passes (and NPO's reference sums) under
  bf16 autocast; the losses are computed from fp32 logits. Base weights may already be bf16 (peft keeps
  LoRA adapters fp32 by default). Whatever the parameters' dtype, g_f and g_r are taken to fp32 before the
  Fisher EMA (kept fp32), the projection, clipping and noise, and the update is cast back to the
  parameter's dtype in ``.grad``. fp16 is refused: it needs loss scaling, which the two
  ``torch.autograd.grad`` passes would have to do themselves (the HF Trainer's GradScaler only sees
  ``loss.backward()``), and bf16 covers the GPUs HDS targets.
* **data parallelism** (``HDSGradient(distributed=True)``, used by ``HDSTrainer`` under torchrun/DDP):
  each rank computes g_f and g_r of its own batch on the unwrapped module, the losses' normalisers (token
  weight sums, forget batch size) are summed across ranks first, so each rank's loss is its share of the
  global loss; g_f, g_r and the two loss values are then summed in one flat fp32 ``all_reduce``. Every
  rank thus projects the gradients of the global batch and applies the same update, equal to one process
  running that batch.

:func:`unlearn` returns a new model (the caller's model is not modified). GA, NPO and GradDiff are
configurations of the same loop (:func:`baseline_config`). The small randomly initialised LM of the offline
protocol (``tiny_causal_lm``, ``teach``) is in :mod:`steu_ext.experiments.tiny_models`, the protocol with its
gold standard in :mod:`steu_ext.experiments.hds_protocol`; the text format and token scoring come from
:mod:`steu_ext.data.qa` and :mod:`steu_ext.modeling.causal_lm`.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import functools
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .._progress import show_progress
from ..data.concepts import PRESERVE, TARGET, ConceptHierarchy
from ..data.qa import QAItem, continuation_of, prompt_of
from ..modeling.causal_lm import encode_qa, pad_id, token_logprobs
from ..ops.grad_project import grad_project_, grad_project_basis_, orthonormal_basis

# the edit as a LoRA adapter (its placement, budget, files and removal): public names of hds as before
from .hds_adapter import (  # noqa: F401  (re-exported)
    ADAPTER_FORMAT,
    ADAPTER_META,
    adapter_of,
    base_fingerprint,
    load_adapter,
    lora_budget,
    lora_config,
    merged_changes,
    remove_adapter,
    save_adapter,
    wrap_lora,
)

log = logging.getLogger("steu_ext")

__all__ = ["HDSConfig", "HDSResult", "HDSGradient", "encode_examples", "collate", "unlearn",
           "baseline_config", "wrap_lora", "lora_config", "lora_budget", "ABLATIONS",
           "forget_objective", "question_objective", "keep_nll",
           "question_nll", "estimate_question_target", "StopRule",
           "save_adapter", "load_adapter", "remove_adapter", "merged_changes", "base_fingerprint", "epoch_order",
           "retain_position"]

FORGET_LOSSES = ("ga", "npo")
AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16}
RETAIN_LOSSES = ("nll", "kl", "none")
PROJECTIONS = ("conflict", "always", "none")


@dataclass
class HDSConfig:
    forget_loss: str = "npo"             # ga | npo
    npo_beta: float = 0.1
    retain_loss: str = "nll"             # nll | kl | none (none: no keep term, no projection)
    retain_weight: float = 1.0           # lambda
    preserve_weight: float = 1.0         # keep loss on preservation-critical tokens of forget samples
    token_interventions: bool = True
    # per-level token weights and the answer tokens' forget weight (tuned on the PubMedQA protocol)
    level_weights: Dict[int, float] = field(default_factory=lambda: {1: 1.0, 2: 1.0, 3: 0.5, 4: 1.0})
    answer_weight: float = 4.0           # forget weight of the answer tokens
    # forget weight of the question tokens of forget items (not the preserved ones; 0 = off) and the mean
    # per-token NLL (nats) a forget item's question is held at (needed when > 0; see the module docstring)
    question_weight: float = 0.0
    question_target: Optional[float] = None
    preserve_levels: Tuple[int, ...] = (1, 2)
    target_levels: Tuple[int, ...] = (3, 4)
    forget_domains: Optional[List[str]] = None   # None: every domain of the hierarchy
    projection: str = "conflict"         # conflict | always | none
    fisher: bool = True                  # Fisher-weighted inner product (False: plain PCGrad)
    fisher_beta: float = 0.9
    subspace: int = 0                    # > 0: project against the last m retain gradients instead
    adapter: str = "lora"                # lora | none (every parameter trains)
    lora_r: int = 4
    lora_alpha: float = 4.0
    lora_targets: Any = "all-linear"     # peft target_modules: module names, or "all-linear"
    lora_layers: Optional[List[int]] = None   # peft layers_to_transform: decoder layer indices (None: all)
    optimizer: str = "adamw"             # adamw | sgd
    lr: float = 1e-2
    epochs: int = 30
    batch_size: int = 16
    max_length: int = 64
    long_answer: bool = False            # train on "answer. long answer" instead of the answer alone
    clip_norm: Optional[float] = None    # DP-style clipping of the batch update (no privacy claim)
    noise_multiplier: float = 0.0
    autocast_dtype: Optional[str] = None  # None (full precision) | "bfloat16" (autocast forward passes)
    seed: int = 0

    def validate(self) -> None:
        if self.forget_loss not in FORGET_LOSSES:
            raise ValueError(f"forget_loss must be one of {FORGET_LOSSES}, got {self.forget_loss!r}")
        if self.retain_loss not in RETAIN_LOSSES:
            raise ValueError(f"retain_loss must be one of {RETAIN_LOSSES}, got {self.retain_loss!r}")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {self.projection!r}")
        if self.projection != "none" and self.retain_loss == "none":
            raise ValueError("projection needs a retain gradient: set retain_loss to 'nll' or 'kl'")
        if self.adapter not in ("lora", "none"):
            raise ValueError(f"adapter must be 'lora' or 'none', got {self.adapter!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        for name in ("epochs", "batch_size", "max_length", "lora_r"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.subspace < 0:
            raise ValueError("subspace must be >= 0")
        if not 0 <= self.fisher_beta < 1:
            raise ValueError("fisher_beta must be in [0, 1)")
        if self.npo_beta <= 0:
            raise ValueError("npo_beta must be > 0")
        if not (isinstance(self.question_weight, (int, float)) and 0 <= self.question_weight < float("inf")):
            raise ValueError(f"question_weight must be a finite number >= 0, got {self.question_weight!r}")
        if self.question_target is not None and not (isinstance(self.question_target, (int, float))
                                                     and 0 < self.question_target < float("inf")):
            raise ValueError(f"question_target must be a finite number > 0 (nats per token), got "
                             f"{self.question_target!r}")
        if self.question_weight > 0 and self.question_target is None:
            raise ValueError("question_weight > 0 needs question_target: the mean question-token NLL of "
                             "questions the model never saw, e.g. the median of hds.question_nll over "
                             "held-out questions (not the MIA's never-seen items)")
        bad = set(self.level_weights) - {1, 2, 3, 4}
        if bad:
            raise ValueError(f"level_weights has unknown level(s) {sorted(bad)} (levels are 1-4)")
        if self.noise_multiplier < 0 or (self.noise_multiplier > 0 and self.clip_norm is None):
            raise ValueError("noise_multiplier > 0 needs clip_norm (the noise std is "
                             "noise_multiplier * clip_norm)")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError("clip_norm must be > 0")
        if not self.lora_targets and self.adapter == "lora":
            raise ValueError("lora_targets is empty")
        if self.lora_layers is not None and (isinstance(self.lora_layers, (str, bytes)) or not self.lora_layers
                                             or any(isinstance(i, bool) or not isinstance(i, int) or i < 0
                                                    for i in self.lora_layers)):
            raise ValueError(f"lora_layers must be None or a non-empty list of layer indices >= 0, got "
                             f"{self.lora_layers!r}")
        if self.autocast_dtype in ("float16", "fp16", "half", torch.float16):
            raise ValueError("autocast_dtype='float16' is not supported: fp16 needs loss scaling, which HDS's "
                             "two torch.autograd.grad passes do not do; use 'bfloat16' or None")
        if self.autocast_dtype is not None and self.autocast_dtype not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast_dtype must be None or one of {sorted(AUTOCAST_DTYPES)}, "
                             f"got {self.autocast_dtype!r}")


ABLATIONS = ("ga", "npo", "graddiff", "hds_no_projection", "hds_no_tokens", "hds")


def baseline_config(name: str, base: Optional[HDSConfig] = None) -> HDSConfig:
    """The ablation rows as configurations: ``ga`` / ``npo`` (forget loss only, every parameter),
    ``graddiff`` (GA + lambda * retain NLL, every parameter), ``hds_no_projection``, ``hds_no_tokens`` and
    ``hds`` (LoRA; from ``base``)."""
    if name not in ABLATIONS:
        raise ValueError(f"unknown method {name!r}; expected one of {ABLATIONS}")
    c = copy.deepcopy(base) if base is not None else HDSConfig()
    if name in ("ga", "npo", "graddiff"):
        c.adapter, c.token_interventions, c.projection = "none", False, "none"
        c.forget_loss = "npo" if name == "npo" else "ga"
        c.retain_loss = "nll" if name == "graddiff" else "none"
    elif name == "hds_no_projection":
        c.projection = "none"
    elif name == "hds_no_tokens":
        c.token_interventions = False
    return c


# ---------------------------------------------------------------------------------------------------
# examples


def encode_examples(tokenizer, items: Sequence[QAItem], cfg: HDSConfig, *, forget: bool,
                    hierarchy: Optional[ConceptHierarchy] = None) -> List[Dict[str, Any]]:
    """Tokenize the training texts and build per-token weights (aligned with the token; the loss of token
    t is log p(t | < t)): ``fw`` forget weights, ``kw`` keep (retain-loss) weights. With
    ``cfg.question_weight > 0`` forget examples also get ``qw`` (``question_weight`` on the question's
    tokens, 0 on preservation-critical ones) and retain examples ``qk`` (keep weight 1 on the question's
    tokens); with 0 neither key exists and the examples are exactly those of before the option."""
    use_tags = cfg.token_interventions and forget and hierarchy is not None
    ask = cfg.question_weight > 0
    out = []
    for it in items:
        prompt = prompt_of(it)
        e = encode_qa(tokenizer, prompt, continuation_of(it, long_answer=cfg.long_answer), cfg.max_length)
        ans = torch.tensor(e["cont_mask"], dtype=torch.float32)
        q = _question_mask(e["offsets"], prompt, it.question) if ask else None
        if not forget:
            out.append({"input_ids": e["input_ids"], "fw": torch.zeros_like(ans), "kw": ans,
                        **({"qk": q} if ask else {})})
            continue
        if not use_tags:
            out.append({"input_ids": e["input_ids"], "fw": ans * cfg.answer_weight,
                        "kw": torch.zeros_like(ans), **({"qw": q * cfg.question_weight} if ask else {})})
            continue
        level, concept = hierarchy.tag_offsets(e["text"], e["offsets"])
        role = hierarchy.roles(level, concept, preserve_levels=cfg.preserve_levels,
                               target_levels=cfg.target_levels, forget_domains=cfg.forget_domains)
        lw = torch.tensor([0.0] + [float(cfg.level_weights.get(lv, 1.0)) for lv in (1, 2, 3, 4)])[level]
        pres, targ = role == PRESERVE, role == TARGET
        fw = torch.where(pres, 0.0, ans * cfg.answer_weight) + torch.where(targ, lw, 0.0)
        kw = torch.where(pres, lw, 0.0)
        ex = {"input_ids": e["input_ids"], "fw": fw, "kw": kw, "level": level, "role": role}
        if ask:
            ex["qw"] = torch.where(pres, 0.0, q * cfg.question_weight)
        out.append(ex)
    return out


def _question_mask(offsets: Sequence[Tuple[int, int]], prompt: str, question: str) -> torch.Tensor:
    """1.0 for the tokens inside the question's characters of ``prompt`` (not the template around it,
    which every item shares, nor special tokens), else 0.0."""
    start = prompt.find(question) if question else -1
    if start < 0:
        return torch.zeros(len(offsets))
    end = start + len(question)
    return torch.tensor([float(start <= s and e <= end and e > s) for s, e in offsets])


def collate(examples: Sequence[Dict[str, Any]], pad_id: int) -> Dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask``, ``fw``, ``kw`` (and ``qw``, ``qk``, ``ref`` when
    every example has them)."""
    L = max(len(e["input_ids"]) for e in examples)
    B = len(examples)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    att = torch.zeros((B, L), dtype=torch.long)
    fw = torch.zeros((B, L))
    kw = torch.zeros((B, L))
    for r, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[r, :n] = torch.as_tensor(e["input_ids"])
        att[r, :n] = 1
        fw[r, :n] = e["fw"]
        kw[r, :n] = e["kw"]
    out = {"input_ids": ids, "attention_mask": att, "fw": fw, "kw": kw}
    for key in ("qw", "qk"):
        if all(key in e for e in examples):
            w = torch.zeros((B, L))
            for r, e in enumerate(examples):
                w[r, :len(e["input_ids"])] = e[key]
            out[key] = w
    if all("ref" in e for e in examples):
        out["ref"] = torch.stack([torch.as_tensor(e["ref"], dtype=torch.float32) for e in examples])
    return out


# ---------------------------------------------------------------------------------------------------
# losses


def _norm(w: torch.Tensor, denom: Optional[torch.Tensor]) -> torch.Tensor:
    return (w.sum() if denom is None else denom).clamp_min(1e-8)


def forget_objective(lp: torch.Tensor, w: torch.Tensor, kind: str, ref: Optional[torch.Tensor] = None,
                     beta: float = 0.1, denom: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The forget loss to minimise from token log-probs ``lp`` and weights ``w`` (``[B, L-1]``): ``ga`` =
    weighted mean log-likelihood; ``npo`` = mean over sequences of ``2/beta * softplus(beta * (s - s_ref))``
    with ``s`` the weighted log-likelihood sum and ``ref`` the original model's ``s``. ``denom`` replaces
    the normaliser (``ga``: the weight sum; ``npo``: the number of sequences), e.g. by its value over
    every rank's batch."""
    if kind == "ga":
        return (w * lp).sum() / _norm(w, denom)
    if ref is None:
        raise ValueError("NPO needs the reference model's log-likelihoods")
    s = (w * lp).sum(1)
    per_seq = 2.0 / beta * F.softplus(beta * (s - ref))
    return per_seq.mean() if denom is None else per_seq.sum() / denom.clamp_min(1.0)


def question_objective(lp: torch.Tensor, w: torch.Tensor, target: float,
                       denom: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The question term to minimise: mean over sequences of ``wbar * |m - target|``, with ``m`` a
    sequence's ``w``-weighted mean token NLL and ``wbar`` its mean weight over the weighted tokens
    (sequences without weighted tokens add 0). Below ``target`` it is gradient ascent on the question,
    above it gradient descent back to ``target``: the loss is held at the target, not pushed beyond.
    ``denom`` replaces the number of sequences."""
    n = w.sum(1)
    m = -(w * lp).sum(1) / n.clamp_min(1e-8)
    wbar = n / (w > 0).sum(1).clamp_min(1)
    per_seq = wbar * (m - target).abs()
    return per_seq.sum() / (denom.clamp_min(1.0) if denom is not None else max(w.shape[0], 1))


def keep_nll(lp: torch.Tensor, w: torch.Tensor, denom: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Weighted mean negative log-likelihood (0 when all weights are 0, without a host sync); ``denom``
    replaces the weight sum as the normaliser."""
    return -(w * lp).sum() / _norm(w, denom)


def _keep_kl(logits: torch.Tensor, ref_logits: torch.Tensor, w: torch.Tensor,
             denom: Optional[torch.Tensor] = None) -> torch.Tensor:
    lq = F.log_softmax(logits.float(), -1)
    lr = F.log_softmax(ref_logits.float(), -1)
    kl = (lr.exp() * (lr - lq)).sum(-1)
    return (w * kl).sum() / _norm(w, denom)


def _autocast(device: torch.device, dtype: Optional[str]):
    """bf16 autocast on ``device`` for ``dtype="bfloat16"``, nothing for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[dtype])


class HDSGradient:
    """One HDS gradient computation: losses from a forget and a retain batch, two backward passes, the
    in-place projection of g_f, ``p.grad += scale * (g_f' + lambda * g_r)``, optional clip + noise.
    Holds the Fisher EMA (fp32) and the recent retain gradients (for ``subspace``). ``reference`` is the
    frozen original model for ``retain_loss="kl"`` (None with a peft model: its adapters are disabled
    instead). ``distributed=True``: the batches are this rank's share of a global batch; the losses are
    normalised over the global batch and g_f, g_r and the losses summed across the ranks of ``group``
    (``torch.distributed``) before the projection, so every rank computes the same update."""

    def __init__(self, cfg: HDSConfig, params: Sequence[nn.Parameter], reference: Optional[nn.Module] = None,
                 *, distributed: bool = False, group=None):
        cfg.validate()
        self.cfg, self.params, self.reference = cfg, list(params), reference
        if not self.params:
            raise ValueError("no trainable parameters")
        self.distributed, self.group = bool(distributed), group
        self.fisher: Optional[List[torch.Tensor]] = None
        self.recent: collections.deque = collections.deque(maxlen=max(cfg.subspace, 1))
        self.generator: Optional[torch.Generator] = None
        self.last_coef: Optional[torch.Tensor] = None

    def _ref_logits(self, model, ids, att):
        with torch.no_grad():
            if self.reference is not None:
                return self.reference(input_ids=ids, attention_mask=att).logits[:, :-1]
            if not hasattr(model, "disable_adapter"):
                raise ValueError("retain_loss='kl' needs the reference model (or a peft model)")
            with model.disable_adapter():
                return model(input_ids=ids, attention_mask=att).logits[:, :-1]

    def _keep(self, model, batch, logits_fn, denom=None, qdenom=None) -> torch.Tensor:
        """Keep loss of a retain batch: on ``kw`` (the answers), plus, when the batch has ``qk``, the same
        loss on the questions' tokens normalised on its own (``question_weight > 0``)."""
        ids, att, kw = batch["input_ids"], batch["attention_mask"], batch["kw"][:, 1:]
        qk = batch["qk"][:, 1:] if "qk" in batch else None
        logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
        if self.cfg.retain_loss == "kl":
            ref = logits_fn(model, ids, att)
            loss = _keep_kl(logits, ref, kw, denom)
            return (loss if qk is None else loss + _keep_kl(logits, ref, qk, qdenom)), logits
        lp = torch.gather(F.log_softmax(logits, -1), 2, ids[:, 1:, None]).squeeze(2)
        loss = keep_nll(lp, kw, denom)
        return (loss if qk is None else loss + keep_nll(lp, qk, qdenom)), logits

    def losses(self, model: nn.Module, fb: Dict[str, torch.Tensor], rb: Optional[Dict[str, torch.Tensor]],
               denoms: Optional[Dict[str, torch.Tensor]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(forget loss, keep loss); the keep loss is 0 with ``retain_loss="none"``. ``denoms`` (see
        :meth:`global_denominators`) replaces the batch's own normalisers."""
        cfg, d = self.cfg, denoms or {}
        ids, att = fb["input_ids"], fb["attention_mask"]
        with _autocast(ids.device, cfg.autocast_dtype):
            logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
            lp = torch.gather(F.log_softmax(logits, -1), 2, ids[:, 1:, None]).squeeze(2)
            lf = forget_objective(lp, fb["fw"][:, 1:], cfg.forget_loss, fb.get("ref"), cfg.npo_beta,
                                  d.get("forget"))
            if "qw" in fb:
                lf = lf + question_objective(lp, fb["qw"][:, 1:], cfg.question_target, d.get("sequences"))
            if cfg.retain_loss == "none":
                return lf, lf.new_zeros(())
            if rb is None:
                raise ValueError(f"retain_loss={cfg.retain_loss!r} needs a retain batch")
            lr, _ = self._keep(model, rb, self._ref_logits, d.get("retain"), d.get("retain_question"))
            kwf = fb["kw"][:, 1:]
            if cfg.retain_loss == "kl":
                lk = _keep_kl(logits, self._ref_logits(model, ids, att), kwf, d.get("preserve"))
            else:
                lk = keep_nll(lp, kwf, d.get("preserve"))
        return lf, lr + cfg.preserve_weight * lk

    def global_denominators(self, fb, rb) -> Dict[str, torch.Tensor]:
        """The losses' normalisers summed over the ranks (one small ``all_reduce``): forget weight sum
        (``ga``) or number of forget sequences (``npo``), retain keep-weight sum, preserved-token weight
        sum of the forget batch, number of forget sequences (the question term) and the retain question
        keep-weight sum."""
        import torch.distributed as dist

        fw, fkw = fb["fw"][:, 1:], fb["kw"][:, 1:]
        rkw = rb["kw"][:, 1:] if rb is not None else fkw.new_zeros(())
        rqk = rb["qk"][:, 1:] if rb is not None and "qk" in rb else fkw.new_zeros(())
        nseq = fw.new_tensor(float(fw.shape[0]))
        first = fw.sum() if self.cfg.forget_loss == "ga" else nseq
        d = torch.stack([first, rkw.sum(), fkw.sum(), nseq, rqk.sum()]).double()
        dist.all_reduce(d, group=self.group)
        d = d.float()
        return {"forget": d[0], "retain": d[1], "preserve": d[2], "sequences": d[3], "retain_question": d[4]}

    def _sum_across_ranks(self, grads: List[List[torch.Tensor]], lf, lk):
        """Sum every gradient list and the two losses across ranks, in place, in one flat fp32 buffer."""
        import torch.distributed as dist

        flat = torch.cat([g.reshape(-1) for gs in grads for g in gs]
                         + [lf.detach().float().reshape(1), lk.detach().float().reshape(1)])
        dist.all_reduce(flat, group=self.group)
        off = 0
        for gs in grads:
            for g in gs:
                g.copy_(flat[off:off + g.numel()].view_as(g))
                off += g.numel()
        return flat[off], flat[off + 1]

    def _grad(self, loss, retain_graph=False) -> List[torch.Tensor]:
        gs = torch.autograd.grad(loss, self.params, retain_graph=retain_graph, allow_unused=True,
                                 materialize_grads=True)
        # fp32 from here on: the Fisher EMA, the projection's inner products, clipping and noise
        return [g.float().contiguous() for g in gs]

    def accumulate(self, model: nn.Module, fb, rb, scale: float = 1.0) -> Dict[str, torch.Tensor]:
        """Compute the update and add ``scale *`` it to the parameters' ``.grad`` (in each parameter's
        dtype); returns the detached losses (of the global batch when distributed) as 0-dim tensors."""
        cfg = self.cfg
        if self.distributed:
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                raise RuntimeError("HDSGradient(distributed=True) needs an initialised torch.distributed "
                                   "process group")
        denoms = self.global_denominators(fb, rb) if self.distributed else None
        lf, lk = self.losses(model, fb, rb, denoms)
        project = cfg.retain_loss != "none" and cfg.projection != "none"
        if cfg.retain_loss == "none":
            grads = [self._grad(lf)]
        elif not project:
            grads = [self._grad(lf + cfg.retain_weight * lk)]
        else:
            grads = [self._grad(lf, retain_graph=True), self._grad(lk)]
        lf, lk = lf.detach(), lk.detach()
        if self.distributed:
            lf, lk = self._sum_across_ranks(grads, lf, lk)
        if project:
            gf, gr = grads
            if cfg.subspace > 0:
                self.recent.append([g.detach().clone() for g in gr])
                basis = orthonormal_basis(list(self.recent))
                self.last_coef = grad_project_basis_(gf, basis)
            else:
                fisher = None
                if cfg.fisher:
                    if self.fisher is None:
                        self.fisher = [g * g for g in gr]
                    else:
                        torch._foreach_mul_(self.fisher, cfg.fisher_beta)
                        torch._foreach_addcmul_(self.fisher, gr, gr, value=1.0 - cfg.fisher_beta)
                    fisher = self.fisher
                self.last_coef = grad_project_(gf, gr, fisher, mode=cfg.projection)
            torch._foreach_add_(gf, gr, alpha=cfg.retain_weight)
            upd = gf
        else:
            upd = grads[0]
        if cfg.clip_norm is not None:
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(upd)))
            torch._foreach_mul_(upd, (cfg.clip_norm / (norm + 1e-12)).clamp(max=1.0))
            if cfg.noise_multiplier > 0:
                if self.generator is None:
                    self.generator = torch.Generator(device=upd[0].device).manual_seed(cfg.seed + 1)
                std = cfg.noise_multiplier * cfg.clip_norm
                for u in upd:
                    noise = torch.randn(u.shape, generator=self.generator, device=u.device, dtype=u.dtype)
                    u.add_(noise, alpha=std)
        for p, u in zip(self.params, upd):
            u = (u * scale if scale != 1.0 else u).to(p.dtype)
            p.grad = u.clone() if p.grad is None else p.grad.add_(u)
        return {"forget_loss": lf, "keep_loss": lk}


# ---------------------------------------------------------------------------------------------------
# the method


@dataclass
class HDSResult:
    model: nn.Module                    # the unlearned model (LoRA merged unless unlearn(merge=False)), a new object
    adapter: Optional[Dict[str, torch.Tensor]]   # LoRA tensors by parameter name (None without adapters)
    params: Dict[str, Any]              # exact counts of trainable / modified elements
    history: List[Dict[str, float]] = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=dict)
    steps: int = 0
    epochs: int = 0
    config: Dict[str, Any] = field(default_factory=dict)
    adapter_state: Optional[Dict[str, torch.Tensor]] = None   # the PEFT adapter as peft saves it
    adapter_config: Optional[Dict[str, Any]] = None           # its LoraConfig (peft's to_dict())
    base_fingerprint: Optional[str] = None                    # sha256 of the base weights LoRA adapts
    stopping: Optional[Dict[str, Any]] = None                 # the stopping rule's record (see StopRule)

    def save_adapter(self, folder: Union[str, os.PathLike], *, overwrite: bool = False) -> str:
        """Write the HDS edit as an unmerged PEFT adapter (``adapter_config.json``,
        ``adapter_model.safetensors``, loadable with ``peft.PeftModel.from_pretrained(base, folder)``) plus
        ``steu_hds.json`` (base fingerprint, parameter counts, config). The base model's weights are not
        in it: the edit stays small and reversible (:func:`load_adapter` / :func:`remove_adapter`)."""
        if self.adapter_state is None or self.adapter_config is None:
            raise ValueError("this result has no adapter (adapter='none' trains every parameter): save the "
                             "model instead")
        return save_adapter(folder, self.adapter_state, self.adapter_config, self.base_fingerprint,
                            {"params": self.params, "config": self.config, "stopping": self.stopping},
                            overwrite=overwrite)


# ---------------------------------------------------------------------------------------------------
# the data order, shared by unlearn() and the HF HDSTrainer


def epoch_order(n: int, seed: int, epoch: int) -> List[int]:
    """The order of the forget examples in ``epoch``: a seeded permutation of ``range(n)``."""
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + 7_919 * (int(epoch) + 1)) % (2 ** 63))
    return torch.randperm(n, generator=g).tolist()


def retain_position(n_forget: int, n_retain: int, seed: int, epoch: int, i: int) -> int:
    """The retain example paired with forget example ``i`` in ``epoch``: position ``epoch * n_forget + i``
    of consecutive seeded permutations of the retain set (each retain example once per cycle)."""
    cycle, pos = divmod(int(epoch) * n_forget + int(i), n_retain)
    return int(_retain_perm(int(n_retain), int(seed), cycle)[pos])


@functools.lru_cache(maxsize=4)
def _retain_perm(n_retain: int, seed: int, cycle: int) -> torch.Tensor:
    g = torch.Generator().manual_seed((seed * 1_000_003 + cycle) % (2 ** 63))
    return torch.randperm(n_retain, generator=g)


def _ref_sums(model, examples, pad_id, batch_size=32, autocast_dtype: Optional[str] = None) -> None:
    """The original model's weighted log-likelihood sums (NPO's s_ref), stored as ``ref`` per example;
    under the training's autocast, so that s - s_ref starts at 0."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad(), _autocast(device, autocast_dtype):
        for i in range(0, len(examples), batch_size):
            part = examples[i:i + batch_size]
            b = collate(part, pad_id)
            lp = token_logprobs(model, b["input_ids"].to(device), b["attention_mask"].to(device))
            s = (lp * b["fw"][:, 1:].to(device)).sum(1).cpu()
            for e, v in zip(part, s):
                e["ref"] = v
    model.train(was)


@dataclass
class HDSPlan:
    """What :func:`prepare` hands to the training loop (:func:`unlearn` or ``HDSTrainer``)."""
    config: HDSConfig
    forget_examples: List[Dict[str, Any]]
    retain_examples: List[Dict[str, Any]]
    pad_id: int
    model: nn.Module                        # the trainable copy (peft-wrapped with LoRA)
    original: Dict[str, torch.Tensor]       # the copy's parameters before any change, by name
    reference: Optional[nn.Module]          # the frozen original for the KL retain loss without LoRA


def prepare(model: nn.Module, tokenizer, forget: Sequence[QAItem], retain: Sequence[QAItem], *,
            hierarchy: Optional[ConceptHierarchy] = None, config: Optional[HDSConfig] = None,
            original_device: Optional[Union[str, torch.device]] = None) -> HDSPlan:
    """HDS's steps before training, shared by :func:`unlearn` and the HF ``HDSTrainer``: validate, tag and
    encode the items, deep-copy ``model`` (never modified), snapshot its parameters (on
    ``original_device``, default: where they are), compute NPO's reference sums, and wrap LoRA adapters
    (or make every parameter trainable, with a frozen reference copy for the KL retain loss)."""
    cfg = copy.deepcopy(config) if config is not None else HDSConfig()
    cfg.validate()
    if not forget:
        raise ValueError("the forget set is empty")
    if cfg.retain_loss != "none" and not retain:
        raise ValueError("the retain set is empty")
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("HDS needs a fast tokenizer (offset mapping)")
    if cfg.token_interventions and hierarchy is None:
        log.warning("HDS: no concept hierarchy given: token interventions are off")
    if hierarchy is not None and cfg.forget_domains is not None:
        missing = set(cfg.forget_domains) - set(hierarchy.domains)
        if missing:
            raise ValueError(f"forget domain(s) {sorted(missing)} not in the hierarchy ({hierarchy.domains})")
    pad = pad_id(tokenizer)
    fex = encode_examples(tokenizer, forget, cfg, forget=True, hierarchy=hierarchy)
    rex = encode_examples(tokenizer, retain, cfg, forget=False) if cfg.retain_loss != "none" else []
    work = copy.deepcopy(model)
    original = {n: p.detach().to(original_device or p.device, copy=True) for n, p in work.named_parameters()}
    if cfg.forget_loss == "npo":
        _ref_sums(work, fex, pad, autocast_dtype=cfg.autocast_dtype)
    reference = None
    if cfg.adapter == "lora":
        work = wrap_lora(work, cfg)
    else:
        if cfg.retain_loss == "kl":
            reference = copy.deepcopy(work).eval().requires_grad_(False)
        work.requires_grad_(True)
    return HDSPlan(cfg, fex, rex, pad, work, original, reference)


def make_optimizer(params: List[torch.Tensor], cfg: HDSConfig) -> torch.optim.Optimizer:
    """The optimizer ``cfg.optimizer`` names, over ``params``."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    return torch.optim.SGD(params, lr=cfg.lr)


def unlearn(model: nn.Module, tokenizer, forget: Sequence[QAItem], retain: Sequence[QAItem], *,
            hierarchy: Optional[ConceptHierarchy] = None, config: Optional[HDSConfig] = None,
            monitor: Optional[Callable[[nn.Module, int], bool]] = None, progress: Optional[bool] = None,
            merge: bool = True) -> HDSResult:
    """Unlearn the ``forget`` items' knowledge from a causal LM while keeping the ``retain`` items'.

    Works on a deep copy: ``model`` is not modified. Epoch ``e`` visits the forget examples in
    :func:`epoch_order` ``(n, seed, e)``, in batches of ``batch_size``, each with its paired retain example
    (:func:`retain_position`), at a constant learning rate, clipping only with ``clip_norm``: the same
    computation as ``HDSTrainer`` (with ``per_device_train_batch_size=batch_size``). ``monitor(model,
    epoch)`` is called after every epoch (model in its trainable form) and stops training when it returns
    True; a :class:`StopRule` monitor also restores its best epoch when its rule was never met
    (``finish``) and its record lands in ``result.stopping``. Token interventions need ``hierarchy``;
    without one they are off (a warning says so). ``config.autocast_dtype="bfloat16"`` trains under bf16
    autocast; a model loaded in bf16 works as it is (the merged result keeps its dtype, so the merge
    rounds the LoRA update to bf16). With LoRA, ``merge=False`` returns the peft model with the adapter
    unmerged (``result.save_adapter`` writes the adapter either way).
    """
    t0 = time.perf_counter()
    torch.manual_seed(config.seed if config is not None else HDSConfig().seed)
    plan = prepare(model, tokenizer, forget, retain, hierarchy=hierarchy, config=config)
    cfg, fex, rex, pad = plan.config, plan.forget_examples, plan.retain_examples, plan.pad_id
    work, original, reference = plan.model, plan.original, plan.reference
    device = next(work.parameters()).device
    params = [p for p in work.parameters() if p.requires_grad]
    trainable_before = {n: p.detach().clone() for n, p in work.named_parameters() if p.requires_grad}
    grad = HDSGradient(cfg, params, reference)
    opt = make_optimizer(params, cfg)
    t_prep = time.perf_counter()

    work.eval()  # dropout off: the frozen parts compute what the original did
    history: List[Dict[str, float]] = []
    steps, epochs = 0, 0
    bar = None
    if show_progress(progress):
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.epochs, desc="HDS", unit="epoch")
    for epoch in range(cfg.epochs):
        order = epoch_order(len(fex), cfg.seed, epoch)
        sums = None
        for s in range(0, len(order), cfg.batch_size):
            part = order[s:s + cfg.batch_size]
            fb = {k: v.to(device) for k, v in collate([fex[i] for i in part], pad).items()}
            rb = None
            if rex:
                ri = [retain_position(len(fex), len(rex), cfg.seed, epoch, i) for i in part]
                rb = {k: v.to(device) for k, v in collate([rex[i] for i in ri], pad).items()}
            opt.zero_grad(set_to_none=True)
            terms = grad.accumulate(work, fb, rb)
            opt.step()
            steps += 1
            t = torch.stack([terms["forget_loss"], terms["keep_loss"]])
            sums = t if sums is None else sums + t
        epochs = epoch + 1
        n = (len(order) + cfg.batch_size - 1) // cfg.batch_size
        history.append({"epoch": epoch, "forget_loss": float(sums[0]) / n, "keep_loss": float(sums[1]) / n})
        if bar is not None:
            bar.update(1)
            h = history[-1]
            bar.set_postfix(forget=f"{h['forget_loss']:.3f}", keep=f"{h['keep_loss']:.3f}")
        if monitor is not None and monitor(work, epoch):
            break
    if bar is not None:
        bar.close()
    stopping = None
    if isinstance(monitor, StopRule):
        monitor.finish(work)
        stopping = monitor.record()
    t_train = time.perf_counter()

    changed = sum(int((p.detach() != trainable_before[n]).sum()) for n, p in work.named_parameters()
                  if n in trainable_before)
    trainable = sum(t.numel() for t in trainable_before.values())
    total = sum(t.numel() for t in original.values())
    adapter = adapter_state = adapter_cfg = fingerprint = None
    if cfg.adapter == "lora":
        adapter = {n: p.detach().cpu().clone() for n, p in work.named_parameters() if p.requires_grad}
        adapter_state, adapter_cfg, fingerprint = adapter_of(work)
        dense = merged_changes(work)
        if merge:
            work = work.merge_and_unload()
    else:
        dense = sum(int((p.detach() != original[n]).sum()) for n, p in work.named_parameters())
    work.requires_grad_(False)
    info = {"trainable": trainable, "modified": changed, "total": total, "percent": 100.0 * changed / total,
            "trainable_percent": 100.0 * trainable / total, "merged_modified": dense,
            "merged_percent": 100.0 * dense / total}
    seconds = {"prepare": t_prep - t0, "train": t_train - t_prep, "total": time.perf_counter() - t0}
    return HDSResult(work, adapter, info, history, seconds, steps, epochs, asdict(cfg), adapter_state,
                     adapter_cfg, fingerprint, stopping)


class StopRule:
    """A ``monitor`` (for :func:`unlearn` or ``HDSTrainer``) with a record of every check and, with
    ``keep_best``, a snapshot of the trainable parameters at the best check so far; :meth:`finish` puts
    that snapshot back when the rule was never met."""

    def __init__(self, keep_best: bool = True):
        self.keep_best = bool(keep_best)
        self.trace: List[Dict[str, Any]] = []
        self.met_at: Optional[int] = None
        self.best: Optional[Tuple[Tuple[float, ...], int]] = None
        self._best_state: Optional[Dict[str, torch.Tensor]] = None
        self.restored = False

    def check(self, model: nn.Module, epoch: int) -> Tuple[bool, Tuple[float, ...], Dict[str, Any]]:
        """(met, score to minimise, figures) of the model after ``epoch``."""
        raise NotImplementedError

    def __call__(self, model: nn.Module, epoch: int) -> bool:
        met, score, figs = self.check(model, epoch)
        self.trace.append({"epoch": int(epoch), "met": bool(met), **figs})
        if self.best is None or score < self.best[0]:
            self.best = (score, int(epoch))
            if self.keep_best:
                self._best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        if met and self.met_at is None:
            self.met_at = int(epoch)
        return bool(met)

    def finish(self, model: nn.Module) -> None:
        """After training: when the rule was never met and ``keep_best``, load the best check's trainable
        parameters into ``model``."""
        if self.met_at is None and self.keep_best and self._best_state is not None and self.trace \
                and self.best[1] != self.trace[-1]["epoch"]:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in self._best_state:
                        p.copy_(self._best_state[n])
            self.restored = True

    def record(self) -> Dict[str, Any]:
        return {"rule": type(self).__name__, "met": self.met_at is not None, "met_at_epoch": self.met_at,
                "best_epoch": None if self.best is None else self.best[1], "restored_best": self.restored,
                "trace": list(self.trace)}


def estimate_question_target(model: nn.Module, tokenizer, never_taught: Sequence[QAItem], *,
                             max_length: int = 64, long_answer: bool = False,
                             exclude: Sequence[QAItem] = ()) -> Dict[str, Any]:
    """``question_target`` for ``question_weight > 0``, estimated on items the model was never taught:
    the median of :func:`question_nll` of ``model`` (the original) over ``never_taught``. ``exclude``
    (e.g. the items reported as MIA non-members, and the forget and retain items) must not overlap them:
    ``ValueError`` when it does. Returns ``{"value", "n", "median", "mean", "ids"}``."""
    if not never_taught:
        raise ValueError("estimating question_target needs never-taught items")
    clash = {i.id for i in never_taught} & {i.id for i in exclude}
    if clash:
        raise ValueError(f"{len(clash)} of the items for question_target are also taught, unlearned or reported "
                         f"items (e.g. {sorted(clash)[:3]}): use held-out items the model never saw")
    q = question_nll(model, tokenizer, never_taught, max_length=max_length, long_answer=long_answer)
    return {"value": float(q.median()), "n": len(never_taught), "median": float(q.median()),
            "mean": float(q.mean()), "ids": [i.id for i in never_taught]}


@torch.no_grad()
def question_nll(model: nn.Module, tokenizer, items: Sequence[QAItem], *, max_length: int = 64,
                 long_answer: bool = False, batch_size: int = 32) -> torch.Tensor:
    """Per item, the mean NLL (nats per token) of its question's tokens in the training text, ``[N]``
    float64: the quantity ``question_target`` is compared with. Its median over questions ``model``
    never saw (and that are not the MIA's held-out items) is a proxy for the never-seen level."""
    if not items:
        raise ValueError("question_nll of an empty item list")
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    out = []
    try:
        for i in range(0, len(items), batch_size):
            part = items[i:i + batch_size]
            ex = []
            for it in part:
                e = encode_qa(tokenizer, prompt_of(it), continuation_of(it, long_answer=long_answer), max_length)
                q = _question_mask(e["offsets"], prompt_of(it), it.question)
                ex.append({"input_ids": e["input_ids"], "fw": q, "kw": torch.zeros_like(q)})
            b = collate(ex, pad)
            lp = token_logprobs(model, b["input_ids"].to(device), b["attention_mask"].to(device)).cpu().double()
            w = b["fw"][:, 1:].double()
            out.append(-(w * lp).sum(1) / w.sum(1).clamp_min(1))
    finally:
        model.train(was)
    return torch.cat(out)


# compatibility shim (PEP 562, lazy so that importing this module never imports eval/ or experiments/):
# the stopping rules moved to steu_ext.eval.stopping, the offline protocol's tiny LM to
# steu_ext.experiments.tiny_models; hds.<name> keeps working for these names.
_MOVED = {"ForgettingStop": "steu_ext.eval.stopping", "IndistinguishableStop": "steu_ext.eval.stopping",
          "forgetting_monitor": "steu_ext.eval.stopping", "wordpiece_tokenizer": "steu_ext.experiments.tiny_models",
          "tiny_causal_lm": "steu_ext.experiments.tiny_models", "teach": "steu_ext.experiments.tiny_models",
          "accuracy": "steu_ext.eval.qa"}  # accuracy: was reachable as hds.accuracy (imported from eval.qa)


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
