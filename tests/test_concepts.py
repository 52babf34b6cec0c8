"""Concept hierarchy files: parsing, validation errors, and token tagging through offset mappings
(hand-checked against a fixed WordPiece vocabulary, so sub-word splits are known in advance)."""
from __future__ import annotations

import json

import pytest
import torch

from steu_ext.data.concepts import (
    NEUTRAL,
    PRESERVE,
    TARGET,
    ConceptHierarchy,
    example_hierarchy_path,
    load_hierarchy,
)

YAML = """
format: steu_ext.concepts/1
concepts:
  - {concept: Cell, level: 1, domain: biology, terms: [cell, cells]}
  - {concept: Patient, level: 2, domain: clinical, terms: [patients]}
  - {concept: Cardiac surgery, level: 3, domain: surgery, terms: [cardiac surgery, coronary artery bypass]}
  - {concept: Bypass, level: 4, domain: surgery, terms: [bypass]}
  - {concept: Cholecystectomy, level: 4, domain: surgery, terms: [cholecystectomy]}
  - {concept: Laparoscopy, level: 3, domain: surgery, terms: [laparoscopic]}
  - {concept: Cardiology, level: 3, domain: cardiology, terms: [cardiac]}
"""


def wordpiece(words):
    """A BERT-style lower-case WordPiece fast tokenizer over exactly ``words`` (deterministic splits)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + list(words))}
    tk = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]")


@pytest.fixture
def hierarchy(tmp_path):
    p = tmp_path / "h.yaml"
    p.write_text(YAML)
    return load_hierarchy(p)


@pytest.fixture
def tok():
    return wordpiece(["laparoscopic", "cho", "##le", "##cy", "##stectomy", "in", "patients", "with", "cell",
                      "##s", "after", "coronary", "artery", "bypass", "cardiac", "surgery", ".", ",", "the"])


def tagged(h, tok, text):
    r = h.tag(tok, text)
    return [(t, int(lv)) for t, lv in zip(tok.convert_ids_to_tokens(r["input_ids"]), r["level"])], r


def test_parse_example_and_json_equivalent(hierarchy, tmp_path):
    assert len(hierarchy) == 7
    assert hierarchy.domains == ["biology", "cardiology", "clinical", "surgery"]
    assert hierarchy.concepts[2].terms == ("cardiac surgery", "coronary artery bypass")
    import yaml

    j = tmp_path / "h.json"
    j.write_text(json.dumps(yaml.safe_load(YAML)))
    assert load_hierarchy(j).concepts == hierarchy.concepts
    shipped = load_hierarchy(example_hierarchy_path())
    assert "surgery" in shipped.domains and {c.level for c in shipped.concepts} == {1, 2, 3, 4}


def test_tagging_subword_splits_and_case(hierarchy, tok):
    # "Cholecystectomy" -> cho ##le ##cy ##stectomy: all four pieces carry the level-4 concept
    got, r = tagged(hierarchy, tok, "Laparoscopic CHOLECYSTECTOMY in patients with cells.")
    assert got == [("[CLS]", 0), ("laparoscopic", 3), ("cho", 4), ("##le", 4), ("##cy", 4), ("##stectomy", 4),
                   ("in", 0), ("patients", 2), ("with", 0), ("cell", 1), ("##s", 1), (".", 0), ("[SEP]", 0)]
    names = [hierarchy.concepts[c].name if c >= 0 else None for c in r["concept"].tolist()]
    assert names[2:6] == ["Cholecystectomy"] * 4 and names[9:11] == ["Cell"] * 2


def test_tagging_overlaps_most_specific_wins(hierarchy, tok):
    # "coronary artery bypass" (level 3) overlaps "bypass" (level 4); "cardiac surgery" (3) overlaps
    # "cardiac" (3, cardiology): the same level, so the longer match (surgery domain) wins
    got, r = tagged(hierarchy, tok, "after coronary artery bypass, cardiac surgery")
    assert got == [("[CLS]", 0), ("after", 0), ("coronary", 3), ("artery", 3), ("bypass", 4), (",", 0),
                   ("cardiac", 3), ("surgery", 3), ("[SEP]", 0)]
    assert hierarchy.concepts[int(r["concept"][4])].name == "Bypass"
    assert hierarchy.concepts[int(r["concept"][6])].name == "Cardiac surgery"
    # multi-word terms match across any whitespace, whole words only
    assert [m[2] for m in hierarchy.matches("coronary \n artery  bypass")] == [2, 3]
    assert hierarchy.matches("bypassed cells cellular") == [(9, 14, 0)]


def test_roles_by_level_and_domain(hierarchy, tok):
    _, r = tagged(hierarchy, tok, "Laparoscopic cholecystectomy in patients with cells, cardiac")
    roles = hierarchy.roles(r["level"], r["concept"], forget_domains=["surgery"]).tolist()
    # [CLS] laparoscopic cho ##le ##cy ##stectomy in patients with cell ##s , cardiac [SEP]
    assert roles == [NEUTRAL, TARGET, TARGET, TARGET, TARGET, TARGET, NEUTRAL, PRESERVE, NEUTRAL, PRESERVE,
                     PRESERVE, NEUTRAL, NEUTRAL, NEUTRAL]   # cardiac: level 3 of another domain
    every = hierarchy.roles(r["level"], r["concept"]).tolist()
    assert every[12] == TARGET
    with pytest.raises(ValueError, match="not in the hierarchy"):
        hierarchy.roles(r["level"], r["concept"], forget_domains=["dermatology"])
    with pytest.raises(ValueError, match="both preserved and targeted"):
        hierarchy.roles(r["level"], r["concept"], preserve_levels=(1, 3))


def test_tag_needs_fast_tokenizer(hierarchy):
    class Slow:
        is_fast = False

    with pytest.raises(TypeError, match="fast tokenizer"):
        hierarchy.tag(Slow(), "cells")


def test_no_match_gives_neutral(hierarchy, tok):
    r = hierarchy.tag(tok, "the the the")
    assert torch.equal(r["level"], torch.zeros(5, dtype=torch.long))
    assert r["concept"].tolist() == [-1] * 5


BAD = [
    ("concepts: []", "non-empty list"),
    ("concepts:\n  - {concept: A, level: 5, domain: d, terms: [a]}", "unknown level 5"),
    ("concepts:\n  - {concept: A, level: '2', domain: d, terms: [a]}", "unknown level '2'"),
    ("concepts:\n  - {concept: A, level: 2, domain: d, terms: []}", "'terms' must be a non-empty list"),
    ("concepts:\n  - {concept: A, level: 2, domain: d, terms: ['  ']}", "empty term"),
    ("concepts:\n  - {concept: A, level: 2, domain: d, terms: a}", "'terms' must be a non-empty list"),
    ("concepts:\n  - {concept: A, level: 2, domain: d, terms: [Cell]}\n"
     "  - {concept: B, level: 3, domain: d, terms: [x, ' cell']}", "duplicate term ' cell'.*'A'"),
    ("concepts:\n  - {concept: A, level: 2, domain: d, terms: [a]}\n"
     "  - {concept: A, level: 3, domain: d, terms: [b]}", "defined twice"),
    ("concepts:\n  - {concept: A, level: 2, terms: [a]}", "'domain' must be"),
    ("concepts:\n  - {level: 2, domain: d, terms: [a]}", "'concept' must be"),
    ("concepts:\n  - {concept: A, level: 2, domain: d, terms: [a], synonym: [b]}", "unknown field"),
    ("format: other/2\nconcepts:\n  - {concept: A, level: 2, domain: d, terms: [a]}", "unknown format"),
    ("concepts: [unclosed", "cannot parse YAML"),
]


@pytest.mark.parametrize("text,msg", BAD, ids=[m for _, m in BAD])
def test_bad_hierarchy_files(tmp_path, text, msg):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ValueError, match=msg) as e:
        load_hierarchy(p)
    assert str(p) in str(e.value)   # the message names the file


def test_bad_hierarchy_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_hierarchy(tmp_path / "missing.yaml")
    p = tmp_path / "h.txt"
    p.write_text("concepts: []")
    with pytest.raises(ValueError, match="unknown hierarchy file type"):
        load_hierarchy(p)
    j = tmp_path / "h.json"
    j.write_text("{not json")
    with pytest.raises(ValueError, match="cannot parse"):
        load_hierarchy(j)
    with pytest.raises(ValueError, match="non-empty list"):
        ConceptHierarchy.from_dict({"concepts": None})


def test_first_word_index_finds_what_every_pattern_finds():
    """``matches`` scans a text with the patterns of its own words only (large MeSH/UMLS hierarchies);
    on any text it finds exactly what scanning with every term's pattern finds."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    h = ConceptHierarchy.from_dict({"concepts": [
        {"concept": "A", "level": 3, "domain": "s", "terms": ["non-small cell", "x-ray", "cell", "cells"]},
        {"concept": "B", "level": 1, "domain": "b", "terms": ["(r)-warfarin", "Cell Line", "c.", "p53 gene"]},
        {"concept": "C", "level": 4, "domain": "s", "terms": ["ß-blocker", "Kelvin", "bypass graft"]}]})
    words = ["non", "-", "small", "cell", "Cells", "CELL", "x", "ray", "(", "r", ")", "warfarin", "line", "c",
             ".", "p53", "gene", "ß", "blocker", "\u212aelvin", "kelvin", "bypass", "graft", "a", "1"]

    def full(t):
        return sorted((m.start(), m.end(), ci) for pat, ci in h._patterns for m in pat.finditer(t))

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from(words), st.sampled_from(["", " ", "  ", "\n", ",", "-"])),
                    max_size=12))
    def check(parts):
        text = "".join(w + sep for w, sep in parts)
        assert h.matches(text) == full(text)

    check()
    assert h.matches("Non-small  cell lung, x-ray") == full("Non-small  cell lung, x-ray") != []
