"""Run reports: one JSON with every figure plus the configuration and versions, and PNG plots.
(:func:`write_json` lives in :mod:`steu_ext._outdir`, :func:`versions` in :mod:`steu_ext.env_report`, below
every layer that writes reports; both are re-exported here.)"""
from __future__ import annotations

from typing import Sequence

from .._outdir import write_json  # noqa: F401  (re-exported)
from ..env_report import versions  # noqa: F401  (re-exported)


def plot_f1(path: str, label_names: Sequence[str], before: Sequence[float], after: Sequence[float],
            target: int, title: str = "Per-class F1 before / after unlearning") -> str:
    """Grouped bar chart of per-class F1 before and after, the forgotten class marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(label_names)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * n), 4))
    xs = range(n)
    ax.bar([x - 0.2 for x in xs], before, width=0.4, label="before", color="#4C72B0")
    ax.bar([x + 0.2 for x in xs], after, width=0.4, label="after", color="#DD8452")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"{name}\n(forgotten)" if i == target else name for i, name in enumerate(label_names)],
                       fontsize=8)
    ax.set_ylabel("F1")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
