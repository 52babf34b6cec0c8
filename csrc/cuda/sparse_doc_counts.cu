// CUDA kernels for steu_ext::sparse_doc_counts: the nonzero (class, token) document counts as sorted keys
// c * V + t with their counts (same semantics as csrc/cpu/sparse_doc_counts.cpp and
// steu_ext/reference/sparse_doc_counts.py); memory grows with the pairs, never with C x V.
//
// Each row is sorted (a segmented sort: ignored positions become a sentinel that sorts last), so the first
// key of a run is a distinct token of the document. first_kernel flags those positions and adds 1 to
// doc_freq[t] (64-bit integer atomics: exact in any order); a row-wise inclusive scan of the flags gives
// each distinct token its slot and the last column its count; emit_kernel writes the key of every
// (class of the document, distinct token) pair at its own place; sort + run-length encoding reduce them.
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/nonzero.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/unique_consecutive.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <tuple>

#include "utils.cuh"

namespace steu_ext {
namespace {

using steu_ext::cuda::ceil_div;

constexpr int kThreads = 256;
constexpr int32_t kSentinel = std::numeric_limits<int32_t>::max();

// keys [B, L] int32 sorted per row; first [B, L] int32 out (1 at the first position of each run).
__global__ void first_kernel(const int32_t* __restrict__ keys, int32_t* __restrict__ first,
                             unsigned long long* __restrict__ doc_freq, int64_t n, int64_t L) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t s = keys[i];
    const bool f = s != kSentinel && (i % L == 0 || keys[i - 1] != s);
    first[i] = f;
    if (f) atomicAdd(doc_freq + s, 1ULL);
  }
}

// pos [B, L] int64: inclusive row-wise scan of first; lab [n_lab, 2] int64 (doc, class) sorted by doc with
// lab_ptr [B + 1] its row pointers; pair_off [B]: where document b's pairs start.
__global__ void emit_kernel(const int32_t* __restrict__ keys, const int32_t* __restrict__ first,
                            const int64_t* __restrict__ pos, const int64_t* __restrict__ lab,
                            const int64_t* __restrict__ lab_ptr, const int64_t* __restrict__ pair_off,
                            int64_t* __restrict__ out, int64_t n, int64_t L, int64_t V) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (!first[i]) continue;
    const int64_t b = i / L;
    const int64_t nd = pos[b * L + L - 1];
    const int64_t slot = pos[i] - 1;
    const int64_t t = keys[i];
    const int64_t l0 = lab_ptr[b], l1 = lab_ptr[b + 1];
    for (int64_t q = l0; q < l1; ++q) out[pair_off[b] + (q - l0) * nd + slot] = lab[2 * q + 1] * V + t;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_doc_counts_cuda(const at::Tensor& ids,
                                                                      const at::Tensor& mask,
                                                                      const at::Tensor& labels,
                                                                      int64_t num_tokens) {
  TORCH_CHECK(ids.scalar_type() == at::kLong && mask.scalar_type() == at::kBool &&
                  labels.scalar_type() == at::kByte,
              "sparse_doc_counts: expected ids int64, mask bool, labels uint8");
  TORCH_CHECK(ids.dim() == 2 && mask.sizes() == ids.sizes() && labels.dim() == 2 &&
                  labels.size(0) == ids.size(0),
              "sparse_doc_counts: bad shapes");
  TORCH_CHECK(ids.is_contiguous() && mask.is_contiguous() && labels.is_contiguous(),
              "sparse_doc_counts: ids, mask and labels must be contiguous");
  TORCH_CHECK(num_tokens >= 1 && num_tokens < kSentinel, "sparse_doc_counts: num_tokens must be in [1, 2^31 - 1)");
  const c10::cuda::CUDAGuard guard(ids.device());
  const int64_t B = ids.size(0), L = ids.size(1), V = num_tokens;
  auto opts = ids.options().dtype(at::kLong);
  at::Tensor doc_freq = at::zeros({V}, opts);
  if (B == 0 || L == 0 || labels.size(1) == 0) return {at::empty({0}, opts), at::empty({0}, opts), doc_freq};

  const at::Tensor keep = mask.logical_and(ids.ge(0)).logical_and(ids.lt(V));
  const at::Tensor keys =
      std::get<0>(at::sort(at::where(keep, ids, at::Scalar(static_cast<int64_t>(kSentinel))).to(at::kInt), 1))
          .contiguous();
  at::Tensor first = at::empty({B, L}, ids.options().dtype(at::kInt));
  const int64_t n = B * L;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(ids.device().index());
  const int grid = static_cast<int>(std::min<int64_t>(ceil_div(n, kThreads), 65535));
  first_kernel<<<grid, kThreads, 0, stream>>>(keys.const_data_ptr<int32_t>(), first.data_ptr<int32_t>(),
                                              reinterpret_cast<unsigned long long*>(doc_freq.data_ptr<int64_t>()),
                                              n, L);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const at::Tensor pos = at::cumsum(first, 1, at::kLong).contiguous();
  const at::Tensor lab = at::nonzero(labels).contiguous();  // [n_lab, 2], row-major order: sorted by doc
  at::Tensor n_lab = at::zeros({B}, opts).index_add_(0, lab.select(1, 0), at::ones_like(lab.select(1, 0)));
  at::Tensor lab_ptr = at::zeros({B + 1}, opts);
  lab_ptr.narrow(0, 1, B).copy_(at::cumsum(n_lab, 0));
  const at::Tensor pairs = pos.select(1, L - 1).mul(n_lab);
  const at::Tensor pair_end = at::cumsum(pairs, 0);
  const int64_t total = B ? pair_end[B - 1].item<int64_t>() : 0;  // the output size: one host sync
  if (total == 0) return {at::empty({0}, opts), at::empty({0}, opts), doc_freq};
  const at::Tensor pair_off = pair_end.sub(pairs).contiguous();
  at::Tensor out = at::empty({total}, opts);
  emit_kernel<<<grid, kThreads, 0, stream>>>(keys.const_data_ptr<int32_t>(), first.const_data_ptr<int32_t>(),
                                             pos.const_data_ptr<int64_t>(), lab.const_data_ptr<int64_t>(),
                                             lab_ptr.const_data_ptr<int64_t>(), pair_off.const_data_ptr<int64_t>(),
                                             out.data_ptr<int64_t>(), n, L, V);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::Tensor sorted = std::get<0>(at::sort(out));
  auto uc = at::unique_consecutive(sorted, /*return_inverse=*/false, /*return_counts=*/true);
  return {std::get<0>(uc), std::get<2>(uc).to(at::kLong), doc_freq};
}

}  // namespace

TORCH_LIBRARY_IMPL(steu_ext, CUDA, m) {
  m.impl("sparse_doc_counts", &sparse_doc_counts_cuda);
}

}  // namespace steu_ext
