// Orchestration: classes -> (exact search | merged-class heuristic) -> phase 1 -> tie-break DP
// -> devices -> costs from the device-level model.
#include "pipeedge_sched/solver.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "bottleneck.hpp"
#include "class_instance.hpp"
#include "pipeedge_sched/cost_model.hpp"
#include "refine.hpp"
#include "relaxation.hpp"

namespace pipeedge_sched {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr std::size_t kNoLimit = static_cast<std::size_t>(-1);

struct ClassPlan {
  bool found = false;
  bool tie_break_exact = true;   // false: the stage-limited passes hit the cap
  std::vector<PathStep> path;
};

// Any schedule allowed by the tables, greedily taking the best next step among states that
// can still finish. Used only when the tie-break DP is over its memory cap.
std::vector<PathStep> greedy_path(const ClassInstance& in, const CountSpace& space, const ThresholdTables& t,
                                  const ReachSets& useful) {
  std::vector<PathStep> path;
  std::uint64_t m = 0;
  std::size_t pos = 0, last = 0;
  std::vector<std::uint32_t> used;
  while (pos < in.layers) {
    space.digits(m, used);
    double best = kInf;
    PathStep step{0, 0};
    for (std::size_t v = 0; v < in.classes; ++v) {
      if (used[v] >= space.count[v]) continue;
      if (pos == 0 ? !t.start_ok[v] : (!t.pair_ok[last * in.classes + v] || !bits::test(t.cuts(in, last, v), pos - 1))) {
        continue;
      }
      const std::uint64_t next = m + space.radix[v];
      if (!useful.live[next]) continue;
      const double hop = pos == 0 ? in.input_s[v] + in.input_latency_s[v]
                                  : in.transfer_s(last, v, pos) + in.link_latency_s(last, v);
      const bits::Word* from = t.stages_from(in, v, pos);
      const bits::Word* target = useful.at(next, v);
      for (std::size_t b = pos; b < in.layers; ++b) {
        if (!bits::test(from, b) || !bits::test(target, b)) continue;
        // Latency per layer covered, so long cheap stages are preferred.
        const double rate = (hop + in.compute_s(v, pos, b + 1)) / static_cast<double>(b + 1 - pos);
        if (rate < best) {
          best = rate;
          step = PathStep{v, b + 1};
        }
      }
    }
    if (!std::isfinite(best)) return {};  // cannot happen: useful states always continue
    m += space.radix[step.cls];
    last = step.cls;
    pos = step.end;
    path.push_back(step);
  }
  return path;
}

// Least (latency, bottleneck, stages) schedule with every stage cost <= T.
ClassPlan best_path(const ClassInstance& in, const CountSpace& space, double threshold, const Options& options,
                    SearchStats& stats) {
  ClassPlan plan;
  const ThresholdTables t = make_tables(in, threshold);
  ReachSets reach, useful;
  RefineResult r = refine(in, space, t, kNoLimit, options.max_refine_states, reach, useful);
  stats.refine_states = r.states;
  if (!r.capped) {
    plan.found = r.found;
    plan.path = r.path;
    return plan;
  }
  // Too many useful states: the best schedule with at most s stages is final once no
  // schedule with more stages can beat it, even with unlimited devices.
  // At T* every complete schedule has bottleneck T*, so equal latency with more stages loses;
  // without a threshold a longer schedule of equal latency might still have a lower bottleneck.
  const bool bounded = std::isfinite(threshold);
  auto beaten = [bounded](double bound, double latency) { return bounded ? bound >= latency : bound > latency; };
  RefineResult best;
  std::size_t devices = 0;
  for (std::uint32_t c : in.count) devices += c;
  for (std::size_t s = 1;; s = std::min(2 * s, devices)) {
    RefineResult limited = refine(in, space, t, s, options.max_refine_states, reach, useful);
    stats.refine_states = limited.states;
    if (limited.capped) break;
    if (limited.found && (!best.found || limited.key < best.key)) best = limited;
    if (s >= devices || (best.found && beaten(relaxed_latency_beyond(in, t, s), best.key.latency_s))) {
      plan.found = best.found;
      plan.path = best.path;
      return plan;
    }
  }
  plan.tie_break_exact = false;
  plan.found = best.found;
  plan.path = best.path;
  if (!plan.found) {  // any T-feasible schedule will do; the full useful sets exist
    forward(in, space, t, kNoLimit, false, reach);
    backward(in, space, t, kNoLimit, reach, useful);
    plan.path = greedy_path(in, space, t, useful);
    plan.found = !plan.path.empty();
  }
  return plan;
}

// Class path -> device plan: members of a class are taken in input order.
std::vector<StagePlan> to_devices(const ClassInstance& in, const std::vector<PathStep>& path) {
  std::vector<std::size_t> next(in.classes, 0);
  std::vector<StagePlan> plan;
  std::size_t begin = 0;
  for (const PathStep& s : path) {
    plan.push_back(StagePlan{in.members[s.cls][next[s.cls]++], begin, s.end});
    begin = s.end;
  }
  return plan;
}

double objective_value(const Schedule& s, Objective o) {
  return o == Objective::Throughput ? s.bottleneck_s : s.latency_s;
}

}  // namespace

Schedule solve(const Problem& problem, const Options& options) {
  const CostModel model(problem);
  const auto exact = exact_classes(model);
  auto classes = exact;
  std::vector<std::uint32_t> counts;
  for (const auto& c : classes) counts.push_back(static_cast<std::uint32_t>(c.size()));
  const std::uint64_t states = count_states(counts);
  const bool exhaustive = states <= options.max_search_states / std::max<std::size_t>(classes.size(), 1);
  if (!exhaustive) classes = merge_classes(model, classes, options.max_search_states);

  const ClassInstance in = build_instance(model, classes);
  const CountSpace space(in.count);
  SearchStats stats;
  stats.device_classes = in.classes;
  stats.count_states = space.size;

  double threshold = kInf;
  double bound = kInf;
  Schedule out;
  if (problem.objective == Objective::Throughput) {
    ReachSets scratch;
    const BottleneckResult b = min_bottleneck(in, space, scratch);
    stats.feasibility_checks = b.checks;
    if (!b.feasible) {
      out.method = exhaustive ? "exact search: no schedule fits" : "heuristic (merged device classes) found no schedule";
      out.exact = exhaustive;
      out.stats = stats;
      return out;
    }
    threshold = b.threshold;
    bound = threshold;
  }
  const ClassPlan plan = best_path(in, space, threshold, options, stats);
  if (!plan.found) {
    out.method = exhaustive ? "exact search: no schedule fits" : "heuristic (merged device classes) found no schedule";
    out.exact = exhaustive;
    out.stats = stats;
    return out;
  }
  out = model.evaluate(to_devices(in, plan.path));
  out.stats = stats;
  if (exhaustive) {
    out.exact = problem.objective == Objective::Throughput || plan.tie_break_exact;
    out.lower_bound = problem.objective == Objective::Throughput ? bound : objective_value(out, problem.objective);
    out.method = plan.tie_break_exact ? "exact" : "exact bottleneck; latency tie-break greedy (state cap)";
    if (!out.exact) {
      out.lower_bound = relaxed_latency_beyond(in, make_tables(in, kInf), 0);
    }
  } else {
    const ClassInstance fine = build_instance(model, exact);
    out.exact = false;
    out.lower_bound = problem.objective == Objective::Throughput
                          ? relaxed_bottleneck(fine)
                          : relaxed_latency_beyond(fine, make_tables(fine, kInf), 0);
    out.method = "heuristic: " + std::to_string(exact.size()) + " device classes merged into " +
                 std::to_string(in.classes) + " (exact search limit)";
  }
  const double value = objective_value(out, problem.objective);
  if (out.exact || value <= out.lower_bound) {
    out.gap = 0;
  } else {
    out.gap = out.lower_bound > 0 ? value / out.lower_bound - 1.0 : kInf;
  }
  return out;
}

}  // namespace pipeedge_sched
