// The throughput search beyond the exhaustive limit: a bottleneck bisection whose every step
// either proves a threshold infeasible or finds a schedule within it, under a deadline. What
// it returns is the best schedule found and a proven lower bound on the optimal bottleneck;
// the two meet when it finishes in time (then the bottleneck is exact).
#pragma once

#include <chrono>
#include <cstdint>
#include <vector>

#include "threshold_tables.hpp"

namespace pipeedge_sched {

using Clock = std::chrono::steady_clock;

// Lagrangian relaxation at a threshold T: devices may be reused, but each stage on class k
// pays a penalty lambda_k >= 0, with sum_k lambda_k count_k = 1. A real schedule uses class
// k at most count_k times, so its penalties sum to <= 1; if every relaxed schedule (a path
// over (position, last class) using the tables) pays more than 1, nothing fits within T.
struct PenaltyCertificate {
  bool proven = false;              // nothing fits within T
  std::vector<double> lambda;       // the best penalties found (sum lambda_k count_k = 1)
  std::vector<double> suffix;       // [j * K + v]: least penalties after a stage on v ending at j
  double relaxed = 0;               // least penalties of a relaxed schedule under lambda
};

// The best penalties: the LP dual of "a convex combination of relaxed schedules within the
// counts", solved by column generation (the path DP prices each master's duals and adds the
// least-penalty path) for at most `iterations` rounds. Proven when the priced penalties make
// every relaxed schedule overspend, i.e. when the LP relaxation itself is infeasible at T;
// stops unproven once the master holds a fractional schedule within the counts, or at `stop`.
PenaltyCertificate penalty_certificate(const ClassInstance& in, const ThresholdTables& t, int iterations = 2000,
                                       Clock::time_point stop = Clock::time_point::max());

struct CertifiedResult {
  bool infeasible = false;        // proven: no schedule at any threshold
  bool found = false;             // path holds the best schedule found by the search
  std::vector<PathStep> path;
  double bottleneck = 0;          // path's bottleneck
  double lower_bound = 0;         // proven lower bound on the optimal bottleneck
  std::uint64_t checks = 0;       // thresholds tested
  std::uint64_t nodes = 0;        // depth-first search nodes
};

// `incumbent` is the bottleneck of a schedule the caller already has (+inf if none): the
// search only looks below it and returns a path only when it found a better one. Two threads:
// two thresholds are tested at a time.
CertifiedResult certified_bottleneck(const ClassInstance& in, double incumbent, Clock::time_point deadline,
                                     bool two_threads = false);

// Bottleneck of a class path with the class-level costs.
double path_bottleneck(const ClassInstance& in, const std::vector<PathStep>& path);

}  // namespace pipeedge_sched
