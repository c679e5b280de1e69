// Each baseline cuts layers 1..L into one stage per device (the first min(D, L) devices, in
// input order) so that stage s ends near a target share of some per-layer measure: layer
// counts (even), device memory (memory-proportional) or device speed, measured as the
// inverse of the device's total time, against its own per-layer times (compute-proportional).
#include "baselines.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace pipeedge_sched {
namespace {

// Cuts with stage s ending where the cumulative share first reaches sum(share[0..s]).
// `progress(s, j)` is the fraction of the model stage s's device would call done at layer j.
template <class Progress>
std::vector<StagePlan> cut_by_share(std::size_t layers, const std::vector<std::size_t>& devices,
                                    const std::vector<double>& share, Progress progress) {
  const std::size_t k = devices.size();
  std::vector<StagePlan> plan;
  std::size_t begin = 0;
  double target = 0;
  for (std::size_t s = 0; s < k; ++s) {
    target += share[s];
    std::size_t end = begin + 1;  // at least one layer, and leave one for each later stage
    const std::size_t last = layers - (k - 1 - s);
    while (end < last && progress(s, end) < target - 1e-12) ++end;
    if (s + 1 == k) end = layers;
    plan.push_back(StagePlan{devices[s], begin, end});
    begin = end;
  }
  return plan;
}

bool usable(const CostModel& model, const std::vector<StagePlan>& plan) {
  for (const StagePlan& s : plan) {
    if (!model.fits(s.device, s.begin, s.end)) return false;
  }
  const Schedule s = model.evaluate(plan);
  return std::isfinite(s.bottleneck_s) && std::isfinite(s.latency_s);
}

}  // namespace

std::vector<std::vector<StagePlan>> baseline_plans(const CostModel& model) {
  const std::size_t L = model.layers();
  const Problem& p = model.problem();
  std::vector<std::size_t> devices(std::min(model.devices(), L));
  std::iota(devices.begin(), devices.end(), 0);
  if (devices.empty()) return {};
  const std::size_t k = devices.size();
  const double total_weight = std::accumulate(p.model.mem_MB.begin(), p.model.mem_MB.end(), 0.0);

  std::vector<std::vector<StagePlan>> out;
  auto keep = [&](std::vector<StagePlan> plan) {
    if (usable(model, plan)) out.push_back(std::move(plan));
  };
  // Even: equal layer counts.
  keep(cut_by_share(L, devices, std::vector<double>(k, 1.0 / static_cast<double>(k)),
                    [&](std::size_t, std::size_t j) { return static_cast<double>(j) / static_cast<double>(L); }));
  // Memory-proportional: weight MB in proportion to device memory.
  double memory = 0;
  for (std::size_t d : devices) memory += std::max(p.devices[d].mem_MB, 0.0);
  if (memory > 0 && total_weight > 0) {
    std::vector<double> share;
    for (std::size_t d : devices) share.push_back(std::max(p.devices[d].mem_MB, 0.0) / memory);
    std::vector<double> weight_prefix(L + 1, 0.0);
    for (std::size_t l = 0; l < L; ++l) weight_prefix[l + 1] = weight_prefix[l] + p.model.mem_MB[l];
    keep(cut_by_share(L, devices, share, [&](std::size_t, std::size_t j) { return weight_prefix[j] / total_weight; }));
  }
  // Greedy compute-proportional: speed 1 / total time; each stage takes layers until its
  // device's own time reaches its share of a perfectly balanced pipeline.
  double speed = 0;
  std::vector<double> share;
  for (std::size_t d : devices) {
    const double total = model.compute_s(d, 0, L);
    share.push_back(total > 0 ? 1.0 / total : 0.0);
    speed += share.back();
  }
  if (speed > 0) {
    for (double& s : share) s /= speed;
    // Progress of stage s at layer j: the layers so far measured on s's own device.
    keep(cut_by_share(L, devices, share, [&](std::size_t s, std::size_t j) {
      const double total = model.compute_s(devices[s], 0, L);
      return total > 0 ? model.compute_s(devices[s], 0, j) / total : static_cast<double>(j) / static_cast<double>(L);
    }));
  }
  return out;
}

}  // namespace pipeedge_sched
