"""steu_ext: fast, auditable class- and domain-level unlearning for clinical language models.

Importing never builds or needs a compiler, CUDA or Triton; kernels are compiled on first use.
"""
from ._backend import available_backends, set_backend, use_backend
from .ops import (
    DocCounts,
    PMICounter,
    SparseDocCounts,
    SparsePMICounter,
    doc_counts,
    grad_project_,
    grad_project_basis_,
    multi_adam_,
    orthonormal_basis,
    pmi_scores,
    row_adam_,
    select_top_k,
    sparse_doc_counts,
)
from .optim import RowSparseAdam, RowSparseAdamW

__version__ = "0.1.0"

__all__ = ["DocCounts", "PMICounter", "doc_counts", "sparse_doc_counts", "SparseDocCounts", "SparsePMICounter",
           "pmi_scores", "select_top_k", "row_adam_", "multi_adam_",
           "grad_project_", "grad_project_basis_", "orthonormal_basis", "RowSparseAdam", "RowSparseAdamW",
           "set_backend", "use_backend", "available_backends", "__version__"]
