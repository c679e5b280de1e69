// A*-style pruning for the latency DPs. With Lagrangian penalties p >= 0 (relaxed paths pay
// p_v per stage on class v), prefix_p / suffix_p the relaxed least penalised latency up to /
// from "u's stage ends at i", a state (m, u, i) can lie on a schedule of latency <= bound only
// if both hold:
//   prefix_0(u, i) + suffix_p(u, i) - sum_v p_v (count_v - used_v(m)) <= bound
//     (a completion uses class v at most count_v - used_v(m) times, so pays at most that);
//   prefix_p(u, i) + suffix_p(u, i) - sum_v p_v count_v <= bound
//     (the Lagrangian bound of schedules through (u, i); prefix and completion together use
//     class v at most count_v times).
// Masks are per (m, u) bitsets of the positions kept.
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
  std::vector<std::vector<double>> sorted_;  // [u]: state values, ascending
  std::vector<bits::Word> masks_;            // [(u * (L + 1) + r) * W]: the r smallest-valued positions
  std::vector<bits::Word> through_;          // [u * W]: positions passing the second test
  mutable std::vector<bits::Word> scratch_;  // [u * W]: mask() results
};

}  // namespace pipeedge_sched
