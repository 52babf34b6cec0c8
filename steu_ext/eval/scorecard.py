"""The adversarial scorecard of a method comparison: one table and one plot over every method.

Columns: behaviour (forget F1, retain average F1), representation (linear-probe F1 / AUROC for the target
class on frozen features), relearning (steps until target F1 is back at half the original's, F1 after the
attack's step budget), loss-based membership-inference AUC, parameters modified and time. Built from the
report of :func:`steu_ext.methods.compare.run_compare`; columns whose attack was switched off read ``-``.
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
