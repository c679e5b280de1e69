// Scheduler output: the stages in pipeline order with the cost model's predictions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace pipeedge_sched {

struct Stage {
  std::size_t device = 0;       // index into Problem::devices
  std::size_t first_layer = 0;  // 1-based, inclusive (the seed's numbering)
  std::size_t last_layer = 0;   // 1-based, inclusive
  double compute_s = 0;         // sum of the device's per-layer times
  double wire_s = 0;            // the device's time receiving its input and sending its output
  double transfer_s = 0;        // sending the output onward (next stage, or client when modelled)
  double link_latency_s = 0;    // one-way latency of that transfer's link
  double memory_MB = 0;         // weights plus data buffers
};

struct SearchStats {
  std::uint64_t device_classes = 0;      // groups of interchangeable devices searched over
  std::uint64_t count_states = 0;        // count-vector states (product of (class size + 1))
  std::uint64_t feasibility_checks = 0;  // bottleneck values tested
  std::uint64_t refine_states = 0;       // (devices used, last class, layer) states valued
};

struct Schedule {
  bool feasible = false;        // false: no assignment satisfies memory (and finite links)
  std::vector<Stage> stages;    // pipeline order
  double input_transfer_s = 0;  // client -> first stage, when the links model it
  double input_latency_s = 0;   // that leg's one-way latency
  double bottleneck_s = 0;      // max over the input transfer and each stage's max(compute + wire, transfer)
  double latency_s = 0;         // input leg + sum of compute, wire, transfers and link latencies
  bool exact = false;           // true: provably optimal for the objective (with tie-breaks)
  double lower_bound = 0;       // proven lower bound on the objective's value
  double gap = 0;               // objective / lower_bound - 1 (0 when exact)
  std::string method;           // how it was found, in words
  SearchStats stats;
};

}  // namespace pipeedge_sched
