// CUDA kernels for steu_ext::grad_project_ and steu_ext::grad_project_basis_ (same semantics as
// csrc/cpu/grad_project.cpp and steu_ext/reference/grad_project.py).
//
// Multi-tensor: every tensor of the list is cut into chunks of kChunk elements and one block processes one
// chunk, whatever the tensor and its dtype (fp32/fp16/bf16, a uniform per-block switch). The chunk ->
// tensor table is built on the host in a pinned buffer and copied to the device with one asynchronous
// copy. Then exactly three launches, with no host sync:
//   1. dots:     per-chunk partial dot products in double -> partial[]            (grid = #chunks)
//   2. finalize: fixed-order sum of the partials, the conflict test and the coefficient(s), on the device
//   3. update:   g <- g - coef * r (or g - sum_j c_j b_j), reading the coefficient(s) from device memory
// Partials are summed in a fixed order by fixed trees (no float atomics): results are deterministic run
// to run. The update is done in float32 with round-to-nearest intrinsics in the CPU kernel's order.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#include "utils.cuh"

namespace steu_ext {
namespace {

using steu_ext::cuda::block_sum;
using steu_ext::cuda::dispatch_dtype;
using steu_ext::cuda::DType;
using steu_ext::cuda::load4;
using steu_ext::cuda::store4;
using steu_ext::cuda::to_f;

constexpr int kThreads = 256;          // dots / update blocks
constexpr int kFinalizeThreads = 512;  // finalize blocks (multiple of 32, <= 1024)
// Elements per chunk (one block). A multiple of 4, so a chunk of an aligned tensor starts aligned for
// 4-wide vector loads. 16 Ki elements: ~6,600 blocks for a BERT-base-sized list (108.8 M parameters).
constexpr int64_t kChunk = 16384;
constexpr int kBasisTile = 4;  // basis directions per pass over a gradient chunk

// One tensor of the list, as the kernels see it (device memory).
struct TensorMeta {
  void* g;              // gradient, updated in place
  const void* a;        // ref [numel] (grad_project_) or basis [m, numel] (grad_project_basis_)
  const void* f;        // fisher [numel] or nullptr
  int64_t numel;
  int64_t first_chunk;  // global index of this tensor's first chunk
  int32_t g_dtype;      // DType
  int32_t a_dtype;      // DType (fisher, if any, has g_dtype)
  int32_t vec_ok;       // every pointer aligned to 4 elements (and, for a basis, numel % 4 == 0)
  int32_t pad_;
};

// Device copy of the tables: [TensorMeta x n_tensors][int32 chunk_tensor x n_chunks].
struct Plan {
  at::Tensor blob;
  const TensorMeta* meta = nullptr;
  const int32_t* chunk_tensor = nullptr;
  int64_t n_chunks = 0;
};

bool aligned(const void* p, int64_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Builds the tables for the tensors with numel > 0. `basis` selects the [m, numel] layout of `as`.
Plan make_plan(at::TensorList grads, at::TensorList as, const std::optional<at::TensorList>& fisher,
               bool basis, const char* op) {
  std::vector<TensorMeta> metas;
  std::vector<int32_t> chunk_tensor;
  for (size_t i = 0; i < grads.size(); ++i) {
    const at::Tensor& g = grads[i];
    const at::Tensor& a = as[i];
    const int64_t numel = g.numel();
    if (numel == 0) continue;
    TensorMeta tm{};
    tm.g = g.data_ptr();
    tm.a = a.const_data_ptr();
    tm.f = fisher.has_value() ? (*fisher)[i].const_data_ptr() : nullptr;
    tm.numel = numel;
    tm.first_chunk = static_cast<int64_t>(chunk_tensor.size());
    tm.g_dtype = steu_ext::cuda::dtype_code(g.scalar_type(), op);
    tm.a_dtype = steu_ext::cuda::dtype_code(a.scalar_type(), op);
    const int64_t gv = 4 * g.element_size(), av = 4 * a.element_size();
    tm.vec_ok = aligned(tm.g, gv) && aligned(tm.a, av) && (tm.f == nullptr || aligned(tm.f, gv)) &&
                (!basis || numel % 4 == 0);
    const int64_t n = steu_ext::cuda::ceil_div(numel, kChunk);
    TORCH_CHECK(static_cast<int64_t>(chunk_tensor.size()) + n < std::numeric_limits<int32_t>::max(), op,
                ": too many elements for one launch (", chunk_tensor.size(), " + ", n, " chunks)");
    chunk_tensor.insert(chunk_tensor.end(), static_cast<size_t>(n), static_cast<int32_t>(metas.size()));
    metas.push_back(tm);
  }
  Plan plan;
  plan.n_chunks = static_cast<int64_t>(chunk_tensor.size());
  if (plan.n_chunks == 0) return plan;
  plan.blob = steu_ext::cuda::upload_tables(metas, chunk_tensor, grads[0].options());
  const uint8_t* d = plan.blob.const_data_ptr<uint8_t>();  // device allocations are >= 256-byte aligned
  plan.meta = reinterpret_cast<const TensorMeta*>(d);
  plan.chunk_tensor = reinterpret_cast<const int32_t*>(d + metas.size() * sizeof(TensorMeta));
  return plan;
}

// The chunk of block blockIdx.x: its tensor, first element and length.
struct ChunkRef {
  TensorMeta tm;
  int64_t begin, len;
};

__device__ __forceinline__ ChunkRef chunk_of(const TensorMeta* __restrict__ meta,
                                             const int32_t* __restrict__ chunk_tensor) {
  const int64_t c = blockIdx.x;
  ChunkRef ch;
  ch.tm = meta[chunk_tensor[c]];
  ch.begin = (c - ch.tm.first_chunk) * kChunk;
  ch.len = min(kChunk, ch.tm.numel - ch.begin);
  return ch;
}

// ---------------------------------------------------------------------------------------------------------
// grad_project_: coef = <g, r>_F / <r, r>_F

// Adds this thread's share of sum g*(r*f) and sum r*(r*f) (f = 1 without fisher) to acc[0], acc[1].
template <typename T>
__device__ void project_dots_chunk(const ChunkRef& ch, bool has_f, double (&acc)[2]) {
  const T* g = static_cast<const T*>(ch.tm.g) + ch.begin;
  const T* r = static_cast<const T*>(ch.tm.a) + ch.begin;
  const T* f = has_f ? static_cast<const T*>(ch.tm.f) + ch.begin : nullptr;
  auto add = [&](float gk, float rk, float fk) {
    const double rd = rk;
    const double fr = has_f ? rd * static_cast<double>(fk) : rd;  // as the reference: fr = r * F first
    acc[0] += static_cast<double>(gk) * fr;
    acc[1] += rd * fr;
  };
  int64_t k0 = 0;
  if (ch.tm.vec_ok) {
    const int64_t nvec = ch.len / 4;
    for (int64_t q = threadIdx.x; q < nvec; q += blockDim.x) {
      float gv[4], rv[4], fv[4] = {1.f, 1.f, 1.f, 1.f};
      load4(g + 4 * q, gv);
      load4(r + 4 * q, rv);
      if (has_f) load4(f + 4 * q, fv);
#pragma unroll
      for (int u = 0; u < 4; ++u) add(gv[u], rv[u], fv[u]);
    }
    k0 = nvec * 4;
  }
  for (int64_t k = k0 + threadIdx.x; k < ch.len; k += blockDim.x)
    add(to_f(g[k]), to_f(r[k]), has_f ? to_f(f[k]) : 1.f);
}

// partial[c] = chunk c's <g, r>_F, partial[n_chunks + c] = its <r, r>_F.
__global__ void __launch_bounds__(kThreads)
    project_dots_kernel(const TensorMeta* __restrict__ meta, const int32_t* __restrict__ chunk_tensor,
                        int64_t n_chunks, bool has_f, double* __restrict__ partial) {
  const ChunkRef ch = chunk_of(meta, chunk_tensor);
  double acc[2] = {0.0, 0.0};
  dispatch_dtype(ch.tm.g_dtype, [&](auto tag) { project_dots_chunk<decltype(tag)>(ch, has_f, acc); });
  block_sum(acc);
  if (threadIdx.x == 0) {
    partial[blockIdx.x] = acc[0];
    partial[n_chunks + blockIdx.x] = acc[1];
  }
}

// One block: sums the partials in a fixed order and writes the coefficient (the reference's formula).
__global__ void __launch_bounds__(kFinalizeThreads)
    project_finalize_kernel(const double* __restrict__ partial, int64_t n_chunks, bool conflict_only,
                            double eps, float* __restrict__ coef) {
  double acc[2] = {0.0, 0.0};
  for (int64_t c = threadIdx.x; c < n_chunks; c += blockDim.x) {
    acc[0] += partial[c];
    acc[1] += partial[n_chunks + c];
  }
  block_sum(acc);
  if (threadIdx.x == 0) {
    const double dot = acc[0], nn = acc[1];
    const bool ok = nn > eps && (!conflict_only || dot < 0);
    *coef = ok ? static_cast<float>(dot / (nn > 0 ? nn : 1.0)) : 0.0f;
  }
}

template <typename T>
__device__ void project_update_chunk(const ChunkRef& ch, float coef) {
  T* g = static_cast<T*>(ch.tm.g) + ch.begin;
  const T* r = static_cast<const T*>(ch.tm.a) + ch.begin;
  int64_t k0 = 0;
  if (ch.tm.vec_ok) {
    const int64_t nvec = ch.len / 4;
    for (int64_t q = threadIdx.x; q < nvec; q += blockDim.x) {
      float gv[4], rv[4];
      load4(g + 4 * q, gv);
      load4(r + 4 * q, rv);
#pragma unroll
      for (int u = 0; u < 4; ++u) gv[u] = __fsub_rn(gv[u], __fmul_rn(coef, rv[u]));
      store4(g + 4 * q, gv);
    }
    k0 = nvec * 4;
  }
  for (int64_t k = k0 + threadIdx.x; k < ch.len; k += blockDim.x)
    g[k] = static_cast<T>(__fsub_rn(to_f(g[k]), __fmul_rn(coef, to_f(r[k]))));
}

__global__ void __launch_bounds__(kThreads)
    project_update_kernel(const TensorMeta* __restrict__ meta, const int32_t* __restrict__ chunk_tensor,
                          const float* __restrict__ coef_ptr) {
  const float coef = *coef_ptr;
  if (coef == 0.0f) return;  // grads stay bit-identical (the CPU kernel skips this pass too)
  const ChunkRef ch = chunk_of(meta, chunk_tensor);
  dispatch_dtype(ch.tm.g_dtype, [&](auto tag) { project_update_chunk<decltype(tag)>(ch, coef); });
}

// ---------------------------------------------------------------------------------------------------------
// grad_project_basis_: c_j = <g, b_j>, g <- g - sum_j c_j b_j

// partial[j * n_chunks + c] = chunk c's <g, b_j>, kBasisTile directions per pass over the chunk.
template <typename G, typename Bt>
__device__ void basis_dots_chunk(const ChunkRef& ch, int64_t m, int64_t n_chunks, double* partial) {
  const G* g = static_cast<const G*>(ch.tm.g) + ch.begin;
  const Bt* b = static_cast<const Bt*>(ch.tm.a) + ch.begin;  // direction j starts at b + j * numel
  const int64_t numel = ch.tm.numel;
  for (int64_t j0 = 0; j0 < m; j0 += kBasisTile) {
    const int64_t nt = min(static_cast<int64_t>(kBasisTile), m - j0);  // uniform over the block
    double acc[kBasisTile] = {};
    int64_t k0 = 0;
    if (ch.tm.vec_ok) {
      const int64_t nvec = ch.len / 4;
      for (int64_t q = threadIdx.x; q < nvec; q += blockDim.x) {
        float gv[4];
        load4(g + 4 * q, gv);
#pragma unroll
        for (int u = 0; u < kBasisTile; ++u) {
          if (u < nt) {
            float bv[4];
            load4(b + (j0 + u) * numel + 4 * q, bv);
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[u] += static_cast<double>(gv[e]) * static_cast<double>(bv[e]);
          }
        }
      }
      k0 = nvec * 4;
    }
    for (int64_t k = k0 + threadIdx.x; k < ch.len; k += blockDim.x) {
      const double gk = to_f(g[k]);
#pragma unroll
      for (int u = 0; u < kBasisTile; ++u)
        if (u < nt) acc[u] += gk * static_cast<double>(to_f(b[(j0 + u) * numel + k]));
    }
    block_sum(acc);  // every thread takes part: the loop bounds are uniform
    if (threadIdx.x == 0) {
      for (int u = 0; u < nt; ++u) partial[(j0 + u) * n_chunks + blockIdx.x] = acc[u];
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    basis_dots_kernel(const TensorMeta* __restrict__ meta, const int32_t* __restrict__ chunk_tensor,
                      int64_t m, int64_t n_chunks, double* __restrict__ partial) {
  const ChunkRef ch = chunk_of(meta, chunk_tensor);
  dispatch_dtype(ch.tm.g_dtype, [&](auto gtag) {
    dispatch_dtype(ch.tm.a_dtype, [&](auto btag) {
      basis_dots_chunk<decltype(gtag), decltype(btag)>(ch, m, n_chunks, partial);
    });
  });
}

// Block j: c[j] = sum over chunks of partial[j * n_chunks + c], in a fixed order.
__global__ void __launch_bounds__(kFinalizeThreads)
    basis_finalize_kernel(const double* __restrict__ partial, int64_t n_chunks, float* __restrict__ coef) {
  const double* row = partial + static_cast<int64_t>(blockIdx.x) * n_chunks;
  double acc[1] = {0.0};
  for (int64_t c = threadIdx.x; c < n_chunks; c += blockDim.x) acc[0] += row[c];
  block_sum(acc);
  if (threadIdx.x == 0) coef[blockIdx.x] = static_cast<float>(acc[0]);
}

// g <- g - sum_j c_j b_j, the sum accumulated in float in j order as the CPU kernel.
template <typename G, typename Bt>
__device__ void basis_update_chunk(const ChunkRef& ch, int64_t m, const float* __restrict__ coef) {
  G* g = static_cast<G*>(ch.tm.g) + ch.begin;
  const Bt* b = static_cast<const Bt*>(ch.tm.a) + ch.begin;
  const int64_t numel = ch.tm.numel;
  int64_t k0 = 0;
  if (ch.tm.vec_ok) {
    const int64_t nvec = ch.len / 4;
    for (int64_t q = threadIdx.x; q < nvec; q += blockDim.x) {
      float acc[4] = {0.f, 0.f, 0.f, 0.f};
      for (int64_t j = 0; j < m; ++j) {
        const float cj = coef[j];
        float bv[4];
        load4(b + j * numel + 4 * q, bv);
#pragma unroll
        for (int u = 0; u < 4; ++u) acc[u] = __fadd_rn(acc[u], __fmul_rn(cj, bv[u]));
      }
      float gv[4];
      load4(g + 4 * q, gv);
#pragma unroll
      for (int u = 0; u < 4; ++u) gv[u] = __fsub_rn(gv[u], acc[u]);
      store4(g + 4 * q, gv);
    }
    k0 = nvec * 4;
  }
  for (int64_t k = k0 + threadIdx.x; k < ch.len; k += blockDim.x) {
    float acc = 0.f;
    for (int64_t j = 0; j < m; ++j) acc = __fadd_rn(acc, __fmul_rn(coef[j], to_f(b[j * numel + k])));
    g[k] = static_cast<G>(__fsub_rn(to_f(g[k]), acc));
  }
}

__global__ void __launch_bounds__(kThreads)
    basis_update_kernel(const TensorMeta* __restrict__ meta, const int32_t* __restrict__ chunk_tensor,
                        int64_t m, const float* __restrict__ coef) {
  const ChunkRef ch = chunk_of(meta, chunk_tensor);
  dispatch_dtype(ch.tm.g_dtype, [&](auto gtag) {
    dispatch_dtype(ch.tm.a_dtype, [&](auto btag) {
      basis_update_chunk<decltype(gtag), decltype(btag)>(ch, m, coef);
    });
  });
}

// ---------------------------------------------------------------------------------------------------------
// Host entry points

bool is_float_dtype(at::ScalarType st) {
  return st == at::kFloat || st == at::kHalf || st == at::kBFloat16;
}

at::Tensor grad_project_cuda(at::TensorList grads, at::TensorList ref, std::optional<at::TensorList> fisher,
                             bool conflict_only, double eps) {
  const size_t n = grads.size();
  TORCH_CHECK(n >= 1, "grad_project_: grads must not be empty");
  TORCH_CHECK(ref.size() == n, "grad_project_: ", n, " grads but ", ref.size(), " ref tensors");
  const bool has_f = fisher.has_value();
  TORCH_CHECK(!has_f || fisher->size() == n, "grad_project_: ", n, " grads but ", fisher->size(),
              " fisher tensors");
  const at::Device device = grads[0].device();
  TORCH_CHECK(device.is_cuda(), "grad_project_: grads must be CUDA tensors, got ", device);
  for (size_t i = 0; i < n; ++i) {
    const auto st = grads[i].scalar_type();
    TORCH_CHECK(is_float_dtype(st), "grad_project_: grads[", i, "] has unsupported dtype ", st);
    TORCH_CHECK(grads[i].device() == device && ref[i].device() == device, "grad_project_: grads[", i,
                "] and ref[", i, "] must be on ", device);
    TORCH_CHECK(grads[i].is_contiguous() && ref[i].is_contiguous(), "grad_project_: grads[", i,
                "] and ref[", i, "] must be contiguous");
    TORCH_CHECK(ref[i].scalar_type() == st && ref[i].sizes() == grads[i].sizes(), "grad_project_: ref[", i,
                "] must match grads[", i, "] in dtype and shape");
    if (has_f) {
      const at::Tensor& f = (*fisher)[i];
      TORCH_CHECK(f.device() == device && f.is_contiguous() && f.scalar_type() == st &&
                      f.sizes() == grads[i].sizes(),
                  "grad_project_: fisher[", i, "] must be a contiguous tensor on ", device,
                  " matching grads[", i, "] in dtype and shape");
    }
  }

  const c10::cuda::CUDAGuard guard(device);
  const auto fopts = grads[0].options().dtype(at::kFloat);
  const Plan plan = make_plan(grads, ref, fisher, /*basis=*/false, "grad_project_");
  if (plan.n_chunks == 0) return at::zeros({}, fopts);  // all tensors empty: dot = nn = 0 -> coef 0

  at::Tensor coef = at::empty({}, fopts);
  at::Tensor partial = at::empty({2 * plan.n_chunks}, grads[0].options().dtype(at::kDouble));
  double* part_p = partial.data_ptr<double>();
  float* coef_p = coef.data_ptr<float>();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index());
  const auto grid = static_cast<unsigned>(plan.n_chunks);
  project_dots_kernel<<<grid, kThreads, 0, stream>>>(plan.meta, plan.chunk_tensor, plan.n_chunks, has_f,
                                                     part_p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  project_finalize_kernel<<<1, kFinalizeThreads, 0, stream>>>(part_p, plan.n_chunks, conflict_only, eps,
                                                               coef_p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  project_update_kernel<<<grid, kThreads, 0, stream>>>(plan.meta, plan.chunk_tensor, coef_p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return coef;
}

at::Tensor grad_project_basis_cuda(at::TensorList grads, at::TensorList basis) {
  const size_t n = grads.size();
  TORCH_CHECK(n >= 1, "grad_project_basis_: grads must not be empty");
  TORCH_CHECK(basis.size() == n, "grad_project_basis_: ", n, " grads but ", basis.size(), " basis tensors");
  TORCH_CHECK(basis[0].dim() >= 1, "grad_project_basis_: basis[0] must have a leading dimension m");
  const int64_t m = basis[0].size(0);
  TORCH_CHECK(m >= 1, "grad_project_basis_: the basis must have at least one direction (m >= 1)");
  TORCH_CHECK(m <= std::numeric_limits<int32_t>::max(), "grad_project_basis_: too many directions (", m, ")");
  const at::Device device = grads[0].device();
  TORCH_CHECK(device.is_cuda(), "grad_project_basis_: grads must be CUDA tensors, got ", device);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& g = grads[i];
    const at::Tensor& b = basis[i];
    TORCH_CHECK(is_float_dtype(g.scalar_type()) && is_float_dtype(b.scalar_type()),
                "grad_project_basis_: grads[", i, "] and basis[", i, "] must be float32/float16/bfloat16");
    TORCH_CHECK(g.device() == device && b.device() == device, "grad_project_basis_: grads[", i,
                "] and basis[", i, "] must be on ", device);
    TORCH_CHECK(g.is_contiguous() && b.is_contiguous(), "grad_project_basis_: grads[", i, "] and basis[", i,
                "] must be contiguous");
    TORCH_CHECK(b.dim() == g.dim() + 1 && b.size(0) == m && b.sizes().slice(1) == g.sizes(),
                "grad_project_basis_: basis[", i, "] must have shape [", m, ", *grads[", i, "].shape], got ",
                b.sizes(), " for grads shape ", g.sizes());
  }

  const c10::cuda::CUDAGuard guard(device);
  const auto fopts = grads[0].options().dtype(at::kFloat);
  const Plan plan = make_plan(grads, basis, std::nullopt, /*basis=*/true, "grad_project_basis_");
  if (plan.n_chunks == 0) return at::zeros({m}, fopts);  // all tensors empty: c = 0

  at::Tensor coef = at::empty({m}, fopts);
  at::Tensor partial = at::empty({m * plan.n_chunks}, grads[0].options().dtype(at::kDouble));
  double* part_p = partial.data_ptr<double>();
  float* coef_p = coef.data_ptr<float>();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index());
  const auto grid = static_cast<unsigned>(plan.n_chunks);
  basis_dots_kernel<<<grid, kThreads, 0, stream>>>(plan.meta, plan.chunk_tensor, m, plan.n_chunks, part_p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  basis_finalize_kernel<<<static_cast<unsigned>(m), kFinalizeThreads, 0, stream>>>(part_p, plan.n_chunks,
                                                                                  coef_p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  basis_update_kernel<<<grid, kThreads, 0, stream>>>(plan.meta, plan.chunk_tensor, m, coef_p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return coef;
}

}  // namespace

TORCH_LIBRARY_IMPL(steu_ext, CUDA, m) {
  m.impl("grad_project_", &grad_project_cuda);
  m.impl("grad_project_basis_", &grad_project_basis_cuda);
}

}  // namespace steu_ext
