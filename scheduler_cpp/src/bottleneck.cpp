// T* is a stage-cost value, so the search runs over the sorted finite set of them, from a
// lower bound (unlimited-devices relaxation, pooled capacity) upward: doubling steps until feasible, then bisection. Tests far below
// T* are cheap (pruning empties them); tests near T* explore most states. So once a feasible
// threshold T_hi is within a few percent of the infeasible side, the useful states at T_hi
// are collected once and T* comes from the min-max DP on them; the tie-break DP reuses them
// (every schedule feasible at T* <= T_hi lies within them).
#include "bottleneck.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "relaxation.hpp"

namespace pipeedge_sched {
namespace {

constexpr std::size_t kNoLimit = static_cast<std::size_t>(-1);
constexpr double kClose = 1.0 / 32;  // bracket width (relative) at which the DP is tried

// Every finite stage-cost value >= floor: compute sums of fitting stages, hand-over transfers
// and client legs.
}  // namespace

std::vector<double> stage_cost_values(const ClassInstance& in, double floor) {
  const std::size_t L = in.layers, K = in.classes;
  std::vector<double> out;
  auto add = [&](double x) {
    if (x >= floor && std::isfinite(x)) out.push_back(x);
  };
  for (std::size_t k = 0; k < K; ++k) {
    if (in.count[k] == 0) continue;
    add(in.input_s[k]);
    add(in.output_s[k]);
    for (std::size_t i = 0; i < L; ++i) {
      bits::for_each(in.fits(k, i), in.words, [&](std::size_t b) { add(in.stage_s(k, i, b + 1)); });
    }
  }
  for (std::size_t u = 0; u < K; ++u) {
    for (std::size_t v = 0; v < K; ++v) {
      if (!in.pair_allowed(u, v)) continue;
      for (std::size_t i = 1; i < L; ++i) add(in.transfer_s(u, v, i));
    }
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

namespace {

// Whether all devices together, each holding its largest allowed stage, cover the model.
bool enough_capacity(const ClassInstance& in, double threshold) {
  const ThresholdTables t = make_tables(in, threshold);
  std::size_t span = 0;
  double work = 0, weight = 0;
  for (std::size_t k = 0; k < in.classes; ++k) {
    span += in.count[k] * t.max_span[k];
    work += in.count[k] * t.max_work[k];
    weight += in.count[k] * t.max_weight[k];
  }
  return span >= in.layers && work >= in.work_suffix[0] && weight >= in.weight_suffix[0];
}

}  // namespace

std::size_t first_with_capacity(const ClassInstance& in, const std::vector<double>& values) {
  std::size_t lo = 0, hi = values.size();
  while (lo < hi) {
    const std::size_t mid = lo + (hi - lo) / 2;
    if (enough_capacity(in, values[mid])) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

double bottleneck_lower_bound(const ClassInstance& in) {
  const double relaxed = relaxed_bottleneck(in);
  if (!std::isfinite(relaxed)) return relaxed;
  const std::vector<double> values = stage_cost_values(in, relaxed);
  const std::size_t first = first_with_capacity(in, values);
  return first < values.size() ? values[first] : std::numeric_limits<double>::infinity();
}

BottleneckResult min_bottleneck(const ClassInstance& in, const CountSpace& space, std::uint64_t max_refine_states) {
  BottleneckResult res;
  const double relaxed = relaxed_bottleneck(in);
  if (!std::isfinite(relaxed)) return res;
  std::vector<double> values = stage_cost_values(in, relaxed);
  const std::size_t first = first_with_capacity(in, values);
  if (first == values.size()) return res;  // even pooled capacity falls short
  values.erase(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(first));
  res.lower_bound = values.front();
  ReachSets reach, useful;
  auto feasible = [&](std::size_t idx) {
    ++res.checks;
    return forward(in, space, make_tables(in, values[idx]), kNoLimit, true, reach);
  };
  // Invariant: values[< lo] infeasible; values[hi] feasible once found.
  std::size_t lo = 0, hi = values.size(), step = 1;
  for (std::size_t idx = 0; idx < values.size();) {
    if (feasible(idx)) {
      hi = idx;
      break;
    }
    lo = idx + 1;
    idx = (idx + step >= values.size() && idx + 1 < values.size()) ? values.size() - 1 : idx + step;
    step *= 2;
  }
  if (hi == values.size()) return res;  // distinct devices cannot do it at any threshold
  res.feasible = true;
  bool tried_dp = false;
  while (true) {
    if (!tried_dp && (lo == hi || values[hi] <= values[lo] * (1 + kClose))) {
      tried_dp = true;
      const ThresholdTables t = make_tables(in, values[hi]);
      forward(in, space, t, kNoLimit, false, reach);
      backward(in, space, t, kNoLimit, reach, useful);
      if (count_states(in, useful) <= max_refine_states) {
        res.threshold = min_bottleneck_dp(in, space, t, kNoLimit, useful);
        res.best = latency_dp(in, space, t, res.threshold, kNoLimit, useful);
        res.refined = res.best.found;
        return res;
      }
    }
    if (lo == hi) break;
    const std::size_t mid = lo + (hi - lo) / 2;
    if (feasible(mid)) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  res.threshold = values[hi];
  return res;
}

}  // namespace pipeedge_sched
