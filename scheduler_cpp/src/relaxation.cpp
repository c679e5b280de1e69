// Both relaxations are forward DPs over positions; a hand-over at cut i first reduces over the
// previous class u, then spreads over the next stage's ends j.
#include "relaxation.hpp"

#include <algorithm>
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
      cell = std::min(cell, std::max(base, in.compute_s(v, i, b + 1)));
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

double relaxed_latency_beyond(const ClassInstance& in, const ThresholdTables& t, std::size_t stages) {
  // Bucket c counts stages, saturating: bucket C - 1 = stages + 1 holds every "> stages".
  const std::size_t L = in.layers, K = in.classes, C = stages + 2;
  std::size_t devices = 0;
  for (std::uint32_t c : in.count) devices += c;
  if (stages >= devices) return kInf;
  std::vector<double> best((L + 1) * K * C, kInf);  // [(j * K + v) * C + c]
  auto spread = [&](std::size_t v, std::size_t i, std::size_t c, double base) {
    bits::for_each(t.stages_from(in, v, i), in.words, [&](std::size_t b) {
      double& cell = best[((b + 1) * K + v) * C + c];
      cell = std::min(cell, base + in.compute_s(v, i, b + 1));
    });
  };
  for (std::size_t v = 0; v < K; ++v) {
    if (in.count[v] && t.start_ok[v]) spread(v, 0, 1, in.input_s[v] + in.input_latency_s[v]);
  }
  std::vector<double> base(C);
  for (std::size_t i = 1; i < L; ++i) {
    for (std::size_t v = 0; v < K; ++v) {
      std::fill(base.begin(), base.end(), kInf);
      for (std::size_t u = 0; u < K; ++u) {
        if (!t.pair_ok[u * K + v] || !bits::test(t.cuts(in, u, v), i - 1)) continue;
        const double hop = in.transfer_s(u, v, i) + in.link_latency_s(u, v);
        for (std::size_t c = 0; c < C; ++c) {
          const std::size_t next = std::min(c + 1, C - 1);
          base[next] = std::min(base[next], best[(i * K + u) * C + c] + hop);
        }
      }
      for (std::size_t c = 0; c < C; ++c) {
        if (base[c] < kInf) spread(v, i, c, base[c]);
      }
    }
  }
  double out = kInf;
  for (std::size_t u = 0; u < K; ++u) {
    if (t.end_ok[u]) out = std::min(out, best[(L * K + u) * C + C - 1] + in.output_s[u] + in.output_latency_s[u]);
  }
  return out;
}

}  // namespace pipeedge_sched
