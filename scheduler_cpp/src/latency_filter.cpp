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
  const std::vector<double> zero(K, 0.0);
  const std::vector<double> prefix0 = penalized_prefix_latency(in, t, zero);
  const std::vector<double> prefix_p = penalized_prefix_latency(in, t, penalty_);
  const std::vector<double> suffix0 = penalized_suffix_latency(in, t, zero);
  const std::vector<double> suffix_p = penalized_suffix_latency(in, t, penalty_);
  spent_ = rank(prefix0, suffix_p);
  unspent_ = rank(prefix_p, suffix0);
  double paid = 0;  // sum_v p_v count_v
  for (std::size_t v = 0; v < K; ++v) paid += penalty_[v] * in.count[v];
  const double through_limit = (bound + paid) * (1 + 1e-9) + 1e-9;
  through_.assign(K * W, 0);
  scratch_.assign(K * W, 0);
  for (std::size_t u = 0; u < K; ++u) {
    for (std::size_t i = 1; i <= L; ++i) {
      if (prefix_p[i * K + u] + suffix_p[i * K + u] <= through_limit) bits::set(&through_[u * W], i - 1);
    }
  }
}

LatencyFilter::Ranked LatencyFilter::rank(const std::vector<double>& prefix, const std::vector<double>& suffix) const {
  const std::size_t K = classes_, L = layers_, W = words_;
  Ranked out;
  out.sorted.resize(K);
  out.masks.assign(K * (L + 1) * W, 0);
  std::vector<std::size_t> order(L);
  std::vector<double> value(L);
  for (std::size_t u = 0; u < K; ++u) {
    for (std::size_t i = 1; i <= L; ++i) value[i - 1] = prefix[i * K + u] + suffix[i * K + u];
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return value[a] < value[b]; });
    for (std::size_t r = 0; r < L; ++r) {
      out.sorted[u].push_back(value[order[r]]);
      bits::Word* next = &out.masks[(u * (L + 1) + r + 1) * W];
      std::copy_n(&out.masks[(u * (L + 1) + r) * W], W, next);
      bits::set(next, order[r]);  // position order[r] + 1 is bit order[r]
    }
  }
  return out;
}

const bits::Word* LatencyFilter::lookup(const Ranked& r, std::size_t u, double threshold) const {
  threshold = threshold * (1 + 1e-9) + 1e-9;  // rounding slack: never drop a state on the bound
  const auto& s = r.sorted[u];
  const auto n = static_cast<std::size_t>(std::upper_bound(s.begin(), s.end(), threshold) - s.begin());
  return &r.masks[(u * (layers_ + 1) + n) * words_];
}

const bits::Word* LatencyFilter::mask(const CountSpace& space, const std::vector<std::uint32_t>& used,
                                      std::size_t u) const {
  double left = 0, spent = 0;  // penalties of the devices still unused / already used
  for (std::size_t v = 0; v < classes_; ++v) {
    left += penalty_[v] * (space.count[v] - used[v]);
    spent += penalty_[v] * used[v];
  }
  const bits::Word* a = lookup(spent_, u, bound_ + left);
  const bits::Word* b = lookup(unspent_, u, bound_ + spent);
  const bits::Word* c = &through_[u * words_];
  bits::Word* out = &scratch_[u * words_];
  for (std::size_t w = 0; w < words_; ++w) out[w] = a[w] & b[w] & c[w];
  return out;
}

}  // namespace pipeedge_sched
