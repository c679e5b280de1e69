// Building the filter: two relaxed DPs and a Lagrangian ascent, O(L^2 K + L K^2) each; a
// lookup is a binary search over one class's sorted position values.
#include "latency_filter.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "relaxation.hpp"
#include <utility>

namespace pipeedge_sched {

LatencyFilter::LatencyFilter(const ClassInstance& in, const ThresholdTables& t, double bound,
                             std::vector<double> penalty)
    : classes_(in.classes), words_(in.words), layers_(in.layers), bound_(bound), penalty_(std::move(penalty)) {
  const std::size_t K = classes_, L = layers_, W = words_;
  const std::vector<double> prefix = penalized_prefix_latency(in, t, std::vector<double>(K, 0.0));
  const std::vector<double> prefix_p = penalized_prefix_latency(in, t, penalty_);
  const std::vector<double> suffix = penalized_suffix_latency(in, t, penalty_);
  double paid = 0;  // sum_v p_v count_v
  for (std::size_t v = 0; v < K; ++v) paid += penalty_[v] * in.count[v];
  const double through_limit = (bound + paid) * (1 + 1e-9) + 1e-9;
  through_.assign(K * W, 0);
  scratch_.assign(K * W, 0);
  for (std::size_t u = 0; u < K; ++u) {
    for (std::size_t i = 1; i <= L; ++i) {
      if (prefix_p[i * K + u] + suffix[i * K + u] <= through_limit) bits::set(&through_[u * W], i - 1);
    }
  }
  sorted_.resize(K);
  masks_.assign(K * (L + 1) * W, 0);
  std::vector<std::size_t> order(L);
  std::vector<double> value(L);
  for (std::size_t u = 0; u < K; ++u) {
    for (std::size_t i = 1; i <= L; ++i) value[i - 1] = prefix[i * K + u] + suffix[i * K + u];
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return value[a] < value[b]; });
    for (std::size_t r = 0; r < L; ++r) {
      sorted_[u].push_back(value[order[r]]);
      bits::Word* next = &masks_[(u * (L + 1) + r + 1) * W];
      std::copy_n(&masks_[(u * (L + 1) + r) * W], W, next);
      bits::set(next, order[r]);  // position order[r] + 1 is bit order[r]
    }
  }
}

const bits::Word* LatencyFilter::mask(const CountSpace& space, const std::vector<std::uint32_t>& used,
                                      std::size_t u) const {
  double threshold = bound_;
  for (std::size_t v = 0; v < classes_; ++v) threshold += penalty_[v] * (space.count[v] - used[v]);
  threshold = threshold * (1 + 1e-9) + 1e-9;  // rounding slack: never drop a state on the bound
  const auto& s = sorted_[u];
  const auto r = static_cast<std::size_t>(std::upper_bound(s.begin(), s.end(), threshold) - s.begin());
  const bits::Word* first = &masks_[(u * (layers_ + 1) + r) * words_];
  const bits::Word* second = &through_[u * words_];
  bits::Word* out = &scratch_[u * words_];
  for (std::size_t w = 0; w < words_; ++w) out[w] = first[w] & second[w];
  return out;
}

}  // namespace pipeedge_sched
