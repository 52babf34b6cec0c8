// CUDA kernel for steu_ext::doc_counts: document-level token x class counts (same semantics as
// csrc/cpu/doc_counts.cpp and steu_ext/reference/doc_counts.py).
//
// One thread block per document (grid-stride over documents), no sort. The block keeps a bitmap of V bits
// (in shared memory when it fits, else a per-block slice of a zeroed global scratch buffer). For every
// masked-in token t of the document, atomicOr sets bit t and returns the word as it was before, so exactly
// one position per distinct token sees its bit clear: that position adds 1 to doc_freq[t] and to
// counts[c, t] for every class c the document carries (64-bit integer atomicAdd, so the result is exact
// and independent of scheduling). The bits are cleared again before the next document. One launch (plus
// the zero-fills of the outputs and, for V > kMaxSmemBitmapBits, of the scratch bitmap); no host sync.
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>

#include "utils.cuh"

namespace steu_ext {
namespace {

using steu_ext::cuda::ceil_div;

constexpr int kThreads = 256;
// A document's labels are gathered into a shared list of this capacity; documents with more labels set
// read their label row directly instead (correct, slower).
constexpr int kMaxLabels = 256;
// Bitmaps up to this size live in shared memory (40 KiB: V <= 327,680 tokens, e.g. 30,522 -> 3.8 KiB,
// 128,256 -> 15.7 KiB); together with the static shared memory this stays under the 48 KiB a kernel gets
// without an opt-in.
constexpr int64_t kMaxSmemBitmapBytes = 40 * 1024;
// Upper bound on the global scratch bitmaps (larger V): fewer blocks rather than more memory.
constexpr int64_t kMaxScratchBytes = int64_t{256} << 20;

// ids/mask [B, L], labels [B, C] (contiguous); counts [C, V] and doc_freq [V] zero-initialised.
// scratch: unused when kSmemBitmap, else gridDim.x zeroed bitmaps of nwords words each.
// clear_whole: clear the bitmap word by word after each document (cheaper when nwords <= L) instead of
// clearing just the bits the document set.
template <bool kSmemBitmap>
__global__ void __launch_bounds__(kThreads)
    doc_counts_kernel(const int64_t* __restrict__ ids, const bool* __restrict__ mask,
                      const uint8_t* __restrict__ labels, int64_t B, int64_t L, int64_t C, int64_t V,
                      int64_t nwords, unsigned long long* __restrict__ counts,
                      unsigned long long* __restrict__ doc_freq, uint32_t* __restrict__ scratch,
                      bool clear_whole) {
  extern __shared__ uint32_t smem_bitmap[];
  __shared__ int32_t lab[kMaxLabels];
  __shared__ int32_t nlab;
  uint32_t* bitmap = kSmemBitmap ? smem_bitmap : scratch + static_cast<int64_t>(blockIdx.x) * nwords;
  const int64_t tid = threadIdx.x, nthreads = blockDim.x;

  if (kSmemBitmap) {  // shared memory starts undefined; the global scratch is zeroed by the host
    for (int64_t w = tid; w < nwords; w += nthreads) bitmap[w] = 0u;
  }

  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    // 1. The document's labels -> lab[0, nlab) (order is irrelevant: only integer sums depend on it).
    if (tid == 0) nlab = 0;
    __syncthreads();  // also orders the bitmap clear of the previous document before step 2
    const uint8_t* lrow = labels + b * C;
    for (int64_t c = tid; c < C; c += nthreads) {
      if (lrow[c]) {
        const int pos = atomicAdd(&nlab, 1);
        if (pos < kMaxLabels) lab[pos] = static_cast<int32_t>(c);
      }
    }
    __syncthreads();
    const int n_lab = nlab;  // read by every thread before the barrier at the end of this iteration

    // 2. First occurrence of each token -> one count per (document, token).
    const int64_t* row = ids + b * L;
    const bool* mrow = mask + b * L;
    for (int64_t j = tid; j < L; j += nthreads) {
      if (!mrow[j]) continue;
      const int64_t t = row[j];
      // The Python wrapper rejects out-of-range ids; skip them here rather than write out of bounds.
      if (static_cast<uint64_t>(t) >= static_cast<uint64_t>(V)) continue;
      const uint32_t bit = 1u << static_cast<uint32_t>(t & 31);
      if (atomicOr(&bitmap[t >> 5], bit) & bit) continue;  // an earlier position already counted it
      atomicAdd(&doc_freq[t], 1ull);
      if (n_lab <= kMaxLabels) {
        for (int q = 0; q < n_lab; ++q) atomicAdd(&counts[static_cast<int64_t>(lab[q]) * V + t], 1ull);
      } else {
        for (int64_t c = 0; c < C; ++c)
          if (lrow[c]) atomicAdd(&counts[c * V + t], 1ull);
      }
    }
    __syncthreads();  // every atomicOr of this document is done before any bit is cleared

    // 3. Clear the bitmap for the next document.
    if (clear_whole) {
      for (int64_t w = tid; w < nwords; w += nthreads) bitmap[w] = 0u;
    } else {
      for (int64_t j = tid; j < L; j += nthreads) {
        if (!mrow[j]) continue;
        const int64_t t = row[j];
        if (static_cast<uint64_t>(t) >= static_cast<uint64_t>(V)) continue;
        atomicAnd(&bitmap[t >> 5], ~(1u << static_cast<uint32_t>(t & 31)));
      }
    }
    // The barrier at the top of the next iteration orders this clear before the next atomicOr.
  }
}

std::tuple<at::Tensor, at::Tensor> doc_counts_cuda(const at::Tensor& ids, const at::Tensor& mask,
                                                   const at::Tensor& labels, int64_t num_tokens) {
  TORCH_CHECK(ids.scalar_type() == at::kLong, "doc_counts: ids must be int64, got ", ids.scalar_type());
  TORCH_CHECK(mask.scalar_type() == at::kBool, "doc_counts: mask must be bool, got ", mask.scalar_type());
  TORCH_CHECK(labels.scalar_type() == at::kByte, "doc_counts: labels must be uint8, got ",
              labels.scalar_type());
  TORCH_CHECK(ids.is_cuda() && mask.device() == ids.device() && labels.device() == ids.device(),
              "doc_counts: ids, mask and labels must be on the same CUDA device, got ", ids.device(), ", ",
              mask.device(), ", ", labels.device());
  TORCH_CHECK(ids.dim() == 2 && mask.dim() == 2 && labels.dim() == 2,
              "doc_counts: ids, mask and labels must be 2-D");
  TORCH_CHECK(mask.sizes() == ids.sizes(), "doc_counts: mask shape ", mask.sizes(), " != ids shape ",
              ids.sizes());
  TORCH_CHECK(labels.size(0) == ids.size(0), "doc_counts: labels has ", labels.size(0), " rows, ids has ",
              ids.size(0));
  TORCH_CHECK(ids.is_contiguous() && mask.is_contiguous() && labels.is_contiguous(),
              "doc_counts: ids, mask and labels must be contiguous");
  TORCH_CHECK(num_tokens >= 0 && num_tokens <= std::numeric_limits<int32_t>::max(),
              "doc_counts: num_tokens must be in [0, 2^31), got ", num_tokens);
  TORCH_CHECK(labels.size(1) <= std::numeric_limits<int32_t>::max(), "doc_counts: too many classes (",
              labels.size(1), ")");

  const c10::cuda::CUDAGuard guard(ids.device());
  const int64_t B = ids.size(0), L = ids.size(1), C = labels.size(1), V = num_tokens;
  auto opts = ids.options().dtype(at::kLong);
  at::Tensor counts = at::zeros({C, V}, opts);
  at::Tensor doc_freq = at::zeros({V}, opts);
  // Nothing to count. (V == 0 with masked-in positions is an error on CPU; checking it here would need a
  // host sync, and the Python wrapper already requires num_tokens >= 1.)
  if (B == 0 || L == 0 || V == 0) return {counts, doc_freq};

  const int device = ids.get_device();
  const int64_t nwords = ceil_div(V, 32);
  const int64_t bitmap_bytes = nwords * static_cast<int64_t>(sizeof(uint32_t));
  const bool smem = bitmap_bytes <= kMaxSmemBitmapBytes;
  // Short documents get smaller blocks (a multiple of 32, at least 64) so fewer threads idle.
  const int threads = static_cast<int>(std::clamp<int64_t>(ceil_div(L, 32) * 32, 64, kThreads));
  const size_t dyn_smem = smem ? static_cast<size_t>(bitmap_bytes) : 0;

  int per_sm = 0;
  if (smem) {
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, doc_counts_kernel<true>, threads,
                                                                 dyn_smem));
  } else {
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, doc_counts_kernel<false>, threads,
                                                                 0));
  }
  int64_t grid = std::min<int64_t>(B, static_cast<int64_t>(steu_ext::cuda::sm_count(device)) *
                                          std::max(per_sm, 1));
  at::Tensor scratch;
  if (!smem) {
    grid = std::max<int64_t>(1, std::min<int64_t>(grid, kMaxScratchBytes / bitmap_bytes));
    scratch = at::zeros({grid * nwords}, ids.options().dtype(at::kInt));
  }
  const bool clear_whole = nwords <= L;

  const int64_t* ids_p = ids.const_data_ptr<int64_t>();
  const bool* mask_p = mask.const_data_ptr<bool>();
  const uint8_t* lab_p = labels.const_data_ptr<uint8_t>();
  auto* cnt_p = reinterpret_cast<unsigned long long*>(counts.data_ptr<int64_t>());
  auto* df_p = reinterpret_cast<unsigned long long*>(doc_freq.data_ptr<int64_t>());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device);
  if (smem) {
    doc_counts_kernel<true><<<static_cast<unsigned>(grid), threads, dyn_smem, stream>>>(
        ids_p, mask_p, lab_p, B, L, C, V, nwords, cnt_p, df_p, nullptr, clear_whole);
  } else {
    doc_counts_kernel<false><<<static_cast<unsigned>(grid), threads, 0, stream>>>(
        ids_p, mask_p, lab_p, B, L, C, V, nwords, cnt_p, df_p,
        reinterpret_cast<uint32_t*>(scratch.data_ptr<int32_t>()), clear_whole);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {counts, doc_freq};
}

}  // namespace

TORCH_LIBRARY_IMPL(steu_ext, CUDA, m) {
  m.impl("doc_counts", &doc_counts_cuda);
}

}  // namespace steu_ext
