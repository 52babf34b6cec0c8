"""Loading labelled text from local CSV/TSV/JSONL/parquet files (plain or gzip), the medical abstracts
corpus layout, and stratified splitting.

User files are read straight into memory with the standard library (CSV, JSON) or ``pyarrow`` (parquet),
never through HF ``datasets``, whose loader writes an Arrow copy of the whole file under
``~/.cache/huggingface/datasets``: clinical text must not be copied anywhere the user did not ask for."""
from __future__ import annotations

import os
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

_FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".ndjson": "json",
            ".parquet": "parquet"}


@dataclass
class TextClassificationData:
    text: List[str]
    labels: List[List[int]]       # class indices per document (1 for single-label, 0..C for multi-label)
    label_names: List[str]
    multi_label: bool

    def __len__(self) -> int:
        return len(self.text)

    def subset(self, idx: Sequence[int]) -> "TextClassificationData":
        return TextClassificationData([self.text[i] for i in idx], [self.labels[i] for i in idx],
                                      self.label_names, self.multi_label)


def _open_text(path: str, gz: bool):
    import gzip
    import io

    raw = gzip.open(path, "rb") if gz else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def _csv_rows(path: str, gz: bool, delimiter: str) -> Tuple[List[str], List[Dict[str, Optional[str]]]]:
    import csv
    import sys

    csv.field_size_limit(sys.maxsize)
    with _open_text(path, gz) as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{path} is empty: no header row") from None
        except csv.Error as e:
            raise ValueError(f"{path}: line 1: unreadable CSV ({e})") from None
        rows, prev = [], reader.line_num
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise ValueError(f"{path}: line {prev + 1}: unreadable CSV ({e})") from None
            if not row:  # blank line
                prev = reader.line_num
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}: line {prev + 1}: expected {len(header)} fields, found {len(row)}")
            prev = reader.line_num
            # an empty cell is a missing value, as in pandas (and so in HF datasets' CSV loader)
            rows.append({h: (v if v != "" else None) for h, v in zip(header, row)})
    return header, rows


def _json_rows(path: str, gz: bool) -> Tuple[List[str], List[dict]]:
    import json

    with _open_text(path, gz) as f:
        text = f.read()
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from None
        where = [f"record {i + 1}" for i in range(len(rows))]
    else:  # JSON lines
        rows, where = [], []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {n} is not valid JSON: {e}") from None
                where.append(f"line {n}")
    header: Dict[str, None] = {}
    for w, r in zip(where, rows):
        if not isinstance(r, dict):
            raise ValueError(f"{path}: {w} is a JSON {type(r).__name__}, not an object")
        header.update(dict.fromkeys(r))
    return list(header), rows


def _read_table(path: str, columns: Sequence[str]) -> Dict[str, list]:
    """The ``columns`` of a data file as Python lists (a missing value is ``None``), read in memory:
    nothing is written anywhere (no Arrow cache, no temporary file)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder, expected a data file")
    ext = Path(path).suffix.lower()
    gz = ext == ".gz"
    if gz:
        ext = Path(path[:-3]).suffix.lower()
    if ext not in _FORMATS:
        raise ValueError(f"unsupported data file type {ext!r} ({path}); use CSV, TSV, JSONL or parquet")
    if ext in (".csv", ".tsv", ".jsonl", ".ndjson"):   # line numbers for structural problems (#13)
        _check_structure(path, columns)
    try:
        if _FORMATS[ext] == "parquet":
            import gzip

            import pyarrow.parquet as pq

            try:
                table = pq.read_table(gzip.open(path, "rb") if gz else path)
            except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
                raise ValueError(f"{path} is not a readable parquet file ({e})") from None
            header = table.column_names
            missing = [c for c in columns if c not in header]
            if missing:
                raise ValueError(f"{path} has no column(s) {missing}; its columns are {header}")
            return {c: table.column(c).to_pylist() for c in columns}
        if _FORMATS[ext] == "csv":
            header, rows = _csv_rows(path, gz, "\t" if ext == ".tsv" else ",")
        else:
            header, rows = _json_rows(path, gz)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not valid UTF-8 ({e}); re-encode it as UTF-8") from None
    except (OSError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: cannot read ({e})") from None
    missing = [c for c in columns if c not in header]
    if missing:
        raise ValueError(f"{path} has no column(s) {missing}; its columns are {header}")
    return {c: [r.get(c) for r in rows] for c in columns}


# what the in-memory readers below would miss or report without a line number; the rest they report themselves
_STRUCTURAL = ("malformed quoting", "not valid UTF-8", "JSON nested too deeply")


def _check_structure(path: str, columns: Sequence[str]) -> None:
    """Read the file once with the streaming reader so that a structural problem (an unclosed quote, a
    wrong field count, bytes that are not UTF-8, invalid JSON, an endless line) is a ``ValueError`` with
    its line number before anything else reads it. Empty texts and missing labels are left to the caller."""
    from .stream import Skipped, iter_records

    text_column, label_column = columns[0], columns[-1]
    for r in iter_records(path, text_column, label_column):
        if isinstance(r, Skipped) and r.reason.startswith(_STRUCTURAL):
            raise ValueError(f"{path}: line {r.line}: {r.reason}")


def load_text_classification(path: str, text_column: str = "text", label_column: str = "label",
                             label_sep: Optional[str] = None,
                             label_names: Optional[Sequence[str]] = None) -> TextClassificationData:
    """Read a labelled text file. A label cell is a class name or id, a list of them (multi-label), or a
    string of them joined by ``label_sep`` (multi-label). Class names are sorted unless ``label_names``
    fixes them (then an unknown label is an error)."""
    cols = _read_table(path, [text_column, label_column])
    raw: List[List[str]] = []
    multi = label_sep is not None
    for i, cell in enumerate(cols[label_column]):
        if isinstance(cell, (list, tuple)):
            vals, multi = [str(v).strip() for v in cell], True
        elif cell is None:
            raise ValueError(f"{path}: record {i} has no label")
        elif label_sep is not None:
            vals = [v.strip() for v in str(cell).split(label_sep) if v.strip()]
        else:
            vals = [str(cell).strip()]
        raw.append(vals)
    names = list(label_names) if label_names is not None else sorted(
        {v for vs in raw for v in vs}, key=lambda s: (not s.lstrip("-").isdigit(), int(s) if s.lstrip("-").isdigit() else 0, s))
    index = {n: j for j, n in enumerate(names)}
    labels = []
    for i, vs in enumerate(raw):
        unknown = [v for v in vs if v not in index]
        if unknown:
            raise ValueError(f"{path}: record {i} has unknown label(s) {unknown}; known: {names}")
        labels.append(sorted({index[v] for v in vs}))
    texts = ["" if t is None else str(t) for t in cols[text_column]]
    return TextClassificationData(texts, labels, names, multi)


def load_medical_abstracts(root: str) -> TextClassificationData:
    """The medical abstracts corpus (``medical_tc_test.csv`` + ``medical_tc_labels.csv``): 5 classes."""
    names_file = os.path.join(root, "medical_tc_labels.csv")
    table = _read_table(names_file, ["condition_label", "condition_name"])
    ids = [str(x) for x in table["condition_label"]]
    data = load_text_classification(os.path.join(root, "medical_tc_test.csv"), "medical_abstract",
                                    "condition_label", label_names=ids)
    data.label_names = list(table["condition_name"])
    return data


def stratified_split(labels: Sequence[Sequence[int]], test_fraction: float, seed: int = 0
                     ) -> Tuple[List[int], List[int]]:
    """Split indices so every label combination keeps its share in both parts (fixed seed)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    groups: Dict[Tuple[int, ...], List[int]] = defaultdict(list)
    for i, y in enumerate(labels):
        groups[tuple(sorted(y))].append(i)
    rng = random.Random(seed)
    train, test = [], []
    for key in sorted(groups):
        idx = groups[key]
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        test += idx[:n_test]
        train += idx[n_test:]
    return sorted(train), sorted(test)


def split_protocol(labels, test_fraction: float, probe_fraction: float, seed: int,
                   max_train_docs: Optional[int] = None):
    """``(train, probe, test)`` document indices, each stratified by label set with a fixed seed: the test
    split first, then the probe split (``probe_fraction`` of all documents; 0 for none) from the rest, then
    at most ``max_train_docs`` of what remains for training."""
    if not 0 <= probe_fraction < 1 or test_fraction + probe_fraction >= 1:
        raise ValueError(f"probe_fraction must lie in [0, 1) with test_fraction + probe_fraction < 1, got "
                         f"{probe_fraction} and {test_fraction}")
    if max_train_docs is not None and max_train_docs < 2:
        raise ValueError(f"max_train_docs must be >= 2 or None, got {max_train_docs}")
    rest, test = stratified_split(labels, test_fraction, seed)
    probe: List[int] = []
    if probe_fraction > 0:
        a, b = stratified_split([labels[i] for i in rest], probe_fraction / (1 - test_fraction), seed + 7)
        rest, probe = [rest[i] for i in a], [rest[i] for i in b]
    if max_train_docs is not None and len(rest) > max_train_docs:
        _, keep = stratified_split([labels[i] for i in rest], max_train_docs / len(rest), seed + 13)
        rest = [rest[i] for i in keep]
    return sorted(rest), sorted(probe), sorted(test)
