"""Safe output folders and files: a tool must never delete or overwrite what it did not write.

:func:`output_dir` is the one place every folder-writing command goes through (``steu demo/unlearn/
compare/hds/apply-edit/revert-edit --out``). It refuses ``.``, ``..``, ``/``, the home folder and any folder
that contains the current folder, the home folder or one of the inputs; an existing non-empty folder is
replaced only with ``overwrite`` and only if it carries our marker file (:data:`MARKER`, written into every
folder we create). The output is built in a fresh hidden sibling folder and renamed into place at the end;
on any failure (an exception, Ctrl-C) only what this call created is removed: nothing is left behind.
:func:`atomic_write` does the same for a single file; :func:`write_json` writes a JSON report through it.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, Optional, Sequence

__all__ = ["MARKER", "OutputPathError", "check_output_dir", "output_dir", "atomic_write", "is_ours", "write_json"]

MARKER = ".steu_ext_output"
_NAME_MAX = 255


class OutputPathError(ValueError):
    """An output path the tool refuses to write to (user error: exit 2 in the CLI)."""


def _real(p: str) -> str:
    return os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(p))))


def _within(child: str, parent: str) -> bool:
    """``child`` is ``parent`` or lies under it (both real paths)."""
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def is_ours(path: str) -> bool:
    """A folder written by this tool (carries :data:`MARKER`)."""
    return os.path.isfile(os.path.join(path, MARKER))


def _check_name(path: str) -> None:
    if not str(path).strip():
        raise OutputPathError("the output path is empty")
    if "\x00" in str(path):
        raise OutputPathError("the output path contains a NUL byte")
    for part in os.path.abspath(os.fspath(path)).split(os.sep):
        if len(os.fsencode(part)) + 40 > _NAME_MAX:   # room for our temporary sibling's prefix/suffix
            raise OutputPathError(f"the output path has a component of {len(part)} characters; at most "
                                  f"{_NAME_MAX - 40} are supported")
    if len(os.fsencode(os.path.abspath(os.fspath(path)))) > 4000:
        raise OutputPathError("the output path is too long")


def check_output_dir(path: str, overwrite: bool, inputs: Sequence[Optional[str]] = (),
                     marker_files: Sequence[str] = (MARKER,)) -> str:
    """Raise :class:`OutputPathError` unless ``path`` may be (re)written as an output folder; returns its
    absolute path. ``marker_files``: files any one of which marks an existing folder as ours."""
    _check_name(path)
    raw = os.fspath(path)
    if os.path.basename(os.path.normpath(raw)) in (".", "..", "") or os.path.normpath(raw) in (os.sep, "."):
        raise OutputPathError(f"refusing to use {raw!r} as the output folder: name a new folder")
    real = _real(raw)
    cwd, home = _real(os.getcwd()), _real(os.path.expanduser("~"))
    if real == os.sep or _within(cwd, real) or _within(home, real):
        raise OutputPathError(f"refusing to use {raw!r} as the output folder: it is (or contains) the current "
                              "folder, the home folder or the root; name a new folder")
    for inp in inputs:
        if inp and os.path.exists(inp) and _within(_real(inp), real):
            raise OutputPathError(f"refusing to use {raw!r} as the output folder: it contains the input {inp}")
    if os.path.lexists(real) or os.path.lexists(raw):
        if os.path.islink(raw):
            raise OutputPathError(f"output folder {raw} is a symbolic link: not replacing it")
        if not os.path.isdir(real):
            raise OutputPathError(f"output path {raw} exists and is not a folder")
        if os.listdir(real):
            ours = any(os.path.exists(os.path.join(real, m)) for m in marker_files)
            if not ours:
                raise OutputPathError(f"output folder {raw} exists, is not empty and was not written by steu "
                                      f"(no {marker_files[0]} file): not replacing it, not even with --overwrite; name a new folder")
            if not overwrite:
                raise OutputPathError(f"output folder {raw} already exists (use --overwrite to replace it)")
    return real


_HOST = "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:40] or "host"
_TAG = f"{_HOST}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:   # e.g. EPERM: it exists
        return True
    return True


def _remove_stale(parent: str, name: str) -> None:
    """Remove our own temporary siblings of ``name`` left by a run on this host that was killed (SIGKILL,
    power loss): their name carries the host and the process id, and that process is gone."""
    try:
        entries = os.listdir(parent)
    except OSError:
        return
    for kind in ("tmp", "old"):
        prefix = f".{name}.steu-{kind}-{_HOST}-"
        for e in entries:
            if not e.startswith(prefix):
                continue
            pid = e[len(prefix):].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                shutil.rmtree(os.path.join(parent, e), ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _make_parents(parent: str) -> list:
    """Create ``parent`` and missing ancestors; return the folders created (deepest last)."""
    created = []
    p = parent
    while not os.path.exists(p):
        created.append(p)
        up = os.path.dirname(p)
        if up == p:
            break
        p = up
    created.reverse()
    for d in created:
        os.mkdir(d)
    return created


def _remove_created(dirs: list) -> None:
    for d in reversed(dirs):
        try:
            os.rmdir(d)   # only if still empty
        except OSError:
            break


@contextlib.contextmanager
def output_dir(path: str, overwrite: bool = False, inputs: Sequence[Optional[str]] = (),
               finalize: Optional[Callable[[str, str], None]] = None) -> Iterator[str]:
    """Yield a new temporary sibling folder of ``path``; if the block succeeds, run ``finalize(tmp, final)``
    (e.g. fix paths recorded in reports), mark it as ours and rename it to ``path`` (replacing an old folder
    of ours); if anything fails, remove only what this call created."""
    real = check_output_dir(path, overwrite, inputs)
    parent, name = os.path.dirname(real), os.path.basename(real)
    created = _make_parents(parent)
    _remove_stale(parent, name)
    try:
        tmp = tempfile.mkdtemp(prefix=f".{name}.steu-tmp-{_TAG}-", dir=parent)
        os.chmod(tmp, 0o777 & ~_umask())   # mkdtemp's 0700 -> what os.makedirs would have given
    except BaseException:
        _remove_created(created)
        raise
    old = None
    try:
        yield tmp
        if finalize is not None:
            finalize(tmp, real)
        with open(os.path.join(tmp, MARKER), "w") as f:
            f.write("written by steu_ext; `--overwrite` may replace this folder\n")
        check_output_dir(path, overwrite, inputs)   # still safe (nothing appeared meanwhile)
        if os.path.isdir(real):
            old = tempfile.mkdtemp(prefix=f".{name}.steu-old-{_TAG}-", dir=parent)
            os.replace(real, os.path.join(old, "d"))
        try:
            os.replace(tmp, real)
        except BaseException:
            if old is not None:
                os.replace(os.path.join(old, "d"), real)
                os.rmdir(old)
                old = None
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_created(created)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write(path: str, write: Callable[[str], None]) -> str:
    """``write(tmp)`` to a fresh temporary file next to ``path``, then rename it to ``path``; the temporary
    file is removed if anything fails."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return path


def write_json(path: str, report: Dict[str, Any]) -> str:
    """Write ``report`` atomically (temp file + rename; the temp file is removed on failure), with
    ``created`` and ``versions`` (:func:`steu_ext.env_report.versions`) added unless present."""
    from .env_report import versions

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    report = dict(report)
    report.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    report.setdefault("versions", versions())

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(report, f, indent=2, default=str)

    return atomic_write(path, write)
