"""QA loaders (PubMedQA, MedMCQA, generic JSONL), their errors, and the QA scoring / unlearning metrics."""
from __future__ import annotations

import json

import pytest
import torch

from steu_ext.data.qa import (
    PUBMEDQA_OPTIONS,
    QAItem,
    load_medmcqa,
    load_pubmedqa,
    load_qa_jsonl,
    split_domain,
    subsample,
)
from steu_ext.eval import qa as qa_eval


def test_pubmedqa_loader_and_surgical_domain(pubmedqa_path):
    items = load_pubmedqa(pubmedqa_path.parent)
    assert len(items) == 1000
    raw = json.loads(pubmedqa_path.read_text())
    it = next(i for i in items if i.id == "21645374")
    assert it.question == raw["21645374"]["QUESTION"] and it.options == PUBMEDQA_OPTIONS
    assert it.answer_text == raw["21645374"]["final_decision"] and not it.forget  # lace plant leaves
    forget, retain = split_domain(items)
    # every forget item has a surgical MeSH heading, no retain item has one
    assert all(any("ectomy" in m.lower() or "surg" in m.lower() or "operative" in m.lower()
                   or "laparoscop" in m.lower() or "plasty" in m.lower() or "otomy" in m.lower()
                   or "ostomy" in m.lower() or "anastomosis" in m.lower() or "arthroscop" in m.lower()
                   or "transplantation" in m.lower() or "amputation" in m.lower() or "bypass" in m.lower()
                   or "suture" in m.lower() for m in i.tags) for i in forget)
    assert 150 < len(forget) < 300 and len(forget) + len(retain) == 1000
    only_lap = load_pubmedqa(pubmedqa_path, forget_mesh=["Laparoscopy"])
    assert sum(i.forget for i in only_lap) == sum(any(m == "Laparoscopy" for m in i.tags) for i in items)
    a, b = subsample(items, 10, seed=3), subsample(items, 10, seed=3)
    assert [i.id for i in a] == [i.id for i in b] and len({i.id for i in a}) == 10


def _write(path, text):
    path.write_text(text)
    return path


MEDMCQA = [
    {"id": "a1", "question": "Which nerve?", "opa": "Ulnar", "opb": "Radial", "opc": "Median", "opd": "Axillary",
     "cop": 3, "subject_name": "Surgery", "topic_name": "Hand"},
    {"id": "a2", "question": "Which vitamin?", "opa": "A", "opb": "B12", "opc": "C", "opd": "D", "cop": 4,
     "subject_name": "Biochemistry", "topic_name": None},
]


def test_medmcqa_jsonl_json_and_parquet(tmp_path):
    p = _write(tmp_path / "dev.json", "\n".join(json.dumps(r) for r in MEDMCQA))
    items = load_medmcqa(p)   # cop 4 present -> 1-based
    assert [i.answer_text for i in items] == ["Median", "D"]
    assert [i.forget for i in items] == [True, False] and items[0].tags == ("Surgery", "Hand")
    arr = _write(tmp_path / "dev_array.json", json.dumps(MEDMCQA))
    assert [i.answer for i in load_medmcqa(arr, forget_subjects=["biochemistry"])] == [2, 3]
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    zero = [dict(r, cop=r["cop"] - 1) for r in MEDMCQA] + [dict(MEDMCQA[0], id="a3", cop=0)]
    pq = tmp_path / "dev.parquet"
    pd.DataFrame(zero).to_parquet(pq)
    assert [i.answer_text for i in load_medmcqa(pq)] == ["Median", "D", "Ulnar"]   # 0 present -> 0-based


def test_medmcqa_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_medmcqa(tmp_path / "nope.json")
    amb = _write(tmp_path / "amb.jsonl", json.dumps(dict(MEDMCQA[0], cop=2)))
    with pytest.raises(ValueError, match="pass cop_base"):
        load_medmcqa(amb)
    assert load_medmcqa(amb, cop_base=1)[0].answer_text == "Radial"
    miss = _write(tmp_path / "miss.jsonl", json.dumps({k: v for k, v in MEDMCQA[0].items() if k != "opc"}))
    with pytest.raises(ValueError, match=r"record 1 lacks field\(s\) \['opc'\]"):
        load_medmcqa(miss)
    broken = _write(tmp_path / "broken.jsonl", json.dumps(MEDMCQA[0]) + "\n{oops\n")
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        load_medmcqa(broken)
    both = _write(tmp_path / "both.jsonl", "\n".join(json.dumps(dict(MEDMCQA[0], cop=c)) for c in (0, 4)))
    with pytest.raises(ValueError, match="both 0 and 4"):
        load_medmcqa(both)
    with pytest.raises(ValueError, match="unknown QA file type"):
        load_medmcqa(_write(tmp_path / "x.csv", "a,b"))
    with pytest.raises(ValueError, match="no QA records"):
        load_medmcqa(_write(tmp_path / "empty.jsonl", "\n"))


def test_generic_jsonl_mapping_and_errors(tmp_path):
    rows = [{"q": "Is it?", "choices": ["yes", "no"], "gold": "no", "dom": "cardio"},
            {"q": "Which?", "choices": ["x", "y", "z"], "gold": "C", "dom": "derm"},
            {"q": "Index?", "choices": ["x", "y"], "gold": 0, "dom": "cardio"}]
    p = _write(tmp_path / "qa.jsonl", "\n".join(json.dumps(r) for r in rows))
    items = load_qa_jsonl(p, question="q", options="choices", answer="gold", domain="dom", forget_values=["Cardio"])
    assert [i.answer_text for i in items] == ["no", "z", "x"] and [i.forget for i in items] == [True, False, True]
    cols = _write(tmp_path / "cols.jsonl", json.dumps({"question": "Q?", "o1": "a", "o2": "b", "answer": "b"}))
    assert load_qa_jsonl(cols, options=["o1", "o2"])[0].answer == 1
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['choices'\]"):
        load_qa_jsonl(cols, options="choices")
    bad = _write(tmp_path / "bad.jsonl", json.dumps({"question": "Q?", "options": ["a", "b"], "answer": "maybe"}))
    with pytest.raises(ValueError, match="not an index, letter or one of the options"):
        load_qa_jsonl(bad)
    far = _write(tmp_path / "far.jsonl", json.dumps({"question": "Q?", "options": ["a", "b"], "answer": 5}))
    with pytest.raises(ValueError, match="out of range for 2 options"):
        load_qa_jsonl(far)
    one = _write(tmp_path / "one.jsonl", json.dumps({"question": "Q?", "options": "ab", "answer": 0}))
    with pytest.raises(ValueError, match="options must be a list"):
        load_qa_jsonl(one)
    with pytest.raises(ValueError, match="needs a domain column"):
        load_qa_jsonl(p, question="q", options="choices", answer="gold", forget_values=["cardio"])


def test_pubmedqa_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="ori_pqal.json"):
        load_pubmedqa(tmp_path)
    bad = _write(tmp_path / "ori_pqal.json", json.dumps({"1": {"QUESTION": "Q?", "final_decision": "perhaps",
                                                                "MESHES": []}}))
    with pytest.raises(ValueError, match="record '1' has final_decision 'perhaps'"):
        load_pubmedqa(bad)
    _write(bad, json.dumps({"1": {"final_decision": "yes"}}))
    with pytest.raises(ValueError, match="record '1' has no QUESTION"):
        load_pubmedqa(bad)
    _write(bad, "[1, 2]")
    with pytest.raises(ValueError, match="keyed by PubMed id"):
        load_pubmedqa(bad)
    _write(bad, json.dumps({"1": {"QUESTION": "Q?", "final_decision": "yes", "MESHES": []}}))
    with pytest.raises(ValueError, match="no item falls in the forget domain"):
        split_domain(load_pubmedqa(bad))


# ---- scoring ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from steu_ext.methods.hds import tiny_causal_lm

    texts = ["Question: is the sky blue?\nAnswer: yes. no. maybe.", "Question: is grass red?\nAnswer: no."] * 3
    torch.manual_seed(0)
    return tiny_causal_lm(texts, hidden=32, layers=1, heads=2)


def test_choice_scores_match_manual_logprobs(tiny):
    model, tok = tiny
    item = QAItem("1", "is the sky blue?", ("yes", "no", "maybe"), 0)
    scores = qa_eval.choice_scores(model, tok, [item])[0]
    for k, opt in enumerate(item.options):
        prompt = qa_eval.prompt_of(item)
        ids = tok(prompt + f" {opt}")["input_ids"]
        n_prompt = len(tok(prompt)["input_ids"]) - 1  # without [SEP]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        # continuation tokens: the option's, not the final [SEP] (zero-width)
        want = sum(float(lp[t - 1, ids[t]]) for t in range(n_prompt, len(ids) - 1))
        assert float(scores[k]) == pytest.approx(want, rel=1e-4, abs=1e-4)
    acc = qa_eval.accuracy(model, tok, [item])
    assert acc == float(int(scores.argmax()) == 0)


def test_encode_qa_truncation_keeps_answer(tiny):
    _, tok = tiny
    long_q = "Question: " + "is the sky blue " * 30 + "\nAnswer:"
    e = qa_eval.encode_qa(tok, long_q, " yes. no", 16)
    assert len(e["input_ids"]) == 16 and e["input_ids"][0] == tok.cls_token_id
    assert tok.convert_ids_to_tokens(e["input_ids"])[-4:] == ["yes", ".", "no", "[SEP]"]
    assert sum(e["cont_mask"]) == 3


def test_metrics_definitions():
    assert qa_eval.forgetting_rate(0.9, 0.18) == pytest.approx(0.8)
    assert qa_eval.chance_corrected_forgetting(0.9, 1 / 3, 1 / 3) == pytest.approx(1.0)
    assert qa_eval.chance_corrected_forgetting(0.9, 0.0, 1 / 3) > 1.0   # below chance
    assert qa_eval.preservation(0.8, 0.72) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="not above chance"):
        qa_eval.chance_corrected_forgetting(0.3, 0.1, 1 / 3)
    with pytest.raises(ValueError, match="undefined"):
        qa_eval.forgetting_rate(0.0, 0.0)
