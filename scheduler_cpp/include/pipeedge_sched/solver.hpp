// Exact pipeline partition scheduling.
//
// Problem. Split layers 1..L into contiguous stages, give each stage its own device (a device
// is used at most once), with each stage's memory within the device's capacity. A stage's
// cost is max(compute of its layers, time to send its output onward); the bottleneck is the
// largest stage cost (and the client's input transfer, when the links model it).
//
// Algorithm (exact):
//  1. Device classes. Devices whose swap changes no cost (same profile and memory, and the
//     transposition of the two is an automorphism of the link matrix and client legs) form a
//     class. A schedule's cost depends only on its sequence of classes, so the search state
//     keeps per-class use counts (a mixed-radix number m, prod(count_k + 1) values) instead
//     of device subsets: the seed's 2 types x 4 hosts give 25 count vectors, 16 distinct
//     devices give 2^16.
//  2. Bottleneck T*. For a threshold T, "feasible(T)" asks whether some schedule has every
//     stage cost <= T. It is a reachability problem over states (m, last class u, position
//     i); for each (m, u) the reachable positions are one bitset of L bits, and a step to
//     class v is: A = OR_u (R[m][u] & X_T[u][v]) (cut positions where the u->v transfer is
//     <= T), then R[m + e_v][v] |= OR_{i in A} F_T[v][i] (end positions j whose compute
//     (i, j] <= T and memory fits). States are visited in increasing m, so every
//     predecessor is final when used. T* is the smallest stage-cost value that is feasible:
//     the candidates are the finite set of all compute sums, transfer times and client legs,
//     searched upward from a lower bound (the same path problem with unlimited devices per
//     class, an O(L^2 K^2) DP), first by doubling steps and then by bisection.
//  3. Tie-breaks. At T* (or T = inf for the latency objective), a backward pass keeps only
//     states that can still reach the end; a DP over those states (in increasing m, values
//     stored compactly by bitset rank) minimises (latency, bottleneck, stages)
//     lexicographically. This key is monotone under extension, so the DP is exact. When the
//     useful states exceed a cap, the DP is repeated with a stage-count limit s = 1, 2, 4...
//     until a relaxed lower bound for schedules with more than s stages shows that none of
//     them can be better.
// Cost: O(prod(count_k + 1) * K * (K + P) * L / 64) word operations per feasibility check,
// P being the typical number of reachable cut positions per state.
//
// Heuristic (when prod(count_k + 1) * K exceeds Options::max_search_states): classes are
// merged pessimistically (per-layer max time, min memory, min bandwidth, max latency) until
// the search fits, the merged instance is solved exactly, and the schedule is re-costed on
// the real devices. Every merged schedule is valid, and its true cost is no worse than its
// merged cost. The reported gap is measured against the unlimited-devices relaxation.
#pragma once

#include <cstdint>

#include "pipeedge_sched/problem.hpp"
#include "pipeedge_sched/schedule.hpp"

namespace pipeedge_sched {

struct Options {
  // Exact search limit: count-vector states times classes. 2^16 states x 16 classes (16
  // distinct devices) is 2^20; beyond the limit the heuristic runs instead.
  std::uint64_t max_search_states = std::uint64_t{1} << 21;
  // Tie-break DP limit: valued (count vector, class, layer) states before the stage-count
  // limited passes take over.
  std::uint64_t max_refine_states = std::uint64_t{1} << 21;
};

// Throws std::invalid_argument for malformed input. An infeasible instance is not an error:
// the result has feasible == false.
Schedule solve(const Problem& problem, const Options& options = {});

}  // namespace pipeedge_sched
