// A small dense simplex for the restricted master LPs of column generation: min c^T x subject
// to A x = b, x >= 0, with few rows (one per device class, plus one) and columns added between
// solves. Kept dependency-free on purpose: its answers are only ever used as *candidate*
// multipliers, and every bound built on them is re-checked exactly by the caller's path DP, so
// round-off here can weaken a bound but never make it wrong.
#pragma once

#include <cstddef>
#include <vector>

namespace pipeedge_sched {

class Simplex {
 public:
  // b must be >= 0 (rows are not rescaled).
  explicit Simplex(std::vector<double> b);

  // Adds a column (one coefficient per row) with its cost; returns its index in primal().
  // Columns added after solve() keep the current basis (warm start).
  std::size_t add_column(const std::vector<double>& a, double cost);

  // Numerical: the final basis no longer satisfies A x = b within 1e-7 (round-off); the
  // answer is not to be used.
  enum class Status { Optimal, Infeasible, Unbounded, IterationLimit, Numerical };
  Status solve(std::size_t max_pivots = 5000);

  double objective() const;                 // c^T x at the current basis
  std::vector<double> duals() const;         // y = c_B^T B^-1, one per row
  std::vector<double> primal() const;        // x, one per column

 private:
  void pivot(std::size_t row, std::size_t col);
  bool consistent() const;
  bool run(const std::vector<double>& cost, std::size_t max_pivots, bool& unbounded);

  std::size_t rows_;
  std::vector<double> b_;                   // the original right-hand side
  std::vector<std::vector<double>> orig_;   // the original columns A_j (artificials first)
  std::vector<std::vector<double>> cols_;   // tableau columns B^-1 A_j (artificials first)
  std::vector<double> rhs_;                 // B^-1 b
  std::vector<double> cost_;                // per column (artificials: 0 in phase II)
  std::vector<std::size_t> basis_;          // column index per row
  bool phase_one_done_ = false;
};

}  // namespace pipeedge_sched
