"""sparse_doc_counts on every backend against the dense doc_counts reference and a brute-force oracle:
random and edge inputs (empty documents, one class, C > V, every document in one class, many labels per
document), the kernel contract (sorted keys, values >= 1), torch.library.opcheck, bad input."""
from __future__ import annotations

import pytest
import torch
from conftest import backends_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_doc_counts import docs_from, oracle, sample_inputs

from steu_ext import _backend, sparse_doc_counts
from steu_ext.reference.doc_counts import doc_counts as dense_ref
from steu_ext.reference.sparse_doc_counts import sparse_doc_counts as sparse_ref

BACKENDS = backends_for("sparse_doc_counts")
# (B, L, V, C): awkward sizes, C > V, one class, long rows
SIZES = [(1, 1, 1, 1), (1, 7, 7, 1), (7, 13, 5, 3), (123, 37, 123, 7), (7, 123, 1000, 2), (9, 11, 4, 40)]


def _use(force_backend, device, backend):
    force_backend("sparse_doc_counts", backend)
    assert _backend.resolve("sparse_doc_counts", device)[0] == backend


def assert_matches(got, ids, labels, V, C, **mask_kw):
    counts, doc_freq, n_docs, class_docs = oracle(docs_from(ids, labels, **mask_kw), V, C)
    keys, values = got.keys.cpu(), got.values.cpu()
    assert keys.dtype == values.dtype == torch.int64
    assert bool((keys[1:] > keys[:-1]).all()), "keys not strictly increasing"
    assert bool((values >= 1).all())
    flat = counts.reshape(-1)
    nz = flat.nonzero().squeeze(1)
    assert torch.equal(keys, nz) and torch.equal(values, flat[nz])
    assert torch.equal(got.doc_freq.cpu(), doc_freq)
    assert torch.equal(got.class_docs.cpu(), class_docs) and got.n_docs == n_docs
    assert torch.equal(got.to_dense().cpu(), counts)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("B,L,V,C", SIZES)
@pytest.mark.parametrize("pad", ["right", "random", "lengths"])
def test_matches_oracle(device, backend, force_backend, B, L, V, C, pad):
    _use(force_backend, device, backend)
    ids, labels, kw = sample_inputs(B, L, V, C, pad=pad, multi=True, device=device)
    r = sparse_doc_counts(ids, labels, num_tokens=V, num_classes=C, **kw)
    assert_matches(r, ids.cpu(), labels.cpu(), V, C, **{k: v.cpu() for k, v in kw.items()})


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_edge_inputs(device, backend, force_backend):
    _use(force_backend, device, backend)
    V, C = 11, 5
    ids = torch.randint(0, V, (6, 9), device=device)
    mask = torch.ones(6, 9, dtype=torch.bool, device=device)
    mask[1] = False                                     # an empty document
    mask[3, 1:] = False                                 # a one-token document
    for labels in (torch.zeros(6, C, dtype=torch.uint8),   # no document has a class
                   torch.eye(C, dtype=torch.uint8)[[2] * 6],  # every document in one class
                   torch.ones(6, C, dtype=torch.uint8)):  # every document in every class
        labels = labels.to(device)
        r = sparse_doc_counts(ids, labels, num_tokens=V, attention_mask=mask)
        assert_matches(r, ids.cpu(), labels.cpu(), V, C, attention_mask=mask.cpu())
    # every document empty: no pairs, zero doc_freq
    r = sparse_doc_counts(ids, torch.ones(6, C, dtype=torch.uint8, device=device), num_tokens=V,
                          attention_mask=torch.zeros_like(mask))
    assert r.keys.numel() == 0 and r.values.numel() == 0 and int(r.doc_freq.sum()) == 0


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_many_labels_per_document(device, backend, force_backend):
    """ICD-like: thousands of classes, documents with up to 281 labels (more than any fixed label buffer)."""
    _use(force_backend, device, backend)
    B, L, V, C = 5, 40, 300, 2000
    ids = torch.randint(0, V, (B, L), device=device)
    labels = torch.zeros(B, C, dtype=torch.uint8)
    for b in range(B):
        labels[b, torch.randperm(C)[: 70 * b + 1]] = 1
    labels = labels.to(device)
    r = sparse_doc_counts(ids, labels, num_tokens=V)
    assert_matches(r, ids.cpu(), labels.cpu(), V, C)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(B=st.integers(1, 12), L=st.integers(1, 20), V=st.integers(1, 30), C=st.integers(1, 12),
       p=st.floats(0, 1), seed=st.integers(0, 2**31 - 1))
def test_cpu_kernels_equal_reference_fuzz(B, L, V, C, p, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, L), generator=g)
    mask = torch.rand(B, L, generator=g) < 0.8
    labels = (torch.rand(B, C, generator=g) < p).to(torch.uint8)
    want = sparse_ref(ids, mask, labels, V)
    dense, df = dense_ref(ids, mask, labels, V)
    flat = dense.reshape(-1)
    assert torch.equal(want[0], flat.nonzero().squeeze(1)) and torch.equal(want[1], flat[want[0]])
    assert torch.equal(want[2], df)
    for name, why in _backend.available_backends("sparse_doc_counts", "cpu").items():
        if why is None and name != "reference":
            with _backend.use_backend({"sparse_doc_counts": name}):
                got = _backend.resolve("sparse_doc_counts", "cpu")[1](ids, mask, labels, V)
            assert all(torch.equal(a, b) for a, b in zip(got, want)), name


def test_cpu_kernel_many_threads_equals_reference():
    if _backend.available_backends("sparse_doc_counts", "cpu")["cpu"] is not None:
        pytest.skip("C++ CPU kernels unavailable")
    ids = torch.randint(0, 500, (700, 64))
    mask = torch.rand(700, 64) < 0.9
    labels = (torch.rand(700, 300) < 0.05).to(torch.uint8)
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        got = torch.ops.steu_ext.sparse_doc_counts(ids, mask, labels, 500)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(got, sparse_ref(ids, mask, labels, 500)))


def test_opcheck():
    if _backend.available_backends("sparse_doc_counts", "cpu")["cpu"] is not None:
        pytest.skip("C++ CPU kernels unavailable")
    ids = torch.randint(0, 20, (4, 9))
    mask = torch.rand(4, 9) < 0.8
    labels = (torch.rand(4, 3) < 0.5).to(torch.uint8)
    torch.library.opcheck(torch.ops.steu_ext.sparse_doc_counts.default, (ids, mask, labels, 20),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_bad_input_is_refused_before_the_kernel():
    ids = torch.tensor([[0, 1, 5]])
    with pytest.raises(ValueError, match="input_ids"):
        sparse_doc_counts(ids, torch.tensor([[1]]), num_tokens=5)
    with pytest.raises(ValueError, match="num_tokens"):
        sparse_doc_counts(ids, torch.tensor([[1]]), num_tokens=0)
    with pytest.raises(ValueError, match="0/1"):
        sparse_doc_counts(ids, torch.tensor([[2]]), num_tokens=9)
    with pytest.raises(ValueError, match="rows"):
        sparse_doc_counts(ids, torch.tensor([[1], [0]]), num_tokens=9)


# ---- SparsePMICounter -----------------------------------------------------------------------------------
@pytest.mark.parametrize("V,C,merge_min,bucket", [(50, 300, 7, 16), (20, 5, 1, 128), (50, 300, 10**9, 128),
                                                  (7, 400, 3, 4)])
def test_sparse_counter_equals_dense_counter(V, C, merge_min, bucket, monkeypatch):
    """Many batches, merges after every few pairs or only at the end, buckets of 4..128 classes, C > V."""
    from steu_ext import PMICounter, SparsePMICounter

    monkeypatch.setattr(SparsePMICounter, "BUCKET", bucket)
    g = torch.Generator().manual_seed(V * C)
    dense, sparse = PMICounter(V, C), SparsePMICounter(V, C, merge_min=merge_min)
    for _ in range(25):
        ids = torch.randint(0, V, (9, 12), generator=g)
        lab = (torch.rand(9, C, generator=g) < 0.05).to(torch.uint8)
        lab[0] = 0  # a document without classes
        dense.update(ids, lab)
        sparse.update(ids, lab)
    assert torch.equal(sparse.to_dense(), dense.counts) and torch.equal(sparse.doc_freq, dense.doc_freq)
    assert torch.equal(sparse.class_docs, dense.class_docs) and sparse.n_docs == dense.n_docs
    assert sparse.nnz == int((dense.counts != 0).sum())
    both = SparsePMICounter(V, C).merge(sparse).merge(sparse)
    assert torch.equal(both.to_dense(), 2 * dense.counts) and both.n_docs == 2 * dense.n_docs
    perm = torch.randperm(C).tolist()
    sparse.reorder(perm)
    assert torch.equal(sparse.to_dense(), dense.counts[perm]) and torch.equal(sparse.class_docs,
                                                                             dense.class_docs[perm])
    back = SparsePMICounter.from_csr(*sparse.csr(), sparse.doc_freq, sparse.class_docs, sparse.n_docs)
    assert torch.equal(back.to_dense(), dense.counts[perm])
    t = int(dense.class_docs.argmax())
    assert torch.equal(back.scores(perm.index(t)), dense.scores(t))
    assert torch.equal(back.top_tokens(perm.index(t), 5), dense.top_tokens(t, 5))


def test_sparse_counter_errors():
    from steu_ext import SparsePMICounter

    with pytest.raises(ValueError, match="num_tokens"):
        SparsePMICounter(0, 3)
    with pytest.raises(ValueError, match="num_classes"):
        SparsePMICounter(3, 0)
    c = SparsePMICounter(5, 2)
    with pytest.raises(ValueError, match="out of range"):
        c.row(2)
    with pytest.raises(ValueError, match="permutation"):
        c.reorder([0, 0])
    with pytest.raises(ValueError, match="shape"):
        c.merge(SparsePMICounter(5, 3))


def test_sparse_counter_counts_too_large_to_pack():
    """A batch count >= 2^20 (merged counters, huge batches) takes the unpacked path, still exact."""
    from steu_ext import SparsePMICounter

    z10, z3 = torch.zeros(10, dtype=torch.int64), torch.zeros(3, dtype=torch.int64)
    c = SparsePMICounter(10, 3, merge_min=1)
    c.add_pairs(torch.tensor([0, 5, 29]), torch.tensor([1, 2**21, 3]), z10, z3, 0)
    c.add_pairs(torch.tensor([5, 6]), torch.tensor([1, 1]), z10, z3, 0)
    want = torch.zeros(3, 10, dtype=torch.int64)
    want[0, 0], want[0, 5], want[0, 6], want[2, 9] = 1, 2**21 + 1, 1, 3
    assert torch.equal(c.to_dense(), want) and c.nnz == 4
