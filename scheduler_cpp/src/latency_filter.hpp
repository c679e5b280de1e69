// A*-style pruning for the latency DPs. With Lagrangian penalties p >= 0 (relaxed paths pay
// p_v per stage on class v) and prefix_q / suffix_q the relaxed least latency plus penalties q
// up to / from "u's stage ends at i", a state (m, u, i) can lie on a schedule of latency <=
// bound only if all three hold:
//   prefix_0(u, i) + suffix_p(u, i) <= bound + sum_v p_v (count_v - used_v(m))
//     (a completion uses class v at most count_v - used_v(m) times, so pays at most that);
//   prefix_p(u, i) + suffix_0(u, i) <= bound + sum_v p_v used_v(m)
//     (the prefix used exactly used(m), so it paid exactly that);
//   prefix_p(u, i) + suffix_p(u, i) <= bound + sum_v p_v count_v.
// The first prunes states that spent the penalised (fast) devices, the second states that
// got to i without them. Masks are per (m, u) bitsets of the positions kept.
#pragma once

#include <vector>

#include "count_space.hpp"
#include "threshold_tables.hpp"

namespace pipeedge_sched {

class LatencyFilter {
 public:
  // Keeps states that may reach latency <= bound (equality kept, with rounding slack), using
  // the given Lagrangian penalties (any p >= 0 is valid; good ones prune more).
  LatencyFilter(const ClassInstance& in, const ThresholdTables& t, double bound, std::vector<double> penalty);

  // Positions kept for (m, u) given m's per-class counts.
  const bits::Word* mask(const CountSpace& space, const std::vector<std::uint32_t>& used, std::size_t u) const;

 private:
  std::size_t classes_, words_, layers_;
  double bound_;
  std::vector<double> penalty_;
  // One threshold test: per class, position values ascending, and the masks of the r smallest.
  struct Ranked {
    std::vector<std::vector<double>> sorted;  // [u]
    std::vector<bits::Word> masks;            // [(u * (L + 1) + r) * W]
  };
  Ranked rank(const std::vector<double>& prefix, const std::vector<double>& suffix) const;
  const bits::Word* lookup(const Ranked& r, std::size_t u, double threshold) const;

  Ranked spent_, unspent_;                   // the first and second tests
  std::vector<bits::Word> through_;          // [u * W]: positions passing the third test
  mutable std::vector<bits::Word> scratch_;  // [u * W]: mask() results
};

}  // namespace pipeedge_sched
