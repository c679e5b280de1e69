// The search works on device classes, not devices: a class is a group of devices treated as
// interchangeable, with one cost profile and a count. Exact classes hold devices that really
// are interchangeable; merged (pessimistic) classes take each member's worst value, so a
// schedule found on them is valid for any choice of members and costs no more there.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "bitset.hpp"
#include "pipeedge_sched/cost_model.hpp"

namespace pipeedge_sched {

struct ClassInstance {
  std::size_t layers = 0;                           // L
  std::size_t classes = 0;                          // K
  std::size_t words = 0;                            // W = words_for(L)
  std::vector<std::uint32_t> count;                 // devices per class
  std::vector<std::vector<std::size_t>> members;    // device indices, in input order
  std::vector<std::vector<double>> time_prefix;     // [k][0..L]
  std::vector<Link> link;                           // [u * K + v]; u == v: between two members
  std::vector<double> bytes_out;                    // [j], j = 1..L (index 0 unused)
  std::vector<double> input_s, input_latency_s;     // per class; 0 when not modelled
  std::vector<double> output_s, output_latency_s;   // per class; 0 when not modelled
  std::vector<bits::Word> mem_ok;                   // [(k * L + i) * W]: ends j with (i, j] fitting
  // Additive layer measures for capacity bounds (pruning): work w_l is the classes' mean
  // normalised time profile, so stages of equal compute carry similar work on any device.
  std::vector<double> work_suffix;                  // [i]: sum of w_l over layers after i
  std::vector<double> weight_suffix;                // [i]: weight MB of layers after i

  double compute_s(std::size_t k, std::size_t i, std::size_t j) const {
    return time_prefix[k][j] - time_prefix[k][i];
  }
  // Per class (members' worst): frame_s + receiving bytes_in(i); sending bytes_out(j).
  std::vector<std::vector<double>> recv_s;          // [k][i], i = 0..L-1
  std::vector<std::vector<double>> send_s;          // [k][j], j = 1..L
  std::vector<bool> has_frame_costs;                // [k]: any recv_s or send_s above 0
  // The stage's busy time on class k: its layers plus its frames (CostModel::stage_s).
  double stage_s(std::size_t k, std::size_t i, std::size_t j) const {
    return compute_s(k, i, j) + (recv_s[k][i] + send_s[k][j]);  // summed as CostModel::evaluate sums
  }
  std::vector<double> transfer;                     // [(u * K + v) * (L + 1) + i], cuts i = 1..L-1
  double transfer_s(std::size_t u, std::size_t v, std::size_t i) const {
    return transfer[(u * classes + v) * (layers + 1) + i];
  }
  double link_latency_s(std::size_t u, std::size_t v) const { return link[u * classes + v].latency_ms / 1000.0; }
  // A u -> v hand-over needs two distinct devices: within one class, at least two members.
  bool pair_allowed(std::size_t u, std::size_t v) const { return u != v || count[u] >= 2; }
  const bits::Word* fits(std::size_t k, std::size_t i) const { return &mem_ok[(k * layers + i) * words]; }
};

// A stage of a class-level schedule.
struct PathStep {
  std::size_t cls;  // class of the stage's device
  std::size_t end;  // last layer of the stage (it covers (previous end, end])
};

// Groups devices whose swap changes no cost: equal profile and memory, and swapping the two
// is an automorphism of links and client legs. (The relation is an equivalence: transpositions
// that are automorphisms generate a group.)
std::vector<std::vector<std::size_t>> exact_classes(const CostModel& model);

// Merges classes, cheapest first, until prod(count + 1) * classes <= max_states. A merge costs
// what its members lose to the merged worst case (relative time, memory, bandwidth), memory
// counted memory_weight times.
std::vector<std::vector<std::size_t>> merge_classes(const CostModel& model,
                                                    std::vector<std::vector<std::size_t>> classes,
                                                    std::uint64_t max_states, double memory_weight = 2.0);

// Builds the class-level instance; members of a class get each member's worst value.
ClassInstance build_instance(const CostModel& model, const std::vector<std::vector<std::size_t>>& classes);

// prod(count + 1), saturating at UINT64_MAX.
std::uint64_t count_states(const std::vector<std::uint32_t>& count);

}  // namespace pipeedge_sched
