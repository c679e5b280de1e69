// Tie-break DP: among schedules allowed by the tables (every stage cost <= T), the one with
// the least (latency, bottleneck, stages), lexicographically. The key is monotone under
// extending a partial schedule, so keeping the best key per state is exact.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "count_space.hpp"
#include "reach.hpp"
#include "threshold_tables.hpp"

namespace pipeedge_sched {

struct PathKey {
  double latency_s;
  double bottleneck_s;
  std::uint32_t stages;
};
bool operator<(const PathKey& a, const PathKey& b);

struct PathStep {
  std::size_t cls;  // class of the stage's device
  std::size_t end;  // last layer of the stage (positions: it covers (previous end, end])
};

struct RefineResult {
  bool found = false;
  bool capped = false;         // more useful states than the cap: nothing was valued
  PathKey key{};
  std::vector<PathStep> path;
  std::uint64_t states = 0;    // useful states (valued unless capped)
};

RefineResult refine(const ClassInstance& in, const CountSpace& space, const ThresholdTables& t,
                    std::size_t max_stages, std::uint64_t cap, ReachSets& reach, ReachSets& useful);

}  // namespace pipeedge_sched
