// Device-level costs, the single source of truth for every reported number.
#include "pipeedge_sched/cost_model.hpp"

#include <algorithm>
#include <limits>
#include <stdexcept>

namespace pipeedge_sched {
namespace {
constexpr double kMiB = 1024.0 * 1024.0;  // the seed's MB and Mbit are binary
}  // namespace

double transfer_seconds(double bytes, double bw_Mbps) {
  if (bytes <= 0) return 0;
  if (!(bw_Mbps > 0)) return std::numeric_limits<double>::infinity();
  return bytes * 8.0 / (bw_Mbps * kMiB);
}

CostModel::CostModel(const Problem& problem) : problem_(problem), layers_(problem.model.mem_MB.size()) {
  validate(problem);
  time_prefix_.reserve(problem.devices.size());
  for (const Device& d : problem.devices) {
    std::vector<double> prefix(layers_ + 1, 0.0);
    for (std::size_t l = 0; l < layers_; ++l) prefix[l + 1] = prefix[l] + d.time_s[l];
    time_prefix_.push_back(std::move(prefix));
  }
  weight_prefix_.assign(layers_ + 1, 0.0);
  for (std::size_t l = 0; l < layers_; ++l) weight_prefix_[l + 1] = weight_prefix_[l] + problem.model.mem_MB[l];
  for (const Device& d : problem.devices) {
    std::vector<double> recv(layers_ + 1, 0.0), send(layers_ + 1, 0.0);
    for (std::size_t i = 0; i < layers_; ++i) recv[i] = d.frame_s + d.wire_s_per_MB * bytes_in(i) / kMiB;
    for (std::size_t j = 1; j <= layers_; ++j) send[j] = d.wire_s_per_MB * bytes_out(j) / kMiB;
    recv_s_.push_back(std::move(recv));
    send_s_.push_back(std::move(send));
  }
}

double CostModel::bytes_in(std::size_t i) const {
  if (i == 0) {
    return static_cast<double>(problem_.model.in_elems) * problem_.batch_size * problem_.dtype_bytes;
  }
  return bytes_out(i);
}

double CostModel::bytes_out(std::size_t j) const {
  return static_cast<double>(problem_.model.out_elems[j - 1]) * problem_.batch_size * problem_.dtype_bytes;
}

double CostModel::memory_MB(std::size_t i, std::size_t j) const {
  const double in = bytes_in(i);
  const double out = bytes_out(j);
  double buffers = static_cast<double>(problem_.buffers_out) * out + in + out;
  if (i > 0) buffers += static_cast<double>(problem_.buffers_in) * in;
  return (weight_prefix_[j] - weight_prefix_[i]) + buffers / kMiB;
}

Link CostModel::link(std::size_t src, std::size_t dst) const {
  const auto& matrix = problem_.links.host_to_host;
  if (!matrix.empty()) return matrix[src * devices() + dst];
  return Link{std::min(problem_.devices[src].bw_Mbps, problem_.devices[dst].bw_Mbps), 0.0};
}

double CostModel::input_s(std::size_t d) const {
  return models_input() ? transfer_seconds(bytes_in(0), problem_.links.client_to_host[d].bw_Mbps) : 0.0;
}
double CostModel::input_latency_s(std::size_t d) const {
  return models_input() ? problem_.links.client_to_host[d].latency_ms / 1000.0 : 0.0;
}
double CostModel::output_s(std::size_t d) const {
  return models_output() ? transfer_seconds(bytes_out(layers_), problem_.links.host_to_client[d].bw_Mbps) : 0.0;
}
double CostModel::output_latency_s(std::size_t d) const {
  return models_output() ? problem_.links.host_to_client[d].latency_ms / 1000.0 : 0.0;
}

Schedule CostModel::evaluate(const std::vector<StagePlan>& plan) const {
  if (plan.empty() || plan.front().begin != 0 || plan.back().end != layers_) {
    throw std::invalid_argument("plan must cover every layer");
  }
  Schedule s;
  s.feasible = true;
  const std::size_t first = plan.front().device;
  s.input_transfer_s = input_s(first);
  s.input_latency_s = input_latency_s(first);
  s.bottleneck_s = s.input_transfer_s;
  s.latency_s = s.input_transfer_s + s.input_latency_s;
  for (std::size_t k = 0; k < plan.size(); ++k) {
    const StagePlan& p = plan[k];
    if (p.begin >= p.end || (k > 0 && plan[k - 1].end != p.begin)) {
      throw std::invalid_argument("plan stages must be contiguous and non-empty");
    }
    Stage st;
    st.device = p.device;
    st.first_layer = p.begin + 1;
    st.last_layer = p.end;
    st.compute_s = compute_s(p.device, p.begin, p.end);
    st.wire_s = wire_s(p.device, p.begin, p.end);
    st.memory_MB = memory_MB(p.begin, p.end);
    if (k + 1 < plan.size()) {
      const std::size_t next = plan[k + 1].device;
      st.transfer_s = transfer_s(p.device, next, p.end);
      st.link_latency_s = link(p.device, next).latency_ms / 1000.0;
    } else {
      st.transfer_s = output_s(p.device);
      st.link_latency_s = output_latency_s(p.device);
    }
    s.bottleneck_s = std::max({s.bottleneck_s, st.compute_s + st.wire_s, st.transfer_s});
    s.latency_s += st.compute_s + st.wire_s + st.transfer_s + st.link_latency_s;
    s.stages.push_back(st);
  }
  return s;
}

}  // namespace pipeedge_sched
