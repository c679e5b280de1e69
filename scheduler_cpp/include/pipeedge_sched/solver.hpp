// Exact pipeline partition scheduling.
//
// Problem. Split layers 1..L into contiguous stages, give each stage its own device (a device
// is used at most once), with each stage's memory within the device's capacity. A stage's
// cost is max(compute of its layers, time to send its output onward); the bottleneck is the
// largest stage cost (and the client's input transfer, when the links model it). Throughput
// minimises the bottleneck, then latency, then the number of stages; latency minimises
// latency, then the bottleneck, then the number of stages.
//
// Algorithm (exact).
//  1. Device classes. Devices whose swap changes no cost (same profile and memory, and the
//     transposition of the two is an automorphism of the link matrix and client legs) form a
//     class. A schedule's cost depends only on its sequence of classes, so states keep per-
//     class use counts (a mixed-radix number m, prod(count_k + 1) values) instead of device
//     subsets: the seed's 2 types x 4 hosts give 25 count vectors, 16 distinct devices 2^16.
//  2. Feasibility of a threshold T ("is there a schedule with every stage cost <= T?") is
//     reachability over states (m, last class u, position i). For each (m, u) the reachable
//     positions are one L-bit bitset; a step to class v is A = OR_u R[m][u] & X_T[u][v] (cut
//     positions whose u->v transfer is <= T), then R[m + e_v][v] |= OR_{i in A} F_T[v][i]
//     (ends j with compute (i, j] <= T that fit in memory). Successors have larger m, so one
//     ascending sweep is exact. States are pruned when the unused devices, each holding its
//     largest allowed stage (in layers, in normalised work, in weight MB), cannot cover the
//     remaining layers: valid relaxations, so nothing feasible is lost.
//  3. T* (throughput). T* is one of the finitely many stage-cost values (compute sums,
//     transfers, client legs). From a lower bound (unlimited-devices relaxation and pooled
//     capacity) the search doubles its step until feasible, then bisects. Tests far below T*
//     are nearly free; near T* they visit most states, so once a feasible T_hi is within 1/32
//     of the infeasible side, the states reachable and still able to finish at T_hi are
//     collected (a backward sweep) and a min-max DP over them gives T* exactly.
//  4. Tie-breaks. A DP over those same states, values stored compactly by bitset rank, takes
//     the least (latency, bottleneck, stages) key over edges costing <= T*. The key is
//     monotone under extension, so the DP is exact.
//  5. Latency objective, and tie-breaks over the state cap. The same DP with T = inf, but
//     restricted by a filter: with Lagrangian penalties on class use (subgradient ascent on
//     the relaxation's dual), a state survives only if bounds built from relaxed prefix and
//     suffix latencies, penalties spent and still available can reach a target latency g. The
//     filtered DP finds a schedule <= g (then optimal) or proves none exists; g grows from the
//     Lagrangian bound toward the best schedule found. If it still exceeds the cap, the best
//     schedule is returned with its proven gap (exact = false for the latency objective).
// Cost: O(prod(count_k + 1) * K * (K + P) * L / 64) word operations per feasibility test, P
// being the typical number of reachable cut positions per state; ~0.1-0.5 s for 16 distinct
// devices and 128 layers on one core.
//
// Certified search (throughput, when prod(count_k + 1) * K exceeds Options::max_search_states):
// a bisection on the bottleneck over the stage-cost values; each threshold is refuted by the LP
// relaxation (column generation: a small simplex master over relaxed schedules, priced by the
// path DP; its penalties on device use make every relaxed schedule overspend, re-checked exactly)
// or decided by a depth-first search over (position, last class, classes used) pruned by those
// penalties, by pooled capacity and by a table of exhausted states; on two threads when a core is
// idle. Under Options::time_limit_s it returns the best schedule found and the largest refuted
// value's successor as a proven lower bound; when they meet, the bottleneck is exact (the latency
// tie-break is then not searched). See certified.hpp and docs/scheduler.md.
//
// Floor (every result): the plan is never worse than the even, memory-proportional and greedy
// compute-proportional splits over the same devices (baselines.hpp); they also seed the search.
//
// Heuristic (latency objective beyond the exhaustive limit): classes are
// merged pessimistically (per-layer max time, min memory, min bandwidth, max latency) until a
// smaller search fits, twice (balanced, and memory first), and each merged instance is solved
// exactly. Any schedule of the merged instance is valid on the real devices at no higher cost;
// a local search (optimal cuts for the device order, swaps with unused devices) then improves
// it on the real profiles. The gap is measured against the pooled-capacity bound (throughput)
// or the Lagrangian bound (latency).
#pragma once

#include <cstdint>

#include "pipeedge_sched/problem.hpp"
#include "pipeedge_sched/schedule.hpp"

namespace pipeedge_sched {

struct Options {
  // Exact search limit: count-vector states times classes (16 distinct devices: 2^16 x 16).
  // The default admits 17 distinct devices (~1 s, ~120 MB at 128 layers); 2^23 admits 18
  // (~2 s, ~250 MB). Beyond the limit the heuristic runs. Memory is about
  // 32 * limit * ceil(L / 64) bytes.
  std::uint64_t max_search_states = std::uint64_t{1} << 22;
  // DP limit: valued (count vector, class, layer) states, about 40 bytes each. Above it the
  // throughput search bisects further and the latency search filters harder.
  std::uint64_t max_refine_states = std::uint64_t{1} << 21;
  // Beyond the exhaustive limit (throughput): seconds the certified search may take before it
  // returns its best schedule with the proven bound. It returns earlier when the two meet.
  double time_limit_s = 5.0;
  // Threads the certified search uses: 0 = two when the machine has a core to spare (two or
  // more cores, 1-minute load average below cores - 1) and the instance is not tiny (device
  // classes x layers >= 512), 1 = this thread only, 2 = two.
  unsigned threads = 0;
};

// Throws std::invalid_argument for malformed input. An infeasible instance is not an error:
// the result has feasible == false.
Schedule solve(const Problem& problem, const Options& options = {});

}  // namespace pipeedge_sched
