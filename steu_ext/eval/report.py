"""Run reports: one JSON with every figure plus the configuration and versions, and PNG plots."""
from __future__ import annotations

import json
import os
import platform
import time
from typing import Any, Dict, Optional, Sequence


def versions() -> Dict[str, Optional[str]]:
    import torch
    import transformers

    from .. import __version__

    out = {"steu_ext": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
           "python": platform.python_version(), "cuda": torch.version.cuda,
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"}
    try:
        import triton

        out["triton"] = triton.__version__
    except Exception:  # noqa: BLE001 - optional
        out["triton"] = None
    return out


def write_json(path: str, report: Dict[str, Any]) -> str:
    """Write ``report`` atomically (temp file + rename; the temp file is removed on failure)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    report = dict(report)
    report.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    report.setdefault("versions", versions())
    from .._outdir import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(report, f, indent=2, default=str)

    return atomic_write(path, write)


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
