// Phase 1: the least threshold T for which some schedule has every stage cost <= T.
#pragma once

#include <cstdint>

#include "reach.hpp"

namespace pipeedge_sched {

struct BottleneckResult {
  bool feasible = false;
  double threshold = 0;        // T*, one of the instance's stage-cost values
  double lower_bound = 0;      // the relaxation's bound the search started from
  std::uint64_t checks = 0;    // feasibility tests run
};

BottleneckResult min_bottleneck(const ClassInstance& in, const CountSpace& space, ReachSets& scratch);

}  // namespace pipeedge_sched
