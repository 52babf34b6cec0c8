"""STEU inside the Hugging Face ``Trainer`` loop, a row-sparse optimizer factory and one-call loading of
edits onto a ``from_pretrained`` base. Re-exported by :mod:`steu_ext.integrations.hf`; the HDS trainer is in
:mod:`steu_ext.integrations.hf_hds`.

    from transformers import TrainingArguments
    from steu_ext.integrations.hf import STEUTrainer, load_edited
    from steu_ext.methods.steu import STEUConfig

    args = TrainingArguments(output_dir="out", num_train_epochs=5, per_device_train_batch_size=16,
                             lr_scheduler_type="constant", save_steps=50, use_cpu=True)
    trainer = STEUTrainer(model, args, processing_class=tok, texts=train_texts, labels=train_labels,
                          target="sepsis", class_names=names, steu_config=STEUConfig(k=256),
                          eval_dataset=None)          # or STEUTrainer.encode(...) of held-out documents
    trainer.train()                                   # or .train(resume_from_checkpoint=True)
    trainer.edit().save("forget_sepsis.safetensors")  # exactly what changed, old and new values
    model = load_edited("my-finetuned-clinical-bert", "forget_sepsis.safetensors")

Who decides what: ``STEUConfig`` holds the method (k, measure, alpha, min_count, lr for the rows,
head_lr, weight_decay, utility_weight = lambda, max_length, train_embeddings/train_head, head_modules,
multi_label); ``TrainingArguments`` holds the loop (num_train_epochs/max_steps, per-device batch size,
gradient accumulation, lr scheduler and warmup, max_grad_norm, mixed precision, logging, evaluation,
saving, seed). ``STEUConfig.epochs``/``batch_size``/``seed`` are not used by ``STEUTrainer``.
``TrainingArguments.learning_rate`` (when set) is the selected rows' rate (``STEUConfig.lr``; the head keeps
``STEUConfig.head_lr``), ``weight_decay`` (when set) is applied decoupled as in AdamW, ``adam_beta1/2`` and
``adam_epsilon`` are the optimizer's; an ``optim`` other than AdamW is not used (a warning says so: the
row-sparse update needs :class:`~steu_ext.optim.RowSparseAdam`). ``lr_scheduler_type="constant"`` and
``max_grad_norm=0`` reproduce :func:`~steu_ext.methods.steu.unlearn`'s optimisation.

Design:

* **Batches.** A training example is one forget document paired with one retain document
  (:class:`STEUPairDataset`); an epoch is one pass over the forget documents, as in ``unlearn``. The
  retain documents cycle alongside: example ``i`` of epoch ``e`` takes position ``e * N_f + i`` of an
  endless sequence of seeded permutations of the retain set, so every retain document is used equally
  often and the pairing depends only on (seed, epoch, i), never on global RNG state. The collator
  (:class:`STEUCollator`) pads the B forget and B retain documents into one ``[2B, L]`` batch, with a
  row mask ``steu_forget`` and the teacher logits ``steu_teacher_logits`` (z0 of the frozen original
  model, computed once at construction for every retain document, so no second model is held).
  Examples are not dicts, so the Trainer's unused-column removal passes them through untouched.
* **Loss.** ``L = forget_loss(z[forget]) + lambda * utility_loss(z[retain], z0)
  [+ mu * representation_loss(h[forget])]``, the functions of ``methods/steu.py``: with the default
  ``objective="representation"`` the class directions are fitted on the original model at construction
  (and refitted every ``repr_refit_every`` epochs) exactly as :func:`~steu_ext.methods.steu.unlearn`
  does; ``objective="paper"`` drops the term. The terms are averaged over the logging window and logged
  as ``forget_loss``, ``utility_loss`` (and ``repr_loss``) next to the Trainer's ``loss``. The directions
  in force are saved in every checkpoint's STEU state, so a resume continues with them.
* **Dropout.** ``compute_loss`` puts the model in eval mode before the forward pass (``training_step``
  has just called ``model.train()``), as ``unlearn`` does: dropout is off, so the frozen layers compute
  exactly what the original model computed, z0 stays a valid target, and training consumes no RNG.
  (Activation checkpointing in HF models is tied to ``model.training`` and is therefore inactive.)
* **Logging and evaluation.** The loss terms are logged every ``logging_steps`` and at the end of every
  epoch. ``compute_metrics`` reports forget F1, per-class retain F1 and their macro average; ``eval_loss``
  is the model's loss on the evaluation documents *without* the target (usable as
  ``metric_for_best_model``), ``eval_forget_loss`` the loss on those with it (``eval_loss_on="all"``: the
  Trainer's plain loss over every document).
* **Optimizer.** :func:`create_steu_optimizer` freezes every parameter except the embedding table and the
  head, and returns a :class:`~steu_ext.optim.RowSparseAdam` whose embedding group updates only the
  selected rows (fp32 ``[k, D]`` moments); the trainer builds it in ``create_optimizer``. While
  ``train()`` runs, a gradient hook zeroes the embedding gradient outside the selected rows, so the
  Trainer's gradient norm, clipping (``max_grad_norm``) and any all-reduce see only what is trained.
* **Checkpoints and exact resume.** Checkpoints are the Trainer's (model, ``optimizer.pt`` = the
  RowSparseAdam ``state_dict`` including each group's ``rows``, scheduler, RNG, trainer state) plus
  ``steu_state.safetensors``: the selected rows, their original values and the original head (what
  :meth:`STEUTrainer.edit` diffs against), the teacher logits and a fingerprint of the tokenized corpus.
  ``train(resume_from_checkpoint=...)`` restores these and refuses a checkpoint made for another
  corpus or selection. With dropout off, pairing independent of RNG, the Trainer's seeded sampler and
  skipping of already-seen batches, a resumed run ends with bit-identical weights and optimizer state.
* **Mixed precision.** ``bf16``/``fp16`` autocast the forward pass only; parameters, gradients and the
  optimizer's moments stay fp32 (the Trainer does not cast the model), and the losses are computed on
  fp32 logits. z0 is computed in full precision, so under autocast the utility loss starts slightly
  above its floor.
* **Distributed data parallel.** Parameters are frozen in ``__init__``, before the Trainer wraps the
  model, so DDP registers only the embedding table and the head; both are used by every forward pass
  (no unused parameters). The selected rows' gradients are ordinary dense gradients of the embedding
  weight (zero outside the rows), all-reduced by DDP like any other; every rank then applies the same
  row-sparse update. Note that the all-reduce moves the whole ``[V, D]`` embedding gradient. Each rank
  computes z0 for all retain documents at construction. FSDP, DeepSpeed and nn.DataParallel-free model
  parallelism are not supported (a sharded embedding table cannot be updated row-sparsely here).
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import weakref
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from ..eval.metrics import per_class_f1, unlearning_f1
from ..methods.edit import STEUEdit
from ..methods.steu import (
    STEUConfig,
    class_directions,
    forget_loss,
    prepare,
    representation_loss,
    steu_param_groups,
    utility_loss,
)
from ..modeling.encoders import (
    Encoded,
    embedding_param_name,
    find_head,
    last_hidden,
    predict_logits,
    predictions,
)
from ..modeling.labels import label_matrix, resolve_target
from ..modeling.params import read_tensor
from ..optim import RowSparseAdam

log = logging.getLogger("steu_ext")

__all__ = ["STEUTrainer", "STEUPairDataset", "STEUExample", "STEUCollator", "EncodedDataset",
           "encode_dataset", "steu_compute_metrics", "create_steu_optimizer", "mask_embedding_grad",
           "load_edited", "release_steu_optimizer", "STATE_NAME"]

STATE_NAME = "steu_state.safetensors"
_STATE_FORMAT = "steu_ext.hf_state/1"


# ---------------------------------------------------------------------------------------------------
# optimizer factory


def mask_embedding_grad(weight: torch.Tensor, rows) -> torch.utils.hooks.RemovableHandle:
    """Register a gradient hook on ``weight`` (``[V, D]``) that zeroes every row not in ``rows``, so that
    gradient norms, clipping and all-reduces see only the rows that are trained. Returns the handle;
    call ``.remove()`` when done."""
    keep = torch.zeros(weight.shape[0], 1, dtype=torch.bool, device=weight.device)
    keep[torch.as_tensor(rows, dtype=torch.long, device=weight.device)] = True

    def hook(grad: torch.Tensor) -> Optional[torch.Tensor]:
        if grad.is_sparse:
            return None
        return grad.masked_fill(~keep.to(grad.device), 0)

    return weight.register_hook(hook)


def create_steu_optimizer(model: nn.Module, rows, *, lr: float, head_lr: Optional[float],
                          weight_decay: float = 0.0, head_modules: Optional[Sequence[str]] = None,
                          adamw: bool = False, mask_grad: bool = True, betas=(0.9, 0.999),
                          eps: float = 1e-8) -> RowSparseAdam:
    """The STEU optimizer for ``model``: embedding ``rows`` (row-sparse, lr ``lr``) plus the classifier
    head (dense, lr ``head_lr``; ``None`` leaves the head frozen) in one
    :class:`~steu_ext.optim.RowSparseAdam` (``adamw=True``: decoupled weight decay).

    Sets ``requires_grad``: every parameter of ``model`` is frozen except the embedding table (when
    ``rows`` is non-empty) and the head, so backward computes nothing else and DDP registers nothing
    else — call it before wrapping the model. With ``mask_grad`` (default) a gradient hook zeroes the
    embedding gradient outside ``rows`` (see :func:`mask_embedding_grad`), so gradient clipping and
    norms cover only the trained rows; the handle is ``optimizer.grad_mask_handle`` (``None`` without a
    hook). Works with ``Trainer(optimizers=(opt, scheduler))`` and in hand-written loops.

    When done, :func:`release_steu_optimizer` removes the hook and gives every parameter back the
    ``requires_grad`` flag it had before this call (kept in ``optimizer.saved_requires_grad``).
    """
    emb_name = embedding_param_name(model)
    rows_t = None if rows is None else torch.as_tensor(rows, dtype=torch.long).reshape(-1)
    head = find_head(model, head_modules) if head_lr is not None else {}
    saved = _requires_grad_flags(model)
    groups = steu_param_groups(model, emb_name, rows_t, head, lr=lr, head_lr=head_lr)
    try:
        opt = RowSparseAdam(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                            decoupled_weight_decay=adamw)
    except BaseException:
        _restore_requires_grad(model, saved)
        raise
    opt.saved_requires_grad = saved
    opt.steu_model = weakref.ref(model)
    opt.grad_mask_handle = None
    if mask_grad and rows_t is not None and rows_t.numel():
        emb = model.get_input_embeddings().weight
        opt.grad_mask_handle = mask_embedding_grad(emb, opt.param_groups[0]["rows"])
    return opt


def _requires_grad_flags(model: nn.Module) -> Dict[str, bool]:
    return {n: p.requires_grad for n, p in model.named_parameters(remove_duplicate=False)}


def _restore_requires_grad(model: nn.Module, flags: Dict[str, bool]) -> None:
    for n, p in model.named_parameters(remove_duplicate=False):
        if n in flags:
            p.requires_grad_(flags[n])


def release_steu_optimizer(optimizer: RowSparseAdam, model: Optional[nn.Module] = None) -> None:
    """Undo :func:`create_steu_optimizer`'s side effects on the model: remove the gradient-masking hook and
    restore every parameter's previous ``requires_grad`` flag. Idempotent; the optimizer itself (its state,
    ``state_dict``) stays usable."""
    handle = getattr(optimizer, "grad_mask_handle", None)
    if handle is not None:
        handle.remove()
        optimizer.grad_mask_handle = None
    flags = getattr(optimizer, "saved_requires_grad", None)
    if model is None:
        ref = getattr(optimizer, "steu_model", None)
        model = ref() if ref is not None else None
    if flags is not None and model is not None:
        _restore_requires_grad(model, flags)
        optimizer.saved_requires_grad = None


# ---------------------------------------------------------------------------------------------------
# data


@dataclass
class STEUExample:
    """One training example: a forget document, a retain document (token ids) and the frozen original
    model's logits on the retain document. Deliberately not a dict (see the module notes)."""
    forget_ids: List[int]
    retain_ids: List[int]
    teacher_logits: torch.Tensor


class STEUPairDataset(Dataset):
    """Example ``i`` = (forget document ``i``, the retain document at position ``epoch * N_f + i`` of an
    endless sequence of seeded permutations of the retain set). ``len`` = number of forget documents."""

    def __init__(self, data: Encoded, forget: Sequence[int], retain: Sequence[int],
                 teacher_logits: Optional[torch.Tensor], seed: int = 0):
        if not forget or not retain:
            raise ValueError("STEU needs at least one forget and one retain document")
        self.data, self.forget, self.retain = data, list(forget), list(retain)
        self.teacher_logits = teacher_logits
        self.seed = int(seed)
        self.epoch = 0
        self._perms: Dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.forget)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _perm(self, cycle: int) -> torch.Tensor:
        perm = self._perms.get(cycle)
        if perm is None:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + cycle) % (2 ** 63))
            perm = torch.randperm(len(self.retain), generator=g)
            if len(self._perms) >= 4:
                self._perms.pop(min(self._perms))
            self._perms[cycle] = perm
        return perm

    def retain_position(self, i: int, epoch: Optional[int] = None) -> int:
        """Index into ``self.retain`` of the retain document paired with forget document ``i``."""
        e = self.epoch if epoch is None else int(epoch)
        cycle, pos = divmod(e * len(self.forget) + int(i), len(self.retain))
        return int(self._perm(cycle)[pos])

    def __getitem__(self, i: int) -> STEUExample:
        if self.teacher_logits is None:
            raise RuntimeError("the teacher logits have not been computed")
        r = self.retain_position(i)
        return STEUExample(self.data.input_ids[self.forget[i]], self.data.input_ids[self.retain[r]],
                           self.teacher_logits[r])


class EncodedDataset(Dataset):
    """Tokenized documents with labels in the model's format (``[C]`` float 0/1 for multi-label heads,
    a class id for single-label heads): items ``{"input_ids": [...], "labels": ...}``."""

    def __init__(self, data: Encoded, multi_label: bool):
        self.data, self.multi_label = data, multi_label
        if not multi_label and bool((data.labels.sum(1) != 1).any()):
            raise ValueError("a single-label (softmax) model needs exactly one label per document")

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        y = self.data.labels[i]
        label = y.clone() if self.multi_label else int(y.argmax())
        return {"input_ids": self.data.input_ids[i], "labels": label}


def encode_dataset(tokenizer, texts: Sequence[str], labels, num_classes: int, *, multi_label: bool,
                   max_length: int = 128) -> EncodedDataset:
    """An evaluation dataset for :class:`STEUTrainer` (or any Trainer using :class:`STEUCollator`)."""
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    data = Encoded(tokenizer, texts, label_matrix(labels, num_classes), max_length)
    return EncodedDataset(data, multi_label)


class STEUCollator:
    """Pads STEU training examples into one ``[2B, L]`` batch (B forget rows, then B retain rows) with
    ``steu_forget`` (bool ``[2B]``) and ``steu_teacher_logits`` (``[2B, C]``, zero on forget rows); pads
    plain dict features (``input_ids`` [, ``token_type_ids``, ``attention_mask``, ``labels``]) as usual.
    Right padding with ``pad_token_id``."""

    def __init__(self, pad_token_id: Optional[int] = 0, pad_to_multiple_of: Optional[int] = None):
        self.pad_token_id = 0 if pad_token_id is None else int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    def _pad(self, seqs: List[Sequence[int]], value: int) -> torch.Tensor:
        L = max(len(s) for s in seqs)
        if self.pad_to_multiple_of:
            L = -(-L // self.pad_to_multiple_of) * self.pad_to_multiple_of
        out = torch.full((len(seqs), L), value, dtype=torch.long)
        for r, s in enumerate(seqs):
            out[r, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        return out

    def _mask(self, seqs: List[Sequence[int]], like: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros_like(like)
        for r, s in enumerate(seqs):
            mask[r, :len(s)] = 1
        return mask

    def __call__(self, features: List[Any]) -> Dict[str, torch.Tensor]:
        if not features:
            raise ValueError("empty batch")
        if isinstance(features[0], STEUExample):
            if not all(isinstance(f, STEUExample) for f in features):
                raise ValueError("a batch mixes STEU training examples with other features")
            seqs = [f.forget_ids for f in features] + [f.retain_ids for f in features]
            ids = self._pad(seqs, self.pad_token_id)
            B = len(features)
            z0 = torch.stack([torch.as_tensor(f.teacher_logits) for f in features]).float()
            return {"input_ids": ids, "attention_mask": self._mask(seqs, ids),
                    "steu_forget": torch.arange(2 * B) < B,
                    "steu_teacher_logits": torch.cat([torch.zeros_like(z0), z0])}
        if not all(isinstance(f, Mapping) and "input_ids" in f for f in features):
            raise ValueError("STEUCollator expects STEUExample items or dicts with 'input_ids' (if the "
                             "Trainer removed the columns, pass remove_unused_columns=False)")
        seqs = [list(f["input_ids"]) for f in features]
        ids = self._pad(seqs, self.pad_token_id)
        batch = {"input_ids": ids}
        if "attention_mask" in features[0]:
            batch["attention_mask"] = self._pad([list(f["attention_mask"]) for f in features], 0)
        else:
            batch["attention_mask"] = self._mask(seqs, ids)
        if "token_type_ids" in features[0]:
            batch["token_type_ids"] = self._pad([list(f["token_type_ids"]) for f in features], 0)
        key = "labels" if "labels" in features[0] else "label" if "label" in features[0] else None
        if key is not None:
            ys = [f[key] for f in features]
            if isinstance(ys[0], torch.Tensor):
                batch["labels"] = torch.stack([torch.as_tensor(y) for y in ys])
            else:
                batch["labels"] = torch.as_tensor(ys)
        return batch


# ---------------------------------------------------------------------------------------------------
# metrics


def steu_compute_metrics(target: int, label_names: Sequence[str],
                         multi_label: bool) -> Callable[[Any], Dict[str, float]]:
    """A ``compute_metrics`` for the Trainer: ``forget_f1`` (the target class), ``retain_macro_f1`` and
    ``f1_<class>`` for every retain class (spaces in names become ``_``), from per-class binary F1
    (:mod:`steu_ext.eval.metrics`). Labels may be class ids ``[N]`` or a 0/1 matrix ``[N, C]``."""
    names = list(label_names)

    def compute(pred) -> Dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, (tuple, list)) else pred.predictions
        z = torch.as_tensor(np.asarray(logits, dtype=np.float32))
        y = torch.as_tensor(np.asarray(pred.label_ids))
        if y.dim() == 1:
            y = torch.nn.functional.one_hot(y.long(), z.shape[-1])
        else:
            y = (y > 0.5).long()
        u = unlearning_f1(per_class_f1(y, predictions(z, multi_label)), target, names)
        out = {"forget_f1": u["forget_f1"], "retain_macro_f1": u["retain_macro_f1"]}
        for name, v in u["retain_f1"].items():
            out["f1_" + "_".join(str(name).split())] = v
        return out

    return compute


# ---------------------------------------------------------------------------------------------------
# the trainer


def _config_label_names(model: nn.Module) -> Optional[List[str]]:
    id2label = getattr(getattr(model, "config", None), "id2label", None) or {}
    names = [str(id2label[i]) for i in sorted(id2label)] if id2label else []
    if not names or all(n.startswith("LABEL_") for n in names):
        return None
    return names


def _fingerprint(data: Encoded, forget: Sequence[int], retain: Sequence[int]) -> str:
    h = hashlib.sha256()
    for ids in data.input_ids:
        h.update(np.asarray(ids, dtype=np.int64).tobytes())
        h.update(b"|")
    h.update(data.labels.numpy().astype(np.float32).tobytes())
    h.update(np.asarray(forget, dtype=np.int64).tobytes())
    h.update(np.asarray(retain, dtype=np.int64).tobytes())
    return h.hexdigest()


_ADAM_OPTIMS = frozenset({"adamw_torch", "adamw_torch_fused", "adamw_hf", "adamw_apex_fused", "adamw_torch_xla",
                          "adamw_torch_npu_fused"})


def _ta_default(name: str):
    import dataclasses

    f = TrainingArguments.__dataclass_fields__[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _apply_training_args(args: TrainingArguments, cfg: STEUConfig) -> Dict[str, Any]:
    """Map the optimisation settings of ``args`` onto ``cfg`` (in place) where they mean the same thing,
    and warn about those set but unused. Returns the extra optimizer options (betas, eps, adamw).

    ``learning_rate`` (when not the Trainer's default) is the selected rows' rate, ``STEUConfig.lr``
    (the head keeps ``STEUConfig.head_lr``); ``weight_decay`` (when not 0) is applied decoupled, as the
    Trainer's AdamW does; ``adam_beta1/2`` and ``adam_epsilon`` are RowSparseAdam's. A rate or decay set
    differently in both places is a ``ValueError``. ``optim`` other than an AdamW variant is not used (the
    row-sparse update needs RowSparseAdam): a warning says so."""
    defaults = STEUConfig()
    extra: Dict[str, Any] = {"betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon,
                             "adamw": False}
    for ta_name, cfg_name in (("learning_rate", "lr"), ("weight_decay", "weight_decay")):
        value, mine = getattr(args, ta_name), getattr(cfg, cfg_name)
        if value == _ta_default(ta_name):
            continue
        if mine != getattr(defaults, cfg_name) and mine != value:
            raise ValueError(f"TrainingArguments.{ta_name}={value} and STEUConfig.{cfg_name}={mine} disagree: "
                             f"set one of them (STEUTrainer uses {ta_name} as STEUConfig.{cfg_name})")
        setattr(cfg, cfg_name, value)
        if ta_name == "weight_decay":
            extra["adamw"] = True
    optim = str(getattr(args.optim, "value", args.optim))
    if optim not in _ADAM_OPTIMS:
        log.warning("STEUTrainer does not use TrainingArguments.optim=%r: the selected embedding rows and the "
                    "head are trained with the row-sparse Adam(W) steu_ext.optim.RowSparseAdam (learning_rate, "
                    "weight_decay, adam_beta1/2 and adam_epsilon are honoured)", optim)
    return extra


class _STEUCallback(TrainerCallback):
    """Keeps the pair dataset's epoch in step with the loop (also where accelerate does not forward
    ``set_epoch``, e.g. DDP with a seedable sampler) and writes the STEU state into every checkpoint."""

    def __init__(self, trainer: "STEUTrainer"):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        epoch = int(state.epoch or 0)
        self.trainer.train_dataset.set_epoch(epoch)
        self.trainer._refit_directions(epoch)

    def on_epoch_end(self, args, state, control, **kwargs):
        # forget_loss / utility_loss at least once per epoch, whatever logging_steps says
        if self.trainer._steu_count:
            control.should_log = True

    def on_save(self, args, state, control, **kwargs):
        if not args.should_save:
            return
        ckpt = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if os.path.isdir(ckpt):
            self.trainer.save_steu_state(ckpt)
        else:
            log.warning("checkpoint folder %s not found: STEU state not saved", ckpt)


class STEUTrainer(Trainer):
    """Unlearn class ``target`` from ``model`` with STEU inside the standard HF training loop.

    ``texts``/``labels`` are the training corpus (labels: class ids, lists of ids, or a ``[N, C]`` 0/1
    matrix); documents carrying the target form the forget set, the others the retain set. ``target``
    is a class name (``class_names``, default the model's ``id2label`` when it names the classes) or
    index. Construction tokenizes the corpus (``steu_config.max_length``), counts documents per token and
    class, scores tokens (``measure``) and selects the top ``k`` rows excluding the tokenizer's special
    ids, computes the original model's logits on the retain documents and freezes every parameter but
    the embedding table and the head. ``train()`` then trains the selected rows and the head with
    ``L = L_forget + lambda * L_utility``; :meth:`edit` returns the :class:`~steu_ext.methods.edit.STEUEdit`
    of exactly what changed. See the module docstring for batching, dropout, resume and DDP.
    ``eval_dataset`` items are dicts with ``input_ids`` and ``labels`` (see :func:`encode_dataset`), or
    pass ``eval_texts``/``eval_labels`` to have them encoded like the training corpus; by default
    ``compute_metrics`` reports forget F1, per-class retain F1 and their macro average. Bad input
    (unknown class, k larger than the vocabulary, empty corpus, ...) raises ``ValueError`` before any
    change to the model.
    """

    _FORBIDDEN = ("train_dataset", "data_collator", "model_init", "compute_loss_func",
                  "optimizer_cls_and_kwargs")

    def __init__(self, model: nn.Module, args: Optional[TrainingArguments] = None, *, processing_class,
                 texts: Sequence[str], labels, target: Union[int, str],
                 steu_config: Optional[STEUConfig] = None, class_names: Optional[Sequence[str]] = None,
                 eval_dataset=None, eval_texts: Optional[Sequence[str]] = None, eval_labels=None,
                 compute_metrics: Optional[Callable] = None, encoded: Optional[Encoded] = None,
                 eval_loss_on: str = "retain", label_names: Optional[Sequence[str]] = None, **kwargs):
        if label_names is not None:
            import warnings

            warnings.warn("STEUTrainer(label_names=...) is renamed class_names= (TrainingArguments.label_names "
                          "means the input keys of the labels, not class names)", DeprecationWarning,
                          stacklevel=2)
            if class_names is not None:
                raise ValueError("pass class_names only (label_names is its deprecated name)")
            class_names = label_names
        if eval_loss_on not in ("retain", "all"):
            raise ValueError(f"eval_loss_on must be 'retain' or 'all', got {eval_loss_on!r}")
        for name in self._FORBIDDEN:
            if kwargs.get(name) is not None:
                raise ValueError(f"STEUTrainer builds its own {name}; do not pass one")
        optimizers = kwargs.get("optimizers") or (None, None)
        if optimizers[0] is not None:
            raise ValueError("STEUTrainer creates its own row-sparse optimizer; pass optimizers=(None, "
                             "scheduler) at most, or use create_steu_optimizer with a plain Trainer")
        if model is None:
            raise ValueError("STEUTrainer needs the model to unlearn")
        if processing_class is None:
            raise ValueError("STEUTrainer needs the model's tokenizer (processing_class=...)")
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if args is None:
            args = TrainingArguments(output_dir="tmp_trainer")
        self._check_args(args)
        cfg = copy.deepcopy(steu_config) if steu_config is not None else STEUConfig()
        self._optim_extra = _apply_training_args(args, cfg)
        self.eval_loss_on = eval_loss_on
        self._eval_acc: Optional[torch.Tensor] = None
        names = list(class_names) if class_names is not None else _config_label_names(model)
        # read labels and target strictly here (numpy/pandas/multi-hot rows as matrices, names before positions)
        known = names if names is not None else [str(i) for i in range(model.config.num_labels)]
        if labels is not None and encoded is None:
            labels = label_matrix(labels, len(known))
        target = resolve_target(target, known)

        # 1-3: validate, tokenize, split, count, score, select (the model is not touched)
        plan = prepare(model, tokenizer, texts, labels, target, config=cfg, label_names=names,
                       encoded=encoded, teacher_logits=False)
        if not ((cfg.train_embeddings and plan.rows.numel()) or cfg.train_head):
            raise ValueError("nothing to train: no embedding rows were selected and train_head is off")
        self.steu_config, self.plan = cfg, plan
        params = dict(model.named_parameters(remove_duplicate=False))
        emb = params[plan.embedding]
        # the original values of everything STEU may change: what edit() diffs against
        self._old_rows = emb.detach().index_select(0, plan.rows.to(emb.device)).cpu().clone()
        trained_head = plan.head if cfg.train_head else {}
        self._old_head = {n: p.detach().cpu().clone() for n, p in trained_head.items()}
        self._fingerprint: Optional[str] = None
        self._grad_mask = None
        self._steu_sums: Optional[torch.Tensor] = None
        self._steu_count = 0

        if eval_texts is not None or eval_labels is not None:
            if eval_dataset is not None:
                raise ValueError("pass either eval_dataset or eval_texts/eval_labels, not both")
            if eval_texts is None or eval_labels is None:
                raise ValueError("eval_texts and eval_labels go together")
            eval_dataset = encode_dataset(tokenizer, eval_texts, eval_labels, len(plan.label_names),
                                          multi_label=plan.multi_label, max_length=cfg.max_length)

        seed = args.data_seed if args.data_seed is not None else args.seed
        dataset = STEUPairDataset(plan.data, plan.forget, plan.retain, None, seed=seed)
        metrics = compute_metrics or steu_compute_metrics(plan.target, plan.label_names, plan.multi_label)
        super().__init__(model=model, args=args, data_collator=STEUCollator(tokenizer.pad_token_id),
                         train_dataset=dataset, eval_dataset=eval_dataset, processing_class=processing_class,
                         compute_metrics=metrics, **kwargs)
        self.loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

        # 4: z0 of the frozen original model on the retain documents, once, on the training device
        plan.teacher_logits = predict_logits(self.model, plan.data, plan.retain, batch_size=64)
        dataset.teacher_logits = plan.teacher_logits
        # 5: freeze now, before the Trainer wraps the model (DDP registers only what is trainable); the
        # caller's flags come back after train() (see restore_requires_grad)
        self._caller_requires_grad = _requires_grad_flags(model)
        self._param_groups()
        self.add_callback(_STEUCallback(self))

    # -- construction helpers ---------------------------------------------------------------------

    @staticmethod
    def _check_args(args: TrainingArguments) -> None:
        if args.fsdp or getattr(args, "deepspeed", None):
            raise ValueError("STEUTrainer does not support FSDP or DeepSpeed (the embedding table is updated "
                             "row-sparsely and must not be sharded); use DDP")
        strategy = getattr(args, "train_sampling_strategy", "random")
        if strategy not in ("random", "sequential"):
            raise ValueError(f"train_sampling_strategy={strategy!r} is not supported by STEUTrainer "
                             "(use 'random' or 'sequential')")
        if args.dataloader_persistent_workers and args.dataloader_num_workers > 0:
            raise ValueError("STEUTrainer's pairing of forget and retain documents changes every epoch; "
                             "dataloader_persistent_workers=True would keep stale copies in the workers")

    def _param_groups(self) -> List[Dict[str, Any]]:
        cfg, plan = self.steu_config, self.plan
        return steu_param_groups(self.model, plan.embedding, plan.rows if cfg.train_embeddings else None,
                                 plan.head, lr=cfg.lr, head_lr=cfg.head_lr if cfg.train_head else None)

    def encode(self, texts: Sequence[str], labels) -> EncodedDataset:
        """An evaluation dataset of ``texts``/``labels`` with this trainer's tokenizer, max_length and label
        format."""
        tok = getattr(self.processing_class, "tokenizer", self.processing_class)
        return encode_dataset(tok, texts, labels, len(self.plan.label_names),
                              multi_label=self.plan.multi_label, max_length=self.steu_config.max_length)

    @property
    def selected_tokens(self) -> torch.Tensor:
        """The selected embedding rows (int64, best first)."""
        return self.plan.rows

    # -- optimizer ----------------------------------------------------------------------------------

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            cfg, plan = self.steu_config, self.plan
            self.optimizer = create_steu_optimizer(
                self.model if model is None else model, plan.rows if cfg.train_embeddings else None,
                lr=cfg.lr, head_lr=cfg.head_lr if cfg.train_head else None, weight_decay=cfg.weight_decay,
                head_modules=cfg.head_modules, mask_grad=False,  # train() manages the mask hook
                **self._optim_extra)
        return self.optimizer

    # -- training -----------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: Union[str, bool, None] = None, trial=None,
              ignore_keys_for_eval=None, **kwargs):
        ckpt = resume_from_checkpoint
        if ckpt is True:
            ckpt = get_last_checkpoint(self.args.output_dir)
        if isinstance(ckpt, (str, os.PathLike)):
            self.load_steu_state(ckpt)
        self._check_ranks_agree()
        self._param_groups()   # (re)freeze: a previous train() gave the caller's flags back
        rows = self.plan.rows if self.steu_config.train_embeddings else None
        if rows is not None and rows.numel() and self._grad_mask is None:
            self._grad_mask = mask_embedding_grad(self.model.get_input_embeddings().weight, rows)
        try:
            return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                                 ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)
        finally:
            if self._grad_mask is not None:
                self._grad_mask.remove()
                self._grad_mask = None
            self.restore_requires_grad()

    def restore_requires_grad(self) -> None:
        """Give the model's parameters back the ``requires_grad`` flags they had before this trainer froze
        all but the embedding rows and the head (done at the end of every :meth:`train`)."""
        _restore_requires_grad(self.model, self._caller_requires_grad)

    def _check_ranks_agree(self) -> None:
        """Under DDP every rank must select the same rows from the same corpus (a tokenizer trained per
        process, a different corpus shard, ... would make the ranks update different rows)."""
        import torch.distributed as dist

        if self.args.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
            return
        mine = hashlib.sha256((self.fingerprint() + repr(self.plan.rows.tolist())).encode()).hexdigest()
        everyone: List[Optional[str]] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        if len(set(everyone)) > 1:
            raise ValueError("the DDP ranks disagree on the STEU setup (selected rows or tokenized corpus "
                             "differ): give every process the same corpus, tokenizer and STEUConfig")

    def _refit_directions(self, epoch: int) -> None:
        """``repr_refit_every``: refit the class directions on the edited model (as :func:`unlearn` does)."""
        every = self.steu_config.repr_refit_every
        if self.plan.directions is None or not every or not epoch or epoch % every:
            return
        plan, cfg = self.plan, self.steu_config
        plan.directions = class_directions(self.model, plan.data, plan.forget, plan.retain,
                                           features=cfg.repr_features, C=cfg.repr_C)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "steu_forget" not in inputs:  # evaluation batches: the model's own loss
            if self._eval_acc is not None and "labels" in inputs:
                return self._eval_split_loss(model, inputs, return_outputs)
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        model.eval()  # dropout off (training_step has just called model.train())
        is_forget = inputs["steu_forget"].bool()
        z0 = inputs["steu_teacher_logits"]
        directions = self.plan.directions
        model_inputs = {k: v for k, v in inputs.items() if not k.startswith("steu_")}
        if directions is not None:
            model_inputs["output_hidden_states"] = True
        outputs = model(**model_inputs)
        z = (outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]).float()
        t, multi = self.plan.target, self.plan.multi_label
        lf = forget_loss(z[is_forget], t, multi)
        lu = utility_loss(z[~is_forget], z0[~is_forget].float(), t, multi)
        loss = lf + self.steu_config.utility_weight * lu
        lr_ = z.new_zeros(())
        if directions is not None and bool(is_forget.any()):  # objective="representation" (as in unlearn)
            lr_ = representation_loss(last_hidden(outputs)[is_forget], inputs["attention_mask"][is_forget],
                                      directions)
            loss = loss + self.steu_config.repr_weight * lr_
        if torch.is_grad_enabled():  # training, not a manual evaluation of pair batches
            terms = torch.stack([lf.detach(), lu.detach(), lr_.detach().float()]).float()
            self._steu_sums = terms if self._steu_sums is None else self._steu_sums + terms
            self._steu_count += 1
        return (loss, outputs) if return_outputs else loss

    def _eval_split_loss(self, model, inputs, return_outputs):
        """The model's own loss per evaluation document, summed separately over the documents without the
        target (-> ``eval_loss``) and with it (-> ``eval_forget_loss``); returns the batch's retain mean."""
        y = inputs["labels"]
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        z = (outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]).float()
        t = self.plan.target
        if self.plan.multi_label:
            per_doc = nn.functional.binary_cross_entropy_with_logits(z, y.float(), reduction="none").mean(1)
            forget = y[:, t] > 0.5
        else:
            per_doc = nn.functional.cross_entropy(z, y.long(), reduction="none")
            forget = y.long() == t
        r, f = per_doc[~forget], per_doc[forget]
        acc = torch.stack([r.sum(), r.new_tensor(float(r.numel())), f.sum(), f.new_tensor(float(f.numel()))])
        self._eval_acc = self._eval_acc + acc.detach().double().cpu()
        loss = r.mean() if r.numel() else per_doc.sum() * 0
        return (loss, outputs) if return_outputs else loss

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix: str = "eval"):
        """The Trainer's loop; with ``eval_loss_on="retain"`` (default), ``{prefix}_loss`` is the model's
        loss on the documents that do not carry the target (so it can drive ``metric_for_best_model``) and
        ``{prefix}_forget_loss`` the loss on those that do (it rises as the class is forgotten)."""
        self._eval_acc = torch.zeros(4, dtype=torch.float64) if self.eval_loss_on == "retain" else None
        try:
            out = super().evaluation_loop(dataloader, description, prediction_loss_only=prediction_loss_only,
                                          ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
            acc = self._eval_acc
        finally:
            self._eval_acc = None
        if acc is not None and acc[1] + acc[3] > 0:
            if self.args.world_size > 1:
                acc = self.accelerator.reduce(acc.to(self.args.device), reduction="sum").double().cpu()
            rs, rn, fs, fn = acc.tolist()
            out.metrics[f"{metric_key_prefix}_loss"] = rs / rn if rn else float("nan")
            if fn:
                out.metrics[f"{metric_key_prefix}_forget_loss"] = fs / fn
        return out

    def log(self, logs: Dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and self._steu_count:
            sums = self._steu_sums / self._steu_count
            if self.args.world_size > 1:
                sums = self.accelerator.reduce(sums, reduction="mean")
            logs = {**logs, "forget_loss": float(sums[0]), "utility_loss": float(sums[1])}
            if self.plan.directions is not None:
                logs["repr_loss"] = float(sums[2])
            self._steu_sums, self._steu_count = None, 0
        super().log(logs, *args, **kwargs)

    # -- the edit -----------------------------------------------------------------------------------

    def edit(self) -> STEUEdit:
        """The :class:`~steu_ext.methods.edit.STEUEdit` of exactly what training changed: the selected rows
        with at least one changed element and the head, old and new values."""
        model = self.accelerator.unwrap_model(self.model)
        params = dict(model.named_parameters(remove_duplicate=False))
        plan, cfg = self.plan, self.steu_config
        emb = params[plan.embedding].detach()
        new = emb.index_select(0, plan.rows.to(emb.device)).cpu()
        changed = (new != self._old_rows).any(1)
        ids = plan.rows[changed]
        order = torch.argsort(ids)
        meta = {"method": "steu", "target": plan.target, "target_name": plan.label_names[plan.target],
                "label_names": plan.label_names, "config": asdict(cfg), "selected_tokens": plan.rows.tolist(),
                "multi_label": plan.multi_label, "base_model": getattr(model.config, "_name_or_path", None),
                "trainer": {"integration": "hf", "global_step": self.state.global_step,
                            "epoch": self.state.epoch}}
        return STEUEdit(plan.embedding, ids[order].clone(), self._old_rows[changed][order].clone(),
                        new[changed][order].clone(), {n: t.clone() for n, t in self._old_head.items()},
                        {n: params[n].detach().cpu().clone() for n in self._old_head}, meta)

    def save_edit(self, path: Union[str, os.PathLike]) -> STEUEdit:
        """Save :meth:`edit` (safetensors) and return it."""
        e = self.edit()
        e.save(path)
        return e

    # -- STEU state in checkpoints -------------------------------------------------------------------

    def fingerprint(self) -> str:
        """SHA-256 of the tokenized corpus, its labels and the forget/retain split."""
        if self._fingerprint is None:
            self._fingerprint = _fingerprint(self.plan.data, self.plan.forget, self.plan.retain)
        return self._fingerprint

    def save_steu_state(self, folder: Union[str, os.PathLike]) -> None:
        """Write ``steu_state.safetensors`` (rows, their original values, the original head, the teacher
        logits, the corpus fingerprint) into ``folder`` (a checkpoint)."""
        from safetensors.torch import save_file

        tensors = {"rows": self.plan.rows.contiguous(), "old_rows": self._old_rows.contiguous(),
                   "teacher_logits": self.plan.teacher_logits.contiguous()}
        for n, t in self._old_head.items():
            tensors[f"old_head.{n}"] = t.contiguous()
        dirs = {}
        for f, d in (self.plan.directions or {}).items():  # the representation objective's class directions
            tensors[f"direction.{f}"] = d.w.contiguous()
            dirs[f] = {"b": d.b, "aim": d.aim, "forget_mean": d.forget_mean}
        md = {"format": _STATE_FORMAT, "embedding": self.plan.embedding, "target": str(self.plan.target),
              "head": json.dumps(list(self._old_head)), "fingerprint": self.fingerprint(),
              "directions": json.dumps(dirs)}
        path = os.path.join(os.fspath(folder), STATE_NAME)
        save_file(tensors, path + ".tmp", metadata=md)
        os.replace(path + ".tmp", path)

    def load_steu_state(self, folder: Union[str, os.PathLike]) -> bool:
        """Restore the STEU state saved in checkpoint ``folder`` (False when it has none); raises
        ``ValueError`` when it was made for another corpus, target or token selection."""
        from safetensors import safe_open

        path = os.path.join(os.fspath(folder), STATE_NAME)
        if not os.path.isfile(path):
            log.warning("%s has no %s: resuming with the STEU state computed at construction",
                        folder, STATE_NAME)
            return False
        with safe_open(path, "pt") as f:
            md = f.metadata() or {}
            if md.get("format") != _STATE_FORMAT:
                raise ValueError(f"{path} is not a STEUTrainer state (format {md.get('format')!r})")
            rows = read_tensor(f, "rows")
            if (md.get("target") != str(self.plan.target) or md.get("embedding") != self.plan.embedding
                    or not torch.equal(rows, self.plan.rows) or md.get("fingerprint") != self.fingerprint()
                    or json.loads(md["head"]) != list(self._old_head)):
                raise ValueError(f"checkpoint {folder} was made for a different STEU setup (target, corpus, "
                                 "tokenizer or STEUConfig differ): cannot resume from it")
            self._old_rows = read_tensor(f, "old_rows")
            self._old_head = {n: read_tensor(f, f"old_head.{n}") for n in self._old_head}
            self.plan.teacher_logits = read_tensor(f, "teacher_logits")
            dirs = json.loads(md.get("directions", "{}"))
            if self.plan.directions is not None and set(dirs) == set(self.plan.directions):
                # the directions in force when the checkpoint was written (fitted on the original model, or
                # the latest refit), not those of the model this trainer was built on
                from ..methods.steu import ClassDirection

                self.plan.directions = {k: ClassDirection(k, read_tensor(f, f"direction.{k}"), v["b"], v["aim"],
                                                          v["forget_mean"]) for k, v in dirs.items()}
        self.train_dataset.teacher_logits = self.plan.teacher_logits
        return True


def load_edited(model_name_or_path: Union[str, os.PathLike], edit: Union[str, os.PathLike, STEUEdit], *,
                check: bool = True, **from_pretrained_kw) -> nn.Module:
    """Load the base classifier with ``AutoModelForSequenceClassification.from_pretrained(model_name_or_path,
    **from_pretrained_kw)`` and apply the edit (a path to a saved :class:`STEUEdit`, or the edit itself).
    With ``check`` (default) the base must hold exactly the values the edit was made from."""
    from transformers import AutoModelForSequenceClassification

    e = edit if isinstance(edit, STEUEdit) else STEUEdit.load(edit)
    model = AutoModelForSequenceClassification.from_pretrained(model_name_or_path, **from_pretrained_kw)
    e.apply(model, check=check)
    return model
