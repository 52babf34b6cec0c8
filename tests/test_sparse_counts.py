"""ICD-scale counting (``steu pmi --counts-format sparse``, sharded inputs): sparse counts equal dense ones;
a folder, a glob or an HF datasets folder of shards equals the single file; 2 gloo ranks on shards equal
one process; kill -9 mid-shard and resume equals uninterrupted; a shard changed since the checkpoint is
refused; saved counts with impossible shapes or values are refused; one class loads alone."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import torchrun_setup
from test_corpus_pmi import LABEL, TEXT, _env, _rows, tok  # noqa: F401 (fixture)

from steu_ext.data.corpus_pmi import (  # noqa: I001
    CHECKPOINT_DIR,
    KILL_HOOK,
    count_corpus,
    load_class_counts,
    load_counts,
    save_counts,
)
from steu_ext.modeling.loading import offline_minilm_path
from steu_ext.ops.sparse_doc_counts import SparsePMICounter

N, MAXLEN = 240, 64
KW = dict(text_column=TEXT, label_column=LABEL, max_length=MAXLEN, block_size=40, progress=False)


def _same(sparse, dense):
    assert isinstance(sparse, SparsePMICounter)
    assert torch.equal(sparse.to_dense(), dense.counts)
    assert torch.equal(sparse.doc_freq, dense.doc_freq) and torch.equal(sparse.class_docs, dense.class_docs)
    assert sparse.n_docs == dense.n_docs


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([LABEL, TEXT])
        w.writerows([[r[LABEL], r[TEXT]] for r in rows])
    return str(path)


@pytest.fixture(scope="module")
def corpus(medical_abstracts_root, tmp_path_factory):
    """A small CSV, the same rows as 3 CSV shards (+ a JSONL one) in a folder, and the dense counts."""
    rows = _rows(os.path.join(medical_abstracts_root, "medical_tc_test.csv"), N)
    d = tmp_path_factory.mktemp("corpus")
    single = _write_csv(d / "all.csv", rows)
    shards = d / "shards"
    shards.mkdir()
    _write_csv(shards / "part-0.csv", rows[:70])
    _write_csv(shards / "part-1.csv", rows[70:150])
    _write_csv(shards / "part-2.csv", rows[150:200])
    with open(shards / "part-3.jsonl", "w") as f:
        for r in rows[200:]:
            f.write(json.dumps({TEXT: r[TEXT], LABEL: r[LABEL]}) + "\n")
    return single, str(shards), rows


@pytest.fixture(scope="module")
def dense(tok, corpus):  # noqa: F811
    return count_corpus(corpus[0], tok, counts_format="dense", **KW)


@pytest.mark.parametrize("workers", [0, 1])
def test_sparse_equals_dense(tok, corpus, dense, workers):  # noqa: F811
    cc = count_corpus(corpus[0], tok, counts_format="sparse", workers=workers, **KW)
    _same(cc.counter, dense.counter)
    assert cc.label_names == dense.label_names and cc.n_tokens == dense.n_tokens
    assert cc.summary()["counts_format"] == "sparse" and dense.summary()["counts_format"] == "dense"
    assert cc.summary()["nnz"] == dense.summary()["nnz"] == int((dense.counter.counts != 0).sum())
    for t in range(len(cc.label_names)):
        assert torch.equal(cc.counter.scores(t), dense.counter.scores(t))


def test_auto_picks_sparse_when_dense_is_too_large(tok, corpus, dense, monkeypatch):  # noqa: F811
    from steu_ext.data import corpus_pmi

    monkeypatch.setattr(corpus_pmi, "DENSE_MAX_BYTES", 3 * len(tok) * 8)  # 5 classes do not fit, 3 do
    cc = count_corpus(corpus[0], tok, **KW)  # classes discovered while reading: switches when the 4th appears
    _same(cc.counter, dense.counter)
    fixed = count_corpus(corpus[0], tok, label_names=dense.label_names, **KW)
    _same(fixed.counter, dense.counter)


def test_saved_sparse_counts_round_trip_and_one_class_loads_alone(tok, corpus, dense, tmp_path):  # noqa: F811
    cc = count_corpus(corpus[0], tok, counts_format="sparse", **KW)
    save_counts(cc, str(tmp_path))
    back = load_counts(str(tmp_path), tok)
    _same(back.counter, dense.counter)
    for t in range(len(cc.label_names)):
        one = load_class_counts(str(tmp_path), t, tok)
        assert torch.equal(one["counts"], dense.counter.counts[t])
        assert one["class_docs"] == int(dense.counter.class_docs[t]) and one["n_docs"] == dense.n_docs


@pytest.mark.parametrize("kind", ["folder", "glob", "hf"])
def test_shards_equal_the_single_file(tok, corpus, dense, kind, tmp_path):  # noqa: F811
    single, shards, rows = corpus
    if kind == "folder":
        data = shards
    elif kind == "glob":
        data = os.path.join(shards, "part-*")
    else:
        datasets = pytest.importorskip("datasets")
        ds = datasets.Dataset.from_dict({TEXT: [r[TEXT] for r in rows], LABEL: [r[LABEL] for r in rows]})
        data = str(tmp_path / "hf")
        ds.save_to_disk(data, max_shard_size="40KB")
        assert len([f for f in os.listdir(data) if f.endswith(".arrow")]) > 1
    cc = count_corpus(data, tok, counts_format="sparse", **KW)
    _same(cc.counter, dense.counter)
    assert cc.n_records == N and cc.n_tokens == dense.n_tokens


def test_hf_class_label_ids_become_names(tok, corpus, dense, tmp_path):  # noqa: F811
    datasets = pytest.importorskip("datasets")
    rows = corpus[2]
    names = sorted({r[LABEL] for r in rows}, key=int)
    feats = datasets.Features({TEXT: datasets.Value("string"), LABEL: datasets.ClassLabel(names=names)})
    ds = datasets.Dataset.from_dict({TEXT: [r[TEXT] for r in rows], LABEL: [names.index(r[LABEL]) for r in rows]},
                                    features=feats)
    ds.save_to_disk(str(tmp_path / "hf"))
    cc = count_corpus(str(tmp_path / "hf"), tok, counts_format="sparse", **KW)
    assert cc.label_names == dense.label_names
    _same(cc.counter, dense.counter)


def _pmi_cmd(data, out, *extra):
    return [sys.executable, "-m", "steu_ext.cli", "pmi", "--data", data, "--text-column", TEXT,
            "--label-column", LABEL, "--model", offline_minilm_path(), "--max-length", str(MAXLEN), "--k", "5",
            "--block-size", "40", "--quiet", "--out", str(out), "--counts-format", "sparse", *extra]


def test_sigkill_mid_shard_then_resume_equals_uninterrupted(tok, corpus, dense, tmp_path):  # noqa: F811
    from safetensors import safe_open

    out = tmp_path / "pmi"
    cmd = _pmi_cmd(corpus[1], out, "--workers", "0", "--checkpoint-every", "40")
    killed = subprocess.run(cmd, env={**_env(), KILL_HOOK: "2"}, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr[-2000:]
    with safe_open(str(out / CHECKPOINT_DIR / "rank0-of-1.safetensors"), "pt") as f:
        state = json.loads(f.metadata()["state"])
    # checkpoints after 40 documents and after 110: all of part-0 (70) and 40 of part-1's 80: killed in the
    # middle of a shard
    assert state["shard"] == 1 and state["next_index"] == 40 and state["progress"] == {"part-0.csv": "done",
                                                                                         "part-1.csv": 40}
    resumed = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from record 40" in resumed.stderr
    assert "sparse counts:" in resumed.stdout  # the run says which layout it used
    _same(load_counts(str(out), tok).counter, dense.counter)


@pytest.mark.parametrize("where", ["finished shard", "current shard", "single file"])
def test_a_changed_input_is_refused_on_resume(tok, corpus, tmp_path, where, monkeypatch):  # noqa: F811
    import shutil

    from steu_ext.data import corpus_pmi

    shards = tmp_path / "shards"
    shutil.copytree(corpus[1], shards)
    data = str(shards)
    if where == "single file":
        data = shutil.copy(corpus[0], tmp_path / "all.csv")
    ck = str(tmp_path / "ck")
    # a run that stops (crashes) right after its 2nd checkpoint: mid part-1 (or at record 80 of the file)
    kw = {**KW, "checkpoint_every": 40}
    save = corpus_pmi._Checkpointer.save

    def crash_after_two(self, *a):
        save(self, *a)
        if self.written == 2:
            raise RuntimeError("crash")

    monkeypatch.setattr(corpus_pmi._Checkpointer, "save", crash_after_two)
    with pytest.raises(RuntimeError, match="crash"):
        count_corpus(data, tok, checkpoint_dir=ck, counts_format="sparse", **kw)
    monkeypatch.setattr(corpus_pmi._Checkpointer, "save", save)
    target = os.path.join(data, "part-0.csv") if where == "finished shard" else (
        os.path.join(data, "part-1.csv") if where == "current shard" else data)
    st = os.stat(target)
    at = st.st_size // 2 if where == "finished shard" else 100  # inside what was counted
    with open(target, "r+b") as f:  # change one byte, keep the size and the modification time
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(b"x" if b != b"x" else b"y")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ValueError, match="changed since the checkpoint"):
        count_corpus(data, tok, checkpoint_dir=ck, counts_format="sparse", **kw)
    os.utime(target)  # a new modification time is refused by the fingerprint
    with pytest.raises(ValueError, match="input changed since the checkpoint"):
        count_corpus(data, tok, checkpoint_dir=ck, counts_format="sparse", **kw)


def test_torchrun_two_gloo_ranks_on_shards_equal_one_process(tok, corpus, dense, tmp_path):  # noqa: F811
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    port, env = torchrun_setup()
    env["PYTHONPATH"] = _env()["PYTHONPATH"]
    out = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-addr", "127.0.0.1", "--master-port", str(port), "-m",
                           *_pmi_cmd(corpus[1], out, "--workers", "0")[2:]],
                          env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    _same(load_counts(str(out), tok).counter, dense.counter)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["n_records"] == N and summary["counts_format"] == "sparse"


# ---- load_counts validation (issue 13 item 7) ----------------------------------------------------------
@pytest.mark.parametrize("layout", ["dense", "sparse"])
@pytest.mark.parametrize("bad,msg", [
    ("negative n_docs", "n_docs is negative"),
    ("class_docs > n_docs", "class_docs must lie"),
    ("shape", "shape|CSR shapes|row pointer"),
    ("count > class_docs", "exceeds"),
])
def test_load_counts_refuses_inconsistent_counts(tok, corpus, tmp_path, layout, bad, msg):  # noqa: F811
    from safetensors import safe_open
    from safetensors.torch import save_file

    cc = count_corpus(corpus[0], tok, counts_format=layout, **KW)
    save_counts(cc, str(tmp_path))
    f = str(tmp_path / "counts.safetensors")
    with safe_open(f, "pt") as h:
        meta, t = h.metadata(), {k: h.get_tensor(k) for k in h.keys()}
    if bad == "negative n_docs":
        t["n_docs"] = torch.tensor(-1)
    elif bad == "class_docs > n_docs":
        t["class_docs"][0] = int(t["n_docs"]) + 1
    elif bad == "shape":
        if layout == "dense":
            t["counts"] = t["counts"][:, :-1].contiguous()
        else:
            t["indptr"] = t["indptr"][:-1].contiguous()
    else:
        if layout == "dense":
            t["counts"][0, int(t["counts"][0].argmax())] = int(t["class_docs"][0]) + 1
        else:
            t["values"][0] = int(t["n_docs"]) + 1
    save_file(t, f, metadata=meta)
    with pytest.raises(ValueError, match=msg):
        load_counts(str(tmp_path), tok)
