// Values live in flat arrays indexed by (m, u) block offset + rank of the position in the
// block's useful bitset, so memory is proportional to the useful states only. One sweep in
// increasing m serves both DPs through a small policy (start, step, finish, order).
#include "refine.hpp"

#include <algorithm>
#include <limits>
#include <optional>

namespace pipeedge_sched {

bool operator<(const PathKey& a, const PathKey& b) {
  if (a.latency_s != b.latency_s) return a.latency_s < b.latency_s;
  if (a.bottleneck_s != b.bottleneck_s) return a.bottleneck_s < b.bottleneck_s;
  return a.stages < b.stages;
}

namespace {

constexpr std::uint64_t kNone = std::numeric_limits<std::uint64_t>::max();
constexpr double kInf = std::numeric_limits<double>::infinity();

// Useful-state numbering: block (m, u) offset plus rank within the block's bitset.
class StateIndex {
 public:
  StateIndex(const ClassInstance& in, const ReachSets& useful)
      : in_(in), useful_(useful), offset_(useful.live.size() * in.classes + 1, 0) {
    // offset_[b] = useful states in blocks before b (an empty block shares the next offset).
    for (std::uint64_t m = 0; m < useful.live.size(); ++m) {
      for (std::size_t u = 0; u < in.classes; ++u) {
        const std::size_t b = m * in.classes + u;
        offset_[b + 1] = offset_[b] + (useful.live[m] ? bits::count(useful.at(m, u), in.words) : 0);
      }
    }
  }
  std::uint64_t size() const { return offset_.back(); }
  std::uint64_t index(std::uint64_t m, std::size_t u, std::size_t bit) const {
    return offset_[m * in_.classes + u] + bits::rank(useful_.at(m, u), bit);
  }
  PathStep decode(std::uint64_t idx) const {
    // The last block starting at or before idx is the non-empty one holding it.
    const auto it = std::upper_bound(offset_.begin(), offset_.end(), idx) - 1;
    const auto block = static_cast<std::size_t>(it - offset_.begin());
    const std::uint64_t m = block / in_.classes;
    const std::size_t u = block % in_.classes;
    return PathStep{u, bits::select(useful_.at(m, u), in_.words, idx - offset_[block]) + 1};
  }

 private:
  const ClassInstance& in_;
  const ReachSets& useful_;
  std::vector<std::uint64_t> offset_;
};

template <class Key>
struct SweepResult {
  bool found = false;
  Key best{};
  std::vector<PathStep> path;
};

// The forward DP. Policy: start(v, j) / step(key, u, v, i, j) / finish(key, u) return the
// extended key or nullopt when an edge is not allowed; better(a, b) orders keys.
template <class Key, class Policy>
SweepResult<Key> sweep(const ClassInstance& in, const CountSpace& space, const ThresholdTables& t,
                       std::size_t max_stages, const ReachSets& useful, const Policy& policy, bool want_path) {
  const std::size_t K = in.classes, W = in.words, L = in.layers;
  const StateIndex index(in, useful);
  std::vector<Key> key(index.size());
  std::vector<std::uint8_t> seen(index.size(), 0);
  std::vector<std::uint64_t> parent(want_path ? index.size() : 0, kNone);
  auto relax = [&](std::uint64_t idx, const Key& k, std::uint64_t from) {
    if (!seen[idx] || policy.better(k, key[idx])) {
      seen[idx] = 1;
      key[idx] = k;
      if (want_path) parent[idx] = from;
    }
  };

  std::vector<bits::Word> mask(W);
  for (std::size_t v = 0; v < K; ++v) {
    if (space.count[v] == 0 || !t.start_ok[v] || max_stages == 0) continue;
    const std::uint64_t m = space.radix[v];
    if (!useful.live[m]) continue;
    const bits::Word* from0 = t.stages_from(in, v, 0);
    const bits::Word* target = useful.at(m, v);
    for (std::size_t w = 0; w < W; ++w) mask[w] = from0[w] & target[w];
    bits::for_each(mask.data(), W, [&](std::size_t c) {
      if (const std::optional<Key> k = policy.start(v, c + 1)) relax(index.index(m, v, c), *k, kNone);
    });
  }

  SweepResult<Key> res;
  std::uint64_t best_idx = kNone;
  std::vector<std::uint32_t> used;
  for (std::uint64_t m : useful.sorted_live()) {
    const std::uint32_t stages = space.digits(m, used);
    for (std::size_t u = 0; u < K; ++u) {
      if (used[u] == 0) continue;
      std::uint64_t idx = index.index(m, u, 0);
      bits::for_each(useful.at(m, u), W, [&](std::size_t b) {
        const std::uint64_t here = idx++;
        if (!seen[here]) return;  // useful by reach, but only through edges the policy refuses
        const Key k = key[here];
        const std::size_t pos = b + 1;
        if (pos == L) {
          if (!t.end_ok[u]) return;
          if (const std::optional<Key> done = policy.finish(k, u)) {
            if (!res.found || policy.better(*done, res.best)) {
              res.found = true;
              res.best = *done;
              best_idx = here;
            }
          }
          return;
        }
        if (stages >= max_stages) return;
        for (std::size_t v = 0; v < K; ++v) {
          if (used[v] >= space.count[v] || !t.pair_ok[u * K + v] || !bits::test(t.cuts(in, u, v), b)) continue;
          const std::uint64_t next = m + space.radix[v];
          if (!useful.live[next]) continue;
          const bits::Word* from = t.stages_from(in, v, pos);
          const bits::Word* target = useful.at(next, v);
          for (std::size_t w = 0; w < W; ++w) mask[w] = from[w] & target[w];
          bits::for_each(mask.data(), W, [&](std::size_t c) {
            if (const std::optional<Key> nk = policy.step(k, u, v, pos, c + 1)) {
              relax(index.index(next, v, c), *nk, here);
            }
          });
        }
      });
    }
  }
  if (res.found && want_path) {
    for (std::uint64_t idx = best_idx; idx != kNone; idx = parent[idx]) res.path.push_back(index.decode(idx));
    std::reverse(res.path.begin(), res.path.end());
  }
  return res;
}

// Min-max: the key is the bottleneck so far; the tables already bound every edge.
struct BottleneckPolicy {
  const ClassInstance& in;
  std::optional<double> start(std::size_t v, std::size_t j) const {
    return std::max(in.input_s[v], in.stage_s(v, 0, j));
  }
  std::optional<double> step(double k, std::size_t u, std::size_t v, std::size_t i, std::size_t j) const {
    return std::max({k, in.transfer_s(u, v, i), in.stage_s(v, i, j)});
  }
  std::optional<double> finish(double k, std::size_t u) const { return std::max(k, in.output_s[u]); }
  bool better(double a, double b) const { return a < b; }
};

// (latency, bottleneck, stages) over edges costing at most `limit`.
struct LatencyPolicy {
  const ClassInstance& in;
  double limit;
  std::optional<PathKey> start(std::size_t v, std::size_t j) const {
    const double work = in.stage_s(v, 0, j);
    if (work > limit || in.input_s[v] > limit) return std::nullopt;
    return PathKey{in.input_s[v] + in.input_latency_s[v] + work, std::max(in.input_s[v], work), 1};
  }
  std::optional<PathKey> step(const PathKey& k, std::size_t u, std::size_t v, std::size_t i, std::size_t j) const {
    const double x = in.transfer_s(u, v, i);
    const double work = in.stage_s(v, i, j);
    if (x > limit || work > limit) return std::nullopt;
    return PathKey{k.latency_s + x + in.link_latency_s(u, v) + work, std::max({k.bottleneck_s, x, work}),
                   k.stages + 1};
  }
  std::optional<PathKey> finish(const PathKey& k, std::size_t u) const {
    if (in.output_s[u] > limit) return std::nullopt;
    return PathKey{k.latency_s + in.output_s[u] + in.output_latency_s[u], std::max(k.bottleneck_s, in.output_s[u]),
                   k.stages};
  }
  bool better(const PathKey& a, const PathKey& b) const { return a < b; }
};

}  // namespace

std::uint64_t count_states(const ClassInstance& in, const ReachSets& useful) {
  std::uint64_t n = 0;
  for (std::uint64_t m : useful.touched) {
    for (std::size_t u = 0; u < in.classes; ++u) n += bits::count(useful.at(m, u), in.words);
  }
  return n;
}

double min_bottleneck_dp(const ClassInstance& in, const CountSpace& space, const ThresholdTables& t,
                         std::size_t max_stages, const ReachSets& useful) {
  const SweepResult<double> r = sweep<double>(in, space, t, max_stages, useful, BottleneckPolicy{in}, false);
  return r.found ? r.best : kInf;
}

RefineResult latency_dp(const ClassInstance& in, const CountSpace& space, const ThresholdTables& t, double limit,
                        std::size_t max_stages, const ReachSets& useful) {
  const SweepResult<PathKey> r = sweep<PathKey>(in, space, t, max_stages, useful, LatencyPolicy{in, limit}, true);
  RefineResult res;
  res.found = r.found;
  res.key = r.best;
  res.path = r.path;
  res.states = count_states(in, useful);
  return res;
}

RefineResult refine(const ClassInstance& in, const CountSpace& space, const ThresholdTables& t,
                    std::size_t max_stages, std::uint64_t cap, ReachSets& reach, ReachSets& useful,
                    const LatencyFilter* filter) {
  RefineResult res;
  if (!forward(in, space, t, max_stages, false, reach, filter)) return res;
  backward(in, space, t, max_stages, reach, useful);
  res.states = count_states(in, useful);
  if (res.states > cap) {
    res.capped = true;
    return res;
  }
  return latency_dp(in, space, t, t.threshold, max_stages, useful);
}

}  // namespace pipeedge_sched
