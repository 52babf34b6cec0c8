"""One STEU experiment end to end: load (or build) a classifier, fine-tune it end to end, unlearn a class,
evaluate before/after — behaviour (forget/retain F1) and representation (a linear probe for the forgotten
class on frozen features, fitted on a probe split that neither training nor test uses) — and write the
report. Used by ``steu demo`` and by users with their own data. (Loading a pretrained classifier lives in
:mod:`steu_ext.modeling.loading`; the tiny random BERT used without one in
:mod:`steu_ext.experiments.tiny_models`.)"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from typing import Any, Dict, Optional

import torch

from ..data.loaders import TextClassificationData, split_protocol
from ..eval.metrics import modified_parameters, per_class_f1, unlearning_f1
from ..eval.probe import ProbeConfig, extract_features, fit_probe
from ..eval.report import plot_f1, write_json
from ..methods.finetune import train_classifier
from ..methods.steu import STEUConfig, unlearn
from ..modeling.encoders import Encoded, predict_logits, predictions
from ..modeling.labels import label_matrix, resolve_target
from ..modeling.loading import DEFAULT_MODEL
from ..modeling.params import snapshot
from . import tiny_models

log = logging.getLogger("steu_ext")


def _evaluate(model, data: Encoded, idx, multi: bool):
    z = predict_logits(model, data, idx)
    return per_class_f1(data.labels[idx], predictions(z, multi))


def probe_f1(model, enc: Encoded, probe_idx, test_idx, target: int, config: Optional[ProbeConfig] = None
             ) -> Dict[str, Any]:
    """Linear-probe recovery of class ``target``: a logistic regression fitted on frozen features of the
    probe split, scored on the test split; ``{"f1", "auroc"}`` for the configured pooling plus
    ``per_pooling`` (mean-pooled last layer and [CLS])."""
    cfg = config or ProbeConfig()
    f = extract_features(model, enc, list(probe_idx) + list(test_idx), cfg.batch_size)
    y = enc.labels[:, target] > 0
    n = len(probe_idx)
    per = {p: fit_probe(f[p][:n], y[list(probe_idx)], f[p][n:], y[list(test_idx)], cfg.C, cfg.max_iter)
           for p in ("mean", "cls")}
    main = per.get(cfg.pooling, per["mean"])
    return {"f1": main["f1"], "auroc": main["auroc"], "pooling": cfg.pooling if cfg.pooling in per else "mean",
            "per_pooling": per}


def run_experiment(data: TextClassificationData, target, *, model: str = DEFAULT_MODEL,
                   out_dir: str = "steu_report", config: Optional[STEUConfig] = None,
                   test_fraction: float = 0.3, finetune_epochs: Optional[int] = None,
                   finetune_mode: Optional[str] = None, finetune_lr: Optional[float] = None,
                   probe_fraction: float = 0.15, seed: int = 0, progress: bool = True, save_edit: bool = True,
                   extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Split ``data`` (stratified: train / probe / test), fine-tune the classifier end to end
    (``finetune_mode="full"``, the default; ``"head"`` trains the output layer only), unlearn ``target``
    with STEU, evaluate forget/retain F1 and (``probe_fraction > 0``) probe recovery before and after, and
    write ``report.json``, ``f1_before_after.png`` and ``edit.safetensors`` to ``out_dir``."""
    from ..eval.vacuity import refuse_vacuous, vacuity_warnings
    from .compare import MIN_LEARNED_F1, finetune_settings

    cfg = config or STEUConfig(seed=seed)
    names = list(data.label_names)
    target_idx = resolve_target(target, names)
    # sigmoid heads by default (the paper's setting; a single-label corpus is one-hot multi-label)
    multi = True if cfg.multi_label is None else bool(cfg.multi_label)
    if data.multi_label and not multi:
        raise ValueError("the data is multi-label but a single-label (softmax) head was requested")
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    mode = finetune_mode or "full"
    finetune_epochs, finetune_lr = finetune_settings(mode, finetune_epochs, finetune_lr)  # before any work
    net, tok, new_head, model_desc = tiny_models.classifier_or_tiny(model, data.text, names, multi, seed)
    cfg.validate(net.get_input_embeddings().weight.shape[0])  # fail before any training
    train_idx, probe_idx, test_idx = split_protocol(data.labels, test_fraction, probe_fraction, seed)
    Y = label_matrix(data.labels, len(names))
    refuse_vacuous(int((Y[train_idx][:, target_idx] > 0).sum()), names[target_idx], k=cfg.k,
                   train_head=cfg.train_head)
    enc = Encoded(tok, data.text, Y, cfg.max_length)
    t_ft = time.perf_counter()
    if finetune_epochs > 0:
        train_classifier(net, enc, train_idx, mode=mode, epochs=finetune_epochs, lr=finetune_lr, seed=seed,
                         multi_label=multi, head_modules=cfg.head_modules, progress=progress,
                         prior_bias=new_head)  # a just-created head starts at the class priors
    t_ft = time.perf_counter() - t_ft
    f1_before = _evaluate(net, enc, test_idx, multi)
    probe_before = probe_f1(net, enc, probe_idx, test_idx, target_idx) if probe_idx else None
    original = snapshot(net)
    res = unlearn(net, tok, [data.text[i] for i in train_idx], Y[train_idx], target_idx, config=cfg,
                  label_names=names, encoded=enc.subset(train_idx), progress=progress)
    f1_after = _evaluate(net, enc, test_idx, multi)
    probe_after = probe_f1(net, enc, probe_idx, test_idx, target_idx) if probe_idx else None
    mod = modified_parameters(net, original)
    os.makedirs(out_dir, exist_ok=True)
    edit_path = os.path.join(out_dir, "edit.safetensors")
    if save_edit:
        res.edit.save(edit_path)
    before, after = unlearning_f1(f1_before, target_idx, names), unlearning_f1(f1_after, target_idx, names)
    before["probe"], after["probe"] = probe_before, probe_after
    warnings = vacuity_warnings(names[target_idx], before_forget_f1=before["forget_f1"], k=cfg.k,
                                n_forget_docs=int((Y[train_idx][:, target_idx] > 0).sum()),
                                n_eval_target_docs=int((Y[test_idx][:, target_idx] > 0).sum()),
                                min_learned_f1=MIN_LEARNED_F1)
    top = [{"id": int(i), "token": tok.convert_ids_to_tokens(int(i)), "score": float(s)}
           for i, s in zip(res.selected_tokens[:20], res.token_scores[:20])]
    report = {
        "method": "steu", "model": model_desc, "target": target_idx, "target_name": names[target_idx],
        "label_names": names, "multi_label": multi,
        "warnings": warnings,
        "data": {"documents": len(data), "train": len(train_idx), "probe": len(probe_idx), "test": len(test_idx),
                 "forget_train_docs": int(Y[train_idx][:, target_idx].sum()), **(extra or {})},
        "config": asdict(cfg),
        "finetune": {"mode": mode, "epochs": finetune_epochs, "lr": finetune_lr, "seconds": t_ft},
        "before": before, "after": after,
        "params_modified": {"count": mod["modified"], "total": mod["total"], "percent": mod["percent"],
                            "per_tensor": mod["per_tensor"]},
        "edit": {"rows_changed": int(res.edit.row_ids.numel()),
                 "elements_modified": res.edit.num_modified_elements,
                 "path": edit_path if save_edit else None},
        "selected_tokens": {"k": int(res.selected_tokens.numel()), "top": top},
        "seconds": {**res.seconds, "wall_total": time.perf_counter() - t_start},
        "history": res.history,
    }
    write_json(os.path.join(out_dir, "report.json"), report)
    plot_f1(os.path.join(out_dir, "f1_before_after.png"), names, f1_before, f1_after, target_idx)
    return report


def summary_table(report: Dict[str, Any]) -> str:
    """The before/after table printed by the CLI."""
    b, a = report["before"], report["after"]
    pm = report["params_modified"]
    rows = [("forget F1 (" + report["target_name"] + ")", f"{b['forget_f1']:.4f}", f"{a['forget_f1']:.4f}"),
            ("retain avg F1", f"{b['retain_macro_f1']:.4f}", f"{a['retain_macro_f1']:.4f}")]
    if b.get("probe") and a.get("probe"):
        rows += [("probe F1 (" + report["target_name"] + ")", f"{b['probe']['f1']:.4f}", f"{a['probe']['f1']:.4f}"),
                 ("probe AUROC", f"{b['probe']['auroc']:.4f}", f"{a['probe']['auroc']:.4f}")]
    rows += [("params modified", "0", f"{pm['count']:,} ({pm['percent']:.3f} %)"),
             ("unlearning time", "-", f"{report['seconds']['total']:.1f} s")]
    for name in report["label_names"]:
        if name != report["target_name"]:
            rows.append((f"  F1 {name}", f"{b['per_class_f1'][name]:.4f}", f"{a['per_class_f1'][name]:.4f}"))
    w = max(len(r[0]) for r in rows)
    lines = [f"{'':{w}}  {'before':>10}  {'after':>22}", "-" * (w + 36)]
    lines += [f"{r[0]:{w}}  {r[1]:>10}  {r[2]:>22}" for r in rows]
    lines += [f"WARNING: {x}" for x in report.get("warnings", [])]
    return "\n".join(lines)
