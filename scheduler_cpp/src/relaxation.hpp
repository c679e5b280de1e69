// Lower bounds from the relaxation "any class may be used any number of times": the same path
// problem over (position, last class) only, O(L^2 K + L K^2) per bound. The latency bound is
// tightened by Lagrangian penalties on class use (each class at most `count` times).
#pragma once

#include <cstddef>
#include <vector>

#include "threshold_tables.hpp"

namespace pipeedge_sched {

// Least achievable bottleneck; +inf when even the relaxation has no schedule.
double relaxed_bottleneck(const ClassInstance& in);

// Lower bound on the latency of schedules allowed by the tables that have more than `stages`
// stages (stages = 0: all schedules); +inf when there are none. `target` (a known schedule's
// latency, or +inf) steers the subgradient steps; ascent stops once the bound exceeds it.
double latency_bound_beyond(const ClassInstance& in, const ThresholdTables& t, std::size_t stages,
                            double target, int iterations = 60);

// The Lagrangian ascent behind latency_bound_beyond(stages = 0), returning its best penalties
// and the best relaxed path that happened to respect the class counts (a real schedule).
struct LatencyPenalties {
  double bound = 0;
  std::vector<double> penalty;     // per class, >= 0
  std::vector<PathStep> schedule;  // empty when no relaxed path was feasible
  double schedule_latency = 0;
};
LatencyPenalties latency_penalties(const ClassInstance& in, const ThresholdTables& t, double target,
                                   int iterations = 60);

// Relaxed partial latencies plus penalty[v] per stage on class v, per (class u, position i),
// layout [i * K + u]:
//  prefix: a schedule prefix whose last stage, on u, ends at i (input leg included);
//  suffix: from "u's stage ends at i" to the client (output leg included).
std::vector<double> penalized_prefix_latency(const ClassInstance& in, const ThresholdTables& t,
                                             const std::vector<double>& penalty);
std::vector<double> penalized_suffix_latency(const ClassInstance& in, const ThresholdTables& t,
                                             const std::vector<double>& penalty);

}  // namespace pipeedge_sched
