// Test instances: a hand-made builder, a seeded random generator whose numbers are dyadic (so
// sums are exact and ties are real), and a brute-force reference solver.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "pipeedge_sched/cost_model.hpp"
#include "pipeedge_sched/problem.hpp"

namespace testing {

using namespace pipeedge_sched;

// Elements whose transfer over a 1 Mbit/s link takes exactly 1 s at batch 1, 1 byte/element.
constexpr std::uint64_t kSecondAt1Mbps = 131072;

inline Problem uniform_problem(std::size_t layers, std::size_t devices, double time_s, double mem_MB,
                               double bw_Mbps) {
  Problem p;
  p.batch_size = 1;
  p.dtype_bytes = 1;
  p.buffers_in = 0;
  p.buffers_out = 0;
  p.model.mem_MB.assign(layers, 1.0);
  p.model.out_elems.assign(layers, kSecondAt1Mbps);
  p.model.in_elems = kSecondAt1Mbps;
  for (std::size_t d = 0; d < devices; ++d) {
    p.devices.push_back(Device{"h" + std::to_string(d), "t", mem_MB, bw_Mbps, std::vector<double>(layers, time_s)});
  }
  return p;
}

struct RandomSpec {
  std::size_t max_layers = 6;
  std::size_t max_devices = 4;
  bool links = false;
  bool client_legs = false;
  bool shared_types = false;
  bool proportional = false;  // device time = layer base time x device speed factor
};

inline Problem random_problem(std::mt19937_64& rng, const RandomSpec& spec) {
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  Problem p;
  const std::size_t L = static_cast<std::size_t>(pick(1, static_cast<int>(spec.max_layers)));
  const std::size_t D = static_cast<std::size_t>(pick(1, static_cast<int>(spec.max_devices)));
  p.batch_size = static_cast<std::uint32_t>(pick(1, 2));
  p.dtype_bytes = 1;
  p.buffers_in = static_cast<std::uint32_t>(pick(0, 2));
  p.buffers_out = static_cast<std::uint32_t>(pick(0, 2));
  p.objective = pick(0, 3) == 0 ? Objective::Latency : Objective::Throughput;
  for (std::size_t l = 0; l < L; ++l) {
    p.model.mem_MB.push_back(pick(1, 4));
    // MLP-like spikes: some cuts carry 4x the activation.
    p.model.out_elems.push_back(kSecondAt1Mbps / 8 * static_cast<std::uint64_t>(pick(0, 3) == 0 ? 8 : 2));
  }
  p.model.in_elems = kSecondAt1Mbps / 8 * static_cast<std::uint64_t>(pick(1, 4));
  const double bws[] = {0.5, 1, 2, 4, 8};
  std::vector<double> base;
  for (std::size_t l = 0; l < L; ++l) base.push_back(pick(0, 12) / 8.0);
  std::vector<Device> kinds;
  for (std::size_t d = 0; d < D; ++d) {
    Device dev;
    dev.name = "h" + std::to_string(d);
    dev.type = "t" + std::to_string(d);
    dev.mem_MB = pick(3, 14);
    dev.bw_Mbps = bws[pick(0, 4)];
    const double factor = pick(1, 4) / 2.0;
    for (std::size_t l = 0; l < L; ++l) dev.time_s.push_back(spec.proportional ? base[l] * factor : pick(0, 12) / 8.0);
    if (spec.shared_types && !kinds.empty() && pick(0, 1)) {
      const Device& k = kinds[static_cast<std::size_t>(pick(0, static_cast<int>(kinds.size()) - 1))];
      dev.type = k.type;
      dev.mem_MB = k.mem_MB;
      dev.bw_Mbps = k.bw_Mbps;
      dev.time_s = k.time_s;
    } else {
      kinds.push_back(dev);
    }
    p.devices.push_back(dev);
  }
  if (spec.links) {
    for (std::size_t a = 0; a < D; ++a) {
      for (std::size_t b = 0; b < D; ++b) {
        p.links.host_to_host.push_back(Link{bws[pick(0, 4)] * (pick(0, 9) == 0 ? 0 : 1), pick(0, 3) * 0.5});
      }
    }
  }
  if (spec.client_legs) {
    for (std::size_t d = 0; d < D; ++d) {
      p.links.client_to_host.push_back(Link{bws[pick(0, 4)], pick(0, 2) * 1.0});
      p.links.host_to_client.push_back(Link{bws[pick(0, 4)], pick(0, 2) * 1.0});
    }
  }
  return p;
}

// Objective-first comparison key of a costed schedule.
inline std::tuple<double, double, std::size_t> key_of(const Schedule& s, Objective o) {
  if (o == Objective::Throughput) return {s.bottleneck_s, s.latency_s, s.stages.size()};
  return {s.latency_s, s.bottleneck_s, s.stages.size()};
}

// Every ordered choice of distinct devices and every composition of the layers.
inline Schedule brute_force(const Problem& p) {
  const CostModel model(p);
  const std::size_t L = model.layers(), D = model.devices();
  Schedule best;
  std::vector<StagePlan> plan;
  std::vector<bool> used(D, false);
  std::function<void(std::size_t)> extend = [&](std::size_t pos) {
    if (pos == L) {
      Schedule s = model.evaluate(plan);
      if (!std::isfinite(s.bottleneck_s)) return;
      if (!best.feasible || key_of(s, p.objective) < key_of(best, p.objective)) best = s;
      return;
    }
    for (std::size_t d = 0; d < D; ++d) {
      if (used[d]) continue;
      for (std::size_t end = pos + 1; end <= L; ++end) {
        if (!model.fits(d, pos, end)) continue;
        used[d] = true;
        plan.push_back(StagePlan{d, pos, end});
        extend(end);
        plan.pop_back();
        used[d] = false;
      }
    }
  };
  extend(0);
  return best;
}

}  // namespace testing
