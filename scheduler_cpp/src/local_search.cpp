// The cut DP for a fixed device order is O(k L^2); each round tries every (stage, unused
// device) swap once.
#include "local_search.hpp"

#include <algorithm>
#include <limits>

namespace pipeedge_sched {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

double value_of(const Schedule& s, Objective o) { return o == Objective::Throughput ? s.bottleneck_s : s.latency_s; }

}  // namespace

std::vector<StagePlan> best_cuts(const CostModel& m, const std::vector<std::size_t>& order) {
  const std::size_t L = m.layers(), k = order.size();
  const bool throughput = m.problem().objective == Objective::Throughput;
  auto combine = [throughput](double a, double b) { return throughput ? std::max(a, b) : a + b; };
  // best[s][j]: stages 0..s cover layers 1..j; from[s][j]: where stage s starts.
  std::vector<std::vector<double>> best(k, std::vector<double>(L + 1, kInf));
  std::vector<std::vector<std::size_t>> from(k, std::vector<std::size_t>(L + 1, 0));
  const std::size_t first = order.front();
  const double start = throughput ? m.input_s(first) : m.input_s(first) + m.input_latency_s(first);
  for (std::size_t j = 1; j <= L; ++j) {
    if (m.fits(first, 0, j)) best[0][j] = combine(start, m.stage_s(first, 0, j));
  }
  for (std::size_t s = 1; s < k; ++s) {
    const std::size_t u = order[s - 1], v = order[s];
    const double hop = throughput ? 0.0 : m.link(u, v).latency_ms / 1000.0;
    for (std::size_t i = s; i < L; ++i) {
      if (best[s - 1][i] == kInf) continue;
      const double base = combine(best[s - 1][i], m.transfer_s(u, v, i) + hop);
      for (std::size_t j = i + 1; j <= L; ++j) {
        if (!m.fits(v, i, j)) continue;
        const double value = combine(base, m.stage_s(v, i, j));
        if (value < best[s][j]) {
          best[s][j] = value;
          from[s][j] = i;
        }
      }
    }
  }
  if (best[k - 1][L] == kInf) return {};
  std::vector<StagePlan> plan(k);
  for (std::size_t s = k, j = L; s-- > 0;) {
    plan[s] = StagePlan{order[s], s == 0 ? 0 : from[s][j], j};
    j = plan[s].begin;
  }
  return plan;
}

std::vector<StagePlan> improve_plan(const CostModel& model, std::vector<StagePlan> plan, int rounds) {
  const Objective goal = model.problem().objective;
  double current = value_of(model.evaluate(plan), goal);
  auto consider = [&](const std::vector<std::size_t>& order) {
    std::vector<StagePlan> candidate = best_cuts(model, order);
    if (candidate.empty()) return false;
    const double value = value_of(model.evaluate(candidate), goal);
    if (!(value < current)) return false;
    current = value;
    plan = std::move(candidate);
    return true;
  };
  std::vector<std::size_t> order;
  for (const StagePlan& s : plan) order.push_back(s.device);
  consider(order);
  for (int round = 0; round < rounds; ++round) {
    bool better = false;
    std::vector<bool> used(model.devices(), false);
    for (const StagePlan& s : plan) used[s.device] = true;
    for (std::size_t s = 0; s < plan.size(); ++s) {
      for (std::size_t d = 0; d < model.devices(); ++d) {
        if (used[d]) continue;
        std::vector<std::size_t> swapped;
        for (const StagePlan& st : plan) swapped.push_back(st.device);
        const std::size_t old = swapped[s];
        swapped[s] = d;
        if (consider(swapped)) {
          used[old] = false;
          used[d] = true;
          better = true;
        }
      }
    }
    if (!better) break;
  }
  return plan;
}

}  // namespace pipeedge_sched
