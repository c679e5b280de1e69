// Both relaxations are forward DPs over positions; a hand-over at cut i first reduces over the
// previous class u, then spreads over the next stage's ends j.
#include "relaxation.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace pipeedge_sched {
namespace {
constexpr double kInf = std::numeric_limits<double>::infinity();
}

double relaxed_bottleneck(const ClassInstance& in) {
  const std::size_t L = in.layers, K = in.classes;
  std::vector<double> best((L + 1) * K, kInf);  // [j * K + v]
  auto spread = [&](std::size_t v, std::size_t i, double base) {
    bits::for_each(in.fits(v, i), in.words, [&](std::size_t b) {
      double& cell = best[(b + 1) * K + v];
      cell = std::min(cell, std::max(base, in.stage_s(v, i, b + 1)));
    });
  };
  for (std::size_t v = 0; v < K; ++v) {
    if (in.count[v]) spread(v, 0, in.input_s[v]);
  }
  for (std::size_t i = 1; i < L; ++i) {
    for (std::size_t v = 0; v < K; ++v) {
      double base = kInf;
      for (std::size_t u = 0; u < K; ++u) {
        if (in.pair_allowed(u, v)) base = std::min(base, std::max(best[i * K + u], in.transfer_s(u, v, i)));
      }
      if (base < kInf) spread(v, i, base);
    }
  }
  double out = kInf;
  for (std::size_t u = 0; u < K; ++u) out = std::min(out, std::max(best[L * K + u], in.output_s[u]));
  return out;
}

namespace {

struct Penalized {
  double value = kInf;               // least penalised latency
  std::vector<double> uses;          // per class, on one argmin path
  std::vector<PathStep> path;        // that path
};

// Least latency + sum of penalty[k] per use of class k, over schedules with > stages stages.
Penalized penalized_latency(const ClassInstance& in, const ThresholdTables& t, std::size_t stages,
                            const std::vector<double>& penalty) {
  // Bucket c counts stages, saturating: bucket C - 1 = stages + 1 holds every "> stages".
  const std::size_t L = in.layers, K = in.classes, C = stages + 2;
  struct Cell {
    double value = kInf;
    std::size_t from = static_cast<std::size_t>(-1);  // previous cell index
  };
  std::vector<Cell> best((L + 1) * K * C);  // [(j * K + v) * C + c]
  auto cell = [&](std::size_t j, std::size_t v, std::size_t c) { return (j * K + v) * C + c; };
  auto spread = [&](std::size_t v, std::size_t i, std::size_t c, double base, std::size_t from) {
    bits::for_each(t.stages_from(in, v, i), in.words, [&](std::size_t b) {
      Cell& x = best[cell(b + 1, v, c)];
      const double value = base + in.stage_s(v, i, b + 1) + penalty[v];
      if (value < x.value) x = Cell{value, from};
    });
  };
  for (std::size_t v = 0; v < K; ++v) {
    if (in.count[v] && t.start_ok[v]) spread(v, 0, 1, in.input_s[v] + in.input_latency_s[v], static_cast<std::size_t>(-1));
  }
  for (std::size_t i = 1; i < L; ++i) {
    for (std::size_t v = 0; v < K; ++v) {
      for (std::size_t c = 1; c < C; ++c) {
        const std::size_t next = std::min(c + 1, C - 1);
        double base = kInf;
        std::size_t from = 0;
        for (std::size_t u = 0; u < K; ++u) {
          if (!t.pair_ok[u * K + v] || !bits::test(t.cuts(in, u, v), i - 1)) continue;
          const double value = best[cell(i, u, c)].value + in.transfer_s(u, v, i) + in.link_latency_s(u, v);
          if (value < base) {
            base = value;
            from = cell(i, u, c);
          }
        }
        if (base < kInf) spread(v, i, next, base, from);
      }
    }
  }
  Penalized out;
  out.uses.assign(K, 0.0);
  std::size_t at = static_cast<std::size_t>(-1);
  for (std::size_t u = 0; u < K; ++u) {
    if (!t.end_ok[u]) continue;
    const double value = best[cell(L, u, C - 1)].value + in.output_s[u] + in.output_latency_s[u];
    if (value < out.value) {
      out.value = value;
      at = cell(L, u, C - 1);
    }
  }
  for (; at != static_cast<std::size_t>(-1); at = best[at].from) {
    out.uses[(at / C) % K] += 1;
    out.path.push_back(PathStep{(at / C) % K, at / C / K});
  }
  std::reverse(out.path.begin(), out.path.end());
  return out;
}

}  // namespace

namespace {

LatencyPenalties ascend(const ClassInstance& in, const ThresholdTables& t, std::size_t stages, double target,
                        int iterations) {
  const std::size_t K = in.classes;
  LatencyPenalties out;
  out.bound = -kInf;
  out.penalty.assign(K, 0.0);
  std::size_t devices = 0;
  for (std::uint32_t c : in.count) devices += c;
  if (stages >= devices) {
    out.bound = kInf;
    return out;
  }
  // For any schedule P using each class k at most count_k times and penalties p >= 0:
  // latency(P) >= penalised(P) - sum_k p_k count_k >= min penalised - sum_k p_k count_k.
  std::vector<double> penalty(K, 0.0);
  double scale = 2.0;
  int stall = 0;
  for (int it = 0; it <= iterations; ++it) {
    const Penalized r = penalized_latency(in, t, stages, penalty);
    if (!std::isfinite(r.value)) {  // no such schedule even with reuse
      out.bound = kInf;
      return out;
    }
    double value = r.value, norm = 0, latency = r.value;
    bool within_counts = true;
    for (std::size_t k = 0; k < K; ++k) {
      value -= penalty[k] * in.count[k];
      latency -= penalty[k] * r.uses[k];
      const double g = r.uses[k] - in.count[k];
      if (g > 0 || penalty[k] > 0) norm += g * g;
      within_counts = within_counts && g <= 0;
    }
    if (within_counts && (out.schedule.empty() || latency < out.schedule_latency)) {
      out.schedule = r.path;
      out.schedule_latency = latency;
      target = std::min(target, latency);
    }
    // Rounding slack: the bound must stay below every true latency.
    const double bound = value - 1e-9 * std::fabs(value) - 1e-12;
    if (bound > out.bound) {
      out.bound = bound;
      out.penalty = penalty;
      stall = 0;
    } else if (++stall >= 5) {
      scale /= 2;
      stall = 0;
    }
    if (out.bound > target || norm == 0) break;  // proved, or the relaxed path is already feasible
    // Polyak step towards a known schedule's latency, or a guess 10% above the bound.
    const double aim = std::isfinite(target) ? target : out.bound + 0.1 * std::fabs(out.bound) + 1e-9;
    const double step = scale * std::max(aim - value, 1e-9 * std::fabs(aim) + 1e-12) / norm;
    for (std::size_t k = 0; k < K; ++k) penalty[k] = std::max(0.0, penalty[k] + step * (r.uses[k] - in.count[k]));
  }
  return out;
}

}  // namespace

double latency_bound_beyond(const ClassInstance& in, const ThresholdTables& t, std::size_t stages, double target,
                            int iterations) {
  return ascend(in, t, stages, target, iterations).bound;
}

LatencyPenalties latency_penalties(const ClassInstance& in, const ThresholdTables& t, double target, int iterations) {
  return ascend(in, t, 0, target, iterations);
}

std::vector<double> penalized_prefix_latency(const ClassInstance& in, const ThresholdTables& t,
                                             const std::vector<double>& penalty) {
  const std::size_t L = in.layers, K = in.classes;
  std::vector<double> best((L + 1) * K, kInf);
  auto spread = [&](std::size_t v, std::size_t i, double base) {
    bits::for_each(t.stages_from(in, v, i), in.words, [&](std::size_t b) {
      double& x = best[(b + 1) * K + v];
      x = std::min(x, base + in.stage_s(v, i, b + 1) + penalty[v]);
    });
  };
  for (std::size_t v = 0; v < K; ++v) {
    if (in.count[v] && t.start_ok[v]) spread(v, 0, in.input_s[v] + in.input_latency_s[v]);
  }
  for (std::size_t i = 1; i < L; ++i) {
    for (std::size_t v = 0; v < K; ++v) {
      double base = kInf;
      for (std::size_t u = 0; u < K; ++u) {
        if (t.pair_ok[u * K + v] && bits::test(t.cuts(in, u, v), i - 1)) {
          base = std::min(base, best[i * K + u] + in.transfer_s(u, v, i) + in.link_latency_s(u, v));
        }
      }
      if (base < kInf) spread(v, i, base);
    }
  }
  return best;
}

std::vector<double> penalized_suffix_latency(const ClassInstance& in, const ThresholdTables& t,
                                             const std::vector<double>& penalty) {
  const std::size_t L = in.layers, K = in.classes;
  std::vector<double> best((L + 1) * K, kInf);
  for (std::size_t u = 0; u < K; ++u) {
    if (t.end_ok[u]) best[L * K + u] = in.output_s[u] + in.output_latency_s[u];
  }
  std::vector<double> stage(K);  // best from "v starts after i"
  for (std::size_t i = L; i-- > 1;) {
    for (std::size_t v = 0; v < K; ++v) {
      stage[v] = kInf;
      bits::for_each(t.stages_from(in, v, i), in.words, [&](std::size_t b) {
        stage[v] = std::min(stage[v], in.stage_s(v, i, b + 1) + penalty[v] + best[(b + 1) * K + v]);
      });
    }
    for (std::size_t u = 0; u < K; ++u) {
      for (std::size_t v = 0; v < K; ++v) {
        if (stage[v] < kInf && t.pair_ok[u * K + v] && bits::test(t.cuts(in, u, v), i - 1)) {
          best[i * K + u] = std::min(best[i * K + u], in.transfer_s(u, v, i) + in.link_latency_s(u, v) + stage[v]);
        }
      }
    }
  }
  return best;
}

}  // namespace pipeedge_sched
