// Bisection over the sorted stage-cost values. At each threshold: first the penalty
// certificate (the LP bound by column generation; it proves nearly every infeasible threshold
// on all-distinct fleets), then a depth-first search over
// (position, last class, classes used) that finds a schedule or exhausts the space. The
// search prunes a state when
//  - its remaining devices cannot pay for the rest: the least relaxed penalties from the state
//    exceed the penalties of the devices still unused (valid for any lambda >= 0);
//  - the unused devices, each holding its largest allowed stage, cannot cover what is left;
//  - it is known to fail: a lossy table remembers exhausted states with the largest threshold
//    they failed at (a state that fails at T fails at every smaller T).
// Children are tried cheapest relaxed completion first, longer stages first on ties.
#include "certified.hpp"

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <map>
#include <mutex>
#include <thread>

#include "bottleneck.hpp"
#include "relaxation.hpp"
#include "simplex.hpp"

namespace pipeedge_sched {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kSlack = 1e-9;  // rounding slack on sums of penalties (total budget 1)
constexpr std::size_t kSeedColumns = 256;   // pooled schedules a certificate starts from
constexpr std::size_t kPoolColumns = 4096;  // pooled schedules kept

// R[j * K + v] for j = 1..L (penalties after a stage on v that ends at j); returns the least
// penalties of a whole relaxed schedule.
double suffix_penalties(const ClassInstance& in, const ThresholdTables& t, const std::vector<double>& lambda,
                        std::vector<double>& R) {
  const std::size_t L = in.layers, K = in.classes;
  R.assign((L + 1) * K, kInf);
  for (std::size_t v = 0; v < K; ++v) {
    if (t.end_ok[v]) R[L * K + v] = 0;
  }
  std::vector<double> stage(K);
  auto from = [&](std::size_t v, std::size_t i) {  // a stage on v starting after position i
    double best = kInf;
    bits::for_each(t.stages_from(in, v, i), in.words, [&](std::size_t b) { best = std::min(best, R[(b + 1) * K + v]); });
    return best + lambda[v];
  };
  for (std::size_t i = L; i-- > 1;) {
    for (std::size_t v = 0; v < K; ++v) stage[v] = from(v, i);
    // Each u takes the cheapest v it may hand over to: usually the cheapest or second cheapest
    // class overall (a class cannot follow itself when it has one member), O(K) per position;
    // the full scan only when neither is allowed.
    std::size_t v1 = K, v2 = K;
    for (std::size_t v = 0; v < K; ++v) {
      if (!std::isfinite(stage[v])) continue;
      if (v1 == K || stage[v] < stage[v1]) {
        v2 = v1;
        v1 = v;
      } else if (v2 == K || stage[v] < stage[v2]) {
        v2 = v;
      }
    }
    auto allowed = [&](std::size_t u, std::size_t v) {
      return t.pair_ok[u * K + v] && bits::test(t.cuts(in, u, v), i - 1);
    };
    for (std::size_t u = 0; u < K; ++u) {
      double best = kInf;
      if (v1 == K) {
        // no stage can start after position i
      } else if (allowed(u, v1)) {
        best = stage[v1];
      } else if (v2 != K && allowed(u, v2)) {
        best = stage[v2];  // every class but v1 costs at least as much
      } else {
        for (std::size_t v = 0; v < K; ++v) {
          if (stage[v] < best && allowed(u, v)) best = stage[v];
        }
      }
      R[i * K + u] = best;
    }
  }
  double start = kInf;
  for (std::size_t v = 0; v < K; ++v) {
    if (in.count[v] && t.start_ok[v]) start = std::min(start, from(v, 0));
  }
  return start;
}

// Class uses of one least-penalty relaxed schedule, and that schedule's bottleneck.
std::vector<double> relaxed_uses(const ClassInstance& in, const ThresholdTables& t, const std::vector<double>& lambda,
                                 const std::vector<double>& R, double* bottleneck = nullptr) {
  const std::size_t L = in.layers, K = in.classes;
  std::vector<double> uses(K, 0.0);
  std::size_t pos = 0, last = K;
  double worst = 0;
  while (pos < L) {
    double best = kInf;
    std::size_t bv = K, bj = 0;
    for (std::size_t v = 0; v < K; ++v) {
      if (pos == 0 ? !(in.count[v] && t.start_ok[v])
                   : !(t.pair_ok[last * K + v] && bits::test(t.cuts(in, last, v), pos - 1))) {
        continue;
      }
      bits::for_each(t.stages_from(in, v, pos), in.words, [&](std::size_t b) {
        const double x = lambda[v] + R[(b + 1) * K + v];
        if (x < best || (x == best && b + 1 > bj)) {
          best = x;
          bv = v;
          bj = b + 1;
        }
      });
    }
    if (bv == K) break;  // cannot happen when the start value is finite
    uses[bv] += 1;
    worst = std::max({worst, in.stage_s(bv, pos, bj), pos == 0 ? in.input_s[bv] : in.transfer_s(last, bv, pos)});
    if (bj == L) worst = std::max(worst, in.output_s[bv]);
    pos = bj;
    last = bv;
  }
  if (bottleneck) *bottleneck = worst;
  return uses;
}

// Exhausted states: (classes used, position and last class) -> largest threshold level at
// which the state was shown to have no completion. Direct-mapped, two slots per hash; a
// collision just forgets an entry.
class FailMemo {
 public:
  explicit FailMemo(std::size_t log2_slots) : slots_(std::size_t{1} << log2_slots), mask_(slots_.size() - 1) {}
  bool failed(std::uint64_t used, std::uint32_t node, std::uint32_t level) const {
    const std::size_t h = hash(used, node);
    for (std::size_t k = 0; k < 2; ++k) {
      const Slot& s = slots_[(h + k) & mask_];
      if (s.node == node + 1 && s.used == used) return s.level >= level;
    }
    return false;
  }
  void add(std::uint64_t used, std::uint32_t node, std::uint32_t level) {
    const std::size_t h = hash(used, node);
    Slot* target = &slots_[h & mask_];
    for (std::size_t k = 0; k < 2; ++k) {
      Slot& s = slots_[(h + k) & mask_];
      if ((s.node == node + 1 && s.used == used) || s.node == 0) {
        target = &s;
        break;
      }
    }
    if (target->node == node + 1 && target->used == used && target->level >= level) return;
    *target = Slot{used, node + 1, level};
  }

 private:
  struct Slot {
    std::uint64_t used = 0;
    std::uint32_t node = 0;  // position * K + last class, + 1 (0: empty)
    std::uint32_t level = 0;
  };
  static std::size_t hash(std::uint64_t used, std::uint32_t node) {
    std::uint64_t x = used * 0x9E3779B97F4A7C15ULL ^ (std::uint64_t{node} * 0xC2B2AE3D27D4EB4FULL);
    x ^= x >> 29;
    x *= 0xBF58476D1CE4E5B9ULL;
    return static_cast<std::size_t>(x ^ (x >> 32));
  }
  std::vector<Slot> slots_;
  std::size_t mask_;
};

// Multiplicative-weights ascent on the penalties (best-response paths push up the penalty of
// the classes they overuse). Its penalties stay positive and smooth, which makes them a good
// guide for the depth-first search's child order (the LP's optimal duals are sparse: many
// zeros, many ties); they prune too. Stops when proven, when the averaged relaxed paths
// respect the counts, after `iterations` or at `stop`.
PenaltyCertificate guide_penalties(const ClassInstance& in, const ThresholdTables& t, int iterations,
                                   Clock::time_point stop) {
  const std::size_t K = in.classes;
  PenaltyCertificate best;
  double best_margin = -kInf;
  std::vector<double> w(K, 1.0), lambda(K), R, load_sum(K, 0.0);
  for (int it = 0; it < iterations && (it == 0 || Clock::now() < stop); ++it) {
    double total = 0;
    for (std::size_t k = 0; k < K; ++k) total += w[k];
    double budget = 0;
    for (std::size_t k = 0; k < K; ++k) {
      lambda[k] = in.count[k] ? w[k] / total / in.count[k] : 0.0;
      budget += lambda[k] * in.count[k];
    }
    const double relaxed = suffix_penalties(in, t, lambda, R);
    if (it == 0 || relaxed - budget > best_margin) {
      best_margin = relaxed - budget;
      best.relaxed = relaxed;
      best.lambda = lambda;
      best.suffix = R;
    }
    if (!std::isfinite(relaxed) || relaxed > budget + kSlack * (1 + budget)) {
      best.proven = true;
      return best;
    }
    const std::vector<double> uses = relaxed_uses(in, t, lambda, R);
    double peak = 0, avg_peak = 0;
    for (std::size_t k = 0; k < K; ++k) {
      const double load = in.count[k] ? uses[k] / in.count[k] : 0.0;
      peak = std::max(peak, load);
      load_sum[k] += load;
      avg_peak = std::max(avg_peak, load_sum[k] / (it + 1));
    }
    // The averaged paths are a fractional schedule within the counts: no penalty can prove T.
    if (avg_peak <= 1.0 && it >= 4) break;
    // Small, slowly decaying steps: larger ones oscillate and prove far less (measured).
    const double eta = 0.1 / std::max(1.0, peak) / std::sqrt(1.0 + it / 8.0);
    double top = 0;
    for (std::size_t k = 0; k < K; ++k) {
      w[k] *= std::exp(eta * (in.count[k] ? uses[k] / in.count[k] : 0.0));
      top = std::max(top, w[k]);
    }
    for (double& x : w) x = std::max(x / top, 1e-12);
  }
  return best;
}

enum class Outcome { Found, Infeasible, Stopped };

class ThresholdSearch {
 public:
  // `guide` orders the children (and prunes); `lp`, the LP's penalties, prunes as well.
  ThresholdSearch(const ClassInstance& in, const ThresholdTables& t, const PenaltyCertificate& guide,
                  const PenaltyCertificate& lp, FailMemo* memo, std::uint32_t level, Clock::time_point stop)
      : in_(in), t_(t), lambda_(guide.lambda), R_(guide.suffix), lp_lambda_(lp.lambda), lp_R_(lp.suffix),
        memo_(memo), level_(level), stop_(stop) {
    const std::size_t K = in.classes;
    used_.assign(K, 0);
    unit_.assign(K, 0);
    std::size_t bits = 0;
    for (std::size_t k = 0; k < K; ++k) {
      std::size_t width = 1;
      while ((std::uint64_t{1} << width) <= in.count[k]) ++width;
      if (bits + width > 64) {
        memo_ = nullptr;  // the used counts do not fit one key
        break;
      }
      unit_[k] = std::uint64_t{1} << bits;
      bits += width;
    }
    for (std::size_t k = 0; k < K; ++k) {
      budget_ += lambda_[k] * in.count[k];
      lp_budget_ += lp_lambda_[k] * in.count[k];
      span_ += in.count[k] * t.max_span[k];
      work_ += in.count[k] * t.max_work[k];
      weight_ += in.count[k] * t.max_weight[k];
    }
  }

  Outcome run(std::vector<PathStep>& path) {
    path_.clear();
    const Outcome o = visit(0, in_.classes, 0);
    if (o == Outcome::Found) path = path_;
    return o;
  }
  std::uint64_t nodes() const { return nodes_; }

 private:
  struct Child {
    double score;
    std::size_t end;
    std::size_t cls;
  };

  Outcome visit(std::size_t pos, std::size_t last, std::uint64_t key) {
    if ((++nodes_ & 1023) == 0 && Clock::now() > stop_) stopped_ = true;
    if (stopped_) return Outcome::Stopped;
    const std::size_t L = in_.layers, K = in_.classes;
    const double eps = kSlack * (1 + budget_), lp_eps = kSlack * (1 + lp_budget_);
    std::vector<Child> children;
    for (std::size_t v = 0; v < K; ++v) {
      if (used_[v] >= in_.count[v]) continue;
      if (pos == 0 ? !t_.start_ok[v] : !(t_.pair_ok[last * K + v] && bits::test(t_.cuts(in_, last, v), pos - 1))) {
        continue;
      }
      const double budget = budget_ - lambda_[v], lp_budget = lp_budget_ - lp_lambda_[v];
      const double span = static_cast<double>(span_ - t_.max_span[v]);
      const double work = work_ - t_.max_work[v], weight = weight_ - t_.max_weight[v];
      bool done = false;
      bits::for_each(t_.stages_from(in_, v, pos), in_.words, [&](std::size_t b) {
        const std::size_t j = b + 1;
        if (done) return;
        if (j == L) {
          if (t_.end_ok[v]) {
            path_.push_back(PathStep{v, L});
            done = true;
          }
          return;
        }
        const double r = R_[j * K + v];
        if (r > budget + eps || lp_R_[j * K + v] > lp_budget + lp_eps) return;
        if (static_cast<double>(L - j) > span || in_.work_suffix[j] > work || in_.weight_suffix[j] > weight) return;
        if (memo_ && memo_->failed(key + unit_[v], static_cast<std::uint32_t>(j * K + v), level_)) return;
        children.push_back(Child{lambda_[v] + r, j, v});
      });
      if (done) return Outcome::Found;
    }
    std::sort(children.begin(), children.end(), [](const Child& a, const Child& b) {
      return a.score < b.score || (a.score == b.score && a.end > b.end);
    });
    for (const Child& c : children) {
      const std::size_t v = c.cls;
      ++used_[v];
      budget_ -= lambda_[v];
      lp_budget_ -= lp_lambda_[v];
      span_ -= t_.max_span[v];
      work_ -= t_.max_work[v];
      weight_ -= t_.max_weight[v];
      path_.push_back(PathStep{v, c.end});
      const Outcome o = visit(c.end, v, key + unit_[v]);
      if (o == Outcome::Found) return o;
      path_.pop_back();
      --used_[v];
      budget_ += lambda_[v];
      lp_budget_ += lp_lambda_[v];
      span_ += t_.max_span[v];
      work_ += t_.max_work[v];
      weight_ += t_.max_weight[v];
      if (o == Outcome::Stopped) return o;
      if (memo_) memo_->add(key + unit_[v], static_cast<std::uint32_t>(c.end * K + v), level_);
    }
    return Outcome::Infeasible;
  }

  const ClassInstance& in_;
  const ThresholdTables& t_;
  const std::vector<double>& lambda_;
  const std::vector<double>& R_;
  const std::vector<double>& lp_lambda_;
  const std::vector<double>& lp_R_;
  FailMemo* memo_;
  std::uint32_t level_;
  Clock::time_point stop_;
  std::vector<std::uint32_t> used_;
  std::vector<std::uint64_t> unit_;  // key increment per class
  double budget_ = 0;                // penalties of the unused devices
  double lp_budget_ = 0;             // the same under the LP's penalties
  std::size_t span_ = 0;             // capacity of the unused devices
  double work_ = 0, weight_ = 0;
  std::vector<PathStep> path_;
  std::uint64_t nodes_ = 0;
  bool stopped_ = false;
};

// Runs a() here and b() on a second thread (exceptions from b are rethrown here).
template <class A, class B>
void both(A&& a, B&& b) {
  std::exception_ptr failed;
  std::thread other([&] {
    try {
      b();
    } catch (...) {
      failed = std::current_exception();
    }
  });
  try {
    a();
  } catch (...) {
    other.join();
    throw;
  }
  other.join();
  if (failed) std::rethrow_exception(failed);
}

double seconds_left(Clock::time_point deadline) {
  return std::chrono::duration<double>(deadline - Clock::now()).count();
}

}  // namespace

PenaltyCertificate penalty_certificate(const ClassInstance& in, const ThresholdTables& t, int iterations,
                                       Clock::time_point stop, ColumnPool* pool) {
  const std::size_t K = in.classes;
  PenaltyCertificate best;
  double best_margin = -kInf;
  // Master LP over the relaxed paths generated so far: min z subject to sum_p x_p = 1 and, per
  // class k, sum_p x_p uses_pk <= z count_k. Its duals on the class rows are the penalties; the
  // path DP prices them (the least-penalty relaxed path is the next column).
  std::vector<double> b(K + 1, 0.0), column(K + 1, 0.0);
  b[0] = 1;
  Simplex master(b);
  for (std::size_t k = 0; k < K; ++k) column[k + 1] = -static_cast<double>(in.count[k]);
  master.add_column(column, 1.0);  // z
  for (std::size_t k = 0; k < K; ++k) {
    std::fill(column.begin(), column.end(), 0.0);
    column[k + 1] = 1;
    master.add_column(column, 0.0);  // slack of class k's row
  }
  std::vector<double> lambda(K), R;
  for (std::size_t k = 0; k < K; ++k) lambda[k] = in.count[k] ? 1.0 / static_cast<double>(K * in.count[k]) : 0.0;
  std::size_t seeded = 0;
  if (pool) {  // the latest pooled schedules valid at T, and the master's duals over them
    {
      const std::lock_guard<std::mutex> hold(pool->lock);
      for (auto it = pool->columns.rbegin(); it != pool->columns.rend() && seeded < kSeedColumns; ++it) {
        if (it->first > t.threshold) continue;
        column[0] = 1;
        for (std::size_t k = 0; k < K; ++k) column[k + 1] = it->second[k];
        master.add_column(column, 0.0);
        ++seeded;
      }
    }
    if (seeded) {
      if (master.solve() != Simplex::Status::Optimal) return penalty_certificate(in, t, iterations, stop, nullptr);
      const std::vector<double> y = master.duals();
      for (std::size_t k = 0; k < K; ++k) lambda[k] = std::max(0.0, -y[k + 1]);
    }
  }
  std::vector<std::pair<double, std::vector<double>>> generated;
  auto share = [&] {
    if (!pool || generated.empty()) return;
    const std::lock_guard<std::mutex> hold(pool->lock);
    for (auto& g : generated) pool->columns.push_back(std::move(g));
    if (pool->columns.size() > kPoolColumns) {
      pool->columns.erase(pool->columns.begin(),
                          pool->columns.begin() + static_cast<std::ptrdiff_t>(pool->columns.size() - kPoolColumns));
    }
  };
  for (int it = 0; it < iterations && (it == 0 || Clock::now() < stop); ++it) {
    double budget = 0;
    for (std::size_t k = 0; k < K; ++k) budget += lambda[k] * in.count[k];
    if (!(budget > 0)) break;
    for (double& x : lambda) x /= budget;  // sum lambda_k count_k = 1
    const double relaxed = suffix_penalties(in, t, lambda, R);
    if (it == 0 || relaxed - 1 > best_margin) {
      best_margin = relaxed - 1;
      best.relaxed = relaxed;
      best.lambda = lambda;
      best.suffix = R;
    }
    if (!std::isfinite(relaxed) || relaxed > 1 + 2 * kSlack) {
      best.proven = true;
      share();
      return best;
    }
    double own = 0;
    std::vector<double> uses = relaxed_uses(in, t, lambda, R, &own);
    column[0] = 1;
    for (std::size_t k = 0; k < K; ++k) column[k + 1] = uses[k];
    master.add_column(column, 0.0);
    generated.emplace_back(own, std::move(uses));
    if (master.solve() != Simplex::Status::Optimal) {
      // Round-off in a master grown from many pooled columns: start over from this threshold's
      // own columns (the pool is only a speed-up).
      if (seeded) return penalty_certificate(in, t, iterations, stop, nullptr);
      break;
    }
    // A fractional schedule of generated paths within the counts: no penalty can prove T.
    if (master.objective() <= 1 + 1e-9) break;
    const std::vector<double> y = master.duals();
    for (std::size_t k = 0; k < K; ++k) lambda[k] = std::max(0.0, -y[k + 1]);
  }
  share();
  return best;
}

double path_bottleneck(const ClassInstance& in, const std::vector<PathStep>& path) {
  double worst = in.input_s[path.front().cls];
  std::size_t begin = 0;
  for (std::size_t k = 0; k < path.size(); ++k) {
    const std::size_t v = path[k].cls;
    worst = std::max(worst, in.stage_s(v, begin, path[k].end));
    worst = std::max(worst, k + 1 < path.size() ? in.transfer_s(v, path[k + 1].cls, path[k].end) : in.output_s[v]);
    begin = path[k].end;
  }
  return worst;
}

CertifiedResult certified_bottleneck(const ClassInstance& in, double incumbent, Clock::time_point deadline,
                                     bool two_threads) {
  CertifiedResult res;
  const double relaxed = relaxed_bottleneck(in);
  if (!std::isfinite(relaxed)) {
    res.infeasible = true;
    return res;
  }
  const std::vector<double> values = stage_cost_values(in, relaxed);
  std::size_t lo = first_with_capacity(in, values);  // values[lo] is a proven bound
  std::size_t hi = values.size();                    // values[hi]: best schedule known
  if (std::isfinite(incumbent)) {
    hi = static_cast<std::size_t>(std::upper_bound(values.begin(), values.end(), incumbent * (1 + 1e-12)) -
                                  values.begin());
    hi = std::max(hi, std::size_t{1}) - 1;
    hi = std::max(hi, lo);
  }
  if (lo == values.size()) {
    res.infeasible = !std::isfinite(incumbent);
    res.lower_bound = std::isfinite(incumbent) ? incumbent : 0;
    return res;
  }
  // Unproven certificates by value index: phase 2 would recompute the same ones.
  std::mutex lock;
  std::map<std::size_t, PenaltyCertificate> unproven;
  ColumnPool pool;
  // Phase 1 takes at most half the time: the search needs the rest to find schedules.
  const auto phase1_stop = Clock::now() + (deadline - Clock::now()) / 2;
  auto prove = [&](std::size_t idx) {
    PenaltyCertificate cert = penalty_certificate(in, make_tables(in, values[idx]), 2000, phase1_stop, &pool);
    const std::lock_guard<std::mutex> hold(lock);
    ++res.checks;
    if (cert.proven) return true;
    unproven.emplace(idx, std::move(cert));
    return false;
  };
  // Phase 1: the LP certificates alone raise the bound (tens of milliseconds each). With two
  // cores, two thresholds per round (the thirds of the bracket).
  const bool two = two_threads;
  for (std::size_t a = lo, b = hi; a < b && seconds_left(phase1_stop) > 0; lo = a) {
    if (two && b - a >= 3) {
      const std::size_t p1 = a + (b - a) / 3, p2 = a + 2 * (b - a) / 3;
      bool r1 = false, r2 = false;
      both([&] { r1 = prove(p1); }, [&] { r2 = prove(p2); });
      if (r2) {
        a = p2 + 1;  // infeasible at p2: at every smaller value too
      } else if (r1) {
        a = p1 + 1;
        b = p2;
      } else {
        b = p1;
      }
    } else {
      const std::size_t mid = a + (b - a) / 2;
      if (prove(mid)) {
        a = mid + 1;
      } else {
        b = mid;
      }
    }
  }
  // Phase 2: the depth-first search decides the rest, as far as time allows. A pass bisects
  // [lo, hi) giving each threshold its share of the time left; thresholds it could not
  // decide are tried again by the next pass, which has fewer left and more time for each.
  // With two cores the second one decides the middle of the upper half at the same time.
  FailMemo memo[2] = {FailMemo(20), FailMemo(two ? 20 : 0)};
  auto decide = [&](std::size_t mid, double seconds, FailMemo& own) {
    const ThresholdTables t = make_tables(in, values[mid]);
    PenaltyCertificate cert;
    {
      const std::lock_guard<std::mutex> hold(lock);
      const auto it = unproven.find(mid);
      if (it != unproven.end()) cert = it->second;
    }
    if (cert.lambda.empty()) {
      cert = penalty_certificate(in, t, 2000, deadline, &pool);
      if (cert.proven) return Outcome::Infeasible;
    }
    const PenaltyCertificate guide = guide_penalties(in, t, 300, deadline);
    if (guide.proven) return Outcome::Infeasible;
    const auto stop = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
    ThresholdSearch search(in, t, guide, cert, &own, static_cast<std::uint32_t>(mid), std::min(stop, deadline));
    std::vector<PathStep> path;
    const Outcome o = search.run(path);
    const std::lock_guard<std::mutex> hold(lock);
    ++res.checks;
    res.nodes += search.nodes();
    if (o == Outcome::Found) {
      const double value = path_bottleneck(in, path);
      if (!res.found || value < res.bottleneck) {
        res.found = true;
        res.path = path;
        res.bottleneck = value;
      }
      const auto at = static_cast<std::size_t>(std::lower_bound(values.begin(), values.end(), value) - values.begin());
      hi = std::min({hi, at, mid});
    }
    return o;
  };
  while (lo < hi && seconds_left(deadline) > 0) {
    for (std::size_t a = lo; a < hi && seconds_left(deadline) > 0;) {
      const std::size_t mid = a + (hi - a) / 2;
      const double share = seconds_left(deadline) / (std::log2(static_cast<double>(hi - a)) + 1);
      Outcome o = Outcome::Stopped, o2 = Outcome::Stopped;
      if (two && hi - mid >= 2) {
        const std::size_t mid2 = mid + 1 + (hi - mid - 1) / 2;
        both([&] { o = decide(mid, share, memo[0]); }, [&] { o2 = decide(mid2, share, memo[1]); });
        if (o2 == Outcome::Infeasible) lo = std::max(lo, mid2 + 1);
      } else {
        o = decide(mid, share, memo[0]);
      }
      if (o == Outcome::Infeasible) lo = std::max(lo, mid + 1);
      if (o != Outcome::Found) a = mid + 1;  // undecided: look higher for schedules, the bound stays
      a = std::max(a, lo);
    }
  }
  if (lo >= values.size()) {  // every value refuted: nothing fits at all
    res.infeasible = !std::isfinite(incumbent);
    res.lower_bound = std::isfinite(incumbent) ? incumbent : 0;
    return res;
  }
  res.lower_bound = values[lo];
  return res;
}

}  // namespace pipeedge_sched
