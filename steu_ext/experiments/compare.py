"""Compare STEU with its ablations and the usual baselines on one dataset and one target class.

Protocol (one seed; :func:`run_scorecard` repeats it over seeds and reports mean ± sd): the documents are
split, stratified, into a training split, a *probe* split and a held-out test split. The classifier is
fine-tuned **end to end** (every parameter, ``finetune_mode="full"``) on the training split, as deployed
classifiers are; every method then starts from a deep copy of that fine-tuned model, and the gold
standard ``retrain`` redoes the same fine-tuning from the same pretrained base (same head initialisation,
seed and schedule) without the documents of the target class. Every model is evaluated on the same
held-out documents, with loss-based membership inference on the forget-set training documents vs held-out
documents of the target class. Parameter changes are counted element by element against the fine-tuned
weights. With ``cache_dir`` the fine-tuned original and gold standard are stored (weights only) and reused.

On top of behaviour it runs what an adversary would (each can be switched off, they cost time): a linear
probe for the target class on frozen features, fitted on the labelled probe split that neither training
nor test uses and scored on the test split (:mod:`steu_ext.eval.probe`), a relearning attack
(:mod:`steu_ext.eval.relearn`), and for STEU edits an inspection of the moved embedding rows
(:mod:`steu_ext.eval.inspect_edit`); everything lands in one scorecard (:mod:`steu_ext.eval.scorecard`).
The trivial baselines ``bias_suppression`` and ``logit_masking`` show what forget/retain F1 alone cannot
tell apart from a real edit.
"""
from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import asdict, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..data.loaders import TextClassificationData, split_protocol
from ..eval.evaluate import evaluate
from ..eval.inspect_edit import inspect_edit
from ..eval.metrics import modified_parameters
from ..eval.plots import plot_f1_per_method, plot_tradeoff
from ..eval.probe import ProbeConfig, extract_features, probe_recovery, probe_train_docs
from ..eval.relearn import RelearnConfig, relearn_attack
from ..eval.report import write_json
from ..eval.scorecard import scorecard_rows, write_scorecard
from ..methods import baselines as bl
from ..methods.finetune import finetune_cached
from ..methods.steu import STEUConfig
from ..modeling.encoders import Encoded, output_layer
from ..modeling.labels import label_matrix, resolve_target
from ..modeling.loading import DEFAULT_MODEL
from ..modeling.params import snapshot
from . import tiny_models

log = logging.getLogger("steu_ext")

METHODS = ("steu", "steu_paper", "steu_embeddings_only", "steu_head_only", "gradient_ascent",
           "direct_suppression", "retain_finetune", "bias_suppression", "logit_masking", "retrain")

_TOP_N = ("gradient_ascent", "direct_suppression", "retain_finetune")
_FUNCS: Dict[str, Callable[..., bl.BaselineResult]] = {
    "steu": bl.steu, "steu_paper": bl.steu_paper, "steu_embeddings_only": bl.steu_embeddings_only, "steu_head_only": bl.steu_head_only,
    "gradient_ascent": bl.gradient_ascent, "direct_suppression": bl.direct_suppression,
    "retain_finetune": bl.retain_finetune, "bias_suppression": bl.bias_suppression,
    "logit_masking": bl.logit_masking, "retrain": bl.retrain,
}


def _check_methods(methods: Sequence[str]) -> List[str]:
    if isinstance(methods, str):
        methods = [methods]
    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown}; valid methods are {list(METHODS)}" if unknown
                         else f"no methods given; valid methods are {list(METHODS)}")
    return methods


FINETUNE_DEFAULTS = {"full": {"epochs": 4, "lr": 1e-4}, "head": {"epochs": 30, "lr": 1e-2}}


def finetune_settings(mode: str, epochs: Optional[int], lr: Optional[float]) -> Tuple[int, float]:
    """``(epochs, lr)`` of the original fine-tune: the given values, or :data:`FINETUNE_DEFAULTS` for
    ``mode`` ("full" or "head") where None; ``ValueError`` for an unknown mode, epochs < 0 or lr <= 0."""
    if mode not in FINETUNE_DEFAULTS:
        raise ValueError(f"finetune_mode must be 'full' or 'head', got {mode!r}")
    epochs = FINETUNE_DEFAULTS[mode]["epochs"] if epochs is None else epochs
    lr = FINETUNE_DEFAULTS[mode]["lr"] if lr is None else lr
    if epochs < 0:
        raise ValueError(f"finetune_epochs must be >= 0, got {epochs}")
    if not lr > 0:
        raise ValueError(f"finetune_lr must be > 0, got {lr}")
    return epochs, lr
MIN_LEARNED_F1 = 0.5   # an original below this forget F1 has barely learned the class: flagged


def run_compare(data: TextClassificationData, target, *, methods: Sequence[str] = METHODS,
                model: str = DEFAULT_MODEL, out_dir: str = "steu_compare",
                config: Optional[STEUConfig] = None, test_fraction: float = 0.3,
                finetune_epochs: Optional[int] = None, finetune_mode: str = "full",
                finetune_lr: Optional[float] = None, probe_fraction: float = 0.15,
                max_train_docs: Optional[int] = None, cache_dir: Optional[str] = None,
                seed: int = 0, top_layers: int = 3, progress: bool = True, probe: bool = True,
                relearn: bool = True, inspect_edits: bool = True, probe_config: Optional[ProbeConfig] = None,
                relearn_config: Optional[RelearnConfig] = None, write: bool = True) -> Dict[str, Any]:
    """Fine-tune once, run every method in ``methods`` from a copy, evaluate and (``write=True``) write
    ``report.json``, ``f1_per_class.png``, ``tradeoff.png`` and the scorecard (``scorecard.json``,
    ``scorecard.md``, ``scorecard.png``) to ``out_dir``.

    ``finetune_mode``: ``"full"`` (every parameter, the default: see the module docstring) or ``"head"``
    (the output layer on a frozen encoder); ``finetune_epochs``/``finetune_lr`` default to
    :data:`FINETUNE_DEFAULTS`. ``probe_fraction`` of the documents form the probe split (0 with
    ``probe=False``); ``max_train_docs`` caps the training split (CPU budgets). ``cache_dir``: store and
    reuse the fine-tuned original and gold standard (:func:`~steu_ext.methods.finetune.finetune_cached`).
    ``probe``/``relearn``/``inspect_edits`` switch the adversarial evaluations on or off for every run
    (the original model included); ``probe_config``/``relearn_config`` default to seed ``seed``. The probe
    trains on the probe split and scores the held-out split; the relearning attack draws its labelled
    documents from the training split and scores held-out documents against the original's F1 on them.
    ``config.seed`` is replaced by ``seed`` (one seed drives the split, fine-tuning and unlearning).

    Returns the report; ``report["rows"]`` has one row per run (``original`` first) with ``method``,
    ``forget_f1``, ``retain_macro_f1``, ``params_modified``, ``params_percent``, ``mia_auc``, ``seconds``
    (wall-clock seconds of the method call, evaluation excluded; ``None`` for the original).
    ``report["results"][method]`` holds the full evaluation (per-class F1, the forgotten class's
    confusion, MIA losses), the exact per-tensor parameter changes, CPU seconds, settings and loss history,
    and ``probe``, ``relearn`` and (STEU edits) ``edit_inspection``; ``report["scorecard"]`` has the
    scorecard rows (:func:`~steu_ext.eval.scorecard.scorecard_rows`).
    """
    # --- every check that needs no model, before any work ---
    methods = _check_methods(methods)
    cfg = replace(config, seed=seed) if config is not None else STEUConfig(seed=seed)  # one seed per run
    names = list(data.label_names)
    target_idx = resolve_target(target, names)
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    if not isinstance(top_layers, int) or top_layers < 0:
        raise ValueError(f"top_layers must be an int >= 0, got {top_layers!r}")
    finetune_epochs, finetune_lr = finetune_settings(finetune_mode, finetune_epochs, finetune_lr)
    if finetune_epochs == 0 and "retrain" in methods:
        raise ValueError("'retrain' redoes the original fine-tuning: it needs finetune_epochs > 0")
    multi = True if cfg.multi_label is None else bool(cfg.multi_label)  # sigmoid heads by default
    if data.multi_label and not multi:
        raise ValueError("the data is multi-label but a single-label (softmax) head was requested")
    pcfg = (probe_config or ProbeConfig(seed=seed)) if probe else None
    rcfg = (relearn_config or RelearnConfig(seed=seed)) if relearn else None
    if pcfg is not None:
        pcfg.validate()
    if rcfg is not None:
        rcfg.validate()

    t_start = time.perf_counter()
    torch.manual_seed(seed)
    net, tok, new_head, model_desc = tiny_models.classifier_or_tiny(model, data.text, names, multi, seed)
    mode = finetune_mode
    cfg.validate(net.get_input_embeddings().weight.shape[0])
    if set(methods) & set(_TOP_N):
        bl.top_layer_params(net, top_layers, cfg.head_modules)  # raises for top_layers > the model's layers

    train_idx, probe_idx, test_idx = split_protocol(data.labels, test_fraction, probe_fraction if probe else 0.0,
                                                    seed, max_train_docs)
    Y = label_matrix(data.labels, len(names))
    enc = Encoded(tok, data.text, Y, cfg.max_length)
    members = [i for i in train_idx if Y[i, target_idx] > 0]
    nonmembers = [i for i in test_idx if Y[i, target_idx] > 0]
    if not members or not nonmembers:
        raise ValueError(f"class {names[target_idx]!r} needs documents in both the training and the test "
                         f"split (has {len(members)} and {len(nonmembers)})")
    base = copy.deepcopy(net) if "retrain" in methods else None  # the pretrained base, before fine-tuning

    # a just-created head starts at the class priors (the gold standard at its own: the target never occurs)
    ft_kw = dict(mode=mode, epochs=finetune_epochs, lr=finetune_lr, seed=seed, multi_label=multi,
                 head_modules=cfg.head_modules, prior_bias=new_head)
    t_ft = time.perf_counter()
    ft_cached = False
    if finetune_epochs > 0:
        torch.manual_seed(seed)
        ft_cached = finetune_cached(net, enc, train_idx, cache_dir=cache_dir, progress=progress,
                                    **ft_kw)["cached"]
    t_ft = time.perf_counter() - t_ft
    net.eval()
    fine_tuned = snapshot(net)

    def _eval(m):
        return evaluate(m, enc, test_idx, target_idx, names, multi, member_idx=members,
                        nonmember_idx=nonmembers)

    results: Dict[str, Dict[str, Any]] = {"original": _eval(net)}
    out_names = {n for n, p in net.named_parameters()
                 if any(p is q for q in output_layer(net, cfg.head_modules).parameters())}
    probe_train = probe_train_docs(enc, probe_idx, target_idx, pcfg) if pcfg is not None else []
    orig_features = (extract_features(net, enc, probe_train + list(test_idx), pcfg.batch_size, cfg.head_modules)
                     if pcfg is not None else None)

    def _adversary(m, ev: Dict[str, Any], changed: Sequence[str], reference: Optional[float]) -> None:
        """Probe and relearning attack on ``m`` (never modified); results go into ``ev``."""
        if pcfg is not None:
            shared = set(changed) <= out_names  # encoder untouched: the features are the original's
            ev["probe"] = probe_recovery(m, enc, probe_idx, test_idx, target_idx, config=pcfg,
                                         head_modules=cfg.head_modules,
                                         features=orig_features if shared else None)
            ev["probe"]["features_shared_with_original"] = shared
        if rcfg is not None:
            ev["relearn"] = relearn_attack(m, enc, train_idx, test_idx, target_idx, multi_label=multi,
                                           reference_f1=reference, config=rcfg, head_modules=cfg.head_modules)

    learned = results["original"]["forget_f1"]
    warnings: List[str] = []
    if learned < MIN_LEARNED_F1:
        warnings.append(f"the fine-tuned original reaches only F1 {learned:.3f} on {names[target_idx]!r} "
                        f"(< {MIN_LEARNED_F1}): it has barely learned the class, so there is little to forget; "
                        "fine-tune longer (finetune_epochs) before reading the scorecard")
        log.warning(warnings[-1])
    from ..eval.vacuity import vacuity_warnings

    for w in vacuity_warnings(names[target_idx], k=cfg.k, n_forget_docs=len(members),
                              n_eval_target_docs=len(nonmembers)):
        warnings.append(w)
        log.warning(w)
    _adversary(net, results["original"], [], None)
    ref_f1 = results["original"]["relearn"]["f1_start"] if rcfg is not None else None
    total_params = sum(p.numel() for p in net.parameters())
    rows: List[Dict[str, Any]] = [_row("original", results["original"], 0, total_params, None)]
    train_texts = [data.text[i] for i in train_idx]
    train_enc = enc.subset(train_idx)
    for name in methods:
        m = copy.deepcopy(base if name == "retrain" else net)
        kw: Dict[str, Any] = {"config": cfg, "label_names": names, "encoded": train_enc, "progress": progress}
        if name in _TOP_N:
            kw["top_layers"] = top_layers
        if name == "retrain":
            kw.update(mode=mode, epochs=finetune_epochs, seed=seed, lr=finetune_lr, cache_dir=cache_dir,
                      prior_bias=new_head)
        torch.manual_seed(seed)
        t0, c0 = time.perf_counter(), time.process_time()
        res = _FUNCS[name](m, tok, train_texts, Y[train_idx], target_idx, **kw)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        ev = _eval(m)
        mod = modified_parameters(m, fine_tuned)
        ev.update(method=name, seconds=seconds, cpu_seconds=cpu_seconds, seconds_detail=res.seconds,
                  steps=res.steps, settings=res.settings, trainable_tensors=res.trainable,
                  trainable_params=res.trainable_elements,
                  params_modified={"count": mod["modified"], "total": mod["total"], "percent": mod["percent"],
                                   "per_tensor": mod["per_tensor"]},
                  history=res.history)
        if res.steu is not None:
            sel = res.steu.selected_tokens
            ev["selected_tokens"] = {"k": int(sel.numel()),
                                     "top": [tok.convert_ids_to_tokens(int(i)) for i in sel[:20]]}
            edit = res.steu.edit
            if inspect_edits and edit.row_ids.numel():
                ev["edit_inspection"] = inspect_edit(edit, fine_tuned[edit.embedding], tok)
        _adversary(m, ev, list(mod["per_tensor"]), ref_f1)
        results[name] = ev
        rows.append(_row(name, ev, mod["modified"], mod["total"], seconds))
        log.info("%s: forget F1 %.4f, retain F1 %.4f, %d params, %.1f s", name, ev["forget_f1"],
                 ev["retain_macro_f1"], mod["modified"], seconds)
        del m, res

    report: Dict[str, Any] = {
        "kind": "compare", "model": model_desc, "target": target_idx, "target_name": names[target_idx],
        "label_names": names, "multi_label": multi, "methods": methods,
        "data": {"documents": len(data), "train": len(train_idx), "probe": len(probe_idx),
                 "test": len(test_idx), "forget_train_docs": len(members), "forget_test_docs": len(nonmembers)},
        "warnings": warnings,
        "config": asdict(cfg),
        "compare": {"top_layers": top_layers, "layer_lr": bl.DEFAULT_LAYER_LR, "test_fraction": test_fraction,
                    "finetune_epochs": finetune_epochs, "seed": seed, "out_dir": out_dir,
                    "torch_threads": torch.get_num_threads()},
        "adversary": {"probe": asdict(pcfg) if pcfg is not None else None,
                      "relearn": asdict(rcfg) if rcfg is not None else None,
                      "inspect_edits": inspect_edits, "trivial_margin": bl.DEFAULT_MARGIN},
        "finetune": {"mode": mode, "epochs": finetune_epochs, "lr": finetune_lr, "seconds": t_ft,
                     "cached": ft_cached, "original_forget_f1": learned,
                     "learned_target": learned >= MIN_LEARNED_F1},
        "rows": rows,
        "results": results,
        "seconds": {"wall_total": time.perf_counter() - t_start},
    }
    report["scorecard"] = scorecard_rows(report)
    if not write:
        return report
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "report.json"), report)
    write_scorecard(out_dir, report)
    f1 = {r: [results[r]["per_class_f1"][n] for n in names] for r in results}
    plot_f1_per_method(os.path.join(out_dir, "f1_per_class.png"), names, f1, target_idx,
                       title=f"Per-class F1 after forgetting {names[target_idx]!r}")
    plot_tradeoff(os.path.join(out_dir, "tradeoff.png"), rows,
                  title=f"Forgetting {names[target_idx]!r}: forget vs retain F1")
    return report


def _run_key(data: TextClassificationData, target: int, seed: int, compare_kw: Dict[str, Any]) -> str:
    """A hash of everything one scorecard run depends on (documents, labels, target, seed, settings)."""
    import hashlib
    import json

    h = hashlib.sha256()
    for text, lab in zip(data.text, data.labels):
        h.update(text.encode("utf-8", "surrogatepass") + b"\0" + repr(lab).encode() + b"\1")
    kw = {k: (asdict(v) if hasattr(v, "__dataclass_fields__") else v) for k, v in sorted(compare_kw.items())}
    h.update(json.dumps({"labels": list(data.label_names), "target": target, "seed": seed, "kw": kw},
                        sort_keys=True, default=repr).encode())
    return h.hexdigest()


def _read_report(path: str, key: str) -> Optional[Dict[str, Any]]:
    import json

    try:
        with open(path, encoding="utf-8") as f:
            rep = json.load(f)
    except (OSError, ValueError):
        return None
    return rep if isinstance(rep, dict) and rep.get("run_key") == key else None


def _row(method: str, ev: Dict[str, Any], modified: int, total: int, seconds: Optional[float]
         ) -> Dict[str, Any]:
    return {"method": method, "forget_f1": ev["forget_f1"], "retain_macro_f1": ev["retain_macro_f1"],
            "params_modified": int(modified), "params_percent": 100.0 * modified / max(total, 1),
            "mia_auc": ev["mia_auc"], "seconds": seconds}


def format_table(report: Dict[str, Any]) -> str:
    """One aligned text table of the comparison: forget F1, retain avg F1, params modified, MIA AUC, time."""
    head = ("method", f"forget F1 ({report['target_name']})", "retain avg F1", "params modified", "MIA AUC",
            "time")
    lines = []
    for r in report["rows"]:
        lines.append((r["method"], f"{r['forget_f1']:.4f}", f"{r['retain_macro_f1']:.4f}",
                      f"{r['params_modified']:,} ({r['params_percent']:.3f} %)",
                      "-" if r["mia_auc"] is None else f"{r['mia_auc']:.4f}",
                      "-" if r["seconds"] is None else f"{r['seconds']:.1f} s"))
    w = [max(len(head[j]), *(len(x[j]) for x in lines)) for j in range(len(head))]

    def fmt(cells):
        return "  ".join(c.ljust(w[0]) if j == 0 else c.rjust(w[j]) for j, c in enumerate(cells))

    return "\n".join([fmt(head), "-" * (sum(w) + 2 * (len(w) - 1)), *(fmt(x) for x in lines)])


def run_scorecard(data: TextClassificationData, targets: Sequence, *, seeds: Sequence[int] = (0, 1, 2),
                  out_dir: str = "steu_scorecard", method: str = "steu", stem: str = "scorecard",
                  extra: Optional[Dict[str, Any]] = None, per_seed_reports: bool = True,
                  reuse: bool = False, **compare_kw) -> Dict[str, Any]:
    """:func:`run_compare` for every target class and seed (seed = data split + fine-tuning + unlearning
    seed; ``compare_kw`` go to every call), then the scorecard of mean ± sd over seeds
    (:func:`~steu_ext.eval.scorecard.write_seed_scorecard`) in ``out_dir``. With ``per_seed_reports`` each
    run's full report is kept in ``out_dir/<target>/seed_<n>/``. With ``reuse=True`` a kept report is read
    back instead of rerun when its ``run_key`` (a hash of the documents, labels, target, seed and every
    setting) matches, so a long scorecard can run one (target, seed) at a time and be aggregated at the end.
    Returns ``{"by_target": {name: [reports]}, "paths": {...}}``."""
    from ..eval.scorecard import write_seed_scorecard

    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and non-empty, got {seeds}")
    names = list(data.label_names)
    idx = [resolve_target(t, names) for t in targets]
    if not idx:
        raise ValueError("no target classes given")
    _check_methods(compare_kw.get("methods", METHODS))
    by_target: Dict[str, List[Dict[str, Any]]] = {}
    for t in idx:
        for s in seeds:
            sub = os.path.join(out_dir, names[t].replace(os.sep, "_"), f"seed_{s}")
            key = _run_key(data, t, s, compare_kw)
            rep = _read_report(os.path.join(sub, "report.json"), key) if reuse else None
            if rep is not None:
                log.info("scorecard: target %r, seed %d: reusing %s", names[t], s, sub)
            else:
                log.info("scorecard: target %r, seed %d", names[t], s)
                rep = run_compare(data, t, seed=s, out_dir=sub, write=per_seed_reports, **compare_kw)
                rep.pop("results_models", None)
                rep["run_key"] = key
                if per_seed_reports:
                    write_json(os.path.join(sub, "report.json"), rep)
            by_target.setdefault(names[t], []).append(rep)
    paths = write_seed_scorecard(out_dir, by_target, method=method, extra=extra, stem=stem)
    return {"by_target": by_target, "paths": paths}
