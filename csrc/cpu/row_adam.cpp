// CPU kernel for steu_ext::row_adam_: one Adam/AdamW step on the K rows `rows` of a [V, D] parameter.
//
// Same arithmetic as torch.optim.Adam/AdamW's single-tensor path (lerp for the first moment, bias
// corrections in double, denom = sqrt(v) / sqrt(bc2) + eps), done in float32 with the moments in float32
// and the parameter read/written in its own dtype. Rows are independent; work is split over K * D.
// multi_adam_ is the same step over whole tensors of a list (dense parameters such as a classifier head),
// all tensors' chunks in one parallel region.
#include <ATen/Dispatch_v2.h>
#include <ATen/Parallel.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace steu_ext {
namespace {

struct AdamScalars {
  float gsign;      // -1 when maximizing
  float wd;         // coupled (L2) weight decay, added to the gradient
  float decay;      // decoupled (AdamW) factor 1 - lr * wd, 1 when not decoupled
  float lerp_w;     // 1 - beta1
  float beta2, one_minus_beta2, step_size, bc2_sqrt, eps;
  bool coupled;     // weight_decay != 0 && !decoupled
  bool lerp_small;  // |1 - beta1| < 0.5: at::lerp's first formula
};

// One Adam step on n consecutive elements. The flags are template parameters so the loop has no branches
// and vectorizes (fp32).
template <typename scalar_t, bool kCoupledWd, bool kLerpSmall>
inline void adam_span(scalar_t* __restrict__ p_row, const scalar_t* __restrict__ g_row,
                      float* __restrict__ m_row, float* __restrict__ v_row, int64_t n, const AdamScalars& a) {
  for (int64_t j = 0; j < n; ++j) {
    float p = static_cast<float>(p_row[j]);
    float g = static_cast<float>(g_row[j]) * a.gsign;
    if constexpr (kCoupledWd) g = g + a.wd * p;
    p = p * a.decay;
    const float m0 = m_row[j];
    // at::lerp: self + w * (end - self) for |w| < 0.5, else end - (end - self) * (1 - w)
    const float m = kLerpSmall ? m0 + a.lerp_w * (g - m0) : g - (g - m0) * (1.0f - a.lerp_w);
    const float v = v_row[j] * a.beta2 + a.one_minus_beta2 * g * g;
    const float denom = std::sqrt(v) / a.bc2_sqrt + a.eps;
    p = p - a.step_size * m / denom;
    m_row[j] = m;
    v_row[j] = v;
    p_row[j] = static_cast<scalar_t>(p);
  }
}

// adam_span with the flags of `a` chosen at run time.
template <typename scalar_t>
inline void adam_span_any(scalar_t* p, const scalar_t* g, float* m, float* v, int64_t n, const AdamScalars& a) {
  if (a.coupled && a.lerp_small)
    adam_span<scalar_t, true, true>(p, g, m, v, n, a);
  else if (a.coupled)
    adam_span<scalar_t, true, false>(p, g, m, v, n, a);
  else if (a.lerp_small)
    adam_span<scalar_t, false, true>(p, g, m, v, n, a);
  else
    adam_span<scalar_t, false, false>(p, g, m, v, n, a);
}

template <typename scalar_t>
void row_adam_impl(scalar_t* param, const scalar_t* grad, const int64_t* rows, float* exp_avg,
                   float* exp_avg_sq, int64_t K, int64_t D, bool grad_gathered, const AdamScalars a) {
  // Whole rows per task when D is large, several rows when it is small.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(D, 1));
  at::parallel_for(0, K, grain, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      adam_span_any<scalar_t>(param + rows[k] * D, grad + (grad_gathered ? k : rows[k]) * D,
                              exp_avg + k * D, exp_avg_sq + k * D, D, a);
    }
  });
}

// The per-call scalars of one Adam step at step count t (bias corrections in double, as torch does).
AdamScalars adam_scalars(double t, double lr, double beta1, double beta2, double eps, double weight_decay,
                         bool decoupled, bool maximize) {
  const double bc1 = 1.0 - std::pow(beta1, t);
  const double bc2 = 1.0 - std::pow(beta2, t);
  const double lerp_w = 1.0 - beta1;
  AdamScalars a;
  a.gsign = maximize ? -1.0f : 1.0f;
  a.wd = static_cast<float>(weight_decay);
  a.decay = (weight_decay != 0 && decoupled) ? static_cast<float>(1.0 - lr * weight_decay) : 1.0f;
  a.lerp_w = static_cast<float>(lerp_w);
  a.beta2 = static_cast<float>(beta2);
  a.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  a.step_size = static_cast<float>(lr / bc1);
  a.bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  a.eps = static_cast<float>(eps);
  a.coupled = weight_decay != 0 && !decoupled;
  a.lerp_small = std::abs(lerp_w) < 0.5;
  return a;
}

void row_adam_cpu(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& rows,
                  const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq, const at::Tensor& step, double lr,
                  double beta1, double beta2, double eps, double weight_decay, bool decoupled, bool maximize,
                  bool grad_gathered) {
  TORCH_CHECK(param.dim() == 2 && param.is_contiguous(), "row_adam_: param must be a contiguous 2-D tensor");
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
  TORCH_CHECK(step.numel() == 1, "row_adam_: step must hold one value, got ", step.numel());
  if (K == 0 || D == 0) return;

  const int64_t* rows_p = rows.data_ptr<int64_t>();
  for (const auto k : c10::irange(K)) {
    TORCH_CHECK(rows_p[k] >= 0 && rows_p[k] < V, "row_adam_: rows[", k, "] = ", rows_p[k],
                " is outside [0, ", V, ")");
  }

  const double t = step.item<double>();
  TORCH_CHECK(t >= 1, "row_adam_: step must be >= 1 (increment it before the call), got ", t);
  const AdamScalars a = adam_scalars(t, lr, beta1, beta2, eps, weight_decay, decoupled, maximize);
  AT_DISPATCH_V2(dt, "row_adam_", AT_WRAP([&] {
    row_adam_impl<scalar_t>(param.data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(), rows_p,
                            exp_avg.data_ptr<float>(), exp_avg_sq.data_ptr<float>(), K, D, grad_gathered, a);
  }), at::kFloat, at::kHalf, at::kBFloat16);
}

// Elements per task of multi_adam_: every tensor is cut into chunks of this size and the chunks of all
// tensors are shared among the threads in one parallel region.
constexpr int64_t kMultiChunk = 16384;

void multi_adam_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                    at::TensorList exp_avg_sqs, at::TensorList steps, double lr, double beta1, double beta2,
                    double eps, double weight_decay, bool decoupled, bool maximize) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n && steps.size() == n,
              "multi_adam_: params, grads, exp_avgs, exp_avg_sqs and steps must have the same length");
  struct Chunk {
    size_t tensor;
    int64_t begin, len;
  };
  std::vector<AdamScalars> scalars(n);
  std::vector<Chunk> chunks;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor &p = params[i], &g = grads[i], &m = exp_avgs[i], &v = exp_avg_sqs[i];
    const auto dt = p.scalar_type();
    TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, "multi_adam_: params[", i,
                "] must be float32, float16 or bfloat16, got ", dt);
    TORCH_CHECK(p.is_contiguous() && g.is_contiguous() && g.scalar_type() == dt && g.numel() == p.numel(),
                "multi_adam_: grads[", i, "] must be contiguous with the dtype and size of params[", i, "]");
    TORCH_CHECK(m.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat && m.is_contiguous() &&
                    v.is_contiguous() && m.numel() == p.numel() && v.numel() == p.numel(),
                "multi_adam_: exp_avgs[", i, "] and exp_avg_sqs[", i, "] must be contiguous float32 with ",
                p.numel(), " elements");
    TORCH_CHECK(steps[i].numel() == 1, "multi_adam_: steps[", i, "] must hold one value");
    const double t = steps[i].item<double>();
    TORCH_CHECK(t >= 1, "multi_adam_: steps[", i, "] must be >= 1 (increment it before the call), got ", t);
    scalars[i] = adam_scalars(t, lr, beta1, beta2, eps, weight_decay, decoupled, maximize);
    for (int64_t b = 0; b < p.numel(); b += kMultiChunk) {
      chunks.push_back({i, b, std::min(kMultiChunk, p.numel() - b)});
    }
  }
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const Chunk& ch = chunks[c];
      const at::Tensor& p = params[ch.tensor];
      float* m = exp_avgs[ch.tensor].data_ptr<float>() + ch.begin;
      float* v = exp_avg_sqs[ch.tensor].data_ptr<float>() + ch.begin;
      AT_DISPATCH_V2(p.scalar_type(), "multi_adam_", AT_WRAP([&] {
        adam_span_any<scalar_t>(p.data_ptr<scalar_t>() + ch.begin,
                                grads[ch.tensor].const_data_ptr<scalar_t>() + ch.begin, m, v, ch.len,
                                scalars[ch.tensor]);
      }), at::kFloat, at::kHalf, at::kBFloat16);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(steu_ext, CPU, m) {
  m.impl("row_adam_", &row_adam_cpu);
  m.impl("multi_adam_", &multi_adam_cpu);
}

}  // namespace steu_ext
