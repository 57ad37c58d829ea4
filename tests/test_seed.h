// test_seed.h: the seeds of randomised tests, printed and replayable.
//
// Every randomised test draws its seeds from next_seed(). The first call in a process picks the
// run's base seed, SLOTCON_TEST_SEED when it is set and a fresh one from std::random_device
// otherwise, and prints it ("test seed: N (replay: SLOTCON_TEST_SEED=N)"; ctest shows it with a
// failing test's output). Call i of the process returns a seed derived from the base seed and i,
// so the same test run with the same SLOTCON_TEST_SEED sees the same values.
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>

namespace sc {
namespace testing {

inline uint64_t test_seed() {
  static const uint64_t base = [] {
    uint64_t s;
    if (const char* e = std::getenv("SLOTCON_TEST_SEED")) {
      s = std::strtoull(e, nullptr, 10);
    } else {
      std::random_device rd;
      s = (uint64_t(rd()) << 32) ^ uint64_t(rd());
    }
    std::printf("test seed: %llu (replay: SLOTCON_TEST_SEED=%llu)\n", (unsigned long long)s,
                (unsigned long long)s);
    std::fflush(stdout);
    return s;
  }();
  return base;
}

// The i-th seed of this process (splitmix64 of the base seed and a counter).
inline uint64_t next_seed() {
  static uint64_t calls = 0;
  uint64_t z = test_seed() + 0x9E3779B97F4A7C15ull * ++calls;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace testing
}  // namespace sc
