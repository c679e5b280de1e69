// Phase 1 for the throughput objective: T*, the least threshold for which some schedule has
// every stage cost <= T, and when affordable the tie-break schedule at T* as well.
#pragma once

#include <cstdint>

#include "refine.hpp"

namespace pipeedge_sched {

struct BottleneckResult {
  bool feasible = false;
  double threshold = 0;        // T*, one of the instance's stage-cost values
  double lower_bound = 0;      // the relaxation's bound the search started from
  std::uint64_t checks = 0;    // feasibility tests run
  bool refined = false;        // `best` holds the tie-break schedule at T*
  RefineResult best;
};

// A lower bound on T* without the search: the larger of the unlimited-devices relaxation and
// the least T at which all devices together could hold the model's layers, work and weights.
double bottleneck_lower_bound(const ClassInstance& in);

BottleneckResult min_bottleneck(const ClassInstance& in, const CountSpace& space, std::uint64_t max_refine_states);

}  // namespace pipeedge_sched
