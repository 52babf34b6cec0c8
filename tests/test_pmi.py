"""pmi_scores / select_top_k against float64 Python formulas (from the pmi module's doc string) and a
sorted() oracle."""
from __future__ import annotations

import math

import pytest
import torch

from steu_ext import DocCounts, PMICounter, doc_counts, pmi_scores, select_top_k
from steu_ext.ops.pmi import MEASURES

NEG_INF = float("-inf")


# ----------------------------------------------------------------------------------------------- oracles
def oracle_score(nf, n, N, Nf, measure, alpha, min_count):
    """One token's score, straight from the formulas in steu_ext/ops/pmi.py, in Python floats."""
    if nf == 0 or n < min_count or n == 0:
        return NEG_INF
    a = alpha
    p_t_f = (nf + a) / (Nf + 2 * a)
    p_t = (n + a) / (N + 2 * a)
    p_tf = (nf + a) / (N + 2 * a)
    pmi = math.log2(p_t_f / p_t)
    if measure == "pmi":
        return pmi
    if measure == "ppmi":
        return max(pmi, 0.0)
    if measure == "npmi":
        h = -math.log2(p_tf)
        return 0.0 if p_tf == 1 else pmi / h
    return pmi * math.log(1 + nf)


def oracle_scores(dc, target, measure, alpha, min_count):
    nf = dc.counts[target].tolist()
    n = dc.doc_freq.tolist()
    Nf = int(dc.class_docs[target])
    return torch.tensor([oracle_score(nf[t], n[t], dc.n_docs, Nf, measure, alpha, min_count)
                         for t in range(len(n))], dtype=torch.float64)


def oracle_top_k(scores, k, exclude=()):
    vals = scores.tolist()
    ex = set(int(e) for e in exclude)
    eligible = [t for t, v in enumerate(vals) if t not in ex and not math.isnan(v) and v != NEG_INF]
    return sorted(eligible, key=lambda t: (-vals[t], t))[:k]


def assert_scores_close(got, want):
    assert got.dtype == torch.float64 and got.shape == want.shape
    assert torch.equal(torch.isneginf(got), torch.isneginf(want)), "the -inf (ineligible) sets differ"
    fin = torch.isfinite(want)
    assert torch.isfinite(got[fin]).all()
    torch.testing.assert_close(got[fin], want[fin], rtol=1e-12, atol=1e-12)


def random_counts(B=123, L=17, V=123, C=4, seed_labels=True):
    ids = torch.randint(0, V, (B, L))
    ids[:, :3] = torch.randint(0, 5, (B, 3))            # a few very frequent tokens
    labels = torch.randint(0, 2, (B, C))
    labels[:, 0] = 1 if seed_labels else labels[:, 0]   # class 0: every document
    lengths = torch.randint(0, L + 1, (B,))
    return doc_counts(ids, labels, num_tokens=V, lengths=lengths)


def hand_counts():
    """N=10 documents, 2 classes (class 0: 4 docs, class 1: every doc), tokens chosen for edge cases:
    t0 in no document, t1 only outside class 0, t2 in every document, t3 in all of class 0 and nothing
    else, t4 once, t5 in 2 target documents and 3 others, t6 in one target doc of 9."""
    counts = torch.tensor([[0, 0, 4, 4, 1, 2, 1],
                           [0, 6, 10, 4, 1, 5, 9]])
    doc_freq = torch.tensor([0, 6, 10, 4, 1, 5, 9])
    return DocCounts(counts, doc_freq, 10, torch.tensor([4, 10]))


# -------------------------------------------------------------------------------------------- pmi_scores
@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1, 3.0])
@pytest.mark.parametrize("min_count", [0, 1, 2, 7])
def test_scores_match_formula_random(measure, alpha, min_count):
    dc = random_counts()
    for target in range(dc.counts.shape[0]):
        got = pmi_scores(dc, target, measure=measure, alpha=alpha, min_count=min_count)
        assert_scores_close(got, oracle_scores(dc, target, measure, alpha, min_count))


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("alpha", [0.0, 0.25])
@pytest.mark.parametrize("target", [0, 1])
def test_scores_match_formula_edge_counts(measure, alpha, target):
    dc = hand_counts()
    got = pmi_scores(dc, target, measure=measure, alpha=alpha)
    want = oracle_scores(dc, target, measure, alpha, 1)
    assert_scores_close(got, want)
    assert got[0] == NEG_INF                               # in no document
    if target == 0:
        assert got[1] == NEG_INF                           # never in the target class
    if alpha == 0:
        if measure in ("pmi", "ppmi", "fwpmi"):
            assert got[2] == 0                             # in every document: no information
        if target == 1:                                    # class 1 holds every doc: P(t|f) = P(t)
            assert torch.all(got[1:] == 0)


def test_default_measure_is_fwpmi_and_scores_are_consistent():
    dc = random_counts()
    fw = pmi_scores(dc, 0)
    assert torch.equal(fw, pmi_scores(dc, 0, measure="fwpmi"))
    pmi = pmi_scores(dc, 0, measure="pmi")
    ppmi = pmi_scores(dc, 0, measure="ppmi")
    npmi = pmi_scores(dc, 0, measure="npmi", alpha=0.5)
    fin = torch.isfinite(pmi)
    assert fin.any()
    assert torch.equal(ppmi[fin], pmi[fin].clamp_min(0))
    assert torch.all(npmi[torch.isfinite(npmi)].abs() <= 1 + 1e-12)   # npmi lies in [-1, 1]


def test_npmi_is_zero_where_joint_probability_is_one():
    # one class, every document contains token 1: P(t, f) = 1
    dc = DocCounts(torch.tensor([[2, 5, 0]]), torch.tensor([2, 5, 0]), 5, torch.tensor([5]))
    got = pmi_scores(dc, 0, measure="npmi")
    assert got[1] == 0 and got[2] == NEG_INF
    assert_scores_close(got, oracle_scores(dc, 0, "npmi", 0.0, 1))


def test_scores_from_counter_and_non_contiguous_counts():
    V, C = 37, 3
    ids = torch.randint(0, V, (23, 9))
    labels = torch.randint(0, C, (23,))
    counter = PMICounter(V, C).update(ids, labels)
    dc = counter.result
    nc = DocCounts(dc.counts.t().contiguous().t(), dc.doc_freq.repeat_interleave(2)[::2], dc.n_docs,
                   dc.class_docs.repeat_interleave(2)[::2])
    assert not nc.counts.is_contiguous() and not nc.doc_freq.is_contiguous()
    for target in range(C):
        want = oracle_scores(dc, target, "ppmi", 0.5, 2)
        assert_scores_close(counter.scores(target, measure="ppmi", alpha=0.5, min_count=2), want)
        assert_scores_close(pmi_scores(nc, target, measure="ppmi", alpha=0.5, min_count=2), want)
    top = counter.top_tokens(1, 5, exclude_ids=[0], measure="pmi")
    assert top.tolist() == oracle_top_k(oracle_scores(dc, 1, "pmi", 0.0, 1), 5, [0])


def test_pmi_inputs_not_modified():
    dc = random_counts()
    before = [dc.counts.clone(), dc.doc_freq.clone(), dc.class_docs.clone()]
    for measure in MEASURES:
        s = pmi_scores(dc, 1, measure=measure, alpha=1.0, min_count=2)
        s_before = s.clone()
        select_top_k(s, 7, exclude_ids=[1, 2])
        assert torch.equal(s, s_before)
    for a, b in zip(before, (dc.counts, dc.doc_freq, dc.class_docs)):
        assert torch.equal(a, b)


def test_pmi_bad_arguments():
    dc = hand_counts()
    with pytest.raises(ValueError, match="unknown measure 'mi'"):
        pmi_scores(dc, 0, measure="mi")
    for alpha in (-0.1, float("nan"), float("inf"), "1"):
        with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
            pmi_scores(dc, 0, alpha=alpha)
    for mc in (-1, 1.5):
        with pytest.raises(ValueError, match="min_count must be an int >= 0"):
            pmi_scores(dc, 0, min_count=mc)
    for target in (-1, 2, True, 0.0):
        with pytest.raises(ValueError, match="out of range for 2 classes"):
            pmi_scores(dc, target)
    empty = DocCounts(dc.counts, dc.doc_freq, 10, torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="target class 0 has no documents"):
        pmi_scores(empty, 0)


# ------------------------------------------------------------------------------------------ select_top_k
@pytest.mark.parametrize("V", [1, 7, 123])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_top_k_matches_sorted_oracle(V, dtype):
    # few distinct values: many ties, plus -inf and NaN entries
    scores = torch.randint(-3, 4, (V,)).to(dtype) / 2
    scores[torch.rand(V) < 0.2] = NEG_INF
    scores[torch.rand(V) < 0.1] = float("nan")
    exclude = [t for t in range(V) if t % 5 == 3]
    for k in sorted({0, 1, V // 2, V}):
        for ex in ((), exclude):
            got = select_top_k(scores, k, exclude_ids=ex)
            assert got.dtype == torch.int64
            assert got.tolist() == oracle_top_k(scores, k, ex)


def test_top_k_ordering_and_tie_break_by_lower_id():
    s = torch.tensor([1.0, 3.0, 2.0, 3.0, NEG_INF, 2.0, float("nan"), -5.0])
    assert select_top_k(s, 6).tolist() == [1, 3, 2, 5, 0, 7]
    assert select_top_k(s, 3).tolist() == [1, 3, 2]
    assert select_top_k(s, 2, exclude_ids={1}).tolist() == [3, 2]
    assert select_top_k(s, 3, exclude_ids=[3, 2]).tolist() == [1, 5, 0]


def test_top_k_exclude_ids_as_tensor():
    # exclude_ids is any iterable of ints; a tensor of special-token ids is the natural thing to pass
    s = torch.tensor([1.0, 3.0, 2.0, 3.0, 2.0])
    assert select_top_k(s, 3, exclude_ids=torch.tensor([3, 2])).tolist() == [1, 4, 0]
    assert select_top_k(s, 2, exclude_ids=torch.tensor([1])).tolist() == [3, 2]


def test_top_k_never_selects_excluded_or_ineligible():
    V = 123
    scores = torch.rand(V, dtype=torch.float64)
    scores[10:20] = NEG_INF
    exclude = list(range(0, V, 7))
    got = select_top_k(scores, V, exclude_ids=exclude)   # k = V: every eligible token
    assert set(got.tolist()) == set(range(V)) - set(range(10, 20)) - set(exclude)
    assert got.tolist() == oracle_top_k(scores, V, exclude)
    all_ok = select_top_k(torch.rand(V), V)
    assert sorted(all_ok.tolist()) == list(range(V))


def test_top_k_zero_and_too_few_eligible():
    s = torch.tensor([NEG_INF, 0.5, NEG_INF])
    got = select_top_k(s, 0)
    assert got.shape == (0,) and got.dtype == torch.int64
    assert select_top_k(s, 3).tolist() == [1]
    assert select_top_k(torch.full((4,), NEG_INF), 2).tolist() == []


def test_top_k_non_contiguous_scores():
    base = torch.rand(2 * 37, dtype=torch.float64)
    s = base[::2]
    assert not s.is_contiguous()
    assert select_top_k(s, 9, exclude_ids=[0]).tolist() == oracle_top_k(s, 9, [0])


def test_top_k_bad_arguments():
    s = torch.rand(5)
    with pytest.raises(ValueError, match=r"k=6 is larger than the vocabulary \(5 tokens\)"):
        select_top_k(s, 6)
    for k in (-1, 1.0, True):
        with pytest.raises(ValueError, match="k must be an int >= 0"):
            select_top_k(s, k)
    with pytest.raises(ValueError, match="1-D tensor"):
        select_top_k(s.reshape(1, 5), 1)
    with pytest.raises(ValueError, match="1-D tensor"):
        select_top_k(s.tolist(), 1)
    for ex in ([5], [-1]):
        with pytest.raises(ValueError, match=r"exclude_ids must lie in \[0, 5\)"):
            select_top_k(s, 1, exclude_ids=ex)
