// Per-threshold tables: O(K L W + K^2 L) per call.
#include "threshold_tables.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace pipeedge_sched {

ThresholdTables make_tables(const ClassInstance& in, double T) {
  const std::size_t L = in.layers, K = in.classes, W = in.words;
  ThresholdTables t;
  t.threshold = T;
  t.stage.assign(K * L * W, 0);
  t.max_span.assign(K, 0);
  t.max_work.assign(K, 0.0);
  t.max_weight.assign(K, 0.0);
  for (std::size_t v = 0; v < K; ++v) {
    // Largest j with compute (i, j] + receiving <= T: monotone in j for one i (and, without
    // frame costs, non-decreasing in i). Sending is not monotone (a stage may end on a smaller
    // activation), so with frame costs the ends up to that bound are checked one by one.
    const bool frames = in.has_frame_costs[v];
    std::size_t last = 0;
    for (std::size_t i = 0; i < L; ++i) {
      if (frames || last < i) last = i;
      while (last < L && in.compute_s(v, i, last + 1) + in.recv_s[v][i] <= T) ++last;
      if (last == i) continue;
      bits::Word* out = &t.stage[(v * L + i) * W];
      bits::set_range(out, i, last);  // ends i+1..last are bits i..last-1
      for (std::size_t j = i + 1; frames && j <= last; ++j) {
        if (in.stage_s(v, i, j) > T) bits::clear(out, j - 1);
      }
      const bits::Word* fit = in.fits(v, i);
      for (std::size_t w = 0; w < W; ++w) out[w] &= fit[w];
      for (std::size_t w = W; w-- > 0;) {
        if (out[w]) {  // highest end j = bit + 1
          const std::size_t j = w * 64 + 63 - static_cast<std::size_t>(__builtin_clzll(out[w])) + 1;
          t.max_span[v] = std::max(t.max_span[v], j - i);
          t.max_work[v] = std::max(t.max_work[v], in.work_suffix[i] - in.work_suffix[j]);
          t.max_weight[v] = std::max(t.max_weight[v], in.weight_suffix[i] - in.weight_suffix[j]);
          break;
        }
      }
    }
  }
  t.handover.assign(K * K * W, 0);
  t.pair_ok.assign(K * K, 0);
  for (std::size_t u = 0; u < K; ++u) {
    for (std::size_t v = 0; v < K; ++v) {
      if (!in.pair_allowed(u, v)) continue;
      bits::Word* out = &t.handover[(u * K + v) * W];
      for (std::size_t i = 1; i < L; ++i) {
        const double x = in.transfer_s(u, v, i);
        if (x <= T && std::isfinite(x)) bits::set(out, i - 1);
      }
      t.pair_ok[u * K + v] = bits::any(out, W);
    }
  }
  for (std::size_t k = 0; k < K; ++k) {
    t.max_work[k] = t.max_work[k] * (1 + 1e-9) + 1e-12;
    t.max_weight[k] = t.max_weight[k] * (1 + 1e-9) + 1e-9;
    t.start_ok.push_back(in.input_s[k] <= T && std::isfinite(in.input_s[k]));
    t.end_ok.push_back(in.output_s[k] <= T && std::isfinite(in.output_s[k]));
  }
  return t;
}

}  // namespace pipeedge_sched
