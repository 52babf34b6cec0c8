"""JIT build and load of the C++ CPU kernels in ``csrc/`` (``torch.utils.cpp_extension.load``).

The shared library registers ``torch.ops.steu_ext.*`` (schemas from ``csrc/ops.cpp``, CPU kernels from
``csrc/cpu/*.cpp``) when it is loaded; nothing is imported as a Python module. It is compiled with ninja
on first use (``MAX_JOBS`` caps the parallel compile jobs) into a build directory keyed by the torch
version, the Python version and a hash of the sources and flags, so a changed source or a new torch gets a
fresh build and an unchanged one is only loaded:

    ~/.cache/steu_ext/<key>          (override the parent directory with STEU_EXT_BUILD_DIR)

``STEU_EXT_VERBOSE_BUILD=1`` shows the compiler commands. ``python -m steu_ext.build`` builds ahead of time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

__all__ = ["cpu_ops_available", "cpu_ops_error", "load_cpu_ops"]

log = logging.getLogger("steu_ext")

_EXT_NAME = "steu_ext_cpu"
# -fno-math-errno lets sqrt vectorize (row_adam_); nothing here reads errno.
_CFLAGS = ["-O3", "-fopenmp", "-fno-math-errno"]
_LDFLAGS = ["-fopenmp"]
_OPS = ("doc_counts", "row_adam_", "grad_project_", "grad_project_basis_")
# A build of these few files takes about a minute; a lock older than this was left by a killed build.
_STALE_LOCK_S = 10 * 60

_lock = threading.RLock()
_loaded = False
_tried = False
_error: str | None = None
_library_path: str | None = None


def _source_root() -> Path | None:
    """``steu_ext/_csrc`` in an installed wheel, else ``<checkout>/csrc``; None if neither has ops.cpp."""
    pkg = Path(__file__).resolve().parent
    for root in (pkg / "_csrc", pkg.parent / "csrc"):
        if (root / "ops.cpp").is_file():
            return root
    return None


def _sources(root: Path) -> list[Path]:
    return [root / "ops.cpp", *sorted((root / "cpu").glob("*.cpp"))]


def _build_key(root: Path, sources: list[Path]) -> str:
    h = hashlib.sha256()
    headers = sorted(p for p in root.rglob("*.h") if "cuda" not in p.relative_to(root).parts)
    for p in [*sources, *headers]:
        h.update(p.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    h.update(" ".join(_CFLAGS + _LDFLAGS).encode())
    torch_tag = re.sub(r"[^0-9A-Za-z.]+", "_", torch.__version__)
    py_tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return f"torch{torch_tag}-{py_tag}-{h.hexdigest()[:16]}"


def _build_dir(key: str) -> Path:
    parent = os.environ.get("STEU_EXT_BUILD_DIR") or os.path.join("~", ".cache", "steu_ext")
    return Path(parent).expanduser() / key


def _ops_registered() -> bool:
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    try:
        return all(has(f"steu_ext::{op}", "CPU") for op in _OPS)
    except (RuntimeError, AttributeError):  # schema not defined (or a torch without this helper)
        return False


def _ensure_ninja() -> None:
    """Find ninja; in a venv that is not activated the pip-installed ninja is next to python, not on PATH."""
    if shutil.which("ninja"):
        return
    candidates = [Path(sys.executable).parent]
    try:
        import ninja  # type: ignore[import-not-found]

        candidates.insert(0, Path(ninja.BIN_DIR))
    except (ImportError, AttributeError):
        pass  # the pip package is optional; a system ninja does as well
    for d in candidates:
        if (d / "ninja").is_file() and os.access(d / "ninja", os.X_OK):
            os.environ["PATH"] = str(d) + os.pathsep + os.environ.get("PATH", "")
            return
    raise RuntimeError(
        "steu_ext: cannot build the C++ CPU kernels: `ninja` was not found on PATH. "
        "Install it with `pip install ninja` (in a virtualenv, activate it or put its bin/ directory "
        "on PATH)."
    )


def _ensure_compiler() -> None:
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx.split()[0]) is None:
        raise RuntimeError(
            f"steu_ext: cannot build the C++ CPU kernels: no C++ compiler found (looked for {cxx!r}, "
            "from $CXX or the default `c++`). Install one (e.g. `apt-get install g++` or "
            "`conda install gxx_linux-64`) or point $CXX at it. The pure-PyTorch reference kernels work "
            "without it (STEU_EXT_BACKEND=reference)."
        )


def _wait_for_lock(build_dir: Path) -> None:
    """Wait while another process builds in ``build_dir``; remove its lock if it is stale.

    torch's own wait on ``<build_dir>/lock`` has no timeout, so a build killed mid-way (Ctrl-C, OOM, job
    time limit) would make every later load hang. Waiting here first bounds that to ``_STALE_LOCK_S``.
    """
    lock = build_dir / "lock"
    warned = False
    while True:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return
        if age > _STALE_LOCK_S:
            warnings.warn(
                f"steu_ext: removing stale build lock {lock} ({age / 60:.0f} min old). It was left by a "
                "build that was killed before it finished; left in place it would make the build wait "
                "forever.",
                RuntimeWarning,
                stacklevel=4,
            )
            try:
                lock.unlink()
            except FileNotFoundError:
                pass
            return
        if not warned and age > 30:
            log.warning(
                "steu_ext: waiting for another process that is building the C++ kernels in %s "
                "(if none is, the lock is removed once %d min old; or delete %s)",
                build_dir,
                _STALE_LOCK_S // 60,
                lock,
            )
            warned = True
        time.sleep(0.5)


def _build_and_load(verbose: bool) -> str:
    root = _source_root()
    pkg = Path(__file__).resolve().parent
    if root is None:
        raise RuntimeError(
            "steu_ext: cannot build the C++ CPU kernels: their sources were not found (looked for "
            f"ops.cpp in {pkg / '_csrc'} and {pkg.parent / 'csrc'}). Reinstall steu_ext from a wheel or "
            "sdist that ships steu_ext/_csrc, or use a source checkout (`pip install -e .`)."
        )
    sources = _sources(root)
    if len(sources) < 2:
        raise RuntimeError(f"steu_ext: cannot build the C++ CPU kernels: no kernels in {root / 'cpu'}.")
    build_dir = _build_dir(_build_key(root, sources))
    lib = build_dir / f"{_EXT_NAME}.so"
    # A finished build for exactly these sources, flags and torch: load it directly, so a prebuilt cache
    # (python -m steu_ext.build) works without ninja or a compiler. A lock means a build is under way.
    if lib.is_file() and not (build_dir / "lock").exists():
        try:
            torch.ops.load_library(str(lib))
        except (OSError, RuntimeError) as e:  # e.g. truncated by a killed link step: let ninja redo it
            log.debug("steu_ext: loading cached %s failed (%s); rebuilding", lib, e)
        else:
            if _ops_registered():
                return str(lib)
    _ensure_compiler()
    _ensure_ninja()
    build_dir.mkdir(parents=True, exist_ok=True)
    _wait_for_lock(build_dir)

    from torch.utils import cpp_extension

    try:
        cpp_extension.load(
            name=_EXT_NAME,
            sources=[str(s) for s in sources],
            extra_cflags=_CFLAGS,
            extra_ldflags=_LDFLAGS,
            build_directory=str(build_dir),
            verbose=verbose,
            with_cuda=False,
            is_python_module=False,
        )
    except Exception as e:
        raise RuntimeError(
            f"steu_ext: building or loading the C++ CPU kernels in {build_dir} failed: {e}\n"
            "Rerun with STEU_EXT_VERBOSE_BUILD=1 (or `python -m steu_ext.build`) to see the compiler "
            "output; delete that directory to force a clean rebuild."
        ) from e
    if not _ops_registered():
        raise RuntimeError(f"steu_ext: loaded {lib} but it did not register the CPU kernels {_OPS}.")
    return str(lib)


def load_cpu_ops(verbose: bool | None = None) -> None:
    """Build (if needed) and load the C++ CPU kernels so ``torch.ops.steu_ext.*`` have CPU kernels.

    Idempotent and thread-safe. Raises ``RuntimeError`` saying what is missing (compiler, ninja, sources)
    or how the build failed; a later call retries.
    """
    global _loaded, _tried, _error, _library_path
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        if verbose is None:
            verbose = os.environ.get("STEU_EXT_VERBOSE_BUILD", "0").lower() not in ("", "0", "false", "no")
        try:
            if _ops_registered():  # e.g. loaded by an ahead-of-time build or another loader
                _library_path = None
            else:
                _library_path = _build_and_load(verbose)
        except Exception as e:
            _tried = True
            _error = str(e) if isinstance(e, RuntimeError) else f"{type(e).__name__}: {e}"
            if isinstance(e, RuntimeError):
                raise
            raise RuntimeError(f"steu_ext: loading the C++ CPU kernels failed: {_error}") from e
        _loaded, _tried, _error = True, True, None


def cpu_ops_available() -> bool:
    """Whether the C++ CPU kernels are loaded. Tries to build/load once, caches the answer; never raises."""
    if _loaded:
        return True
    with _lock:
        if _loaded:
            return True
        if _tried:
            return False
        try:
            load_cpu_ops()
        except Exception:  # noqa: BLE001 - documented never to raise; the reason is in cpu_ops_error()
            return False
        return True


def cpu_ops_error() -> str | None:
    """Why the C++ CPU kernels could not be loaded, or None if they are loaded (tries once if not yet)."""
    if cpu_ops_available():
        return None
    return _error
