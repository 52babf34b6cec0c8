"""HDS (hierarchical dual-strategy knowledge unlearning of causal LMs, :mod:`steu_ext.methods.hds`) inside
the Hugging Face ``Trainer`` loop: :class:`HDSTrainer`, its pair dataset (:class:`HDSPairDataset`),
epoch sampler (:class:`HDSEpochSampler`) and collator (:class:`HDSCollator`), and the name of the HDS state
file in checkpoints (``HDS_STATE_NAME``). Re-exported by :mod:`steu_ext.integrations.hf`; the STEU trainer
is in :mod:`steu_ext.integrations.hf_steu`."""
from __future__ import annotations

import copy
import logging
import os
from dataclasses import asdict
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from ..modeling.params import read_tensor

log = logging.getLogger("steu_ext")

__all__ = ["HDSTrainer", "HDSPairDataset", "HDSCollator", "HDSEpochSampler", "HDS_STATE_NAME"]

HDS_STATE_NAME = "hds_state.safetensors"


class HDSPairDataset(Dataset):
    """Example ``i`` = (forget example ``i``, the retain example :func:`steu_ext.methods.hds.retain_position`
    pairs with it in the current epoch), as in :func:`steu_ext.methods.hds.unlearn`; items are tuples (not
    dicts, so the Trainer's column removal leaves them alone)."""

    def __init__(self, forget: Sequence[Dict[str, Any]], retain: Sequence[Dict[str, Any]], seed: int = 0):
        if not forget:
            raise ValueError("HDS needs at least one forget example")
        self.forget, self.retain = list(forget), list(retain)
        self.seed, self.epoch = int(seed), 0

    def __len__(self) -> int:
        return len(self.forget)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def retain_position(self, i: int) -> int:
        from ..methods.hds import retain_position

        return retain_position(len(self.forget), len(self.retain), self.seed, self.epoch, i)

    def __getitem__(self, i: int):
        return (self.forget[i], self.retain[self.retain_position(i)] if self.retain else None)


class HDSEpochSampler(torch.utils.data.Sampler):
    """The forget examples in :func:`steu_ext.methods.hds.epoch_order` of the current epoch (set by the
    Trainer through ``set_epoch``): the order :func:`~steu_ext.methods.hds.unlearn` uses."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        from ..methods.hds import epoch_order

        return iter(epoch_order(self.n, self.seed, self.epoch))


class HDSCollator:
    """Pads the forget and the retain examples of a batch separately (:func:`steu_ext.methods.hds.collate`)
    into ``{"hds_forget": {...}, "hds_retain": {...} or None}``."""

    def __init__(self, pad_token_id: Optional[int] = 0):
        self.pad_token_id = 0 if pad_token_id is None else int(pad_token_id)

    def __call__(self, features):
        from ..methods.hds import collate

        if not features:
            raise ValueError("empty batch")
        fb = collate([f for f, _ in features], self.pad_token_id)
        rs = [r for _, r in features if r is not None]
        return {"hds_forget": fb, "hds_retain": collate(rs, self.pad_token_id) if rs else None}


class _HDSCallback(TrainerCallback):
    def __init__(self, trainer: "HDSTrainer"):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        epoch = int(round(state.epoch or 0))
        self.trainer.train_dataset.set_epoch(epoch)
        self.trainer.hds_sampler.set_epoch(epoch)

    def on_epoch_end(self, args, state, control, **kwargs):
        control.should_log = True    # the forget / keep losses at least once per epoch
        rule = self.trainer.stop_rule
        if rule is not None:
            model = self.trainer.accelerator.unwrap_model(self.trainer.model)
            if rule(model, int(round(state.epoch or 0)) - 1):
                control.should_training_stop = True
            self.trainer.log({f"stop_{k}": float(v) for k, v in rule.trace[-1].items()
                              if isinstance(v, (int, float))})
        return control

    def on_train_end(self, args, state, control, **kwargs):
        rule = self.trainer.stop_rule
        if rule is not None:
            rule.finish(self.trainer.accelerator.unwrap_model(self.trainer.model))
            self.trainer.stopping = rule.record()

    def on_save(self, args, state, control, **kwargs):
        ckpt = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if args.should_save and os.path.isdir(ckpt):
            self.trainer.save_hds_state(ckpt)


_HDS_UNSUPPORTED_DIST = ("FSDP", "DEEPSPEED", "MEGATRON_LM", "XLA")
_HDS_DIST_WHY = ("HDS reads and writes every trainable tensor whole on each rank: its two torch.autograd.grad "
                 "passes and the projection need unsharded parameters and gradients")


def _warn_unused_hds_args(args: TrainingArguments) -> None:
    """Warn once about TrainingArguments set to non-default values that HDSTrainer does not use (the
    method's rate, schedule and clipping are HDSConfig's, as in hds.unlearn)."""
    defaults = TrainingArguments(output_dir=args.output_dir, use_cpu=True, report_to=[])
    unused = []
    for name in ("learning_rate", "lr_scheduler_type", "warmup_steps", "warmup_ratio", "max_grad_norm",
                 "weight_decay", "optim"):
        value = getattr(args, name, None)
        if (name, str(getattr(value, "value", value))) in (("lr_scheduler_type", "constant"), ("max_grad_norm", "0.0")):
            continue   # what HDSTrainer does anyway
        if hasattr(args, name) and value != getattr(defaults, name, None):
            unused.append(f"{name}={value!r}")
    if unused:
        log.warning("HDSTrainer does not use TrainingArguments %s: the learning rate (constant), clipping "
                    "(clip_norm) and optimizer come from HDSConfig, as in hds.unlearn", ", ".join(unused))


def _check_hds_args(args: TrainingArguments) -> None:
    """``ValueError`` for the TrainingArguments HDSTrainer cannot honour (checked before any work)."""
    if args.fp16:
        raise ValueError("HDSTrainer does not support fp16: fp16 needs loss scaling, and the Trainer's "
                         "GradScaler only scales loss.backward(), which HDS's two torch.autograd.grad passes "
                         "bypass (gradients could underflow, overflowing steps would not be skipped); "
                         "use bf16=True (A100/H100 and newer) or full precision")
    if args.fsdp:
        raise ValueError(f"HDSTrainer does not support FSDP ({_HDS_DIST_WHY}); use DDP (torchrun)")
    if getattr(args, "deepspeed", None):
        raise ValueError(f"HDSTrainer does not support DeepSpeed ({_HDS_DIST_WHY}); use DDP (torchrun)")


class HDSTrainer(Trainer):
    """HDS (:mod:`steu_ext.methods.hds`) in the Hugging Face ``Trainer`` loop.

        trainer = HDSTrainer(model, TrainingArguments("out", num_train_epochs=30, per_device_train_batch_size=16,
                                                      use_cpu=True, report_to=[]),
                             processing_class=tok, forget_items=forget, retain_items=retain,
                             hierarchy=load_hierarchy("concepts.yaml"), hds_config=HDSConfig(),
                             stop_rule=IndistinguishableStop(tok, forget_stop, never_stop, model=model))
        trainer.train()
        trainer.save_adapter("hds_adapter/")   # the edit: an unmerged PEFT adapter (apply / revert)
        model = trainer.unlearned_model()      # LoRA merged, a plain model
        trainer.params_report()                # exact counts of trained / modified elements

    **The same computation as** :func:`steu_ext.methods.hds.unlearn` with ``per_device_train_batch_size =
    HDSConfig.batch_size`` on one process, no gradient accumulation, and ``TrainingArguments.seed =
    HDSConfig.seed``: the same data order (:class:`HDSEpochSampler`, forget/retain pairs of
    :class:`HDSPairDataset`), LoRA initialisation, losses and normalisers, constant learning rate
    ``HDSConfig.lr`` and clipping only with ``HDSConfig.clip_norm``. So ``TrainingArguments.learning_rate``,
    ``lr_scheduler_type``, warmup, ``max_grad_norm``, ``weight_decay`` and ``optim`` are not used (a warning
    names those set to non-default values), nor are ``HDSConfig.epochs``/``batch_size`` (the loop's
    lengths are ``TrainingArguments``'). ``stop_rule`` (e.g. :class:`~steu_ext.eval.stopping.IndistinguishableStop`)
    is checked after every epoch, stops training when met and restores its best epoch at the end when it
    never was (its record: ``trainer.stopping``). The logs carry ``forget_loss`` and ``keep_loss`` next to
    ``loss`` (at least once per epoch). ``evaluate()`` without an eval dataset scores the model on
    ``eval_items`` (default: the forget and retain items): forget / retain accuracy, the HDS objective, and
    the MIA AUC against ``eval_items["never_seen"]`` when given; with an :class:`HDSPairDataset` it returns
    the HDS objective (``eval_loss``, ``eval_forget_loss``, ``eval_keep_loss``). The trainer works on a deep
    copy of ``model``; the caller's model is not modified.

    ``training_step`` runs :class:`~steu_ext.methods.hds.HDSGradient`: two backward passes
    (``torch.autograd.grad``), the in-place projection of the forget gradient over all trainable tensors
    at once and ``p.grad += (g_f' + lambda g_r) / grad_accum``; the Trainer then steps. Dropout is off
    (eval mode) so the frozen parts compute what the original did. Checkpoints carry
    ``hds_state.safetensors`` (the Fisher EMA); resuming restores it. The LoRA adapters are initialised
    after seeding with ``TrainingArguments.seed``.

    * **bf16**: ``bf16=True`` (or ``HDSConfig.autocast_dtype="bfloat16"``) runs the forward passes under
      bf16 autocast; a base model loaded in bf16 works too. Gradients are taken to fp32 for the Fisher
      EMA (fp32) and the projection, and cast back to each parameter's dtype in ``.grad``.
    * **DDP** (``torchrun``, any number of processes): the gradients are computed on the unwrapped module
      (DDP's hooks see no ``backward``), with the losses normalised over the global batch, then g_f, g_r
      and the losses are summed across ranks in one flat ``all_reduce`` before the Fisher EMA and the
      projection. Every rank applies the same update, the one a single process would compute on the
      concatenated batches.
    * Not supported (``ValueError``): fp16 (needs loss scaling; the Trainer's GradScaler only scales
      ``loss.backward()``, which HDS does not call, so fp16 gradients could underflow and overflowing
      steps would not be skipped; use bf16), FSDP and DeepSpeed (they shard or own the parameters and
      gradients, which HDS reads and writes as whole tensors on every rank).
    """

    def __init__(self, model: Optional[nn.Module] = None, args: Optional[TrainingArguments] = None, *,
                 processing_class=None, forget_items: Sequence[Any] = (), retain_items: Sequence[Any] = (),
                 hierarchy=None, hds_config=None, stop_rule=None, eval_items: Optional[Mapping[str, Any]] = None,
                 **kwargs):
        from transformers import set_seed

        from ..methods.hds import HDSConfig, HDSGradient, StopRule, prepare

        if model is None:
            raise ValueError("HDSTrainer needs the model to unlearn")
        if processing_class is None:
            raise ValueError("HDSTrainer needs the model's fast tokenizer (processing_class=...)")
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError("HDSTrainer needs a fast tokenizer (offset mapping)")
        if args is None:
            args = TrainingArguments(output_dir="tmp_trainer")
        _check_hds_args(args)
        if "data_collator" in kwargs or "train_dataset" in kwargs:
            raise ValueError("HDSTrainer builds its own training dataset and collator")
        if stop_rule is not None and not isinstance(stop_rule, StopRule):
            raise TypeError("stop_rule must be a steu_ext.methods.hds.StopRule (e.g. IndistinguishableStop)")
        unknown = set(eval_items or {}) - {"forget", "retain", "never_seen"}
        if unknown:
            raise ValueError(f"eval_items: unknown key(s) {sorted(unknown)} (forget, retain, never_seen)")
        _warn_unused_hds_args(args)
        args = copy.copy(args)
        args.max_grad_norm = 0.0      # clipping is HDSConfig.clip_norm's, inside the HDS update (as in unlearn)
        cfg = copy.deepcopy(hds_config) if hds_config is not None else HDSConfig()
        if args.bf16:
            cfg.autocast_dtype = "bfloat16"
        set_seed(args.seed)   # the LoRA initialisation: the same in every process and every run
        plan = prepare(model, tokenizer, forget_items, retain_items, hierarchy=hierarchy, config=cfg,
                       original_device="cpu")
        cfg, fex, rex, pad = plan.config, plan.forget_examples, plan.retain_examples, plan.pad_id
        work, reference, self._original = plan.model, plan.reference, plan.original
        self.hds_config, self.hierarchy, self.stop_rule, self.stopping = cfg, hierarchy, stop_rule, None
        self._qa_tokenizer = tokenizer
        self.eval_items = {"forget": list(forget_items), "retain": list(retain_items), **(eval_items or {})}
        seed = args.data_seed if args.data_seed is not None else args.seed
        self.hds_sampler = HDSEpochSampler(len(fex), seed)
        super().__init__(model=work, args=args, data_collator=HDSCollator(pad),
                         train_dataset=HDSPairDataset(fex, rex, seed=seed), processing_class=processing_class,
                         **kwargs)
        kind = getattr(self.accelerator.distributed_type, "name", str(self.accelerator.distributed_type))
        if self.is_fsdp_enabled or self.is_deepspeed_enabled or kind in _HDS_UNSUPPORTED_DIST:
            raise ValueError(f"HDSTrainer does not support {kind} ({_HDS_DIST_WHY}); use DDP (torchrun)")
        if reference is not None:
            reference.to(self.args.device)
        self._trainable_before = {n: p.detach().cpu().clone() for n, p in self.model.named_parameters()
                                  if p.requires_grad}
        self.hds_grad = HDSGradient(cfg, [p for p in self.model.parameters() if p.requires_grad], reference,
                                    distributed=self.args.world_size > 1)
        self._hds_sums: Optional[torch.Tensor] = None
        self._hds_count = 0
        self._eval_sums: Optional[torch.Tensor] = None
        self.add_callback(_HDSCallback(self))

    def _get_train_sampler(self, train_dataset=None):
        return self.hds_sampler

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            from ..methods.hds import make_optimizer

            self.optimizer = make_optimizer([p for p in self.model.parameters() if p.requires_grad],
                                            self.hds_config)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:   # constant HDSConfig.lr, as in unlearn
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, lambda _: 1.0)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def training_step(self, model, inputs, num_items_in_batch=None):
        model.eval()   # dropout off
        inputs = self._prepare_inputs(inputs)
        scale = 1.0 / max(int(getattr(self, "current_gradient_accumulation_steps", 1) or 1), 1)
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module   # no DDP forward: HDSGradient sums the gradients across ranks itself
        terms = self.hds_grad.accumulate(model, inputs["hds_forget"], inputs["hds_retain"], scale)
        t = torch.stack([terms["forget_loss"], terms["keep_loss"]]).detach().float() * scale
        self._hds_sums = t if self._hds_sums is None else self._hds_sums + t
        self._hds_count += scale
        return (terms["forget_loss"] + self.hds_config.retain_weight * terms["keep_loss"]) * scale

    def log(self, logs: Dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and self._hds_sums is not None and self._hds_count > 0:
            f, k = (self._hds_sums / self._hds_count).tolist()
            logs = {**logs, "forget_loss": f, "keep_loss": k}
            self._hds_sums, self._hds_count = None, 0
        super().log(logs, *args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "hds_forget" in inputs:   # e.g. evaluation on training batches: the HDS objective
            lf, lk = self.hds_grad.losses(model, inputs["hds_forget"], inputs["hds_retain"])
            loss = lf + self.hds_config.retain_weight * lk
            return (loss, None) if return_outputs else loss
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if "hds_forget" not in inputs:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        inputs = self._prepare_inputs(inputs)
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        was = model.training
        model.eval()
        with torch.no_grad():
            lf, lk = self.hds_grad.losses(model, inputs["hds_forget"], inputs["hds_retain"])
        model.train(was)
        n = inputs["hds_forget"]["input_ids"].shape[0]
        t = torch.stack([lf.detach().float(), lk.detach().float(), lf.new_tensor(1.0)]) * n
        self._eval_sums = t if self._eval_sums is None else self._eval_sums + t
        return (lf + self.hds_config.retain_weight * lk).detach(), None, None

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> Dict[str, float]:
        """With an eval dataset: the Trainer's evaluation (for :class:`HDSPairDataset` batches the HDS
        objective, plus ``{prefix}_forget_loss`` / ``{prefix}_keep_loss``). Without one: :meth:`qa_metrics`
        on ``eval_items``, logged with the prefix."""
        if eval_dataset is None and self.eval_dataset is None:
            metrics = {f"{metric_key_prefix}_{k}": v for k, v in self.qa_metrics().items()}
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics
        self._eval_sums = None
        metrics = super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        if self._eval_sums is not None:
            f, k, n = self._eval_sums.tolist()
            extra = {f"{metric_key_prefix}_forget_loss": f / n, f"{metric_key_prefix}_keep_loss": k / n}
            metrics.update(extra)
            self.log(extra)
            self._eval_sums = None
        return metrics

    def qa_metrics(self) -> Dict[str, float]:
        """The model as it is now, on ``eval_items``: ``forget_acc``, ``retain_acc``, the HDS objective over
        the training pairs of the first epoch (``loss``, ``forget_loss``, ``keep_loss``) and, with never-seen
        items, ``mia_auc`` (forget vs never-seen) and the two mean losses."""
        from ..eval.qa import accuracy, mia_auc
        from ..methods.hds import collate

        model = self.accelerator.unwrap_model(self.model)
        tok, items, ml = self._qa_tokenizer, self.eval_items, self.hds_config.max_length
        out: Dict[str, float] = {}
        if items.get("forget"):
            out["forget_acc"] = accuracy(model, tok, items["forget"], max_length=ml)
        if items.get("retain"):
            out["retain_acc"] = accuracy(model, tok, items["retain"], max_length=ml)
        if items.get("never_seen") and items.get("forget"):
            m = mia_auc(model, tok, items["forget"], items["never_seen"], max_length=ml)
            out.update({"mia_auc": m["auc"], "mia_member_loss": m["member_loss"],
                        "mia_nonmember_loss": m["nonmember_loss"]})
        ds, dev, pad = self.train_dataset, self.args.device, self.data_collator.pad_token_id
        was, epoch = model.training, ds.epoch
        model.eval()
        ds.set_epoch(0)
        sums = torch.zeros(2, dtype=torch.float64)
        bs = self.hds_config.batch_size
        try:
            with torch.no_grad():
                for s in range(0, len(ds), bs):
                    pairs = [ds[i] for i in range(s, min(s + bs, len(ds)))]
                    fb = {k: v.to(dev) for k, v in collate([f for f, _ in pairs], pad).items()}
                    rs = [r for _, r in pairs if r is not None]
                    rb = {k: v.to(dev) for k, v in collate(rs, pad).items()} if rs else None
                    lf, lk = self.hds_grad.losses(model, fb, rb)
                    sums += torch.tensor([float(lf), float(lk)], dtype=torch.float64) * len(pairs)
        finally:
            ds.set_epoch(epoch)
            model.train(was)
        f, k = (sums / len(ds)).tolist()
        out.update({"forget_loss": f, "keep_loss": k, "loss": f + self.hds_config.retain_weight * k})
        return out

    def save_adapter(self, folder: Union[str, os.PathLike], *, overwrite: bool = False) -> str:
        """Write the edit as an unmerged PEFT adapter folder (see
        :meth:`steu_ext.methods.hds.HDSResult.save_adapter`)."""
        from ..methods.hds_adapter import adapter_of, save_adapter

        model = self.accelerator.unwrap_model(self.model)
        if not hasattr(model, "peft_config"):
            raise ValueError("this trainer trains every parameter (adapter='none'): there is no adapter to save")
        state, config, fp = adapter_of(model)
        return save_adapter(folder, state, config, fp, {"params": self.params_report(),
                                                       "config": asdict(self.hds_config),
                                                       "stopping": self.stopping}, overwrite=overwrite)

    def params_report(self) -> Dict[str, Any]:
        """Exact element counts: trainable, modified (trainable elements that changed), base total, and
        the base elements a merge would change."""
        model = self.accelerator.unwrap_model(self.model)
        cur = {n: p.detach().cpu() for n, p in model.named_parameters() if n in self._trainable_before}
        changed = sum(int((cur[n] != t).sum()) for n, t in self._trainable_before.items())
        trainable = sum(t.numel() for t in self._trainable_before.values())
        total = sum(t.numel() for t in self._original.values())
        if hasattr(model, "peft_config"):
            from ..methods.hds_adapter import merged_changes

            dense = merged_changes(model)
        else:
            dense = sum(int((p.detach().cpu() != self._original[n]).sum()) for n, p in model.named_parameters())
        return {"trainable": trainable, "modified": changed, "total": total, "percent": 100.0 * changed / total,
                "trainable_percent": 100.0 * trainable / total, "merged_modified": dense,
                "merged_percent": 100.0 * dense / total}

    def unlearned_model(self) -> nn.Module:
        """A copy of the trained model with LoRA merged into the base weights (a plain HF model)."""
        model = copy.deepcopy(self.accelerator.unwrap_model(self.model))
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        return model.requires_grad_(False).eval()

    def save_hds_state(self, folder: Union[str, os.PathLike]) -> None:
        """Write the Fisher EMA into ``folder`` (a checkpoint)."""
        from safetensors.torch import save_file

        fisher = self.hds_grad.fisher
        tensors = {f"fisher.{i}": f.detach().contiguous().cpu() for i, f in enumerate(fisher or [])}
        path = os.path.join(os.fspath(folder), HDS_STATE_NAME)
        save_file(tensors, path + ".tmp", metadata={"format": "steu_ext.hds_state/1", "n": str(len(tensors))})
        os.replace(path + ".tmp", path)

    def load_hds_state(self, folder: Union[str, os.PathLike]) -> bool:
        from safetensors import safe_open

        path = os.path.join(os.fspath(folder), HDS_STATE_NAME)
        if not os.path.isfile(path):
            return False
        with safe_open(path, "pt") as f:
            n = int((f.metadata() or {}).get("n", "0"))
            if n and n != len(self.hds_grad.params):
                raise ValueError(f"{path} holds {n} Fisher tensors, the model trains {len(self.hds_grad.params)}")
            self.hds_grad.fisher = ([read_tensor(f, f"fisher.{i}").to(p.device, torch.float32) for i, p in
                                     enumerate(self.hds_grad.params)] if n else None)
        return True

    def train(self, resume_from_checkpoint: Union[str, bool, None] = None, trial=None,
              ignore_keys_for_eval=None, **kwargs):
        ckpt = get_last_checkpoint(self.args.output_dir) if resume_from_checkpoint is True else resume_from_checkpoint
        if isinstance(ckpt, (str, os.PathLike)):
            self.load_hds_state(ckpt)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                             ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)
