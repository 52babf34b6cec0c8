"""`steu hierarchy`: MeSH descriptor XML and UMLS RRF converters on small hand-made excerpts in the official
formats (tests/data/mesh, tests/data/umls*): levels, domains, parents, terms, malformed lines reported with
line numbers, a one-record file, an empty file; the forget domain of PubMedQA through a hierarchy."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from steu_ext.data.concept_sources import LevelMap, from_mesh, from_umls, write_hierarchy
from steu_ext.data.concepts import ConceptHierarchy, load_hierarchy

DATA = Path(__file__).resolve().parent / "data"
SURGERY = LevelMap({"E04": "surgery"})


def _by_id(h):
    return {c.id: c for c in h.concepts}


def test_mesh_levels_parents_terms():
    h, rep = from_mesh(DATA / "mesh" / "desc_excerpt.xml", SURGERY)
    c = _by_id(h)
    assert rep.records == 9 and rep.skipped == 0 and rep.concepts == len(h) == 8
    assert "D008107" not in c                                          # Liver Diseases: in no branch
    assert (c["D013514"].level, c["D013514"].domain) == (3, "surgery")  # the branch root
    assert (c["D013505"].level, c["D013505"].parents) == (3, ("D013514",))   # one level below
    assert (c["D002763"].level, c["D017081"].level) == (4, 4)           # deeper
    assert set(c["D017081"].parents) == {"D002763", "D010535"}          # two tree numbers, two parents
    assert (c["D010535"].level, c["D010535"].domain) == (2, "clinical")  # E01 (clinical) and E04: preserved
    assert (c["D008099"].level, c["D008099"].domain) == (1, "biology")
    assert (c["D010361"].level, c["D011183"].level) == (2, 2)
    # the name and the entry terms; permuted (inverted) terms only when asked
    assert c["D017081"].terms == ("Cholecystectomy, Laparoscopic", "Laparoscopic Cholecystectomy")
    assert "Surgical Procedures, Digestive System" not in c["D013505"].terms
    hp, _ = from_mesh(DATA / "mesh" / "desc_excerpt.xml", SURGERY, permuted=True)
    assert "Surgical Procedures, Digestive System" in _by_id(hp)["D013505"].terms
    assert h.parents_of("D017081")[0].name in ("Cholecystectomy", "Laparoscopy")
    # the nested DescriptorUI of SeeRelatedList (D008099, Liver) did not replace the record's own
    assert c["D002763"].name == "Cholecystectomy"
    # deeper specialty
    deep, _ = from_mesh(DATA / "mesh" / "desc_excerpt.xml", LevelMap({"E04": "surgery"}, specialty_depth=3))
    assert _by_id(deep)["D002763"].level == 3 and _by_id(deep)["D017081"].level == 4


def test_mesh_malformed_one_record_empty(tmp_path):
    h, rep = from_mesh(DATA / "mesh" / "desc_malformed.xml", SURGERY)
    assert rep.skipped == 2 and [c.id for c in h.concepts] == ["D008099"]
    assert any("line 4:" in p and "without a DescriptorUI" in p for p in rep.problems)
    assert any("line 94:" in p and "malformed tree number 'E4.21x'" in p for p in rep.problems)
    with pytest.raises(ValueError, match="line 4: DescriptorRecord without a DescriptorUI"):
        from_mesh(DATA / "mesh" / "desc_malformed.xml", SURGERY, on_malformed="error")
    with pytest.raises(ValueError, match=r"line 20, column \d+: not well-formed XML"):
        from_mesh(DATA / "mesh" / "desc_broken.xml", SURGERY)
    with pytest.raises(ValueError, match="is empty"):
        from_mesh(DATA / "mesh" / "desc_empty.xml", SURGERY)
    one, rep = from_mesh(DATA / "mesh" / "desc_one.xml", SURGERY)
    assert len(one) == 1 and rep.records == 1 and one.concepts[0].level == 3
    with pytest.raises(ValueError, match="no concept falls in the given branches"):
        from_mesh(DATA / "mesh" / "desc_one.xml", LevelMap({"C04": "oncology"}, basic=(), clinical=()))
    with pytest.raises(FileNotFoundError):
        from_mesh(tmp_path / "missing.xml", SURGERY)
    with pytest.raises(ValueError, match="neither a MeSH tree number"):
        LevelMap({"surgery": "E04"})
    with pytest.raises(ValueError, match="both a forget and a basic branch"):
        LevelMap({"A": "x"})


def test_umls_mrhier_and_mrrel():
    h, rep = from_umls(DATA / "umls", SURGERY)
    c = _by_id(h)
    assert set(c) == {"C0543467", "C0012240", "C0040507", "C0008320", "C0162522", "C0031150", "C0023884",
                      "C0030705"}
    assert (c["C0543467"].level, c["C0012240"].level, c["C0040507"].level) == (3, 3, 4)
    assert set(c["C0162522"].parents) == {"C0008320", "C0031150"} and c["C0040507"].parents == ("C0012240",)
    # English MSH strings that are not suppressible: not SNOMED's, not the French one, not the obsolete one
    assert c["C0543467"].terms == ("Surgical Procedures, Operative", "Operative Surgical Procedures",
                                   "Surgery, Operative")
    assert "Gallbladder removal (obsolete)" not in c["C0008320"].terms
    assert c["C0008320"].name == "Cholecystectomy"
    both, _ = from_umls(DATA / "umls", SURGERY, term_sabs=["MSH", "SNOMEDCT_US"])
    assert "Surgical procedure" in _by_id(both)["C0543467"].terms
    # MRREL only: CUI branches, depth by breadth-first search
    r, _ = from_umls(DATA / "umls_rel", LevelMap({"C0543467": "surgery"}, basic=(), clinical=()))
    rc = _by_id(r)
    assert (rc["C0543467"].level, rc["C0031150"].level, rc["C0040507"].level) == (3, 3, 4)
    assert rc["C0012240"].parents == ("C0543467",) and "C0023884" not in rc
    with pytest.raises(ValueError, match="tree-number branches need MRHIER.RRF"):
        from_umls(DATA / "umls_rel", SURGERY)


def test_umls_malformed_one_line_empty(tmp_path):
    h, rep = from_umls(DATA / "umls_bad", SURGERY)
    assert rep.problems == ["MRCONSO.RRF line 3: 5 fields, expected 18",
                            "MRCONSO.RRF line 5: not UTF-8 (invalid start byte at byte 10)",
                            "MRHIER.RRF line 2: malformed tree number 'E4-210' (HCD)"]
    assert "C0012240" not in _by_id(h) and "C0008320" in _by_id(h)
    with pytest.raises(ValueError, match="MRCONSO.RRF line 3: 5 fields, expected 18"):
        from_umls(DATA / "umls_bad", SURGERY, on_malformed="error")
    one, _ = from_umls(DATA / "umls_one", SURGERY)
    assert [(c.id, c.level, c.terms) for c in one.concepts] == [("C0543467", 3, ("Surgical Procedures, Operative",))]
    with pytest.raises(ValueError, match="MRCONSO.RRF is empty"):
        from_umls(DATA / "umls_empty", SURGERY)
    with pytest.raises(FileNotFoundError, match="neither MRHIER.RRF nor MRREL.RRF"):
        (tmp_path / "MRCONSO.RRF").write_text((DATA / "umls_one" / "MRCONSO.RRF").read_text())
        from_umls(tmp_path, SURGERY)


def test_written_file_round_trips_and_is_never_written_over(tmp_path):
    h, _ = from_mesh(DATA / "mesh" / "desc_excerpt.xml", SURGERY)
    for name in ("h.yaml", "h.json"):
        out = write_hierarchy(h, tmp_path / name)
        back = load_hierarchy(out)
        assert [(c.name, c.level, c.domain, c.terms, c.id, c.parents) for c in back.concepts] == \
            [(c.name, c.level, c.domain, c.terms, c.id, c.parents) for c in h.concepts]
    with pytest.raises(FileExistsError):
        write_hierarchy(h, tmp_path / "h.yaml")
    write_hierarchy(h, tmp_path / "h.yaml", overwrite=True)
    notes = tmp_path / "notes.yaml"
    notes.write_text("patient: said something\n")
    with pytest.raises(FileExistsError, match="not a concept hierarchy file"):
        write_hierarchy(h, notes, overwrite=True)
    assert notes.read_text() == "patient: said something\n"
    assert {p.name for p in tmp_path.iterdir()} == {"h.yaml", "h.json", "notes.yaml"}   # no temporary left


def test_parents_must_be_concepts_of_the_file():
    with pytest.raises(ValueError, match=r"parent\(s\) \['D9'\] are not concepts"):
        ConceptHierarchy.from_dict({"concepts": [{"concept": "A", "id": "D1", "level": 3, "domain": "s",
                                                  "terms": ["a"], "parents": ["D9"]}]})
    with pytest.raises(ValueError, match="'id' must be a non-empty string"):
        ConceptHierarchy.from_dict({"concepts": [{"concept": "A", "id": "", "level": 3, "domain": "s", "terms": ["a"]}]})


def test_cli_hierarchy(tmp_path, capsys):
    from steu_ext.cli import main

    out = tmp_path / "surgery.yaml"
    assert main(["hierarchy", "--from-mesh", str(DATA / "mesh" / "desc_malformed.xml"), "--forget-branch",
                 "E04=surgery", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "line 4: DescriptorRecord without a DescriptorUI" in err and "line 94:" in err
    assert [c.id for c in load_hierarchy(out).concepts] == ["D008099"]
    assert main(["hierarchy", "--from-mesh", str(DATA / "mesh" / "desc_excerpt.xml"), "--forget-branch",
                 "E04=surgery", "--out", str(out)]) == 2                      # exists
    assert main(["hierarchy", "--from-mesh", str(DATA / "mesh" / "desc_excerpt.xml"), "--forget-branch",
                 "E04=surgery", "--out", str(out), "--overwrite"]) == 0
    assert len(load_hierarchy(out)) == 8
    j = tmp_path / "u.json"
    assert main(["hierarchy", "--from-umls", str(DATA / "umls"), "--forget-branch", "E04=surgery",
                 "--out", str(j)]) == 0
    assert json.loads(j.read_text())["format"] == "steu_ext.concepts/1"
    assert main(["hierarchy", "--from-mesh", str(DATA / "mesh" / "desc_empty.xml"), "--forget-branch",
                 "E04=surgery", "--out", str(tmp_path / "e.yaml")]) == 2
    assert main(["hierarchy", "--from-mesh", str(DATA / "mesh" / "desc_excerpt.xml"), "--out",
                 str(tmp_path / "e.yaml")]) == 2                               # no forget branch
    assert main(["hierarchy", "--from-mesh", str(DATA / "mesh" / "desc_excerpt.xml"), "--forget-branch", "E04",
                 "--out", str(tmp_path / "e.yaml")]) == 2
    assert not (tmp_path / "e.yaml").exists()


def test_pubmedqa_forget_domain_from_its_meshes_through_the_hierarchy(tmp_path, pubmedqa_path):
    """An item is in the forget domain when one of its own MeSH headings stands for a level 3-4 concept of
    the domain: the concept the heading names (a MeSH-built hierarchy), else the concepts it mentions."""
    from steu_ext.data.qa import load_pubmedqa

    h, _ = from_mesh(DATA / "mesh" / "desc_excerpt.xml", SURGERY)
    assert h.in_domains(["Humans", "Cholecystectomy, Laparoscopic"], ["surgery"])
    assert not h.in_domains(["Laparoscopy", "Liver"], ["surgery"])          # named concepts of levels 1-2
    assert not h.in_domains(["Postoperative Complications"], ["surgery"])
    assert h.in_domains(["Emergency Cholecystectomy"], ["surgery"])         # mentions a level-4 term
    with pytest.raises(ValueError, match="not in the hierarchy"):
        h.in_domains(["Liver"], ["cardiology"])
    items = load_pubmedqa(pubmedqa_path, hierarchy=h, forget_domains=["surgery"])
    forget = [i for i in items if i.forget]
    assert forget and all(h.in_domains(i.tags, ["surgery"]) for i in forget)
    assert all(not h.in_domains(i.tags, ["surgery"]) for i in items if not i.forget)
    with pytest.raises(ValueError, match="give both hierarchy and forget_domains"):
        load_pubmedqa(pubmedqa_path, hierarchy=h)


def test_cli_hds_picks_the_pubmedqa_forget_domain_through_the_hierarchy(tmp_path, pubmedqa_path):
    from steu_ext.cli import _load_qa, build_parser
    from steu_ext.data.concepts import example_hierarchy_path
    from steu_ext.data.qa import load_pubmedqa

    h = example_hierarchy_path()
    a = build_parser().parse_args(["hds", "--data", str(pubmedqa_path), "--teach-tiny", "--hierarchy", h,
                                   "--forget-domains", "surgery", "--out", str(tmp_path / "o")])
    got = [i.forget for i in _load_qa(a)]
    assert got == [i.forget for i in load_pubmedqa(pubmedqa_path, hierarchy=load_hierarchy(h),
                                                   forget_domains=["surgery"])]
    a.forget_mesh = "ectomy"                       # explicit substrings still win
    assert [i.forget for i in _load_qa(a)] == [i.forget for i in load_pubmedqa(pubmedqa_path, ["ectomy"])] != got
