"""A clinical user's first day (issue #14): no copies of patient text, warnings on vacuous results,
progress and compile messages, CLI help."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from steu_ext.data.loaders import load_text_classification

MARKER = "PATIENTMARKER-7f3a"
ROOT = Path(__file__).resolve().parents[1]


def _files_under(root: Path):
    return [p for p in root.rglob("*") if p.is_file()]


def _write_inputs(d: Path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [(f"{MARKER} note {i} fever cough", "sepsis" if i % 2 else "asthma") for i in range(20)]
    (d / "notes.csv").write_text("text,label\n" + "".join(f'"{t}",{y}\n' for t, y in rows))
    (d / "notes.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    pq.write_table(pa.table({"text": [t for t, _ in rows], "label": [y for _, y in rows]}), d / "notes.parquet")


def test_loading_user_data_leaves_no_copy(tmp_path):
    """Every supported format is read in memory: nothing appears in the HF datasets cache, in HOME or in
    the temporary folder (HF ``datasets`` used to write an Arrow copy of the whole file)."""
    data = tmp_path / "data"
    data.mkdir()
    _write_inputs(data)
    home, cache, tmp = tmp_path / "home", tmp_path / "hfcache", tmp_path / "tmp"
    for d in (home, cache, tmp):
        d.mkdir()
    env = {**os.environ, "HOME": str(home), "HF_HOME": str(home / "hf"), "HF_DATASETS_CACHE": str(cache),
           "XDG_CACHE_HOME": str(home / ".cache"), "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    code = ("import sys\nfrom steu_ext.data.loaders import load_text_classification\n"
            "for f in sys.argv[1:]:\n    d = load_text_classification(f)\n"
            "    assert len(d) == 20 and d.label_names == ['asthma', 'sepsis'], (f, d.label_names)\n")
    files = [str(data / n) for n in ("notes.csv", "notes.jsonl", "notes.parquet")]
    r = subprocess.run([sys.executable, "-c", code, *files], env=env, cwd=str(tmp_path), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert _files_under(cache) == []
    leaked = [p for root in (home, tmp) for p in _files_under(root) if MARKER.encode() in p.read_bytes()]
    assert leaked == []


def test_loader_formats_and_errors(tmp_path):
    import gzip

    _write_inputs(tmp_path)
    csv_d = load_text_classification(str(tmp_path / "notes.csv"))
    for name in ("notes.jsonl", "notes.parquet"):
        d = load_text_classification(str(tmp_path / name))
        assert d.text == csv_d.text and d.labels == csv_d.labels
    gz = tmp_path / "notes.csv.gz"
    gz.write_bytes(gzip.compress((tmp_path / "notes.csv").read_bytes()))
    assert load_text_classification(str(gz)).text == csv_d.text
    # a JSON array, a UTF-8 BOM, numeric labels, TSV
    (tmp_path / "a.json").write_text('[{"text": "x", "label": 2}, {"text": "y", "label": 10}]')
    assert load_text_classification(str(tmp_path / "a.json")).label_names == ["2", "10"]
    (tmp_path / "b.csv").write_bytes("\ufefftext,label\nx,1\n".encode())
    assert load_text_classification(str(tmp_path / "b.csv")).text == ["x"]
    (tmp_path / "c.tsv").write_text("text\tlabel\na, b\t1\n")
    assert load_text_classification(str(tmp_path / "c.tsv")).text == ["a, b"]
    (tmp_path / "e.csv").write_text("text,label\nx,\n")
    with pytest.raises(ValueError, match="no label"):
        load_text_classification(str(tmp_path / "e.csv"))
    (tmp_path / "f.csv").write_text("text,label\nx,1,2\n")
    with pytest.raises(ValueError, match="line 2: expected 2 fields"):
        load_text_classification(str(tmp_path / "f.csv"))
    (tmp_path / "g.jsonl").write_text('{"text": "x", "label": 1}\n[1]\n')
    with pytest.raises(ValueError, match="line 2 is a JSON list"):
        load_text_classification(str(tmp_path / "g.jsonl"))
    (tmp_path / "h.csv").write_bytes(b"text,label\n\xff,1\n")
    with pytest.raises(ValueError, match="UTF-8"):
        load_text_classification(str(tmp_path / "h.csv"))
    with pytest.raises(ValueError, match="folder"):
        load_text_classification(str(tmp_path))
