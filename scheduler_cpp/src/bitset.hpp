// Fixed-width bitsets over layer positions, stored as runs of W 64-bit words inside flat
// arrays. Convention everywhere: bit b stands for position b + 1 (positions 1..L).
#pragma once

#include <cstddef>
#include <cstdint>

namespace pipeedge_sched::bits {

using Word = std::uint64_t;

inline std::size_t words_for(std::size_t nbits) { return (nbits + 63) / 64; }

inline bool test(const Word* b, std::size_t k) { return (b[k >> 6] >> (k & 63)) & 1U; }
inline void set(Word* b, std::size_t k) { b[k >> 6] |= Word{1} << (k & 63); }
inline void clear(Word* b, std::size_t k) { b[k >> 6] &= ~(Word{1} << (k & 63)); }

inline bool any(const Word* b, std::size_t w) {
  for (std::size_t k = 0; k < w; ++k) {
    if (b[k]) return true;
  }
  return false;
}

inline bool intersects(const Word* a, const Word* b, std::size_t w) {
  for (std::size_t k = 0; k < w; ++k) {
    if (a[k] & b[k]) return true;
  }
  return false;
}

inline std::size_t count(const Word* b, std::size_t w) {
  std::size_t n = 0;
  for (std::size_t k = 0; k < w; ++k) n += static_cast<std::size_t>(__builtin_popcountll(b[k]));
  return n;
}

// Number of set bits strictly below bit k.
inline std::size_t rank(const Word* b, std::size_t k) {
  std::size_t n = 0;
  for (std::size_t w = 0; w < (k >> 6); ++w) n += static_cast<std::size_t>(__builtin_popcountll(b[w]));
  if (k & 63) n += static_cast<std::size_t>(__builtin_popcountll(b[k >> 6] & ((Word{1} << (k & 63)) - 1)));
  return n;
}

// Index of the r-th set bit (0-based); the caller guarantees it exists.
inline std::size_t select(const Word* b, std::size_t w, std::size_t r) {
  for (std::size_t k = 0; k < w; ++k) {
    Word x = b[k];
    const auto c = static_cast<std::size_t>(__builtin_popcountll(x));
    if (r < c) {
      for (; r > 0; --r) x &= x - 1;
      return k * 64 + static_cast<std::size_t>(__builtin_ctzll(x));
    }
    r -= c;
  }
  return w * 64;
}

// Sets bits [lo, hi).
inline void set_range(Word* b, std::size_t lo, std::size_t hi) {
  for (std::size_t k = lo; k < hi;) {
    const std::size_t w = k >> 6;
    const std::size_t end = (hi < (w + 1) * 64) ? hi : (w + 1) * 64;
    const std::size_t n = end - k;
    const Word mask = (n == 64) ? ~Word{0} : (((Word{1} << n) - 1) << (k & 63));
    b[w] |= mask;
    k = end;
  }
}

// Calls f(bit) for each set bit in increasing order.
template <class F>
inline void for_each(const Word* b, std::size_t w, F&& f) {
  for (std::size_t k = 0; k < w; ++k) {
    for (Word x = b[k]; x; x &= x - 1) f(k * 64 + static_cast<std::size_t>(__builtin_ctzll(x)));
  }
}

}  // namespace pipeedge_sched::bits
