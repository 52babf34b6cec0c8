"""Issue #13: nothing a user types may destroy their files, half-apply an edit or silently miscount."""
from __future__ import annotations

import os

import pytest
import torch

from steu_ext._outdir import MARKER, OutputPathError, atomic_write, check_output_dir, output_dir
from steu_ext.cli import EXIT_BAD_INPUT, main
from steu_ext.methods.edit import STEUEdit


def _listing(folder):
    return sorted(os.listdir(folder))


# ---- 1. output folders ------------------------------------------------------------------------------------
@pytest.fixture
def user_files(tmp_path, monkeypatch):
    """A folder with files the tool did not write, as the current folder."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("precious")
    (work / "sub").mkdir()
    (work / "sub" / "x.txt").write_text("also precious")
    monkeypatch.chdir(work)
    return work


@pytest.mark.parametrize("out", [".", "..", "./", "~", "/"])
def test_output_dir_refuses_cwd_parent_home_root(user_files, out):
    with pytest.raises(OutputPathError, match="refusing"):
        with output_dir(out, overwrite=True):
            pass
    assert (user_files / "notes.txt").read_text() == "precious"


def test_output_dir_refuses_foreign_non_empty_folder_even_with_overwrite(user_files):
    with pytest.raises(OutputPathError, match="not written by steu"):
        with output_dir("sub", overwrite=True):
            pass
    assert (user_files / "sub" / "x.txt").read_text() == "also precious"


def test_output_dir_refuses_folder_holding_an_input(user_files):
    with pytest.raises(OutputPathError, match="contains the input"):
        check_output_dir("sub", True, inputs=["sub/x.txt"])


def test_output_dir_replaces_only_its_own_folder(user_files):
    with output_dir("run", overwrite=False) as tmp:
        open(os.path.join(tmp, "a.json"), "w").write("1")
    assert _listing(user_files / "run") == sorted([MARKER, "a.json"])
    with pytest.raises(OutputPathError, match="already exists"):
        with output_dir("run", overwrite=False):
            pass
    with output_dir("run", overwrite=True) as tmp:
        open(os.path.join(tmp, "b.json"), "w").write("2")
    assert _listing(user_files / "run") == sorted([MARKER, "b.json"])
    assert _listing(user_files) == ["notes.txt", "run", "sub"]   # no temporary or old folders left


def test_failed_run_leaves_nothing_behind(user_files):
    with pytest.raises(RuntimeError):
        with output_dir("deep/er/run") as tmp:
            open(os.path.join(tmp, "half.json"), "w").write("1")
            raise RuntimeError("boom")
    assert _listing(user_files) == ["notes.txt", "sub"]          # not even the parents it created
    with output_dir("run2") as tmp:
        pass
    with pytest.raises(KeyboardInterrupt):
        with output_dir("run2", overwrite=True) as tmp:
            raise KeyboardInterrupt
    assert _listing(user_files) == ["notes.txt", "run2", "sub"]  # the old output is still there
    assert _listing(user_files / "run2") == [MARKER]


def test_empty_existing_folder_is_fine(user_files):
    os.mkdir("empty")
    with output_dir("empty") as tmp:
        open(os.path.join(tmp, "r.json"), "w").write("1")
    assert _listing(user_files / "empty") == sorted([MARKER, "r.json"])


def test_overlong_output_name_is_refused(user_files):
    with pytest.raises(OutputPathError, match="characters"):
        check_output_dir("x" * 300, False)


def test_atomic_write_leaves_no_tmp(tmp_path):
    target = tmp_path / "f.json"

    def bad(tmp):
        open(tmp, "w").write("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(str(target), bad)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("cmd", [
    ["demo", "--out", "."],
    ["demo", "--out", "sub"],
    ["apply-edit", "--model", "m", "--edit", "e.safetensors", "--out", ".", "--overwrite"],
    ["revert-edit", "--model", "m", "--edit", "e.safetensors", "--out", "sub", "--overwrite"],
])
def test_cli_never_deletes_user_files(user_files, cmd, capsys, monkeypatch):
    import steu_ext.methods.experiment as ex

    monkeypatch.setattr(ex, "offline_minilm_path", lambda: None)
    if cmd[0] != "demo":
        _tiny_edit_files(user_files)
    before = {p: open(p).read() for p in ("notes.txt", "sub/x.txt")}
    capsys.readouterr()
    rc = main(cmd + (["--n-docs", "40", "--quiet"] if cmd[0] == "demo" else []))
    assert rc == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "refusing" in err or "not written by steu" in err
    assert len(err.strip().splitlines()) == 1
    assert {p: open(p).read() for p in before} == before
    assert not [f for f in os.listdir(".") if f.startswith(".")]


def _tiny_model():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=8, max_position_embeddings=16, num_labels=3)
    return BertForSequenceClassification(cfg)


def _tiny_edit(model, rows=(1, 4, 7)):
    emb = "bert.embeddings.word_embeddings.weight"
    p = dict(model.named_parameters())
    ids = torch.tensor(rows)
    old = p[emb].detach()[ids].clone()
    head = {n: p[n].detach().clone() for n in ("classifier.weight", "classifier.bias")}
    return STEUEdit(emb, ids, old, old + 1, head, {n: t + 1 for n, t in head.items()}, {})


def _tiny_edit_files(folder):
    model = _tiny_model()
    model.save_pretrained(folder / "m")
    _tiny_edit(model).save(folder / "e.safetensors")


# ---- 2. edits are validated before anything is written -----------------------------------------------------
def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _same(model, snap):
    return all(torch.equal(p, snap[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("corrupt,match", [
    (lambda e: e.new_head.__setitem__("classifier.weight", e.new_head["classifier.weight"][:1]), "differ"),
    (lambda e: (e.new_head.__setitem__("classifier.weight", e.new_head["classifier.weight"][:1]),
                e.old_head.__setitem__("classifier.weight", e.old_head["classifier.weight"][:1])), "shape"),
    (lambda e: setattr(e, "row_ids", torch.tensor([1, 1, 7])), "duplicates"),
    (lambda e: setattr(e, "row_ids", torch.tensor([1, 4, 30])), "incompatible"),
    (lambda e: setattr(e, "row_ids", torch.tensor([1, -4, 7])), ">= 0"),
    (lambda e: setattr(e, "row_ids", torch.tensor([1.0, 4.0, 7.0])), "integer"),
    (lambda e: (setattr(e, "new_rows", e.new_rows.double()), setattr(e, "old_rows", e.old_rows.double())), "dtype"),
    (lambda e: setattr(e, "new_rows", e.new_rows[:2]), "shape"),
    (lambda e: e.new_head.pop("classifier.bias"), "differ"),
])
def test_bad_edit_is_refused_before_any_write(corrupt, match):
    model = _tiny_model()
    edit = _tiny_edit(model)
    corrupt(edit)
    snap = _snapshot(model)
    with pytest.raises((ValueError, TypeError), match=match):
        edit.apply(model, check=False)
    assert _same(model, snap)


def test_broadcasting_head_is_refused():
    model = _tiny_model()
    edit = _tiny_edit(model)
    w = edit.new_head["classifier.weight"]
    edit.new_head["classifier.weight"] = w[:1].clone()      # [1, H] would broadcast into every class
    edit.old_head["classifier.weight"] = w[:1].clone()
    snap = _snapshot(model)
    with pytest.raises(ValueError, match="shape"):
        edit.apply(model, check=False)
    assert _same(model, snap)


def test_edit_load_errors(tmp_path):
    model = _tiny_model()
    edit = _tiny_edit(model)
    path = tmp_path / "e.safetensors"
    edit.save(path)
    assert os.listdir(tmp_path) == ["e.safetensors"]
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        STEUEdit.load(tmp_path / "trunc.safetensors")
    with pytest.raises(ValueError, match="is a folder"):
        STEUEdit.load(tmp_path)
    from safetensors.torch import save_file

    t = {"rows.ids": edit.row_ids, "rows.old": edit.old_rows, "rows.new": edit.new_rows}
    save_file(t, tmp_path / "nokey.safetensors", metadata={"format": "steu_ext.edit/1", "head": "[]"})
    with pytest.raises(ValueError, match="lacks \\['embedding'\\]"):
        STEUEdit.load(tmp_path / "nokey.safetensors")
    save_file(t, tmp_path / "deep.safetensors", metadata={"format": "steu_ext.edit/1", "embedding": "e",
                                                           "head": "[" * 100000 + "]" * 100000})
    with pytest.raises(ValueError, match="nested too deeply|not valid JSON"):
        STEUEdit.load(tmp_path / "deep.safetensors")


@pytest.mark.parametrize("kind", ["trunc", "deep", "folder"])
def test_cli_bad_edit_file_exit_2(tmp_path, capsys, kind):
    model = _tiny_model()
    model.save_pretrained(tmp_path / "m")
    edit = _tiny_edit(model)
    path = tmp_path / "e.safetensors"
    edit.save(path)
    if kind == "trunc":
        path.write_bytes(path.read_bytes()[:100])
    elif kind == "deep":
        from safetensors.torch import save_file

        save_file({"rows.ids": edit.row_ids}, path, metadata={"format": "steu_ext.edit/1", "embedding": "e",
                                                               "head": "[" * 100000 + "]" * 100000})
    else:
        path = tmp_path
    capsys.readouterr()
    rc = main(["apply-edit", "--model", str(tmp_path / "m"), "--edit", str(path), "--out", str(tmp_path / "o")])
    assert rc == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_apply_edit_cli_round_trip_marks_output(tmp_path):
    _tiny_edit_files(tmp_path)
    assert main(["apply-edit", "--model", str(tmp_path / "m"), "--edit", str(tmp_path / "e.safetensors"),
                 "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / MARKER).exists()
    assert main(["revert-edit", "--model", str(tmp_path / "o"), "--edit", str(tmp_path / "e.safetensors"),
                 "--out", str(tmp_path / "o"), "--overwrite"]) == EXIT_BAD_INPUT   # the output holds the input
