// CPU kernels for steu_ext::grad_project_ and steu_ext::grad_project_basis_: project a gradient, held as
// a list of tensors, off one reference direction (optionally Fisher-weighted) or off m orthonormal ones.
//
// All tensors of the list are cut into fixed-size chunks and processed in one parallel loop (no per-tensor
// launch). Dot products accumulate in double per chunk and the chunk partials are summed in chunk order,
// so the result does not depend on the thread count. The in-place update is done in float32.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

namespace steu_ext {
namespace {

struct Chunk {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

std::vector<Chunk> make_chunks(at::TensorList ts, int64_t chunk) {
  std::vector<Chunk> out;
  for (size_t i = 0; i < ts.size(); ++i) {
    const int64_t n = ts[i].numel();
    for (int64_t b = 0; b < n; b += chunk)
      out.push_back({static_cast<int64_t>(i), b, std::min(n, b + chunk)});
  }
  return out;
}

bool is_float_dtype(at::ScalarType st) {
  return st == at::kFloat || st == at::kHalf || st == at::kBFloat16;
}

// Calls f(T{}) with T the C++ type of st (float32 / float16 / bfloat16).
template <typename F>
void dispatch_float(at::ScalarType st, const char* op, F&& f) {
  switch (st) {
    case at::kFloat:
      f(float{});
      break;
    case at::kHalf:
      f(at::Half{});
      break;
    case at::kBFloat16:
      f(at::BFloat16{});
      break;
    default:
      TORCH_CHECK(false, op, ": unsupported dtype ", st, " (expected float32, float16 or bfloat16)");
  }
}

template <typename T>
inline double to_d(T x) {
  return static_cast<double>(static_cast<float>(x));
}

// sum_k a[k] * b[k] in double, four independent accumulators.
template <typename A, typename B>
double dot_d(const A* a, const B* b, int64_t n) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t k = 0;
  for (; k + 4 <= n; k += 4) {
    s0 += to_d(a[k]) * to_d(b[k]);
    s1 += to_d(a[k + 1]) * to_d(b[k + 1]);
    s2 += to_d(a[k + 2]) * to_d(b[k + 2]);
    s3 += to_d(a[k + 3]) * to_d(b[k + 3]);
  }
  for (; k < n; ++k) s0 += to_d(a[k]) * to_d(b[k]);
  return (s0 + s1) + (s2 + s3);
}

// dot = sum g * (r * f), nn = sum r * (r * f) in double (as the reference: fr = r * F first).
template <typename T>
void fisher_dots(const T* g, const T* r, const T* f, int64_t n, double* dot, double* nn) {
  double d0 = 0, d1 = 0, n0 = 0, n1 = 0;
  int64_t k = 0;
  for (; k + 2 <= n; k += 2) {
    const double r0 = to_d(r[k]), r1 = to_d(r[k + 1]);
    const double fr0 = r0 * to_d(f[k]), fr1 = r1 * to_d(f[k + 1]);
    d0 += to_d(g[k]) * fr0;
    d1 += to_d(g[k + 1]) * fr1;
    n0 += r0 * fr0;
    n1 += r1 * fr1;
  }
  for (; k < n; ++k) {
    const double r0 = to_d(r[k]);
    const double fr0 = r0 * to_d(f[k]);
    d0 += to_d(g[k]) * fr0;
    n0 += r0 * fr0;
  }
  *dot = d0 + d1;
  *nn = n0 + n1;
}

constexpr int64_t kChunk = 1 << 16;
constexpr int64_t kBasisChunk = 1 << 14;

at::Tensor grad_project_cpu(at::TensorList grads, at::TensorList ref, std::optional<at::TensorList> fisher,
                            bool conflict_only, double eps) {
  const size_t n = grads.size();
  TORCH_CHECK(n >= 1, "grad_project_: grads must not be empty");
  TORCH_CHECK(ref.size() == n, "grad_project_: ", n, " grads but ", ref.size(), " ref tensors");
  const bool has_f = fisher.has_value();
  TORCH_CHECK(!has_f || fisher->size() == n, "grad_project_: ", n, " grads but ", fisher->size(),
              " fisher tensors");
  for (size_t i = 0; i < n; ++i) {
    const auto st = grads[i].scalar_type();
    TORCH_CHECK(is_float_dtype(st), "grad_project_: grads[", i, "] has unsupported dtype ", st);
    TORCH_CHECK(grads[i].is_contiguous() && ref[i].is_contiguous(), "grad_project_: grads[", i,
                "] and ref[", i, "] must be contiguous");
    TORCH_CHECK(ref[i].scalar_type() == st && ref[i].sizes() == grads[i].sizes(), "grad_project_: ref[", i,
                "] must match grads[", i, "] in dtype and shape");
    if (has_f) {
      const at::Tensor& f = (*fisher)[i];
      TORCH_CHECK(f.is_contiguous() && f.scalar_type() == st && f.sizes() == grads[i].sizes(),
                  "grad_project_: fisher[", i, "] must be contiguous and match grads[", i,
                  "] in dtype and shape");
    }
  }

  const std::vector<Chunk> chunks = make_chunks(grads, kChunk);
  const int64_t nc = static_cast<int64_t>(chunks.size());
  std::vector<double> pdot(nc, 0.0), pnn(nc, 0.0);
  at::parallel_for(0, nc, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const Chunk& ch = chunks[c];
      const at::Tensor& g = grads[ch.tensor];
      const at::Tensor& r = ref[ch.tensor];
      dispatch_float(g.scalar_type(), "grad_project_", [&](auto tag) {
        using T = decltype(tag);
        const T* gp = g.const_data_ptr<T>() + ch.begin;
        const T* rp = r.const_data_ptr<T>() + ch.begin;
        const int64_t len = ch.end - ch.begin;
        if (has_f) {
          const T* fp = (*fisher)[ch.tensor].const_data_ptr<T>() + ch.begin;
          fisher_dots(gp, rp, fp, len, &pdot[c], &pnn[c]);
        } else {
          pdot[c] = dot_d(gp, rp, len);
          pnn[c] = dot_d(rp, rp, len);
        }
      });
    }
  });
  double dot = 0, nn = 0;
  for (int64_t c = 0; c < nc; ++c) {
    dot += pdot[c];
    nn += pnn[c];
  }
  const bool apply = nn > eps && (!conflict_only || dot < 0);
  const float coef = apply ? static_cast<float>(dot / nn) : 0.0f;

  // coef == 0 leaves grads unchanged; skip the pass.
  if (coef != 0.0f) {
    at::parallel_for(0, nc, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const Chunk& ch = chunks[c];
        const at::Tensor& g = grads[ch.tensor];
        dispatch_float(g.scalar_type(), "grad_project_", [&](auto tag) {
          using T = decltype(tag);
          T* gp = g.data_ptr<T>() + ch.begin;
          const T* rp = ref[ch.tensor].const_data_ptr<T>() + ch.begin;
          const int64_t len = ch.end - ch.begin;
          for (int64_t k = 0; k < len; ++k)
            gp[k] = static_cast<T>(static_cast<float>(gp[k]) - coef * static_cast<float>(rp[k]));
        });
      }
    });
  }
  return at::full({}, coef, grads[0].options().dtype(at::kFloat));
}

at::Tensor grad_project_basis_cpu(at::TensorList grads, at::TensorList basis) {
  const size_t n = grads.size();
  TORCH_CHECK(n >= 1, "grad_project_basis_: grads must not be empty");
  TORCH_CHECK(basis.size() == n, "grad_project_basis_: ", n, " grads but ", basis.size(), " basis tensors");
  TORCH_CHECK(basis[0].dim() >= 1, "grad_project_basis_: basis[0] must have a leading dimension m");
  const int64_t m = basis[0].size(0);
  TORCH_CHECK(m >= 1, "grad_project_basis_: the basis must have at least one direction (m >= 1)");
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& g = grads[i];
    const at::Tensor& b = basis[i];
    TORCH_CHECK(is_float_dtype(g.scalar_type()) && is_float_dtype(b.scalar_type()),
                "grad_project_basis_: grads[", i, "] and basis[", i, "] must be float32/float16/bfloat16");
    TORCH_CHECK(g.is_contiguous() && b.is_contiguous(), "grad_project_basis_: grads[", i, "] and basis[", i,
                "] must be contiguous");
    TORCH_CHECK(b.dim() == g.dim() + 1 && b.size(0) == m && b.sizes().slice(1) == g.sizes(),
                "grad_project_basis_: basis[", i, "] must have shape [", m, ", *grads[", i, "].shape], got ",
                b.sizes(), " for grads shape ", g.sizes());
  }

  const std::vector<Chunk> chunks = make_chunks(grads, kBasisChunk);
  const int64_t nc = static_cast<int64_t>(chunks.size());
  std::vector<double> part(static_cast<size_t>(nc * m), 0.0);  // [chunk, j]
  at::parallel_for(0, nc, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const Chunk& ch = chunks[c];
      const at::Tensor& g = grads[ch.tensor];
      const at::Tensor& b = basis[ch.tensor];
      const int64_t numel = g.numel(), len = ch.end - ch.begin;
      dispatch_float(g.scalar_type(), "grad_project_basis_", [&](auto gtag) {
        using G = decltype(gtag);
        dispatch_float(b.scalar_type(), "grad_project_basis_", [&](auto btag) {
          using Bt = decltype(btag);
          const G* gp = g.const_data_ptr<G>() + ch.begin;
          const Bt* bp = b.const_data_ptr<Bt>() + ch.begin;
          for (int64_t j = 0; j < m; ++j) part[c * m + j] = dot_d(gp, bp + j * numel, len);
        });
      });
    }
  });
  std::vector<double> cd(m, 0.0);
  for (int64_t c = 0; c < nc; ++c)
    for (int64_t j = 0; j < m; ++j) cd[j] += part[c * m + j];
  at::Tensor out = at::empty({m}, grads[0].options().dtype(at::kFloat));
  float* cf = out.data_ptr<float>();
  for (int64_t j = 0; j < m; ++j) cf[j] = static_cast<float>(cd[j]);

  at::parallel_for(0, nc, 1, [&](int64_t c0, int64_t c1) {
    std::vector<float> acc(kBasisChunk);
    for (int64_t c = c0; c < c1; ++c) {
      const Chunk& ch = chunks[c];
      const at::Tensor& g = grads[ch.tensor];
      const at::Tensor& b = basis[ch.tensor];
      const int64_t numel = g.numel(), len = ch.end - ch.begin;
      std::fill(acc.begin(), acc.begin() + len, 0.0f);
      dispatch_float(b.scalar_type(), "grad_project_basis_", [&](auto btag) {
        using Bt = decltype(btag);
        const Bt* bp = b.const_data_ptr<Bt>() + ch.begin;
        for (int64_t j = 0; j < m; ++j) {
          const float cj = cf[j];
          const Bt* row = bp + j * numel;
          for (int64_t k = 0; k < len; ++k) acc[k] += cj * static_cast<float>(row[k]);
        }
      });
      dispatch_float(g.scalar_type(), "grad_project_basis_", [&](auto gtag) {
        using G = decltype(gtag);
        G* gp = g.data_ptr<G>() + ch.begin;
        for (int64_t k = 0; k < len; ++k) gp[k] = static_cast<G>(static_cast<float>(gp[k]) - acc[k]);
      });
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(steu_ext, CPU, m) {
  m.impl("grad_project_", &grad_project_cpu);
  m.impl("grad_project_basis_", &grad_project_basis_cpu);
}

}  // namespace steu_ext
