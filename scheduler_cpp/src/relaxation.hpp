// Lower bounds from the relaxation "any class may be used any number of times": the same path
// problem over (position, last class) only, O(L^2 K + L K^2) per bound.
#pragma once

#include <cstddef>

#include "threshold_tables.hpp"

namespace pipeedge_sched {

// Least achievable bottleneck; +inf when even the relaxation has no schedule.
double relaxed_bottleneck(const ClassInstance& in);

// Least latency over schedules allowed by the tables that have more than `stages` stages
// (stages = 0: all schedules); +inf when there are none.
double relaxed_latency_beyond(const ClassInstance& in, const ThresholdTables& t, std::size_t stages);

}  // namespace pipeedge_sched
