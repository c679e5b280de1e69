// Orchestration: classes -> (exact search | merged-class heuristic) -> phase 1 -> tie-break DP
// -> devices -> costs from the device-level model.
#include "pipeedge_sched/solver.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <numeric>
#include <string>
#include <thread>

#include "baselines.hpp"
#include "bottleneck.hpp"
#include "certified.hpp"
#include "class_instance.hpp"
#include "latency_filter.hpp"
#include "local_search.hpp"
#include "pipeedge_sched/cost_model.hpp"
#include "refine.hpp"
#include "relaxation.hpp"

namespace pipeedge_sched {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr std::size_t kNoLimit = static_cast<std::size_t>(-1);
constexpr std::uint64_t kPlainDpStates = std::uint64_t{1} << 14;  // count vectors x classes
constexpr int kCappedTries = 3;
constexpr std::uint64_t kHeuristicStates = std::uint64_t{1} << 18;  // per merged search (two run)  // latency guesses over the state cap before giving up

struct ClassPlan {
  bool found = false;
  bool tie_break_exact = true;   // false: the latency search hit its limits
  double latency_bound = 0;      // when not exact: proven lower bound on the latency
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
        const double rate = (hop + in.stage_s(v, pos, b + 1)) / static_cast<double>(b + 1 - pos);
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

// Latency of a class path, summed as the DPs do.
double path_latency(const ClassInstance& in, const std::vector<PathStep>& path) {
  double latency = in.input_s[path.front().cls] + in.input_latency_s[path.front().cls];
  std::size_t begin = 0;
  for (std::size_t k = 0; k < path.size(); ++k) {
    const std::size_t v = path[k].cls;
    if (k > 0) latency += in.transfer_s(path[k - 1].cls, v, begin) + in.link_latency_s(path[k - 1].cls, v);
    latency += in.stage_s(v, begin, path[k].end);
    begin = path[k].end;
  }
  return latency + in.output_s[path.back().cls] + in.output_latency_s[path.back().cls];
}

// Least (latency, bottleneck, stages) schedule with every stage cost <= T.
ClassPlan best_path(const ClassInstance& in, const CountSpace& space, double threshold, const Options& options,
                    SearchStats& stats) {
  ClassPlan plan;
  const ThresholdTables t = make_tables(in, threshold);
  ReachSets reach, useful;
  RefineResult r;
  // Small spaces: one plain DP. Large ones go straight to the filtered search below.
  if (space.size * in.classes <= kPlainDpStates) {
    r = refine(in, space, t, kNoLimit, options.max_refine_states, reach, useful);
    stats.refine_states = r.states;
    if (!r.capped) {
      plan.found = r.found;
      plan.path = r.path;
      return plan;
    }
  }
  // Too many states. Search the latency between a Lagrangian lower bound and an
  // incumbent: the DP restricted by LatencyFilter(g) keeps every schedule of latency <= g, so
  // if its best schedule has latency <= g it is optimal (tie-breaks included); otherwise no
  // schedule is below g. Guesses grow from the bound; a capped guess is cut back. A few capped
  // tries end the search with the incumbent and the proven bound.
  const LatencyPenalties lagrange = latency_penalties(in, t, kInf);
  double lo = lagrange.bound, hi = kInf;
  if (!lagrange.schedule.empty()) {
    plan.path = lagrange.schedule;
    hi = path_latency(in, plan.path);
  }
  double delta = std::max(1e-4 * std::fabs(lo), 1e-9);
  int capped = 0;
  for (int attempt = 0; attempt < 40 && capped < kCappedTries && std::isfinite(lo); ++attempt) {
    const double guess = std::min(hi, lo + delta);
    const LatencyFilter filter(in, t, guess, lagrange.penalty);
    r = refine(in, space, t, kNoLimit, options.max_refine_states, reach, useful, &filter);
    stats.refine_states = r.states;
    if (r.capped) {
      ++capped;
      delta = (guess - lo) / 4;
      continue;
    }
    if (r.found && r.key.latency_s <= guess) {
      plan.path = r.path;
      plan.found = true;
      return plan;
    }
    if (r.found && r.key.latency_s < hi) {
      plan.path = r.path;
      hi = r.key.latency_s;
    }
    if (guess >= hi) break;  // cannot happen: the incumbent itself survives the filter
    lo = guess;
    delta *= 4;
  }
  plan.tie_break_exact = false;
  plan.latency_bound = lo;
  if (plan.path.empty()) {  // any T-feasible schedule will do
    forward(in, space, t, kNoLimit, false, reach);
    backward(in, space, t, kNoLimit, reach, useful);
    plan.path = greedy_path(in, space, t, useful);
  }
  plan.found = !plan.path.empty();
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

// One search over a class partition: T* (throughput) and the tie-break DP, or the latency DP.
struct Attempt {
  ClassInstance in;
  ClassPlan plan;
  SearchStats stats;
  double threshold = kInf;  // T* for the throughput objective
};

Attempt search(const CostModel& model, const std::vector<std::vector<std::size_t>>& classes, const Options& options) {
  Attempt a{build_instance(model, classes), {}, {}, kInf};
  const CountSpace space(a.in.count);
  a.stats.device_classes = a.in.classes;
  a.stats.count_states = space.size;
  if (model.problem().objective == Objective::Throughput) {
    const BottleneckResult b = min_bottleneck(a.in, space, options.max_refine_states);
    a.stats.feasibility_checks = b.checks;
    a.stats.refine_states = b.best.states;
    if (!b.feasible) return a;
    a.threshold = b.threshold;
    if (b.refined) {
      a.plan.found = true;
      a.plan.path = b.best.path;
      return a;
    }
  }
  a.plan = best_path(a.in, space, a.threshold, options, a.stats);
  return a;
}

double objective_value(const Schedule& s, Objective o) {
  return o == Objective::Throughput ? s.bottleneck_s : s.latency_s;
}

Schedule no_schedule(bool exact, const SearchStats& stats) {
  Schedule out;
  out.exact = exact;
  out.method = exact ? "exact search: no schedule fits" : "heuristic (merged device classes) found no schedule";
  out.stats = stats;
  return out;
}

// a beats b: objective, then the other measure, then fewer stages.
bool better(const Schedule& a, const Schedule& b, Objective o) {
  const double a1 = objective_value(a, o), b1 = objective_value(b, o);
  if (a1 != b1) return a1 < b1;
  const double a2 = o == Objective::Throughput ? a.latency_s : a.bottleneck_s;
  const double b2 = o == Objective::Throughput ? b.latency_s : b.bottleneck_s;
  if (a2 != b2) return a2 < b2;
  return a.stages.size() < b.stages.size();
}

std::string percent(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f%%", 100 * x);
  return buf;
}

// Auto threads: a second thread only when a core is idle (1-minute load average below cores - 1,
// where the system reports one) and the instance is big enough to repay starting it. Measured
// here: on tiny instances it doubled the CPU time for nothing, and on a machine whose cores are
// all busy two threads of the search get one core's time between them and find worse plans.
bool second_thread_pays(const ClassInstance& in) {
  const unsigned cores = std::thread::hardware_concurrency();
  if (cores < 2 || in.classes * in.layers < 512) return false;
#if defined(__unix__) || defined(__APPLE__)
  double load = 0;
  if (getloadavg(&load, 1) == 1 && load > static_cast<double>(cores) - 1) return false;
#endif
  return true;
}

// Throughput beyond the exhaustive limit: the baselines seed the certified search, which
// returns the best schedule it finds within the time limit and a proven bound.
Schedule certified(const CostModel& model, const ClassInstance& fine, const Options& options) {
  const auto start = Clock::now();
  const auto deadline =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(std::max(options.time_limit_s, 0.0)));
  Schedule out;
  bool found = false;
  for (const auto& plan : baseline_plans(model)) {
    Schedule s = model.evaluate(plan);
    if (!found || better(s, out, Objective::Throughput)) {
      out = s;
      found = true;
    }
  }
  // Seeds, not part of the floor: optimal cuts over all devices (at most one per layer) in
  // input order, by memory and by speed, largest first.
  const Problem& p = model.problem();
  std::vector<std::size_t> order(model.devices());
  std::iota(order.begin(), order.end(), 0);
  auto seed = [&](std::vector<std::size_t> devices) {
    devices.resize(std::min(devices.size(), model.layers()));
    const std::vector<StagePlan> plan = best_cuts(model, devices);
    if (plan.empty()) return;
    Schedule s = model.evaluate(plan);
    if (!found || better(s, out, Objective::Throughput)) {
      out = s;
      found = true;
    }
  };
  seed(order);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return p.devices[a].mem_MB > p.devices[b].mem_MB;
  });
  seed(order);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return model.compute_s(a, 0, model.layers()) < model.compute_s(b, 0, model.layers());
  });
  seed(order);
  const bool two = options.threads == 0 ? second_thread_pays(fine) : options.threads >= 2;
  const CertifiedResult r = certified_bottleneck(fine, found ? out.bottleneck_s : kInf, deadline, two);
  SearchStats stats;
  stats.device_classes = fine.classes;
  stats.feasibility_checks = r.checks;
  stats.refine_states = r.nodes;
  if (r.infeasible) return no_schedule(true, stats);
  if (r.found) {
    Schedule s = model.evaluate(to_devices(fine, r.path));
    if (!found || better(s, out, Objective::Throughput)) {
      out = s;
      found = true;
    }
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (!found) {
    Schedule none = no_schedule(false, stats);
    none.method = "certified search found no schedule within the time limit; raise it";
    return none;
  }
  out.stats = stats;
  out.lower_bound = std::min(r.lower_bound, out.bottleneck_s);
  out.exact = out.bottleneck_s <= r.lower_bound;
  out.gap = out.exact ? 0.0 : out.bottleneck_s / r.lower_bound - 1.0;
  char took[32];
  std::snprintf(took, sizeof took, "%.2f s", seconds);
  const std::string size = std::to_string(fine.classes) + " device classes";
  out.method = out.exact ? "exact bottleneck (certified threshold search, " + size + ", " + took +
                               "); latency tie-break not searched"
                         : "best found in " + std::string(took) + " (time limit; " + size + "): bottleneck within " +
                               percent(out.gap) + " of the proven lower bound";
  return out;
}

}  // namespace

Schedule solve(const Problem& problem, const Options& options) {
  const CostModel model(problem);
  const Objective goal = problem.objective;
  const auto exact = exact_classes(model);
  std::vector<std::uint32_t> counts;
  for (const auto& c : exact) counts.push_back(static_cast<std::uint32_t>(c.size()));
  const bool exhaustive = count_states(counts) <= options.max_search_states / std::max<std::size_t>(exact.size(), 1);

  if (exhaustive) {
    const Attempt a = search(model, exact, options);
    if (!a.plan.found) return no_schedule(true, a.stats);
    Schedule out = model.evaluate(to_devices(a.in, a.plan.path));
    out.stats = a.stats;
    if (a.plan.tie_break_exact) {
      out.exact = true;
      out.method = "exact";
      out.lower_bound = objective_value(out, goal);
    } else if (goal == Objective::Throughput) {
      out.exact = true;  // T* is proven; only the latency tie-break is not
      out.method = "exact bottleneck; latency tie-break stopped at the state cap";
      out.lower_bound = a.threshold;
    } else {
      out.method = "latency search stopped at the state cap; gap is against its proven bound";
      out.lower_bound = a.plan.latency_bound;
    }
    const double value = objective_value(out, goal);
    out.gap = out.exact || value <= out.lower_bound ? 0.0 : value / out.lower_bound - 1.0;
    return out;
  }

  const ClassInstance fine = build_instance(model, exact);
  if (goal == Objective::Throughput) return certified(model, fine, options);

  // Pooled capacity can prove that nothing fits, whatever the search.
  const double floor = bottleneck_lower_bound(fine);
  if (!std::isfinite(floor)) return no_schedule(true, SearchStats{});

  // Heuristic: merge classes pessimistically (balanced, then memory first, which keeps more
  // schedules feasible when memory is tight) and keep the better result on the real devices.
  Schedule out;
  SearchStats stats;
  bool found = false;
  std::size_t merged = 0;
  const std::uint64_t budget = std::min(options.max_search_states, kHeuristicStates);
  for (double memory_weight : {2.0, 25.0}) {
    const Attempt a = search(model, merge_classes(model, exact, budget, memory_weight), options);
    stats = a.stats;
    if (!a.plan.found) continue;
    Schedule s = model.evaluate(improve_plan(model, to_devices(a.in, a.plan.path)));
    if (!found || objective_value(s, goal) < objective_value(out, goal)) {
      out = s;
      merged = a.in.classes;
      found = true;
    }
  }
  for (const auto& plan : baseline_plans(model)) {
    Schedule s = model.evaluate(plan);
    if (!found || better(s, out, goal)) {
      out = s;
      found = true;
    }
  }
  if (!found) return no_schedule(false, stats);
  out.stats = stats;
  out.exact = false;
  out.lower_bound = goal == Objective::Throughput
                        ? floor
                        : latency_bound_beyond(fine, make_tables(fine, kInf), 0, out.latency_s);
  out.method = "heuristic: " + std::to_string(exact.size()) + " device classes merged into " +
               std::to_string(merged) + " (exact search limit)";
  const double value = objective_value(out, goal);
  out.gap = value <= out.lower_bound ? 0.0 : (out.lower_bound > 0 ? value / out.lower_bound - 1.0 : kInf);
  return out;
}

}  // namespace pipeedge_sched
