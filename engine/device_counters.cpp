// device_counters.cpp: the counts of engine/cuda_runtime.h's DeviceCounters. Every build has them
// (a CPU-only build reads zeros); the stream-work counts live in kernels/check.cpp.
#include <atomic>

#include "engine/allocator.h"
#include "engine/cuda_runtime.h"
#include "kernels/check.h"

namespace sc {
namespace {
std::atomic<uint64_t> g_syncs{0}, g_h2d{0}, g_h2d_bytes{0}, g_d2h{0}, g_d2h_bytes{0};
}  // namespace

void note_host_to_device(uint64_t bytes) {
  g_h2d.fetch_add(1, std::memory_order_relaxed);
  g_h2d_bytes.fetch_add(bytes, std::memory_order_relaxed);
}
void note_device_to_host(uint64_t bytes) {
  g_d2h.fetch_add(1, std::memory_order_relaxed);
  g_d2h_bytes.fetch_add(bytes, std::memory_order_relaxed);
}
void note_host_sync() {
  g_syncs.fetch_add(1, std::memory_order_relaxed);
  kernels::trace_host_sync("host synchronisation");
}

DevicePhase::DevicePhase(const char* name) : previous_(kernels::set_phase(name)) {}
DevicePhase::~DevicePhase() { kernels::set_phase(previous_); }

DeviceCounters device_counters() {
  DeviceCounters c;
  const kernels::IssueCounts k = kernels::issue_counts();
  c.kernel_launches = k.kernel_launches;
  c.library_calls = k.library_calls;
  c.memory_ops = k.memory_ops;
  c.host_syncs = g_syncs.load(std::memory_order_relaxed);
  c.h2d_copies = g_h2d.load(std::memory_order_relaxed);
  c.h2d_bytes = g_h2d_bytes.load(std::memory_order_relaxed);
  c.d2h_copies = g_d2h.load(std::memory_order_relaxed);
  c.d2h_bytes = g_d2h_bytes.load(std::memory_order_relaxed);
  c.device_mallocs = pinned_allocator_stats().device_malloc_calls;
  for (int d = 0; d < cuda_device_count(); ++d)
    c.device_mallocs += cuda_allocator_stats(d).device_malloc_calls;
  return c;
}

DeviceCounters operator-(const DeviceCounters& a, const DeviceCounters& b) {
  DeviceCounters c;
  c.kernel_launches = a.kernel_launches - b.kernel_launches;
  c.library_calls = a.library_calls - b.library_calls;
  c.memory_ops = a.memory_ops - b.memory_ops;
  c.host_syncs = a.host_syncs - b.host_syncs;
  c.device_mallocs = a.device_mallocs - b.device_mallocs;
  c.h2d_copies = a.h2d_copies - b.h2d_copies;
  c.h2d_bytes = a.h2d_bytes - b.h2d_bytes;
  c.d2h_copies = a.d2h_copies - b.d2h_copies;
  c.d2h_bytes = a.d2h_bytes - b.d2h_bytes;
  return c;
}

}  // namespace sc
