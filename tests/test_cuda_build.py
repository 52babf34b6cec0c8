"""The CUDA kernels without a GPU: every ``csrc/cuda/*.cu`` compiles with the machine's nvcc for sm_80 and
sm_90, and on a CPU-only torch the CUDA backend says why it is unavailable while the CPU ops keep working.

What the compile check covers: the full ``nvcc -c`` of each file (host code with the host compiler, device
code through cicc and ptxas for both architectures) with the flags ``steu_ext._build`` uses for the real
build (torch's ``COMMON_NVCC_FLAGS``, the C++ standard torch's ``cpp_extension`` passes, ``_NVCC_FLAGS``),
against torch's headers from ``cpp_extension.include_paths()``; warnings in our own sources fail it. A
CPU-only torch wheel ships the c10/ATen CUDA headers the kernels include except one file generated at
torch build time, ``c10/cuda/impl/cuda_cmake_macros.h``; when it is missing a stand-in with the content of
the CUDA wheels' copy (``#define C10_CUDA_BUILD_SHARED_LIBS``, which only matters for Windows DLL exports)
is put on the include path. Linking, loading and running need a CUDA torch and a GPU
(``STEU_TEST_DEVICE=cuda`` runs the op tests there).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import steu_ext
from steu_ext import _build

CUDA_DIR = Path(__file__).resolve().parents[1] / "csrc" / "cuda"
CU_FILES = sorted(p.name for p in CUDA_DIR.glob("*.cu"))
ARCHS = ("80", "90")
COMPILE_TIMEOUT_S = 1200  # per file; about 40 s of CPU each on an idle machine


def _nvcc() -> Path | None:
    try:
        return _build._find_nvcc()[1]
    except RuntimeError:
        return None


def _cxx_std() -> str:
    """The standard torch's cpp_extension compiles extensions with (C++20 from torch 2.10 or so)."""
    from torch.utils import cpp_extension

    return "-std=c++20" if "-std=c++20" in Path(cpp_extension.__file__).read_text() else "-std=c++17"


def _compile_command(src: Path, obj: Path, extra_includes: list[str]) -> list[str]:
    from torch.utils import cpp_extension

    common = getattr(cpp_extension, "COMMON_NVCC_FLAGS", None) or [
        "-D__CUDA_NO_HALF_OPERATORS__",
        "-D__CUDA_NO_HALF_CONVERSIONS__",
        "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
        "-D__CUDA_NO_HALF2_OPERATORS__",
        "--expt-relaxed-constexpr",
    ]
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True))
    return [
        str(_nvcc()),
        "-c",
        str(src),
        "-o",
        str(obj),
        _cxx_std(),
        *[f"-I{p}" for p in [*cpp_extension.include_paths(), *extra_includes]],
        "-DTORCH_API_INCLUDE_EXTENSION_H",
        f"-DTORCH_EXTENSION_NAME={_build._CUDA_EXT_NAME}",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        *common,
        "--compiler-options",
        "-fPIC",
        *_build._NVCC_FLAGS,
        *[f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS],
    ]


def _compile(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False)
    return res, time.perf_counter() - t0


@pytest.fixture(scope="module")
def compile_jobs(tmp_path_factory) -> dict[str, tuple[list[str], Path, Future]]:
    """Starts the compile of every .cu file at once (as many in parallel as there are cores) so the
    per-file tests below mostly wait on work already under way."""
    if _nvcc() is None:
        pytest.skip(
            "nvcc not found ($CUDA_HOME, $CUDA_PATH, PATH, /usr/local/cuda): the CUDA compile check "
            "needs the CUDA toolkit"
        )
    out = tmp_path_factory.mktemp("cuda_objs")
    from torch.utils import cpp_extension

    extra: list[str] = []
    if not any(
        (Path(p) / "c10/cuda/impl/cuda_cmake_macros.h").is_file() for p in cpp_extension.include_paths()
    ):
        shim = out / "shim"
        (shim / "c10/cuda/impl").mkdir(parents=True)
        (shim / "c10/cuda/impl/cuda_cmake_macros.h").write_text(
            "#pragma once\n// Stand-in for the header CUDA builds of torch generate (absent from CPU wheels).\n"
            "#define C10_CUDA_BUILD_SHARED_LIBS\n"
        )
        extra.append(str(shim))
    pool = ThreadPoolExecutor(max_workers=max(1, min(len(CU_FILES), os.cpu_count() or 1)))
    jobs = {}
    for name in CU_FILES:
        obj = out / (Path(name).stem + ".o")
        cmd = _compile_command(CUDA_DIR / name, obj, extra)
        jobs[name] = (cmd, obj, pool.submit(_compile, cmd))
    yield jobs
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("name", CU_FILES)
def test_cuda_source_compiles_for_sm80_and_sm90(compile_jobs, name):
    cmd, obj, fut = compile_jobs[name]
    res, seconds = fut.result()
    log = res.stdout + res.stderr
    assert res.returncode == 0, f"nvcc failed on {name} ({seconds:.0f} s):\n{' '.join(cmd)}\n{log[-20000:]}"
    assert obj.is_file() and obj.stat().st_size > 0
    # Warnings from torch's headers are not ours; any diagnostic in csrc/cuda is.
    ours = [ln for ln in log.splitlines() if re.search(r"csrc/cuda/[^:(]+[:(].*(warning|error)", ln)]
    assert not ours, f"{name}: diagnostics in our sources:\n" + "\n".join(ours)
    print(f"{name}: compiled for sm_{' and sm_'.join(ARCHS)} in {seconds:.0f} s")


def test_gencode_flags():
    assert _build._gencode_flags(["8.0", "9.0+PTX"]) == [
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_90,code=compute_90",
        "-gencode=arch=compute_90,code=sm_90",
    ]
    assert _build._gencode_flags(["9.0a"]) == ["-gencode=arch=compute_90a,code=sm_90a"]
    with pytest.raises(RuntimeError, match="unknown CUDA architecture"):
        _build._gencode_flags(["sm_90"])


def test_cuda_arch_flags_honour_torch_cuda_arch_list(monkeypatch):
    nvcc = _nvcc() or Path("nvcc")
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    assert _build._cuda_arch_flags(nvcc) == [
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_90,code=sm_90",
    ]
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    if not torch.cuda.is_available():  # no GPU to restrict to: the defaults
        assert _build._cuda_arch_flags(nvcc) == _build._gencode_flags(list(_build._DEFAULT_CUDA_ARCHS))


@pytest.mark.skipif(torch.version.cuda is not None, reason="torch has CUDA: the CPU-only behaviour is moot")
def test_cuda_ops_unavailable_on_cpu_only_torch():
    assert _build.cuda_ops_available() is False
    assert _build.cuda_ops_available() is False  # cached, and never raises
    why = _build.cuda_ops_error()
    assert why is not None and "torch was built without CUDA" in why, why
    with pytest.raises(RuntimeError, match="built without CUDA"):
        _build.load_cuda_ops()
    reason = steu_ext.available_backends("doc_counts", "cuda")["cuda"]
    assert reason is not None and "built without CUDA" in reason
    # The automatic choice for CUDA tensors falls back quietly; an explicit request says why.
    with steu_ext.use_backend("cuda"), pytest.raises(RuntimeError, match="built without CUDA"):
        steu_ext._backend.resolve("doc_counts", "cuda")


def test_cpu_ops_still_work_next_to_the_cuda_loader():
    from steu_ext.reference import doc_counts as ref

    _build.cuda_ops_available()  # whatever the answer, it must not disturb the CPU library
    if not _build.cpu_ops_available():
        pytest.skip(f"C++ CPU kernels unavailable here: {_build.cpu_ops_error()}")
    ids = torch.tensor([[1, 2, 2, 4], [0, 1, 3, 3], [4, 4, 4, 0]])
    labels = torch.tensor([0, 1, 0])
    with steu_ext.use_backend("doc_counts=cpu"):
        r = steu_ext.doc_counts(ids, labels, num_tokens=5, num_classes=2)
    lab = torch.nn.functional.one_hot(labels, 2).to(torch.uint8)
    counts, doc_freq = ref.doc_counts(ids, torch.ones_like(ids, dtype=torch.bool), lab, 5)
    assert torch.equal(r.counts, counts) and torch.equal(r.doc_freq, doc_freq)
    assert torch.ops.steu_ext.doc_counts.default is not None
