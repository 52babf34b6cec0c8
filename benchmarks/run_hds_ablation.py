"""HDS ablation on PubMedQA (offline protocol): teach a small random Llama the QA pairs, then unlearn the
surgical domain with GA, NPO, GradDiff, HDS without projection, HDS without token interventions, full
HDS, and HDS with the question tokens weighted (``hds_question_w<W>``: ``question_weight=W``, the
question target from --n-calibration held-out retain-domain questions, see below). Every method trains
until its forgetting rate reaches --target (checked after every epoch) or --max-epochs run out, so
preservation, MIA AUC, parameters and time are compared at the same forgetting.

The question target (``HDSConfig.question_target``) is the median question-token NLL of the taught model
on retain-domain questions it was never taught: neither the retain items nor the MIA's never-seen
surgical items (which are only used for the MIA). --question-target sets it instead.

    python benchmarks/run_hds_ablation.py            # ~5-10 min on 2 CPU cores

Appends one run to benchmarks/results/hds_ablation_pubmedqa.json and regenerates the .md tables (newest
first) from it; --n-forget/--n-retain/--n-never set the subset sizes.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import torch

from steu_ext import datasets
from steu_ext.data.concepts import example_hierarchy_path, load_hierarchy
from steu_ext.data.qa import load_pubmedqa, split_domain, subsample
from steu_ext.eval.qa import accuracy, continuation_of, evaluate_qa, prompt_of, sequence_nll
from steu_ext.eval.report import versions
from steu_ext.methods import hds

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = datasets.path("pubmedqa")


QUESTION_METHOD = re.compile(r"hds_question_w([0-9.]+)$")


def calibration_items(data, n_retain, n_calibration, seed=0):
    """Retain-domain items the protocol never teaches (the ones after the retain subset in its seeded
    shuffle); disjoint from the forget, retain and never-seen items."""
    _, r = split_domain(load_pubmedqa(data))
    return subsample(r, None, seed)[n_retain:n_retain + n_calibration]


def protocol(data, n_forget, n_retain, n_never, seed=0, hidden=64, max_length=64):
    """Subsets, the taught tiny LM and its accuracies before unlearning (shared with tests/test_hds.py)."""
    items = load_pubmedqa(data)
    f, r = split_domain(items)
    f, r = subsample(f, None, seed), subsample(r, n_retain, seed)
    forget, never = f[:n_forget], f[n_forget:n_forget + n_never]
    model, tok = hds.tiny_causal_lm([prompt_of(i) + continuation_of(i) for i in items], seed=seed, hidden=hidden)
    taught = hds.teach(model, tok, forget + r, max_length=max_length, check_every=10, seed=seed)
    before = evaluate_qa(model, tok, forget, r, never, max_length=max_length)
    return model, tok, forget, r, never, taught, before


def method_config(name, lr_lora, lr_full, max_epochs, max_length, lora_r, seed, question_target=None):
    base = hds.HDSConfig(lr=lr_lora, epochs=max_epochs, max_length=max_length, lora_r=lora_r,
                         forget_domains=["surgery"], seed=seed)   # otherwise the HDSConfig defaults
    q = QUESTION_METHOD.match(name)
    if q:   # full HDS with the question tokens weighted
        base.question_weight, base.question_target = float(q.group(1)), question_target
        name = "hds"
    cfg = hds.baseline_config(name, base)
    if cfg.adapter == "none":
        cfg.lr = lr_full
    return cfg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--methods", default=",".join(hds.ABLATIONS + ("hds_question_w2", "hds_question_w4")))
    ap.add_argument("--n-forget", type=int, default=40)
    ap.add_argument("--n-retain", type=int, default=120)
    ap.add_argument("--n-never", type=int, default=40)
    ap.add_argument("--n-calibration", type=int, default=80,
                    help="held-out retain-domain questions that set the question target")
    ap.add_argument("--question-target", type=float, default=None, help="instead of the calibration")
    ap.add_argument("--target", type=float, default=0.8)
    ap.add_argument("--max-epochs", type=int, default=60)
    ap.add_argument("--lr-lora", type=float, default=1e-2)
    ap.add_argument("--lr-full", type=float, default=3e-4)
    ap.add_argument("--lora-r", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results" / "hds_ablation_pubmedqa.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    model, tok, forget, retain, never, taught, before = protocol(a.data, a.n_forget, a.n_retain, a.n_never,
                                                                 a.seed, max_length=a.max_length)
    print(f"taught: {taught}; before: {json.dumps(before)}", flush=True)
    hierarchy = load_hierarchy(example_hierarchy_path())
    calib = calibration_items(a.data, a.n_retain, a.n_calibration, a.seed)
    q_cal = hds.question_nll(model, tok, calib, max_length=a.max_length)
    q_target = a.question_target if a.question_target is not None else float(q_cal.median())
    print(f"question target {q_target:.3f} (calibration: {len(calib)} held-out retain-domain questions, "
          f"question NLL median {float(q_cal.median()):.3f}, mean {float(q_cal.mean()):.3f})", flush=True)
    text_items = {"retain": retain, "calibration": calib}
    before["text_nll"] = {k: float(sequence_nll(model, tok, v, max_length=a.max_length).mean())
                          for k, v in text_items.items()}
    before["never_seen_acc"] = accuracy(model, tok, never, max_length=a.max_length)
    rows = []
    for name in a.methods.split(","):
        cfg = method_config(name, a.lr_lora, a.lr_full, a.max_epochs, a.max_length, a.lora_r, a.seed, q_target)
        trace = []
        mon = hds.forgetting_monitor(tok, forget, before["forget_acc"], a.target, trace, max_length=a.max_length)
        res = hds.unlearn(model, tok, forget, retain, hierarchy=hierarchy, config=cfg, monitor=mon)
        after = evaluate_qa(res.model, tok, forget, retain, never, before=before, max_length=a.max_length)
        row = {"method": name, **{k: after[k] for k in ("forgetting_rate", "forgetting_rate_chance_corrected",
                                                          "preservation", "forget_acc", "retain_acc", "mia_auc",
                                                          "forget_long_answer_nll", "retain_long_answer_nll",
                                                          "mia_member_loss", "mia_nonmember_loss")},
               "never_seen_acc": accuracy(res.model, tok, never, max_length=a.max_length),
               "text_nll": {k: float(sequence_nll(res.model, tok, v, max_length=a.max_length).mean())
                            for k, v in text_items.items()},
               "params_modified": res.params["modified"], "params_modified_percent": res.params["percent"],
               "params_trainable": res.params["trainable"], "merged_modified": res.params["merged_modified"],
               "epochs": res.epochs, "steps": res.steps, "train_seconds": res.seconds["train"],
               "reached_target": after["forgetting_rate"] >= a.target, "forget_acc_per_epoch": trace,
               "config": res.config}
        rows.append(row)
        print(f"{name}: FR {row['forgetting_rate']:.3f} pres {row['preservation']:.3f} MIA {row['mia_auc']:.3f} "
              f"(member {row['mia_member_loss']:.2f} / never-seen {row['mia_nonmember_loss']:.2f}) text NLL "
              f"retain {row['text_nll']['retain']:.2f} held-out {row['text_nll']['calibration']:.2f} "
              f"epochs {row['epochs']} {row['train_seconds']:.1f}s", flush=True)
    run = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions(),
           "protocol": {"data": os.path.abspath(a.data), "forget_domain": "MeSH heading matching SURGICAL_MESH",
                        "n_forget": len(forget), "n_retain": len(retain), "n_never_seen": len(never),
                        "model": "LlamaForCausalLM hidden 64, 2 layers, 4 heads, deterministic WordPiece vocab 3000",
                        "params_total": sum(p.numel() for p in model.parameters()), "taught": taught,
                        "stopping": f"each method trains until forgetting rate >= {a.target} (checked every epoch) "
                                    f"or {a.max_epochs} epochs", "chance": 1 / 3, "args": vars(a),
                        "hierarchy": os.path.relpath(example_hierarchy_path(), HERE.parent),
                        "question_target": {"value": q_target, "given": a.question_target is not None,
                                            "calibration": "median question-token NLL of the taught model on "
                                                           "held-out retain-domain questions never taught",
                                            "n_calibration": len(calib), "median": float(q_cal.median()),
                                            "mean": float(q_cal.mean())}},
           "before": before, "rows": rows, "wall_seconds": time.perf_counter() - t0}
    out = Path(a.out)
    runs = json.loads(out.read_text())["runs"] if out.exists() else []
    runs.append(run)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"runs": runs}, indent=1, default=str))
    os.replace(tmp, out)
    out.with_suffix(".md").write_text("\n".join(markdown(r) for r in reversed(runs)))   # newest first
    print(markdown(run))
    return 0


def markdown(run):
    p = run["protocol"]
    lines = [f"# HDS ablation on PubMedQA ({run['created']})", "",
             f"Tiny Llama ({p['params_total']:,} parameters) taught {p['n_forget']} surgical + {p['n_retain']} other "
             f"PubMedQA questions (taught-set accuracy {p['taught']['accuracy']:.3f} after {p['taught']['epochs']} "
             f"epochs); MIA non-members: {p['n_never_seen']} never-seen surgical questions. Stopping: {p['stopping']}. "
             f"Before: forget acc {run['before']['forget_acc']:.3f}, retain acc {run['before']['retain_acc']:.3f}, "
             f"MIA AUC {run['before']['mia_auc']:.3f}. Chance = 1/3."]
    qt = p.get("question_target")
    if qt is None:   # runs before the question-token option: the original table
        lines += ["", "| method | forgetting rate | chance-corrected | preservation | MIA AUC | params modified | % | "
                  "epochs | train s |", "|---|---|---|---|---|---|---|---|---|"]
        for r in run["rows"]:
            lines.append(f"| {r['method']} | {r['forgetting_rate']:.3f} | {r['forgetting_rate_chance_corrected']:.3f} | "
                         f"{r['preservation']:.3f} | {r['mia_auc']:.3f} | {r['params_modified']:,} | "
                         f"{r['params_modified_percent']:.2f} | {r['epochs']} | {r['train_seconds']:.1f} |")
        lines += ["", f"versions: {run['versions']}", ""]
        return "\n".join(lines)
    tb = run["before"]["text_nll"]
    lines[-1] += (f" Never-seen acc: accuracy on the never-seen surgical questions (before: "
                  f"{run['before']['never_seen_acc']:.3f}), the level a model that never saw the forget items "
                  f"would answer them at."
                  f" hds_question_w<W>: question_weight W, question_target {qt['value']:.2f} nats/token (median "
                  f"question NLL on {qt['n_calibration']} held-out retain-domain questions never taught). "
                  f"MIA losses: mean NLL per token of the training text, forget items (member) / never-seen "
                  f"surgical items (before: {run['before']['mia_member_loss']:.2f} / "
                  f"{run['before']['mia_nonmember_loss']:.2f}). Text NLL: the same on the taught retain items / "
                  f"the held-out retain-domain items (before: {tb['retain']:.2f} / {tb['calibration']:.2f}).")
    lines += ["", "| method | forgetting rate | chance-corrected | forget acc / never-seen acc | preservation | "
              "MIA AUC | MIA loss member / never-seen | text NLL retain / held-out | params modified | % | epochs | "
              "train s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in run["rows"]:
        lines.append(f"| {r['method']} | {r['forgetting_rate']:.3f} | {r['forgetting_rate_chance_corrected']:.3f} | "
                     f"{r['forget_acc']:.3f} / {r['never_seen_acc']:.3f} | "
                     f"{r['preservation']:.3f} | {r['mia_auc']:.3f} | {r['mia_member_loss']:.2f} / "
                     f"{r['mia_nonmember_loss']:.2f} | {r['text_nll']['retain']:.2f} / "
                     f"{r['text_nll']['calibration']:.2f} | {r['params_modified']:,} | "
                     f"{r['params_modified_percent']:.2f} | {r['epochs']} | {r['train_seconds']:.1f} |")
    lines += ["", f"versions: {run['versions']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
