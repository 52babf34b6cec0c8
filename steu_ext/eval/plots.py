"""PNG plots of a method comparison (matplotlib, Agg backend): per-class F1 of every method and the
forget/retain trade-off."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_f1_per_method(path: str, label_names: Sequence[str], f1: Mapping[str, Sequence[float]], target: int,
                       title: Optional[str] = None) -> str:
    """Grouped bars: for every class, one bar per method (``f1[method]`` is its per-class F1 list, in
    ``label_names`` order; insertion order is kept, the original model first by convention). The
    forgotten class is marked."""
    plt = _pyplot()
    methods = list(f1)
    n, m = len(label_names), max(len(methods), 1)
    width = 0.84 / m
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(max(7.0, 0.32 * n * m + 2), 4.2))
    for j, name in enumerate(methods):
        xs = [c - 0.42 + width * (j + 0.5) for c in range(n)]
        color = "0.35" if name == "original" else cmap(j % 10)
        ax.bar(xs, list(f1[name]), width=width, label=name, color=color)
    ax.axvspan(target - 0.48, target + 0.48, color="#d62728", alpha=0.07, lw=0)
    ax.set_xticks(list(range(n)))
    ax.set_xticklabels([f"{nm}\n(forgotten)" if c == target else nm for c, nm in enumerate(label_names)],
                       fontsize=8)
    ax.set_ylabel("F1 (held-out)")
    ax.set_ylim(0, 1.05)
    ax.set_title(title or "Per-class F1 of every method")
    ax.legend(fontsize=7, ncol=min(4, m), loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_tradeoff(path: str, rows: Sequence[Mapping], original: str = "original",
                  title: Optional[str] = None) -> str:
    """Scatter of every run: x = forget F1 (lower is better), y = retain average F1 (higher is better),
    each point labelled with its method; the row whose ``method`` is ``original`` is drawn as a star.
    ``rows`` are dicts with ``method``, ``forget_f1`` and ``retain_macro_f1``."""
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    ys = [float(r["retain_macro_f1"]) for r in rows] or [0.5]
    lo, hi = max(0.0, min(ys) - 0.1), min(1.02, max(ys) + 0.08)
    if hi - lo < 0.25:  # never zoom in so far that small differences look large
        lo, hi = max(0.0, min(lo, hi - 0.25)), max(hi, min(1.02, lo + 0.25))
    xlo, xhi = -0.05, 1.05
    placed: list = []  # label boxes in axes fractions; a label that would overprint another moves down
    order = sorted(range(len(rows)), key=lambda j: -float(rows[j]["retain_macro_f1"]))
    for j in order:
        r = rows[j]
        x, y = float(r["forget_f1"]), float(r["retain_macro_f1"])
        if r["method"] == original:
            ax.scatter([x], [y], marker="*", s=260, color="0.2", zorder=3, label=original)
            ax.axhline(y, color="0.6", lw=0.8, ls="--", zorder=1)
        else:
            ax.scatter([x], [y], s=60, color=cmap(j % 10), zorder=3)
        fx, fy0 = (x - xlo) / (xhi - xlo) + 0.015, (y - lo) / (hi - lo) + 0.008
        w, h = 0.0095 * len(str(r["method"])) + 0.01, 0.034
        for k in range(2 * len(rows) + 1):  # nearest free slot: 0, below, above, 2 below, ...
            fy = fy0 + (-1) ** k * ((k + 1) // 2) * h
            if 0 <= fy <= 1 - h and not any(fx < bx + bw and bx < fx + w and fy < by + h and by < fy + h
                                            for bx, by, bw in placed):
                break
        placed.append((fx, fy, w))
        moved = abs(fy - fy0) > 1e-9
        ax.annotate(str(r["method"]), (x, y), xytext=(fx, fy), textcoords="axes fraction", fontsize=8,
                    arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6} if moved else None)
    ax.set_xlabel("forget F1 (target class, held-out; lower is better)")
    ax.set_ylabel("retain average F1 (higher is better)")
    ax.set_xlim(xlo, xhi)
    ax.set_ylim(lo, hi)
    ax.grid(alpha=0.3)
    ax.set_title(title or "Forget / retain trade-off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


_SCORECARD_PANELS = (
    ("forget_f1", "forget F1 (lower = forgotten)", (0, 1.05), False),
    ("retain_macro_f1", "retain avg F1 (higher = better)", (0, 1.05), False),
    ("mia_auc", "MIA AUC (0.5 = no signal)", (0, 1.05), False),
    ("probe_f1", "probe F1 (class still readable?)", (0, 1.05), False),
    ("probe_auroc", "probe AUROC", (0, 1.05), False),
    ("relearn_f1_after", "F1 after relearning budget", (0, 1.05), False),
    ("relearn_steps_to_half", "relearn steps to 1/2 original F1", None, False),
    ("params_modified", "params modified (log)", None, True),
    ("seconds", "time, s (log)", None, True),
)


def plot_scorecard(path: str, rows: Sequence[Mapping], title: Optional[str] = None) -> str:
    """3 x 3 panels of horizontal bars, one bar per run (``original`` grey) for every scorecard column
    (rows from :func:`steu_ext.eval.scorecard.scorecard_rows`). Missing values are left blank and marked
    ``n/a``; a relearning attack that did not reach half the original F1 is drawn at its budget, hatched
    and marked ``>budget``."""
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    names = [str(r["method"]) for r in rows]
    ys = list(range(len(rows)))[::-1]
    fig, axes = plt.subplots(3, 3, figsize=(13, 0.32 * len(rows) * 3 + 3), sharey=True)
    for ax, (key, label, xlim, log) in zip(axes.flat, _SCORECARD_PANELS):
        for y, r, j in zip(ys, rows, range(len(rows))):
            color = "0.45" if r["method"] == "original" else cmap(j % 10)
            v, hatch, note = r.get(key), None, None
            if key == "relearn_steps_to_half" and v is None and r.get("relearn_budget") is not None:
                v, hatch, note = r["relearn_budget"], "//", f">{r['relearn_budget']}"
            if v is None or (log and v <= 0):
                note = "n/a" if v is None else "0"
                v = 0
            else:
                ax.barh(y, v, color=color, hatch=hatch, edgecolor="white" if hatch else None)
            if note:
                ax.text(v, y, f" {note}", va="center", fontsize=7)
        if log:
            ax.set_xscale("log")
        if xlim:
            ax.set_xlim(*xlim)
        ax.set_title(label, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=7)
    for ax in axes[:, 0]:
        ax.set_yticks(ys)
        ax.set_yticklabels(names, fontsize=8)
    fig.suptitle(title or "Scorecard", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_probe_vs_retain(path: str, panels: Mapping[str, Sequence[Mapping]], title: Optional[str] = None) -> str:
    """One panel per target class: x = retain average F1, y = probe F1 of the target class, one point per
    method with ±sd error bars (``panels[target]`` are aggregated rows with ``method``, ``retain_macro_f1``
    / ``probe_f1`` ``{"mean", "sd"}``). The gold standard (``retrain``) is a black star with a ±0.05 band
    around its probe F1 (where an edit is indistinguishable from it), the original a grey diamond."""
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(6.2 * n, 4.8), squeeze=False)
    for ax, (target, rows) in zip(axes[0], panels.items()):
        gold = next((r for r in rows if r["method"] == "retrain" and r["probe_f1"]["mean"] is not None), None)
        if gold is not None:
            g = gold["probe_f1"]["mean"]
            ax.axhspan(g - 0.05, g + 0.05, color="k", alpha=0.07, lw=0, label="gold ± 0.05")
        for j, r in enumerate(rows):
            x, y = r["retain_macro_f1"], r["probe_f1"]
            if y["mean"] is None:
                continue
            style = {"retrain": dict(marker="*", color="k", ms=14),
                     "original": dict(marker="D", color="0.45", ms=8)}.get(r["method"],
                                                                         dict(marker="o", color=cmap(j % 10), ms=7))
            ax.errorbar(x["mean"], y["mean"], xerr=x["sd"] or 0, yerr=y["sd"] or 0, ls="none", capsize=3,
                        label=r["method"], **style)
        ax.set_xlabel("retain average F1 (held-out)")
        ax.set_ylabel("probe F1 of the target class")
        ax.set_title(f"forgetting {target!r}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(title or "Probe recovery vs retained utility (mean ± sd over seeds)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
