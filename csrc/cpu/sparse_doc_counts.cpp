// CPU kernel for steu_ext::sparse_doc_counts: the nonzero (class, token) document counts of a block,
// as sorted keys c * V + t with their counts, without a dense [C, V] array (memory ~ the nonzeros).
//
// Pass 1, parallel over contiguous document chunks: each document's distinct tokens (a per-chunk "stamp"
// array de-duplicates without sorting or clearing, as in doc_counts) and per-chunk doc_freq.
// Pass 2: the labels transposed to per-class document lists.
// Pass 3, parallel over classes: per class, a dense int32 scratch row counts the tokens of its documents
// and records the tokens it touches; they are emitted in token order (sorted, or by a scan of the row when
// most of it was touched) and the row is cleared. Classes are emitted in order, so keys come out sorted.
// Exact and independent of the thread count or schedule.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <memory>
#include <tuple>
#include <vector>

namespace steu_ext {
namespace {

struct Chunk {
  std::vector<int32_t> toks;     // distinct tokens of the chunk's documents, document after document
  std::vector<int64_t> start;    // [n_docs + 1] offsets into toks
  std::vector<int64_t> df;       // [V] documents of the chunk containing each token
};

struct ClassOut {
  std::vector<int32_t> tok;
  std::vector<int32_t> cnt;
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_doc_counts_cpu(const at::Tensor& ids,
                                                                     const at::Tensor& mask,
                                                                     const at::Tensor& labels,
                                                                     int64_t num_tokens) {
  TORCH_CHECK(ids.scalar_type() == at::kLong, "sparse_doc_counts: ids must be int64, got ", ids.scalar_type());
  TORCH_CHECK(mask.scalar_type() == at::kBool, "sparse_doc_counts: mask must be bool, got ",
              mask.scalar_type());
  TORCH_CHECK(labels.scalar_type() == at::kByte, "sparse_doc_counts: labels must be uint8, got ",
              labels.scalar_type());
  TORCH_CHECK(ids.dim() == 2 && mask.dim() == 2 && labels.dim() == 2,
              "sparse_doc_counts: ids, mask and labels must be 2-D");
  TORCH_CHECK(mask.sizes() == ids.sizes(), "sparse_doc_counts: mask shape ", mask.sizes(), " != ids shape ",
              ids.sizes());
  TORCH_CHECK(labels.size(0) == ids.size(0), "sparse_doc_counts: labels has ", labels.size(0),
              " rows, ids has ", ids.size(0));
  TORCH_CHECK(ids.is_contiguous() && mask.is_contiguous() && labels.is_contiguous(),
              "sparse_doc_counts: ids, mask and labels must be contiguous");
  TORCH_CHECK(num_tokens >= 1 && num_tokens <= std::numeric_limits<int32_t>::max(),
              "sparse_doc_counts: num_tokens must be in [1, 2^31), got ", num_tokens);
  const int64_t B = ids.size(0), L = ids.size(1), C = labels.size(1), V = num_tokens;
  TORCH_CHECK(B < static_cast<int64_t>(std::numeric_limits<int32_t>::max()),
              "sparse_doc_counts: too many documents (", B, ")");
  auto opts = ids.options().dtype(at::kLong);
  at::Tensor doc_freq = at::zeros({V}, opts);
  if (B == 0 || L == 0 || C == 0) {
    return {at::empty({0}, opts), at::empty({0}, opts), doc_freq};
  }
  const int64_t* ids_p = ids.const_data_ptr<int64_t>();
  const bool* mask_p = mask.const_data_ptr<bool>();
  const uint8_t* lab_p = labels.const_data_ptr<uint8_t>();

  // ---- pass 1: distinct tokens per document
  const int64_t nthreads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t nchunks = std::max<int64_t>(1, std::min<int64_t>({nthreads, B / 64, std::max<int64_t>(1, (B * L) >> 16)}));
  std::vector<Chunk> chunks(static_cast<size_t>(nchunks));
  std::atomic<bool> out_of_range{false};
  at::parallel_for(0, nchunks, 1, [&](int64_t k0, int64_t k1) {
    std::vector<uint32_t> stamp(static_cast<size_t>(V), 0);
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t b0 = B * k / nchunks, b1 = B * (k + 1) / nchunks;
      Chunk& ch = chunks[k];
      ch.df.assign(static_cast<size_t>(V), 0);
      ch.start.assign(static_cast<size_t>(b1 - b0 + 1), 0);
      ch.toks.reserve(static_cast<size_t>((b1 - b0) * std::min<int64_t>(L, 256)));
      bool oor = false;
      for (int64_t b = b0; b < b1; ++b) {
        const uint32_t s = static_cast<uint32_t>(b + 1);
        const int64_t* row = ids_p + b * L;
        const bool* mrow = mask_p + b * L;
        for (int64_t j = 0; j < L; ++j) {
          if (!mrow[j]) continue;
          const int64_t t = row[j];
          if (static_cast<uint64_t>(t) >= static_cast<uint64_t>(V)) {
            oor = true;
            continue;
          }
          if (stamp[t] != s) {
            stamp[t] = s;
            ch.toks.push_back(static_cast<int32_t>(t));
            ch.df[t] += 1;
          }
        }
        ch.start[b - b0 + 1] = static_cast<int64_t>(ch.toks.size());
      }
      // stamps are global document indices + 1: a later chunk on this thread needs no reset
      if (oor) out_of_range = true;
    }
  });
  TORCH_CHECK(!out_of_range.load(),
              "sparse_doc_counts: ids contain values outside [0, num_tokens=", V, ") at masked-in positions");
  int64_t* df_out = doc_freq.data_ptr<int64_t>();
  at::parallel_for(0, V, 1 << 14, [&](int64_t t0, int64_t t1) {
    for (const Chunk& ch : chunks)
      for (int64_t t = t0; t < t1; ++t) df_out[t] += ch.df[t];
  });
  // document b -> its distinct tokens [ptr, ptr + n)
  std::vector<const int32_t*> dptr(static_cast<size_t>(B));
  std::vector<int32_t> dlen(static_cast<size_t>(B));
  for (int64_t k = 0; k < nchunks; ++k) {
    const int64_t b0 = B * k / nchunks, b1 = B * (k + 1) / nchunks;
    const Chunk& ch = chunks[k];
    for (int64_t b = b0; b < b1; ++b) {
      dptr[b] = ch.toks.data() + ch.start[b - b0];
      dlen[b] = static_cast<int32_t>(ch.start[b - b0 + 1] - ch.start[b - b0]);
    }
  }

  // ---- pass 2: per-class document lists (labels transposed)
  std::vector<int64_t> cptr(static_cast<size_t>(C + 1), 0);
  for (int64_t b = 0; b < B; ++b) {
    const uint8_t* lrow = lab_p + b * C;
    for (int64_t c = 0; c < C; ++c) cptr[c + 1] += (lrow[c] != 0);
  }
  for (int64_t c = 0; c < C; ++c) cptr[c + 1] += cptr[c];
  std::vector<int32_t> cdocs(static_cast<size_t>(cptr[C]));
  {
    std::vector<int64_t> fill(cptr.begin(), cptr.end() - 1);
    for (int64_t b = 0; b < B; ++b) {
      const uint8_t* lrow = lab_p + b * C;
      for (int64_t c = 0; c < C; ++c)
        if (lrow[c]) cdocs[fill[c]++] = static_cast<int32_t>(b);
    }
  }

  // ---- pass 3: per class, count its documents' tokens in a scratch row
  std::vector<ClassOut> outs(static_cast<size_t>(C));
  std::vector<std::unique_ptr<std::vector<int32_t>>> scratch(static_cast<size_t>(nthreads));
  at::parallel_for(0, C, 16, [&](int64_t c0, int64_t c1) {
    const int64_t tid = std::min<int64_t>(at::get_thread_num(), nthreads - 1);
    if (!scratch[tid]) scratch[tid] = std::make_unique<std::vector<int32_t>>(static_cast<size_t>(V), 0);
    int32_t* cnt = scratch[tid]->data();
    std::vector<int32_t> touched;
    for (int64_t c = c0; c < c1; ++c) {
      if (cptr[c + 1] == cptr[c]) continue;
      touched.clear();
      for (int64_t q = cptr[c]; q < cptr[c + 1]; ++q) {
        const int32_t b = cdocs[q];
        const int32_t* tk = dptr[b];
        for (int32_t k = 0; k < dlen[b]; ++k) {
          const int32_t t = tk[k];
          if (cnt[t]++ == 0) touched.push_back(t);
        }
      }
      ClassOut& o = outs[c];
      o.tok.resize(touched.size());
      o.cnt.resize(touched.size());
      if (static_cast<int64_t>(touched.size()) * 16 > V) {  // dense enough: scan the row in order
        size_t n = 0;
        for (int64_t t = 0; t < V; ++t)
          if (cnt[t]) {
            o.tok[n] = static_cast<int32_t>(t);
            o.cnt[n++] = cnt[t];
            cnt[t] = 0;
          }
      } else {
        std::sort(touched.begin(), touched.end());
        for (size_t n = 0; n < touched.size(); ++n) {
          o.tok[n] = touched[n];
          o.cnt[n] = cnt[touched[n]];
          cnt[touched[n]] = 0;
        }
      }
    }
  });

  std::vector<int64_t> optr(static_cast<size_t>(C + 1), 0);
  for (int64_t c = 0; c < C; ++c) optr[c + 1] = optr[c] + static_cast<int64_t>(outs[c].tok.size());
  at::Tensor keys = at::empty({optr[C]}, opts);
  at::Tensor values = at::empty({optr[C]}, opts);
  int64_t* k_p = keys.data_ptr<int64_t>();
  int64_t* v_p = values.data_ptr<int64_t>();
  at::parallel_for(0, C, 64, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const ClassOut& o = outs[c];
      for (size_t n = 0; n < o.tok.size(); ++n) {
        k_p[optr[c] + n] = c * V + o.tok[n];
        v_p[optr[c] + n] = o.cnt[n];
      }
    }
  });
  return {keys, values, doc_freq};
}

}  // namespace

TORCH_LIBRARY_IMPL(steu_ext, CPU, m) {
  m.impl("sparse_doc_counts", &sparse_doc_counts_cpu);
}

}  // namespace steu_ext
