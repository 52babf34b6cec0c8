"""Large-corpus PMI precomputation: stream a labelled corpus once, count document-level token x class
statistics with the model's own tokenizer, save them, and reuse them for many unlearning runs.

    from steu_ext.data.corpus_pmi import precompute_pmi, load_counts
    precompute_pmi("notes.csv.gz", tokenizer, "pmi/", text_column="note", label_column="dx", workers=8)
    counts = load_counts("pmi/", tokenizer)        # refuses counts made with another tokenizer

Memory is bounded by the counts plus a few blocks in flight, not by the corpus size:
:mod:`steu_ext.data.stream` reads blocks of records, worker processes tokenize them with the fast
(Rust) tokenizer, and the main process counts finished blocks with the fastest ``doc_counts`` kernel while
the workers tokenize the next ones. The counts are dense ``[C, V]`` while that fits (``counts_format=
"auto"``), else sparse (:class:`~steu_ext.ops.sparse_doc_counts.SparsePMICounter`, memory ~ the nonzero
class-token pairs: thousands of ICD codes, LLM vocabularies), saved as CSR; the numbers are identical.

Inputs: one file, or shards (a folder, a glob, an HF ``datasets`` folder written by ``save_to_disk``,
whose Arrow files are read in place).

Resumable: every ``checkpoint_every`` documents (and every ``checkpoint_seconds``) each rank writes its
counts and the shard and record ordinal it has counted up to, atomically (temp file, fsync, rename). A run
killed at any point and started again with the same arguments resumes from the last checkpoint: blocks
after it are counted once, blocks before it are never recounted. An input changed since (size,
modification time, sampled content, or a hash of the bytes already counted) is refused.

Distributed: under ``torchrun`` (``torch.distributed`` initialised, or ``WORLD_SIZE`` > 1), with at least
as many shards as ranks rank ``r`` reads whole shards ``r, r + world, ...``; otherwise block ``b`` of each
file belongs to rank ``b % world_size``. Dense counts are all-reduced (gloo on CPU, NCCL on GPU), sparse
ones gathered and merged by key, so the result equals the single-process one exactly.
"""

from __future__ import annotations

import collections
import functools
import gc
import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .._progress import show_progress
from ..ops.doc_counts import DocCounts, PMICounter
from ..ops.sparse_doc_counts import SparsePMICounter
from . import stream

log = logging.getLogger("steu_ext")

__all__ = [
    "CorpusCounts",
    "count_corpus",
    "precompute_pmi",
    "save_counts",
    "load_counts",
    "load_class_counts",
    "top_token_tables",
    "tokenizer_identity",
    "check_tokenizer",
    "init_distributed",
]

COUNTS_FILE, SUMMARY_FILE, CHECKPOINT_DIR = "counts.safetensors", "summary.json", "checkpoints"
COUNTS_FORMAT, CHECKPOINT_FORMAT = "steu-pmi-counts/1", "steu-pmi-checkpoint/1"
# Test hook: SIGKILL this process right after it has written this many checkpoints (a deterministic crash).
KILL_HOOK = "STEU_PMI_DEBUG_KILL_AFTER_CHECKPOINTS"
MAX_LISTED_SKIPS = 100_000


# ---- tokenizer identity -----------------------------------------------------------------------------
def _backend(tokenizer):
    b = getattr(tokenizer, "backend_tokenizer", None)
    if b is None:
        raise ValueError(
            f"{type(tokenizer).__name__} is not a fast (Rust) tokenizer; large-corpus counting "
            "needs one (load it with AutoTokenizer.from_pretrained(..., use_fast=True))"
        )
    return b


def _tokenizer_json(tokenizer) -> str:
    """The tokenizer's full definition (vocabulary, normalizer, pre-tokenizer, model, added and special
    tokens) without the per-call truncation/padding state, as canonical JSON."""
    spec = json.loads(_backend(tokenizer).to_str())
    spec["truncation"], spec["padding"] = None, None
    return json.dumps(spec, sort_keys=True, ensure_ascii=False)


def tokenizer_identity(tokenizer, _json: Optional[str] = None) -> Dict[str, Any]:
    """What makes token ids comparable: vocabulary size and a SHA-256 of the tokenizer's definition."""
    spec = _json if _json is not None else _tokenizer_json(tokenizer)
    return {
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "sha256": hashlib.sha256(spec.encode()).hexdigest(),
    }


def check_tokenizer(saved: Dict[str, Any], tokenizer, where: str = "the saved counts") -> None:
    """Raise ``ValueError`` unless ``tokenizer`` is the tokenizer ``saved`` describes."""
    now = tokenizer_identity(tokenizer)
    if saved.get("vocab_size") != now["vocab_size"] or saved.get("sha256") != now["sha256"]:
        raise ValueError(
            f"{where} were made with another tokenizer ({saved.get('name_or_path')!r}, vocabulary "
            f"{saved.get('vocab_size')}, sha256 {str(saved.get('sha256'))[:12]}) than the model's "
            f"({now['name_or_path']!r}, vocabulary {now['vocab_size']}, sha256 {now['sha256'][:12]}): "
            "token ids would not match; recount with this model's tokenizer"
        )


# ---- tokenization (in worker processes or in-process) ---------------------------------------------------
_WORKER: Dict[str, Any] = {}


def _make_encoder(tok_json: str, max_length: int, direction: str):
    from tokenizers import Tokenizer

    t = Tokenizer.from_str(tok_json)
    t.enable_truncation(max_length, stride=0, strategy="longest_first", direction=direction)
    t.no_padding()
    return t


def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel SIGKILL this worker when its parent dies, so a killed run (e.g. SIGKILL)
    leaves no orphan tokenizer processes behind."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _worker_init(tok_json: str, max_length: int, direction: str, parent: int, num_tokens: int = 0) -> None:
    _die_with_parent(parent)
    gc.freeze()  # what the worker inherited lives as long as it does: keep it out of every collection
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker process; no nested thread pools
    torch.set_num_threads(1)
    _WORKER["tok"] = _make_encoder(tok_json, max_length, direction)
    _WORKER["V"] = num_tokens


def _encode(texts: List[str], tok=None) -> Tuple[np.ndarray, np.ndarray]:
    """Token ids of ``texts`` as one flat int32 array plus per-document lengths (compact to ship back)."""
    encs = (tok or _WORKER["tok"]).encode_batch_fast(texts)
    ids = [e.ids for e in encs]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum()))
    return flat, lengths


def _label_matrix(rows: np.ndarray, cols: np.ndarray, B: int, C: int) -> torch.Tensor:
    lab = torch.zeros(B, C, dtype=torch.uint8)
    lab[torch.from_numpy(rows), torch.from_numpy(cols)] = 1
    return lab


def _check_ids(flat: np.ndarray, V: int) -> None:
    if len(flat) and int(flat.max()) >= V:  # the kernels are then called with validate=False
        raise ValueError(f"the tokenizer produced id {int(flat.max())} >= its length {V}")


def _block_counts(flat, lengths, rows, cols, C: int, V: int, sparse: bool = False) -> Dict[str, Any]:
    """Document-level counts of one tokenized block with the ``doc_counts`` kernel (``sparse``: the
    ``sparse_doc_counts`` kernel, no ``[C, V]`` array), returned sparse (the nonzero entries of the
    row-major ``[C, V]`` counts, sorted, and of ``doc_freq``) to keep the reply small."""
    from ..ops.doc_counts import doc_counts
    from ..ops.sparse_doc_counts import sparse_doc_counts

    _check_ids(flat, V)
    ids, mask = _padded(flat, lengths)
    lab = _label_matrix(rows, cols, len(lengths), C)
    if sparse:
        r = sparse_doc_counts(ids, lab, num_tokens=V, attention_mask=mask, validate=False)
        nz, val = r.keys, r.values
    else:
        r = doc_counts(ids, lab, num_tokens=V, attention_mask=mask, validate=False)
        cnt = r.counts.reshape(-1)
        nz = cnt.nonzero().squeeze(1)
        val = cnt[nz]
    dnz = r.doc_freq.nonzero().squeeze(1)
    return {
        "idx": nz.numpy(),
        "val": val.numpy(),
        "df_idx": dnz.numpy(),
        "df_val": r.doc_freq[dnz].numpy(),
        "class_docs": r.class_docs.numpy(),
        "n_docs": len(lengths),
        "n_tokens": int(lengths.sum()),
    }


def _tokenize_and_count(texts: List[str], rows: np.ndarray, cols: np.ndarray, C: int, tok=None, V=None,
                        sparse: bool = False):
    """A worker's job: tokenize a block and count it (see :func:`_block_counts`)."""
    flat, lengths = _encode(texts, tok)
    return _block_counts(flat, lengths, rows, cols, C, V if V is not None else _WORKER["V"], sparse)


def _add_block(counter, b: Dict[str, Any]) -> None:
    """Add one block's sparse counts to ``counter`` (row-major indices stay valid when classes were added
    after the block was sent, since new classes are appended as new rows)."""
    if isinstance(counter, SparsePMICounter):
        df = torch.zeros(counter.num_tokens, dtype=torch.int64)
        df[torch.from_numpy(b["df_idx"])] = torch.from_numpy(b["df_val"])
        counter.add_pairs(torch.from_numpy(b["idx"]), torch.from_numpy(b["val"]), df,
                          torch.from_numpy(b["class_docs"]), b["n_docs"])
        return
    dev = counter.device
    counter.counts.view(-1).index_add_(
        0, torch.from_numpy(b["idx"]).to(dev), torch.from_numpy(b["val"]).to(dev)
    )
    counter.doc_freq.index_add_(
        0, torch.from_numpy(b["df_idx"]).to(dev), torch.from_numpy(b["df_val"]).to(dev)
    )
    cd = torch.from_numpy(b["class_docs"]).to(dev)
    counter.class_docs[: len(cd)] += cd
    counter.n_docs += b["n_docs"]


def _padded(flat: np.ndarray, lengths: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
    """``[B, max length]`` int64 ids (zero padded) and the ``[B, max length]`` bool mask of real tokens
    from the flat form (the mask's row-major order is the flat order)."""
    B, L = len(lengths), max(int(lengths.max()), 1)
    mask = np.arange(L) < lengths[:, None]
    out = np.zeros((B, L), dtype=np.int64)
    out[mask] = flat
    return torch.from_numpy(out), torch.from_numpy(mask)


# ---- results ------------------------------------------------------------------------------------------
@dataclass
class CorpusCounts:
    """Document-level counts of a corpus and what they were computed from."""

    counter: PMICounter
    label_names: List[str]
    tokenizer: Dict[str, Any]  # tokenizer_identity(...)
    input: Dict[str, Any] = field(default_factory=dict)  # stream.input_fingerprint(...) and columns
    max_length: int = 512
    n_records: int = 0  # records read (valid + skipped)
    n_tokens: int = 0  # tokens counted (after truncation, special tokens included)
    skipped: List[Dict[str, Any]] = field(default_factory=list)  # {"line", "reason"}, in file order
    n_skipped: int = 0
    seconds: Dict[str, float] = field(default_factory=dict)
    world_size: int = 1

    @property
    def result(self) -> DocCounts:
        return self.counter.result

    @property
    def n_docs(self) -> int:
        return self.counter.n_docs

    def summary(self) -> Dict[str, Any]:
        c = self.counter
        return {
            "format": COUNTS_FORMAT,
            "n_docs": c.n_docs,
            "class_docs": dict(zip(self.label_names, c.class_docs.tolist())),
            "label_names": self.label_names,
            "vocab_size": c.num_tokens,
            "tokenizer": self.tokenizer,
            "max_length": self.max_length,
            "input": self.input,
            "n_records": self.n_records,
            "n_tokens": self.n_tokens,
            "skipped": {"count": self.n_skipped, "records": self.skipped},
            "world_size": self.world_size,
            "seconds": self.seconds,
            "counts_format": "sparse" if isinstance(c, SparsePMICounter) else "dense",
            "nnz": c.nnz if isinstance(c, SparsePMICounter) else int((c.counts != 0).sum()),
        }


def init_distributed(device: Optional[str] = None) -> Tuple[int, int, bool]:
    """``(rank, world_size, initialised_here)``: uses an initialised process group, or starts one when
    launched by torchrun (``WORLD_SIZE`` > 1): NCCL for CUDA counting, gloo otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        cuda = device is not None and str(device).startswith("cuda")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
        return dist.get_rank(), dist.get_world_size(), True
    return 0, 1, False


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


# ---- checkpoints ----------------------------------------------------------------------------------------
def _atomic_write(path: str, data) -> None:
    """Write ``data`` (bytes, or an iterable of byte chunks) to ``path`` so that a crash leaves the old file
    or the new one, never a torn one (nor a temp file, when the writing itself fails)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            for chunk in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, path)
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some filesystems do not fsync directories
        pass


def _changed_files(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    a = old.get("shards", [old]) if isinstance(old, dict) else []
    b = new.get("shards", [new])
    if len(a) != len(b):
        return [f"{len(a)} shards then, {len(b)} now"]
    return [y.get("path", "?") for x, y in zip(a, b) if x != y] or ["?"]


class _Checkpointer:
    def __init__(
        self,
        folder: str,
        rank: int,
        world: int,
        run: Dict[str, Any],
        every_docs: Optional[int],
        every_seconds: Optional[float],
    ):
        self.path = os.path.join(folder, f"rank{rank}-of-{world}.safetensors")
        self.folder, self.run = folder, run
        self.every_docs, self.every_seconds = every_docs, every_seconds
        self.docs_since, self.last = 0, time.monotonic()
        self.written = 0
        self.kill_after = int(os.environ.get(KILL_HOOK, "0") or 0)

    def load(self) -> Optional[Tuple[Dict[str, torch.Tensor], Dict[str, Any]]]:
        if not os.path.exists(self.path):
            world = self.run["world_size"]
            other = sorted(
                f
                for f in (os.listdir(self.folder) if os.path.isdir(self.folder) else ())
                if f.endswith(".safetensors") and not f.endswith(f"-of-{world}.safetensors")
            )
            if other:
                raise ValueError(
                    f"{self.folder} holds checkpoints of a run with another number of processes "
                    f"({other[0]}, ...); resume with that many, or start afresh (--no-resume)"
                )
            return None
        from safetensors import safe_open

        with safe_open(self.path, "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{self.path} is not a PMI counting checkpoint")
        saved = json.loads(meta["run"])
        diff = sorted(k for k in set(saved) | set(self.run) if saved.get(k) != self.run.get(k))
        if diff == ["input"]:
            raise ValueError(
                f"the input changed since the checkpoint {self.path} was written (size, modification time "
                f"or content: {_changed_files(saved['input'], self.run['input'])}); start afresh "
                "(--no-resume, or remove the folder) or restore the input"
            )
        if diff:
            raise ValueError(
                f"the checkpoint {self.path} belongs to a different run (it differs in {diff}); "
                "start afresh (remove the folder, or --overwrite) or resume with the same input "
                "and arguments"
            )
        return tensors, json.loads(meta["state"])

    def maybe_save(self, counter: PMICounter, state: Dict[str, Any], new_docs: int) -> None:
        self.docs_since += new_docs
        due = (self.every_docs is not None and self.docs_since >= self.every_docs) or (
            self.every_seconds is not None and time.monotonic() - self.last >= self.every_seconds
        )
        if due:
            self.save(counter, state)

    def save(self, counter: PMICounter, state: Dict[str, Any]) -> None:
        os.makedirs(self.folder, exist_ok=True)
        meta = {
            "format": CHECKPOINT_FORMAT,
            "run": json.dumps(self.run, sort_keys=True),
            "state": json.dumps(state),
        }
        _write_counts(self.path, counter, meta)
        self.docs_since, self.last = 0, time.monotonic()
        self.written += 1
        if self.kill_after and self.written >= self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    def remove(self) -> None:
        if os.path.exists(self.path):
            os.remove(self.path)


# ---- counts in either layout ---------------------------------------------------------------------------
#: dense [C, V] int64 counts above this size are counted sparse by counts_format="auto"
DENSE_MAX_BYTES = 1 << 30


def _write_counts(path: str, counter, meta: Dict[str, str]) -> None:
    """Save a counter as safetensors, atomically. Sparse counters are streamed row by row into the file's
    CSR tensors (no second copy of the counts in memory, whatever their size)."""
    if not isinstance(counter, SparsePMICounter):
        from safetensors.torch import save

        _atomic_write(path, save(_counter_tensors(counter), metadata=meta))
        return
    import struct

    C, nnz = counter.num_classes, counter.nnz
    lengths = np.fromiter((counter.row_sparse(c)[0].numel() for c in range(C)), dtype=np.int64, count=C)
    indptr = np.concatenate(([0], np.cumsum(lengths)))
    entries = [
        ("indptr", "I64", [C + 1], lambda: [indptr.tobytes()]),
        ("indices", "I32", [nnz], lambda: (counter.row_sparse(c)[0].numpy().tobytes() for c in range(C))),
        ("values", "I64", [nnz], lambda: (counter.row_sparse(c)[1].numpy().tobytes() for c in range(C))),
        ("doc_freq", "I64", [counter.num_tokens], lambda: [counter.doc_freq.numpy().tobytes()]),
        ("class_docs", "I64", [C], lambda: [counter.class_docs.numpy().tobytes()]),
        ("n_docs", "I64", [], lambda: [np.int64(counter.n_docs).tobytes()]),
    ]
    header: Dict[str, Any] = {"__metadata__": meta}
    off = 0
    for name, dt, shape, _ in entries:
        n = (4 if dt == "I32" else 8) * int(np.prod(shape))
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)

    def chunks():
        yield struct.pack("<Q", len(h)) + h
        for *_, parts in entries:
            yield from parts()

    _atomic_write(path, chunks())


def _counter_tensors(counter) -> Dict[str, torch.Tensor]:
    """What is saved of a counter: dense (``counts``, ...) or CSR (``indptr``, ``indices``, ``values``, ...)."""
    if isinstance(counter, SparsePMICounter):
        indptr, indices, values = counter.csr()
        return {"indptr": indptr, "indices": indices, "values": values, "doc_freq": counter.doc_freq.clone(),
                "class_docs": counter.class_docs.clone(),
                "n_docs": torch.tensor(counter.n_docs, dtype=torch.int64)}
    return {k: v.cpu().contiguous() for k, v in counter.state_dict().items()}


def _check_count_tensors(t: Dict[str, torch.Tensor], where: str) -> None:
    """Refuse saved counts whose shapes or values are inconsistent (they would give NaN scores or select
    nothing): every tensor present, int64 (indices int32), shapes that agree, 0 <= counts <= n(t) <= N,
    N_c <= N."""
    sparse = "indptr" in t
    need = ("indptr", "indices", "values", "doc_freq", "class_docs", "n_docs") if sparse else (
        "counts", "doc_freq", "class_docs", "n_docs")
    missing = [k for k in need if k not in t]
    if missing:
        raise ValueError(f"{where}: missing tensor(s) {missing}")
    for k in need:
        want = (torch.int32, torch.int64) if k == "indices" else (torch.int64,)
        if t[k].dtype not in want:
            raise ValueError(f"{where}: {k} has dtype {t[k].dtype}, expected {want[-1]}")
    df, cd, n = t["doc_freq"], t["class_docs"], t["n_docs"]
    if n.dim() != 0 or df.dim() != 1 or cd.dim() != 1 or df.numel() == 0 or cd.numel() == 0:
        raise ValueError(f"{where}: n_docs must be a scalar, doc_freq [V] and class_docs [C] non-empty vectors "
                         f"(got shapes {tuple(n.shape)}, {tuple(df.shape)}, {tuple(cd.shape)})")
    N, V, C = int(n), df.numel(), cd.numel()
    if N < 0:
        raise ValueError(f"{where}: n_docs is negative ({N})")
    if bool((cd < 0).any()) or bool((cd > N).any()):
        raise ValueError(f"{where}: class_docs must lie in [0, n_docs={N}] (found {int(cd.min())}..{int(cd.max())})")
    if bool((df < 0).any()) or bool((df > N).any()):
        raise ValueError(f"{where}: doc_freq must lie in [0, n_docs={N}]")
    if sparse:
        ip, ix, val = t["indptr"], t["indices"], t["values"]
        if ip.dim() != 1 or ip.numel() != C + 1 or ix.dim() != 1 or val.shape != ix.shape:
            raise ValueError(f"{where}: CSR shapes disagree (indptr {tuple(ip.shape)} for {C} classes, indices "
                             f"{tuple(ix.shape)}, values {tuple(val.shape)})")
        if int(ip[0]) != 0 or int(ip[-1]) != ix.numel() or bool((ip.diff() < 0).any()):
            raise ValueError(f"{where}: indptr is not a valid row pointer array over {ix.numel()} entries")
        if ix.numel():
            if int(ix.min()) < 0 or int(ix.max()) >= V:
                raise ValueError(f"{where}: token indices outside [0, {V})")
            rows = torch.repeat_interleave(torch.arange(C), ip.diff())
            key = rows * V + ix.long()
            if bool((key.diff() <= 0).any()):
                raise ValueError(f"{where}: token indices are not sorted and unique within each row")
            if bool((val < 1).any()):
                raise ValueError(f"{where}: stored counts must be >= 1")
            if bool((val > df[ix.long()]).any()) or bool((val > cd[rows]).any()):
                raise ValueError(f"{where}: a class-token count exceeds its token's or its class's documents")
    else:
        cnt = t["counts"]
        if cnt.dim() != 2 or cnt.shape != (C, V):
            raise ValueError(f"{where}: counts have shape {tuple(cnt.shape)}, expected ({C}, {V}) from "
                             "class_docs and doc_freq")
        if bool((cnt < 0).any()) or bool((cnt > df.unsqueeze(0)).any()) or bool((cnt > cd.unsqueeze(1)).any()):
            raise ValueError(f"{where}: a class-token count is negative or exceeds its token's or its class's "
                             "documents")


def _counter_from_tensors(t: Dict[str, torch.Tensor], device, where: str = "the counts"):
    _check_count_tensors(t, where)
    if "indptr" in t:
        return SparsePMICounter.from_csr(t["indptr"], t["indices"], t["values"], t["doc_freq"], t["class_docs"],
                                         int(t["n_docs"]))
    return PMICounter.from_state_dict(t, device)


def _to_sparse(counter: PMICounter) -> SparsePMICounter:
    out = SparsePMICounter(counter.num_tokens, counter.num_classes, counter.device)
    flat = counter.counts.reshape(-1)
    nz = flat.nonzero().squeeze(1)
    out.add_pairs(nz.cpu(), flat[nz].cpu(), counter.doc_freq, counter.class_docs, counter.n_docs)
    return out.flush()


# ---- counting -------------------------------------------------------------------------------------------
def _with_classes(counter, C: int):
    """``counter`` grown to ``C`` classes (a newly seen class gets a zero row)."""
    if isinstance(counter, SparsePMICounter):
        return counter.add_classes(C)
    out = PMICounter(counter.num_tokens, C, counter.device)
    out.counts[: counter.num_classes] = counter.counts
    out.class_docs[: counter.num_classes] = counter.class_docs
    out.doc_freq.copy_(counter.doc_freq)
    out.n_docs = counter.n_docs
    return out


def _check_counted_regions(shards, mine, cur, done_hashes, prefix) -> None:
    """Refuse to resume when a region a checkpoint already counted has changed since (finished shards:
    their whole content; the current one: its prefix up to where counting had read)."""
    for i, want in done_hashes.items():
        sh = shards[int(i)]
        if stream.PrefixHasher(sh).upto(os.path.getsize(sh)) != want:
            raise ValueError(f"{sh} changed since the checkpoint (it was counted already); start afresh "
                             "(--no-resume) or restore the file")
    if prefix and cur < len(mine):
        sh = shards[mine[cur]]
        if prefix["bytes"] > os.path.getsize(sh) or stream.PrefixHasher(sh).upto(prefix["bytes"]) != prefix[
                "blake2b"]:
            raise ValueError(f"{sh} changed since the checkpoint in its first {prefix['bytes']:,} bytes, which "
                             "were counted already; start afresh (--no-resume) or restore the file")


def _gather_sparse(counter: SparsePMICounter, dist, world: int) -> SparsePMICounter:
    """Exact sum of every rank's sparse counts, on every rank: the pairs of each range of classes are
    all-gathered and merged by key, one range at a time (temporary memory: one range from every rank).
    ``doc_freq`` and ``class_docs`` are this rank's (the caller all-reduces them)."""
    C, V = counter.num_classes, counter.num_tokens
    out = SparsePMICounter(V, C, counter.device)
    w = out.BUCKET
    for k in range((C + w - 1) // w):
        rows = [counter.row_sparse(c) for c in range(k * w, min(C, k * w + w))]
        keys = torch.cat([t.long() + (k * w + i) * V for i, (t, _) in enumerate(rows)])
        vals = torch.cat([v for _, v in rows])
        every: List[Any] = [None] * world
        dist.all_gather_object(every, (keys.numpy(), vals.numpy()))
        keys = np.concatenate([a for a, _ in every])
        vals = np.concatenate([b for _, b in every])
        del every
        order = np.argsort(keys, kind="stable")  # (sorted runs, one per rank)
        out._merge_sorted(keys[order], vals[order])
    out.doc_freq = counter.doc_freq.clone()
    out._class_docs = counter.class_docs.clone()
    out.n_docs = counter.n_docs
    return out


def _reordered(counter, names: Sequence[str], final: Sequence[str]):
    """Rows of ``counter`` (classes ``names``, in discovery order) placed at their positions in ``final``."""
    if isinstance(counter, SparsePMICounter):
        counter.add_classes(len(final))
        have = list(names) + [n for n in final if n not in set(names)]
        pos = {n: i for i, n in enumerate(have)}
        return counter.reorder([pos[n] for n in final])
    out = PMICounter(counter.num_tokens, len(final), counter.device)
    if names:
        rows = torch.tensor([list(final).index(n) for n in names], device=counter.device)
        out.counts[rows] = counter.counts[: len(names)]
        out.class_docs[rows] = counter.class_docs[: len(names)]
    out.doc_freq.copy_(counter.doc_freq)
    out.n_docs = counter.n_docs
    return out


def _gc_frozen(fn):
    """Run ``fn`` with the objects alive at its start (model, tokenizer, torch, ...: they outlive the call)
    frozen out of the garbage collector, so that the full collections its allocations trigger do not
    traverse them (~0.1 s apiece with transformers loaded); unfrozen after, unless the caller had frozen
    objects already (then their freeze is left as it was)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        freeze = gc.get_freeze_count() == 0
        if freeze:
            gc.freeze()
        try:
            return fn(*args, **kwargs)
        finally:
            if freeze:
                gc.unfreeze()

    return run


@_gc_frozen
def count_corpus(
    path: str,
    tokenizer,
    *,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Optional[Sequence[str]] = None,
    label_sep: Optional[str] = None,
    fmt: Optional[str] = None,
    max_length: int = 512,
    workers: int = 0,
    block_size: int = 512,
    device: Union[str, torch.device, None] = None,
    checkpoint_dir: Optional[str] = None,
    checkpoint_every: Optional[int] = 100_000,
    checkpoint_seconds: Optional[float] = 300.0,
    resume: bool = True,
    unknown_labels: str = "error",
    on_malformed: str = "skip",
    progress: Optional[bool] = None,
    mp_context: Optional[str] = None,
    count_in: str = "auto",
    check_labels: Optional[Callable[[List[str]], None]] = None,
    counts_format: str = "auto",
) -> CorpusCounts:
    """Stream ``path`` and count, per class and token, the documents containing the token.

    Args:
        tokenizer: the model's fast tokenizer (ids are taken after truncation to ``max_length``, with
            special tokens, exactly as ``tokenizer(text, truncation=True, max_length=max_length)``).
        label_names: the classes, in order; then a label outside them is an error (``unknown_labels=
            "skip"``: reported and skipped). Default: the labels found while reading, sorted at the end
            (integers numerically first, like the in-memory loader); no extra pass over the file.
        workers: tokenizer processes (0: tokenize in this process). The main process reads and counts
            while the workers tokenize.
        device: where the counts live (``"cuda"``: counted there; all-reduced with NCCL under torchrun).
        count_in: ``"workers"`` (each worker counts its block with the CPU kernel and returns it sparse:
            the main process stays light and scales to many workers), ``"main"`` (workers return token
            ids; the main process counts padded batches on ``device``), ``"auto"``: main on a GPU device,
            workers otherwise.
        block_size: records per tokenization job; also the unit of sharding across ranks.
        checkpoint_dir: where each rank keeps its checkpoint; ``resume`` continues from it.
        on_malformed: ``"skip"`` (report line numbers and reasons) or ``"error"``.
        check_labels: called with the class names once known (e.g. to reject an unknown target
            class): before counting when ``label_names`` is given, else after counting, once a final
            checkpoint is written, so that a corrected re-run resumes at the end instead of recounting.
        counts_format: ``"dense"`` (``[C, V]`` int64: fastest while it fits), ``"sparse"``
            (:class:`~steu_ext.ops.sparse_doc_counts.SparsePMICounter`: memory grows with the nonzero
            class-token pairs; for ICD-sized label sets and LLM vocabularies) or ``"auto"``: dense while
            ``C x V x 8`` bytes stay under :data:`DENSE_MAX_BYTES`, else sparse (switching when discovered
            classes push it over). Both give identical counts; the summary says which ran.
    Under torch.distributed every rank must call this with the same arguments; all get the reduced counts.
    """
    if unknown_labels not in ("error", "skip"):
        raise ValueError(f"unknown_labels must be 'error' or 'skip', got {unknown_labels!r}")
    if on_malformed not in ("error", "skip"):
        raise ValueError(f"on_malformed must be 'error' or 'skip', got {on_malformed!r}")
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if count_in not in ("auto", "main", "workers"):
        raise ValueError(f"count_in must be 'auto', 'main' or 'workers', got {count_in!r}")
    if counts_format not in ("auto", "dense", "sparse"):
        raise ValueError(f"counts_format must be 'auto', 'dense' or 'sparse', got {counts_format!r}")
    t_start = time.perf_counter()
    # Inputs: one file, or shards (a folder, a glob, an HF datasets folder). With at least as many shards
    # as ranks, rank r reads whole shards r, r + world, ...; otherwise every rank reads its blocks of
    # every shard. Either way the assignment depends only on the sorted shard list and the world size.
    path = os.fspath(path)
    shards = stream.resolve_shards(path)
    for sh in shards:
        stream.detect_format(sh, fmt)
    single = len(shards) == 1 and os.path.isfile(path) and shards[0] == path
    prints = [stream.input_fingerprint(sh) for sh in shards]
    fingerprint = prints[0] if single else {
        "path": os.path.abspath(path), "size": sum(f["size"] for f in prints), "shards": prints}
    tok_json = _tokenizer_json(tokenizer)
    ident = tokenizer_identity(tokenizer, tok_json)
    direction = getattr(tokenizer, "truncation_side", "right")
    dist = _dist()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)
    whole = not single and len(shards) >= world
    mine = [i for i in range(len(shards)) if i % world == rank] if whole else list(range(len(shards)))
    sub_rank, sub_world = (0, 1) if whole else (rank, world)

    # Classes: fixed by label_names (then other labels are unknown), or discovered while reading (no extra
    # pass over the file) and put in sorted order at the end.
    fixed = label_names is not None
    names: List[str] = stream.check_label_names(label_names) if fixed else []
    if fixed and check_labels is not None:
        check_labels(names)
    index = {n: i for i, n in enumerate(names)}
    V = len(tokenizer)
    device = torch.device(device if device is not None else "cpu")

    def wants_sparse(C: int) -> bool:
        return counts_format == "sparse" or (counts_format == "auto" and C * V * 8 > DENSE_MAX_BYTES)

    C0 = max(len(names), 1)
    counter = SparsePMICounter(V, C0, device) if wants_sparse(C0) else PMICounter(V, C0, device)

    run = {
        "input": fingerprint,
        "tokenizer": ident["sha256"],
        "vocab_size": V,
        "max_length": max_length,
        "label_names": names if fixed else None,
        "label_sep": label_sep,
        "columns": [text_column, label_column],
        "format": fmt,
        "block_size": block_size,
        "world_size": world,
        "unknown_labels": unknown_labels,
    }
    ckpt = (
        _Checkpointer(checkpoint_dir, rank, world, run, checkpoint_every, checkpoint_seconds)
        if checkpoint_dir
        else None
    )
    start, n_tokens, n_seen, n_skipped = 0, 0, 0, 0
    skipped: List[Dict[str, Any]] = []
    last_end = 0
    # where this rank is: shard mine[cur] from record next_index; hashes of the counted regions
    cur, last_pos = 0, 0
    done_hashes: Dict[str, str] = {}
    if ckpt is not None and resume:
        loaded = ckpt.load()
        if loaded is not None:
            tensors, st = loaded
            counter = _counter_from_tensors(tensors, device, f"the checkpoint in {checkpoint_dir}")
            start, n_tokens, n_seen, n_skipped = (
                st["next_index"],
                st["n_tokens"],
                st["n_records"],
                st["n_skipped"],
            )
            skipped, names = st["skipped"], st["names"]
            index = {n: i for i, n in enumerate(names)}
            cur, done_hashes = st.get("shard", 0), st.get("done_hashes", {})
            _check_counted_regions(shards, mine, cur, done_hashes, st.get("prefix"))
            last_pos = (st.get("prefix") or {}).get("bytes", 0)
            log.warning(
                "rank %d: resuming from record %d (%d documents already counted)", rank, start, counter.n_docs
            )

    bar = None
    if show_progress(progress) and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=sum(prints[i]["size"] for i in mine),
            unit="B",
            unit_scale=True,
            dynamic_ncols=True,
            desc="counting" if world == 1 else f"counting (rank 0 of {world})",
        )
        t_bar = time.perf_counter()
        docs_at_start, tokens_at_start = counter.n_docs, n_tokens

    def sort_out(block: stream.Block) -> List[Tuple[List[int], stream.Record]]:
        """The valid records of ``block`` with their class ids; records skipped by the reader or for an
        unknown label are logged in ``skipped`` (or raise, per ``on_malformed`` / ``unknown_labels``)."""
        nonlocal n_skipped
        good = []
        bad = list(block.skipped)
        where = "" if single else f"{os.path.basename(shards[mine[block.shard]])}: "
        for r in block.records:
            ys = [index.get(v) for v in r.labels]
            if None in ys and not fixed:  # a new class
                for v in r.labels:
                    if v not in index:
                        index[v] = len(names)
                        names.append(v)
                ys = [index[v] for v in r.labels]
            if None in ys:
                unknown = [v for v, y in zip(r.labels, ys) if y is None]
                if unknown_labels == "error":
                    raise ValueError(
                        f"{path}: {where}line {r.line}: unknown label(s) {unknown}; the classes are {names} "
                        "(skip such records with unknown_labels='skip' / --unknown-labels skip)"
                    )
                bad.append(stream.Skipped(r.index, r.line, f"unknown label(s) {unknown}"))
                continue
            good.append((ys, r))
        if bad and on_malformed == "error":
            b = min(bad, key=lambda s: s.index)
            raise ValueError(f"{path}: {where}line {b.line}: {b.reason}")
        bad.sort(key=lambda s: s.index)
        n_skipped += len(bad)
        room = MAX_LISTED_SKIPS - len(skipped)
        extra = {} if single else {"file": os.path.basename(shards[mine[block.shard]])}
        skipped.extend({**extra, "line": s.line, "reason": s.reason} for s in bad[: max(room, 0)])
        return good

    def count(block: stream.Block, good, result) -> None:
        """Add a finished block to the counts (in file order), then report progress and checkpoint."""
        nonlocal n_tokens, n_seen, counter, last_end, cur, last_pos
        if block.number < 0:  # end of a shard
            if not single:
                h = hashers.pop(block.shard, None) or stream.PrefixHasher(shards[mine[block.shard]])
                done_hashes[str(mine[block.shard])] = h.upto(block.pos)
                cur, last_end, last_pos = block.shard + 1, 0, 0
            return
        last_end, cur, last_pos = block.end, block.shard, block.pos
        if len(names) > counter.num_classes:
            if isinstance(counter, PMICounter) and wants_sparse(len(names)):
                counter = _to_sparse(counter)
                log.info("%d classes x %d tokens: switching to sparse counts", len(names), V)
            counter = _with_classes(counter, len(names))
        if good and on_device:  # token ids came back: count here, on the device
            flat, lengths, rows, cols = result
            _check_ids(flat, V)
            ids, mask = _padded(flat, lengths)
            lab = _label_matrix(rows, cols, len(lengths), counter.num_classes)
            dev = counter.device
            counter.update(ids.to(dev, non_blocking=True), lab.to(dev), attention_mask=mask.to(dev),
                           validate=False)
            n_tokens += int(lengths.sum())
        elif good:  # counted by the worker: add its sparse block counts
            _add_block(counter, result)
            n_tokens += result["n_tokens"]
        n_seen += len(block.records) + len(block.skipped)
        if bar is not None:
            bar.update(bytes_before[block.shard] + block.pos - bar.n)
            el = time.perf_counter() - t_bar
            bar.set_postfix_str(
                f"{(counter.n_docs - docs_at_start) / el:,.0f} docs/s, "
                f"{(n_tokens - tokens_at_start) / el / 1e3:,.0f}k tokens/s",
                refresh=False,
            )
        if ckpt is not None:
            ckpt.maybe_save(counter, state(block.end), len(good))

    def job_args(good) -> Tuple[List[str], np.ndarray, np.ndarray, int]:
        texts = [r.text for _, r in good]
        cols = np.fromiter(chain.from_iterable(ys for ys, _ in good), dtype=np.int64)
        rows = np.repeat(np.arange(len(good)), [len(ys) for ys, _ in good])
        return texts, rows, cols, len(names)

    hashers: Dict[int, stream.PrefixHasher] = {}
    bytes_before = [0] * (len(mine) + 1)
    for j, i in enumerate(mine):
        bytes_before[j + 1] = bytes_before[j] + prints[i]["size"]

    def state(next_index: int) -> Dict[str, Any]:
        h = hashers.setdefault(cur, stream.PrefixHasher(shards[mine[cur]])) if cur < len(mine) else None
        return {
            "shard": cur,
            "progress": {os.path.basename(shards[mine[j]]): (next_index if j == cur else "done")
                         for j in range(min(cur + 1, len(mine)))},
            "prefix": None if h is None else {"bytes": last_pos, "blake2b": h.upto(last_pos)},
            "done_hashes": dict(done_hashes),
            "next_index": next_index,
            "n_tokens": n_tokens,
            "n_records": n_seen,
            "n_skipped": n_skipped,
            "skipped": skipped,
            "names": names,
        }

    def all_blocks(first: int):  # (count() moves `cur` on while this runs)
        for j in range(first, len(mine)):
            sh = shards[mine[j]]
            for b in stream.iter_blocks(sh, text_column, label_column, label_sep=label_sep, fmt=fmt,
                                        block_size=block_size, rank=sub_rank, world_size=sub_world,
                                        start=start if j == first else 0):
                b.shard = j
                yield b
            end = stream.Block(-1, 0, 0, pos=prints[mine[j]]["size"])
            end.shard = j
            yield end

    blocks = all_blocks(cur)
    t_count = 0.0
    pool = None
    # Where counting happens: on a GPU, the main process counts padded batches there (the workers only
    # tokenize); on the CPU, each worker also counts its own block with the C++ kernel and returns sparse
    # counts, so the main process only reads, dispatches and adds, and scales to many workers.
    on_device = count_in == "main" or (count_in == "auto" and device.type != "cpu")
    # One thread per process: the other cores belong to the workers (more would only contend with them).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if workers == 0:
            enc = _make_encoder(tok_json, max_length, direction)
            for block in blocks:
                good = sort_out(block)
                result = None
                if good:
                    texts, rows, cols, C = job_args(good)
                    result = (
                        (*_encode(texts, enc), rows, cols)
                        if on_device
                        else _tokenize_and_count(texts, rows, cols, C, enc, V,
                                                 isinstance(counter, SparsePMICounter))
                    )
                t = time.perf_counter()
                count(block, good, result)
                t_count += time.perf_counter() - t
        else:
            method = mp_context or ("fork" if sys.platform.startswith("linux") else "spawn")
            pool = mp.get_context(method).Pool(
                workers, initializer=_worker_init, initargs=(tok_json, max_length, direction, os.getpid(), V)
            )
            inflight: collections.deque = collections.deque()
            max_inflight = 2 * workers + 1  # keeps every worker busy, bounds memory to a few blocks

            def finish_oldest():
                nonlocal t_count
                block, good, job, rows, cols = inflight.popleft()
                result = None
                if job is not None:
                    result = (*job.get(), rows, cols) if on_device else job.get()
                t = time.perf_counter()
                count(block, good, result)
                t_count += time.perf_counter() - t

            for block in blocks:
                good = sort_out(block)
                job = rows = cols = None
                if good:
                    texts, rows, cols, C = job_args(good)
                    job = (
                        pool.apply_async(_encode, (texts,))
                        if on_device
                        else pool.apply_async(_tokenize_and_count, (texts, rows, cols, C, None, None,
                                                                    isinstance(counter, SparsePMICounter)))
                    )
                inflight.append((block, good, job, rows, cols))
                while len(inflight) >= max_inflight:
                    finish_oldest()
            while inflight:
                finish_oldest()
        if ckpt is not None:  # a final checkpoint: a failure from here on costs no recounting
            ckpt.save(counter, state(max(start, last_end) if single else 0))
    finally:
        torch.set_num_threads(threads)
        if pool is not None:
            pool.terminate()
            pool.join()
        if bar is not None:
            bar.close()
    t_local = time.perf_counter() - t_start

    # classes in their final order: as given, or sorted (the order of the in-memory loader); every rank
    # contributes the classes it saw
    if fixed:
        final = names
    else:
        seen = names
        if dist:
            every_names = [None] * world
            dist.all_gather_object(every_names, names)
            seen = [n for part in every_names for n in part]
        final = sorted(set(seen), key=stream.label_sort_key)
        if not final:
            raise ValueError(
                f"{path}: no document was counted ({n_skipped} records skipped"
                + (f", first: line {skipped[0]['line']}: {skipped[0]['reason']})" if skipped else ")")
            )
        if check_labels is not None:
            check_labels(final)
        counter = _reordered(counter, names, final)

    if dist:  # exact int64 sums across ranks
        red_dev = (
            torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend() == "nccl"
            else counter.device
        )
        scal = torch.tensor([counter.n_docs, n_tokens, n_seen, n_skipped], dtype=torch.int64)
        sparse = isinstance(counter, SparsePMICounter)
        if sparse:
            counter = _gather_sparse(counter, dist, world)
        parts = [counter.counts] if not sparse else []
        parts += [counter.doc_freq, counter.class_docs, scal]
        for t in parts:
            buf = t.to(red_dev)
            dist.all_reduce(buf)
            t.copy_(buf)
        counter.n_docs, n_tokens, n_seen, n_skipped = (int(x) for x in scal.tolist())
        every = [None] * world
        dist.all_gather_object(every, skipped)
        skipped = sorted((s for part in every for s in part), key=lambda s: (s.get("file", ""), s["line"]))[:MAX_LISTED_SKIPS]
    if counter.n_docs == 0:
        raise ValueError(
            f"{path}: no document was counted ({n_skipped} records skipped"
            + (f", first: line {skipped[0]['line']}: {skipped[0]['reason']})" if skipped else ")")
        )
    if n_skipped:
        shown = ", ".join(f"line {s['line']} ({s['reason']})" for s in skipped[:20])
        more = f", ... ({n_skipped - 20} more, all listed in the summary)" if n_skipped > 20 else ""
        if rank == 0:
            log.warning("%s: skipped %d malformed or empty record(s): %s%s", path, n_skipped, shown, more)
    wall = time.perf_counter() - t_start
    return CorpusCounts(
        counter,
        final,
        ident,
        {**fingerprint, "text_column": text_column, "label_column": label_column, "label_sep": label_sep},
        max_length,
        n_seen,
        n_tokens,
        skipped,
        n_skipped,
        {
            "wall": wall,
            "local": t_local,
            "count": t_count,
            "docs_per_s": counter.n_docs / wall,
            "tokens_per_s": n_tokens / wall,
        },
        world,
    )


# ---- outputs --------------------------------------------------------------------------------------------
def save_counts(cc: CorpusCounts, out_dir: str) -> str:
    """Write ``counts.safetensors`` (the counter's state plus identity metadata) into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    meta = {
        "format": COUNTS_FORMAT,
        "layout": "csr" if isinstance(cc.counter, SparsePMICounter) else "dense",
        "label_names": json.dumps(cc.label_names),
        "tokenizer": json.dumps(cc.tokenizer),
        "max_length": str(cc.max_length),
        "input": json.dumps(cc.input),
        "n_tokens": str(cc.n_tokens),
        "n_records": str(cc.n_records),
    }
    path = os.path.join(out_dir, COUNTS_FILE)
    _write_counts(path, cc.counter, meta)
    return path


def load_counts(path: str, tokenizer=None, device: Union[str, torch.device] = "cpu") -> CorpusCounts:
    """Counts saved by :func:`save_counts` (``path``: the folder or the ``.safetensors`` file). With
    ``tokenizer``, raise ``ValueError`` unless it is the tokenizer the counts were made with."""
    from safetensors import safe_open

    file = os.path.join(path, COUNTS_FILE) if os.path.isdir(path) else path
    if not os.path.exists(file):
        raise FileNotFoundError(f"no saved counts at {path} (expected {COUNTS_FILE} from `steu pmi`)")
    with safe_open(file, "pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") != COUNTS_FORMAT:
        raise ValueError(f"{file} is not a counts file written by `steu pmi` (format {meta.get('format')!r})")
    ident = json.loads(meta["tokenizer"])
    if tokenizer is not None:
        check_tokenizer(ident, tokenizer, where=f"the counts in {path}")
    counter = _counter_from_tensors(tensors, device, file)
    names = json.loads(meta["label_names"])
    if len(names) != counter.num_classes:
        raise ValueError(f"{file}: {len(names)} label names for {counter.num_classes} count rows")
    return CorpusCounts(
        counter,
        names,
        ident,
        json.loads(meta.get("input", "{}")),
        int(meta.get("max_length", 0)),
        int(meta.get("n_records", 0)),
        int(meta.get("n_tokens", 0)),
    )


def load_class_counts(path: str, target: Union[int, str], tokenizer=None) -> Dict[str, Any]:
    """One class's counts from saved counts, reading only that row (and ``doc_freq``) of a sparse (CSR)
    file: ``{"label", "index", "counts" (int64 [V]), "doc_freq", "n_docs", "class_docs" (int)}``. What
    :func:`~steu_ext.ops.pmi.pmi_scores` needs for one target, without loading ``C x V``."""
    from safetensors import safe_open

    from ..modeling.labels import resolve_target

    file = os.path.join(path, COUNTS_FILE) if os.path.isdir(path) else path
    if not os.path.exists(file):
        raise FileNotFoundError(f"no saved counts at {path} (expected {COUNTS_FILE} from `steu pmi`)")
    with safe_open(file, "pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != COUNTS_FORMAT:
            raise ValueError(f"{file} is not a counts file written by `steu pmi`")
        if tokenizer is not None:
            check_tokenizer(json.loads(meta["tokenizer"]), tokenizer, where=f"the counts in {path}")
        names = json.loads(meta["label_names"])
        c = resolve_target(target, names)
        df, cd, n = f.get_tensor("doc_freq"), f.get_tensor("class_docs"), int(f.get_tensor("n_docs"))
        if cd.shape != (len(names),) or n < 0 or not 0 <= int(cd[c]) <= n:
            raise ValueError(f"{file}: inconsistent counts (class_docs {tuple(cd.shape)} for {len(names)} "
                             f"classes, n_docs {n})")
        row = torch.zeros(df.shape[0], dtype=torch.int64)
        if "indptr" in f.keys():
            ip = f.get_slice("indptr")[c: c + 2]
            s, e = int(ip[0]), int(ip[1])
            if e > s:
                idx = f.get_slice("indices")[s:e].long()
                if int(idx.min()) < 0 or int(idx.max()) >= df.shape[0]:
                    raise ValueError(f"{file}: token indices outside the vocabulary")
                row[idx] = f.get_slice("values")[s:e]
        else:
            row = f.get_slice("counts")[c: c + 1].reshape(-1)
    if bool((row < 0).any()) or bool((row > df).any()) or bool((row > int(cd[c])).any()):
        raise ValueError(f"{file}: class {names[c]!r} has counts outside [0, its documents]")
    return {"label": names[c], "index": c, "counts": row, "doc_freq": df, "n_docs": n,
            "class_docs": int(cd[c])}


def top_token_tables(
    cc: CorpusCounts,
    tokenizer,
    targets: Optional[Sequence[int]] = None,
    *,
    k: int = 256,
    measure: str = "fwpmi",
    alpha: float = 0.0,
    min_count: int = 1,
) -> Dict[str, List[dict]]:
    """Per class: the ``k`` best tokens (special tokens excluded) with their scores and counts."""
    from ..ops.pmi import select_top_k

    counter = cc.counter
    if k > counter.num_tokens:
        raise ValueError(f"k={k} is larger than the vocabulary ({counter.num_tokens} tokens)")
    targets = range(len(cc.label_names)) if targets is None else targets
    special = [i for i in getattr(tokenizer, "all_special_ids", []) if 0 <= i < counter.num_tokens]
    tables = {}
    for t in targets:
        if int(counter.class_docs[t]) == 0:
            log.warning("class %r has no documents: no top-token table", cc.label_names[t])
            continue
        scores = counter.scores(t, measure=measure, alpha=alpha, min_count=min_count)
        ids = select_top_k(scores, k, exclude_ids=special)
        row = counter.counts[t]  # one dense row (a sparse counter expands only this class)
        tables[cc.label_names[t]] = [
            {
                "rank": r + 1,
                "id": int(i),
                "token": tokenizer.convert_ids_to_tokens(int(i)),
                "score": float(scores[i]),
                "docs_in_class": int(row[i]),
                "docs": int(counter.doc_freq[i]),
            }
            for r, i in enumerate(ids)
        ]
    return tables


def _write_tables(tables: Dict[str, List[dict]], names: Sequence[str], out_dir: str) -> None:
    import csv
    import io

    for name, rows in tables.items():
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["rank", "id", "token", "score", "docs_in_class", "docs"])
        for r in rows:
            w.writerow([r["rank"], r["id"], r["token"], f"{r['score']:.6f}", r["docs_in_class"], r["docs"]])
        _atomic_write(
            os.path.join(out_dir, f"top_tokens_{list(names).index(name)}.csv"), buf.getvalue().encode()
        )
    _atomic_write(os.path.join(out_dir, "top_tokens.json"), json.dumps(tables, indent=1).encode())


def precompute_pmi(
    path: str,
    tokenizer,
    out_dir: str,
    *,
    targets: Optional[Sequence[Union[int, str]]] = None,
    k: int = 256,
    measure: str = "fwpmi",
    alpha: float = 0.0,
    min_count: int = 1,
    resume: bool = True,
    extra_summary: Optional[Dict[str, Any]] = None,
    **count_kw,
) -> CorpusCounts:
    """Count ``path`` (see :func:`count_corpus`) with checkpoints in ``out_dir/checkpoints`` and write
    ``counts.safetensors``, ``top_tokens_<class>.csv``, ``top_tokens.json`` and, last, ``summary.json``
    (its presence marks a finished run). ``targets``: class names or indices for the tables (default:
    all). Rank 0 writes; every rank returns the reduced counts."""
    from .._outdir import write_json
    from ..modeling.labels import resolve_target

    if k > len(tokenizer):
        raise ValueError(f"k={k} is larger than the vocabulary ({len(tokenizer)} tokens)")
    resolved: List[int] = []

    def check(names: List[str]) -> None:
        resolved[:] = [resolve_target(t, names) for t in targets] if targets else range(len(names))

    ck = os.path.join(out_dir, CHECKPOINT_DIR)
    cc = count_corpus(path, tokenizer, checkpoint_dir=ck, resume=resume, check_labels=check, **count_kw)
    targets = resolved
    dist = _dist()
    rank = dist.get_rank() if dist else 0
    if rank == 0:
        save_counts(cc, out_dir)
        tables = top_token_tables(
            cc, tokenizer, targets, k=k, measure=measure, alpha=alpha, min_count=min_count
        )
        _write_tables(tables, cc.label_names, out_dir)
        summary = {
            **cc.summary(),
            "measure": measure,
            "alpha": alpha,
            "min_count": min_count,
            "k": k,
            "data": os.path.abspath(path),
            **(extra_summary or {}),
            "top_tokens": tables,
        }
        write_json(os.path.join(out_dir, SUMMARY_FILE), summary)
    if dist:
        dist.barrier()
    world = dist.get_world_size() if dist else 1
    f = os.path.join(ck, f"rank{rank}-of-{world}.safetensors")
    if os.path.exists(f):
        os.remove(f)
    if dist:
        dist.barrier()
    if rank == 0:
        shutil.rmtree(ck, ignore_errors=True)
    return cc
