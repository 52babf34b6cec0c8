// Helpers shared by the CUDA kernels in csrc/cuda/*.cu (header-only; each .cu is its own translation unit).
//
// Only c10/ATen headers that a CPU-only torch wheel also ships are included (no ATen/cuda/CUDAContext.h,
// which pulls in cuBLAS/cuSPARSE/cuSOLVER headers): c10::cuda::getCurrentCUDAStream is the function that
// at::cuda::getCurrentCUDAStream names.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <ATen/ops/empty.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace steu_ext {
namespace cuda {

constexpr int kWarp = 32;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Number of SMs of `device` (a cached driver attribute; no synchronisation).
inline int sm_count(int device) {
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  return n > 0 ? n : 1;
}

// Element types of the float tensors the multi-tensor kernels read, as stored in their metadata tables.
enum DType : int32_t { kF32 = 0, kF16 = 1, kBF16 = 2 };

inline DType dtype_code(at::ScalarType st, const char* op) {
  switch (st) {
    case at::kFloat:
      return kF32;
    case at::kHalf:
      return kF16;
    case at::kBFloat16:
      return kBF16;
    default:
      break;
  }
  TORCH_CHECK(false, op, ": unsupported dtype ", st, " (expected float32, float16 or bfloat16)");
  return kF32;  // unreachable
}

// Copies a multi-tensor launch's tables -- `metas` (one struct per tensor, sizeof a multiple of 8) then the
// int32 chunk -> tensor map -- to one device buffer on `options`' device: staged in pinned memory and copied
// with non_blocking on the current stream, so no host sync (the caching host allocator keeps the staging
// buffer alive until the copy has run). Returns the buffer; the map starts at byte metas.size() * sizeof(Meta).
template <typename Meta>
at::Tensor upload_tables(const std::vector<Meta>& metas, const std::vector<int32_t>& chunk_tensor,
                         const at::TensorOptions& options) {
  static_assert(sizeof(Meta) % 8 == 0, "table entries must keep the chunk map 8-byte aligned");
  const size_t meta_bytes = metas.size() * sizeof(Meta);
  const size_t bytes = meta_bytes + chunk_tensor.size() * sizeof(int32_t);
  at::Tensor host = at::empty({static_cast<int64_t>(bytes)},
                              at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  uint8_t* h = host.data_ptr<uint8_t>();
  std::memcpy(h, metas.data(), meta_bytes);
  std::memcpy(h + meta_bytes, chunk_tensor.data(), chunk_tensor.size() * sizeof(int32_t));
  at::Tensor blob = at::empty({static_cast<int64_t>(bytes)}, options.dtype(at::kByte));
  blob.copy_(host, /*non_blocking=*/true);
  return blob;
}

// Calls f(T{}) with T the element type of dtype code `code` (a uniform per-block switch).
template <typename F>
__device__ __forceinline__ void dispatch_dtype(int32_t code, F&& f) {
  switch (code) {
    case kF16:
      f(c10::Half{});
      break;
    case kBF16:
      f(c10::BFloat16{});
      break;
    default:
      f(float{});
      break;
  }
}

// `N` elements of `T` loaded/stored as one access; requires a pointer aligned to sizeof(T) * N.
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename T>
__device__ __forceinline__ float to_f(T x) {
  return static_cast<float>(x);
}

// float -> T with round-to-nearest-even (c10::Half / c10::BFloat16 constructors), identity for float.
template <typename T>
__device__ __forceinline__ T from_f(float x) {
  return static_cast<T>(x);
}

// Loads 4 consecutive elements as float. `p` must be aligned to 4 * sizeof(T) bytes.
template <typename T>
__device__ __forceinline__ void load4(const T* p, float (&out)[4]) {
  const Vec<T, 4> v = *reinterpret_cast<const Vec<T, 4>*>(p);
#pragma unroll
  for (int u = 0; u < 4; ++u) out[u] = to_f(v.v[u]);
}

template <typename T>
__device__ __forceinline__ void store4(T* p, const float (&in)[4]) {
  Vec<T, 4> v;
#pragma unroll
  for (int u = 0; u < 4; ++u) v.v[u] = from_f<T>(in[u]);
  *reinterpret_cast<Vec<T, 4>*>(p) = v;
}

__device__ __forceinline__ double warp_sum(double x) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) x += __shfl_down_sync(0xffffffffu, x, o);
  return x;
}

// Sums x[0..N) over the block with a fixed tree (shuffles within warps, then warp 0 over the warp
// partials in warp order): the result depends only on the values and blockDim.x, never on timing.
// blockDim.x must be a multiple of 32 and at most 1024. The totals are valid in thread 0 only. Every
// thread of the block must call it (it synchronises); it may be called repeatedly (leading barrier).
template <int N>
__device__ __forceinline__ void block_sum(double (&x)[N]) {
  __shared__ double partial[N][kWarp];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int nwarps = blockDim.x / kWarp;
#pragma unroll
  for (int i = 0; i < N; ++i) x[i] = warp_sum(x[i]);
  __syncthreads();  // a previous call's reads of `partial` are done
  if (lane == 0) {
#pragma unroll
    for (int i = 0; i < N; ++i) partial[i][warp] = x[i];
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
      x[i] = warp_sum(lane < nwarps ? partial[i][lane] : 0.0);
    }
  }
}

}  // namespace cuda
}  // namespace steu_ext
