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
    import steu_ext.modeling.loading as loading

    monkeypatch.setattr(loading, "offline_minilm_path", lambda: None)
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


# ---- 3. RowSparseAdam ------------------------------------------------------------------------------------
def _opt_setup():
    from steu_ext.optim import RowSparseAdam

    emb = torch.nn.Parameter(torch.randn(10, 4))
    head = torch.nn.Parameter(torch.randn(3, 4))
    rows = torch.tensor([1, 5, 7])
    opt = RowSparseAdam([{"params": [emb], "rows": rows}, {"params": [head]}], lr=0.1)
    return opt, emb, head, rows


def _step(opt, emb, head):
    emb.grad = torch.ones_like(emb)
    head.grad = torch.ones_like(head)
    opt.step()


def test_row_adam_refuses_state_without_rows():
    opt, emb, head, rows = _opt_setup()
    _step(opt, emb, head)
    adam = torch.optim.Adam([emb, head], lr=0.1)
    emb.grad = torch.ones_like(emb)
    head.grad = torch.ones_like(head)
    adam.step()
    sd = adam.state_dict()
    sd["param_groups"] = [dict(sd["param_groups"][0], params=[0]), dict(sd["param_groups"][0], params=[1])]
    sd["state"] = {0: sd["state"][0], 1: sd["state"][1]}
    before = opt.state_dict()
    with pytest.raises(ValueError, match="rows"):
        opt.load_state_dict(sd)
    _same_state(opt.state_dict(), before)
    untouched = emb.detach().clone()
    _step(opt, emb, head)                          # still row-sparse: only the 3 rows move
    changed = (emb.detach() != untouched).any(1).nonzero().flatten()
    assert changed.tolist() == rows.tolist()


def _same_state(a, b):
    assert len(a["param_groups"]) == len(b["param_groups"])
    for ga, gb in zip(a["param_groups"], b["param_groups"]):
        assert set(ga) == set(gb)
        for k in ga:
            if isinstance(ga[k], torch.Tensor):
                assert torch.equal(ga[k], gb[k])
            else:
                assert ga[k] == gb[k]
    assert set(a["state"]) == set(b["state"])
    for k in a["state"]:
        for n, t in a["state"][k].items():
            assert torch.equal(t, b["state"][k][n])


def test_row_adam_load_failure_leaves_optimizer_unchanged():
    opt, emb, head, rows = _opt_setup()
    _step(opt, emb, head)
    before = opt.state_dict()
    bad = opt.state_dict()
    bad["param_groups"][0]["rows"] = torch.tensor([1, 5])          # moments are [3, D]
    with pytest.raises(ValueError, match="does not match"):
        opt.load_state_dict(bad)
    _same_state(opt.state_dict(), before)
    bad = opt.state_dict()
    bad["param_groups"][0]["rows"] = torch.tensor([1, 5, 70])      # out of range
    with pytest.raises(ValueError):
        opt.load_state_dict(bad)
    _same_state(opt.state_dict(), before)
    bad = opt.state_dict()
    del bad["state"][1]["exp_avg"]
    with pytest.raises(ValueError, match="exp_avg"):
        opt.load_state_dict(bad)
    _same_state(opt.state_dict(), before)


def test_row_adam_validates_groups_at_construction():
    from steu_ext.optim import RowSparseAdam

    emb = torch.nn.Parameter(torch.randn(10, 4))
    with pytest.raises(TypeError, match="float64"):
        RowSparseAdam([{"params": [emb], "rows": [1, 2]}, {"params": [torch.nn.Parameter(torch.randn(3).double())]}])
    with pytest.raises(ValueError, match="contiguous"):
        RowSparseAdam([torch.nn.Parameter(torch.randn(4, 3).t())])
    opt = RowSparseAdam([{"params": [emb], "rows": [1, 2]}])
    with pytest.raises(TypeError):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(3).double())]})
    assert len(opt.param_groups) == 1                              # the bad group was not kept


def test_row_adam_copies_callers_rows():
    opt, emb, head, rows = _opt_setup()
    rows[0] = 9                                                     # the caller reuses its tensor
    untouched = emb.detach().clone()
    _step(opt, emb, head)
    changed = (emb.detach() != untouched).any(1).nonzero().flatten()
    assert changed.tolist() == [1, 5, 7]


def test_row_adam_bad_grad_is_refused_before_any_update():
    opt, emb, head, rows = _opt_setup()
    emb.grad = torch.ones_like(emb)
    head.grad = torch.ones(3, 4).to_sparse()            # sparse grad in a dense group: refused
    e0, h0 = emb.detach().clone(), head.detach().clone()
    with pytest.raises(ValueError, match="sparse"):
        opt.step()
    assert torch.equal(emb, e0) and torch.equal(head, h0)   # the row group was not stepped first
    assert not opt.state


# ---- 8. row_adam_ / multi_adam_ step and gradient layout ---------------------------------------------------
@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_step_zero_is_refused_by_every_backend(backend, force_backend):
    from steu_ext import available_backends
    from steu_ext.ops.row_adam import multi_adam_, row_adam_

    why = available_backends("row_adam", "cpu").get(backend)
    if why:
        pytest.skip(why)
    force_backend("row_adam", backend)
    force_backend("multi_adam", backend)
    p, g = torch.randn(6, 3), torch.randn(6, 3)
    m, v = torch.zeros(2, 3), torch.zeros(2, 3)
    p0 = p.clone()
    with pytest.raises(ValueError, match="step must be >= 1"):
        row_adam_(p, g, torch.tensor([1, 4]), m, v, torch.tensor(0.0), lr=0.1)
    with pytest.raises(ValueError, match="step must be >= 1"):
        multi_adam_([p], [g], [torch.zeros(6, 3)], [torch.zeros(6, 3)], [torch.tensor(0.0)], lr=0.1)
    assert torch.equal(p, p0) and not m.any() and not v.any()


def test_grad_layout_explicit_when_k_equals_v():
    from steu_ext.ops.row_adam import row_adam_

    V, D = 4, 2
    rows = torch.tensor([3, 2, 1, 0])
    g = torch.arange(V * D, dtype=torch.float32).reshape(V, D)
    st = lambda: (torch.zeros(V, D), torch.zeros(V, D))  # noqa: E731
    with pytest.raises(ValueError, match="grad_layout"):
        row_adam_(torch.zeros(V, D), g, rows, *st(), torch.tensor(1.0), lr=0.1)
    full, gath = torch.zeros(V, D), torch.zeros(V, D)
    m1, v1 = st()
    m2, v2 = st()
    row_adam_(full, g, rows, m1, v1, torch.tensor(1.0), lr=0.1, grad_layout="full")
    row_adam_(gath, g[rows], rows, m2, v2, torch.tensor(1.0), lr=0.1, grad_layout="gathered")
    assert torch.equal(full, gath) and torch.equal(m1, m2)
    with pytest.raises(ValueError, match="gathered grad must be"):
        row_adam_(torch.zeros(6, D), torch.zeros(6, D), rows, *st(), torch.tensor(1.0), lr=0.1,
                  grad_layout="gathered")
    # the identity order is not ambiguous: no layout needed
    row_adam_(torch.zeros(V, D), g, torch.arange(V), *st(), torch.tensor(1.0), lr=0.1)


# ---- exit codes and messages ---------------------------------------------------------------------------------
@pytest.mark.parametrize("ext,text", [(".json", '{"concepts": ' + "[" * 100000 + "]" * 100000 + "}"),
                                      (".yaml", "concepts: " + "[" * 100000 + "]" * 100000 + "\n")])
def test_deeply_nested_hierarchy_is_a_value_error(tmp_path, ext, text):
    from steu_ext.data.concepts import load_hierarchy

    p = tmp_path / f"h{ext}"
    p.write_text(text)
    with pytest.raises(ValueError, match="nested too deeply|cannot parse"):
        load_hierarchy(p)


def test_full_output_folder_is_exit_2_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    _tiny_edit_files(tmp_path)
    from steu_ext.methods import edit as edit_mod

    def full(self, model, check=True):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(edit_mod.STEUEdit, "apply", full)
    capsys.readouterr()
    rc = main(["apply-edit", "--model", str(tmp_path / "m"), "--edit", str(tmp_path / "e.safetensors"),
               "--out", str(tmp_path / "out" / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == EXIT_BAD_INPUT and "No space left" in err.splitlines()[-1] and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["e.safetensors", "m"]   # not even the parent folder it made


def test_unwritable_output_folder_is_exit_2(tmp_path, capsys):
    _tiny_edit_files(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user that can write anywhere (root)")
        capsys.readouterr()
        rc = main(["apply-edit", "--model", str(tmp_path / "m"), "--edit", str(tmp_path / "e.safetensors"),
                   "--out", str(ro / "o")])
        err = capsys.readouterr().err.strip()
        assert rc == EXIT_BAD_INPUT and "Permission denied" in err.splitlines()[-1] and "Traceback" not in err
    finally:
        ro.chmod(0o700)


def test_missing_local_model_path_message(tmp_path, capsys):
    _tiny_edit_files(tmp_path)
    capsys.readouterr()
    for model in (str(tmp_path / "nope"), "./nope", "~/nope/x"):
        rc = main(["apply-edit", "--model", model, "--edit", str(tmp_path / "e.safetensors"),
                   "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip()
        assert rc == EXIT_BAD_INPUT and "not found" in err and "repo" not in err.lower(), err


def test_missing_metadata_key_message(tmp_path, capsys):
    from safetensors.torch import save_file

    _tiny_edit_files(tmp_path)
    save_file({"rows.ids": torch.tensor([1])}, tmp_path / "bad.safetensors",
              metadata={"format": "steu_ext.edit/1", "head": "[]"})
    capsys.readouterr()
    rc = main(["apply-edit", "--model", str(tmp_path / "m"), "--edit", str(tmp_path / "bad.safetensors"),
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == EXIT_BAD_INPUT and "lacks ['embedding']" in err


def test_leftovers_of_a_killed_run_are_cleaned_up(tmp_path):
    import subprocess
    import sys

    code = ("import os, sys, time\nsys.path.insert(0, %r)\nfrom steu_ext._outdir import output_dir\n"
            "with output_dir(%r) as tmp:\n    print(tmp, flush=True)\n    time.sleep(60)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.Popen([sys.executable, "-c", code % (root, str(tmp_path / "run"))], stdout=subprocess.PIPE,
                         text=True)
    tmp = p.stdout.readline().strip()
    assert os.path.isdir(tmp)
    p.kill()
    p.wait()
    assert os.path.isdir(tmp)                       # SIGKILL: nothing could clean up
    with output_dir(str(tmp_path / "run")):
        pass
    assert sorted(os.listdir(tmp_path)) == ["run"]  # the next run removed the dead run's leftovers


def test_sigterm_cleans_up(tmp_path):
    import signal
    import subprocess
    import sys

    code = ("import sys, time\nsys.path.insert(0, %r)\nfrom steu_ext.cli import _sigterm_as_exit\n"
            "from steu_ext._outdir import output_dir\n_sigterm_as_exit()\n"
            "with output_dir(%r) as tmp:\n    print(tmp, flush=True)\n    time.sleep(60)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.Popen([sys.executable, "-c", code % (root, str(tmp_path / "run"))], stdout=subprocess.PIPE,
                         text=True)
    tmp = p.stdout.readline().strip()
    assert os.path.isdir(tmp)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 128 + signal.SIGTERM
    assert os.listdir(tmp_path) == []
