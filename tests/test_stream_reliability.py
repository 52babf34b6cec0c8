"""Issue #13 items 5 and 9 (+ messages): the streaming CSV/JSONL readers never swallow a file silently,
never run out of memory on an endless line, and report bad bytes with their line numbers."""
from __future__ import annotations

import os

import pytest

from steu_ext.data import stream
from steu_ext.data.stream import Record, Skipped


def _recs(path, **kw):
    return list(stream.iter_records(str(path), **kw))


def test_unclosed_quote_at_end_is_an_error_with_the_line(tmp_path):
    p = tmp_path / "q.csv"
    p.write_text('text,label\nfine,a\n"unclosed note,b\nnext,a\nmore,b\n')
    with pytest.raises(ValueError, match="line 3: unclosed quote"):
        _recs(p)


def test_unclosed_quote_closed_later_is_reported_not_glued(tmp_path):
    p = tmp_path / "q.csv"
    p.write_text('text,label\n"unclosed note,b\nnext,a\n"quoted",b\nlast,a\n')
    out = _recs(p)
    skipped = [r for r in out if isinstance(r, Skipped)]
    assert len(skipped) == 1 and skipped[0].line == 2 and "spans lines 2-4" in skipped[0].reason
    assert [r.text for r in out if isinstance(r, Record)] == ["last"]


def test_record_length_cap(tmp_path):
    p = tmp_path / "long.csv"
    p.write_text("text,label\n" + "x" * 5000 + ",a\nok,b\n")
    with pytest.raises(ValueError, match="line 2 is longer than 1000 bytes"):
        _recs(p, max_record_bytes=1000)
    q = tmp_path / "quote.csv"      # a quoted field over many short lines, longer than the cap
    q.write_text('text,label\n"start\n' + "line\n" * 400 + '",a\n')
    with pytest.raises(ValueError, match="line 2: a field longer than"):
        _recs(q, max_record_bytes=1000)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_dev_zero_is_refused_without_running_out_of_memory(fmt):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    with pytest.raises(ValueError, match="line 1 is longer than"):
        _recs("/dev/zero", fmt=fmt, max_record_bytes=1 << 20)


def test_non_utf8_csv_line_is_skipped_with_its_line_number(tmp_path):
    p = tmp_path / "enc.csv"
    p.write_bytes(b"text,label\nok one,a\ncaf\xe9 latte,b\nok two,a\n")
    out = _recs(p)
    assert [r.text for r in out if isinstance(r, Record)] == ["ok one", "ok two"]
    (s,) = [r for r in out if isinstance(r, Skipped)]
    assert s.line == 3 and "not valid UTF-8" in s.reason and "0xe9" in s.reason


def test_non_utf8_jsonl_line_is_skipped_alike(tmp_path):
    p = tmp_path / "enc.jsonl"
    p.write_bytes(b'{"text": "ok", "label": "a"}\n{"text": "caf\xe9", "label": "b"}\n')
    out = _recs(p)
    (s,) = [r for r in out if isinstance(r, Skipped)]
    assert s.line == 2 and "not valid UTF-8" in s.reason and "0xe9" in s.reason


def test_utf8_bom_is_ignored(tmp_path):
    p = tmp_path / "bom.csv"
    p.write_bytes(b"\xef\xbb\xbftext,label\nhello,a\n")
    (r,) = _recs(p)
    assert r.text == "hello" and r.labels == ["a"]
    j = tmp_path / "bom.jsonl"
    j.write_bytes(b'\xef\xbb\xbf{"text": "hello", "label": "a"}\n')
    (r,) = _recs(j)
    assert isinstance(r, Record) and r.text == "hello"


def test_deeply_nested_jsonl_is_skipped_cleanly(tmp_path):
    p = tmp_path / "deep.jsonl"
    p.write_text('{"text": ' + "[" * 100000 + "]" * 100000 + ', "label": "a"}\n{"text": "ok", "label": "a"}\n')
    out = _recs(p)
    assert isinstance(out[0], Skipped) and "nested too deeply" in out[0].reason
    assert isinstance(out[1], Record)


# ---- the CLI's loader (unlearn/evaluate/demo --data): malformed files are exit 2 with the line ------------
@pytest.mark.parametrize("content,match", [
    (b'text,label\nok,a\n"unclosed,b\nmore,a\n', "line 3: unclosed quote"),
    (b"text,label\nok,a\ncaf\xe9,b\n", "line 3: not valid UTF-8"),
    (b"text,label\nok,a\ntoo,many,fields\n", "line 3: expected 2 fields"),
])
def test_loader_reports_malformed_csv_with_line(tmp_path, content, match):
    from steu_ext.data.loaders import load_text_classification

    p = tmp_path / "d.csv"
    p.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        load_text_classification(str(p))


def test_loader_reads_bom_csv(tmp_path):
    from steu_ext.data.loaders import load_text_classification

    p = tmp_path / "d.csv"
    p.write_bytes(b"\xef\xbb\xbftext,label\nhello,a\nworld,b\n")
    d = load_text_classification(str(p))
    assert d.text == ["hello", "world"] and d.label_names == ["a", "b"]


def test_cli_evaluate_malformed_csv_exit_2(tmp_path, capsys):
    from steu_ext.cli import EXIT_BAD_INPUT, main

    p = tmp_path / "d.csv"
    p.write_bytes(b'text,label\nok,a\n"unclosed,b\nmore,a\n')
    rc = main(["evaluate", "--data", str(p), "--model", str(tmp_path / "nomodel"), "--target", "a"])
    err = capsys.readouterr().err.strip()
    assert rc == EXIT_BAD_INPUT and "line 3: unclosed quote" in err and len(err.splitlines()) == 1


def test_cli_pmi_cheap_checks_come_first(tmp_path, capsys):
    from steu_ext.cli import EXIT_BAD_INPUT, main

    p = tmp_path / "d.csv"
    p.write_text("text,label\nok,a\n")
    for args, msg in ((["--k", "-5"], "--k must be >= 1"), (["--device", "bogus"], "is not a device"),
                      (["--device", "cuda:7"], "CUDA"), (["--model", "./no/such/model"], "not found")):
        argv = ["pmi", "--data", str(p), "--model", "./no/such/model", "--out", str(tmp_path / "o")] + args
        assert main(argv) == EXIT_BAD_INPUT
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()
