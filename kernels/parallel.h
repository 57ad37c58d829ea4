// parallel.h: the CPU ops' thread pool. A CPU op splits its outputs into disjoint ranges and
// runs them on the pool's threads and the calling thread together. Every output element is
// computed by exactly one call, in the same order as a serial loop would (reductions are split
// over their outputs, never over the summed items), so results are bitwise the same for any
// number of threads.
#pragma once

#include <cstdint>
#include <functional>

namespace sc {

// Threads the CPU ops use (the caller included): SLOTCON_NUM_THREADS when set to a positive
// integer, else the number of CPUs this process may run on (its affinity mask). At least 1.
int cpu_threads();
// Sets that number for the rest of the process (tests); n < 1 means 1.
void set_cpu_threads(int n);

// Calls f(begin, end) on disjoint ranges that cover [0, n), each at least `grain` long (the last
// may be shorter), and returns when all are done. Runs serially (one call f(0, n)) when n < 2 *
// grain, when one thread is configured, from inside another parallel_for, or while another
// thread's parallel_for holds the pool. The first exception thrown by f is rethrown here after
// every range has finished or been skipped.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& f);

// A grain for loops whose items cost about `work_per_item` simple operations: ranges of at least
// ~32k operations, so that waking a thread (~10 us) is worth it.
inline int64_t grain_for(int64_t work_per_item) {
  const int64_t per = work_per_item > 0 ? work_per_item : 1;
  const int64_t g = (int64_t(1) << 15) / per;
  return g > 0 ? g : 1;
}

}  // namespace sc
