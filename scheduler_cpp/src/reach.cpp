// The two bitset sweeps. Per (m, target class v): A = OR_u reach[m][u] & cuts[u][v] collects
// the cut positions v can start after, then v's allowed stages from each of them are ORed in.
#include "reach.hpp"

#include <algorithm>
#include <functional>

namespace pipeedge_sched {

void ReachSets::reset(const CountSpace& space, std::size_t K, std::size_t W) {
  const std::size_t block = K * W;
  if (classes != K || words != W || live.size() != space.size) {
    classes = K;
    words = W;
    sets.assign(space.size * block, 0);
    live.assign(space.size, 0);
    touched.clear();
    return;
  }
  for (std::uint64_t m : touched) {
    std::fill_n(sets.begin() + static_cast<std::ptrdiff_t>(m * block), block, 0);
    live[m] = 0;
  }
  touched.clear();
}

std::vector<std::uint64_t> ReachSets::sorted_live() const {
  std::vector<std::uint64_t> out = touched;
  std::sort(out.begin(), out.end());
  return out;
}

namespace {

// A = OR over used classes u of reach[m][u] & cuts[u][v]. Returns whether A is non-empty.
bool gather_cuts(const ClassInstance& in, const ThresholdTables& t, const ReachSets& reach, std::uint64_t m,
                 const std::vector<std::uint32_t>& used, std::size_t v, bits::Word* A) {
  const std::size_t K = in.classes, W = in.words;
  std::fill_n(A, W, 0);
  bits::Word seen = 0;
  for (std::size_t u = 0; u < K; ++u) {
    if (used[u] == 0 || !t.pair_ok[u * K + v]) continue;
    const bits::Word* r = reach.at(m, u);
    const bits::Word* x = t.cuts(in, u, v);
    for (std::size_t w = 0; w < W; ++w) {
      A[w] |= r[w] & x[w];
      seen |= A[w];
    }
  }
  return seen != 0;
}

}  // namespace

bool forward(const ClassInstance& in, const CountSpace& space, const ThresholdTables& t, std::size_t max_stages,
             bool stop_at_goal, ReachSets& reach) {
  const std::size_t K = in.classes, W = in.words, L = in.layers;
  reach.reset(space, K, W);
  for (std::size_t v = 0; v < K; ++v) {
    if (space.count[v] == 0 || !t.start_ok[v] || max_stages == 0) continue;
    const std::uint64_t m = space.radix[v];
    std::copy_n(t.stages_from(in, v, 0), W, reach.at(m, v));
    if (bits::any(reach.at(m, v), W)) reach.mark(m);
  }
  std::vector<std::uint32_t> used;
  std::vector<bits::Word> A(W);
  bool found = false;
  // States are created only at larger m, so one ascending sweep sees each final set.
  for (std::uint64_t m = 1; m < space.size; ++m) {
    if (!reach.live[m]) continue;
    const std::uint32_t stages = space.digits(m, used);
    for (std::size_t u = 0; u < K; ++u) {
      if (used[u] && t.end_ok[u] && bits::test(reach.at(m, u), L - 1)) found = true;
    }
    if (found && stop_at_goal) return true;
    if (stages >= max_stages) continue;
    for (std::size_t v = 0; v < K; ++v) {
      if (used[v] >= space.count[v] || !gather_cuts(in, t, reach, m, used, v, A.data())) continue;
      const std::uint64_t next = m + space.radix[v];
      bits::Word* dst = reach.at(next, v);
      bits::for_each(A.data(), W, [&](std::size_t b) {
        const bits::Word* src = t.stages_from(in, v, b + 1);
        for (std::size_t w = 0; w < W; ++w) dst[w] |= src[w];
      });
      if (bits::any(dst, W)) reach.mark(next);
    }
  }
  return found;
}

void backward(const ClassInstance& in, const CountSpace& space, const ThresholdTables& t, std::size_t max_stages,
              const ReachSets& reach, ReachSets& useful) {
  const std::size_t K = in.classes, W = in.words, L = in.layers;
  useful.reset(space, K, W);
  std::vector<std::uint64_t> order = reach.sorted_live();
  std::vector<std::uint32_t> used;
  std::vector<bits::Word> A(W), P(W);
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    const std::uint64_t m = *it;
    const std::uint32_t stages = space.digits(m, used);
    for (std::size_t u = 0; u < K; ++u) {
      if (used[u] && t.end_ok[u] && bits::test(reach.at(m, u), L - 1)) bits::set(useful.at(m, u), L - 1);
    }
    if (stages < max_stages) {
      for (std::size_t v = 0; v < K; ++v) {
        if (used[v] >= space.count[v]) continue;
        const std::uint64_t next = m + space.radix[v];
        if (!useful.live[next]) continue;
        const bits::Word* target = useful.at(next, v);
        if (!bits::any(target, W) || !gather_cuts(in, t, reach, m, used, v, A.data())) continue;
        std::fill(P.begin(), P.end(), 0);
        bool any = false;
        bits::for_each(A.data(), W, [&](std::size_t b) {
          if (bits::intersects(t.stages_from(in, v, b + 1), target, W)) {
            bits::set(P.data(), b);
            any = true;
          }
        });
        if (!any) continue;
        for (std::size_t u = 0; u < K; ++u) {
          if (used[u] == 0 || !t.pair_ok[u * K + v]) continue;
          const bits::Word* r = reach.at(m, u);
          const bits::Word* x = t.cuts(in, u, v);
          bits::Word* dst = useful.at(m, u);
          for (std::size_t w = 0; w < W; ++w) dst[w] |= r[w] & x[w] & P[w];
        }
      }
    }
    for (std::size_t u = 0; u < K; ++u) {
      if (bits::any(useful.at(m, u), W)) {
        useful.mark(m);
        break;
      }
    }
  }
}

}  // namespace pipeedge_sched
