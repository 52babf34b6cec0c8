"""Question-answering data for knowledge unlearning: PubMedQA, MedMCQA and generic JSONL, as
:class:`QAItem` lists with a forget/retain domain flag.

* :func:`load_pubmedqa`: ``ori_pqal.json`` (PubMed id -> QUESTION, CONTEXTS, MESHES, LONG_ANSWER,
  final_decision); options yes/no/maybe; forget domain = items with a MeSH heading that contains one of
  ``forget_mesh`` (case-insensitive substrings; default: surgical procedures).
* :func:`load_medmcqa`: the MedMCQA JSON-lines/JSON/parquet fields ``question, opa..opd, cop,
  subject_name, topic_name``; forget domain = ``subject_name`` in ``forget_subjects`` (default Surgery).
* :func:`load_qa_jsonl`: any JSONL with a column mapping.
* :func:`prompt_of` / :func:`continuation_of`: an item's text, ``"Question: {question}\\nAnswer:"`` then
  ``" {option}"``, as HDS trains on it and :mod:`steu_ext.eval.qa` scores it.

Every loader checks the file before returning and raises ``FileNotFoundError``/``ValueError`` naming the
file, the record and the field.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = ["QAItem", "prompt_of", "continuation_of", "load_pubmedqa", "load_medmcqa", "load_qa_jsonl",
           "split_domain", "subsample", "SURGICAL_MESH", "PUBMEDQA_OPTIONS"]

PUBMEDQA_OPTIONS = ("yes", "no", "maybe")
# case-insensitive substrings of MeSH headings that mark surgical procedures and their perioperative care
SURGICAL_MESH = ("surgical", "surgery", "ectomy", "otomy", "ostomy", "plasty", "laparoscop", "arthroscop",
                 "anastomosis", "operative", "transplantation", "amputation", "bypass", "suture")


@dataclass
class QAItem:
    """One question with its answer options and the index of the right one."""
    id: str
    question: str
    options: Tuple[str, ...]
    answer: int
    forget: bool = False                 # in the forget domain
    long_answer: Optional[str] = None
    context: Optional[str] = None
    tags: Tuple[str, ...] = ()           # MeSH headings, subject/topic names, ...
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def answer_text(self) -> str:
        return self.options[self.answer]


def prompt_of(item: QAItem) -> str:
    """The prompt of an item's text: ``"Question: {question}\\nAnswer:"`` (its training text is
    ``prompt_of(item) + continuation_of(item)``)."""
    return f"Question: {item.question}\nAnswer:"


def continuation_of(item: QAItem, option: Optional[int] = None, long_answer: bool = False) -> str:
    """The continuation after :func:`prompt_of`: ``" {option}"`` (the right one unless ``option``), with
    ``". {long answer}"`` appended when ``long_answer`` and the item has one."""
    text = f" {item.options[item.answer if option is None else option]}"
    if long_answer and item.long_answer:
        text += f". {item.long_answer}"
    return text


def _need_file(path) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"QA data file not found: {path}")
    return path


def _check_items(items: List[QAItem], source: str) -> List[QAItem]:
    if not items:
        raise ValueError(f"{source}: no QA records")
    return items


def load_pubmedqa(path: Union[str, os.PathLike], forget_mesh: Sequence[str] = SURGICAL_MESH, *,
                  hierarchy=None, forget_domains: Optional[Sequence[str]] = None,
                  target_levels: Sequence[int] = (3, 4)) -> List[QAItem]:
    """PubMedQA's labelled set. ``path`` is ``ori_pqal.json`` or its folder. The forget domain: with a
    concept ``hierarchy`` (:class:`steu_ext.data.concepts.ConceptHierarchy`, e.g. built from MeSH by
    ``steu hierarchy --from-mesh``) and ``forget_domains``, the items one of whose own ``MESHES`` headings
    stands for a concept of ``target_levels`` in those domains (:meth:`ConceptHierarchy.in_domains`: the
    concept the heading names, else the concepts whose terms it contains); otherwise the items with a
    heading containing one of the ``forget_mesh`` substrings."""
    if (hierarchy is None) != (forget_domains is None):
        raise ValueError("give both hierarchy and forget_domains (or neither)")
    if forget_domains is not None and (isinstance(forget_domains, str) or not forget_domains):
        raise ValueError("forget_domains must be a non-empty list of domain names")
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "ori_pqal.json")
    path = _need_file(path)
    pats = [p.lower() for p in forget_mesh]
    if not pats or any(not p.strip() for p in pats):
        raise ValueError("forget_mesh must be a non-empty list of non-empty strings")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected an object keyed by PubMed id")
    items = []
    for pid, r in data.items():
        if not isinstance(r, Mapping):
            raise ValueError(f"{path}: record {pid!r} is not an object")
        for k in ("QUESTION", "final_decision"):
            if not isinstance(r.get(k), str) or not r[k].strip():
                raise ValueError(f"{path}: record {pid!r} has no {k}")
        dec = r["final_decision"].strip().lower()
        if dec not in PUBMEDQA_OPTIONS:
            raise ValueError(f"{path}: record {pid!r} has final_decision {r['final_decision']!r} "
                             f"(expected one of {PUBMEDQA_OPTIONS})")
        meshes = r.get("MESHES") or []
        if not isinstance(meshes, list):
            raise ValueError(f"{path}: record {pid!r}: MESHES must be a list")
        ctx = r.get("CONTEXTS")
        items.append(QAItem(
            id=str(pid), question=r["QUESTION"].strip(), options=PUBMEDQA_OPTIONS,
            answer=PUBMEDQA_OPTIONS.index(dec),
            forget=(hierarchy.in_domains(meshes, forget_domains, target_levels=target_levels) if hierarchy
                    is not None else any(p in m.lower() for m in meshes for p in pats)),
            long_answer=(r.get("LONG_ANSWER") or None),
            context=" ".join(ctx) if isinstance(ctx, list) else ctx,
            tags=tuple(meshes), meta={"year": r.get("YEAR")}))
    return _check_items(items, path)


def _read_records(path: str) -> List[Mapping[str, Any]]:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".parquet":
        try:
            import pandas as pd
        except ImportError as e:
            raise ValueError(f"{path}: reading parquet needs pandas and pyarrow") from e
        return pd.read_parquet(path).to_dict("records")
    if ext not in (".json", ".jsonl"):
        raise ValueError(f"{path}: unknown QA file type {ext!r} (use .json, .jsonl or .parquet)")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            recs = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from e
    else:  # JSON lines (MedMCQA's own files are JSON lines even when named .json)
        recs = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    recs.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {n} is not valid JSON: {e}") from e
    for n, r in enumerate(recs, 1):
        if not isinstance(r, Mapping):
            raise ValueError(f"{path}: record {n} is not an object")
    return recs


def load_medmcqa(path: Union[str, os.PathLike], forget_subjects: Sequence[str] = ("Surgery",),
                 cop_base: Optional[int] = None) -> List[QAItem]:
    """MedMCQA (JSON lines, JSON array or parquet). ``cop`` is the right option: 1-4 in the original
    release, 0-3 in the Hugging Face copy; ``cop_base=None`` infers it (0 present -> 0-based, 4 present ->
    1-based) and asks for it when the file cannot tell."""
    path = _need_file(path)
    recs = _read_records(path)
    if not recs:
        raise ValueError(f"{path}: no QA records")
    if cop_base not in (None, 0, 1):
        raise ValueError(f"cop_base must be 0, 1 or None, got {cop_base!r}")
    subjects = {s.lower() for s in forget_subjects}
    for n, r in enumerate(recs, 1):
        missing = [k for k in ("question", "opa", "opb", "opc", "opd", "cop") if r.get(k) is None]
        if missing:
            raise ValueError(f"{path}: record {n} lacks field(s) {missing}")
        try:
            r["_cop"] = int(r["cop"])
        except (TypeError, ValueError):
            raise ValueError(f"{path}: record {n}: cop {r['cop']!r} is not an integer") from None
    cops = {r["_cop"] for r in recs}
    if cop_base is None:
        if 0 in cops and 4 in cops:
            raise ValueError(f"{path}: cop takes both 0 and 4: not a MedMCQA answer index")
        if 0 in cops:
            cop_base = 0
        elif 4 in cops:
            cop_base = 1
        else:
            raise ValueError(f"{path}: cannot tell whether cop is 0-based or 1-based "
                             f"(values {sorted(cops)}); pass cop_base=0 or 1")
    items = []
    for n, r in enumerate(recs, 1):
        a = r["_cop"] - cop_base
        if not 0 <= a < 4:
            raise ValueError(f"{path}: record {n}: cop {r['cop']!r} out of range for "
                             f"{cop_base}-based indices")
        subj = str(r.get("subject_name") or "")
        items.append(QAItem(
            id=str(r.get("id", n)), question=str(r["question"]).strip(),
            options=tuple(str(r[k]) for k in ("opa", "opb", "opc", "opd")), answer=a,
            forget=subj.lower() in subjects, long_answer=(r.get("exp") or None),
            tags=tuple(t for t in (subj, str(r.get("topic_name") or "")) if t),
            meta={"subject_name": subj, "topic_name": r.get("topic_name")}))
    return _check_items(items, path)


def load_qa_jsonl(path: Union[str, os.PathLike], *, question: str = "question",
                  options: Union[str, Sequence[str]] = "options", answer: str = "answer",
                  long_answer: Optional[str] = None, domain: Optional[str] = None,
                  forget_values: Iterable[str] = (), id_column: Optional[str] = None) -> List[QAItem]:
    """Generic QA JSONL. ``options``: one column holding a list, or a list of columns (one per option).
    ``answer``: the right option as an index, a letter (A, B, ...) or the option's text. Records whose
    ``domain`` column value is in ``forget_values`` form the forget domain."""
    path = _need_file(path)
    recs = _read_records(path)
    if not recs:
        raise ValueError(f"{path}: no QA records")
    fv = {str(v).lower() for v in forget_values}
    if domain is None and fv:
        raise ValueError("forget_values needs a domain column")
    items = []
    for n, r in enumerate(recs, 1):
        where = f"{path}: record {n}"
        cols = [question, answer] + ([options] if isinstance(options, str) else list(options))
        if domain:
            cols.append(domain)
        missing = [c for c in cols if c not in r]
        if missing:
            raise ValueError(f"{where} lacks column(s) {missing} (columns: {sorted(r)})")
        opts = r[options] if isinstance(options, str) else [r[c] for c in options]
        if isinstance(opts, str) or not isinstance(opts, (list, tuple)) or len(opts) < 2:
            raise ValueError(f"{where}: options must be a list of at least 2 answers")
        opts = tuple(str(o) for o in opts)
        a = r[answer]
        if isinstance(a, bool):
            raise ValueError(f"{where}: answer {a!r} is not an index, letter or option text")
        if isinstance(a, int):
            idx = a
        elif isinstance(a, str) and a in opts:
            idx = opts.index(a)
        elif isinstance(a, str) and len(a.strip()) == 1 and a.strip().isalpha():
            idx = ord(a.strip().upper()) - ord("A")
        else:
            raise ValueError(f"{where}: answer {a!r} is not an index, letter or one of the options "
                             f"{list(opts)}")
        if not 0 <= idx < len(opts):
            raise ValueError(f"{where}: answer {a!r} out of range for {len(opts)} options")
        if not str(r[question]).strip():
            raise ValueError(f"{where}: empty question")
        dom = str(r[domain]) if domain else ""
        items.append(QAItem(id=str(r[id_column]) if id_column else str(n), question=str(r[question]).strip(),
                            options=opts, answer=idx, forget=dom.lower() in fv,
                            long_answer=(r.get(long_answer) if long_answer else None) or None,
                            tags=(dom,) if dom else ()))
    return _check_items(items, path)


def split_domain(items: Sequence[QAItem]) -> Tuple[List[QAItem], List[QAItem]]:
    """``(forget, retain)`` items; ``ValueError`` when either is empty."""
    forget = [i for i in items if i.forget]
    retain = [i for i in items if not i.forget]
    if not forget:
        raise ValueError("no item falls in the forget domain (check the MeSH terms / subjects / values)")
    if not retain:
        raise ValueError("every item falls in the forget domain: nothing to retain")
    return forget, retain


def subsample(items: Sequence[QAItem], n: Optional[int], seed: int = 0) -> List[QAItem]:
    """``n`` items drawn without replacement with a seeded RNG (all of them, shuffled, when ``n`` is None
    or larger)."""
    out = list(items)
    random.Random(seed).shuffle(out)
    return out if n is None else out[:n]
