"""Baselines for class-level unlearning, to compare STEU against.

Every function has the shape of :func:`steu_ext.methods.steu.unlearn` — ``(model, tokenizer, texts,
labels, target, *, config, label_names, encoded, progress)`` — modifies ``model`` in place and returns a
:class:`BaselineResult` (which parameters it was allowed to change, loss history, seconds). The shared
:class:`~steu_ext.methods.steu.STEUConfig` supplies ``epochs``, ``batch_size``, ``max_length``,
``head_lr``, ``utility_weight``, ``weight_decay``, ``head_modules``, ``multi_label`` and ``seed``.

- :func:`gradient_ascent` — maximise the loss of the target label on the forget documents.
- :func:`direct_suppression` — the STEU objective (forget loss + lambda * distillation to the frozen
  original on retain documents), trained on the top N encoder layers + head instead of embedding rows.
- :func:`retain_finetune` — continue supervised training of the top N layers + head on retain documents
  only (the target label is never positive there).
- :func:`retrain` — the gold standard: redo the original fine-tuning (``finetune.train_classifier``)
  from the pretrained base model on the retain documents only.
- :func:`steu_embeddings_only`, :func:`steu_head_only` — the two STEU ablations; :func:`steu_paper` — STEU
  with the paper's (behavioural) objective instead of the representation-level default.
- :func:`bias_suppression`, :func:`logit_masking` — *trivial* baselines that train nothing: they edit the
  output layer so the target class is never predicted (one bias element; or the target's weight row and
  bias). They reach forget F1 ~ 0 while the encoder, and so everything a probe or a relearning attack
  could use, stays exactly as it was; a method must beat them on more than forget/retain F1.

Budgets are bounded and CPU-sized: the three top-N methods take exactly as many optimizer steps as STEU
(``epochs`` passes over the forget documents in batches of ``batch_size``) and see the same number of
documents per step. Encoder layers train with Adam at ``layer_lr`` (5e-5, a usual BERT fine-tuning rate),
the head at ``config.head_lr`` as in STEU. "Top N encoder layers" follows the paper's baselines: the
last N transformer blocks; the pooler (BERT) stays frozen, as in their 19.6 % figure for N = 3.
All training runs in eval mode (no dropout), like STEU.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .._progress import show_progress
from ..modeling.encoders import (
    Encoded,
    embedding_param_name,
    find_head,
    is_multi_label,
    output_layer,
    predict_logits,
)
from ..modeling.labels import label_matrix, resolve_target
from .finetune import finetune_cached
from .steu import (
    STEUConfig,
    STEUResult,
    forget_loss,
    split_forget_retain,
    unlearn,
    utility_loss,
)

DEFAULT_TOP_LAYERS = 3
DEFAULT_LAYER_LR = 5e-5


@dataclass
class BaselineResult:
    model: nn.Module
    method: str
    trainable: List[str]                  # qualified names of the parameters the method could change
    history: List[Dict[str, float]] = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=dict)
    steps: int = 0
    settings: Dict[str, object] = field(default_factory=dict)  # method-specific choices, for the report
    steu: Optional[STEUResult] = None     # the STEU ablations keep their full result (edit, tokens)
    trainable_elements: int = 0           # how many elements it could change (STEU: k rows, not the table)


def encoder_layers(model: nn.Module) -> Tuple[str, nn.ModuleList]:
    """``(qualified name, ModuleList)`` of the transformer blocks (``bert.encoder.layer``,
    ``distilbert.transformer.layer``, ...): the ModuleList with ``num_hidden_layers`` entries."""
    cfg = model.config
    n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layers", None)
    cands = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    named = [c for c in cands if c[0].rsplit(".", 1)[-1] in ("layer", "layers", "block", "blocks")]
    if not (named or cands):
        raise ValueError(f"cannot find the {n} transformer layers of a {type(model).__name__}")
    return (named or cands)[0]


def top_layer_params(model: nn.Module, top_layers: int, head_modules: Optional[List[str]] = None
                     ) -> Dict[str, nn.Parameter]:
    """Parameters of the last ``top_layers`` transformer blocks plus the classification head."""
    prefix, layers = encoder_layers(model)
    L = len(layers)
    if not isinstance(top_layers, int) or not 0 <= top_layers <= L:
        raise ValueError(f"top_layers must be an int in [0, {L}] for this {L}-layer model, "
                         f"got {top_layers!r}")
    out: Dict[str, nn.Parameter] = {}
    for i in range(L - top_layers, L):
        for pname, p in layers[i].named_parameters():
            out[f"{prefix}.{i}.{pname}"] = p
    out.update(find_head(model, head_modules))
    return out


def _numel(params: Dict[str, nn.Parameter]) -> int:
    return sum(p.numel() for p in params.values())


def _prepare(model: nn.Module, tokenizer, texts, labels, target, cfg: STEUConfig,
             label_names: Optional[Sequence[str]], encoded: Optional[Encoded]):
    """Validation shared by all baselines (the same checks and errors as ``unlearn``)."""
    C = model.config.num_labels
    names = list(label_names) if label_names is not None else [str(i) for i in range(C)]
    if len(names) != C:
        raise ValueError(f"{len(names)} label names given but the model has {C} classes")
    t = resolve_target(target, names)
    cfg.validate(model.get_input_embeddings().weight.shape[0])
    multi = is_multi_label(model, cfg.multi_label)
    if len(texts) == 0:
        raise ValueError("the training corpus is empty")
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    data = encoded or Encoded(tokenizer, texts, label_matrix(labels, C), cfg.max_length)
    forget, retain = split_forget_retain(data, t, names)
    return names, t, multi, data, forget, retain


def _schedule(forget: List[int], retain: List[int], cfg: STEUConfig, retain_per_step: int
              ) -> Iterator[Tuple[int, List[int], List[int]]]:
    """STEU's schedule: an epoch is one shuffled pass over the forget documents in batches of
    ``batch_size``; ``retain_per_step`` retain documents per step cycle alongside (reshuffled each pass)."""
    rng = random.Random(cfg.seed)
    pool: List[int] = []
    per_epoch = (len(forget) + cfg.batch_size - 1) // cfg.batch_size
    for epoch in range(cfg.epochs):
        order = forget[:]
        rng.shuffle(order)
        for s in range(per_epoch):
            while len(pool) < retain_per_step:
                more = retain[:]
                rng.shuffle(more)
                pool += more
            rb, pool = pool[:retain_per_step], pool[retain_per_step:]
            yield epoch, order[s * cfg.batch_size:(s + 1) * cfg.batch_size], rb


def _train(model: nn.Module, params: Dict[str, nn.Parameter], head: Sequence[str], cfg: STEUConfig,
           layer_lr: float, data: Encoded, steps: List[Tuple[int, List[int], List[int]]],
           step_loss: Callable[[torch.Tensor, List[int], List[int]], Tuple[torch.Tensor, Dict[str, float]]],
           desc: str, progress: Optional[bool]) -> List[Dict[str, float]]:
    """Adam on ``params`` only (head at ``head_lr``, the rest at ``layer_lr``), eval mode, one forward
    pass per step over forget + retain documents; restores ``requires_grad`` and the training flag."""
    head = set(head)
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    device = next(model.parameters()).device
    history: List[Dict[str, float]] = []
    bar = None
    was_training = model.training
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params.values():
            p.requires_grad_(True)
        groups = [{"params": [p for n, p in params.items() if n not in head], "lr": layer_lr},
                  {"params": [p for n, p in params.items() if n in head], "lr": cfg.head_lr}]
        opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)
        model.eval()
        if show_progress(progress):
            from tqdm.auto import tqdm
            bar = tqdm(total=len(steps), desc=desc, unit="step")
        for epoch, fb, rb in steps:
            batch = data.batch(fb + rb)
            z = model(**{k: v.to(device) for k, v in batch.items()}).logits.float()
            loss, logs = step_loss(z, fb, rb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append({"epoch": epoch, "loss": loss.item(), **logs})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
        opt.zero_grad(set_to_none=True)
    finally:
        if bar is not None:
            bar.close()
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])
        model.train(was_training)
    return history


def _target_label_loss(z: torch.Tensor, target: int, multi: bool) -> torch.Tensor:
    """Loss of the (positive) target label: BCE(sigmoid(z_t), 1) or CE(softmax(z), t)."""
    if multi:
        return F.softplus(-z[:, target]).mean()
    return F.cross_entropy(z, torch.full((len(z),), target, dtype=torch.long, device=z.device))


def _supervised_loss(z: torch.Tensor, y: torch.Tensor, multi: bool) -> torch.Tensor:
    if multi:
        return F.binary_cross_entropy_with_logits(z, y)
    return F.cross_entropy(z, y.argmax(1))


def gradient_ascent(model: nn.Module, tokenizer, texts: Sequence[str], labels, target, *,
                    config: Optional[STEUConfig] = None, label_names: Optional[Sequence[str]] = None,
                    encoded: Optional[Encoded] = None, progress: Optional[bool] = None,
                    top_layers: int = DEFAULT_TOP_LAYERS, layer_lr: float = DEFAULT_LAYER_LR
                    ) -> BaselineResult:
    """Gradient ascent: maximise the loss of the target label on forget batches (no retain term), on the
    top ``top_layers`` encoder layers + head; ``epochs`` passes over the forget set."""
    cfg = config or STEUConfig()
    t0 = time.perf_counter()
    _, t, multi, data, forget, retain = _prepare(model, tokenizer, texts, labels, target, cfg, label_names,
                                                 encoded)
    params = top_layer_params(model, top_layers, cfg.head_modules)
    head = find_head(model, cfg.head_modules)
    steps = list(_schedule(forget, retain, cfg, 0))

    def step_loss(z, fb, rb):
        lt = _target_label_loss(z, t, multi)
        return -lt, {"target_loss": lt.item()}

    t1 = time.perf_counter()
    hist = _train(model, params, head, cfg, layer_lr, data, steps, step_loss, "gradient ascent", progress)
    t2 = time.perf_counter()
    return BaselineResult(model, "gradient_ascent", list(params), hist,
                          {"setup": t1 - t0, "train": t2 - t1, "total": t2 - t0}, len(steps),
                          {"top_layers": top_layers, "layer_lr": layer_lr, "head_lr": cfg.head_lr,
                           "epochs": cfg.epochs, "batch_size": cfg.batch_size, "steps": len(steps)},
                          trainable_elements=_numel(params))


def direct_suppression(model: nn.Module, tokenizer, texts: Sequence[str], labels, target, *,
                       config: Optional[STEUConfig] = None, label_names: Optional[Sequence[str]] = None,
                       encoded: Optional[Encoded] = None, progress: Optional[bool] = None,
                       top_layers: int = DEFAULT_TOP_LAYERS, layer_lr: float = DEFAULT_LAYER_LR
                       ) -> BaselineResult:
    """The STEU loss ``forget_loss + utility_weight * utility_loss`` (distillation to the frozen original's
    logits on retain batches), STEU's schedule, trained on the top ``top_layers`` layers + head."""
    cfg = config or STEUConfig()
    t0 = time.perf_counter()
    _, t, multi, data, forget, retain = _prepare(model, tokenizer, texts, labels, target, cfg, label_names,
                                                 encoded)
    params = top_layer_params(model, top_layers, cfg.head_modules)
    head = find_head(model, cfg.head_modules)
    z0 = predict_logits(model, data, retain, batch_size=64)
    z0_of = {i: r for r, i in enumerate(retain)}
    steps = list(_schedule(forget, retain, cfg, cfg.batch_size))

    def step_loss(z, fb, rb):
        lf = forget_loss(z[:len(fb)], t, multi)
        lu = utility_loss(z[len(fb):], z0[[z0_of[i] for i in rb]].to(z.device), t, multi)
        return lf + cfg.utility_weight * lu, {"forget_loss": lf.item(), "utility_loss": lu.item()}

    t1 = time.perf_counter()
    hist = _train(model, params, head, cfg, layer_lr, data, steps, step_loss, "direct suppression", progress)
    t2 = time.perf_counter()
    return BaselineResult(model, "direct_suppression", list(params), hist,
                          {"setup": t1 - t0, "train": t2 - t1, "total": t2 - t0}, len(steps),
                          {"top_layers": top_layers, "layer_lr": layer_lr, "head_lr": cfg.head_lr,
                           "utility_weight": cfg.utility_weight, "epochs": cfg.epochs,
                           "batch_size": cfg.batch_size, "steps": len(steps)},
                          trainable_elements=_numel(params))


def retain_finetune(model: nn.Module, tokenizer, texts: Sequence[str], labels, target, *,
                    config: Optional[STEUConfig] = None, label_names: Optional[Sequence[str]] = None,
                    encoded: Optional[Encoded] = None, progress: Optional[bool] = None,
                    top_layers: int = DEFAULT_TOP_LAYERS, layer_lr: float = DEFAULT_LAYER_LR
                    ) -> BaselineResult:
    """Continue supervised training (the fine-tuning loss on the true labels) of the top ``top_layers``
    layers + head on retain documents only; as many steps as STEU, ``2 * batch_size`` documents each."""
    cfg = config or STEUConfig()
    t0 = time.perf_counter()
    _, _, multi, data, forget, retain = _prepare(model, tokenizer, texts, labels, target, cfg, label_names,
                                                 encoded)
    params = top_layer_params(model, top_layers, cfg.head_modules)
    head = find_head(model, cfg.head_modules)
    steps = [(e, [], rb) for e, _, rb in _schedule(forget, retain, cfg, 2 * cfg.batch_size)]

    def step_loss(z, fb, rb):
        loss = _supervised_loss(z, data.labels[rb].to(z.device), multi)
        return loss, {"retain_loss": loss.item()}

    t1 = time.perf_counter()
    hist = _train(model, params, head, cfg, layer_lr, data, steps, step_loss, "retain fine-tune", progress)
    t2 = time.perf_counter()
    return BaselineResult(model, "retain_finetune", list(params), hist,
                          {"setup": t1 - t0, "train": t2 - t1, "total": t2 - t0}, len(steps),
                          {"top_layers": top_layers, "layer_lr": layer_lr, "head_lr": cfg.head_lr,
                           "batch_size": 2 * cfg.batch_size, "steps": len(steps),
                           "retain_docs": len(retain)},
                          trainable_elements=_numel(params))


def retrain(model: nn.Module, tokenizer, texts: Sequence[str], labels, target, *,
            config: Optional[STEUConfig] = None, label_names: Optional[Sequence[str]] = None,
            encoded: Optional[Encoded] = None, progress: Optional[bool] = None, mode: str = "head",
            epochs: int = 30, lr: Optional[float] = None, seed: Optional[int] = None,
            cache_dir: Optional[str] = None, prior_bias: bool = False) -> BaselineResult:
    """Retrain from scratch without the forget set: ``model`` must be the *pretrained base* (before the
    original fine-tuning); it is fine-tuned with ``finetune.train_classifier`` (same ``mode``, ``epochs``,
    ``lr`` and ``seed`` as the original fine-tuning) on the retain documents only. ``cache_dir``: reuse a
    stored result (:func:`~steu_ext.methods.finetune.finetune_cached`); ``prior_bias`` as in
    :func:`~steu_ext.methods.finetune.train_classifier` (use the original fine-tuning's setting)."""
    cfg = config or STEUConfig()
    t0 = time.perf_counter()
    _, _, multi, data, _, retain = _prepare(model, tokenizer, texts, labels, target, cfg, label_names,
                                            encoded)
    seed = cfg.seed if seed is None else seed
    trainable = (list(find_head(model, cfg.head_modules)) if mode == "head"
                 else [n for n, p in model.named_parameters() if p.requires_grad])
    t1 = time.perf_counter()
    losses = finetune_cached(model, data, retain, cache_dir=cache_dir, mode=mode, epochs=epochs, lr=lr, seed=seed,
                             multi_label=multi, head_modules=cfg.head_modules, progress=show_progress(progress),
                             prior_bias=prior_bias)["losses"] or []
    t2 = time.perf_counter()
    history = [{"epoch": e, "loss": v} for e, v in enumerate(losses)]
    allowed = set(trainable)
    n_elements = sum(p.numel() for n, p in model.named_parameters() if n in allowed)
    return BaselineResult(model, "retrain", trainable, history,
                          {"setup": t1 - t0, "train": t2 - t1, "total": t2 - t0}, epochs,
                          {"mode": mode, "epochs": epochs, "lr": lr, "seed": seed,
                           "retain_docs": len(retain)}, trainable_elements=n_elements)


def _steu_variant(method: str, change: Dict[str, Any], model, tokenizer, texts, labels, target, config,
                  label_names, encoded, progress) -> BaselineResult:
    cfg = replace(config or STEUConfig(), **change)
    t0 = time.perf_counter()
    res = unlearn(model, tokenizer, texts, labels, target, config=cfg, label_names=label_names,
                  encoded=encoded, progress=progress)
    total = time.perf_counter() - t0
    trainable = ([embedding_param_name(model)] if cfg.train_embeddings else []) + (
        list(find_head(model, cfg.head_modules)) if cfg.train_head else [])
    head = find_head(model, cfg.head_modules) if cfg.train_head else {}
    rows = res.selected_tokens.numel() * model.get_input_embeddings().weight.shape[1]
    return BaselineResult(model, method, trainable, res.history, {**res.seconds, "total": total},
                          len(res.history), {"k": cfg.k, **change}, steu=res,
                          trainable_elements=rows + _numel(head))


def steu_embeddings_only(model: nn.Module, tokenizer, texts: Sequence[str], labels, target, *,
                         config: Optional[STEUConfig] = None, label_names: Optional[Sequence[str]] = None,
                         encoded: Optional[Encoded] = None, progress: Optional[bool] = None) -> BaselineResult:
    """STEU ablation: only the selected embedding rows train (``STEUConfig(train_head=False)``)."""
    return _steu_variant("steu_embeddings_only", {"train_head": False}, model, tokenizer, texts, labels,
                         target, config, label_names, encoded, progress)


def steu_head_only(model: nn.Module, tokenizer, texts: Sequence[str], labels, target, *,
                   config: Optional[STEUConfig] = None, label_names: Optional[Sequence[str]] = None,
                   encoded: Optional[Encoded] = None, progress: Optional[bool] = None) -> BaselineResult:
    """STEU ablation: only the classification head trains (``STEUConfig(train_embeddings=False)``)."""
    return _steu_variant("steu_head_only", {"train_embeddings": False}, model, tokenizer, texts, labels,
                         target, config, label_names, encoded, progress)


def steu_paper(model: nn.Module, tokenizer, texts: Sequence[str], labels, target, *,
               config: Optional[STEUConfig] = None, label_names: Optional[Sequence[str]] = None,
               encoded: Optional[Encoded] = None, progress: Optional[bool] = None) -> BaselineResult:
    """STEU with the paper's objective (``STEUConfig(objective="paper")``: forget loss + distillation, no
    representation-level term) — the published, behavioural setting."""
    return _steu_variant("steu_paper", {"objective": "paper"}, model, tokenizer, texts, labels, target, config,
                         label_names, encoded, progress)


def steu(model: nn.Module, tokenizer, texts: Sequence[str], labels, target, *,
         config: Optional[STEUConfig] = None, label_names: Optional[Sequence[str]] = None,
         encoded: Optional[Encoded] = None, progress: Optional[bool] = None) -> BaselineResult:
    """STEU itself (``unlearn`` with ``config`` as given), wrapped in a :class:`BaselineResult`."""
    return _steu_variant("steu", {}, model, tokenizer, texts, labels, target, config, label_names, encoded,
                         progress)


DEFAULT_MARGIN = 10.0


def _output_layer_named(model: nn.Module, head_modules: Optional[List[str]]) -> Tuple[str, nn.Linear]:
    """``(qualified name, Linear)`` of the layer that produces the logits; it must have a bias."""
    out = output_layer(model, head_modules)
    name = next(n for n, m in model.named_modules() if m is out)
    if out.bias is None:
        raise ValueError(f"the output layer {name!r} has no bias: the trivial baselines edit the bias")
    return name, out


def _trivial_setup(model, tokenizer, texts, labels, target, config, label_names, encoded, margin):
    cfg = config or STEUConfig()
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin > 0):
        raise ValueError(f"margin must be a finite number > 0, got {margin!r}")
    # k (embedding rows) means nothing here: do not fail on it
    _, t, multi, data, _, _ = _prepare(model, tokenizer, texts, labels, target, replace(cfg, k=0), label_names,
                                       encoded)
    name, out = _output_layer_named(model, cfg.head_modules)
    return cfg, t, multi, data, name, out


def bias_suppression(model: nn.Module, tokenizer, texts: Sequence[str], labels, target, *,
                     config: Optional[STEUConfig] = None, label_names: Optional[Sequence[str]] = None,
                     encoded: Optional[Encoded] = None, progress: Optional[bool] = None,
                     margin: float = DEFAULT_MARGIN) -> BaselineResult:
    """Trivial baseline: lower the target class's output bias (one element) just far enough that no
    training document scores within ``margin`` logits of being predicted as the target.

    Sigmoid heads: ``b_t -= max_i z_t(x_i) + margin`` (every ``z_t <= -margin``, i.e. ``p_t <= 4.5e-5``
    for the default 10); softmax heads: ``b_t -= max_i (z_t - max_{c != t} z_c) + margin``. The other
    classes' logits are untouched, so on a sigmoid head they behave exactly as before. No training."""
    t0 = time.perf_counter()
    _, t, multi, data, name, out = _trivial_setup(model, tokenizer, texts, labels, target, config,
                                                  label_names, encoded, margin)
    z = predict_logits(model, data, batch_size=64).double()
    if multi:
        gap = z[:, t]
    else:
        others = torch.cat([z[:, :t], z[:, t + 1:]], 1)
        gap = z[:, t] - others.max(1).values
    shift = max(0.0, float(gap.max()) + margin)
    with torch.no_grad():
        old = float(out.bias[t])
        out.bias[t] -= shift
        new = float(out.bias[t])
    total = time.perf_counter() - t0
    return BaselineResult(model, "bias_suppression", [f"{name}.bias"], [], {"total": total}, 0,
                          {"margin": margin, "shift": shift, "bias_before": old, "bias_after": new,
                           "docs_scored": len(data)}, trainable_elements=1)


def logit_masking(model: nn.Module, tokenizer, texts: Sequence[str], labels, target, *,
                  config: Optional[STEUConfig] = None, label_names: Optional[Sequence[str]] = None,
                  encoded: Optional[Encoded] = None, progress: Optional[bool] = None,
                  margin: float = DEFAULT_MARGIN) -> BaselineResult:
    """Trivial baseline: mask the target logit with a constant. The target's row of the output weight is
    zeroed and its bias set to a constant ``m`` (hidden size + 1 elements), so ``z_t = m`` whatever the
    input: ``m = -margin`` on sigmoid heads; on softmax heads ``m = min_i max_{c != t} z_c(x_i) - margin``
    over the training documents (below every document's best other class). No training."""
    t0 = time.perf_counter()
    _, t, multi, data, name, out = _trivial_setup(model, tokenizer, texts, labels, target, config,
                                                  label_names, encoded, margin)
    if multi:
        value = -float(margin)
    else:
        z = predict_logits(model, data, batch_size=64).double()
        others = torch.cat([z[:, :t], z[:, t + 1:]], 1)
        value = float(others.max(1).values.min()) - margin
    with torch.no_grad():
        out.weight[t].zero_()
        out.bias[t] = value
    total = time.perf_counter() - t0
    return BaselineResult(model, "logit_masking", [f"{name}.weight", f"{name}.bias"], [], {"total": total},
                          0, {"margin": margin, "masked_logit": value},
                          trainable_elements=out.weight.shape[1] + 1)
