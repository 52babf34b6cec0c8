"""HDS ablation on PubMedQA against a gold standard (offline protocol, :mod:`steu_ext.experiments.hds_protocol`).

Per seed: a tiny random Llama learns medical language (abstracts + unused PubMedQA contexts), is taught the
forget-domain items (surgery, picked from the items' own MeSH headings through the concept hierarchy) and
the retain items; the gold standard is the same model taught the retain items only (same schedule). Every
method (GA, NPO, GradDiff, HDS without projection, HDS without token interventions, HDS) then unlearns the
forget items under the same stopping rule, "until indistinguishable" (:class:`steu_ext.eval.stopping.IndistinguishableStop`):
forget accuracy within --band of the gold standard's and loss-MIA AUC within --auc-band of 0.5, both on the
**stop** half of the forget and never-seen items; if never met, the closest epoch is restored. The figures
are reported on the disjoint **report** half. The question target (HDS rows) is estimated on the stop
half's never-seen items (never taught), with the original model. Seeds change the subsets, the model and
the LoRA initialisation; the table gives mean +- sd over --seeds.

    python benchmarks/run_hds_ablation.py                 # 3 seeds, ~5-10 min per seed on an idle CPU core
    python benchmarks/run_hds_ablation.py --explore --seeds 0 --methods hds   # stop-half traces only
    # seeds in parallel processes, then one run:
    for s in 0 1 2; do python benchmarks/run_hds_ablation.py --seeds $s --partial-out /tmp/s$s.json & done; wait
    python benchmarks/run_hds_ablation.py --merge /tmp/s0.json,/tmp/s1.json,/tmp/s2.json

Appends one run to benchmarks/results/hds_ablation_pubmedqa.json and regenerates the .md (newest first).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from steu_ext import datasets
from steu_ext.eval.qa import accuracy
from steu_ext.eval.report import versions
from steu_ext.eval.stopping import IndistinguishableStop
from steu_ext.experiments import hds_protocol as hp
from steu_ext.methods import hds

HERE = Path(__file__).resolve().parent
LLAMA_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32)
TARGETS = {"forget_acc_gap": 0.05, "mia_auc": 0.55, "preservation": 0.95, "params_percent": 0.5}


def method_config(name, a, question_target):
    base = hds.HDSConfig(lr=a.lr_lora, epochs=a.max_epochs, max_length=a.max_length, lora_r=a.lora_r,
                         lora_targets=a.lora_targets.split(",") if a.lora_targets != "all-linear" else "all-linear",
                         forget_domains=["surgery"], seed=a.seed_offset, question_weight=a.question_weight,
                         question_target=question_target if a.question_weight > 0 else None)
    cfg = hds.baseline_config(name, base)
    if cfg.adapter == "none":
        cfg.lr, cfg.question_weight, cfg.question_target = a.lr_full, 0.0, None
    return cfg


def run_seed(a, seed, methods, log=print):
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    key = f"f{a.n_forget}n{a.n_never}r{a.n_retain}p{a.pretrain_epochs}a{a.pretrain_abstracts}c{a.pretrain_contexts}"
    cache = Path(a.cache) / f"protocol_{key}_seed{seed}.pt" if a.cache else None
    if cache is not None and cache.exists():
        p = torch.load(cache, weights_only=False)
    else:
        p = hp.build_protocol(a.data, n_forget=a.n_forget, n_never=a.n_never, n_retain=a.n_retain, seed=seed,
                              pretrain_epochs=a.pretrain_epochs, pretrain_abstracts=a.pretrain_abstracts,
                              pretrain_contexts=a.pretrain_contexts, max_length=a.max_length, log=log)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(p, cache)
    tok, ml = p.tokenizer, a.max_length
    gold_stop_acc = accuracy(p.gold, tok, p.forget_stop, max_length=ml)
    q = hds.estimate_question_target(p.model, tok, p.never_stop, max_length=ml,
                                     exclude=p.forget + p.retain + p.never_report)
    log(f"seed {seed}: gold forget acc (stop half) {gold_stop_acc:.3f}; question target {q['value']:.3f} "
        f"(median over {q['n']} never-taught stop-half items)")
    before = gold = None
    if not a.explore:
        before, gold = p.figures(p.model, max_length=ml), p.figures(p.gold, max_length=ml)
        log(f"before: forget {before['forget_acc']:.3f} retain {before['retain_acc']:.3f} MIA {before['mia_auc']:.3f}; "
            f"gold: forget {gold['forget_acc']:.3f} retain {gold['retain_acc']:.3f} MIA {gold['mia_auc']:.3f}")
    rows = []
    for name in methods:
        cfg = method_config(name, a, q["value"])
        cfg.seed = seed
        rule = IndistinguishableStop(tok, p.forget_stop, p.never_stop, level=gold_stop_acc, band=a.band,
                                     auc_band=a.auc_band, max_length=ml)
        res = hds.unlearn(p.model, tok, p.forget, p.retain, hierarchy=p.hierarchy, config=cfg, monitor=rule)
        st = res.stopping
        if a.explore:
            log(f"{name}: met {st['met']} at {st['met_at_epoch']}, best {st['best_epoch']}, "
                + " ".join(f"{t['epoch']}:{t['forget_acc']:.2f}/{t['mia_auc']:.2f}" for t in st["trace"]))
            continue
        figs = p.figures(res.model, max_length=ml)
        dist = hp.gold_distance(figs, gold)
        budget = hds.lora_budget(__import__("transformers").LlamaConfig(**LLAMA_7B), cfg) if cfg.adapter == "lora" \
            else None
        row = {"method": name, "seed": seed, **{k: v for k, v in figs.items() if k != "forget_nll_items"}, **dist,
               "preservation": figs["retain_acc"] / before["retain_acc"],
               "heldout_text_nll_change": figs["heldout_text_nll"] - before["heldout_text_nll"],
               "params_trainable": res.params["trainable"], "params_modified": res.params["modified"],
               "params_percent": res.params["percent"], "merged_modified": res.params["merged_modified"],
               "merged_percent": res.params["merged_percent"],
               "llama7b_percent": None if budget is None else budget["percent"],
               "llama7b_lora_params": None if budget is None else budget["lora_params"],
               "epochs": res.epochs, "stop_met": st["met"], "stop_epoch": st["met_at_epoch"],
               "restored_best": st["restored_best"], "best_epoch": st["best_epoch"],
               "train_seconds": res.seconds["train"], "stop_trace": st["trace"], "config": res.config}
        rows.append(row)
        log(f"{name} (seed {seed}): forget {row['forget_acc']:.3f} (gold {gold['forget_acc']:.3f}) MIA "
            f"{row['mia_auc']:.3f} pres {row['preservation']:.3f} params {row['params_percent']:.2f} % "
            f"(merged {row['merged_percent']:.2f} %) epochs {row['epochs']} met {row['stop_met']} "
            f"{row['train_seconds']:.0f}s")
    return {"seed": seed, "protocol": {**p.info, "gold_forget_acc_stop": gold_stop_acc},
            "question_target": {k: v for k, v in q.items() if k != "ids"}, "before": _strip(before),
            "gold": _strip(gold), "rows": rows, "seconds": time.perf_counter() - t0}


def _strip(f):
    return None if f is None else {k: v for k, v in f.items() if k != "forget_nll_items"}


def summary(seeds):
    """Per method: mean and sd over seeds of the headline figures."""
    keys = ("forget_acc", "forget_acc_gap", "mia_auc", "preservation", "forget_nll_gap", "heldout_text_nll_change",
            "params_percent", "merged_percent", "epochs", "train_seconds")
    out = {}
    for name in dict.fromkeys(r["method"] for s in seeds for r in s["rows"]):
        rows = [r for s in seeds for r in s["rows"] if r["method"] == name]
        out[name] = {k: _ms([r[k] for r in rows]) for k in keys}
        out[name]["stop_met"] = sum(bool(r["stop_met"]) for r in rows)
        out[name]["n"] = len(rows)
        out[name]["llama7b_percent"] = rows[0]["llama7b_percent"]
    ref = {k: _ms([s[w][k] for s in seeds]) for w in ("gold",) for k in ("forget_acc", "retain_acc", "mia_auc",
                                                                         "forget_nll", "heldout_text_nll")}
    bef = {k: _ms([s["before"][k] for s in seeds]) for k in ("forget_acc", "retain_acc", "mia_auc", "forget_nll",
                                                             "heldout_text_nll")}
    return {"methods": out, "gold": ref, "before": bef}


def _ms(xs):
    xs = [float(x) for x in xs]
    return [statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(datasets.path("pubmedqa")))
    ap.add_argument("--methods", default=",".join(hds.ABLATIONS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n-forget", type=int, default=80)
    ap.add_argument("--n-never", type=int, default=80)
    ap.add_argument("--n-retain", type=int, default=120)
    ap.add_argument("--pretrain-epochs", type=int, default=1)
    ap.add_argument("--pretrain-abstracts", type=int, default=300)
    ap.add_argument("--pretrain-contexts", type=int, default=300)
    ap.add_argument("--band", type=float, default=0.05)
    ap.add_argument("--auc-band", type=float, default=0.05)
    ap.add_argument("--max-epochs", type=int, default=40)
    ap.add_argument("--lr-lora", type=float, default=1e-2)
    ap.add_argument("--lr-full", type=float, default=3e-4)
    ap.add_argument("--lora-r", type=int, default=2)
    ap.add_argument("--lora-targets", default="o_proj,down_proj")
    ap.add_argument("--question-weight", type=float, default=2.0)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--seed-offset", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default=None, help="folder to keep the built protocols in (reused when the same "
                                                  "sizes and seed are asked again)")
    ap.add_argument("--explore", action="store_true", help="print the stop-half traces only (choosing a config "
                                                           "without looking at the report half); writes nothing")
    ap.add_argument("--out", default=str(HERE / "results" / "hds_ablation_pubmedqa.json"))
    ap.add_argument("--partial-out", default=None, help="write this process's seeds to a JSON file (to run seeds "
                                                        "in parallel processes) instead of appending a run")
    ap.add_argument("--merge", default=None, help="comma-separated --partial-out files: append them as one run")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    methods = a.methods.split(",")
    if a.merge:   # seeds run as separate processes (--partial-out), gathered into one run
        parts = [json.loads(Path(f).read_text()) for f in a.merge.split(",")]
        seeds = [s for part in parts for s in part["seeds"]]
        a = argparse.Namespace(**{**parts[0]["args"], "out": a.out, "partial_out": None, "explore": False,
                                  "seeds": ",".join(str(s["seed"]) for s in seeds)})
        t0 -= sum(part["wall_seconds"] for part in parts) / max(len(parts), 1)
    else:
        seeds = [run_seed(a, int(s), methods) for s in a.seeds.split(",")]
    if a.explore:
        return 0
    if a.partial_out:
        Path(a.partial_out).write_text(json.dumps({"args": vars(a), "seeds": seeds,
                                                   "wall_seconds": time.perf_counter() - t0}, default=str))
        return 0
    run = {"format": 2, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions(), "args": vars(a),
           "stopping": f"until indistinguishable: |forget acc - gold's| <= {a.band} and |MIA AUC - 0.5| <= "
                       f"{a.auc_band} on the stop half (checked every epoch, at most {a.max_epochs} epochs; "
                       "the closest epoch restored when never met)",
           "seeds": seeds, "summary": summary(seeds), "targets": TARGETS, "wall_seconds": time.perf_counter() - t0}
    out = Path(a.out)
    runs = json.loads(out.read_text())["runs"] if out.exists() else []
    runs.append(run)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"runs": runs}, indent=1, default=str))
    os.replace(tmp, out)
    new = [r for r in runs if r.get("format") == 2]
    old = [r for r in runs if r.get("format") != 2]
    text = "\n".join(markdown(r) for r in reversed(new))
    if old:
        text += ("\n## Earlier runs (the paper's framing: every method until forgetting rate >= 0.8, one seed, "
                 "no gold standard)\n\n" + "\n".join(legacy_markdown(r) for r in reversed(old)))
    out.with_suffix(".md").write_text(text)
    print(markdown(run))
    return 0


def _f(ms, nd=3):
    return f"{ms[0]:.{nd}f} ± {ms[1]:.{nd}f}"


def markdown(run):
    s, a = run["summary"], run["args"]
    p0 = run["seeds"][0]["protocol"]
    n = len(run["seeds"])
    sz = p0["sizes"]
    g, b = s["gold"], s["before"]
    lines = [f"# HDS ablation on PubMedQA against a gold standard ({run['created']})", "",
             f"Tiny Llama ({p0['params_total']:,} parameters, vocab {p0['vocab']}), pretrained on "
             f"{p0['pretrain_texts']['abstracts']} medical abstracts + {p0['pretrain_texts']['contexts']} unused "
             f"PubMedQA contexts ({a['pretrain_epochs']} epoch), then taught {sz['forget_stop'] + sz['forget_report']} "
             f"surgical + {sz['retain']} other PubMedQA questions (forget domain: items one of whose own MeSH "
             f"headings names, else mentions, a level 3-4 *surgery* concept of the shipped hierarchy). Gold standard: the same pretrained model "
             f"taught the {sz['retain']} other questions only, same schedule. Figures on the **report** half "
             f"({sz['forget_report']} forget items, {sz['never_report']} never-seen surgical items as MIA "
             f"non-members); the stopping rule and the question target used only the **stop** half "
             f"({sz['forget_stop']} + {sz['never_stop']}). Stopping: {run['stopping']}. Mean ± sd over {n} seeds "
             f"({', '.join(str(x['seed']) for x in run['seeds'])}).", "",
             f"Before unlearning: forget acc {_f(b['forget_acc'])}, retain acc {_f(b['retain_acc'])}, MIA AUC "
             f"{_f(b['mia_auc'])}, forget NLL {_f(b['forget_nll'], 2)}. **Gold standard**: forget acc "
             f"{_f(g['forget_acc'])}, retain acc {_f(g['retain_acc'])}, MIA AUC {_f(g['mia_auc'])} (forget vs "
             f"never-seen: both unseen by it), forget NLL {_f(g['forget_nll'], 2)} nats/token. Held-out medical "
             f"text NLL before: {_f(b['heldout_text_nll'], 2)}.", "",
             "| method | forget acc | − gold's (target ± 0.05) | MIA AUC (≤ 0.55) | preservation (≥ 0.95) | "
             "forget NLL − gold's | held-out text NLL change | params trained % (≤ 0.5) | elements changed if "
             "merged % | same config on Llama-7B % | epochs | rule met | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in s["methods"].items():
        l7 = "-" if m["llama7b_percent"] is None else f"{m['llama7b_percent']:.4f}"
        lines.append(f"| {name} | {_f(m['forget_acc'])} | {_f(m['forget_acc_gap'])} | {_f(m['mia_auc'])} | "
                     f"{_f(m['preservation'])} | {_f(m['forget_nll_gap'], 2)} | {_f(m['heldout_text_nll_change'], 2)} | "
                     f"{_f(m['params_percent'], 2)} | {_f(m['merged_percent'], 2)} | "
                     f"{l7} | "
                     f"{_f(m['epochs'], 1)} | {m['stop_met']}/{m['n']} | {_f(m['train_seconds'], 0)} |")
    lines += ["", "Per seed (report half):", "",
              "| seed | method | forget acc (gold) | MIA AUC | preservation | epochs | rule met / restored best |",
              "|---|---|---|---|---|---|---|"]
    for sd in run["seeds"]:
        for r in sd["rows"]:
            lines.append(f"| {sd['seed']} | {r['method']} | {r['forget_acc']:.3f} ({sd['gold']['forget_acc']:.3f}) | "
                         f"{r['mia_auc']:.3f} | {r['preservation']:.3f} | {r['epochs']} | "
                         f"{r['stop_met']} / {r['restored_best']} |")
    qt = [f"{sd['question_target']['value']:.2f}" for sd in run["seeds"]]
    lines += ["", f"HDS rows: LoRA r={a['lora_r']} on {a['lora_targets']}, lr {a['lr_lora']}, question_weight "
                  f"{a['question_weight']}, question_target estimated per seed (median question NLL of the original "
                  f"model on the stop half's never-seen items): {', '.join(qt)}. GA/NPO/GradDiff: every parameter, "
                  f"lr {a['lr_full']}. Wall time {run['wall_seconds'] / 60:.1f} min.", "",
              f"versions: {run['versions']}", ""]
    return "\n".join(lines)


def legacy_markdown(run):
    p = run["protocol"]
    lines = [f"### {run['created']}", "",
             f"Tiny Llama ({p['params_total']:,} parameters) taught {p['n_forget']} surgical + {p['n_retain']} other "
             f"questions; stopping: {p['stopping']}. Before: forget acc {run['before']['forget_acc']:.3f}, retain acc "
             f"{run['before']['retain_acc']:.3f}.", "",
             "| method | forgetting rate | preservation | MIA AUC | params modified | % | epochs |",
             "|---|---|---|---|---|---|---|"]
    for r in run["rows"]:
        lines.append(f"| {r['method']} | {r['forgetting_rate']:.3f} | {r['preservation']:.3f} | {r['mia_auc']:.3f} | "
                     f"{r['params_modified']:,} | {r['params_modified_percent']:.2f} | {r['epochs']} |")
    return "\n".join(lines + [""])


if __name__ == "__main__":
    sys.exit(main())
