// Two-phase tableau simplex, stored by columns. The first `rows` columns are artificials: they
// start as the basis (the identity), so their tableau columns are B^-1 at every step, which is
// what a column added later needs (B^-1 a) and what the duals are read from. Dantzig's rule,
// Bland's after a run of degenerate pivots (these masters are very degenerate: most b_i are 0).
#include "simplex.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace pipeedge_sched {
namespace {

constexpr double kTol = 1e-10;       // reduced costs
constexpr double kPivotTol = 1e-9;   // smallest pivot element (smaller ones amplify round-off)
constexpr double kResidual = 1e-7;   // accepted |A x - b| of an answer
constexpr std::size_t kDegenerateRun = 30;

}  // namespace

Simplex::Simplex(std::vector<double> b) : rows_(b.size()), b_(b), rhs_(std::move(b)) {
  for (std::size_t r = 0; r < rows_; ++r) {
    std::vector<double> e(rows_, 0.0);
    e[r] = 1.0;
    orig_.push_back(e);
    cols_.push_back(std::move(e));
    cost_.push_back(0.0);
    basis_.push_back(r);
  }
}

std::size_t Simplex::add_column(const std::vector<double>& a, double cost) {
  orig_.push_back(a);
  std::vector<double> col(rows_, 0.0);
  for (std::size_t i = 0; i < rows_; ++i) {
    if (a[i] == 0) continue;
    for (std::size_t r = 0; r < rows_; ++r) col[r] += cols_[i][r] * a[i];
  }
  cols_.push_back(std::move(col));
  cost_.push_back(cost);
  return cols_.size() - 1 - rows_;
}

void Simplex::pivot(std::size_t row, std::size_t col) {
  const std::vector<double> p = cols_[col];
  const double inv = 1.0 / p[row];
  for (std::vector<double>& c : cols_) {
    const double f = c[row] * inv;
    if (f == 0) continue;
    for (std::size_t r = 0; r < rows_; ++r) c[r] -= p[r] * f;
    c[row] = f;
  }
  const double f = rhs_[row] * inv;
  for (std::size_t r = 0; r < rows_; ++r) rhs_[r] -= p[r] * f;
  rhs_[row] = f;
  for (std::size_t r = 0; r < rows_; ++r) {
    if (rhs_[r] < 0 && rhs_[r] > -1e-12) rhs_[r] = 0;  // round-off below zero
  }
  basis_[row] = col;
}

bool Simplex::run(const std::vector<double>& cost, std::size_t max_pivots, bool& unbounded) {
  const bool phase_two = phase_one_done_;
  std::vector<char> basic(cols_.size(), 0);
  for (std::size_t c : basis_) basic[c] = 1;
  std::size_t degenerate = 0;
  for (std::size_t it = 0; it < max_pivots; ++it) {
    const bool bland = degenerate >= kDegenerateRun;
    std::size_t enter = cols_.size();
    double best = -kTol;
    for (std::size_t j = phase_two ? rows_ : 0; j < cols_.size(); ++j) {
      if (basic[j]) continue;
      double d = cost[j];
      for (std::size_t r = 0; r < rows_; ++r) d -= cost[basis_[r]] * cols_[j][r];
      if (d < best) {
        enter = j;
        best = d;
        if (bland) break;
      }
    }
    if (enter == cols_.size()) return true;
    const std::vector<double>& c = cols_[enter];
    std::size_t leave = rows_;
    double ratio = std::numeric_limits<double>::infinity();
    for (std::size_t r = 0; r < rows_; ++r) {
      // A basic artificial at zero leaves on any nonzero entry (it must never turn positive).
      const bool artificial = phase_two && basis_[r] < rows_;
      if (artificial && std::fabs(c[r]) > kTol) {
        leave = r;
        ratio = 0;
        break;
      }
      if (c[r] <= kPivotTol) continue;
      const double q = rhs_[r] / c[r];
      // Ties: Bland's smallest index when cycling is a risk, else the larger pivot element.
      const bool tie_wins = leave < rows_ && (bland ? basis_[r] < basis_[leave] : c[r] > c[leave]);
      if (q < ratio - 1e-12 || (q <= ratio + 1e-12 && tie_wins)) {
        ratio = q;
        leave = r;
      }
    }
    if (leave == rows_) {
      unbounded = true;
      return false;
    }
    degenerate = ratio <= 1e-12 ? degenerate + 1 : 0;
    basic[basis_[leave]] = 0;
    basic[enter] = 1;
    pivot(leave, enter);
  }
  return false;
}

Simplex::Status Simplex::solve(std::size_t max_pivots) {
  bool unbounded = false;
  if (!phase_one_done_) {
    std::vector<double> phase1(cols_.size(), 0.0);
    for (std::size_t r = 0; r < rows_; ++r) phase1[r] = 1.0;
    if (!run(phase1, max_pivots, unbounded)) return Status::IterationLimit;
    for (std::size_t r = 0; r < rows_; ++r) {
      if (basis_[r] < rows_ && rhs_[r] > 1e-9) return Status::Infeasible;
    }
    phase_one_done_ = true;
  }
  if (!run(cost_, max_pivots, unbounded)) return unbounded ? Status::Unbounded : Status::IterationLimit;
  return consistent() ? Status::Optimal : Status::Numerical;
}

bool Simplex::consistent() const {
  // The basic solution must satisfy the original rows: tableau round-off can drift from them.
  std::vector<double> residual = b_;
  double scale = 1;
  for (double x : b_) scale = std::max(scale, std::fabs(x));
  for (std::size_t r = 0; r < rows_; ++r) {
    const std::size_t j = basis_[r];
    if (rhs_[r] < -kResidual * scale || (j < rows_ && rhs_[r] > kResidual * scale)) return false;
    for (std::size_t i = 0; i < rows_; ++i) residual[i] -= orig_[j][i] * rhs_[r];
  }
  for (double x : residual) {
    if (std::fabs(x) > kResidual * scale) return false;
  }
  return true;
}

double Simplex::objective() const {
  double z = 0;
  for (std::size_t r = 0; r < rows_; ++r) z += cost_[basis_[r]] * rhs_[r];
  return z;
}

std::vector<double> Simplex::duals() const {
  std::vector<double> y(rows_, 0.0);
  for (std::size_t i = 0; i < rows_; ++i) {
    for (std::size_t r = 0; r < rows_; ++r) y[i] += cost_[basis_[r]] * cols_[i][r];
  }
  return y;
}

std::vector<double> Simplex::primal() const {
  std::vector<double> x(cols_.size() - rows_, 0.0);
  for (std::size_t r = 0; r < rows_; ++r) {
    if (basis_[r] >= rows_) x[basis_[r] - rows_] = rhs_[r];
  }
  return x;
}

}  // namespace pipeedge_sched
