#include "kernels/check.h"

#include <atomic>

namespace sc {
namespace kernels {

void fail(const std::string& what, const std::string& detail) { throw Error(what + ": " + detail); }

namespace {
// Relaxed atomics: counts, not synchronisation (a launch costs microseconds; this, nanoseconds).
std::atomic<uint64_t> g_kernels{0}, g_library{0}, g_memory{0};
}  // namespace

IssueCounts issue_counts() {
  IssueCounts c;
  c.kernel_launches = g_kernels.load(std::memory_order_relaxed);
  c.library_calls = g_library.load(std::memory_order_relaxed);
  c.memory_ops = g_memory.load(std::memory_order_relaxed);
  return c;
}
void note_kernel_launch() { g_kernels.fetch_add(1, std::memory_order_relaxed); }
void note_library_call() { g_library.fetch_add(1, std::memory_order_relaxed); }
void note_memory_op() { g_memory.fetch_add(1, std::memory_order_relaxed); }

}  // namespace kernels
}  // namespace sc
