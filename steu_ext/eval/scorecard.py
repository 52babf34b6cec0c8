"""The adversarial scorecard of a method comparison: one table and one plot over every method.

Columns: behaviour (forget F1, retain average F1), representation (linear-probe F1 / AUROC for the target
class on frozen features), relearning (steps until target F1 is back at half the original's, F1 after the
attack's step budget), loss-based membership-inference AUC, parameters modified and time. Built from the
report of :func:`steu_ext.experiments.compare.run_compare`; columns whose attack was switched off read ``-``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from .plots import plot_scorecard
from .report import write_json

COLUMNS = (
    "method",
    "forget_f1",
    "retain_macro_f1",
    "probe_f1",
    "probe_auroc",
    "relearn_steps_to_half",
    "relearn_f1_after",
    "mia_auc",
    "params_modified",
    "params_percent",
    "seconds",
)


def scorecard_rows(report: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One dict per run (``original`` first) with :data:`COLUMNS` plus ``relearn_budget``."""
    out = []
    for row in report["rows"]:
        res = report["results"][row["method"]]
        probe, rel = res.get("probe"), res.get("relearn")
        out.append(
            {
                **{k: row[k] for k in ("method", "forget_f1", "retain_macro_f1")},
                "probe_f1": probe["f1"] if probe else None,
                "probe_auroc": probe["auroc"] if probe else None,
                "relearn_steps_to_half": rel["steps_to_half"] if rel else None,
                "relearn_f1_after": rel["f1_after"] if rel else None,
                "relearn_budget": rel["budget"] if rel else None,
                **{k: row[k] for k in ("mia_auc", "params_modified", "params_percent", "seconds")},
            }
        )
    return out


def _cells(r: Dict[str, Any]) -> List[str]:
    def f(x, spec=".4f"):
        return "-" if x is None else format(x, spec)

    if r["relearn_budget"] is None:
        steps = "-"
    else:
        steps = (
            f">{r['relearn_budget']}"
            if r["relearn_steps_to_half"] is None
            else str(r["relearn_steps_to_half"])
        )
    return [
        r["method"],
        f(r["forget_f1"]),
        f(r["retain_macro_f1"]),
        f(r["probe_f1"]),
        f(r["probe_auroc"]),
        steps,
        f(r["relearn_f1_after"]),
        f(r["mia_auc"]),
        f"{r['params_modified']:,} ({r['params_percent']:.3f} %)",
        f(r["seconds"], ".1f"),
    ]


def _header(report: Dict[str, Any]) -> List[str]:
    target = report["target_name"]
    budget = next((r["budget"] for r in (v.get("relearn") for v in report["results"].values()) if r), None)
    b = f"@{budget}" if budget is not None else ""
    return [
        "method",
        f"forget F1 ({target})",
        "retain avg F1",
        "probe F1",
        "probe AUROC",
        "relearn steps to 1/2",
        f"relearn F1 {b}".strip(),
        "MIA AUC",
        "params modified",
        "time (s)",
    ]


def format_scorecard(report: Dict[str, Any], markdown: bool = False) -> str:
    """The scorecard as an aligned text table, or a markdown table with ``markdown=True``."""
    head = _header(report)
    lines = [_cells(r) for r in scorecard_rows(report)]
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        out += ["| " + " | ".join(c) + " |" for c in lines]
        return "\n".join(out)
    w = [max(len(head[j]), *(len(x[j]) for x in lines)) for j in range(len(head))]

    def fmt(cells):
        return "  ".join(c.ljust(w[0]) if j == 0 else c.rjust(w[j]) for j, c in enumerate(cells))

    return "\n".join([fmt(head), "-" * (sum(w) + 2 * (len(w) - 1)), *(fmt(x) for x in lines)])


def _settings(report: Dict[str, Any]) -> Dict[str, Any]:
    adv = report.get("adversary", {})
    return {
        k: report[k]
        for k in (
            "model",
            "target_name",
            "label_names",
            "multi_label",
            "data",
            "config",
            "compare",
            "finetune",
        )
        if k in report
    } | {"adversary": adv}


def write_scorecard(
    out_dir: str, report: Dict[str, Any], extra: Optional[Dict[str, Any]] = None, stem: str = "scorecard"
) -> Dict[str, str]:
    """Write ``<stem>.json`` (rows + the settings that produced them, plus ``extra``), ``<stem>.md`` (the
    table, the settings and STEU's edit inspection) and ``<stem>.png`` to ``out_dir``; returns the paths."""
    from .inspect_edit import format_edit_table

    os.makedirs(out_dir, exist_ok=True)
    rows = scorecard_rows(report)
    settings = _settings(report)
    inspections = {m: r["edit_inspection"] for m, r in report["results"].items() if r.get("edit_inspection")}
    doc = {
        "kind": "scorecard",
        "columns": list(COLUMNS),
        "rows": rows,
        "settings": settings,
        "probe": {m: r["probe"] for m, r in report["results"].items() if r.get("probe")},
        "relearn": {
            m: {k: v for k, v in r["relearn"].items() if k != "losses"}
            for m, r in report["results"].items()
            if r.get("relearn")
        },
        "edit_inspection": {
            m: {"summary": i["summary"], "tokens": i["tokens"][:50]} for m, i in inspections.items()
        },
        "seconds": report.get("seconds"),
        **(extra or {}),
    }
    paths = {ext: os.path.join(out_dir, f"{stem}.{ext}") for ext in ("json", "md", "png")}
    write_json(paths["json"], doc)
    d = report["data"]
    md = [
        f"# Scorecard: forgetting {report['target_name']!r}",
        "",
        (
            f"Model: {report['model']}. Documents: {d['documents']} ({d['train']} train / {d['test']} held-out; "
            f"{d['forget_train_docs']} forget-set training docs)."
        ),
        "",
        format_scorecard(report, markdown=True),
        "",
        (
            "forget/retain F1, probe and relearning F1 are on held-out documents. Probe: logistic regression "
            "on frozen features. Relearn: steps until the target F1 is back at half the original's "
            "(`>N`: not within the budget N). Params modified: exact element count vs the fine-tuned model."
        ),
        "",
        "## Settings",
        "",
        "```json",
        json.dumps(settings, indent=1, default=str),
        "```",
    ]
    if extra:
        md[4:4] = ["```json", json.dumps(extra, indent=1, default=str), "```", ""]
    for m, insp in inspections.items():
        s = insp["summary"]
        md += [
            "",
            f"## Edit inspection: {m}",
            "",
            (
                f"{s['rows']} rows edited; L2 moved mean {s.get('mean_l2', 0):.4f}, max {s.get('max_l2', 0):.4f}; "
                f"mean cosine(old, new) {s.get('mean_cosine', 1):.4f}; mean overlap of the {s['top_n']} nearest "
                f"neighbours before/after {s.get('mean_neighbour_overlap', 1):.3f}."
            ),
            "",
            format_edit_table(insp, limit=20),
        ]
    with open(paths["md"], "w") as f:
        f.write("\n".join(md) + "\n")
    plot_scorecard(paths["png"], rows, title=f"Scorecard: forgetting {report['target_name']!r}")
    return paths


# ---- several seeds: mean ± sd ------------------------------------------------------------------------

AGG_COLUMNS = ("forget_f1", "retain_macro_f1", "probe_f1", "probe_f1_cls", "probe_auroc", "relearn_steps_to_half",
               "relearn_f1_after", "mia_auc", "params_modified", "seconds")


def _stat(values: List[Optional[float]]) -> Dict[str, Any]:
    import statistics

    v = [float(x) for x in values if x is not None]
    return {"mean": statistics.fmean(v) if v else None, "sd": statistics.stdev(v) if len(v) > 1 else (0.0 if v else None),
            "n": len(v), "values": list(values)}


def _seed_row(report: Dict[str, Any], method: str) -> Dict[str, Any]:
    res = report["results"][method]
    row = next(r for r in report["scorecard"] if r["method"] == method)
    probe = res.get("probe")
    out = dict(row)
    out["probe_f1_cls"] = probe["per_pooling"]["cls"]["f1"] if probe and "cls" in probe.get("per_pooling", {}) else None
    if row["relearn_budget"] is not None and row["relearn_steps_to_half"] is None:
        # not recovered within the budget: counted at the budget (a lower bound), and said so
        out["relearn_steps_to_half"] = row["relearn_budget"]
        out["relearn_censored"] = True
    return out


def aggregate(reports: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Rows of mean ± sd over the per-seed reports of :func:`~steu_ext.experiments.compare.run_compare` (same
    target, same methods): per method ``{column: {"mean", "sd", "n", "values"}}`` for :data:`AGG_COLUMNS`,
    plus ``relearn_censored`` (seeds where relearning did not reach half the original F1 within the budget;
    those count at the budget, so the mean is a lower bound)."""
    if not reports:
        raise ValueError("no reports to aggregate")
    methods = [r["method"] for r in reports[0]["scorecard"]]
    for rep in reports[1:]:
        if [r["method"] for r in rep["scorecard"]] != methods or rep["target_name"] != reports[0]["target_name"]:
            raise ValueError("the reports to aggregate must cover the same target and methods")
    out = []
    for m in methods:
        per = [_seed_row(rep, m) for rep in reports]
        row: Dict[str, Any] = {"method": m, "seeds": [rep["compare"]["seed"] for rep in reports]}
        for c in AGG_COLUMNS:
            row[c] = _stat([p.get(c) for p in per])
        row["relearn_censored"] = sum(1 for p in per if p.get("relearn_censored"))
        row["relearn_budget"] = per[0].get("relearn_budget")
        out.append(row)
    return out


def paired_to_gold(reports: List[Dict[str, Any]], method: str, gold: str = "retrain",
                   baseline: str = "bias_suppression") -> Dict[str, Any]:
    """Per-seed paired comparisons of ``method`` with the gold standard: probe-F1 difference to gold, and
    the fraction of the baseline-to-gold probe gap that ``method`` closes (1 = at gold, 0 = no better than
    ``baseline``, which leaves the representation as it was)."""
    diff, closed = [], []
    for rep in reports:
        r = {x["method"]: x for x in rep["scorecard"]}
        if method not in r or gold not in r or r[method]["probe_f1"] is None:
            continue
        d = r[method]["probe_f1"] - r[gold]["probe_f1"]
        diff.append(d)
        if baseline in r:
            gap = r[baseline]["probe_f1"] - r[gold]["probe_f1"]
            closed.append((r[baseline]["probe_f1"] - r[method]["probe_f1"]) / gap if abs(gap) > 1e-9 else None)
    return {"probe_minus_gold": _stat(diff), "gap_closed": _stat(closed)}


TARGETS = {  # issue #12's targets for STEU, checked on the means over seeds
    "forget_f1": "<= 0.01",
    "retain_macro_f1": ">= original - 0.01",
    "probe_f1": "within ± 0.05 of the gold standard's",
    "relearn_steps_to_half": ">= the gold standard's",
    "params_modified": "<= k embedding rows + head",
}


def check_targets(rows: List[Dict[str, Any]], method: str, budget_elements: Optional[int] = None
                  ) -> List[Dict[str, Any]]:
    """:data:`TARGETS` for ``method`` against ``original`` and ``retrain`` in aggregated ``rows``."""
    r = {x["method"]: x for x in rows}
    if method not in r:
        return []
    m, o, g = r[method], r.get("original"), r.get("retrain")

    def mean(row, c):
        return row[c]["mean"] if row and row[c]["mean"] is not None else None

    out = []

    def add(fig, value, ok, ref=None):
        out.append({"figure": fig, "target": TARGETS[fig], "value": value, "reference": ref, "met": ok})

    v = mean(m, "forget_f1")
    add("forget_f1", v, v is not None and v <= 0.01)
    v, ref = mean(m, "retain_macro_f1"), mean(o, "retain_macro_f1")
    add("retain_macro_f1", v, None if ref is None or v is None else v >= ref - 0.01, ref)
    v, ref = mean(m, "probe_f1"), mean(g, "probe_f1")
    add("probe_f1", v, None if ref is None or v is None else abs(v - ref) <= 0.05, ref)
    v, ref = mean(m, "relearn_steps_to_half"), mean(g, "relearn_steps_to_half")
    add("relearn_steps_to_half", v, None if ref is None or v is None else v >= ref, ref)
    v = mean(m, "params_modified")
    add("params_modified", v, None if budget_elements is None or v is None else v <= budget_elements, budget_elements)
    return out


def _pm(s: Dict[str, Any], spec: str = ".3f") -> str:
    if s["mean"] is None:
        return "-"
    if spec == ",":
        return f"{s['mean']:,.0f}" + (f" ± {s['sd']:,.0f}" if s["sd"] else "")
    return f"{s['mean']:{spec}} ± {s['sd']:{spec}}"


def format_aggregate(rows: List[Dict[str, Any]], target_name: str) -> str:
    """Markdown table of aggregated rows (mean ± sd over seeds)."""
    head = ["method", f"forget F1 ({target_name})", "retain avg F1", "probe F1 (mean-pool)", "probe F1 ([CLS])",
            "probe AUROC", "relearn steps to 1/2", "relearn F1 after", "MIA AUC", "params modified", "time (s)"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in rows:
        steps = _pm(r["relearn_steps_to_half"], ".1f")
        if r["relearn_censored"]:
            steps += f" ({r['relearn_censored']}× >{r['relearn_budget']})"
        cells = [r["method"], _pm(r["forget_f1"]), _pm(r["retain_macro_f1"]), _pm(r["probe_f1"]),
                 _pm(r["probe_f1_cls"]), _pm(r["probe_auroc"]), steps, _pm(r["relearn_f1_after"]),
                 _pm(r["mia_auc"]), _pm(r["params_modified"], ","), _pm(r["seconds"], ".0f")]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def write_seed_scorecard(out_dir: str, by_target: Dict[str, List[Dict[str, Any]]], method: str = "steu",
                         extra: Optional[Dict[str, Any]] = None, stem: str = "scorecard") -> Dict[str, str]:
    """The multi-seed scorecard: ``by_target[target_name]`` are the per-seed reports of one target. Writes
    ``<stem>.json`` (aggregated rows, paired comparisons to the gold standard, target checks, per-seed rows,
    settings), ``<stem>.md`` and ``<stem>_probe_vs_retain.png``; returns the paths."""
    from .plots import plot_probe_vs_retain

    os.makedirs(out_dir, exist_ok=True)
    doc: Dict[str, Any] = {"kind": "scorecard-seeds", "method": method, "targets": {}, **(extra or {})}
    md = [f"# Scorecard over seeds: {method} vs baselines and the gold standard", ""]
    if extra:
        md += ["```json", json.dumps(extra, indent=1, default=str), "```", ""]
    panels = {}
    for target, reports in by_target.items():
        rows = aggregate(reports)
        panels[target] = rows
        # STEU's trainable elements are its k rows + the head: the budget the edit must stay within
        budget = reports[0]["results"].get(method, {}).get("trainable_params")
        checks = check_targets(rows, method, budget)
        others = [m["method"] for m in rows if m["method"] not in ("original", "retrain")]
        paired = {m: paired_to_gold(reports, m) for m in others}
        doc["targets"][target] = {
            "rows": rows, "checks": checks, "paired_to_gold": paired,
            "warnings": sorted({w for rep in reports for w in rep.get("warnings", [])}),
            "per_seed": {str(rep["compare"]["seed"]): rep["scorecard"] for rep in reports},
            "settings": _settings(reports[0]),
        }
        d = reports[0]["data"]
        md += [f"## Forgetting {target!r} — {len(reports)} seeds ({', '.join(str(s) for s in rows[0]['seeds'])})", "",
               (f"{d['documents']} documents per seed: {d['train']} train / {d.get('probe', 0)} probe / {d['test']} "
                f"held-out ({d['forget_train_docs']} forget-set training docs in seed {rows[0]['seeds'][0]})."), "",
               format_aggregate(rows, target), ""]
        md += ["Paired per seed against the gold standard (`retrain`): probe F1 minus gold's, and the share of the "
               "bias-suppression-to-gold probe gap that a method closes (1 = at gold, 0 = representation untouched).",
               "", "| method | probe F1 − gold | gap closed |", "|---|---:|---:|"]
        for m, p in paired.items():
            md.append(f"| {m} | {_pm(p['probe_minus_gold'])} | {_pm(p['gap_closed'], '.2f')} |")
        md += ["", f"Targets for `{method}` (means over seeds):", "", "| figure | target | value | reference | met |",
               "|---|---|---:|---:|---|"]
        for c in checks:
            val = "-" if c["value"] is None else f"{c['value']:.4g}"
            ref = "-" if c["reference"] is None else f"{c['reference']:.4g}"
            met = {True: "yes", False: "**no**", None: "-"}[c["met"]]
            md.append(f"| {c['figure']} | {c['target']} | {val} | {ref} | {met} |")
        for w in doc["targets"][target]["warnings"]:
            md += ["", f"**Warning:** {w}"]
        md.append("")
    md += ["forget/retain F1, probe and relearning figures are on held-out documents; mean ± sd over seeds (seed = "
           "data split + fine-tuning + unlearning seed). Probe: logistic regression on frozen features of the "
           "probe split (never used for training or testing). Relearn: steps until the target F1 is back at half "
           "the original's; a seed that did not get there within the budget counts at the budget. Params "
           "modified: exact element count vs the fine-tuned model."]
    paths = {"json": os.path.join(out_dir, f"{stem}.json"), "md": os.path.join(out_dir, f"{stem}.md"),
             "png": os.path.join(out_dir, f"{stem}_probe_vs_retain.png")}
    write_json(paths["json"], doc)
    with open(paths["md"], "w") as f:
        f.write("\n".join(md) + "\n")
    plot_probe_vs_retain(paths["png"], panels)
    return paths
