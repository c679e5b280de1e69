// Phase 1 for the throughput objective: T*, the least threshold for which some schedule has
// every stage cost <= T, and when affordable the tie-break schedule at T* as well.
#pragma once

#include <cstdint>
#include <vector>

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

// Every finite stage-cost value >= floor (compute sums of fitting stages, hand-over transfers,
// client legs), sorted and distinct: the optimal bottleneck is one of them.
std::vector<double> stage_cost_values(const ClassInstance& in, double floor);

// Index of the first value at which all devices together, each holding its largest allowed
// stage (in layers, work and weight), could cover the model (values.size() if none): every
// smaller value is proven infeasible.
std::size_t first_with_capacity(const ClassInstance& in, const std::vector<double>& values);

BottleneckResult min_bottleneck(const ClassInstance& in, const CountSpace& space, std::uint64_t max_refine_states);

}  // namespace pipeedge_sched
