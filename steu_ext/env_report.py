"""``python -m steu_ext.env_report``: versions, devices, compilers and which backends load."""
from __future__ import annotations

import platform
import shutil
import subprocess
from typing import Dict, Optional


def versions() -> Dict[str, Optional[str]]:
    """Versions of steu_ext, torch, transformers, Python, CUDA and Triton, and the device (for reports)."""
    import torch
    import transformers

    from . import __version__

    out = {"steu_ext": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
           "python": platform.python_version(), "cuda": torch.version.cuda,
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"}
    try:
        import triton

        out["triton"] = triton.__version__
    except Exception:  # noqa: BLE001 - optional
        out["triton"] = None
    return out


def _version(cmd):
    if shutil.which(cmd[0]) is None:
        return "not found"
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
        return out[-1] if out else "?"
    except Exception as e:  # noqa: BLE001
        return f"error: {e}"


def main() -> None:
    import torch

    import steu_ext

    for k, v in versions().items():
        print(f"{k:>14}: {v}")
    print(f"{'cuda avail':>14}: {torch.cuda.is_available()}")
    print(f"{'threads':>14}: {torch.get_num_threads()}")
    print(f"{'g++':>14}: {_version(['g++', '--version'])[:60]}")
    print(f"{'ninja':>14}: {_version(['ninja', '--version'])}")
    print(f"{'nvcc':>14}: {_version(['nvcc', '--version'])}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for op in ("doc_counts", "row_adam", "grad_project", "grad_project_basis"):
        for dev in devices:
            av = steu_ext.available_backends(op, dev)
            desc = ", ".join(f"{b}: {'ok' if why is None else 'no (' + why + ')'}" for b, why in av.items())
            print(f"{op + '@' + dev:>24}: {desc}")


if __name__ == "__main__":
    main()
