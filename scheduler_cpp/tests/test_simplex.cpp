// The restricted-master simplex against LPs solved by hand, a brute-force vertex enumeration,
// and itself warm-started vs. solved from scratch.
#include <cmath>
#include <random>

#include "check.hpp"
#include "simplex.hpp"

using namespace pipeedge_sched;

namespace {

// min c^T x, A x = b, x >= 0 with two rows: the least cost over every basis of two columns
// (a vertex), by Cramer's rule; +inf when no basis is feasible.
double brute_two_rows(const std::vector<std::vector<double>>& cols, const std::vector<double>& cost,
                      const std::vector<double>& b) {
  double best = INFINITY;
  for (std::size_t i = 0; i < cols.size(); ++i) {
    if (std::fabs(cols[i][1]) < 1e-12 && std::fabs(b[1]) < 1e-12 && cols[i][0] > 1e-12) {
      best = std::min(best, cost[i] * b[0] / cols[i][0]);  // one column alone (degenerate row)
    }
    for (std::size_t j = i + 1; j < cols.size(); ++j) {
      const double det = cols[i][0] * cols[j][1] - cols[j][0] * cols[i][1];
      if (std::fabs(det) < 1e-12) continue;
      const double xi = (b[0] * cols[j][1] - cols[j][0] * b[1]) / det;
      const double xj = (cols[i][0] * b[1] - b[0] * cols[i][1]) / det;
      if (xi < -1e-12 || xj < -1e-12) continue;
      best = std::min(best, cost[i] * xi + cost[j] * xj);
    }
  }
  return best;
}

}  // namespace

TEST_CASE(simplex_solves_a_textbook_lp_with_its_duals) {
  // min -x1 - x2  s.t.  x1 + 2 x2 + s1 = 4,  3 x1 + x2 + s2 = 6.  Optimum x = (1.6, 1.2).
  Simplex lp({4, 6});
  lp.add_column({1, 3}, -1);
  lp.add_column({2, 1}, -1);
  lp.add_column({1, 0}, 0);
  lp.add_column({0, 1}, 0);
  CHECK(lp.solve() == Simplex::Status::Optimal);
  CHECK_NEAR(lp.objective(), -2.8, 1e-12);
  const std::vector<double> x = lp.primal();
  CHECK_NEAR(x[0], 1.6, 1e-12);
  CHECK_NEAR(x[1], 1.2, 1e-12);
  const std::vector<double> y = lp.duals();  // y^T A_j <= c_j, tight on the basis
  CHECK_NEAR(y[0], -0.4, 1e-12);
  CHECK_NEAR(y[1], -0.2, 1e-12);
}

TEST_CASE(simplex_reports_infeasible_and_unbounded) {
  Simplex infeasible({1, 2});  // x1 + x2 = 1 and x1 + x2 = 2
  infeasible.add_column({1, 1}, 0);
  infeasible.add_column({1, 1}, 0);
  CHECK(infeasible.solve() == Simplex::Status::Infeasible);
  Simplex unbounded({1});  // min -x2 s.t. x1 - x2 = 1
  unbounded.add_column({1}, 0);
  unbounded.add_column({-1}, -1);
  CHECK(unbounded.solve() == Simplex::Status::Unbounded);
}

TEST_CASE(simplex_matches_vertex_enumeration_warm_and_cold) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> u(-1, 2);
  int solved = 0;
  for (int n = 0; n < 300; ++n) {
    const std::vector<double> b = {std::fabs(u(rng)), n % 3 == 0 ? 0.0 : std::fabs(u(rng))};
    std::vector<std::vector<double>> cols;
    std::vector<double> cost;
    Simplex warm(b);
    const int k = 2 + n % 6;
    for (int j = 0; j < k; ++j) {
      cols.push_back({u(rng), u(rng)});
      cost.push_back(std::fabs(u(rng)));  // c >= 0: bounded below
      warm.add_column(cols.back(), cost.back());
      warm.solve();  // warm start: columns arrive one by one, as in column generation
    }
    Simplex cold(b);
    for (int j = 0; j < k; ++j) cold.add_column(cols[j], cost[j]);
    const Simplex::Status st = cold.solve();
    const double want = brute_two_rows(cols, cost, b);
    if (std::isinf(want)) {
      CHECK_MSG(st == Simplex::Status::Infeasible, "instance " << n);
      continue;
    }
    CHECK_MSG(st == Simplex::Status::Optimal, "instance " << n);
    CHECK_MSG(warm.solve() == Simplex::Status::Optimal, "instance " << n << " (warm)");
    CHECK_MSG(std::fabs(cold.objective() - want) <= 1e-9 * (1 + std::fabs(want)), "instance " << n << ": "
              << cold.objective() << " vs " << want);
    CHECK_MSG(std::fabs(warm.objective() - want) <= 1e-9 * (1 + std::fabs(want)), "instance " << n << " (warm): "
              << warm.objective() << " vs " << want);
    ++solved;
  }
  CHECK(solved > 100);
}

// Column-generation masters (min z: sum x_p = 1, sum_p x_p uses_pk <= z count_k) with many
// integer columns, warm-started one column at a time: every Optimal answer must carry its own
// proof, checked here on the original data: x feasible, y dual feasible (y^T A_j <= c_j) and
// c^T x == b^T y.
TEST_CASE(simplex_master_answers_are_primal_dual_optimal) {
  std::mt19937_64 rng(11);
  int proven = 0;
  for (int n = 0; n < 20; ++n) {
    const std::size_t K = 8 + static_cast<std::size_t>(n) * 3;
    std::uniform_int_distribution<int> uses(0, 6), count(1, 4);
    std::vector<double> b(K + 1, 0.0);
    b[0] = 1;
    Simplex lp(b);
    std::vector<std::vector<double>> cols;
    std::vector<double> cost;
    auto add = [&](std::vector<double> a, double c) {
      lp.add_column(a, c);
      cols.push_back(std::move(a));
      cost.push_back(c);
    };
    std::vector<double> a(K + 1, 0.0);
    for (std::size_t k = 0; k < K; ++k) a[k + 1] = -count(rng);
    add(a, 1.0);  // z
    for (std::size_t k = 0; k < K; ++k) {
      std::vector<double> s(K + 1, 0.0);
      s[k + 1] = 1;
      add(s, 0.0);  // slacks
    }
    for (int p = 0; p < 300; ++p) {
      std::vector<double> col(K + 1, 0.0);
      col[0] = 1;
      for (std::size_t k = 0; k < K; ++k) col[k + 1] = uses(rng) * (rng() % 3 == 0);
      add(col, 0.0);
      const Simplex::Status st = lp.solve();
      if (st != Simplex::Status::Optimal) {
        CHECK_MSG(st == Simplex::Status::Numerical, "master " << n << " column " << p << ": status " << int(st));
        continue;
      }
      const std::vector<double> x = lp.primal(), y = lp.duals();
      double primal = 0, dual = 0;
      std::vector<double> row(K + 1, 0.0);
      for (std::size_t j = 0; j < cols.size(); ++j) {
        CHECK(x[j] >= -1e-9);
        primal += cost[j] * x[j];
        double reduced = cost[j];
        for (std::size_t i = 0; i <= K; ++i) {
          row[i] += cols[j][i] * x[j];
          reduced -= y[i] * cols[j][i];
        }
        CHECK_MSG(reduced >= -1e-7, "master " << n << " column " << p << ": reduced cost " << reduced);
      }
      for (std::size_t i = 0; i <= K; ++i) {
        CHECK_MSG(std::fabs(row[i] - b[i]) <= 1e-7, "master " << n << " row " << i << ": " << row[i]);
        dual += y[i] * b[i];
      }
      CHECK_MSG(std::fabs(primal - dual) <= 1e-7 * (1 + std::fabs(primal)), "master " << n << ": " << primal
                << " vs " << dual);
      CHECK_NEAR(lp.objective(), primal, 1e-9);
      ++proven;
    }
  }
  CHECK(proven > 5000);
}
