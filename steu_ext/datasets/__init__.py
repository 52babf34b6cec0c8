"""The two small public data sets bundled with steu_ext (each folder keeps its LICENSE and SOURCE.md).

- ``medical_abstracts``: 2,888 PubMed abstracts, 5 disease classes (CC BY-SA 3.0), for class-level
  unlearning: :func:`steu_ext.data.load_medical_abstracts(path("medical_abstracts"))`.
- ``pubmedqa``: the 1,000 expert-labelled PubMedQA items with MeSH terms (MIT), for domain unlearning:
  :func:`steu_ext.data.qa.load_pubmedqa(path("pubmedqa"))`.

``STEU_DATA_ROOT`` points :func:`path` at another folder holding the same sub-folders.
"""
from __future__ import annotations

import os
from pathlib import Path

NAMES = ("medical_abstracts", "pubmedqa")
_HERE = Path(__file__).resolve().parent


def path(name: str) -> Path:
    """Folder of bundled data set ``name`` (or ``$STEU_DATA_ROOT/name`` when that variable is set)."""
    if name not in NAMES:
        raise ValueError(f"unknown bundled data set {name!r}; expected one of {list(NAMES)}")
    root = os.environ.get("STEU_DATA_ROOT")
    return (Path(root) if root else _HERE) / name
