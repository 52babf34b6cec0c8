"""``steu hierarchy``: build an HDS concept hierarchy file from MeSH descriptor XML or a UMLS release."""
from __future__ import annotations

import os
import sys

from ._common import EXIT_OK, BadInput


def register(sub) -> None:
    """``steu hierarchy`` and its options."""
    p = sub.add_parser("hierarchy", help="build an HDS concept hierarchy from MeSH XML or a UMLS release",
                       description="Streams MeSH descriptor XML (desc20XX.xml) or a UMLS folder (MRCONSO.RRF with "
                                   "MRHIER.RRF or MRREL.RRF) into the 4-level hierarchy file HDS reads. Levels: "
                                   "forget branches -> 3 (root and --specialty-depth levels below) / 4 (deeper); "
                                   "basic branches -> 1; clinical branches -> 2; preserving levels win over "
                                   "targeted ones. Malformed lines are reported with their line numbers.")
    p.add_argument("--from-mesh", default=None, help="MeSH descriptor XML file")
    p.add_argument("--from-umls", default=None, help="UMLS META folder (MRCONSO.RRF + MRHIER.RRF or MRREL.RRF)")
    p.add_argument("--forget-branch", action="append", help="BRANCH=DOMAIN, repeatable: a MeSH tree number "
                                                             "(E04=surgery) or, for UMLS, a CUI")
    p.add_argument("--basic-branches", default="A,G", help="level 1 (basic biology) branches, comma-separated")
    p.add_argument("--clinical-branches", default="C23,E01,M01,N05",
                   help="level 2 (general clinical skills) branches, comma-separated")
    p.add_argument("--specialty-depth", type=int, default=1,
                   help="forget-branch nodes at most this deep below the branch are level 3, deeper ones level 4")
    p.add_argument("--sab", default="MSH", help="UMLS: the source vocabulary whose hierarchy places the concepts")
    p.add_argument("--term-sabs", default=None, help="UMLS: source vocabularies whose strings become terms "
                                                      "(default: --sab)")
    p.add_argument("--permuted", action="store_true", help="MeSH: also the permuted (inverted) entry terms")
    p.add_argument("--min-term-chars", type=int, default=3, help="drop shorter terms")
    p.add_argument("--on-malformed", default="skip", choices=["skip", "error"],
                   help="malformed lines/records: report (line numbers) and skip, or stop")
    p.add_argument("--out", required=True, help="hierarchy file to write (.yaml, .yml or .json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing hierarchy file")
    p.set_defaults(func=cmd_hierarchy)


def cmd_hierarchy(a) -> int:
    """Build an HDS concept hierarchy file from MeSH descriptor XML or a UMLS release folder."""
    from ..data.concept_sources import LevelMap, from_mesh, from_umls, write_hierarchy

    if bool(a.from_mesh) == bool(a.from_umls):
        raise BadInput("give exactly one of --from-mesh desc.xml and --from-umls DIR")
    forget = {}
    for spec in a.forget_branch or []:
        branch, _, domain = spec.partition("=")
        if not branch or not domain:
            raise BadInput(f"--forget-branch {spec!r}: use BRANCH=DOMAIN, e.g. E04=surgery")
        forget[branch.strip()] = domain.strip()
    if not forget:
        raise BadInput("give at least one --forget-branch BRANCH=DOMAIN (e.g. E04=surgery)")

    def split(v):
        return [x.strip() for x in v.split(",") if x.strip()] if v else []

    levels = LevelMap(forget, basic=split(a.basic_branches), clinical=split(a.clinical_branches),
                      specialty_depth=a.specialty_depth)
    if a.from_mesh:
        h, rep = from_mesh(a.from_mesh, levels, min_term_chars=a.min_term_chars, permuted=a.permuted,
                           on_malformed=a.on_malformed)
        src = f"MeSH descriptors {os.path.basename(a.from_mesh)}"
    else:
        h, rep = from_umls(a.from_umls, levels, sab=a.sab, term_sabs=split(a.term_sabs) or None,
                           min_term_chars=a.min_term_chars, on_malformed=a.on_malformed)
        src = f"UMLS {os.path.basename(os.path.normpath(a.from_umls))} (hierarchy of {a.sab})"
    header = (f"steu hierarchy: built from {src}\nforget branches {forget}; level 1 {levels.basic}, level 2 "
              f"{levels.clinical}; levels 3/4 below / beyond depth {levels.specialty_depth} of a forget branch")
    try:
        write_hierarchy(h, a.out, overwrite=a.overwrite, header=header)
    except FileExistsError as e:
        raise BadInput(str(e)) from None
    for msg in rep.problems[:20]:
        print(f"skipped: {msg}", file=sys.stderr)
    if rep.skipped > 20:
        print(f"... {rep.skipped - 20} more malformed lines/records skipped", file=sys.stderr)
    levels_txt = ", ".join(f"level {k}: {v}" for k, v in sorted(rep.by_level.items()))
    print(f"{rep.concepts:,} concepts ({levels_txt}), {rep.terms:,} terms from {rep.records:,} records; "
          f"skipped {rep.skipped} malformed; dropped terms: {rep.dropped_terms['shared']} shared, "
          f"{rep.dropped_terms['short']} too short -> {a.out}")
    return EXIT_OK
