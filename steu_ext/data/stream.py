"""Streaming readers for labelled text files far larger than memory: CSV/TSV, JSONL and parquet, plain or
gzip, read record by record with their line numbers, and split deterministically across ranks.

Every physical record gets an ordinal ``index`` (0-based, malformed ones included), so the same file
always yields the same indices: that is what sharding (block ``index // block_size`` belongs to rank
``block % world``) and resuming (``start``: skip everything before a saved index) rely on. Malformed or
empty records are yielded as :class:`Skipped` with their line number and the reason, never dropped
silently; a problem that makes the rest of the file unreadable is a ``ValueError`` naming the file and line.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

__all__ = [
    "Record",
    "Skipped",
    "Block",
    "detect_format",
    "iter_records",
    "iter_blocks",
    "input_fingerprint",
    "PrefixHasher",
    "resolve_shards",
    "label_sort_key",
    "parse_label_cell",
]

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".arrow": "arrow",
}


@dataclass
class Record:
    index: int  # ordinal of the record in the file (0-based, malformed records included)
    line: int  # 1-based line number where it starts (parquet: 1-based row number)
    text: str
    labels: List[str]  # raw label values (one for single-label data)


@dataclass
class Skipped:
    index: int
    line: int
    reason: str


@dataclass
class Block:
    """Records ``[start, end)`` of the file that belong to one rank: the valid ones and the skipped ones."""

    number: int
    start: int
    end: int
    records: List[Record] = field(default_factory=list)
    skipped: List[Skipped] = field(default_factory=list)
    pos: int = 0  # bytes of the (compressed) file read so far, for progress reporting


def detect_format(path: str, fmt: Optional[str] = None) -> Tuple[str, bool]:
    """``(format, gzipped)`` from ``fmt`` or the file name (``notes.csv.gz`` -> ``("csv", True)``)."""
    name = os.path.basename(path).lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    if fmt is not None:
        if fmt not in ("csv", "tsv", "jsonl", "parquet", "arrow"):
            raise ValueError(f"unknown input format {fmt!r}; use csv, tsv, jsonl, parquet or arrow")
        return fmt, gz
    ext = os.path.splitext(name)[1]
    if ext not in FORMATS:
        raise ValueError(
            f"cannot tell the format of {path} from its extension {ext!r}; use .csv, .tsv, "
            ".jsonl or .parquet (optionally .gz), or pass the format explicitly"
        )
    return FORMATS[ext], gz


def parse_label_cell(cell, label_sep: Optional[str]) -> List[str]:
    """Label values of one cell: a list (multi-label), a string split on ``label_sep``, or one value."""
    if isinstance(cell, (list, tuple)):
        return [str(v).strip() for v in cell if str(v).strip()]
    if cell is None:
        return []
    if isinstance(cell, float) and cell.is_integer():
        cell = int(cell)
    s = str(cell).strip()
    if label_sep is not None:
        return [v.strip() for v in s.split(label_sep) if v.strip()]
    return [s] if s else []


def label_sort_key(s: str):
    """Class order when names are discovered from the data: integers numerically first, then names (the
    order :func:`steu_ext.data.loaders.load_text_classification` uses)."""
    num = s.lstrip("-").isdigit()
    return (not num, int(s) if num else 0, s)


class _Source:
    """The file as a binary stream (decompressed if gzip), and how many bytes of the file were read."""

    def __init__(self, path: str, gz: bool):
        self.raw = open(path, "rb")
        self.stream = gzip.GzipFile(fileobj=self.raw, mode="rb") if gz else self.raw

    def pos(self) -> int:
        return self.raw.tell()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.stream is not self.raw:
            self.stream.close()
        self.raw.close()


def _check_exists(path: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder, expected a data file")


def _make(index, line, text, cell, label_sep) -> Union[Record, Skipped]:
    if text is None or (isinstance(text, str) and not text.strip()):
        return Skipped(index, line, "empty text")
    if not isinstance(text, str):
        return Skipped(index, line, f"text is a {type(text).__name__}, not a string")
    labels = parse_label_cell(cell, label_sep)
    if not labels:
        return Skipped(index, line, "no label")
    return Record(index, line, text, labels)


MAX_RECORD_BYTES = 64 << 20
"""Longest line / record (bytes of UTF-8) the CSV/JSONL readers accept: a longer one (an endless line such as
``/dev/zero``, or an unclosed quote swallowing the file) is a ``ValueError`` naming the line, not an
out-of-memory crash. Override per call (``max_record_bytes``) or with ``STEU_EXT_MAX_RECORD_BYTES``."""


def _record_cap(max_record_bytes: Optional[int]) -> int:
    if max_record_bytes is None:
        env = os.environ.get("STEU_EXT_MAX_RECORD_BYTES")
        max_record_bytes = int(env) if env else MAX_RECORD_BYTES
    if max_record_bytes < 1:
        raise ValueError(f"max_record_bytes must be >= 1, got {max_record_bytes}")
    return int(max_record_bytes)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.3g} MiB" if n >= 1 << 20 else f"{n} bytes"


class _Lines:
    """Physical lines of a binary stream, each at most ``cap`` bytes (else ``ValueError`` with the line
    number), the UTF-8 BOM of the first line dropped. ``decode=True``: lines as text, an invalid UTF-8 line
    replaced (U+FFFD) and its number and reason kept in :attr:`bad` for the caller to skip the record."""

    def __init__(self, stream, cap: int, path: str, decode: bool):
        self.stream, self.cap, self.path, self.decode = stream, cap, path, decode
        self.n = 0
        self.bad: dict = {}

    def __iter__(self):
        return self

    def __next__(self):
        raw = self.stream.readline(self.cap + 1)
        if not raw:
            raise StopIteration
        self.n += 1
        if len(raw) > self.cap and not raw.endswith(b"\n"):
            raise ValueError(f"{self.path}: line {self.n} is longer than {_mib(self.cap)} (the record-length cap; "
                             "is this a text file with one record per line? raise STEU_EXT_MAX_RECORD_BYTES for "
                             "longer records)")
        if self.n == 1 and raw.startswith(b"\xef\xbb\xbf"):   # UTF-8 BOM (Excel)
            raw = raw[3:]
        if not self.decode:
            return raw
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.bad[self.n] = f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
            return raw.decode("utf-8", errors="replace")


def _csv_records(path, gz, delimiter, text_column, label_column, label_sep, start, want, where,
                 max_record_bytes=None):
    cap = _record_cap(max_record_bytes)
    try:
        with _Source(path, gz) as src:
            if where is not None:
                where[0] = src.pos
            lines = _Lines(src.stream, cap, path, decode=True)
            # strict: a quote error is reported (and skipped), not silently glued into a field; an unclosed
            # quote at the end of the file is an error naming the line where the record starts
            reader = csv.reader(lines, delimiter=delimiter, strict=True)

            def read():
                csv.field_size_limit(cap)   # process-wide setting: set before every read
                return next(reader)

            try:
                header = read()
            except StopIteration:
                raise ValueError(f"{path} is empty: no header row") from None
            except csv.Error as e:
                raise ValueError(f"{path}: line 1: unreadable CSV header ({e})") from None
            if 1 in lines.bad:
                raise ValueError(f"{path}: line 1 (the header) is {lines.bad[1]}; re-encode the file as UTF-8")
            missing = [c for c in (text_column, label_column) if c not in header]
            if missing:
                raise ValueError(f"{path} has no column(s) {missing}; its columns are {header}")
            ti, li, width = header.index(text_column), header.index(label_column), len(header)
            index, prev_line = 0, reader.line_num
            while True:
                line = prev_line + 1
                err = None
                try:
                    row = read()
                except StopIteration:
                    return
                except csv.Error as e:
                    msg = str(e)
                    if "unexpected end of data" in msg:
                        raise ValueError(f"{path}: line {line}: unclosed quote: the quoted field starting on line "
                                         f"{line} runs to the end of the file (line {reader.line_num})") from None
                    if "field larger than field limit" in msg:
                        raise ValueError(f"{path}: line {line}: a field longer than {_mib(cap)} (the record-length "
                                         "cap): an unclosed quote? raise STEU_EXT_MAX_RECORD_BYTES for longer "
                                         "records") from None
                    err, row = msg, None
                end, prev_line = reader.line_num, reader.line_num
                bad = [lines.bad.pop(n) for n in sorted(lines.bad) if n <= end]
                if index >= start and (want is None or want(index)):
                    span = f" (record spans lines {line}-{end})" if end > line else ""
                    if err is not None:
                        yield Skipped(index, line, f"malformed quoting ({err}){span}")
                    elif bad:
                        yield Skipped(index, line, bad[0])
                    elif not row:
                        yield Skipped(index, line, "empty line")
                    elif len(row) != width:
                        yield Skipped(index, line, f"expected {width} fields, found {len(row)}{span}")
                    else:
                        yield _make(index, line, row[ti], row[li], label_sep)
                index += 1
    except (OSError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: cannot read ({e})") from None


def _jsonl_records(path, gz, text_column, label_column, label_sep, start, want, where, max_record_bytes=None):
    cap = _record_cap(max_record_bytes)
    try:
        with _Source(path, gz) as src:
            if where is not None:
                where[0] = src.pos
            for index, raw in enumerate(_Lines(src.stream, cap, path, decode=False)):
                if index < start or (want is not None and not want(index)):  # not even decoded
                    continue
                line = index + 1
                try:
                    s = raw.decode("utf-8").strip()
                except UnicodeDecodeError as e:
                    yield Skipped(index, line, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
                    continue
                if not s:
                    yield Skipped(index, line, "empty line")
                    continue
                try:
                    obj = json.loads(s)
                except json.JSONDecodeError as e:
                    yield Skipped(index, line, f"invalid JSON ({e.msg} at column {e.colno})")
                    continue
                except RecursionError:
                    yield Skipped(index, line, "JSON nested too deeply")
                    continue
                if not isinstance(obj, dict):
                    yield Skipped(index, line, f"a JSON {type(obj).__name__}, not an object")
                    continue
                missing = [c for c in (text_column, label_column) if c not in obj]
                if missing:
                    yield Skipped(index, line, f"no field(s) {missing}")
                    continue
                yield _make(index, line, obj[text_column], obj[label_column], label_sep)
    except (OSError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: cannot read ({e})") from None


def _parquet_records(path, gz, text_column, label_column, label_sep, start, want, where, batch_rows=8192):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = gzip.open(path, "rb") if gz else path
    try:
        pf = pq.ParquetFile(src)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise ValueError(f"{path} is not a readable parquet file ({e})") from None
    names = pf.schema_arrow.names
    missing = [c for c in (text_column, label_column) if c not in names]
    if missing:
        raise ValueError(f"{path} has no column(s) {missing}; its columns are {names}")
    index, rows, size = 0, max(pf.metadata.num_rows, 1), os.path.getsize(path)
    if where is not None:
        where[0] = lambda: size * index // rows
    for rg in range(pf.num_row_groups):
        n = pf.metadata.row_group(rg).num_rows
        if index + n <= start:  # whole row group before the resume point: not even decoded
            index += n
            continue
        for batch in pf.iter_batches(
            batch_size=batch_rows, row_groups=[rg], columns=[text_column, label_column]
        ):
            n = batch.num_rows
            # only the wanted rows (this rank's, from the resume point) become Python objects, the costly
            # part; the others are dropped in Arrow
            mine = [i for i in range(index, index + n) if i >= start and (want is None or want(i))]
            first, index = index, index + n
            if not mine:
                continue
            if len(mine) < n:
                batch = batch.take(pa.array([i - first for i in mine], type=pa.int64()))
            texts = batch.column(text_column).to_pylist()
            cells = batch.column(label_column).to_pylist()
            for i, t, c in zip(mine, texts, cells):
                yield _make(i, i + 1, t, c, label_sep)


def _class_label_names(folder: str, column: str) -> Optional[List[str]]:
    """The names of an HF ``datasets`` ClassLabel column (or a sequence of them) from the folder's
    ``dataset_info.json``, else None (labels are then read as they are stored)."""
    try:
        with open(os.path.join(folder, "dataset_info.json")) as f:
            feat = json.load(f).get("features", {}).get(column)
    except (OSError, ValueError):
        return None
    for _ in range(3):  # ClassLabel, Sequence(ClassLabel), List(ClassLabel)
        if not isinstance(feat, dict):
            return None
        if feat.get("_type") == "ClassLabel" and isinstance(feat.get("names"), list):
            return [str(n) for n in feat["names"]]
        feat = feat.get("feature")
    return None


def _arrow_records(path, text_column, label_column, label_sep, start, want, where):
    """An Arrow IPC stream file as written by HF ``datasets.save_to_disk`` (memory-mapped, read batch by
    batch, nothing copied or cached); ClassLabel ids become their names."""
    import pyarrow as pa

    try:
        src = pa.memory_map(path, "r")
        try:
            reader = pa.ipc.open_stream(src)
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(src)
            reader = iter(reader.get_batch(i) for i in range(reader.num_record_batches))
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise ValueError(f"{path} is not a readable Arrow file ({e})") from None
    names = _class_label_names(os.path.dirname(path), label_column)
    index = 0
    if where is not None:
        where[0] = src.tell
    for batch in reader:
        cols = batch.schema.names
        missing = [c for c in (text_column, label_column) if c not in cols]
        if missing:
            raise ValueError(f"{path} has no column(s) {missing}; its columns are {cols}")
        n = batch.num_rows
        mine = [i for i in range(index, index + n) if i >= start and (want is None or want(i))]
        first, index = index, index + n
        if not mine:
            continue
        if len(mine) < n:
            batch = batch.take(pa.array([i - first for i in mine], type=pa.int64()))
        texts = batch.column(text_column).to_pylist()
        cells = batch.column(label_column).to_pylist()
        for i, t, c in zip(mine, texts, cells):
            if names is not None and c is not None:
                try:
                    c = [names[v] for v in c] if isinstance(c, list) else names[c]
                except (IndexError, TypeError):
                    yield Skipped(i, i + 1, f"label id {c!r} is not a class of the dataset")
                    continue
            yield _make(i, i + 1, t, c, label_sep)


def resolve_shards(data: str) -> List[str]:
    """The input files of ``data``: one file; a folder (an HF ``datasets`` folder written by
    ``save_to_disk``: its Arrow files in order; else every csv/tsv/jsonl/parquet/arrow file in it, plain
    or .gz, sorted by name); or a glob pattern (sorted). Raises ``ValueError`` when nothing matches."""
    import glob

    data = os.fspath(data)
    if any(ch in data for ch in "*?[") and not os.path.exists(data):
        files = sorted(f for f in glob.glob(data) if os.path.isfile(f))
        if not files:
            raise ValueError(f"no file matches {data!r}")
        return files
    if not os.path.exists(data):
        raise FileNotFoundError(f"data file not found: {data}")
    if not os.path.isdir(data):
        return [data]
    state = os.path.join(data, "state.json")
    if os.path.isfile(state):
        try:
            with open(state) as f:
                files = [os.path.join(data, d["filename"]) for d in json.load(f)["_data_files"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{data}: unreadable HF datasets state.json ({e})") from None
        if os.path.isfile(os.path.join(data, "dataset_dict.json")) or not files:
            raise ValueError(f"{data} is a DatasetDict or empty; pass one split's folder")
        return files
    if os.path.isfile(os.path.join(data, "dataset_dict.json")):
        raise ValueError(f"{data} is an HF DatasetDict folder; pass one split's folder (e.g. {data}/train)")

    def known(name: str) -> bool:
        n = name.lower()[:-3] if name.lower().endswith(".gz") else name.lower()
        return os.path.splitext(n)[1] in FORMATS

    files = sorted(os.path.join(data, f) for f in os.listdir(data)
                   if known(f) and os.path.isfile(os.path.join(data, f)))
    if not files:
        raise ValueError(f"{data} holds no csv/tsv/jsonl/parquet/arrow file")
    return files


def iter_records(
    path: str,
    text_column: str = "text",
    label_column: str = "label",
    *,
    label_sep: Optional[str] = None,
    fmt: Optional[str] = None,
    start: int = 0,
    want: Optional[Callable[[int], bool]] = None,
    where: Optional[list] = None,
    max_record_bytes: Optional[int] = None,
) -> Iterator[Union[Record, Skipped]]:
    """Every record of ``path`` from ordinal ``start`` on, in file order, as :class:`Record` or
    :class:`Skipped` (empty text, no label, wrong field count, invalid JSON, ...); with ``want``, only
    the records whose ordinal it accepts (the others are not even decoded where the format allows).
    ``where[0]`` is set to a function returning the number of bytes of the file read so far (progress).
    CSV/JSONL: a line or record longer than ``max_record_bytes`` (default :data:`MAX_RECORD_BYTES`) and an
    unclosed quote at the end of the file are ``ValueError`` naming the line; a line that is not UTF-8 is
    skipped with its line number (both formats); a UTF-8 BOM is ignored."""
    _check_exists(path)
    kind, gz = detect_format(path, fmt)
    if kind in ("csv", "tsv"):
        return _csv_records(
            path, gz, "\t" if kind == "tsv" else ",", text_column, label_column, label_sep, start, want, where,
            max_record_bytes,
        )
    if kind == "jsonl":
        return _jsonl_records(path, gz, text_column, label_column, label_sep, start, want, where, max_record_bytes)
    if kind == "arrow":
        if gz:
            raise ValueError(f"{path}: gzipped Arrow files are not supported")
        return _arrow_records(path, text_column, label_column, label_sep, start, want, where)
    return _parquet_records(path, gz, text_column, label_column, label_sep, start, want, where)


def iter_blocks(
    path: str,
    text_column: str = "text",
    label_column: str = "label",
    *,
    label_sep: Optional[str] = None,
    fmt: Optional[str] = None,
    block_size: int = 1024,
    rank: int = 0,
    world_size: int = 1,
    start: int = 0,
) -> Iterator[Block]:
    """The blocks of ``block_size`` consecutive records owned by ``rank`` (block ``b`` belongs to rank
    ``b % world_size``), from record ``start`` on (a block boundary). Deterministic for a given file, so
    every rank, and every resumed run, agrees on who counts what."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is out of range for world size {world_size}")
    if start % block_size:
        raise ValueError(f"start={start} is not a multiple of block_size={block_size}")
    cur: Optional[Block] = None
    where: list = [lambda: 0]
    mine = None if world_size == 1 else (lambda i: (i // block_size) % world_size == rank)
    for r in iter_records(
        path, text_column, label_column, label_sep=label_sep, fmt=fmt, start=start, want=mine, where=where
    ):
        b = r.index // block_size
        if cur is None or cur.number != b:
            if cur is not None:
                cur.pos = where[0]()
                yield cur
            cur = Block(b, b * block_size, (b + 1) * block_size)
        (cur.records if isinstance(r, Record) else cur.skipped).append(r)
    if cur is not None:
        cur.pos = os.path.getsize(path)
        yield cur


def input_fingerprint(path: str, samples: int = 16, sample_bytes: int = 1 << 16) -> dict:
    """A quick identity of the input file (no full read): its size, modification time and a SHA-256 over
    its first and last MiB and ``samples`` evenly spaced slices. Used to refuse resuming on a different or
    changed file (a checkpoint also keeps a hash of the prefix it counted: :func:`prefix_hash`)."""
    _check_exists(path)
    st = os.stat(path)
    size = st.st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        head = 1 << 20
        h.update(f.read(head))
        if size > head:
            for i in range(1, samples + 1):
                f.seek(max(0, size * i // (samples + 1)))
                h.update(f.read(sample_bytes))
            f.seek(max(0, size - head))
            h.update(f.read(head))
    return {"path": os.path.abspath(path), "size": size, "mtime_ns": st.st_mtime_ns,
            "sample_sha256": h.hexdigest()}


class PrefixHasher:
    """BLAKE2b of a file's first ``n`` bytes, extended incrementally as ``n`` grows (each byte is read
    once over a whole run): what a checkpoint records of the region it counted."""

    def __init__(self, path: str):
        self.path, self.n, self.h = path, 0, hashlib.blake2b(digest_size=20)

    def upto(self, n: int) -> str:
        if n > self.n:
            with open(self.path, "rb") as f:
                f.seek(self.n)
                left = n - self.n
                while left > 0:
                    chunk = f.read(min(left, 1 << 22))
                    if not chunk:
                        break
                    self.h.update(chunk)
                    left -= len(chunk)
                    self.n += len(chunk)
        return self.h.hexdigest()


def check_label_names(names: Sequence[str]) -> List[str]:
    names = [str(n) for n in names]
    if not names:
        raise ValueError("the label set is empty")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"duplicate label name(s) {dup}")
    return names
