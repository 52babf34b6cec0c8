"""doc_counts / PMICounter against a brute-force oracle written with Python sets and loops."""
from __future__ import annotations

import pytest
import torch
from conftest import backends_for

from steu_ext import PMICounter, _backend, doc_counts

BACKENDS = backends_for("doc_counts")
PADS = ("none", "right", "left", "random", "lengths")
# (B, L, V, C): awkward sizes, V smaller than L so tokens repeat inside a document
SIZES = [(1, 1, 1, 1), (1, 7, 7, 1), (7, 13, 5, 3), (123, 37, 123, 7), (7, 123, 1000, 2)]


def _use(force_backend, device, backend):
    force_backend("doc_counts", backend)
    assert _backend.resolve("doc_counts", device)[0] == backend


# ----------------------------------------------------------------------------------------------- oracle
def docs_from(ids, labels, *, attention_mask=None, lengths=None):
    """The batch as a list of (set of token ids, set of classes), read position by position."""
    ids_l = ids.tolist()
    lab_l = labels.tolist()
    mask_l = attention_mask.tolist() if attention_mask is not None else None
    len_l = lengths.tolist() if lengths is not None else None
    docs = []
    for b, row in enumerate(ids_l):
        toks = set()
        for j, t in enumerate(row):
            if mask_l is not None and mask_l[b][j] == 0:
                continue
            if len_l is not None and j >= len_l[b]:
                continue
            toks.add(int(t))
        if labels.dim() == 1:
            classes = {int(lab_l[b])}
        else:
            classes = {c for c, v in enumerate(lab_l[b]) if v != 0}
        docs.append((toks, classes))
    return docs


def oracle(docs, V, C):
    counts = [[0] * V for _ in range(C)]
    doc_freq = [0] * V
    class_docs = [0] * C
    for toks, classes in docs:
        for c in classes:
            class_docs[c] += 1
        for t in toks:
            doc_freq[t] += 1
            for c in classes:
                counts[c][t] += 1
    def as_t(x):
        return torch.tensor(x, dtype=torch.int64)

    return as_t(counts), as_t(doc_freq), len(docs), as_t(class_docs)


def assert_counts_equal(got, want, device):
    counts, doc_freq, n_docs, class_docs = want
    for name, g, w in (("counts", got.counts, counts), ("doc_freq", got.doc_freq, doc_freq),
                       ("class_docs", got.class_docs, class_docs)):
        assert g.dtype == torch.int64, name
        assert g.device.type == torch.device(device).type, name
        assert torch.equal(g.cpu(), w), f"{name} differs from the oracle"
    assert int(got.n_docs) == n_docs


# ------------------------------------------------------------------------------------------ sample data
def sample_inputs(B, L, V, C, *, pad="right", multi=False, device="cpu", garbage=True):
    """Random batch; padded positions hold out-of-range ids (which must be ignored) when ``garbage``."""
    ids = torch.randint(0, V, (B, L))
    if L:
        ids[0, 0] = V - 1                      # the last id appears
        if B > 1:
            ids[-1] = ids[-1, 0]               # one document is a single token repeated
    lens = torch.randint(0, L + 1, (B,))
    if B > 1:
        lens[1] = 0                            # an empty document
        lens[0] = L                            # a full one
    pos = torch.arange(L).unsqueeze(0)
    kw = {}
    if pad == "right":
        mask = (pos < lens.unsqueeze(1)).long()
    elif pad == "left":
        mask = (pos >= (L - lens).unsqueeze(1)).long()
    elif pad == "random":
        mask = torch.randint(0, 2, (B, L))
    elif pad == "lengths":
        mask = (pos < lens.unsqueeze(1)).long()
    else:
        mask = torch.ones(B, L, dtype=torch.long)
    if garbage and pad != "none":
        junk = torch.tensor([-7, V, V + 100, -1])[torch.randint(0, 4, (B, L))]
        ids = torch.where(mask.bool(), ids, junk)
    if pad == "lengths":
        kw["lengths"] = lens.to(device)
    elif pad != "none":
        kw["attention_mask"] = mask.to(device)
    if multi:
        labels = torch.randint(0, 2, (B, C))
        labels[0] = 0                          # a document with no label
        if B > 1:
            labels[-1] = 1                     # one with every label
    else:
        labels = torch.randint(0, C, (B,))
        labels[0] = C - 1
    return ids.to(device), labels.to(device), kw


# ------------------------------------------------------------------------------------------ correctness
@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi"])
@pytest.mark.parametrize("pad", PADS)
@pytest.mark.parametrize("B,L,V,C", SIZES)
@pytest.mark.parametrize("device,backend", BACKENDS)
def test_matches_oracle(device, backend, force_backend, B, L, V, C, pad, multi):
    _use(force_backend, device, backend)
    ids, labels, kw = sample_inputs(B, L, V, C, pad=pad, multi=multi, device=device)
    got = doc_counts(ids, labels, num_tokens=V, num_classes=C, **kw)
    want = oracle(docs_from(ids.cpu(), labels.cpu(), **{k: v.cpu() for k, v in kw.items()}), V, C)
    assert_counts_equal(got, want, device)
    # sanity of the oracle itself: a document counts a token at most once
    assert int(got.doc_freq.max()) <= B


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("validate", [None, False])
def test_masked_out_ids_are_ignored(device, backend, force_backend, validate):
    _use(force_backend, device, backend)
    V = 5
    ids = torch.tensor([[-3, 1, 4, 99], [2, 2, -100, 5], [7, 8, 9, 10]], device=device)
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], device=device)
    labels = torch.tensor([0, 1, 1], device=device)
    got = doc_counts(ids, labels, num_tokens=V, num_classes=2, attention_mask=mask, validate=validate)
    assert torch.equal(got.counts.cpu(), torch.tensor([[0, 1, 0, 0, 1], [0, 0, 1, 0, 0]]))
    assert torch.equal(got.doc_freq.cpu(), torch.tensor([0, 1, 1, 0, 1]))
    assert got.n_docs == 3 and torch.equal(got.class_docs.cpu(), torch.tensor([1, 2]))
    got_len = doc_counts(ids, labels, num_tokens=V, num_classes=2, validate=validate,
                         lengths=torch.tensor([0, 2, 0], device=device))
    assert torch.equal(got_len.doc_freq.cpu(), torch.tensor([0, 0, 1, 0, 0]))
    assert torch.equal(got_len.counts.cpu(), torch.tensor([[0, 0, 0, 0, 0], [0, 0, 1, 0, 0]]))


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_empty_documents(device, backend, force_backend):
    _use(force_backend, device, backend)
    B, L, V, C = 7, 6, 9, 3
    ids = torch.randint(0, V, (B, L), device=device)
    labels = torch.randint(0, C, (B,), device=device)
    got = doc_counts(ids, labels, num_tokens=V, num_classes=C, lengths=torch.zeros(B, dtype=torch.long,
                                                                                    device=device))
    assert torch.equal(got.counts.cpu(), torch.zeros(C, V, dtype=torch.int64))
    assert torch.equal(got.doc_freq.cpu(), torch.zeros(V, dtype=torch.int64))
    assert got.n_docs == B
    assert torch.equal(got.class_docs.cpu(), torch.bincount(labels.cpu(), minlength=C))
    # zero positions per document: every document is empty
    got0 = doc_counts(torch.zeros(B, 0, dtype=torch.long, device=device), labels, num_tokens=V,
                      num_classes=C)
    assert torch.equal(got0.counts.cpu(), torch.zeros(C, V, dtype=torch.int64))
    assert torch.equal(got0.doc_freq.cpu(), torch.zeros(V, dtype=torch.int64))
    assert got0.n_docs == B


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_repeated_tokens_count_once_per_document(device, backend, force_backend):
    _use(force_backend, device, backend)
    V = 4
    ids = torch.tensor([[3, 3, 3, 3, 3], [0, 3, 0, 3, 0]], device=device)
    labels = torch.tensor([[1, 1], [0, 1]], device=device)
    got = doc_counts(ids, labels, num_tokens=V)
    assert torch.equal(got.doc_freq.cpu(), torch.tensor([1, 0, 0, 2]))
    assert torch.equal(got.counts.cpu(), torch.tensor([[0, 0, 0, 1], [1, 0, 0, 2]]))
    assert torch.equal(got.class_docs.cpu(), torch.tensor([1, 2]))


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("id_dtype", [torch.int64, torch.int32, torch.int16, torch.uint8])
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int64, torch.float32])
def test_input_dtypes(device, backend, force_backend, id_dtype, mask_dtype):
    _use(force_backend, device, backend)
    B, L, V, C = 7, 11, 123, 4
    ids, labels, kw = sample_inputs(B, L, V, C, pad="left", multi=True, device=device, garbage=False)
    mask = kw["attention_mask"]
    want = oracle(docs_from(ids.cpu(), labels.cpu(), attention_mask=mask.cpu()), V, C)
    got = doc_counts(ids.to(id_dtype), labels.to(mask_dtype), num_tokens=V,
                     attention_mask=mask.to(mask_dtype))
    assert_counts_equal(got, want, device)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi"])
def test_non_contiguous_inputs(device, backend, force_backend, multi):
    _use(force_backend, device, backend)
    B, L, V, C = 7, 13, 11, 3
    ids = torch.randint(0, V, (2 * L, B), device=device).t()[:, ::2]   # [B, L], strided both ways
    mask = torch.randint(0, 2, (L, B), device=device).t()
    if multi:
        labels = torch.randint(0, 2, (C, B), device=device).t()
    else:
        labels = torch.randint(0, C, (2 * B,), device=device)[::2]
    lengths = torch.randint(0, L + 1, (2 * B,), device=device)[1::2]
    assert not ids.is_contiguous() and not mask.is_contiguous() and not labels.is_contiguous()
    want = oracle(docs_from(ids.cpu(), labels.cpu(), attention_mask=mask.cpu()), V, C)
    assert_counts_equal(doc_counts(ids, labels, num_tokens=V, num_classes=C, attention_mask=mask), want,
                        device)
    want = oracle(docs_from(ids.cpu(), labels.cpu(), lengths=lengths.cpu()), V, C)
    assert_counts_equal(doc_counts(ids, labels, num_tokens=V, num_classes=C, lengths=lengths), want,
                        device)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("pad", ["random", "lengths"])
def test_inputs_not_modified(device, backend, force_backend, pad):
    _use(force_backend, device, backend)
    ids, labels, kw = sample_inputs(7, 13, 11, 3, pad=pad, multi=True, device=device)
    before = [t.clone() for t in (ids, labels, *kw.values())]
    doc_counts(ids, labels, num_tokens=11, **kw)
    for b, a in zip(before, (ids, labels, *kw.values())):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------- PMICounter
def _batches(V, C, device, n=4):
    out = []
    for i, (B, L) in enumerate([(7, 13), (1, 5), (123, 9), (3, 1)][:n]):
        ids, labels, kw = sample_inputs(B, L, V, C, pad=("right", "left", "lengths", "none")[i], multi=True,
                                        device=device)
        out.append((ids, labels, kw))
    return out


def _docs(batches):
    return [d for ids, lab, kw in batches
            for d in docs_from(ids.cpu(), lab.cpu(), **{k: v.cpu() for k, v in kw.items()})]


def assert_counter_equal(counter, want, device):
    assert_counts_equal(counter.result, want, device)
    assert isinstance(counter.n_docs, int)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_counter_batches_equal_one_shot(device, backend, force_backend):
    _use(force_backend, device, backend)
    V, C = 123, 5
    batches = _batches(V, C, device)
    counter = PMICounter(V, C, device=device)
    for ids, labels, kw in batches:
        assert counter.update(ids, labels, **kw) is counter
    assert_counter_equal(counter, oracle(_docs(batches), V, C), device)
    # single-label batches go through the same accumulator
    single = PMICounter(V, C, device=device)
    ids, labels, _ = sample_inputs(7, 9, V, C, pad="none", device=device)
    single.update(ids[:3], labels[:3]).update(ids[3:], labels[3:])
    assert_counter_equal(single, oracle(docs_from(ids.cpu(), labels.cpu()), V, C), device)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_counter_merge_equals_combined(device, backend, force_backend):
    _use(force_backend, device, backend)
    V, C = 37, 3
    batches = _batches(V, C, device)
    a, b = PMICounter(V, C, device=device), PMICounter(V, C, device=device)
    for ids, labels, kw in batches[:2]:
        a.update(ids, labels, **kw)
    for ids, labels, kw in batches[2:]:
        b.update(ids, labels, **kw)
    assert a.merge(b) is a
    assert_counter_equal(a, oracle(_docs(batches), V, C), device)
    assert_counter_equal(b, oracle(_docs(batches[2:]), V, C), device)   # the merged one is untouched
    assert_counter_equal(PMICounter(V, C, device=device).merge(a), oracle(_docs(batches), V, C), device)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_counter_state_dict_round_trip(device, backend, force_backend, tmp_path):
    _use(force_backend, device, backend)
    V, C = 37, 3
    batches = _batches(V, C, device)
    counter = PMICounter(V, C, device=device)
    for ids, labels, kw in batches[:3]:
        counter.update(ids, labels, **kw)
    path = tmp_path / "counter.pt"
    torch.save(counter.state_dict(), path)
    state = torch.load(path)
    fresh = PMICounter(V, C, device=device).load_state_dict(state)
    built = PMICounter.from_state_dict(torch.load(path), device=device)
    want = oracle(_docs(batches[:3]), V, C)
    for c in (counter, fresh, built):
        assert_counter_equal(c, want, device)
    assert (built.num_tokens, built.num_classes) == (V, C)
    # the loaded state is a copy, and all three keep counting identically
    ids, labels, kw = batches[3]
    for c in (counter, fresh, built):
        c.update(ids, labels, **kw)
    want = oracle(_docs(batches), V, C)
    for c in (counter, fresh, built):
        assert_counter_equal(c, want, device)
    assert torch.equal(torch.load(path)["counts"].cpu(), oracle(_docs(batches[:3]), V, C)[0])


def test_counter_errors():
    c = PMICounter(5, 2)
    with pytest.raises(ValueError, match="num_tokens"):
        PMICounter(0, 2)
    with pytest.raises(ValueError, match="num_classes"):
        PMICounter(5, 0)
    with pytest.raises(TypeError, match="PMICounter"):
        c.merge({"counts": torch.zeros(2, 5)})
    with pytest.raises(ValueError, match="cannot merge"):
        c.merge(PMICounter(6, 2))
    with pytest.raises(ValueError, match="saved counts have shape"):
        c.load_state_dict(PMICounter(5, 3).state_dict())
    with pytest.raises(ValueError, match="labels contains 2"):
        c.update(torch.tensor([[1, 2]]), torch.tensor([2]))
    with pytest.raises(ValueError, match="columns, expected 2"):
        c.update(torch.tensor([[1, 2]]), torch.tensor([[1, 0, 1]]))
    assert c.n_docs == 0 and int(c.counts.sum()) == 0    # failed updates leave nothing behind


# ------------------------------------------------------------------------------------------- bad inputs
def _ok():
    return torch.tensor([[1, 2, 3], [0, 4, 4]]), torch.tensor([0, 1])


@pytest.mark.parametrize("bad_id,shown", [(-1, "-1"), (5, "5"), (1000, "1000")])
def test_out_of_range_ids(bad_id, shown):
    ids, labels = _ok()
    ids[1, 2] = bad_id
    with pytest.raises(ValueError, match=rf"input_ids contains {shown}, outside the valid range \[0, 5\)"):
        doc_counts(ids, labels, num_tokens=5, num_classes=2)
    with pytest.raises(ValueError, match="input_ids contains"):
        doc_counts(ids, labels, num_tokens=5, num_classes=2, attention_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="input_ids contains"):
        doc_counts(ids, labels, num_tokens=5, num_classes=2, lengths=torch.tensor([3, 3]))
    # masked out, it is fine
    r = doc_counts(ids, labels, num_tokens=5, num_classes=2, lengths=torch.tensor([3, 2]))
    assert torch.equal(r.doc_freq, torch.tensor([1, 1, 1, 1, 1]))


def test_bad_labels():
    ids, _ = _ok()
    with pytest.raises(ValueError, match=r"labels contains 2, outside the valid range \[0, 2\)"):
        doc_counts(ids, torch.tensor([0, 2]), num_tokens=5, num_classes=2)
    with pytest.raises(ValueError, match=r"labels contains -1"):
        doc_counts(ids, torch.tensor([-1, 0]), num_tokens=5, num_classes=2)
    with pytest.raises(ValueError, match="0/1 indicators"):
        doc_counts(ids, torch.tensor([[0, 2], [1, 0]]), num_tokens=5)
    with pytest.raises(ValueError, match="0/1 indicators"):
        doc_counts(ids, torch.tensor([[0, -1], [1, 0]]), num_tokens=5)
    with pytest.raises(ValueError, match="0/1 indicators"):
        doc_counts(ids, torch.tensor([[0.5, 1.0], [1.0, 0.0]]), num_tokens=5)
    with pytest.raises(TypeError, match="integer class ids"):
        doc_counts(ids, torch.tensor([0.0, 1.0]), num_tokens=5, num_classes=2)
    with pytest.raises(TypeError, match="integer class ids"):
        doc_counts(ids, torch.tensor([True, False]), num_tokens=5, num_classes=2)
    with pytest.raises(ValueError, match="num_classes is required"):
        doc_counts(ids, torch.tensor([0, 1]), num_tokens=5)
    with pytest.raises(ValueError, match="0 classes"):
        doc_counts(ids, torch.zeros(2, 0, dtype=torch.long), num_tokens=5)
    with pytest.raises(ValueError, match=r"labels must be \[B\] class ids or \[B, C\]"):
        doc_counts(ids, torch.zeros(2, 2, 1, dtype=torch.long), num_tokens=5)
    with pytest.raises(TypeError, match="labels must be a torch.Tensor"):
        doc_counts(ids, [0, 1], num_tokens=5, num_classes=2)
    # float 0/1 multi-label indicators are accepted
    r = doc_counts(ids, torch.tensor([[1.0, 0.0], [1.0, 1.0]]), num_tokens=5)
    assert torch.equal(r.class_docs, torch.tensor([2, 1]))


def test_bad_ids_dtype_and_shape():
    ids, labels = _ok()
    with pytest.raises(TypeError, match=r"input_ids has dtype torch.float32"):
        doc_counts(ids.float(), labels, num_tokens=5, num_classes=2)
    with pytest.raises(TypeError, match=r"input_ids has dtype torch.bool"):
        doc_counts(ids > 0, labels, num_tokens=5, num_classes=2)
    with pytest.raises(TypeError, match="input_ids must be a torch.Tensor"):
        doc_counts(ids.tolist(), labels, num_tokens=5, num_classes=2)
    with pytest.raises(ValueError, match=r"input_ids must be 2-D, got shape \(6,\)"):
        doc_counts(ids.reshape(-1), labels, num_tokens=5, num_classes=2)
    with pytest.raises(ValueError, match="input_ids must be 2-D"):
        doc_counts(ids.unsqueeze(0), labels, num_tokens=5, num_classes=2)
    with pytest.raises(ValueError, match="empty: got a batch of 0 documents"):
        doc_counts(ids[:0], labels[:0], num_tokens=5, num_classes=2)
    for bad in (0, -3, 2.5, True, None):
        with pytest.raises(ValueError, match="num_tokens"):
            doc_counts(ids, labels, num_tokens=bad, num_classes=2)


def test_mismatched_lengths():
    ids, labels = _ok()
    with pytest.raises(ValueError, match="labels has 3 entries but input_ids has 2 documents"):
        doc_counts(ids, torch.tensor([0, 1, 1]), num_tokens=5, num_classes=2)
    with pytest.raises(ValueError, match="labels has 1 rows but input_ids has 2 documents"):
        doc_counts(ids, torch.tensor([[0, 1]]), num_tokens=5)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 4\)"):
        doc_counts(ids, labels, num_tokens=5, num_classes=2, attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(3, 3\)"):
        doc_counts(ids, labels, num_tokens=5, num_classes=2, attention_mask=torch.ones(3, 3))
    with pytest.raises(ValueError, match="attention_mask must be 2-D"):
        doc_counts(ids, labels, num_tokens=5, num_classes=2, attention_mask=torch.ones(6))
    with pytest.raises(ValueError, match="lengths has 3 entries but input_ids has 2 documents"):
        doc_counts(ids, labels, num_tokens=5, num_classes=2, lengths=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"lengths contains 4, outside the valid range \[0, 4\)"):
        doc_counts(ids, labels, num_tokens=5, num_classes=2, lengths=torch.tensor([4, 1]))
    with pytest.raises(ValueError, match="lengths contains -1"):
        doc_counts(ids, labels, num_tokens=5, num_classes=2, lengths=torch.tensor([-1, 1]))
    with pytest.raises(TypeError, match="lengths has dtype torch.float32"):
        doc_counts(ids, labels, num_tokens=5, num_classes=2, lengths=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="either attention_mask or lengths, not both"):
        doc_counts(ids, labels, num_tokens=5, num_classes=2, attention_mask=torch.ones(2, 3),
                   lengths=torch.tensor([1, 2]))


@pytest.mark.parametrize("device,backend", [p for p in BACKENDS if p.values[1] == "cpu"])
def test_cpu_kernel_many_workers_equals_reference(device, backend, force_backend):
    """A batch big enough for the C++ kernel to split it over several workers (>= 2 x 256 Ki token slots,
    ragged lengths, multi-label): the merged per-worker counts equal the reference exactly."""
    ids, labels, kw = sample_inputs(2048, 300, 3000, 6, pad="lengths", multi=True, device=device,
                                    garbage=False)
    force_backend("doc_counts", "reference")
    ref = doc_counts(ids, labels, num_tokens=3000, **kw)
    _use(force_backend, device, backend)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        got = doc_counts(ids, labels, num_tokens=3000, **kw)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(got.counts, ref.counts) and torch.equal(got.doc_freq, ref.doc_freq)
    assert int(got.doc_freq.sum()) > 0


@pytest.mark.parametrize("device,backend", [p for p in BACKENDS if p.values[1] == "cpu"])
@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_kernel_counter_carries(device, backend, force_backend, threads):
    """The C++ kernel keeps one-byte counters per worker and carries into a wider array when one wraps,
    and folds doc_freq out of the class rows (a row adding labels - 1 per multi-label document, a row for
    documents without labels): counts far past 255 in one worker, documents with 0, 1, 2 and > 256 labels,
    and both one and several workers, all equal the reference exactly."""
    g = torch.Generator().manual_seed(3)
    B, L, V, C = 1800, 300, 700, 300
    ids = torch.randint(0, V, (B, L), generator=g)
    ids[:, :3] = torch.tensor([0, 1, V - 1])          # in every document: counts of 1800 (7 wraps of a byte)
    labels = torch.zeros(B, C, dtype=torch.uint8)
    labels[:, 0] = 1                                   # mostly single-label, class 0
    labels[::7] = 0                                    # documents with no label
    labels[1::11, 5] = 1                               # two labels
    labels[2::13] = 1                                  # all 300 labels: X adds 299 = 255 + 44
    lengths = torch.randint(3, L + 1, (B,), generator=g)
    ids, labels, lengths = ids.to(device), labels.to(device), lengths.to(device)
    force_backend("doc_counts", "reference")
    ref = doc_counts(ids, labels, num_tokens=V, lengths=lengths)
    _use(force_backend, device, backend)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = doc_counts(ids, labels, num_tokens=V, lengths=lengths)
    finally:
        torch.set_num_threads(saved)
    assert int(ref.counts[0, 0]) > 1000 and int(ref.doc_freq[0]) == B
    assert torch.equal(got.counts, ref.counts) and torch.equal(got.doc_freq, ref.doc_freq)
