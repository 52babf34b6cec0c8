"""JIT build and load of the C++ CPU and CUDA kernels in ``csrc/`` (``torch.utils.cpp_extension.load``).

Two shared libraries, loaded with ``torch.ops.load_library`` (nothing is imported as a Python module):

* ``steu_ext_cpu`` registers ``torch.ops.steu_ext.*`` (schemas from ``csrc/ops.cpp``, CPU kernels from
  ``csrc/cpu/*.cpp``): :func:`load_cpu_ops`.
* ``steu_ext_cuda`` adds the CUDA kernels of the same ops (``csrc/cuda/*.cu``, ``TORCH_LIBRARY_IMPL``
  only, so it is loaded after the CPU library): :func:`load_cuda_ops`. It needs a CUDA build of torch and
  nvcc (``$CUDA_HOME/bin/nvcc``, else ``nvcc`` on PATH, else ``/usr/local/cuda``) of the same major
  version; code is generated only for the visible GPUs' architectures (``TORCH_CUDA_ARCH_LIST``
  overrides; sm_80 and sm_90 when no GPU is visible).

Each is compiled with ninja on first use (``MAX_JOBS`` caps the parallel compile jobs) into a build
directory keyed by the torch version, the Python version (and for CUDA the nvcc version and target
architectures) and a hash of the sources and flags, so a changed source or a new torch gets a fresh build
and an unchanged one is only loaded:

    ~/.cache/steu_ext/<key>          (override the parent directory with STEU_EXT_BUILD_DIR)

A compile prints one line to stderr when it starts ("compiling ... (first use, cached in ...)") and one
with its duration when it ends (``STEU_EXT_QUIET_BUILD=1`` silences both; they also go to the
``steu_ext`` logger at INFO). ``STEU_EXT_VERBOSE_BUILD=1`` shows the compiler commands. ``python -m steu_ext.build`` builds ahead of time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

__all__ = [
    "cpu_ops_available",
    "cpu_ops_error",
    "cuda_ops_available",
    "cuda_ops_error",
    "load_cpu_ops",
    "load_cuda_ops",
]

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


def _ops_registered(dispatch_key: str = "CPU") -> bool:
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    try:
        return all(has(f"steu_ext::{op}", dispatch_key) for op in _OPS)
    except (RuntimeError, AttributeError):  # schema not defined (or a torch without this helper)
        return False


def _ensure_ninja(what: str = "the C++ CPU kernels") -> None:
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
        f"steu_ext: cannot build {what}: `ninja` was not found on PATH. "
        "Install it with `pip install ninja` (in a virtualenv, activate it or put its bin/ directory "
        "on PATH)."
    )


def _ensure_compiler(what: str = "the C++ CPU kernels") -> None:
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx.split()[0]) is None:
        raise RuntimeError(
            f"steu_ext: cannot build {what}: no C++ compiler found (looked for {cxx!r}, "
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


def _notice(msg: str) -> None:
    """A one-line status message: on stderr (unless ``STEU_EXT_QUIET_BUILD=1``) and to the logger."""
    log.info(msg)
    if os.environ.get("STEU_EXT_QUIET_BUILD", "0").lower() in ("", "0", "false", "no"):
        print(msg, file=sys.stderr, flush=True)


def _compile(what: str, build_dir: Path, **load_kw) -> None:
    """``cpp_extension.load`` into ``build_dir``, announced at the start and timed at the end."""
    from torch.utils import cpp_extension

    _notice(f"steu_ext: compiling {what} (first use, about a minute; cached in {build_dir})")
    t0 = time.perf_counter()
    cpp_extension.load(build_directory=str(build_dir), is_python_module=False, **load_kw)
    _notice(f"steu_ext: compiled {what} in {time.perf_counter() - t0:.1f} s")


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

    try:
        _compile(
            "the C++ CPU kernels",
            build_dir,
            name=_EXT_NAME,
            sources=[str(s) for s in sources],
            extra_cflags=_CFLAGS,
            extra_ldflags=_LDFLAGS,
            verbose=verbose,
            with_cuda=False,
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


# ---------------------------------------------------------------------------------------------------------
# CUDA kernels: csrc/cuda/*.cu, a second library with TORCH_LIBRARY_IMPL(steu_ext, CUDA, ...) only. The
# schemas live in the CPU library (a second TORCH_LIBRARY(steu_ext) would be an error), so it is loaded
# first.

_CUDA_EXT_NAME = "steu_ext_cuda"
# -lineinfo: source lines in compute-sanitizer / Nsight reports, no effect on the generated code.
_NVCC_FLAGS = ["-O3", "-lineinfo"]
# Targets when TORCH_CUDA_ARCH_LIST is unset and no GPU is visible (e.g. `python -m steu_ext.build` on a
# login node): A100 and H100, plus PTX of the newest so later GPUs can JIT it.
_DEFAULT_CUDA_ARCHS = ("8.0", "9.0+PTX")

_cuda_loaded = False
_cuda_tried = False
_cuda_error: str | None = None
_cuda_library_path: str | None = None
_nvcc_cache: dict[str, tuple[int, int]] = {}


def _cuda_sources(root: Path) -> list[Path]:
    return sorted((root / "cuda").glob("*.cu"))


def _find_nvcc() -> tuple[Path, Path]:
    """(CUDA home, nvcc): ``$CUDA_HOME`` / ``$CUDA_PATH``, else the toolkit of ``nvcc`` on PATH, else
    ``/usr/local/cuda``. Not ``torch.cuda.is_available()``: building needs a toolkit, not a GPU."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home:
            nvcc = Path(home) / "bin" / "nvcc"
            if not nvcc.is_file():
                raise RuntimeError(
                    f"steu_ext: cannot build the CUDA kernels: ${var}={home} but {nvcc} does not exist. "
                    f"Point ${var} at a CUDA toolkit (the directory holding bin/nvcc and include/)."
                )
            return Path(home), nvcc
    candidates: list[Path] = []
    on_path = shutil.which("nvcc")
    if on_path:
        # nvcc may be a symlink or a wrapper script (e.g. /usr/local/bin/nvcc): look past it for a toolkit.
        candidates += [Path(on_path).resolve().parent.parent, Path(on_path).parent.parent]
    candidates.append(Path("/usr/local/cuda"))
    for home in candidates:
        if (home / "bin" / "nvcc").is_file() and (home / "include" / "cuda_runtime.h").is_file():
            return home, home / "bin" / "nvcc"
    raise RuntimeError(
        "steu_ext: cannot build the CUDA kernels: nvcc was not found (looked at $CUDA_HOME, $CUDA_PATH, "
        "`nvcc` on PATH and /usr/local/cuda). Install the CUDA toolkit matching torch's CUDA "
        f"{torch.version.cuda} (e.g. `conda install -c nvidia cuda-toolkit={torch.version.cuda}` or the "
        "NVIDIA packages) and set CUDA_HOME. Without it the Triton / reference kernels run on CUDA tensors."
    )


def _nvcc_version(nvcc: Path) -> tuple[int, int]:
    key = str(nvcc)
    if key not in _nvcc_cache:
        try:
            out = subprocess.run(
                [key, "--version"], capture_output=True, text=True, timeout=60, check=True
            ).stdout
        except (OSError, subprocess.SubprocessError) as e:
            raise RuntimeError(
                f"steu_ext: cannot build the CUDA kernels: `{nvcc} --version` failed: {e}"
            ) from e
        m = re.search(r"release (\d+)\.(\d+)", out)
        if m is None:
            raise RuntimeError(
                f"steu_ext: cannot build the CUDA kernels: no version in `{nvcc} --version`: {out!r}"
            )
        _nvcc_cache[key] = (int(m.group(1)), int(m.group(2)))
    return _nvcc_cache[key]


def _nvcc_archs(nvcc: Path) -> set[int] | None:
    """Virtual architectures nvcc can target (80, 90, ...), or None if it cannot tell."""
    try:
        out = subprocess.run(
            [str(nvcc), "--list-gpu-arch"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    archs = {int(m) for m in re.findall(r"compute_(\d+)\b", out)}
    return archs or None


def _cuda_arch_flags(nvcc: Path) -> list[str]:
    """nvcc ``-gencode`` flags: from ``TORCH_CUDA_ARCH_LIST`` when set (parsed by torch, which knows named
    arches like "Hopper"); else for the compute capabilities of the visible GPUs only, so the first use
    compiles one target; else for ``_DEFAULT_CUDA_ARCHS``."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if env and env != "native":
        from torch.utils import cpp_extension

        helper = getattr(cpp_extension, "_get_cuda_arch_flags", None)  # private, but the reference parser
        if helper is None:
            return _gencode_flags([a for a in re.split(r"[;\s]+", env) if a])
        try:
            return sorted(set(helper()))
        except ValueError as e:
            raise RuntimeError(
                f"steu_ext: cannot build the CUDA kernels: TORCH_CUDA_ARCH_LIST={env!r}: {e}"
            ) from e
    archs: list[str] = []
    try:
        n = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable driver: build for the defaults
        n = 0
    for i in range(n):
        major, minor = torch.cuda.get_device_capability(i)
        a = f"{major}.{minor}"
        if a not in archs:
            archs.append(a)
    if not archs:
        return _gencode_flags(list(_DEFAULT_CUDA_ARCHS))
    # A GPU newer than this nvcc: build the newest architecture nvcc knows as PTX, which the driver JITs.
    supported = _nvcc_archs(nvcc)
    if supported:
        out: list[str] = []
        for a in archs:
            num = int(a.replace(".", ""))
            if num in supported:
                out.append(a)
                continue
            older = [s for s in supported if s < num]
            if not older:
                raise RuntimeError(
                    f"steu_ext: cannot build the CUDA kernels: {nvcc} supports none of sm_{num} or older"
                )
            fallback = f"{max(older) // 10}.{max(older) % 10}+PTX"
            log.warning(
                "steu_ext: %s does not know sm_%d; building %s (PTX, JIT-compiled by the driver)",
                nvcc,
                num,
                fallback,
            )
            out.append(fallback)
        archs = out
    return _gencode_flags(archs)


def _gencode_flags(archs: list[str]) -> list[str]:
    flags: list[str] = []
    for a in archs:
        m = re.fullmatch(r"(\d+)\.(\d+)([a-z]?)(\+PTX)?", a.strip())
        if m is None:
            raise RuntimeError(f"steu_ext: cannot build the CUDA kernels: unknown CUDA architecture {a!r}")
        num = f"{m.group(1)}{m.group(2)}{m.group(3)}"
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if m.group(4):
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return sorted(set(flags))


def _cuda_build_key(root: Path, sources: list[Path], nvcc_version: tuple[int, int], flags: list[str]) -> str:
    h = hashlib.sha256()
    headers = sorted(p for p in (root / "cuda").rglob("*") if p.suffix in (".cuh", ".h"))
    for p in [root / "ops.cpp", *sources, *headers]:  # ops.cpp: the schemas these kernels implement
        h.update(p.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    h.update(" ".join(flags).encode())
    torch_tag = re.sub(r"[^0-9A-Za-z.]+", "_", torch.__version__)
    py_tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    cu_tag = f"cu{nvcc_version[0]}{nvcc_version[1]}"
    return f"cuda-torch{torch_tag}-{cu_tag}-{py_tag}-{h.hexdigest()[:16]}"


def _torch_cuda_problem() -> str | None:
    """Why this torch cannot load CUDA extensions, or None."""
    if getattr(torch.version, "hip", None):
        return (
            f"torch {torch.__version__} is a ROCm/HIP build; the CUDA kernels (csrc/cuda) are CUDA-only. "
            "The Triton / reference kernels run on ROCm devices."
        )
    if torch.version.cuda is None:
        return (
            f"torch was built without CUDA (torch {torch.__version__} is a CPU-only build), so CUDA kernels "
            "cannot be built or loaded. Install a CUDA build of torch (https://pytorch.org/get-started/locally/)"
            "; on CPU tensors the C++ CPU kernels are used."
        )
    return None


def _cuda_build_and_load(verbose: bool) -> str:
    problem = _torch_cuda_problem()
    if problem is not None:
        raise RuntimeError(f"steu_ext: {problem}")
    try:
        load_cpu_ops(verbose=verbose)
    except RuntimeError as e:
        raise RuntimeError(
            f"steu_ext: the CUDA kernels need the C++ library that declares the ops, which failed: {e}"
        ) from e
    root = _source_root()
    sources = _cuda_sources(root) if root is not None else []
    if root is None or not sources:
        raise RuntimeError(
            f"steu_ext: cannot build the CUDA kernels: no csrc/cuda/*.cu sources under {root}. Reinstall "
            "steu_ext from a wheel or sdist that ships steu_ext/_csrc/cuda, or use a source checkout."
        )
    home, nvcc = _find_nvcc()
    nvcc_version = _nvcc_version(nvcc)
    torch_major = int(str(torch.version.cuda).split(".")[0])
    if nvcc_version[0] != torch_major:
        raise RuntimeError(
            f"steu_ext: cannot build the CUDA kernels: {nvcc} is CUDA {nvcc_version[0]}.{nvcc_version[1]} but "
            f"torch {torch.__version__} was built with CUDA {torch.version.cuda}; the major versions must "
            "match. Set CUDA_HOME to a matching toolkit."
        )
    flags = _NVCC_FLAGS + _cuda_arch_flags(nvcc)
    build_dir = _build_dir(_cuda_build_key(root, sources, nvcc_version, flags))
    lib = build_dir / f"{_CUDA_EXT_NAME}.so"
    if lib.is_file() and not (build_dir / "lock").exists():
        try:
            torch.ops.load_library(str(lib))
        except (OSError, RuntimeError) as e:
            log.debug("steu_ext: loading cached %s failed (%s); rebuilding", lib, e)
        else:
            if _ops_registered("CUDA"):
                return str(lib)
    what = "the CUDA kernels"
    _ensure_compiler(what)
    _ensure_ninja(what)
    build_dir.mkdir(parents=True, exist_ok=True)
    _wait_for_lock(build_dir)

    from torch.utils import cpp_extension

    # cpp_extension finds its toolkit once, at import, and takes `which nvcc`/../.. as it is (wrong for a
    # wrapper script in /usr/local/bin): make it use the toolkit found above.
    if getattr(cpp_extension, "CUDA_HOME", None) != str(home):
        log.debug(
            "steu_ext: building with CUDA_HOME=%s (cpp_extension had %s)",
            home,
            getattr(cpp_extension, "CUDA_HOME", None),
        )
        cpp_extension.CUDA_HOME = str(home)
    try:
        _compile(
            "the CUDA kernels",
            build_dir,
            name=_CUDA_EXT_NAME,
            sources=[str(s) for s in sources],
            extra_cuda_cflags=flags,  # our -gencode flags: cpp_extension adds no arch flags of its own
            verbose=verbose,
            with_cuda=True,
        )
    except Exception as e:
        raise RuntimeError(
            f"steu_ext: building or loading the CUDA kernels in {build_dir} failed: {e}\n"
            "Rerun with STEU_EXT_VERBOSE_BUILD=1 to see the nvcc output; delete that directory to force a "
            "clean rebuild."
        ) from e
    if not _ops_registered("CUDA"):
        raise RuntimeError(f"steu_ext: loaded {lib} but it did not register the CUDA kernels {_OPS}.")
    return str(lib)


def load_cuda_ops(verbose: bool | None = None) -> None:
    """Build (if needed) and load the CUDA kernels so ``torch.ops.steu_ext.*`` have CUDA kernels.

    Loads the C++ CPU library first (it declares the ops). Idempotent and thread-safe. Raises
    ``RuntimeError`` saying what is missing (a CUDA build of torch, nvcc, compiler, ninja, sources) or how
    the build failed; a later call retries. Needs no GPU: it can build ahead of time.
    """
    global _cuda_loaded, _cuda_tried, _cuda_error, _cuda_library_path
    if _cuda_loaded:
        return
    with _lock:
        if _cuda_loaded:
            return
        if verbose is None:
            verbose = os.environ.get("STEU_EXT_VERBOSE_BUILD", "0").lower() not in ("", "0", "false", "no")
        try:
            if _torch_cuda_problem() is None and _ops_registered("CUDA"):  # e.g. loaded by another loader
                _cuda_library_path = None
            else:
                _cuda_library_path = _cuda_build_and_load(verbose)
        except Exception as e:
            _cuda_tried = True
            _cuda_error = str(e) if isinstance(e, RuntimeError) else f"{type(e).__name__}: {e}"
            if isinstance(e, RuntimeError):
                raise
            raise RuntimeError(f"steu_ext: loading the CUDA kernels failed: {_cuda_error}") from e
        _cuda_loaded, _cuda_tried, _cuda_error = True, True, None


def cuda_ops_available() -> bool:
    """Whether the CUDA kernels are loaded. Tries to build/load once, caches the answer; never raises."""
    if _cuda_loaded:
        return True
    with _lock:
        if _cuda_loaded:
            return True
        if _cuda_tried:
            return False
        try:
            load_cuda_ops()
        except Exception:  # noqa: BLE001 - documented never to raise; the reason is in cuda_ops_error()
            return False
        return True


def cuda_ops_error() -> str | None:
    """Why the CUDA kernels could not be loaded, or None if they are loaded (tries once if not yet)."""
    if cuda_ops_available():
        return None
    return _cuda_error
