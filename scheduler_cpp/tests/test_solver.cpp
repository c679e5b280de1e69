// Solver behaviour on hand-made cases: objective, tie-breaks, infeasibility, heuristic.
#include <random>

#include "check.hpp"
#include "instances.hpp"
#include "pipeedge_sched/solver.hpp"

using namespace pipeedge_sched;

TEST_CASE(balances_identical_devices) {
  Problem p = testing::uniform_problem(8, 4, 1, 100, 1e6);
  const Schedule s = solve(p);
  CHECK(s.feasible && s.exact);
  CHECK_NEAR(s.bottleneck_s, 2, 1e-12);
  CHECK(s.stages.size() == 4);
  CHECK(s.stages[0].device == 0 && s.stages[3].device == 3);  // hosts of a class in order
}

TEST_CASE(fewer_devices_on_ties) {
  // One device is as fast as two: the bottleneck is the 1 s layer either way.
  Problem p = testing::uniform_problem(2, 2, 0, 100, 1e6);
  p.devices[0].time_s = {1, 0};
  p.devices[1].time_s = {1, 0};
  const Schedule s = solve(p);
  CHECK(s.stages.size() == 1);
}

TEST_CASE(avoids_cutting_after_a_wide_activation) {
  Problem p = testing::uniform_problem(4, 2, 1, 100, 1);
  p.model.out_elems = {testing::kSecondAt1Mbps, testing::kSecondAt1Mbps * 4, testing::kSecondAt1Mbps, 1};
  const Schedule s = solve(p);
  CHECK_NEAR(s.bottleneck_s, 3, 0);  // a 2+2 split would send 4 s; 1+3 or 3+1 costs 3 s
  CHECK(s.stages.size() == 2 && s.stages[0].last_layer != 2);
}

TEST_CASE(infeasible_when_nothing_fits) {
  Problem p = testing::uniform_problem(4, 1, 1, 3.5, 1);  // 4 MB of weights, one 3.5 MB device
  const Schedule s = solve(p);
  CHECK(!s.feasible);
  CHECK(s.exact);
}

TEST_CASE(infeasible_when_devices_run_out) {
  Problem p = testing::uniform_problem(4, 2, 1, 1.5, 1);  // each device holds one layer
  CHECK(!solve(p).feasible);
}

TEST_CASE(one_device_class_hands_over_within_itself) {
  Problem p = testing::uniform_problem(4, 2, 1, 2.5, 1);
  const Schedule s = solve(p);
  CHECK(s.feasible && s.stages.size() == 2);
  CHECK(s.stages[0].device != s.stages[1].device);
}

TEST_CASE(latency_objective_prefers_one_stage) {
  Problem p = testing::uniform_problem(4, 3, 1, 100, 1);
  p.objective = Objective::Latency;
  const Schedule s = solve(p);
  CHECK(s.stages.size() == 1);
  CHECK_NEAR(s.latency_s, 4, 0);
}

TEST_CASE(client_legs_count_when_modelled) {
  Problem p = testing::uniform_problem(2, 2, 1, 100, 1e6);
  p.links.client_to_host = {Link{0.25, 0}, Link{1, 0}};  // input takes 4 s to h0, 1 s to h1
  p.links.host_to_client = {Link{1, 0}, Link{1, 0}};
  const Schedule s = solve(p);
  CHECK(s.stages.front().device == 1);
  CHECK_NEAR(s.input_transfer_s, 1, 0);
  CHECK_NEAR(s.stages.back().transfer_s, 1, 0);
}

TEST_CASE(heuristic_beyond_the_exact_limit_reports_a_gap) {
  std::mt19937_64 rng(7);
  Problem p = testing::uniform_problem(24, 20, 1, 100, 1e6);
  p.objective = Objective::Latency;  // throughput runs the certified search instead
  for (auto& d : p.devices) {
    for (double& t : d.time_s) t = std::uniform_real_distribution<double>(0.5, 2)(rng);
  }
  Options o;
  o.max_search_states = 1 << 12;
  const Schedule s = solve(p, o);
  CHECK(s.feasible && !s.exact);
  CHECK(s.lower_bound > 0 && s.latency_s >= s.lower_bound);
  CHECK_NEAR(s.gap, s.latency_s / s.lower_bound - 1, 1e-12);
  CHECK(s.method.find("heuristic") != std::string::npos);
}

TEST_CASE(certified_beyond_the_exact_limit_proves_its_bottleneck) {
  std::mt19937_64 rng(7);
  Problem p = testing::uniform_problem(24, 20, 1, 100, 1e6);
  for (auto& d : p.devices) {
    for (double& t : d.time_s) t = std::uniform_real_distribution<double>(0.5, 2)(rng);
  }
  Options o;
  o.max_search_states = 1 << 12;
  const Schedule s = solve(p, o);
  CHECK(s.feasible && s.exact && s.gap == 0);
  CHECK(s.lower_bound == s.bottleneck_s);
  CHECK(s.method.find("exact bottleneck") != std::string::npos);
}

TEST_CASE(stage_limited_tie_break_matches_the_full_dp) {
  std::mt19937_64 rng(11);
  testing::RandomSpec spec;
  spec.max_layers = 16;
  spec.max_devices = 8;
  spec.links = true;
  spec.proportional = true;
  Options small;
  small.max_refine_states = 40;  // below many instances' useful states: stage-limited passes
  int limited_exact = 0;
  for (int n = 0; n < 200; ++n) {
    Problem p = testing::random_problem(rng, spec);
    // Ample memory: many useful states, but the best schedules use few stages.
    for (Device& d : p.devices) d.mem_MB = n % 2 ? 1000 : d.mem_MB * 2;
    const Schedule full = solve(p);
    const Schedule limited = solve(p, small);
    CHECK(full.feasible == limited.feasible);
    if (!full.feasible) continue;
    if (p.objective == Objective::Throughput) CHECK_NEAR(full.bottleneck_s, limited.bottleneck_s, 1e-12);
    if (limited.method == "exact") {
      CHECK_NEAR(full.latency_s, limited.latency_s, 1e-12);
      CHECK_NEAR(full.bottleneck_s, limited.bottleneck_s, 1e-12);
      CHECK(full.stages.size() == limited.stages.size());
      if (full.stats.refine_states > small.max_refine_states) ++limited_exact;
    } else {
      CHECK(limited.latency_s >= full.latency_s - 1e-12);
    }
  }
  CHECK_MSG(limited_exact >= 20, "only " << limited_exact << " instances used the stage-limited passes");
}
