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

// The sweeps are instantiated for 1-4 words per bitset (up to 256 layers) so the word loops
// unroll; N = 0 is the general case.
template <std::size_t N>
std::size_t words_of(const ClassInstance& in) {
  return N ? N : in.words;
}

// A = OR over used classes u of reach[m][u] & cuts[u][v]. Returns whether A is non-empty.
template <std::size_t N>
bool gather_cuts(const ClassInstance& in, const ThresholdTables& t, const ReachSets& reach, std::uint64_t m,
                 const std::vector<std::uint32_t>& used, std::size_t v, bits::Word* A) {
  const std::size_t K = in.classes, W = words_of<N>(in);
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

// First position from which the unused devices might still finish: the layers, work and
// weights after it must fit in the sum of their per-stage maxima (relaxations of one stage each).
std::size_t first_viable(const ClassInstance& in, const CountSpace& space, const ThresholdTables& t,
                         const std::vector<std::uint32_t>& used) {
  const std::size_t K = in.classes, L = in.layers;
  std::size_t span = 0;
  double work = 0, memory = 0;
  for (std::size_t v = 0; v < K; ++v) {
    const std::uint32_t left = space.count[v] - used[v];
    span += left * t.max_span[v];
    work += left * t.max_work[v];
    memory += left * t.max_weight[v];
  }
  std::size_t first = span >= L ? 0 : L - span;
  auto after = [&](const std::vector<double>& suffix, double cap) {  // least i with suffix[i] <= cap
    return static_cast<std::size_t>(
        std::partition_point(suffix.begin(), suffix.end(), [cap](double x) { return x > cap; }) - suffix.begin());
  };
  first = std::max(first, after(in.work_suffix, work));
  first = std::max(first, after(in.weight_suffix, memory));
  return first;
}

// Clears positions before first_viable(); returns false if nothing is left at m.
bool prune(const ClassInstance& in, const CountSpace& space, const ThresholdTables& t,
           const std::vector<std::uint32_t>& used, ReachSets& reach, std::uint64_t m) {
  const std::size_t K = in.classes, W = in.words;
  const std::size_t first = first_viable(in, space, t, used);
  if (first <= 1) return true;
  const std::size_t first_bit = first - 1;  // position p is bit p - 1
  bool alive = false;
  for (std::size_t u = 0; u < K; ++u) {
    if (!used[u]) continue;
    bits::Word* r = reach.at(m, u);
    for (std::size_t w = 0; w < W && w * 64 < first_bit; ++w) {
      const std::size_t lo = w * 64;
      r[w] &= (first_bit >= lo + 64) ? 0 : ~((bits::Word{1} << (first_bit - lo)) - 1);
    }
    alive = alive || bits::any(r, W);
  }
  return alive;
}

}  // namespace

namespace {

template <std::size_t N>
bool forward_n(const ClassInstance& in, const CountSpace& space, const ThresholdTables& t, std::size_t max_stages,
               bool stop_at_goal, ReachSets& reach, const LatencyFilter* filter) {
  const std::size_t K = in.classes, W = words_of<N>(in), L = in.layers;
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
    if (!prune(in, space, t, used, reach, m)) continue;
    if (filter) {
      bool alive = false;
      for (std::size_t u = 0; u < K; ++u) {
        if (!used[u]) continue;
        bits::Word* r = reach.at(m, u);
        const bits::Word* keep = filter->mask(space, used, u);
        for (std::size_t w = 0; w < W; ++w) r[w] &= keep[w];
        alive = alive || bits::any(r, W);
      }
      if (!alive) continue;
    }
    for (std::size_t u = 0; u < K; ++u) {
      if (used[u] && t.end_ok[u] && bits::test(reach.at(m, u), L - 1)) found = true;
    }
    if (found && stop_at_goal) return true;
    if (stages >= max_stages) continue;
    for (std::size_t v = 0; v < K; ++v) {
      if (used[v] >= space.count[v] || !gather_cuts<N>(in, t, reach, m, used, v, A.data())) continue;
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

template <std::size_t N>
void backward_n(const ClassInstance& in, const CountSpace& space, const ThresholdTables& t, std::size_t max_stages,
                const ReachSets& reach, ReachSets& useful) {
  const std::size_t K = in.classes, W = words_of<N>(in), L = in.layers;
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
        if (!bits::any(target, W) || !gather_cuts<N>(in, t, reach, m, used, v, A.data())) continue;
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

}  // namespace

bool forward(const ClassInstance& in, const CountSpace& space, const ThresholdTables& t, std::size_t max_stages,
             bool stop_at_goal, ReachSets& reach, const LatencyFilter* filter) {
  switch (in.words) {
    case 1: return forward_n<1>(in, space, t, max_stages, stop_at_goal, reach, filter);
    case 2: return forward_n<2>(in, space, t, max_stages, stop_at_goal, reach, filter);
    case 3: return forward_n<3>(in, space, t, max_stages, stop_at_goal, reach, filter);
    case 4: return forward_n<4>(in, space, t, max_stages, stop_at_goal, reach, filter);
    default: return forward_n<0>(in, space, t, max_stages, stop_at_goal, reach, filter);
  }
}

void backward(const ClassInstance& in, const CountSpace& space, const ThresholdTables& t, std::size_t max_stages,
              const ReachSets& reach, ReachSets& useful) {
  switch (in.words) {
    case 1: return backward_n<1>(in, space, t, max_stages, reach, useful);
    case 2: return backward_n<2>(in, space, t, max_stages, reach, useful);
    case 3: return backward_n<3>(in, space, t, max_stages, reach, useful);
    case 4: return backward_n<4>(in, space, t, max_stages, reach, useful);
    default: return backward_n<0>(in, space, t, max_stages, reach, useful);
  }
}

}  // namespace pipeedge_sched
