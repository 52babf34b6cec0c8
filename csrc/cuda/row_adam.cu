// CUDA kernel for steu_ext::row_adam_: one Adam/AdamW step on the K rows `rows` of a [V, D] parameter
// (same semantics as csrc/cpu/row_adam.cpp and steu_ext/reference/row_adam.py).
//
// One fused launch over K x D: block (x, y) handles columns [x * blockDim.x * VEC, ...) of rows
// y, y + gridDim.y, ... (grid-stride over rows). The element math is the CPU kernel's, operation for
// operation, with IEEE round-to-nearest intrinsics (__fmul_rn, __fadd_rn, __fdiv_rn, __fsqrt_rn) so nvcc
// cannot contract it into FMAs: the fp32 results are meant to be bit-identical to the x86 CPU kernel.
// The bias corrections are computed in double from the step value read on the device (once per block,
// by thread 0); the host never reads `step` unless it is a CPU tensor. No host sync.
#include <ATen/Dispatch_v2.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "utils.cuh"

namespace steu_ext {
namespace {

using steu_ext::cuda::ceil_div;
using steu_ext::cuda::Vec;

constexpr int kThreads = 256;

// Where the step count comes from.
enum StepKind : int32_t {
  kStepHost = 0,  // step was a CPU tensor: step_size / bc2_sqrt already computed on the host
  kStepF32,
  kStepF64,
  kStepF16,
  kStepBF16,
  kStepI32,
  kStepI64,
};

struct AdamArgs {
  float gsign;            // -1 when maximizing
  float wd;               // coupled (L2) weight decay, added to the gradient
  float decay;            // decoupled (AdamW) factor 1 - lr * wd; 1 when not decoupled
  float lerp_w;           // 1 - beta1
  float beta2, one_minus_beta2, eps;
  bool coupled_wd;        // weight_decay != 0 && !decoupled
  bool lerp_small;        // |lerp_w| < 0.5: at::lerp's first formula
  double lr, beta1_d, beta2_d;
  const void* step;       // device pointer to the step value (step_kind != kStepHost)
  int32_t step_kind;
  float step_size, bc2_sqrt;  // used as given when step_kind == kStepHost
};

__device__ double read_step(const void* p, int32_t kind) {
  switch (kind) {
    case kStepF32:
      return static_cast<double>(*static_cast<const float*>(p));
    case kStepF64:
      return *static_cast<const double*>(p);
    case kStepF16:
      return static_cast<double>(static_cast<float>(*static_cast<const c10::Half*>(p)));
    case kStepBF16:
      return static_cast<double>(static_cast<float>(*static_cast<const c10::BFloat16*>(p)));
    case kStepI32:
      return static_cast<double>(*static_cast<const int32_t*>(p));
    case kStepI64:
      return static_cast<double>(*static_cast<const int64_t*>(p));
    default:
      return 0.0;
  }
}

// One element, exactly as csrc/cpu/row_adam.cpp (which is torch.optim.Adam's single-tensor math).
__device__ __forceinline__ void adam_elem(float& p, float graw, float& m, float& v, const AdamArgs& a,
                                          float step_size, float bc2_sqrt) {
  float g = __fmul_rn(graw, a.gsign);
  if (a.coupled_wd) g = __fadd_rn(g, __fmul_rn(a.wd, p));
  p = __fmul_rn(p, a.decay);
  const float m0 = m;
  // at::lerp: self + w * (end - self) for |w| < 0.5, else end - (end - self) * (1 - w)
  m = a.lerp_small ? __fadd_rn(m0, __fmul_rn(a.lerp_w, __fsub_rn(g, m0)))
                   : __fsub_rn(g, __fmul_rn(__fsub_rn(g, m0), __fsub_rn(1.0f, a.lerp_w)));
  v = __fadd_rn(__fmul_rn(v, a.beta2), __fmul_rn(__fmul_rn(a.one_minus_beta2, g), g));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), bc2_sqrt), a.eps);
  p = __fsub_rn(p, __fdiv_rn(__fmul_rn(step_size, m), denom));
}

// VEC = 4: param/grad rows are read as 4-element vectors and exp_avg/exp_avg_sq as float4 (the host
// checks D % 4 == 0 and the base pointers' alignment); VEC = 1 otherwise.
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    row_adam_kernel(scalar_t* __restrict__ param, const scalar_t* __restrict__ grad,
                    const int64_t* __restrict__ rows, float* __restrict__ exp_avg,
                    float* __restrict__ exp_avg_sq, int64_t V, int64_t K, int64_t D, bool grad_gathered,
                    const AdamArgs a) {
  __shared__ float s_step_size, s_bc2_sqrt;
  if (threadIdx.x == 0) {
    if (a.step_kind == kStepHost) {
      s_step_size = a.step_size;
      s_bc2_sqrt = a.bc2_sqrt;
    } else {
      // As the CPU kernel: bc1, bc2 in double from t, then step_size and sqrt(bc2) rounded to float.
      const double t = read_step(a.step, a.step_kind);
      const double bc1 = 1.0 - ::pow(a.beta1_d, t);
      const double bc2 = 1.0 - ::pow(a.beta2_d, t);
      s_step_size = static_cast<float>(a.lr / bc1);
      s_bc2_sqrt = static_cast<float>(::sqrt(bc2));
    }
  }
  __syncthreads();
  const float step_size = s_step_size, bc2_sqrt = s_bc2_sqrt;

  const int64_t j = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;  // first column
  if (j >= D) return;  // no barrier below this point
  for (int64_t k = blockIdx.y; k < K; k += gridDim.y) {
    const int64_t r = rows[k];
    // The Python wrapper rejects out-of-range rows; skip them here rather than write out of bounds.
    if (static_cast<uint64_t>(r) >= static_cast<uint64_t>(V)) continue;
    scalar_t* p_ptr = param + r * D + j;
    const scalar_t* g_ptr = grad + (grad_gathered ? k : r) * D + j;
    float* m_ptr = exp_avg + k * D + j;
    float* v_ptr = exp_avg_sq + k * D + j;
    if constexpr (VEC == 4) {
      Vec<scalar_t, 4> pv = *reinterpret_cast<const Vec<scalar_t, 4>*>(p_ptr);
      const Vec<scalar_t, 4> gv = *reinterpret_cast<const Vec<scalar_t, 4>*>(g_ptr);
      float4 mv = *reinterpret_cast<const float4*>(m_ptr);
      float4 vv = *reinterpret_cast<const float4*>(v_ptr);
      float p[4] = {static_cast<float>(pv.v[0]), static_cast<float>(pv.v[1]), static_cast<float>(pv.v[2]),
                    static_cast<float>(pv.v[3])};
      adam_elem(p[0], static_cast<float>(gv.v[0]), mv.x, vv.x, a, step_size, bc2_sqrt);
      adam_elem(p[1], static_cast<float>(gv.v[1]), mv.y, vv.y, a, step_size, bc2_sqrt);
      adam_elem(p[2], static_cast<float>(gv.v[2]), mv.z, vv.z, a, step_size, bc2_sqrt);
      adam_elem(p[3], static_cast<float>(gv.v[3]), mv.w, vv.w, a, step_size, bc2_sqrt);
#pragma unroll
      for (int u = 0; u < 4; ++u) pv.v[u] = static_cast<scalar_t>(p[u]);
      *reinterpret_cast<Vec<scalar_t, 4>*>(p_ptr) = pv;
      *reinterpret_cast<float4*>(m_ptr) = mv;
      *reinterpret_cast<float4*>(v_ptr) = vv;
    } else {
      float p = static_cast<float>(*p_ptr);
      float m = *m_ptr, v = *v_ptr;
      adam_elem(p, static_cast<float>(*g_ptr), m, v, a, step_size, bc2_sqrt);
      *p_ptr = static_cast<scalar_t>(p);
      *m_ptr = m;
      *v_ptr = v;
    }
  }
}

AdamArgs make_args(double lr, double beta1, double beta2, double eps, double weight_decay, bool decoupled,
                   bool maximize) {
  const double lerp_w = 1.0 - beta1;
  AdamArgs a{};
  a.gsign = maximize ? -1.0f : 1.0f;
  a.wd = static_cast<float>(weight_decay);
  a.decay = (weight_decay != 0 && decoupled) ? static_cast<float>(1.0 - lr * weight_decay) : 1.0f;
  a.lerp_w = static_cast<float>(lerp_w);
  a.beta2 = static_cast<float>(beta2);
  a.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  a.eps = static_cast<float>(eps);
  a.coupled_wd = weight_decay != 0 && !decoupled;
  a.lerp_small = std::abs(lerp_w) < 0.5;
  a.lr = lr;
  a.beta1_d = beta1;
  a.beta2_d = beta2;
  return a;
}

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <typename scalar_t>
void launch(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& rows, const at::Tensor& exp_avg,
            const at::Tensor& exp_avg_sq, int64_t V, int64_t K, int64_t D, bool grad_gathered,
            const AdamArgs& a) {
  scalar_t* p = param.data_ptr<scalar_t>();
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  const int64_t* r = rows.const_data_ptr<int64_t>();
  float* m = exp_avg.data_ptr<float>();
  float* v = exp_avg_sq.data_ptr<float>();
  const bool vec4 = D % 4 == 0 && aligned(p, 4 * sizeof(scalar_t)) && aligned(g, 4 * sizeof(scalar_t)) &&
                    aligned(m, 16) && aligned(v, 16);
  const int vec = vec4 ? 4 : 1;
  const int64_t per_row = ceil_div(D, vec);  // threads needed per row
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, ceil_div(per_row, 32) * 32));
  const int64_t grid_x = ceil_div(per_row, threads);
  TORCH_CHECK(grid_x <= 0x7fffffff, "row_adam_: rows too long (D = ", D, ")");
  // About one resident wave of blocks in total; each block walks its rows with a stride of gridDim.y, so
  // the per-block prologue (two double pow) is paid once per block, not once per row.
  const int device = param.get_device();
  const int64_t target_blocks = static_cast<int64_t>(steu_ext::cuda::sm_count(device)) * (2048 / threads);
  const int64_t grid_y = std::clamp<int64_t>(ceil_div(target_blocks, grid_x), 1, std::min<int64_t>(K, 65535));
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device);
  if (vec4) {
    row_adam_kernel<scalar_t, 4><<<grid, threads, 0, stream>>>(p, g, r, m, v, V, K, D, grad_gathered, a);
  } else {
    row_adam_kernel<scalar_t, 1><<<grid, threads, 0, stream>>>(p, g, r, m, v, V, K, D, grad_gathered, a);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void row_adam_cuda(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& rows,
                   const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq, const at::Tensor& step, double lr,
                   double beta1, double beta2, double eps, double weight_decay, bool decoupled, bool maximize,
                   bool grad_gathered) {
  TORCH_CHECK(param.dim() == 2 && param.is_contiguous(), "row_adam_: param must be a contiguous 2-D tensor");
  TORCH_CHECK(param.is_cuda(), "row_adam_: param must be a CUDA tensor");
  const auto dt = param.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
              "row_adam_: param must be float32, float16 or bfloat16, got ", dt);
  TORCH_CHECK(grad.scalar_type() == dt, "row_adam_: grad dtype ", grad.scalar_type(), " != param dtype ", dt);
  TORCH_CHECK(rows.scalar_type() == at::kLong && rows.dim() == 1 && rows.is_contiguous(),
              "row_adam_: rows must be a contiguous 1-D int64 tensor");
  const int64_t V = param.size(0), D = param.size(1), K = rows.size(0);
  TORCH_CHECK(grad.is_contiguous() && grad.dim() == 2 && grad.size(0) == (grad_gathered ? K : V) &&
                  grad.size(1) == D,
              "row_adam_: grad must be contiguous with shape [", grad_gathered ? K : V, ", ", D, "], got ",
              grad.sizes());
  for (const at::Tensor* s : {&exp_avg, &exp_avg_sq}) {
    TORCH_CHECK(s->scalar_type() == at::kFloat && s->is_contiguous() && s->dim() == 2 && s->size(0) == K &&
                    s->size(1) == D,
                "row_adam_: exp_avg and exp_avg_sq must be contiguous float32 [", K, ", ", D, "], got ",
                s->scalar_type(), " ", s->sizes());
  }
  for (const at::Tensor* t : {&grad, &rows, &exp_avg, &exp_avg_sq}) {
    TORCH_CHECK(t->device() == param.device(), "row_adam_: all tensors must be on ", param.device(),
                " (step may also be a CPU tensor), got one on ", t->device());
  }
  TORCH_CHECK(step.numel() == 1, "row_adam_: step must hold one value, got ", step.numel());
  TORCH_CHECK(step.is_cpu() || step.device() == param.device(), "row_adam_: step must be on ",
              param.device(), " or the CPU, got ", step.device());
  if (K == 0 || D == 0) return;

  const c10::cuda::CUDAGuard guard(param.device());
  AdamArgs a = make_args(lr, beta1, beta2, eps, weight_decay, decoupled, maximize);
  if (step.is_cpu()) {  // reading a CPU value is not a device sync; same checks as the CPU kernel
    const double t = step.item<double>();
    TORCH_CHECK(t >= 1, "row_adam_: step must be >= 1 (increment it before the call), got ", t);
    a.step_kind = kStepHost;
    a.step_size = static_cast<float>(lr / (1.0 - std::pow(beta1, t)));
    a.bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(beta2, t)));
  } else {
    // step >= 1 cannot be checked without a host sync; step < 1 gives inf/nan like the reference.
    a.step = step.const_data_ptr();
    switch (step.scalar_type()) {
      case at::kFloat:
        a.step_kind = kStepF32;
        break;
      case at::kDouble:
        a.step_kind = kStepF64;
        break;
      case at::kHalf:
        a.step_kind = kStepF16;
        break;
      case at::kBFloat16:
        a.step_kind = kStepBF16;
        break;
      case at::kInt:
        a.step_kind = kStepI32;
        break;
      case at::kLong:
        a.step_kind = kStepI64;
        break;
      default:
        TORCH_CHECK(false, "row_adam_: unsupported step dtype ", step.scalar_type());
    }
  }

  AT_DISPATCH_V2(dt, "row_adam_", AT_WRAP([&] {
    launch<scalar_t>(param, grad, rows, exp_avg, exp_avg_sq, V, K, D, grad_gathered, a);
  }), at::kFloat, at::kHalf, at::kBFloat16);
}

// ---------------------------------------------------------------------------------------------------------
// multi_adam_: the dense step over every element of a list of tensors, one launch. Each tensor is cut into
// kMultiChunk-element chunks; block c handles chunk c of whichever tensor it belongs to (tables built on the
// host, uploaded asynchronously: no host sync), with that tensor's dtype and step count.

constexpr int64_t kMultiChunk = 16384;  // a multiple of 4: chunks of an aligned tensor start aligned

struct AdamTensor {
  void* p;
  const void* g;
  float* m;
  float* v;
  const float* step;
  int64_t numel;
  int64_t first_chunk;
  int32_t dtype;   // steu_ext::cuda::DType of p and g
  int32_t vec_ok;  // p, g aligned to 4 elements and m, v to 16 bytes
};

template <typename T>
__device__ void multi_adam_chunk(const AdamTensor& t, int64_t begin, int64_t len, const AdamArgs& a,
                                 float step_size, float bc2_sqrt) {
  T* p = static_cast<T*>(t.p) + begin;
  const T* g = static_cast<const T*>(t.g) + begin;
  float* m = t.m + begin;
  float* v = t.v + begin;
  int64_t done = 0;
  if (t.vec_ok) {
    const int64_t n4 = len / 4;
    for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
      float pv[4], gv[4];
      steu_ext::cuda::load4(p + 4 * i, pv);
      steu_ext::cuda::load4(g + 4 * i, gv);
      float4 mv = reinterpret_cast<const float4*>(m)[i];
      float4 vv = reinterpret_cast<const float4*>(v)[i];
      adam_elem(pv[0], gv[0], mv.x, vv.x, a, step_size, bc2_sqrt);
      adam_elem(pv[1], gv[1], mv.y, vv.y, a, step_size, bc2_sqrt);
      adam_elem(pv[2], gv[2], mv.z, vv.z, a, step_size, bc2_sqrt);
      adam_elem(pv[3], gv[3], mv.w, vv.w, a, step_size, bc2_sqrt);
      steu_ext::cuda::store4(p + 4 * i, pv);
      reinterpret_cast<float4*>(m)[i] = mv;
      reinterpret_cast<float4*>(v)[i] = vv;
    }
    done = 4 * n4;
  }
  for (int64_t i = done + threadIdx.x; i < len; i += blockDim.x) {
    float pf = static_cast<float>(p[i]);
    float mf = m[i], vf = v[i];
    adam_elem(pf, static_cast<float>(g[i]), mf, vf, a, step_size, bc2_sqrt);
    p[i] = static_cast<T>(pf);
    m[i] = mf;
    v[i] = vf;
  }
}

__global__ void __launch_bounds__(kThreads)
    multi_adam_kernel(const AdamTensor* __restrict__ meta, const int32_t* __restrict__ chunk_tensor,
                      const AdamArgs a) {
  const int64_t c = blockIdx.x;
  const AdamTensor t = meta[chunk_tensor[c]];
  __shared__ float s_step_size, s_bc2_sqrt;
  if (threadIdx.x == 0) {
    const double step = static_cast<double>(*t.step);
    s_step_size = static_cast<float>(a.lr / (1.0 - ::pow(a.beta1_d, step)));
    s_bc2_sqrt = static_cast<float>(::sqrt(1.0 - ::pow(a.beta2_d, step)));
  }
  __syncthreads();
  const int64_t begin = (c - t.first_chunk) * kMultiChunk;
  const int64_t len = min(kMultiChunk, t.numel - begin);
  steu_ext::cuda::dispatch_dtype(t.dtype, [&](auto tag) {
    multi_adam_chunk<decltype(tag)>(t, begin, len, a, s_step_size, s_bc2_sqrt);
  });
}

void multi_adam_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                     at::TensorList exp_avg_sqs, at::TensorList steps, double lr, double beta1, double beta2,
                     double eps, double weight_decay, bool decoupled, bool maximize) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n && steps.size() == n,
              "multi_adam_: params, grads, exp_avgs, exp_avg_sqs and steps must have the same length");
  if (n == 0) return;
  const at::Device device = params[0].device();
  TORCH_CHECK(device.is_cuda(), "multi_adam_: params must be CUDA tensors");
  std::vector<AdamTensor> metas;
  std::vector<int32_t> chunk_tensor;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor &p = params[i], &g = grads[i], &m = exp_avgs[i], &v = exp_avg_sqs[i], &t = steps[i];
    for (const at::Tensor* x : {&p, &g, &m, &v, &t}) {
      TORCH_CHECK(x->device() == device, "multi_adam_: every tensor must be on ", device, ", got one on ",
                  x->device(), " (list index ", i, ")");
    }
    TORCH_CHECK(p.is_contiguous() && g.is_contiguous() && g.scalar_type() == p.scalar_type() &&
                    g.numel() == p.numel(),
                "multi_adam_: grads[", i, "] must be contiguous with the dtype and size of params[", i, "]");
    TORCH_CHECK(m.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat && m.is_contiguous() &&
                    v.is_contiguous() && m.numel() == p.numel() && v.numel() == p.numel(),
                "multi_adam_: exp_avgs[", i, "] and exp_avg_sqs[", i, "] must be contiguous float32 with ",
                p.numel(), " elements");
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.numel() == 1, "multi_adam_: steps[", i,
                "] must be one float32 value on the device");
    if (p.numel() == 0) continue;
    AdamTensor tm{};
    tm.p = p.data_ptr();
    tm.g = g.const_data_ptr();
    tm.m = m.data_ptr<float>();
    tm.v = v.data_ptr<float>();
    tm.step = t.const_data_ptr<float>();
    tm.numel = p.numel();
    tm.first_chunk = static_cast<int64_t>(chunk_tensor.size());
    tm.dtype = steu_ext::cuda::dtype_code(p.scalar_type(), "multi_adam_");
    const size_t ev = 4 * p.element_size();
    tm.vec_ok = aligned(tm.p, ev) && aligned(tm.g, ev) && aligned(tm.m, 16) && aligned(tm.v, 16);
    const int64_t nc = ceil_div(tm.numel, kMultiChunk);
    TORCH_CHECK(static_cast<int64_t>(chunk_tensor.size()) + nc < 0x7fffffff,
                "multi_adam_: too many elements for one launch");
    chunk_tensor.insert(chunk_tensor.end(), static_cast<size_t>(nc), static_cast<int32_t>(metas.size()));
    metas.push_back(tm);
  }
  if (chunk_tensor.empty()) return;
  const c10::cuda::CUDAGuard guard(device);
  const at::Tensor blob = steu_ext::cuda::upload_tables(metas, chunk_tensor, params[0].options());
  const uint8_t* d = blob.const_data_ptr<uint8_t>();
  const AdamArgs a = make_args(lr, beta1, beta2, eps, weight_decay, decoupled, maximize);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index());
  multi_adam_kernel<<<static_cast<unsigned>(chunk_tensor.size()), kThreads, 0, stream>>>(
      reinterpret_cast<const AdamTensor*>(d),
      reinterpret_cast<const int32_t*>(d + metas.size() * sizeof(AdamTensor)), a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(steu_ext, CUDA, m) {
  m.impl("row_adam_", &row_adam_cuda);
  m.impl("multi_adam_", &multi_adam_cuda);
}

}  // namespace steu_ext
