// rng.h: the data pipeline's random numbers.
//
// Every random decision of the pipeline (epoch shuffle, crop, flip, colour jitter, scene layout)
// comes from an Rng seeded by hashing a few integers, e.g. Rng(seed, epoch, sample_index). A
// sample's augmentation therefore depends only on (seed, epoch, index): not on which worker thread
// ran it, how many workers there are, or the rank and world size. The generator is xoshiro256**
// seeded through SplitMix64; the distributions are written here (not <random>'s) so that the
// same seed gives the same pictures with every standard library.
#pragma once
#include <cmath>
#include <cstdint>

namespace sc {
namespace data {

inline uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// A 64-bit hash of a few integers (order matters).
inline uint64_t hash_combine(uint64_t a, uint64_t b) {
  uint64_t s = a ^ (b * 0xD6E8FEB86659FD93ull + 0x632BE59BD9B4E019ull);
  return splitmix64(s);
}

class Rng {
 public:
  explicit Rng(uint64_t seed) { reseed(seed); }
  Rng(uint64_t a, uint64_t b) { reseed(hash_combine(a, b)); }
  Rng(uint64_t a, uint64_t b, uint64_t c) { reseed(hash_combine(hash_combine(a, b), c)); }
  Rng(uint64_t a, uint64_t b, uint64_t c, uint64_t d) {
    reseed(hash_combine(hash_combine(hash_combine(a, b), c), d));
  }

  void reseed(uint64_t seed) {
    uint64_t st = seed;
    for (auto& v : s_) v = splitmix64(st);
  }

  uint64_t next_u64() {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return double(next_u64() >> 11) * 0x1.0p-53; }
  // Uniform in [lo, hi) (Python's random.uniform up to the closed end, which has measure zero).
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  // Uniform integer in [lo, hi], both ends included (Python's random.randint). Requires lo <= hi.
  int64_t randint(int64_t lo, int64_t hi) {
    const uint64_t span = uint64_t(hi - lo) + 1;
    if (span == 0) return int64_t(next_u64());  // the whole 64-bit range
    // Rejection sampling: no modulo bias.
    const uint64_t limit = UINT64_MAX - UINT64_MAX % span;
    uint64_t r;
    do {
      r = next_u64();
    } while (r >= limit);
    return lo + int64_t(r % span);
  }
  // True with probability p (p <= 0: never, p >= 1: always).
  bool bernoulli(double p) { return uniform() < p; }
  // Standard normal (Box-Muller; one draw consumed per value, for simplicity).
  double normal() {
    double u1 = uniform();
    double u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
};

}  // namespace data
}  // namespace sc
