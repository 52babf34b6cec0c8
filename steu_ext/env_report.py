"""``python -m steu_ext.env_report``: versions, devices, compilers and which backends load."""
from __future__ import annotations

import shutil
import subprocess


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
    from steu_ext.eval.report import versions

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
