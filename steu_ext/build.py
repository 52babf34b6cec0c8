"""Compile the C++ CPU (and, with a CUDA build of torch, CUDA) kernels ahead of time:
``python -m steu_ext.build [--verbose] [--cpu-only]``.

Prints the sources, the build directory and library, the registered ops and how long it took; exits with
status 1 and the reason if the build fails. Later ``import steu_ext`` sessions only load the cached build.
"""

from __future__ import annotations

import argparse
import sys
import time

from . import _build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m steu_ext.build", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="show the compiler commands and output")
    parser.add_argument("--cpu-only", action="store_true", help="skip the CUDA kernels")
    args = parser.parse_args(argv)

    import torch

    root = _build._source_root()
    cached = False
    if root is not None:
        sources = _build._sources(root)
        build_dir = _build._build_dir(_build._build_key(root, sources))
        print(f"steu_ext: C++ CPU kernels for torch {torch.__version__}")
        print(f"  sources:   {root}")
        for s in sources:
            print(f"             {s.relative_to(root)}")
        print(f"  build dir: {build_dir}")
        print(f"  flags:     {' '.join(_build._CFLAGS)} (link {' '.join(_build._LDFLAGS)})")
        cached = (build_dir / f"{_build._EXT_NAME}.so").is_file()
    t0 = time.perf_counter()
    try:
        _build.load_cpu_ops(verbose=args.verbose)
    except RuntimeError as e:
        print(f"steu_ext: build failed after {time.perf_counter() - t0:.1f} s:\n{e}", file=sys.stderr)
        return 1
    dt = time.perf_counter() - t0
    lib = _build._library_path
    if lib is None:
        print(f"  kernels were already registered in this process (nothing built) [{dt:.1f} s]")
    else:
        print(f"  library:   {lib}")
        print(f"  {'already built, loaded' if cached else 'compiled and loaded'} in {dt:.1f} s")
    print(f"  ops:       {', '.join('torch.ops.steu_ext.' + op for op in _build._OPS)} (CPU)")
    if args.cpu_only:
        return 0
    why = _build._torch_cuda_problem()
    if why is not None:
        print(f"steu_ext: CUDA kernels skipped: {why}")
        return 0
    t0 = time.perf_counter()
    try:
        _build.load_cuda_ops(verbose=args.verbose)
    except RuntimeError as e:
        print(f"steu_ext: CUDA build failed after {time.perf_counter() - t0:.1f} s:\n{e}", file=sys.stderr)
        return 1
    print(f"steu_ext: CUDA kernels compiled/loaded in {time.perf_counter() - t0:.1f} s (same ops, CUDA dispatch key)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
