"""``steu hds``: unlearn a QA domain from a causal LM with HDS (or one of its ablations / baselines)."""
from __future__ import annotations

import logging
import os

from ._common import (
    EXIT_OK,
    BadInput,
    _check_model_path,
    _check_out,
    _hds_device,
    _out_arg,
    _output_dir,
    _save_model,
)


def register(sub) -> None:
    """``steu hds`` and its options."""
    p = sub.add_parser("hds", help="unlearn a QA domain from a causal LM with HDS (or an ablation/baseline)",
                       description="Hierarchical dual-strategy unlearning: concept-weighted forget loss, retain "
                                   "loss, Fisher-weighted gradient projection, LoRA. --teach-tiny first teaches a "
                                   "small random Llama the QA pairs (offline protocol).")
    p.add_argument("--data", required=True, help="PubMedQA ori_pqal.json (or its folder), MedMCQA or QA JSONL")
    p.add_argument("--format", default="pubmedqa", choices=["pubmedqa", "medmcqa", "jsonl"],
                   help="layout of --data")
    p.add_argument("--forget-mesh", default=None, help="pubmedqa: comma-separated MeSH substrings of the forget "
                                                       "domain (default: with --hierarchy and --forget-domains, the "
                                                       "items whose MESHES name a level 3-4 concept of those domains; "
                                                       "else surgical procedures)")
    p.add_argument("--forget-values", default=None, help="medmcqa: forget subject_name(s) (default Surgery); "
                                                         "jsonl: forget values of --domain-column")
    p.add_argument("--question-column", default="question", help="jsonl: the question field")
    p.add_argument("--options-column", default="options", help="jsonl: list column, or comma-separated columns")
    p.add_argument("--answer-column", default="answer", help="jsonl: the answer (index, letter or option text)")
    p.add_argument("--long-answer-column", default=None, help="jsonl: an explanation field (optional)")
    p.add_argument("--domain-column", default=None, help="jsonl: the field whose --forget-values mark the "
                                                         "forget domain")
    p.add_argument("--model", default=None, help="causal LM (folder or name) that knows the QA pairs")
    p.add_argument("--teach-tiny", action="store_true", help="teach a small random Llama the QA pairs first")
    p.add_argument("--hierarchy", default=None, help="concept hierarchy YAML/JSON (token interventions)")
    p.add_argument("--forget-domains", default=None, help="hierarchy domains to target (default: all)")
    p.add_argument("--method", default="hds", choices=["hds", "hds_no_projection", "hds_no_tokens", "ga", "npo",
                                                       "graddiff"], help="HDS, an ablation or a baseline")
    p.add_argument("--forget-loss", default="npo", choices=["ga", "npo"],
                   help="gradient ascent or negative preference optimisation on the forget items")
    p.add_argument("--retain-loss", default="nll", choices=["nll", "kl", "none"],
                   help="loss that keeps the retain items' answers")
    p.add_argument("--retain-weight", type=float, default=1.0, help="lambda")
    p.add_argument("--question-weight", type=float, default=0.0,
                   help="weight of the term that holds the forget items' question tokens at --question-target "
                        "(so that the MIA cannot tell them from never-seen items); 0 = off")
    p.add_argument("--question-target", default="auto",
                   help="mean question-token NLL (nats) to hold them at (with --question-weight > 0); auto: "
                        "the median question NLL of the model on the stop half of the never-seen items "
                        "(never taught, not the reported ones), reported in report.json")
    p.add_argument("--projection", default="conflict", choices=["conflict", "always", "none"],
                   help="project the forget gradient off the retain gradient when they conflict, always, or never")
    p.add_argument("--no-fisher", action="store_true", help="plain PCGrad inner product")
    p.add_argument("--subspace", type=int, default=0, help="project against the last m retain gradients")
    p.add_argument("--adapter", default="lora", choices=["lora", "none"],
                   help="train LoRA adapters, or every parameter")
    p.add_argument("--lora-r", type=int, default=4, help="LoRA rank")
    p.add_argument("--lora-targets", default="all-linear", help="comma-separated module names, or all-linear")
    p.add_argument("--lora-layers", default=None, help="comma-separated decoder layer indices (default: all)")
    p.add_argument("--lr", type=float, default=1e-2, help="1e-2 suits LoRA; use ~3e-4 for the full-parameter "
                                                           "baselines ga/npo/graddiff")
    p.add_argument("--epochs", type=int, default=30, help="most epochs (passes over the forget items)")
    p.add_argument("--stop", default=None, choices=["indistinguishable", "none"],
                   help="indistinguishable: stop once the forget items' accuracy is within --band of the never-seen "
                        "level (the model's accuracy on never-seen items) and the MIA AUC within --auc-band of 0.5, "
                        "both on the stop half; the closest epoch is kept when never met (the default when there "
                        "are >= 2 never-seen items). none: --epochs epochs")
    p.add_argument("--band", type=float, default=0.05, help="accuracy band around the never-seen level")
    p.add_argument("--auc-band", type=float, default=0.05, help="MIA AUC band around 0.5")
    p.add_argument("--stop-fraction", type=float, default=0.5,
                   help="share of the forget and never-seen items the stopping rule (and --question-target auto) "
                        "may use; the figures are reported on the rest")
    p.add_argument("--stop-at-forgetting", type=float, default=None,
                   help="the paper's framing instead: stop once the forgetting rate (on the stop half) reaches this")
    p.add_argument("--batch-size", type=int, default=16, help="forget (and as many retain) items per step")
    p.add_argument("--max-length", type=int, default=64, help="tokens per prompt + answer")
    p.add_argument("--clip-norm", type=float, default=None, help="DP-style clipping (no privacy claim)")
    p.add_argument("--noise-multiplier", type=float, default=0.0, help="DP-style gradient noise (no privacy "
                                                                       "claim)")
    p.add_argument("--max-forget", type=int, default=None, help="subsample the forget domain")
    p.add_argument("--max-retain", type=int, default=None, help="subsample the retain domain")
    p.add_argument("--never-seen-fraction", type=float, default=0.2,
                   help="forget-domain items held out (never taught/unlearned) for the MIA")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="dtype of the model's weights (bfloat16 halves the memory of a large LM)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the forward passes (A100/H100); the "
                                                       "Fisher EMA and the projection stay fp32")
    p.add_argument("--seed", type=int, default=0, help="random seed (subsampling, batches, initialisation)")
    p.add_argument("--save-model", action="store_true", help="also save the unlearned (merged) model; the edit "
                                                             "itself is always written as adapter/ (unmerged PEFT)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _out_arg(p)
    p.set_defaults(func=cmd_hds)


def _load_qa(a):
    from ..data import qa

    if a.format == "pubmedqa":
        if a.hierarchy and a.forget_domains and not a.forget_mesh:   # from the items' MESHES through the hierarchy
            from ..data.concepts import load_hierarchy

            return qa.load_pubmedqa(a.data, hierarchy=load_hierarchy(a.hierarchy),
                                    forget_domains=a.forget_domains.split(","))
        return qa.load_pubmedqa(a.data, forget_mesh=a.forget_mesh.split(",") if a.forget_mesh else qa.SURGICAL_MESH)
    if a.format == "medmcqa":
        return qa.load_medmcqa(a.data, forget_subjects=a.forget_values.split(",") if a.forget_values else ("Surgery",))
    if not a.domain_column or not a.forget_values:
        raise BadInput("--format jsonl needs --domain-column and --forget-values")
    opts = a.options_column.split(",")
    return qa.load_qa_jsonl(a.data, question=a.question_column, options=opts[0] if len(opts) == 1 else opts,
                            answer=a.answer_column, long_answer=a.long_answer_column, domain=a.domain_column,
                            forget_values=a.forget_values.split(","))


def cmd_hds(a) -> int:
    """Unlearn a QA domain from a causal LM with HDS (or one of its ablations / baselines)."""
    import time

    import torch

    from ..data.concepts import load_hierarchy
    from ..data.qa import split_domain, subsample
    from ..eval.qa import accuracy, continuation_of, evaluate_qa, prompt_of
    from ..eval.report import write_json
    from ..eval.stopping import ForgettingStop, IndistinguishableStop
    from ..experiments.tiny_models import teach, tiny_causal_lm
    from ..methods import hds

    _check_out(a.out, a.overwrite, [a.data, a.model, a.hierarchy])
    if bool(a.model) == bool(a.teach_tiny):
        raise BadInput("give exactly one of --model (a causal LM folder or name) and --teach-tiny")
    if not 0.0 <= a.never_seen_fraction < 1.0:
        raise BadInput("--never-seen-fraction must be in [0, 1)")
    if a.stop_at_forgetting is not None and not 0.0 < a.stop_at_forgetting <= 1.0:
        raise BadInput("--stop-at-forgetting must be in (0, 1]")
    if not 0.0 < a.stop_fraction < 1.0:
        raise BadInput("--stop-fraction must be in (0, 1)")
    qt_auto = str(a.question_target).lower() == "auto"
    if not qt_auto:
        try:
            a.question_target = float(a.question_target)
        except ValueError:
            raise BadInput(f"--question-target must be 'auto' or a number, got {a.question_target!r}") from None
    items = _load_qa(a)
    hierarchy = load_hierarchy(a.hierarchy) if a.hierarchy else None
    layers = [int(x) for x in a.lora_layers.split(",")] if a.lora_layers else None
    base = hds.HDSConfig(forget_loss=a.forget_loss, retain_loss=a.retain_loss, retain_weight=a.retain_weight,
                         projection=a.projection, fisher=not a.no_fisher, subspace=a.subspace,
                         adapter=a.adapter, lora_r=a.lora_r, lr=a.lr, lora_layers=layers,
                         lora_targets=a.lora_targets if a.lora_targets == "all-linear" else a.lora_targets.split(","),
                         epochs=a.epochs, batch_size=a.batch_size, max_length=a.max_length,
                         forget_domains=a.forget_domains.split(",") if a.forget_domains else None,
                         clip_norm=a.clip_norm, noise_multiplier=a.noise_multiplier, seed=a.seed,
                         autocast_dtype="bfloat16" if a.bf16 else None, question_weight=a.question_weight,
                         question_target=None if qt_auto or a.question_weight == 0 else a.question_target)
    if not qt_auto and a.question_weight > 0:
        base.validate()
    cfg = hds.baseline_config(a.method, base)
    device = _hds_device(a.device)
    dtype = getattr(torch, a.dtype)
    forget_all, retain = split_domain(items)
    forget_all = subsample(forget_all, a.max_forget, a.seed)
    retain = subsample(retain, a.max_retain, a.seed)
    n_never = int(round(a.never_seen_fraction * len(forget_all)))
    forget, never = forget_all[n_never:], forget_all[:n_never]
    if not forget:
        raise BadInput("no forget items left after holding out the never-seen ones")
    # the stop half (stopping rule, question target) and the report half (the figures) of both sets
    ks, kn = int(round(a.stop_fraction * len(forget))), int(round(a.stop_fraction * len(never)))
    halves = 0 < ks < len(forget) and 0 < kn < len(never)
    f_stop, f_rep = (forget[:ks], forget[ks:]) if halves else (forget, forget)
    n_stop, n_rep = (never[:kn], never[kn:]) if halves else (never, never)
    rule_name = "forgetting" if a.stop_at_forgetting is not None else (a.stop or "indistinguishable")
    if rule_name == "indistinguishable" and not halves:
        if a.stop == "indistinguishable":
            raise BadInput(f"--stop indistinguishable needs at least 2 forget and 2 never-seen items (have "
                           f"{len(forget)} and {len(never)}): raise --never-seen-fraction or use more data")
        logging.getLogger("steu_ext").warning("too few never-seen items for the indistinguishable stopping rule "
                                              "(default): training %d epochs", a.epochs)
        rule_name = "none"
    if qt_auto and cfg.question_weight > 0 and not halves:
        raise BadInput("--question-target auto needs at least 2 never-seen items, so that the estimate and the "
                       "reported MIA use different ones (raise --never-seen-fraction, or give a number)")
    if a.teach_tiny:
        model, tok = tiny_causal_lm([prompt_of(i) + continuation_of(i) for i in items], seed=a.seed)
        taught = teach(model, tok, forget + retain, max_length=a.max_length, seed=a.seed)
        model.to(device=device, dtype=dtype)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        _check_model_path(a.model)
        try:
            model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype)
            tok = AutoTokenizer.from_pretrained(a.model)
        except (OSError, ValueError) as e:
            raise BadInput(f"cannot load a causal LM from {a.model!r}: {str(e).splitlines()[0]}") from None
        model.to(device)
        taught = None
    kw = {"max_length": a.max_length}
    q_est = None
    if cfg.question_weight > 0 and qt_auto:
        q_est = hds.estimate_question_target(model, tok, n_stop, max_length=a.max_length,
                                             exclude=forget + retain + (n_rep if halves else []))
        cfg.question_target = q_est["value"]
        print(f"question target {q_est['value']:.3f} nats/token: median question NLL of the model on {q_est['n']} "
              "never-seen items (stop half)")
    cfg.validate()
    with _output_dir(a.out, a.overwrite, [a.data, a.model, a.hierarchy]) as tmp:
        before = evaluate_qa(model, tok, f_rep, retain, n_rep or None, **kw)
        t0 = time.perf_counter()
        monitor = None
        if rule_name == "forgetting":
            acc0 = before["forget_acc"] if not halves else accuracy(model, tok, f_stop, **kw)
            monitor = ForgettingStop(tok, f_stop, acc0, a.stop_at_forgetting, **kw)
        elif rule_name == "indistinguishable":
            monitor = IndistinguishableStop(tok, f_stop, n_stop, model=model, band=a.band, auc_band=a.auc_band,
                                            **kw)
        res = hds.unlearn(model, tok, forget, retain, hierarchy=hierarchy, config=cfg, monitor=monitor,
                          progress=not a.quiet)
        wall = time.perf_counter() - t0
        after = evaluate_qa(res.model, tok, f_rep, retain, n_rep or None, before=before, **kw)
        if res.adapter_state is not None:
            res.save_adapter(os.path.join(tmp, "adapter"))
        if a.save_model:
            _save_model(res.model, tok, os.path.join(tmp, "model"))
        budget = None
        if cfg.adapter == "lora":
            budget = {"this_model": hds.lora_budget(model, cfg)}
        report = {"method": a.method, "model": a.model or "tiny (taught with --teach-tiny)", "data": a.data,
                  "format": a.format, "hierarchy": a.hierarchy, "config": res.config,
                  "n_forget": len(forget), "n_retain": len(retain), "n_never_seen": len(never),
                  "halves": {"stop": {"forget": len(f_stop), "never_seen": len(n_stop)},
                             "report": {"forget": len(f_rep), "never_seen": len(n_rep)}, "disjoint": halves},
                  "question_target": (q_est and {k: v for k, v in q_est.items() if k != "ids"})
                  or ({"value": cfg.question_target, "given": True} if cfg.question_weight > 0 else None),
                  "taught": taught, "before": before, "after": after, "params_modified": res.params,
                  "lora_budget": budget, "stopping": res.stopping,
                  "adapter": "adapter/ (unmerged PEFT adapter; hds.load_adapter / PeftModel.from_pretrained)"
                             if res.adapter_state is not None else None,
                  "privacy": ("no privacy guarantee is claimed: clipping is per batch and no accountant runs"
                              if cfg.noise_multiplier > 0 else None),
                  "seconds": {**res.seconds, "wall": wall}, "history": res.history}
        write_json(os.path.join(tmp, "report.json"), report)
    p = res.params
    stop_txt = "" if res.stopping is None else (
        f"; stopping rule {'met at epoch ' + str(res.stopping['met_at_epoch']) if res.stopping['met'] else 'not met'}"
        + (f" (best epoch {res.stopping['best_epoch']} restored)" if res.stopping.get("restored_best") else ""))
    mia = f", MIA AUC {after['mia_auc']:.3f}" if "mia_auc" in after else ""
    print(f"HDS ({a.method}): forget acc {before['forget_acc']:.3f} -> {after['forget_acc']:.3f} "
          f"(forgetting rate {after['forgetting_rate']:.3f}){mia}, retain acc {before['retain_acc']:.3f} -> "
          f"{after['retain_acc']:.3f} (preservation {after['preservation']:.3f}); {p['modified']:,} of "
          f"{p['total']:,} parameters trained ({p['percent']:.3f} %), {p['merged_modified']:,} changed if merged "
          f"({p['merged_percent']:.3f} %){stop_txt}; {wall:.1f} s")
    print(f"report: {os.path.join(a.out, 'report.json')}")
    return EXIT_OK
