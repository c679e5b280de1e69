// Exactness: the solver against enumeration of every assignment on small random instances,
// with shared device types, measured links, client legs and memory-infeasible cases.
#include <random>

#include "check.hpp"
#include "instances.hpp"
#include "pipeedge_sched/solver.hpp"

using namespace pipeedge_sched;

namespace {

// The solver's key must equal the brute-force optimum's, component by component.
void check_optimal(const Problem& p, const Schedule& got, const Schedule& want, int n) {
  CHECK_MSG(got.feasible == want.feasible, "instance " << n);
  if (!want.feasible) return;
  CHECK_MSG(got.exact, "instance " << n);
  const auto g = testing::key_of(got, p.objective);
  const auto w = testing::key_of(want, p.objective);
  CHECK_MSG(check::near(std::get<0>(g), std::get<0>(w), 1e-9), "instance " << n << " objective "
            << std::get<0>(g) << " vs " << std::get<0>(w));
  CHECK_MSG(check::near(std::get<1>(g), std::get<1>(w), 1e-9), "instance " << n << " tie-break "
            << std::get<1>(g) << " vs " << std::get<1>(w));
  CHECK_MSG(std::get<2>(g) == std::get<2>(w), "instance " << n << " stages");
}

void run(std::uint64_t seed, const testing::RandomSpec& spec, int count) {
  std::mt19937_64 rng(seed);
  int feasible = 0;
  for (int n = 0; n < count; ++n) {
    const Problem p = testing::random_problem(rng, spec);
    const Schedule want = testing::brute_force(p);
    check_optimal(p, solve(p), want, n);
    feasible += want.feasible;
  }
  CHECK_MSG(feasible > count / 4 && feasible < count, "feasible " << feasible << "/" << count);
}

}  // namespace

TEST_CASE(matches_brute_force_distinct_devices) { run(1, {7, 5, false, false, false}, 300); }
TEST_CASE(matches_brute_force_shared_types) { run(2, {7, 5, false, false, true}, 300); }
TEST_CASE(matches_brute_force_measured_links) { run(3, {6, 5, true, false, false}, 300); }
TEST_CASE(matches_brute_force_links_and_client_legs) { run(4, {6, 4, true, true, true}, 300); }
TEST_CASE(matches_brute_force_proportional_speeds) { run(5, {7, 5, true, false, false, true}, 300); }
