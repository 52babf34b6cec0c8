"""Concept hierarchies for HDS: a file of medical concepts with a level 1-4, a domain and surface terms,
and token tagging through a fast tokenizer's offset mapping.

File format (YAML or JSON, same structure)::

    format: steu_ext.concepts/1        # optional
    concepts:
      - concept: Cholecystectomy        # a name (unique)
        level: 4                        # 1 basic biology .. 4 specific restricted detail
        domain: surgery                 # free text; HDS targets the domains it is told to forget
        terms: [cholecystectomy, gallbladder removal]   # surface forms, matched case-insensitively
        id: D002763                     # optional: the source's identifier (MeSH UI, UMLS CUI)
        parents: [D013514]              # optional: ids (or names) of parent concepts in the file

Levels follow the HDS paper: 1 = basic biology (never forgotten), 2 = general clinical skills,
3 = specialty knowledge, 4 = specific restricted detail. A term matches whole words only (``\\b`` at both
ends, any whitespace between the words of a multi-word term); list plurals and spelling variants as
their own terms. A term may belong to one concept only.

Tagging (:meth:`ConceptHierarchy.tag`) maps every match to the tokens whose character span overlaps it
(so a term split into several sub-word tokens tags all of them, and a token that straddles a match
boundary is tagged too); where matches overlap, the most specific (highest) level wins, then the
longer match. :meth:`ConceptHierarchy.roles` turns levels into preservation-critical / unlearning-targeted
/ neutral tokens.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch

__all__ = ["Concept", "ConceptHierarchy", "load_hierarchy", "LEVELS", "NEUTRAL", "PRESERVE", "TARGET",
           "example_hierarchy_path"]

LEVELS = (1, 2, 3, 4)
NEUTRAL, PRESERVE, TARGET = 0, 1, 2   # token roles
FORMAT = "steu_ext.concepts/1"
_WORD = re.compile(r"\w+")


def example_hierarchy_path() -> str:
    """The small surgical-vs-general hierarchy for PubMedQA shipped with the package."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "hierarchies", "pubmedqa_surgery.yaml")


@dataclass(frozen=True)
class Concept:
    name: str
    level: int
    domain: str
    terms: Tuple[str, ...]
    id: Optional[str] = None             # the source's identifier (MeSH DescriptorUI, UMLS CUI), if any
    parents: Tuple[str, ...] = ()        # ids (or names) of parent concepts in the same file


def _norm(term: str) -> str:
    return " ".join(term.lower().split())


@dataclass
class ConceptHierarchy:
    """Validated concepts and one compiled case-insensitive matcher over all their terms."""
    concepts: List[Concept]
    _term_concept: Dict[str, int] = field(default_factory=dict, repr=False)
    _patterns: List[Tuple[re.Pattern, int]] = field(default_factory=list, repr=False)

    def __post_init__(self):
        self._term_concept = {}
        for ci, c in enumerate(self.concepts):
            for t in c.terms:
                self._term_concept[_norm(t)] = ci
        # one pattern per term: overlapping occurrences of different terms are all found
        self._patterns = [(re.compile(r"(?<!\w)" + r"\s+".join(re.escape(w) for w in t.split()) + r"(?!\w)",
                                      re.IGNORECASE), ci) for t, ci in self._term_concept.items()]
        # index by the term's first word (a run of \w): a term can only match a text holding that word
        # whole, so a text is scanned with the patterns of its own words only (large MeSH/UMLS files)
        self._by_first: Dict[str, List[int]] = {}
        self._always: List[int] = []
        for k, (t, _) in enumerate(self._term_concept.items()):
            first = _WORD.search(t)
            if first is None or first.start() > 0:
                self._always.append(k)
            else:
                self._by_first.setdefault(first.group().casefold(), []).append(k)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> "ConceptHierarchy":
        """Validate the parsed file (see the module docstring); ``ValueError`` names the bad entry."""
        if isinstance(data, Mapping):
            fmt = data.get("format", FORMAT)
            if fmt != FORMAT:
                raise ValueError(f"{source}: unknown format {fmt!r} (expected {FORMAT!r})")
            entries = data.get("concepts")
        else:
            entries = data
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"{source}: expected a non-empty list under 'concepts'")
        concepts: List[Concept] = []
        names: Dict[str, int] = {}
        ids: Dict[str, str] = {}
        owner: Dict[str, str] = {}
        for i, e in enumerate(entries):
            where = f"{source}: concept #{i + 1}"
            if not isinstance(e, Mapping):
                raise ValueError(f"{where} must be a mapping with concept, level, domain, terms")
            unknown = set(e) - {"concept", "level", "domain", "terms", "description", "id", "parents"}
            if unknown:
                raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}")
            name = e.get("concept")
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"{where}: 'concept' must be a non-empty string")
            where = f"{source}: concept {name!r}"
            if name in names:
                raise ValueError(f"{where} is defined twice")
            level = e.get("level")
            if isinstance(level, bool) or not isinstance(level, int) or level not in LEVELS:
                raise ValueError(f"{where}: unknown level {level!r} (levels are 1, 2, 3, 4)")
            domain = e.get("domain")
            if not isinstance(domain, str) or not domain.strip():
                raise ValueError(f"{where}: 'domain' must be a non-empty string")
            terms = e.get("terms")
            if isinstance(terms, str) or not isinstance(terms, list) or not terms:
                raise ValueError(f"{where}: 'terms' must be a non-empty list of strings")
            for t in terms:
                if not isinstance(t, str) or not t.strip():
                    raise ValueError(f"{where}: empty term {t!r}")
                n = _norm(t)
                if n in owner:
                    raise ValueError(f"{where}: duplicate term {t!r} (already a term of {owner[n]!r})")
                owner[n] = name
            cid = e.get("id")
            if cid is not None and (not isinstance(cid, str) or not cid.strip()):
                raise ValueError(f"{where}: 'id' must be a non-empty string")
            if cid is not None and cid in ids:
                raise ValueError(f"{where}: id {cid!r} is also the id of {ids[cid]!r}")
            parents = e.get("parents", [])
            if isinstance(parents, str) or not isinstance(parents, list) or \
                    any(not isinstance(x, str) or not x.strip() for x in parents):
                raise ValueError(f"{where}: 'parents' must be a list of concept ids or names")
            if cid is not None:
                ids[cid] = name
            names[name] = len(concepts)
            concepts.append(Concept(name, level, domain.strip(), tuple(t.strip() for t in terms),
                                    cid, tuple(parents)))
        known = set(names) | set(ids)
        for c in concepts:
            bad = [x for x in c.parents if x not in known]
            if bad:
                raise ValueError(f"{source}: concept {c.name!r}: parent(s) {bad} are not concepts of the file")
        return cls(concepts)

    def __len__(self) -> int:
        return len(self.concepts)

    def parents_of(self, concept: Union[str, Concept]) -> List[Concept]:
        """The parent concepts of a concept (given by name, id or itself)."""
        c = concept if isinstance(concept, Concept) else self.get(concept)
        return [self.get(p) for p in c.parents]

    def get(self, key: str) -> Concept:
        """The concept with this id or name; ``KeyError`` otherwise."""
        if not hasattr(self, "_by_key"):
            self._by_key = {c.name: c for c in self.concepts}
            self._by_key.update({c.id: c for c in self.concepts if c.id is not None})
        if key not in self._by_key:
            raise KeyError(f"no concept {key!r}")
        return self._by_key[key]

    def to_dict(self) -> Dict[str, Any]:
        """The file structure (see the module docstring) of this hierarchy."""
        out = []
        for c in self.concepts:
            e: Dict[str, Any] = {"concept": c.name}
            if c.id is not None:
                e["id"] = c.id
            e.update({"level": c.level, "domain": c.domain, "terms": list(c.terms)})
            if c.parents:
                e["parents"] = list(c.parents)
            out.append(e)
        return {"format": FORMAT, "concepts": out}

    @property
    def domains(self) -> List[str]:
        return sorted({c.domain for c in self.concepts})

    def matches(self, text: str) -> List[Tuple[int, int, int]]:
        """Every term occurrence in ``text`` as ``(start, end, concept_index)`` character spans, sorted;
        occurrences of different terms may overlap."""
        if text.isascii():
            ks = set(self._always)
            for w in {m.group().casefold() for m in _WORD.finditer(text)}:
                ks.update(self._by_first.get(w, ()))
            pats = [self._patterns[k] for k in sorted(ks)]
        else:   # case folding of non-ASCII text can differ from re.IGNORECASE's: scan with every pattern
            pats = self._patterns
        return sorted((m.start(), m.end(), ci) for pat, ci in pats for m in pat.finditer(text))

    def lookup(self, name: str) -> Optional[Concept]:
        """The concept whose name or one of whose terms is ``name`` (case- and whitespace-insensitive),
        else None."""
        key = _norm(name)
        if not hasattr(self, "_by_name"):
            self._by_name = {_norm(c.name): ci for ci, c in enumerate(self.concepts)}
        ci = self._by_name.get(key, self._term_concept.get(key))
        return None if ci is None else self.concepts[ci]

    def heading_concepts(self, heading: str) -> List[Concept]:
        """The concepts a subject heading (e.g. a MeSH descriptor name such as ``"Cholecystectomy,
        Laparoscopic"``) stands for: the concept it names exactly (:meth:`lookup`) when there is one, else
        every concept whose terms occur in it (whole words)."""
        c = self.lookup(heading)
        if c is not None:
            return [c]
        seen, out = set(), []
        for _, _, ci in self.matches(heading):
            if ci not in seen:
                seen.add(ci)
                out.append(self.concepts[ci])
        return out

    def in_domains(self, headings: Iterable[str], domains: Iterable[str], *,
                   target_levels: Iterable[int] = (3, 4)) -> bool:
        """Whether any of ``headings`` stands for (:meth:`heading_concepts`) a concept of ``target_levels``
        in ``domains``: how a record's own subject headings (PubMedQA's ``MESHES``) put it in a forget
        domain."""
        doms, levels = set(domains), set(target_levels)
        missing = doms - set(self.domains)
        if missing:
            raise ValueError(f"domain(s) {sorted(missing)} not in the hierarchy (its domains: {self.domains})")
        return any(c.domain in doms and c.level in levels for h in headings for c in self.heading_concepts(h))

    def tag_offsets(self, text: str, offsets: Sequence[Tuple[int, int]]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-token ``(level, concept)`` for tokens with character ``offsets`` into ``text``: level 0 and
        concept -1 where no term overlaps the token (and for zero-width special tokens)."""
        level = torch.zeros(len(offsets), dtype=torch.long)
        concept = torch.full((len(offsets),), -1, dtype=torch.long)
        best = [(0, 0)] * len(offsets)   # (level, match length) of the winning match per token
        spans = self.matches(text)
        if not spans:
            return level, concept
        for ti, (s, e) in enumerate(offsets):
            if e <= s:
                continue
            for ms, me, ci in spans:
                if s < me and e > ms:
                    key = (self.concepts[ci].level, me - ms)
                    if key > best[ti]:
                        best[ti] = key
                        level[ti] = key[0]
                        concept[ti] = ci
        return level, concept

    def tag(self, tokenizer, text: str, **encode_kw) -> Dict[str, Any]:
        """Tokenize ``text`` with a fast tokenizer and tag its tokens: ``{"input_ids", "offsets", "level",
        "concept"}`` (see :meth:`tag_offsets`)."""
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError("token tagging needs a fast tokenizer (offset mapping); got "
                            f"{type(tokenizer).__name__}")
        enc = tokenizer(text, return_offsets_mapping=True, **encode_kw)
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        level, concept = self.tag_offsets(text, offsets)
        return {"input_ids": list(enc["input_ids"]), "offsets": offsets, "level": level, "concept": concept}

    def roles(self, level: torch.Tensor, concept: torch.Tensor, *, preserve_levels: Iterable[int] = (1, 2),
              target_levels: Iterable[int] = (3, 4),
              forget_domains: Optional[Iterable[str]] = None) -> torch.Tensor:
        """Token roles: :data:`PRESERVE` for concepts of ``preserve_levels``, :data:`TARGET` for concepts of
        ``target_levels`` whose domain is in ``forget_domains`` (every domain when None), else
        :data:`NEUTRAL`."""
        pl, tl = set(preserve_levels), set(target_levels)
        if pl & tl:
            raise ValueError(f"levels {sorted(pl & tl)} cannot be both preserved and targeted")
        doms = None if forget_domains is None else set(forget_domains)
        if doms is not None:
            missing = doms - set(self.domains)
            if missing:
                raise ValueError(f"forget domain(s) {sorted(missing)} not in the hierarchy (its domains: "
                                 f"{self.domains})")
        in_dom = torch.tensor([doms is None or c.domain in doms for c in self.concepts] + [False])
        out = torch.full_like(level, NEUTRAL)
        for lv in pl:
            out[level == lv] = PRESERVE
        tmask = torch.zeros_like(level, dtype=torch.bool)
        for lv in tl:
            tmask |= level == lv
        out[tmask & in_dom[concept]] = TARGET   # concept -1 indexes the trailing False
        return out


def load_hierarchy(path: Union[str, os.PathLike]) -> ConceptHierarchy:
    """Load and validate a hierarchy file (``.yaml``/``.yml`` or ``.json``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"concept hierarchy file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        if ext in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif ext == ".json":
            data = json.loads(text)
        else:
            raise ValueError(f"{path}: unknown hierarchy file type {ext!r} (use .yaml, .yml or .json)")
    except (json.JSONDecodeError, ImportError) as e:
        raise ValueError(f"{path}: cannot parse: {e}") from e
    except RecursionError:
        raise ValueError(f"{path}: cannot parse: nested too deeply") from None
    except Exception as e:  # yaml.YAMLError without importing yaml at module level
        if type(e).__module__.startswith("yaml"):
            raise ValueError(f"{path}: cannot parse YAML: {e}") from e
        raise
    try:
        return ConceptHierarchy.from_dict(data, source=path)
    except RecursionError:
        raise ValueError(f"{path}: the hierarchy is nested too deeply") from None
