// Device classes: exact grouping, pessimistic merging, and the class-level cost tables.
#include "class_instance.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace pipeedge_sched {
namespace {

bool same(const Link& a, const Link& b) { return a.bw_Mbps == b.bw_Mbps && a.latency_ms == b.latency_ms; }

// Worse of two legs: lower bandwidth, higher latency.
Link worst(const Link& a, const Link& b) {
  return Link{std::min(a.bw_Mbps, b.bw_Mbps), std::max(a.latency_ms, b.latency_ms)};
}

// True when swapping devices a and b leaves every cost unchanged.
bool interchangeable(const CostModel& m, std::size_t a, std::size_t b) {
  const Problem& p = m.problem();
  const Device& da = p.devices[a];
  const Device& db = p.devices[b];
  if (da.time_s != db.time_s || da.mem_MB != db.mem_MB) return false;
  if (da.frame_s != db.frame_s || da.wire_s_per_MB != db.wire_s_per_MB) return false;
  if (m.models_input() && !same(p.links.client_to_host[a], p.links.client_to_host[b])) return false;
  if (m.models_output() && !same(p.links.host_to_client[a], p.links.host_to_client[b])) return false;
  if (!same(m.link(a, b), m.link(b, a))) return false;
  for (std::size_t x = 0; x < m.devices(); ++x) {
    if (x == a || x == b) continue;
    if (!same(m.link(a, x), m.link(b, x)) || !same(m.link(x, a), m.link(x, b))) return false;
  }
  return true;
}

// What the merge heuristic compares: a class's worst-case profile and its members' own values.
struct Profile {
  std::vector<double> time_s;  // per-layer worst
  double mem_MB;               // smallest
  double bw_Mbps;              // smallest
  double frame_s;              // largest
  double wire_s_per_MB;        // largest
  std::vector<std::size_t> members;
};

Profile profile_of(const CostModel& m, const std::vector<std::size_t>& members) {
  const Problem& p = m.problem();
  const Device& head = p.devices[members[0]];
  Profile pr{head.time_s, head.mem_MB, head.bw_Mbps, head.frame_s, head.wire_s_per_MB, members};
  for (std::size_t d : members) {
    const Device& dev = p.devices[d];
    for (std::size_t l = 0; l < pr.time_s.size(); ++l) pr.time_s[l] = std::max(pr.time_s[l], dev.time_s[l]);
    pr.mem_MB = std::min(pr.mem_MB, dev.mem_MB);
    pr.bw_Mbps = std::min(pr.bw_Mbps, dev.bw_Mbps);
    pr.frame_s = std::max(pr.frame_s, dev.frame_s);
    pr.wire_s_per_MB = std::max(pr.wire_s_per_MB, dev.wire_s_per_MB);
  }
  return pr;
}

double loss(double own, double worst) { return own > 0 ? std::fabs(own - worst) / own : (worst > 0 ? 1.0 : 0.0); }

// What each member gives up to the class's worst case: relative slowdown, memory and bandwidth
// lost (memory weighted by `memory_weight`: it decides feasibility).
double pessimism(const CostModel& m, const Profile& pr, double memory_weight) {
  const Problem& p = m.problem();
  double total = 0;
  const double worst_time = std::accumulate(pr.time_s.begin(), pr.time_s.end(), 0.0);
  for (std::size_t d : pr.members) {
    const Device& dev = p.devices[d];
    const double own_time = std::accumulate(dev.time_s.begin(), dev.time_s.end(), 0.0);
    total += loss(own_time, worst_time) + memory_weight * loss(dev.mem_MB, pr.mem_MB) + loss(dev.bw_Mbps, pr.bw_Mbps) +
             loss(dev.frame_s, pr.frame_s) + loss(dev.wire_s_per_MB, pr.wire_s_per_MB);
  }
  return total;
}

std::uint64_t search_states(const std::vector<std::vector<std::size_t>>& classes) {
  std::vector<std::uint32_t> count;
  for (const auto& c : classes) count.push_back(static_cast<std::uint32_t>(c.size()));
  const std::uint64_t m = count_states(count);
  const std::uint64_t k = classes.size();
  return m > std::numeric_limits<std::uint64_t>::max() / std::max<std::uint64_t>(k, 1)
             ? std::numeric_limits<std::uint64_t>::max()
             : m * k;
}

// w_l = mean over classes of time_k(l) / total_k.
void set_work_model(ClassInstance& in) {
  const std::size_t L = in.layers, K = in.classes;
  std::vector<double> w(L, 0.0);
  for (std::size_t k = 0; k < K; ++k) {
    const double total = in.time_prefix[k][L];
    if (total <= 0) continue;
    for (std::size_t l = 0; l < L; ++l) w[l] += in.compute_s(k, l, l + 1) / total / static_cast<double>(K);
  }
  in.work_suffix.assign(L + 1, 0.0);
  for (std::size_t l = L; l-- > 0;) in.work_suffix[l] = in.work_suffix[l + 1] + w[l];
}

}  // namespace

std::uint64_t count_states(const std::vector<std::uint32_t>& count) {
  std::uint64_t m = 1;
  for (std::uint32_t c : count) {
    if (m > std::numeric_limits<std::uint64_t>::max() / (std::uint64_t{c} + 1)) {
      return std::numeric_limits<std::uint64_t>::max();
    }
    m *= std::uint64_t{c} + 1;
  }
  return m;
}

std::vector<std::vector<std::size_t>> exact_classes(const CostModel& model) {
  std::vector<std::vector<std::size_t>> classes;
  for (std::size_t d = 0; d < model.devices(); ++d) {
    auto it = std::find_if(classes.begin(), classes.end(),
                           [&](const auto& c) { return interchangeable(model, c.front(), d); });
    if (it == classes.end()) {
      classes.push_back({d});
    } else {
      it->push_back(d);
    }
  }
  return classes;
}

std::vector<std::vector<std::size_t>> merge_classes(const CostModel& model,
                                                    std::vector<std::vector<std::size_t>> classes,
                                                    std::uint64_t max_states, double memory_weight) {
  std::vector<Profile> profiles;
  std::vector<double> cost;  // pessimism of each class as it stands
  for (const auto& c : classes) {
    profiles.push_back(profile_of(model, c));
    cost.push_back(pessimism(model, profiles.back(), memory_weight));
  }
  while (classes.size() > 1 && search_states(classes) > max_states) {
    // The merge that adds the least pessimism.
    std::size_t best_a = 0, best_b = 1;
    double best = std::numeric_limits<double>::infinity();
    for (std::size_t a = 0; a < classes.size(); ++a) {
      for (std::size_t b = a + 1; b < classes.size(); ++b) {
        std::vector<std::size_t> both = classes[a];
        both.insert(both.end(), classes[b].begin(), classes[b].end());
        const double added = pessimism(model, profile_of(model, both), memory_weight) - cost[a] - cost[b];
        if (added < best) {
          best = added;
          best_a = a;
          best_b = b;
        }
      }
    }
    classes[best_a].insert(classes[best_a].end(), classes[best_b].begin(), classes[best_b].end());
    std::sort(classes[best_a].begin(), classes[best_a].end());
    classes.erase(classes.begin() + static_cast<std::ptrdiff_t>(best_b));
    profiles.erase(profiles.begin() + static_cast<std::ptrdiff_t>(best_b));
    cost.erase(cost.begin() + static_cast<std::ptrdiff_t>(best_b));
    profiles[best_a] = profile_of(model, classes[best_a]);
    cost[best_a] = pessimism(model, profiles[best_a], memory_weight);
  }
  return classes;
}

ClassInstance build_instance(const CostModel& model, const std::vector<std::vector<std::size_t>>& classes) {
  const Problem& p = model.problem();
  ClassInstance in;
  in.layers = model.layers();
  in.classes = classes.size();
  in.words = bits::words_for(in.layers);
  in.members = classes;
  const std::size_t L = in.layers, K = in.classes, W = in.words;

  in.bytes_out.assign(L + 1, 0.0);
  for (std::size_t j = 1; j <= L; ++j) in.bytes_out[j] = model.bytes_out(j);

  std::vector<double> capacity(K);
  for (std::size_t k = 0; k < K; ++k) {
    const auto& mem = classes[k];
    in.count.push_back(static_cast<std::uint32_t>(mem.size()));
    std::vector<double> time = p.devices[mem[0]].time_s;
    capacity[k] = p.devices[mem[0]].mem_MB;
    Link input = model.models_input() ? p.links.client_to_host[mem[0]] : Link{};
    Link output = model.models_output() ? p.links.host_to_client[mem[0]] : Link{};
    for (std::size_t d : mem) {
      for (std::size_t l = 0; l < L; ++l) time[l] = std::max(time[l], p.devices[d].time_s[l]);
      capacity[k] = std::min(capacity[k], p.devices[d].mem_MB);
      if (model.models_input()) input = worst(input, p.links.client_to_host[d]);
      if (model.models_output()) output = worst(output, p.links.host_to_client[d]);
    }
    std::vector<double> prefix(L + 1, 0.0);
    for (std::size_t l = 0; l < L; ++l) prefix[l + 1] = prefix[l] + time[l];
    in.time_prefix.push_back(std::move(prefix));
    // Worst member per entry: a member's frame costs are sums of nonnegative terms, so the
    // entry-wise maximum is at least each member's own.
    std::vector<double> recv(L + 1, 0.0), send(L + 1, 0.0);
    for (std::size_t d : mem) {
      for (std::size_t i = 0; i < L; ++i) recv[i] = std::max(recv[i], model.recv_s(d, i));
      for (std::size_t j = 1; j <= L; ++j) send[j] = std::max(send[j], model.send_s(d, j));
    }
    in.has_frame_costs.push_back(std::any_of(recv.begin(), recv.end(), [](double x) { return x > 0; }) ||
                                 std::any_of(send.begin(), send.end(), [](double x) { return x > 0; }));
    in.recv_s.push_back(std::move(recv));
    in.send_s.push_back(std::move(send));
    in.input_s.push_back(model.models_input() ? transfer_seconds(model.bytes_in(0), input.bw_Mbps) : 0.0);
    in.input_latency_s.push_back(input.latency_ms / 1000.0);
    in.output_s.push_back(model.models_output() ? transfer_seconds(model.bytes_out(L), output.bw_Mbps) : 0.0);
    in.output_latency_s.push_back(output.latency_ms / 1000.0);
  }

  in.link.assign(K * K, Link{});
  for (std::size_t u = 0; u < K; ++u) {
    for (std::size_t v = 0; v < K; ++v) {
      bool first = true;
      Link leg{};
      for (std::size_t a : classes[u]) {
        for (std::size_t b : classes[v]) {
          if (a == b) continue;
          leg = first ? model.link(a, b) : worst(leg, model.link(a, b));
          first = false;
        }
      }
      in.link[u * K + v] = leg;  // u == v with one member: never used (pair_allowed)
    }
  }
  in.transfer.assign(K * K * (L + 1), 0.0);
  for (std::size_t uv = 0; uv < K * K; ++uv) {
    for (std::size_t i = 1; i < L; ++i) in.transfer[uv * (L + 1) + i] = transfer_seconds(in.bytes_out[i], in.link[uv].bw_Mbps);
  }

  set_work_model(in);
  in.weight_suffix.assign(L + 1, 0.0);
  for (std::size_t l = L; l-- > 0;) in.weight_suffix[l] = in.weight_suffix[l + 1] + p.model.mem_MB[l];

  in.mem_ok.assign(K * L * W, 0);
  for (std::size_t i = 0; i < L; ++i) {
    for (std::size_t j = i + 1; j <= L; ++j) {
      const double need = model.memory_MB(i, j);
      for (std::size_t k = 0; k < K; ++k) {
        if (need <= capacity[k]) bits::set(&in.mem_ok[(k * L + i) * W], j - 1);
      }
    }
  }
  return in;
}

}  // namespace pipeedge_sched
