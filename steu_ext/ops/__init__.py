"""Public, typed ops. Each validates its inputs, then runs the backend chosen by
:mod:`steu_ext._backend` (reference / C++ CPU / CUDA / Triton)."""
from .doc_counts import DocCounts, PMICounter, doc_counts
from .grad_project import grad_project_, grad_project_basis_, orthonormal_basis
from .pmi import MEASURES, pmi_scores, select_top_k
from .row_adam import multi_adam_, row_adam_
from .sparse_doc_counts import SparseDocCounts, SparsePMICounter, sparse_doc_counts

__all__ = ["DocCounts", "PMICounter", "doc_counts", "pmi_scores", "select_top_k", "MEASURES",
           "row_adam_", "multi_adam_", "SparseDocCounts", "SparsePMICounter", "sparse_doc_counts",
           "grad_project_", "grad_project_basis_", "orthonormal_basis"]
