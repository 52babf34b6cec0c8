// Every steu_ext op's schema, declared once. Kernels live in cpu/<op>.cpp (and cuda/<op>.cu) and register
// per dispatch key with TORCH_LIBRARY_IMPL; Python reaches them through torch.ops.steu_ext.*.
#include <torch/library.h>

TORCH_LIBRARY(steu_ext, m) {
  // Document-level token x class counts: counts[c, t] = #docs labelled c containing token t (once per doc),
  // doc_freq[t] = #docs containing t. Positions where mask is false are ignored.
  m.def("doc_counts(Tensor ids, Tensor mask, Tensor labels, int num_tokens) -> (Tensor, Tensor)");
  // The same counts, sparse: (keys = c * num_tokens + t strictly increasing, values >= 1, doc_freq [V]),
  // the nonzeros of doc_counts' counts in row-major order; memory grows with them, not with C x V.
  m.def("sparse_doc_counts(Tensor ids, Tensor mask, Tensor labels, int num_tokens) -> (Tensor, Tensor, Tensor)");
  // Row-sparse Adam/AdamW step on param[rows]; step has already been incremented by the caller.
  m.def(
      "row_adam_(Tensor(a!) param, Tensor grad, Tensor rows, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, "
      "Tensor step, float lr, float beta1, float beta2, float eps, float weight_decay, bool decoupled, "
      "bool maximize, bool grad_gathered) -> ()");
  // Dense Adam/AdamW step over a list of tensors at once (one launch); steps[i] already incremented.
  m.def(
      "multi_adam_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
      "Tensor[] steps, float lr, float beta1, float beta2, float eps, float weight_decay, bool decoupled, "
      "bool maximize) -> ()");
  // g <- g - coef * r over a list of tensors, coef = <g, r>_F / <r, r>_F; returns coef (float32 scalar).
  m.def(
      "grad_project_(Tensor(a!)[] grads, Tensor[] ref, Tensor[]? fisher, bool conflict_only, float eps) "
      "-> Tensor");
  // g <- g - sum_j c_j b_j with c_j = <g, b_j> for orthonormal b_j; returns c (float32 [m]).
  m.def("grad_project_basis_(Tensor(a!)[] grads, Tensor[] basis) -> Tensor");
}
