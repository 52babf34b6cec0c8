"""Build an HDS concept hierarchy (:mod:`steu_ext.data.concepts`) from the user's own vocabulary files.

* :func:`from_mesh`: a MeSH descriptor XML file (``desc20XX.xml``, public domain, from NLM), read as a stream
  (SAX: the 300 MB file is never held in memory).
* :func:`from_umls`: a UMLS Metathesaurus release folder (licence required): ``MRCONSO.RRF`` (strings) and
  ``MRHIER.RRF`` (paths to the root; preferred) or ``MRREL.RRF`` (``PAR``/``CHD`` relations), read line by
  line (these files are GBs).

**Level mapping** (:class:`LevelMap`). A node is placed by the most specific *branch* that contains it:

* ``forget`` branches (e.g. MeSH tree ``E04`` "Surgical Procedures, Operative" -> domain ``surgery``):
  level **3** (specialty knowledge) for the branch root and nodes at most ``specialty_depth`` levels below
  it, level **4** (specific restricted detail) deeper;
* ``basic`` branches (default MeSH ``A`` Anatomy, ``G`` Phenomena and Processes): level **1**, domain
  ``biology``;
* ``clinical`` branches (default MeSH ``C23`` Pathological Conditions, Signs and Symptoms, ``E01``
  Diagnosis, ``M01`` Persons, ``N05`` Health Care Quality, Access, and Evaluation): level **2**, domain
  ``clinical``;
* anything else is left out (its tokens stay neutral).

A branch is a MeSH tree number prefix (``E04``, ``C04.588``; a single letter is a whole category) or, for
UMLS, also a CUI (``C0038895``: the concept and everything below it). A node with several positions (MeSH
descriptors have several tree numbers) takes, for each, the branch with the longest match; then a
preserving level (1-2) wins over a targeted one (what must never be forgotten is never targeted), the lower
preserving level first, else the most specific targeted level. Parents are the nodes one step up that are in
the output. Terms: the name and every entry term / English string of the node (MeSH: every ``Term`` of every
``Concept``, permuted ones too unless ``permuted=False``); terms shorter than ``min_term_chars`` are dropped,
and a term shared by several nodes goes to one only (the lowest level, then the first read), as the
hierarchy format requires; the counts are reported.

Malformed input (a record without its identifier or name, a bad tree number, an RRF line with the wrong
number of fields, undecodable bytes) is reported with its line number and skipped (``on_malformed="skip"``,
the default; the report lists the first 50) or stops the conversion (``"error"``). Not well-formed XML and
empty files are errors.
"""
from __future__ import annotations

import json
import os
import re
import xml.sax
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

from .concepts import FORMAT, ConceptHierarchy

__all__ = ["LevelMap", "ConversionReport", "from_mesh", "from_umls", "write_hierarchy"]

TREE_NUMBER = re.compile(r"^[A-Z](\d\d(\.\d{3})*)?$")
CUI = re.compile(r"^C\d{7}$")
MAX_REPORTED = 50


@dataclass
class LevelMap:
    """Which branches become which levels and domains (see the module docstring)."""
    forget: Dict[str, str]                                   # branch -> forget domain name
    basic: Sequence[str] = ("A", "G")
    clinical: Sequence[str] = ("C23", "E01", "M01", "N05")
    specialty_depth: int = 1
    basic_domain: str = "biology"
    clinical_domain: str = "clinical"

    def __post_init__(self):
        if not self.forget:
            raise ValueError("name at least one forget branch (e.g. MeSH tree number E04 for surgery)")
        if self.specialty_depth < 0:
            raise ValueError("specialty_depth must be >= 0")
        seen: Dict[str, str] = {}
        for kind, specs in (("forget", list(self.forget)), ("basic", list(self.basic)),
                            ("clinical", list(self.clinical))):
            for b in specs:
                if not (TREE_NUMBER.match(b) or CUI.match(b)):
                    raise ValueError(f"{kind} branch {b!r} is neither a MeSH tree number (E04, C04.588) nor a "
                                     f"UMLS CUI (C0038895)")
                if b in seen:
                    raise ValueError(f"branch {b!r} is both a {seen[b]} and a {kind} branch")
                seen[b] = kind
        for b, d in self.forget.items():
            if not isinstance(d, str) or not d.strip():
                raise ValueError(f"forget branch {b!r} needs a domain name")

    def branches(self) -> List[Tuple[str, str, str]]:
        """(spec, kind, domain) for every branch."""
        return ([(b, "forget", d) for b, d in self.forget.items()] + [(b, "basic", self.basic_domain)
                                                                        for b in self.basic]
                + [(b, "clinical", self.clinical_domain) for b in self.clinical])

    def place_tree(self, tree: str) -> Optional[Tuple[int, str, int]]:
        """(level, domain, specificity) of a MeSH tree number, or None outside every branch."""
        best = None
        for spec, kind, dom in self.branches():
            if CUI.match(spec):
                continue
            if len(spec) == 1:
                if tree[0] != spec:
                    continue
                depth, spec_len = len(tree.split(".")), 0
            else:
                if tree != spec and not tree.startswith(spec + "."):
                    continue
                spec_len = len(spec.split("."))
                depth = len(tree.split(".")) - spec_len
            if best is None or spec_len > best[2]:
                best = (self._level(kind, depth), dom, spec_len)
        return best

    def place_path(self, cuis: Sequence[str]) -> Optional[Tuple[int, str, int]]:
        """(level, domain, specificity) of a node from its path of CUIs (root first, the node last), for
        CUI branches; the deepest branch on the path wins."""
        best = None
        for spec, kind, dom in self.branches():
            if not CUI.match(spec) or spec not in cuis:
                continue
            at = len(cuis) - 1 - cuis[::-1].index(spec)
            key = at + 1
            if best is None or key > best[2]:
                best = (self._level(kind, len(cuis) - 1 - at), dom, key)
        return best

    def _level(self, kind: str, depth: int) -> int:
        if kind == "basic":
            return 1
        if kind == "clinical":
            return 2
        return 3 if depth <= self.specialty_depth else 4


@dataclass
class ConversionReport:
    """What a conversion read, kept and skipped; ``problems`` holds the first malformed lines."""
    records: int = 0
    concepts: int = 0
    terms: int = 0
    skipped: int = 0
    dropped_terms: Dict[str, int] = field(default_factory=lambda: {"short": 0, "shared": 0})
    problems: List[str] = field(default_factory=list)
    by_level: Dict[int, int] = field(default_factory=dict)

    def problem(self, msg: str, on_malformed: str) -> None:
        if on_malformed == "error":
            raise ValueError(msg)
        self.skipped += 1
        if len(self.problems) < MAX_REPORTED:
            self.problems.append(msg)


@dataclass
class _Node:
    key: str
    name: str
    places: List[Tuple[int, str, int]] = field(default_factory=list)
    parents: set = field(default_factory=set)
    terms: List[str] = field(default_factory=list)


def _resolve_level(places: List[Tuple[int, str, int]]) -> Optional[Tuple[int, str]]:
    keep = [p for p in places if p is not None]
    if not keep:
        return None
    pres = [p for p in keep if p[0] <= 2]
    if pres:
        lv, dom, _ = min(pres, key=lambda p: (p[0], -p[2]))
        return lv, dom
    lv, dom, _ = max(keep, key=lambda p: (p[0], p[2]))
    return lv, dom


def _build(nodes: Dict[str, _Node], min_term_chars: int, report: ConversionReport) -> ConceptHierarchy:
    """Nodes with a level -> a validated ConceptHierarchy (terms deduplicated across nodes)."""
    placed = {}
    for k, n in nodes.items():
        lv = _resolve_level(n.places)
        if lv is not None and n.name:
            placed[k] = lv
    owner: Dict[str, str] = {}
    # the lowest level claims a shared term first, then reading order
    order = sorted(placed, key=lambda k: placed[k][0])
    kept_terms: Dict[str, List[str]] = {}
    used_names: Dict[str, str] = {}
    for k in order:
        n = nodes[k]
        mine = []
        for t in [n.name] + n.terms:
            t = " ".join(t.split())
            norm = t.lower()
            if len(t) < min_term_chars:
                report.dropped_terms["short"] += 1
                continue
            if norm in owner:
                if owner[norm] != k:
                    report.dropped_terms["shared"] += 1
                continue
            owner[norm] = k
            mine.append(t)
        kept_terms[k] = mine
    concepts = []
    for k in nodes:
        if k not in placed or not kept_terms.get(k):
            continue
        n = nodes[k]
        name = n.name if n.name not in used_names else f"{n.name} ({k})"
        used_names[name] = k
        lv, dom = placed[k]
        parents = sorted(p for p in n.parents if p in placed and kept_terms.get(p) and p != k)
        concepts.append({"concept": name, "id": k, "level": lv, "domain": dom, "terms": kept_terms[k],
                         **({"parents": parents} if parents else {})})
        report.by_level[lv] = report.by_level.get(lv, 0) + 1
    if not concepts:
        raise ValueError("no concept falls in the given branches (check the branch codes and the input files)")
    report.concepts, report.terms = len(concepts), sum(len(c["terms"]) for c in concepts)
    return ConceptHierarchy.from_dict({"format": FORMAT, "concepts": concepts}, source="converted hierarchy")


# ---------------------------------------------------------------------------------------------------
# MeSH descriptor XML


class _MeshHandler(xml.sax.ContentHandler):
    def __init__(self, levels: LevelMap, nodes: Dict[str, _Node], tree_of: Dict[str, str], report, on_malformed,
                 path, permuted):
        super().__init__()
        self.levels, self.nodes, self.tree_of, self.report = levels, nodes, tree_of, report
        self.on_malformed, self.path, self.permuted = on_malformed, path, permuted
        self.stack: List[str] = []
        self.buf: List[str] = []
        self.rec = None
        self.locator = None
        self.term_permuted = False

    def setDocumentLocator(self, locator):
        self.locator = locator

    def _line(self) -> int:
        return self.locator.getLineNumber() if self.locator is not None else 0

    def startElement(self, name, attrs):
        self.stack.append(name)
        self.buf = []
        if name == "DescriptorRecord" and len(self.stack) == 2:
            self.rec = {"line": self._line(), "ui": None, "name": None, "trees": [], "terms": []}
        elif name == "Term" and self.rec is not None:
            self.term_permuted = attrs.get("IsPermutedTermYN", "N") == "Y"

    def characters(self, content):
        self.buf.append(content)

    def endElement(self, name):
        text = "".join(self.buf).strip()
        path = tuple(self.stack[1:])   # below DescriptorRecordSet
        self.stack.pop()
        self.buf = []
        r = self.rec
        if r is None:
            return
        if path == ("DescriptorRecord", "DescriptorUI"):
            r["ui"] = text
        elif path == ("DescriptorRecord", "DescriptorName", "String"):
            r["name"] = text
        elif path == ("DescriptorRecord", "TreeNumberList", "TreeNumber"):
            r["trees"].append((text, self._line()))
        elif path == ("DescriptorRecord", "ConceptList", "Concept", "TermList", "Term", "String"):
            if self.permuted or not self.term_permuted:
                r["terms"].append(text)
        elif path == ("DescriptorRecord",):
            self._finish(r)
            self.rec = None

    def _finish(self, r):
        rep, where = self.report, f"{self.path}: line {r['line']}"
        rep.records += 1
        if not r["ui"]:
            return rep.problem(f"{where}: DescriptorRecord without a DescriptorUI", self.on_malformed)
        if not r["name"]:
            return rep.problem(f"{where}: DescriptorRecord {r['ui']} without a DescriptorName", self.on_malformed)
        node = _Node(r["ui"], r["name"], terms=r["terms"])
        for tree, line in r["trees"]:
            if not TREE_NUMBER.match(tree) or len(tree) == 1:
                rep.problem(f"{self.path}: line {line}: descriptor {r['ui']}: malformed tree number {tree!r}",
                            self.on_malformed)
                continue
            self.tree_of[tree] = r["ui"]
            node.places.append(self.levels.place_tree(tree))
            node.parents.add(tree.rsplit(".", 1)[0] if "." in tree else None)
        node.parents.discard(None)
        if any(p is not None for p in node.places):
            self.nodes[r["ui"]] = node


def from_mesh(path: Union[str, os.PathLike], levels: LevelMap, *, min_term_chars: int = 3, permuted: bool = False,
              on_malformed: str = "skip") -> Tuple[ConceptHierarchy, ConversionReport]:
    """The hierarchy of a MeSH descriptor XML file (``desc20XX.xml``), streamed; see the module docstring."""
    path = _need_file(path)
    _check_on_malformed(on_malformed)
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty")
    nodes: Dict[str, _Node] = {}
    tree_of: Dict[str, str] = {}
    report = ConversionReport()
    parser = xml.sax.make_parser()
    for feat in (xml.sax.handler.feature_external_ges, xml.sax.handler.feature_external_pes):
        parser.setFeature(feat, False)   # no network, no file access for DTDs or entities
    parser.setContentHandler(_MeshHandler(levels, nodes, tree_of, report, on_malformed, path, permuted))
    try:
        with open(path, "rb") as f:
            parser.parse(f)
    except xml.sax.SAXParseException as e:
        raise ValueError(f"{path}: line {e.getLineNumber()}, column {e.getColumnNumber()}: not well-formed XML: "
                         f"{e.getMessage()}") from None
    if report.records == 0:
        raise ValueError(f"{path}: no DescriptorRecord (is it a MeSH descriptor file?)")
    for n in nodes.values():   # parent tree numbers -> parent descriptors
        n.parents = {tree_of[t] for t in n.parents if t in tree_of}
    return _build(nodes, min_term_chars, report), report


# ---------------------------------------------------------------------------------------------------
# UMLS Metathesaurus (RRF)

MRCONSO_FIELDS = 18   # CUI|LAT|TS|LUI|STT|SUI|ISPREF|AUI|SAUI|SCUI|SDUI|SAB|TTY|CODE|STR|SRL|SUPPRESS|CVF|
MRHIER_FIELDS = 9     # CUI|AUI|CXN|PAUI|SAB|RELA|PTR|HCD|CVF|
MRREL_FIELDS = 16     # CUI1|AUI1|STYPE1|REL|CUI2|AUI2|STYPE2|RELA|RUI|SRUI|SAB|SL|RG|DIR|SUPPRESS|CVF|


def _rrf(path: str, n_fields: int, report: Optional[ConversionReport], on_malformed: str
         ) -> Iterator[Tuple[int, List[str]]]:
    """(line number, fields) of every well-formed line of an RRF file; malformed ones are reported (and
    skipped silently with ``report=None``: a second pass over a file already reported)."""
    name = os.path.basename(path)
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty")
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                if report is not None:
                    report.problem(f"{name} line {n}: not UTF-8 ({e.reason} at byte {e.start})", on_malformed)
                continue
            if not line:
                continue
            parts = line.split("|")
            if parts and parts[-1] == "":
                parts = parts[:-1]
            if len(parts) != n_fields:
                if report is not None:
                    report.problem(f"{name} line {n}: {len(parts)} fields, expected {n_fields}", on_malformed)
                continue
            yield n, parts


def from_umls(folder: Union[str, os.PathLike], levels: LevelMap, *, sab: str = "MSH",
              term_sabs: Optional[Sequence[str]] = None, languages: Sequence[str] = ("ENG",),
              min_term_chars: int = 3, on_malformed: str = "skip") -> Tuple[ConceptHierarchy, ConversionReport]:
    """The hierarchy of a UMLS release folder: positions from ``sab``'s hierarchy (``MRHIER.RRF``: the
    paths to the root and, for MSH, the tree numbers in ``HCD``; else ``MRREL.RRF``'s ``PAR``/``CHD``
    relations of ``sab``, for CUI branches only), terms from the ``term_sabs`` strings (default: ``sab``)
    in ``languages`` that are not suppressible (``SUPPRESS`` = N). Nodes are CUIs."""
    folder = os.fspath(folder)
    _check_on_malformed(on_malformed)
    conso = _need_file(os.path.join(folder, "MRCONSO.RRF"))
    hier, rel = os.path.join(folder, "MRHIER.RRF"), os.path.join(folder, "MRREL.RRF")
    if not os.path.isfile(hier) and not os.path.isfile(rel):
        raise FileNotFoundError(f"{folder}: neither MRHIER.RRF nor MRREL.RRF (one is needed for the hierarchy)")
    term_sabs = set(term_sabs or [sab])
    langs = set(languages)
    report = ConversionReport()
    aui_cui: Dict[str, str] = {}
    for _, p in _rrf(conso, MRCONSO_FIELDS, report, on_malformed):
        if p[11] == sab:
            aui_cui[p[7]] = p[0]
    nodes: Dict[str, _Node] = {}
    if os.path.isfile(hier):
        for n, p in _rrf(hier, MRHIER_FIELDS, report, on_malformed):
            if p[4] != sab:
                continue
            report.records += 1
            cui, paui, ptr, hcd = p[0], p[3], p[6], p[7]
            path_cuis = [aui_cui.get(a, "") for a in ptr.split(".") if a] + [cui]
            place = None
            if hcd:
                if not TREE_NUMBER.match(hcd) or len(hcd) == 1:
                    report.problem(f"MRHIER.RRF line {n}: malformed tree number {hcd!r} (HCD)", on_malformed)
                else:
                    place = levels.place_tree(hcd)
            cplace = levels.place_path(path_cuis)
            if cplace is not None and (place is None or cplace[2] >= place[2]):
                place = cplace
            if place is None:
                continue
            node = nodes.setdefault(cui, _Node(cui, ""))
            node.places.append(place)
            if paui and paui in aui_cui:
                node.parents.add(aui_cui[paui])
    else:
        if any(TREE_NUMBER.match(b) for b, _, _ in levels.branches()):
            raise ValueError(f"{folder}: tree-number branches need MRHIER.RRF (its HCD field); with MRREL.RRF "
                             "only, give the branches as CUIs")
        children: Dict[str, set] = defaultdict(set)
        parents: Dict[str, set] = defaultdict(set)
        for _, p in _rrf(rel, MRREL_FIELDS, report, on_malformed):
            if p[10] != sab or p[3] not in ("PAR", "CHD") or p[0] == p[4]:
                continue
            child, parent = (p[0], p[4]) if p[3] == "PAR" else (p[4], p[0])
            children[parent].add(child)
            parents[child].add(parent)
        sab_cuis = set(aui_cui.values())
        for spec, kind, dom in levels.branches():   # breadth first below every branch CUI
            depth = {spec: 0}
            frontier = [spec]
            while frontier:
                nxt = []
                for c in frontier:
                    for ch in sorted(children.get(c, ())):
                        if ch not in depth:
                            depth[ch] = depth[c] + 1
                            nxt.append(ch)
                frontier = nxt
            if spec not in sab_cuis and not children.get(spec):
                continue   # a branch CUI the source does not have
            for c, d in depth.items():
                node = nodes.setdefault(c, _Node(c, ""))
                node.places.append((levels._level(kind, d), dom, 1))
                node.parents |= parents.get(c, set())
        report.records = len(nodes)
    # strings of the kept CUIs
    pref: Dict[str, Tuple[int, str]] = {}
    for _, p in _rrf(conso, MRCONSO_FIELDS, None, on_malformed):
        cui = p[0]
        if cui not in nodes or p[1] not in langs or p[16] != "N" or p[11] not in term_sabs:
            continue
        s = p[14].strip()
        if not s:
            continue
        node = nodes[cui]
        node.terms.append(s)
        rank = 0 if (p[2], p[4], p[6]) == ("P", "PF", "Y") and p[11] == sab else (1 if p[6] == "Y" else 2)
        if cui not in pref or rank < pref[cui][0]:
            pref[cui] = (rank, s)
    for cui, node in nodes.items():
        if cui in pref:
            node.name = pref[cui][1]
    return _build(nodes, min_term_chars, report), report


# ---------------------------------------------------------------------------------------------------


def write_hierarchy(hierarchy: ConceptHierarchy, path: Union[str, os.PathLike], *, overwrite: bool = False,
                    header: Optional[str] = None) -> str:
    """Write ``hierarchy`` as YAML (``.yaml``/``.yml``) or JSON (``.json``), atomically. An existing file is
    replaced only with ``overwrite`` and only when it is itself a hierarchy file (``format:
    steu_ext.concepts/1``); anything else is never overwritten."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".yaml", ".yml", ".json"):
        raise ValueError(f"{path}: use a .yaml, .yml or .json file name")
    if os.path.exists(path):
        if not overwrite:
            raise FileExistsError(f"{path} exists (overwrite=True / --overwrite replaces a hierarchy file)")
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
        if FORMAT not in head:
            raise FileExistsError(f"{path} exists and is not a concept hierarchy file ({FORMAT}): not replacing it")
    data = hierarchy.to_dict()
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            if ext == ".json":
                json.dump(data, f, indent=1, ensure_ascii=False)
            else:
                import yaml

                if header:
                    f.write("".join(f"# {line}\n" for line in header.splitlines()))
                f.write(f"format: {FORMAT}\nconcepts:\n")
                for c in data["concepts"]:
                    line = yaml.safe_dump(c, default_flow_style=True, allow_unicode=True, width=10 ** 9,
                                          sort_keys=False)
                    f.write("  - " + line.strip() + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _need_file(path) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file not found: {path}")
    return path


def _check_on_malformed(v: str) -> None:
    if v not in ("skip", "error"):
        raise ValueError(f"on_malformed must be 'skip' or 'error', got {v!r}")
