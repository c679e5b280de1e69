// Bitset reachability over (count vector m, last class u, position): forward from the client,
// and backward pruning to the states that can still finish.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "count_space.hpp"
#include "latency_filter.hpp"
#include "threshold_tables.hpp"

namespace pipeedge_sched {

// Positions per (m, u), plus which m have any. Reused across calls to avoid re-zeroing.
struct ReachSets {
  std::size_t classes = 0, words = 0;
  std::vector<bits::Word> sets;        // [(m * K + u) * W]
  std::vector<std::uint8_t> live;      // [m]
  std::vector<std::uint64_t> touched;  // every m with live[m]

  void reset(const CountSpace& space, std::size_t K, std::size_t W);
  void mark(std::uint64_t m) {
    if (!live[m]) {
      live[m] = 1;
      touched.push_back(m);
    }
  }
  bits::Word* at(std::uint64_t m, std::size_t u) { return &sets[(m * classes + u) * words]; }
  const bits::Word* at(std::uint64_t m, std::size_t u) const { return &sets[(m * classes + u) * words]; }
  std::vector<std::uint64_t> sorted_live() const;  // ascending
};

// Fills `reach` with every state reachable using at most max_stages stages; returns whether a
// complete schedule exists. stop_at_goal returns at the first complete one (reach then partial).
// A filter, when given, also drops the states it rules out.
bool forward(const ClassInstance& in, const CountSpace& space, const ThresholdTables& t,
             std::size_t max_stages, bool stop_at_goal, ReachSets& reach,
             const LatencyFilter* filter = nullptr);

// Fills `useful` with the reachable states from which a complete schedule is still possible.
void backward(const ClassInstance& in, const CountSpace& space, const ThresholdTables& t,
              std::size_t max_stages, const ReachSets& reach, ReachSets& useful);

}  // namespace pipeedge_sched
