// DPs over the useful states (those on some complete schedule allowed by the tables), stored
// compactly. Two keys:
//  - min bottleneck: exact min-max path, giving T* from any feasible threshold above it;
//  - (latency, bottleneck, stages) lexicographically, over edges whose cost is <= a limit.
//    The key is monotone under extending a partial schedule, so keeping the best key per
//    state is exact.
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

struct RefineResult {
  bool found = false;
  bool capped = false;         // more useful states than the cap: nothing was valued
  PathKey key{};
  std::vector<PathStep> path;
  std::uint64_t states = 0;    // useful states
};

// Useful states in `useful` (after backward()).
std::uint64_t count_states(const ClassInstance& in, const ReachSets& useful);

// Least bottleneck over complete schedules within the useful states; +inf if none.
double min_bottleneck_dp(const ClassInstance& in, const CountSpace& space, const ThresholdTables& t,
                         std::size_t max_stages, const ReachSets& useful);

// Best (latency, bottleneck, stages) schedule using only edges with cost <= limit
// (limit <= t.threshold), within the useful states.
RefineResult latency_dp(const ClassInstance& in, const CountSpace& space, const ThresholdTables& t, double limit,
                        std::size_t max_stages, const ReachSets& useful);

// forward + backward + latency_dp at the tables' threshold; capped above `cap` useful states.
RefineResult refine(const ClassInstance& in, const CountSpace& space, const ThresholdTables& t,
                    std::size_t max_stages, std::uint64_t cap, ReachSets& reach, ReachSets& useful,
                    const LatencyFilter* filter = nullptr);

}  // namespace pipeedge_sched
