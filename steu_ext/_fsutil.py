"""File-system helpers for what the tool writes: the permissions of an ordinarily created file.

``safetensors`` (and so ``save_pretrained``) creates its files readable by the owner only (0600) while
``open()`` honours the umask (usually 0644): an edit and the report beside it would differ. Everything the
tool writes gets the umask's permissions, like any file the user creates."""
from __future__ import annotations

import os
import threading

__all__ = ["new_file_mode", "chmod_like_new", "chmod_tree_like_new"]

_lock = threading.Lock()


def new_file_mode(directory: bool = False) -> int:
    """``0o666`` (``0o777`` for a folder) less the process umask."""
    with _lock:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def chmod_like_new(path: str | os.PathLike) -> None:
    """Give ``path`` (a file the tool has just written) the permissions of a newly created file."""
    os.chmod(path, new_file_mode(os.path.isdir(path)))


def chmod_tree_like_new(root: str | os.PathLike) -> None:
    """:func:`chmod_like_new` for ``root`` and everything under it (a folder the tool has just built)."""
    fmode, dmode = new_file_mode(), new_file_mode(True)
    for d, dirs, files in os.walk(root):
        os.chmod(d, dmode)
        for f in files:
            p = os.path.join(d, f)
            if not os.path.islink(p):
                os.chmod(p, fmode)
