// The certified search beyond the exhaustive limit: its bound never exceeds the optimum, its
// plan is optimal whenever it says exact, and no result is worse than the simple baselines.
#include <random>

#include "baselines.hpp"
#include "bottleneck.hpp"
#include "certified.hpp"
#include "class_instance.hpp"
#include "relaxation.hpp"
#include "simplex.hpp"
#include "check.hpp"
#include "instances.hpp"
#include "pipeedge_sched/solver.hpp"

using namespace pipeedge_sched;

namespace {

// Forces the certified search (throughput) or the heuristic (latency) at any size.
Options beyond_limit(double seconds) {
  Options o;
  o.max_search_states = 1;
  o.time_limit_s = seconds;
  return o;
}

// Bench-like: ViT-like layers, devices of `types` random speeds and memories, most needed.
Problem fleet(std::mt19937_64& rng, std::size_t layers, std::size_t devices, std::size_t types) {
  std::uniform_real_distribution<double> u(0, 1);
  const std::uint64_t out[4] = {302592, 151296, 756480, 151296};
  const double time[4] = {0.35, 0.08, 0.35, 0.30};
  Problem p;
  double total = 0;
  for (std::size_t l = 0; l < layers; ++l) {
    p.model.mem_MB.push_back(20 + 10 * u(rng));
    p.model.out_elems.push_back(out[l % 4]);
    total += p.model.mem_MB.back();
  }
  p.model.in_elems = 150528;
  std::vector<Device> kinds;
  for (std::size_t t = 0; t < types; ++t) {
    Device d;
    d.type = "t" + std::to_string(t);
    const double speed = 0.5 + 1.5 * u(rng);
    for (std::size_t l = 0; l < layers; ++l) d.time_s.push_back(time[l % 4] * speed * (0.9 + 0.2 * u(rng)));
    d.mem_MB = 2.5 * total * (0.6 + 0.8 * u(rng)) / static_cast<double>(devices);
    d.bw_Mbps = 100 + 900 * u(rng);
    kinds.push_back(d);
  }
  for (std::size_t i = 0; i < devices; ++i) {
    Device d = kinds[i % types];
    d.name = "h" + std::to_string(i);
    p.devices.push_back(d);
  }
  return p;
}

// What every test asks of a certified result against a known optimum.
void check_against(const Schedule& got, const Schedule& opt, const std::string& what) {
  CHECK_MSG(got.feasible == opt.feasible || (!got.feasible && !got.exact), what << " feasibility");
  if (!opt.feasible || !got.feasible) return;
  const double eps = 1e-12 * opt.bottleneck_s;
  CHECK_MSG(got.lower_bound <= opt.bottleneck_s + eps, what << " bound " << got.lower_bound << " above optimum "
                                                            << opt.bottleneck_s);
  CHECK_MSG(got.bottleneck_s >= opt.bottleneck_s - eps, what << " plan below optimum");
  if (got.exact) CHECK_MSG(got.bottleneck_s <= opt.bottleneck_s + eps, what << " exact but " << got.bottleneck_s
                                                                          << " vs " << opt.bottleneck_s);
  CHECK_NEAR(got.gap, got.exact ? 0.0 : got.bottleneck_s / got.lower_bound - 1, 1e-12);
}

void brute_force_run(std::uint64_t seed, const testing::RandomSpec& spec, int count) {
  std::mt19937_64 rng(seed);
  int exact = 0;
  for (int n = 0; n < count; ++n) {
    Problem p = testing::random_problem(rng, spec);
    p.objective = Objective::Throughput;
    const Schedule want = testing::brute_force(p);
    const Schedule got = solve(p, beyond_limit(1.0));
    check_against(got, want, "instance " + std::to_string(n));
    CHECK_MSG(got.feasible == want.feasible, "instance " << n << " feasibility with time to spare");
    if (want.feasible) CHECK_MSG(got.exact, "instance " << n << " not exact with time to spare");
    exact += got.exact;
    check_against(solve(p, beyond_limit(0.0)), want, "instance " + std::to_string(n) + " (no time)");
  }
  CHECK(exact > count / 4);
}

}  // namespace

TEST_CASE(certified_matches_brute_force_distinct) { brute_force_run(21, {7, 5, false, false, false}, 300); }
TEST_CASE(certified_matches_brute_force_shared_types) { brute_force_run(22, {7, 5, false, false, true}, 300); }
TEST_CASE(certified_matches_brute_force_links_and_legs) { brute_force_run(23, {6, 5, true, true, true}, 300); }

// Against the exhaustive search: 8-14 distinct devices, and 18-22 devices in 3-5 types; one
// thread and two.
TEST_CASE(certified_bound_and_plan_match_the_exhaustive_search) {
  std::mt19937_64 rng(24);
  int exact = 0, cases = 0;
  for (std::size_t devices : {8, 11, 14, 18, 20, 22}) {
    for (int rep = 0; rep < 4; ++rep) {
      const std::size_t types = devices <= 14 ? devices : 3 + static_cast<std::size_t>(rep % 3);
      const Problem p = fleet(rng, 32 + 16 * static_cast<std::size_t>(rep), devices, types);
      const Schedule opt = solve(p);
      CHECK(opt.exact);
      const std::string what = std::to_string(devices) + " devices, rep " + std::to_string(rep);
      Options one = beyond_limit(2.0), two = beyond_limit(2.0);
      one.threads = 1;
      two.threads = 2;  // the second thread's rounds, whatever the instance size
      const Schedule got = solve(p, one);
      check_against(got, opt, what);
      CHECK_MSG(got.exact, what << " gap " << got.gap);
      const Schedule got2 = solve(p, two);
      check_against(got2, opt, what + " (two threads)");
      CHECK_MSG(got2.exact, what << " gap " << got2.gap << " (two threads)");
      check_against(solve(p, beyond_limit(0.0)), opt, what + " (no time)");
      check_against(solve(p, beyond_limit(0.01)), opt, what + " (10 ms)");
      exact += got.exact;
      ++cases;
    }
  }
  CHECK(exact == cases);
}

TEST_CASE(never_worse_than_the_baselines) {
  std::mt19937_64 rng(25);
  int compared = 0;
  for (int n = 0; n < 400; ++n) {
    testing::RandomSpec spec{12, 8, n % 2 == 0, n % 3 == 0, n % 4 == 0, n % 5 == 0};
    Problem p = n % 7 == 0 ? fleet(rng, 24, 6 + n % 10, 3 + n % 4) : testing::random_problem(rng, spec);
    const CostModel model(p);
    for (const Options& o : {Options{}, beyond_limit(0.0), beyond_limit(0.05)}) {
      const Schedule s = solve(p, o);
      for (const auto& plan : baseline_plans(model)) {
        const Schedule b = model.evaluate(plan);
        CHECK_MSG(s.feasible, "instance " << n << ": a baseline fits but no schedule was returned");
        if (!s.feasible) continue;
        const auto got = testing::key_of(s, p.objective);
        const auto base = testing::key_of(b, p.objective);
        CHECK_MSG(std::get<0>(got) <= std::get<0>(base) * (1 + 1e-12), "instance " << n << ": "
                  << std::get<0>(got) << " worse than a baseline's " << std::get<0>(base));
        ++compared;
      }
    }
  }
  CHECK(compared > 300);
}

TEST_CASE(baselines_cover_the_model_in_input_order) {
  Problem p = testing::uniform_problem(10, 3, 1, 100, 1e6);
  p.devices[1].mem_MB = 200;  // twice the memory: twice the layers in the memory split
  const CostModel model(p);
  const auto plans = baseline_plans(model);
  CHECK(plans.size() == 3);
  CHECK(plans[0][0].end == 4 && plans[0][1].end == 7 && plans[0][2].end == 10);  // even: 4, 3, 3
  CHECK(plans[1][0].end == 3 && plans[1][1].end == 8);                          // memory: 1:2:1
  for (const auto& plan : plans) CHECK(plan.size() == 3 && plan[1].device == 1);
}

// The LP certificates of a bisection share their relaxed schedules (ColumnPool). Every master
// rebuilt from the pooled schedules valid at a threshold must be a consistent LP answer (x on
// the original rows), and the pooled bisection must prove the same bound as fresh certificates.
// (A master seeded with ~250 pooled columns once came back "optimal" with sum x = 0.97, from
// pivots on elements ~1e-10; this is the check that caught it.)
TEST_CASE(pooled_certificates_prove_what_fresh_ones_prove) {
  std::mt19937_64 rng(26);
  for (int rep = 0; rep < 3; ++rep) {
    const Problem p = fleet(rng, 96, 40, 40);
    const CostModel model(p);
    const ClassInstance in = build_instance(model, exact_classes(model));
    const std::vector<double> values = stage_cost_values(in, relaxed_bottleneck(in));
    auto bisect = [&](ColumnPool* pool) {
      std::size_t a = first_with_capacity(in, values), b = values.size();
      while (a < b) {
        const std::size_t mid = a + (b - a) / 2;
        if (penalty_certificate(in, make_tables(in, values[mid]), 2000, Clock::time_point::max(), pool).proven) {
          a = mid + 1;
        } else {
          b = mid;
        }
      }
      return a;
    };
    ColumnPool pool;
    const std::size_t pooled = bisect(&pool), fresh = bisect(nullptr);
    CHECK_MSG(pooled == fresh, "rep " << rep << ": pooled bound " << values[pooled] << ", fresh " << values[fresh]);
    // The master over every pooled schedule valid at the bound: x must satisfy its rows.
    const std::size_t K = in.classes;
    std::vector<double> b(K + 1, 0.0), column(K + 1, 0.0);
    b[0] = 1;
    Simplex master(b);
    for (std::size_t k = 0; k < K; ++k) column[k + 1] = -static_cast<double>(in.count[k]);
    master.add_column(column, 1.0);
    for (std::size_t k = 0; k < K; ++k) {
      std::fill(column.begin(), column.end(), 0.0);
      column[k + 1] = 1;
      master.add_column(column, 0.0);
    }
    std::vector<const std::vector<double>*> used;
    for (const auto& c : pool.columns) {
      if (c.first > values[pooled]) continue;
      column[0] = 1;
      for (std::size_t k = 0; k < K; ++k) column[k + 1] = c.second[k];
      master.add_column(column, 0.0);
      used.push_back(&c.second);
    }
    if (master.solve() != Simplex::Status::Optimal) continue;  // Numerical: reported, not used
    const std::vector<double> x = master.primal();
    double sum = 0;
    std::vector<double> load(K, 0.0);
    for (std::size_t c = 0; c < used.size(); ++c) {
      sum += x[1 + K + c];
      for (std::size_t k = 0; k < K; ++k) load[k] += x[1 + K + c] * (*used[c])[k];
    }
    CHECK_NEAR(sum, 1.0, 1e-7);
    for (std::size_t k = 0; k < K; ++k) CHECK(load[k] <= x[0] * in.count[k] + 1e-7);
    CHECK_NEAR(master.objective(), x[0], 1e-9);
  }
}
