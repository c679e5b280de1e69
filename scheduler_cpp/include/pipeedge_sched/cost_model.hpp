// The seed's cost model, per device: compute, transfer and memory of a stage. Positions are
// layer boundaries 0..L; a stage (i, j] runs layers i+1..j (1-based), 0 <= i < j <= L.
#pragma once

#include <cstddef>
#include <vector>

#include "pipeedge_sched/problem.hpp"
#include "pipeedge_sched/schedule.hpp"

namespace pipeedge_sched {

// A stage in plan form, before costing: device index and the boundary positions (i, j].
struct StagePlan {
  std::size_t device;
  std::size_t begin;  // i: layers before this stage
  std::size_t end;    // j: last layer of this stage (1-based)
};

// Seconds to move `bytes` over a `bw_Mbps` link; +inf when bw_Mbps <= 0. Mbit = 2^20 bits,
// as in the seed.
double transfer_seconds(double bytes, double bw_Mbps);

class CostModel {
 public:
  explicit CostModel(const Problem& problem);  // validates

  std::size_t layers() const { return layers_; }
  std::size_t devices() const { return problem_.devices.size(); }
  const Problem& problem() const { return problem_; }

  // Sum of device d's per-layer times over (i, j], from prefix sums.
  double compute_s(std::size_t d, std::size_t i, std::size_t j) const {
    return time_prefix_[d][j] - time_prefix_[d][i];
  }
  // Device d's time on the frames of stage (i, j]: its fixed part, receiving the boundary-i
  // activation and sending the boundary-j one (frame_s, wire_s_per_MB; 0 when not modelled).
  double wire_s(std::size_t d, std::size_t i, std::size_t j) const { return recv_s(d, i) + send_s(d, j); }
  double recv_s(std::size_t d, std::size_t i) const { return recv_s_[d][i]; }  // frame_s + bytes_in(i)
  double send_s(std::size_t d, std::size_t j) const { return send_s_[d][j]; }  // bytes_out(j)
  // What the stage keeps the device busy for per microbatch: the stage's CPU-side cost.
  double stage_s(std::size_t d, std::size_t i, std::size_t j) const { return compute_s(d, i, j) + wire_s(d, i, j); }
  // Bytes entering the stage that starts after position i (i == 0: the model input).
  double bytes_in(std::size_t i) const;
  // Bytes leaving the stage that ends at position j >= 1.
  double bytes_out(std::size_t j) const;
  // Weights of (i, j] plus the seed's data buffers: receive queue (not for the first stage),
  // send queue, and one in and one out processing buffer.
  double memory_MB(std::size_t i, std::size_t j) const;
  bool fits(std::size_t d, std::size_t i, std::size_t j) const {
    return memory_MB(i, j) <= problem_.devices[d].mem_MB;
  }

  // Directed legs. Without a links matrix: min of the two NICs, zero latency.
  Link link(std::size_t src, std::size_t dst) const;
  bool models_input() const { return !problem_.links.client_to_host.empty(); }
  bool models_output() const { return !problem_.links.host_to_client.empty(); }
  // Seconds to send the boundary-i activation from src to dst.
  double transfer_s(std::size_t src, std::size_t dst, std::size_t i) const {
    return transfer_seconds(bytes_out(i), link(src, dst).bw_Mbps);
  }
  double input_s(std::size_t d) const;           // 0 when not modelled
  double input_latency_s(std::size_t d) const;   // 0 when not modelled
  double output_s(std::size_t d) const;          // 0 when not modelled
  double output_latency_s(std::size_t d) const;  // 0 when not modelled

  // Cost a plan: stage costs, bottleneck and latency. The plan must cover 1..L in order.
  Schedule evaluate(const std::vector<StagePlan>& plan) const;

 private:
  const Problem& problem_;
  std::size_t layers_;
  std::vector<std::vector<double>> time_prefix_;  // [device][0..L]
  std::vector<double> weight_prefix_;             // [0..L]
  std::vector<std::vector<double>> recv_s_;       // [device][i], i = 0..L-1: frame_s + receiving bytes_in(i)
  std::vector<std::vector<double>> send_s_;       // [device][j], j = 1..L: sending bytes_out(j)
};

}  // namespace pipeedge_sched
