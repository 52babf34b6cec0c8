// CPU kernel for steu_ext::doc_counts: document-level token x class counts.
//
// Worker threads take blocks of documents from a shared counter. A per-worker "stamp" array
// (stamp[t] == b + 1 once token t has been seen in document b) de-duplicates tokens within a document
// without sorting or clearing; the document's distinct tokens are collected in a small list and added to
// per-worker count buffers (one row per label the document carries, plus doc_freq). The buffers are summed
// at the end, so the result is exact whatever the thread count or schedule.
#include <ATen/Parallel.h>
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

// Per-worker scratch. Counters are int32 when no worker can see 2^31 documents (half the cache footprint).
template <typename cnt_t>
struct ThreadBuffers {
  std::vector<cnt_t> counts;    // [C + 1, V]: rows 0..C-1 class counts, row C doc_freq
  std::vector<uint32_t> stamp;  // [V]: b + 1 of the last document that contained the token
  std::vector<int32_t> uniq;    // [L]: the current document's distinct tokens
  std::vector<int64_t> lab;     // [C]: the current document's labels
};

// Counts documents [0, B) into counts [C, V] and doc_freq [V] (both zero-initialised int64).
template <typename cnt_t>
void doc_counts_kernel(const int64_t* ids_p, const bool* mask_p, const uint8_t* lab_p, int64_t B, int64_t L,
                       int64_t C, int64_t V, int64_t* cnt_out, int64_t* df_out) {
  // Workers pull blocks of documents from a shared counter (dynamic schedule: document lengths vary and a
  // core may be busy with something else). Each worker owns its buffers, allocated on first use.
  const int64_t block = 64;
  const int64_t nblocks = (B + block - 1) / block;
  // A worker costs a zeroed [C + 1, V] buffer and its merge, and a parallel region costs a wake-up of
  // every thread (slow on a busy machine): one more worker per 256 Ki token slots, at most one per 4 blocks.
  const int64_t by_work = std::max<int64_t>(1, (B * L) >> 18);
  const int64_t nworkers =
      std::max<int64_t>(1, std::min({static_cast<int64_t>(at::get_num_threads()), nblocks / 4, by_work}));
  std::vector<std::unique_ptr<ThreadBuffers<cnt_t>>> bufs(nworkers);
  std::atomic<int64_t> next_block{0};
  std::atomic<bool> out_of_range{false};

  at::parallel_for(0, nworkers, 1, [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; ++w) {
      bool oor = false;
      for (int64_t blk = next_block.fetch_add(1); blk < nblocks; blk = next_block.fetch_add(1)) {
        if (!bufs[w]) {
          // Stamps are global document indices + 1, so buffers never need resetting between blocks.
          auto tb = std::make_unique<ThreadBuffers<cnt_t>>();
          tb->counts.assign(static_cast<size_t>((C + 1) * V), 0);
          tb->stamp.assign(static_cast<size_t>(V), 0);
          tb->uniq.resize(static_cast<size_t>(L));
          tb->lab.resize(static_cast<size_t>(C));
          bufs[w] = std::move(tb);
        }
        ThreadBuffers<cnt_t>& tb = *bufs[w];
        cnt_t* cnt = tb.counts.data();
        cnt_t* df = cnt + C * V;
        uint32_t* stamp = tb.stamp.data();
        int32_t* uniq = tb.uniq.data();
        int64_t* lab = tb.lab.data();
        const int64_t b1 = std::min(B, (blk + 1) * block);
        for (int64_t b = blk * block; b < b1; ++b) {
          const uint32_t s = static_cast<uint32_t>(b + 1);
          const int64_t* row = ids_p + b * L;
          const bool* mrow = mask_p + b * L;
          int64_t n = 0;
          for (int64_t j = 0; j < L; ++j) {
            if (!mrow[j]) continue;
            const int64_t t = row[j];
            if (static_cast<uint64_t>(t) >= static_cast<uint64_t>(V)) {
              oor = true;
              continue;
            }
            // Branch-free: repeated tokens are common in real text, so a branch here would mispredict.
            const uint32_t seen = stamp[t];
            stamp[t] = s;
            uniq[n] = static_cast<int32_t>(t);
            n += (seen != s);
          }
          for (int64_t k = 0; k < n; ++k) df[uniq[k]] += 1;
          int64_t nl = 0;
          const uint8_t* lrow = lab_p + b * C;
          for (int64_t c = 0; c < C; ++c)
            if (lrow[c]) lab[nl++] = c;
          for (int64_t q = 0; q < nl; ++q) {
            cnt_t* crow = cnt + lab[q] * V;
            for (int64_t k = 0; k < n; ++k) crow[uniq[k]] += 1;
          }
        }
      }
      if (oor) out_of_range = true;
    }
  });
  TORCH_CHECK(!out_of_range.load(),
              "doc_counts: ids contain values outside [0, num_tokens=", V, ") at masked-in positions");

  // Sum the per-worker buffers into the outputs (counts rows 0..C-1, then doc_freq).
  std::vector<const cnt_t*> parts;
  for (auto& tb : bufs)
    if (tb) parts.push_back(tb->counts.data());
  const int64_t CV = C * V;
  at::parallel_for(0, CV + V, 1 << 14, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e) {
      int64_t acc = 0;
      for (const cnt_t* p : parts) acc += p[e];
      (e < CV ? cnt_out[e] : df_out[e - CV]) = acc;
    }
  });
}

std::tuple<at::Tensor, at::Tensor> doc_counts_cpu(const at::Tensor& ids, const at::Tensor& mask,
                                                  const at::Tensor& labels, int64_t num_tokens) {
  TORCH_CHECK(ids.scalar_type() == at::kLong, "doc_counts: ids must be int64, got ", ids.scalar_type());
  TORCH_CHECK(mask.scalar_type() == at::kBool, "doc_counts: mask must be bool, got ", mask.scalar_type());
  TORCH_CHECK(labels.scalar_type() == at::kByte, "doc_counts: labels must be uint8, got ",
              labels.scalar_type());
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

  const int64_t B = ids.size(0), L = ids.size(1), C = labels.size(1), V = num_tokens;
  TORCH_CHECK(B < static_cast<int64_t>(std::numeric_limits<uint32_t>::max()),
              "doc_counts: too many documents (", B, ")");

  auto opts = ids.options().dtype(at::kLong);
  at::Tensor counts = at::zeros({C, V}, opts);
  at::Tensor doc_freq = at::zeros({V}, opts);
  if (B == 0 || L == 0 || V == 0) {
    // With V == 0 any masked-in position is out of range.
    TORCH_CHECK(V > 0 || B * L == 0 || !mask.any().item<bool>(),
                "doc_counts: ids contain values outside [0, num_tokens) at masked-in positions");
    return {counts, doc_freq};
  }
  const int64_t* ids_p = ids.const_data_ptr<int64_t>();
  const bool* mask_p = mask.const_data_ptr<bool>();
  const uint8_t* lab_p = labels.const_data_ptr<uint8_t>();
  int64_t* cnt_out = counts.data_ptr<int64_t>();
  int64_t* df_out = doc_freq.data_ptr<int64_t>();
  if (B <= std::numeric_limits<int32_t>::max())
    doc_counts_kernel<int32_t>(ids_p, mask_p, lab_p, B, L, C, V, cnt_out, df_out);
  else
    doc_counts_kernel<int64_t>(ids_p, mask_p, lab_p, B, L, C, V, cnt_out, df_out);
  return {counts, doc_freq};
}

}  // namespace

TORCH_LIBRARY_IMPL(steu_ext, CPU, m) {
  m.impl("doc_counts", &doc_counts_cpu);
}

}  // namespace steu_ext
