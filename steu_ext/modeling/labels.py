"""Reading what users pass as labels and targets, without silent guesses.

* :func:`resolve_target`: a class by name or position. An exact name match always wins (the medical
  abstracts' classes are named ``"1"``..``"5"``: ``"1"`` is the class named 1, not position 1); a position
  that could also be read as another class's name is an error, never a guess. ``"#2"`` is always position 2.
* :func:`label_matrix`: ``[N, C]`` float 0/1 from class ids, lists of class ids, or a matrix — a torch,
  numpy or pandas ``[N, C]`` 0/1 matrix (what ``MultiLabelBinarizer`` returns) or a list of multi-hot rows
  (what an HF ``datasets`` column holds) is read as a matrix, and a list of rows that could be either ids or
  multi-hot rows is refused with a clear error.
"""
from __future__ import annotations

import numbers
from typing import Any, List, Sequence

import torch

__all__ = ["resolve_target", "label_matrix"]


def _is_int(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, numbers.Integral):
        return True
    if isinstance(x, torch.Tensor) and x.dim() == 0 and not x.is_floating_point() and x.dtype != torch.bool:
        return True
    return type(x).__module__ == "numpy" and getattr(x, "ndim", None) == 0 and getattr(x, "dtype", None) is not None \
        and x.dtype.kind in "iu"


def _digits(s: str) -> bool:
    return s.lstrip("-").isdigit()


def resolve_target(target, label_names: Sequence[str]) -> int:
    """Class index from a class name or a position.

    A string equal to a class name is that class. Otherwise a digit string or an int is a position, unless
    the classes have numeric names, where that reading is ambiguous and refused; ``"#N"`` is position ``N``
    in every case. A Python ``int`` is always a position (the type says so; strings are what users type)."""
    names = [str(n) for n in label_names]
    C = len(names)
    if isinstance(target, bool) or target is None:
        raise TypeError(f"target must be a class name or a position, got {target!r}")

    def position(t: int, shown) -> int:
        if not 0 <= t < C:
            raise ValueError(f"target class {shown} is out of range for {C} classes {names}")
        return t

    if isinstance(target, str):
        t = target.strip()
        if t in names:
            return names.index(t)
        if t.startswith("#") and _digits(t[1:]):
            return position(int(t[1:]), t)
        if not _digits(t):
            raise ValueError(f"unknown class name {target!r}; the classes are {names}")
        if any(_digits(n) for n in names):
            raise ValueError(f"target {target!r} is not a class name, and the classes have numeric names {names}: "
                             f"give a class name, or '#{t}' for the class at position {t}")
        return position(int(t), t)
    if _is_int(target):
        t = int(target)
        return position(t, t)  # a Python int is a position, by type (internal callers pass resolved ints)
    raise TypeError(f"target must be a class name (str) or a position (int), got {type(target).__name__}")


def _as_tensor_matrix(x, num_classes: int, what: str) -> torch.Tensor:
    if x.dim() != 2:
        raise ValueError(f"{what} must be 1-D class ids or a 2-D [N, C] matrix, got shape {tuple(x.shape)}")
    if x.shape[1] != num_classes:
        raise ValueError(f"label matrix has {x.shape[1]} columns, the model has {num_classes} classes"
                         + (" (did you mean a list of class ids per document? pass a list of lists)"
                            if not x.is_floating_point() else ""))
    y = x.to(torch.float32)
    if y.numel() and (not torch.isfinite(y).all() or y.min() < 0 or y.max() > 1):
        raise ValueError(f"{what}: a [N, C] label matrix must hold values in [0, 1] (0/1 multi-hot), got values "
                         f"from {float(y.min())} to {float(y.max())}")
    return y.clone()


def _from_ids(x: torch.Tensor, num_classes: int) -> torch.Tensor:
    if x.is_floating_point():
        if not torch.equal(x, x.round()):
            raise ValueError("1-D labels must be integer class ids, got non-integer values")
    ids = x.to(torch.int64)
    if ids.numel() and (ids.min() < 0 or ids.max() >= num_classes):
        bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
        raise ValueError(f"label {bad} is out of range for {num_classes} classes")
    out = torch.zeros(ids.numel(), num_classes)
    out[torch.arange(ids.numel()), ids] = 1.0
    return out


def _row_values(row, i: int) -> List:
    if isinstance(row, torch.Tensor):
        if row.dim() != 1:
            raise ValueError(f"labels of document {i} must be a class id or a 1-D list, got shape {tuple(row.shape)}")
        return row.tolist()
    if type(row).__module__ == "numpy":
        import numpy as np

        arr = np.asarray(row)
        if arr.ndim != 1:
            raise ValueError(f"labels of document {i} must be a class id or a 1-D list, got shape {arr.shape}")
        return arr.tolist()
    if isinstance(row, (str, bytes)):
        raise TypeError(f"labels of document {i} is a string ({row!r}); map class names to ids first")
    try:
        return list(row)
    except TypeError:
        raise TypeError(f"labels of document {i} must be a class id or a list of them, got "
                        f"{type(row).__name__}") from None


def label_matrix(labels, num_classes: int) -> torch.Tensor:
    """``[N, C]`` float 0/1 from class ids ``[N]``, lists of class ids, or an ``[N, C]`` matrix (torch,
    numpy, pandas, or a list of multi-hot rows of floats). Ambiguous input is a ``ValueError``."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    mod = type(labels).__module__ or ""
    if mod.startswith("pandas"):
        if hasattr(labels, "columns"):              # DataFrame: a matrix
            labels = labels.to_numpy()
        else:                                       # Series: one entry per document
            labels = labels.tolist()
    if type(labels).__module__ == "numpy":
        import numpy as np

        arr = np.asarray(labels)
        if arr.dtype == object:
            labels = list(arr)
        else:
            if arr.dtype.kind not in "biuf":
                raise TypeError(f"labels array has dtype {arr.dtype}; expected class ids or a 0/1 matrix")
            labels = torch.from_numpy(np.ascontiguousarray(arr))
    if isinstance(labels, torch.Tensor):
        if labels.dim() == 2:
            return _as_tensor_matrix(labels, num_classes, "labels")
        if labels.dim() == 1:
            return _from_ids(labels, num_classes)
        raise ValueError(f"labels must be 1-D class ids or a 2-D [N, C] matrix, got shape {tuple(labels.shape)}")
    try:
        items = list(labels)
    except TypeError:
        raise TypeError(f"labels must be a sequence, array or tensor, got {type(labels).__name__}") from None
    if not items:
        return torch.zeros(0, num_classes)
    if all(_is_int(y) for y in items):
        return _from_ids(torch.tensor([int(y) for y in items], dtype=torch.int64), num_classes)
    rows = []
    for i, y in enumerate(items):
        if _is_int(y):
            rows.append([int(y)])
            continue
        if isinstance(y, (bool, float)) or (isinstance(y, torch.Tensor) and y.dim() == 0):
            raise TypeError(f"label of document {i} is {y!r}: expected an int class id or a list of them")
        rows.append(_row_values(y, i))
    has_float = any(isinstance(v, float) for r in rows for v in r)
    full_width = all(len(r) == num_classes for r in rows)
    zero_one = all(v in (0, 1) for r in rows for v in r)
    if has_float:
        # multi-hot rows (an HF datasets column of float lists)
        if not full_width:
            bad = next(i for i, r in enumerate(rows) if len(r) != num_classes)
            raise ValueError(f"labels contain floats, so they are read as multi-hot rows, but document {bad} has "
                             f"{len(rows[bad])} values for {num_classes} classes (class ids must be ints)")
        return _as_tensor_matrix(torch.tensor(rows, dtype=torch.float32), num_classes, "labels")
    for i, r in enumerate(rows):
        for v in r:
            if not _is_int(v):
                raise TypeError(f"labels of document {i} contain {v!r}: expected int class ids")
    if full_width and zero_one and num_classes > 1 and len(rows) > 0:
        if any(len(set(r)) != len(r) for r in rows):   # 0/1 rows with repeats: multi-hot, not id lists
            return torch.tensor(rows, dtype=torch.float32)
        raise ValueError(f"labels are ambiguous: every document has {num_classes} values, all 0 or 1, which reads "
                         "both as lists of class ids and as multi-hot rows; pass a [N, C] tensor/array for "
                         "multi-hot labels, or class ids as ints per document")
    out = torch.zeros(len(rows), num_classes)
    for i, r in enumerate(rows):
        for c in r:
            c = int(c)
            if not 0 <= c < num_classes:
                raise ValueError(f"label {c} of document {i} is out of range for {num_classes} classes")
            out[i, c] = 1.0
    return out
