// Values live in flat arrays indexed by (m, u) block offset + rank of the position in the
// block's useful bitset, so memory is proportional to the useful states only.
#include "refine.hpp"

#include <algorithm>
#include <limits>

namespace pipeedge_sched {

bool operator<(const PathKey& a, const PathKey& b) {
  if (a.latency_s != b.latency_s) return a.latency_s < b.latency_s;
  if (a.bottleneck_s != b.bottleneck_s) return a.bottleneck_s < b.bottleneck_s;
  return a.stages < b.stages;
}

namespace {

constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();
constexpr double kInf = std::numeric_limits<double>::infinity();

// Compact storage for the useful states.
class StateTable {
 public:
  StateTable(const ClassInstance& in, const ReachSets& useful, std::uint64_t states)
      : in_(in), useful_(useful), offset_(useful.live.size() * in.classes + 1, 0) {
    // offset_[b] = useful states in blocks before b (an empty block shares the next offset).
    for (std::uint64_t m = 0; m < useful.live.size(); ++m) {
      for (std::size_t u = 0; u < in.classes; ++u) {
        const std::size_t b = m * in.classes + u;
        offset_[b + 1] = offset_[b] + (useful.live[m] ? bits::count(useful.at(m, u), in.words) : 0);
      }
    }
    key_.assign(states, PathKey{kInf, kInf, 0});
    parent_.assign(states, kNone);
  }

  std::uint64_t index(std::uint64_t m, std::size_t u, std::size_t bit) const {
    return offset_[m * in_.classes + u] + bits::rank(useful_.at(m, u), bit);
  }

  void relax(std::uint64_t idx, const PathKey& k, std::uint32_t from) {
    if (k < key_[idx]) {
      key_[idx] = k;
      parent_[idx] = from;
    }
  }

  const PathKey& key(std::uint64_t idx) const { return key_[idx]; }
  std::uint32_t parent(std::uint64_t idx) const { return parent_[idx]; }

  // Inverse of index(): the state's class and position.
  PathStep decode(std::uint64_t idx) const {
    // The last block starting at or before idx is the non-empty one holding it.
    const auto it = std::upper_bound(offset_.begin(), offset_.end(), idx) - 1;
    const auto block = static_cast<std::size_t>(it - offset_.begin());
    const std::uint64_t m = block / in_.classes;
    const std::size_t u = block % in_.classes;
    const std::size_t bit = bits::select(useful_.at(m, u), in_.words, idx - offset_[block]);
    return PathStep{u, bit + 1};
  }

 private:
  const ClassInstance& in_;
  const ReachSets& useful_;
  std::vector<std::uint64_t> offset_;
  std::vector<PathKey> key_;
  std::vector<std::uint32_t> parent_;
};

}  // namespace

RefineResult refine(const ClassInstance& in, const CountSpace& space, const ThresholdTables& t,
                    std::size_t max_stages, std::uint64_t cap, ReachSets& reach, ReachSets& useful) {
  const std::size_t K = in.classes, W = in.words, L = in.layers;
  RefineResult res;
  if (!forward(in, space, t, max_stages, false, reach)) return res;
  backward(in, space, t, max_stages, reach, useful);
  for (std::uint64_t m : useful.touched) {
    for (std::size_t u = 0; u < K; ++u) res.states += bits::count(useful.at(m, u), W);
  }
  if (res.states > cap || res.states >= kNone) {
    res.capped = true;
    return res;
  }
  StateTable table(in, useful, res.states);

  std::vector<bits::Word> mask(W);
  for (std::size_t v = 0; v < K; ++v) {
    if (space.count[v] == 0 || !t.start_ok[v]) continue;
    const std::uint64_t m = space.radix[v];
    if (!useful.live[m]) continue;
    const bits::Word* from0 = t.stages_from(in, v, 0);
    const bits::Word* target = useful.at(m, v);
    for (std::size_t w = 0; w < W; ++w) mask[w] = from0[w] & target[w];
    bits::for_each(mask.data(), W, [&](std::size_t c) {
      const double work = in.compute_s(v, 0, c + 1);
      const PathKey k{in.input_s[v] + in.input_latency_s[v] + work, std::max(in.input_s[v], work), 1};
      table.relax(table.index(m, v, c), k, kNone);
    });
  }

  PathKey best{kInf, kInf, 0};
  std::uint64_t best_idx = kNone;
  std::vector<std::uint32_t> used;
  for (std::uint64_t m : useful.sorted_live()) {
    const std::uint32_t stages = space.digits(m, used);
    for (std::size_t u = 0; u < K; ++u) {
      if (used[u] == 0) continue;
      const bits::Word* here = useful.at(m, u);
      std::uint64_t idx = table.index(m, u, 0);
      bits::for_each(here, W, [&](std::size_t b) {
        const PathKey k = table.key(idx);
        const std::size_t pos = b + 1;
        if (pos == L) {
          if (t.end_ok[u]) {
            const PathKey done{k.latency_s + in.output_s[u] + in.output_latency_s[u],
                               std::max(k.bottleneck_s, in.output_s[u]), k.stages};
            if (done < best) {
              best = done;
              best_idx = idx;
            }
          }
        } else if (stages < max_stages) {
          for (std::size_t v = 0; v < K; ++v) {
            if (used[v] >= space.count[v] || !t.pair_ok[u * K + v] || !bits::test(t.cuts(in, u, v), b)) continue;
            const std::uint64_t next = m + space.radix[v];
            if (!useful.live[next]) continue;
            const bits::Word* from = t.stages_from(in, v, pos);
            const bits::Word* target = useful.at(next, v);
            for (std::size_t w = 0; w < W; ++w) mask[w] = from[w] & target[w];
            const double x = in.transfer_s(u, v, pos);
            const double base = k.latency_s + x + in.link_latency_s(u, v);
            const double base_b = std::max(k.bottleneck_s, x);
            bits::for_each(mask.data(), W, [&](std::size_t c) {
              const double work = in.compute_s(v, pos, c + 1);
              table.relax(table.index(next, v, c), PathKey{base + work, std::max(base_b, work), k.stages + 1},
                          static_cast<std::uint32_t>(idx));
            });
          }
        }
        ++idx;
      });
    }
  }
  if (best_idx == kNone) return res;
  res.found = true;
  res.key = best;
  for (std::uint64_t idx = best_idx; idx != kNone; idx = table.parent(idx)) res.path.push_back(table.decode(idx));
  std::reverse(res.path.begin(), res.path.end());
  return res;
}

}  // namespace pipeedge_sched
