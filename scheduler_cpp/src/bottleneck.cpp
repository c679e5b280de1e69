// T* is a stage-cost value, so the search runs over the sorted finite set of them, from the
// relaxation's bound upward: doubling steps until feasible, then bisection. When the
// relaxation is tight (common with many devices) one test settles it.
#include "bottleneck.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "relaxation.hpp"

namespace pipeedge_sched {
namespace {

// Every finite stage-cost value >= floor: compute sums of fitting stages, hand-over transfers
// and client legs.
std::vector<double> candidates(const ClassInstance& in, double floor) {
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
      bits::for_each(in.fits(k, i), in.words, [&](std::size_t b) { add(in.compute_s(k, i, b + 1)); });
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

}  // namespace

BottleneckResult min_bottleneck(const ClassInstance& in, const CountSpace& space, ReachSets& scratch) {
  BottleneckResult res;
  res.lower_bound = relaxed_bottleneck(in);
  if (!std::isfinite(res.lower_bound)) return res;
  const std::vector<double> values = candidates(in, res.lower_bound);
  const std::size_t no_limit = static_cast<std::size_t>(-1);
  auto feasible = [&](std::size_t idx) {
    ++res.checks;
    return forward(in, space, make_tables(in, values[idx]), no_limit, true, scratch);
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
  while (lo < hi) {
    const std::size_t mid = lo + (hi - lo) / 2;
    if (feasible(mid)) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  res.feasible = true;
  res.threshold = values[hi];
  return res;
}

}  // namespace pipeedge_sched
