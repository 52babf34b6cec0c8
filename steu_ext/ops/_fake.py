"""Fake (meta) implementations of the C++ ops, so ``torch.compile(fullgraph=True)`` and
``torch.library.opcheck`` can trace ``torch.ops.steu_ext.*``. Registered once the library is loaded
(the schemas live in the C++ library)."""
from __future__ import annotations

import threading

import torch

_done = False
_lock = threading.Lock()


def register_fakes() -> None:
    """Register the fake kernels (idempotent). Called when a backend that runs the C++ ops is chosen, which
    under ``torch.compile`` happens outside the traced code (see :func:`steu_ext._backend.resolve`)."""
    global _done
    if _done:   # lock-free fast path
        return
    with _lock:
        if _done:
            return

        @torch.library.register_fake("steu_ext::doc_counts")
        def _doc_counts(ids, mask, labels, num_tokens):
            C = labels.shape[1]
            return (ids.new_empty((C, num_tokens), dtype=torch.int64),
                    ids.new_empty((num_tokens,), dtype=torch.int64))

        @torch.library.register_fake("steu_ext::sparse_doc_counts")
        def _sparse_doc_counts(ids, mask, labels, num_tokens):
            nnz = torch.library.get_ctx().new_dynamic_size()
            return (ids.new_empty((nnz,), dtype=torch.int64), ids.new_empty((nnz,), dtype=torch.int64),
                    ids.new_empty((num_tokens,), dtype=torch.int64))

        @torch.library.register_fake("steu_ext::row_adam_")
        def _row_adam(param, grad, rows, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay,
                      decoupled, maximize, grad_gathered):
            return None

        @torch.library.register_fake("steu_ext::multi_adam_")
        def _multi_adam(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, eps, weight_decay,
                        decoupled, maximize):
            return None

        @torch.library.register_fake("steu_ext::grad_project_")
        def _grad_project(grads, ref, fisher, conflict_only, eps):
            return grads[0].new_empty((), dtype=torch.float32)

        @torch.library.register_fake("steu_ext::grad_project_basis_")
        def _grad_project_basis(grads, basis):
            return grads[0].new_empty((basis[0].shape[0],), dtype=torch.float32)

        _done = True
