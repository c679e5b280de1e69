// Mixed-radix numbering of per-class use counts: m = sum_k used_k * radix_k with
// 0 <= used_k <= count_k. Adding one device of class k is m + radix_k, so every successor
// of a state has a larger number and increasing m is a topological order.
#pragma once

#include <cstdint>
#include <vector>

namespace pipeedge_sched {

struct CountSpace {
  std::vector<std::uint32_t> count;  // devices per class
  std::vector<std::uint64_t> radix;  // prod of (count + 1) over lower classes
  std::uint64_t size = 1;            // number of count vectors

  explicit CountSpace(const std::vector<std::uint32_t>& counts) : count(counts) {
    for (std::uint32_t c : counts) {
      radix.push_back(size);
      size *= std::uint64_t{c} + 1;
    }
  }

  // Per-class counts of m, and their total (the number of stages so far).
  std::uint32_t digits(std::uint64_t m, std::vector<std::uint32_t>& out) const {
    out.resize(count.size());
    std::uint32_t total = 0;
    for (std::size_t k = 0; k < count.size(); ++k) {
      out[k] = static_cast<std::uint32_t>(m % (std::uint64_t{count[k]} + 1));
      m /= std::uint64_t{count[k]} + 1;
      total += out[k];
    }
    return total;
  }
};

}  // namespace pipeedge_sched
