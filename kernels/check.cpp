#include "kernels/check.h"

#include <atomic>
#include <mutex>

namespace sc {
namespace kernels {

void fail(const std::string& what, const std::string& detail) { throw Error(what + ": " + detail); }

namespace {
// Relaxed atomics: counts, not synchronisation (a launch costs microseconds; this, nanoseconds).
std::atomic<uint64_t> g_kernels{0}, g_library{0}, g_memory{0};
std::atomic<const char*> g_phase{""};

// The trace: records under a mutex (only while tracing); the pending work and grid per thread.
struct Pending {
  double bytes = 0, flops = 0;
  Unit unit = Unit::Memory;
  bool has_work = false;
  const char* kernel = nullptr;
  uint64_t blocks = 0, threads = 0;
};
thread_local Pending t_pending;
std::mutex g_trace_mu;
std::vector<IssueRecord> g_records;

void record(IssueKind kind, const char* name) {
  Pending& p = t_pending;
  IssueRecord r;
  r.kind = kind;
  r.name = name ? name : "";
  r.kernel = p.kernel ? p.kernel : "";
  r.phase = current_phase();
  r.blocks = p.blocks;
  r.threads = p.threads;
  r.bytes = p.bytes;
  r.flops = p.flops;
  r.unit = p.unit;
  r.has_work = p.has_work;
  p = Pending();
  std::lock_guard<std::mutex> lock(g_trace_mu);
  if (tracing()) g_records.push_back(std::move(r));
}
}  // namespace

namespace detail {
std::atomic<bool> g_tracing{false};
}

IssueCounts issue_counts() {
  IssueCounts c;
  c.kernel_launches = g_kernels.load(std::memory_order_relaxed);
  c.library_calls = g_library.load(std::memory_order_relaxed);
  c.memory_ops = g_memory.load(std::memory_order_relaxed);
  return c;
}
void note_kernel_launch() { note_kernel_launch(nullptr); }
void note_library_call() { note_library_call(nullptr); }
void note_memory_op() { note_memory_op(nullptr); }

void note_kernel_launch(const char* name) {
  g_kernels.fetch_add(1, std::memory_order_relaxed);
  if (tracing()) record(IssueKind::Kernel, name);
}
void note_library_call(const char* name) {
  g_library.fetch_add(1, std::memory_order_relaxed);
  if (tracing()) record(IssueKind::Library, name);
}
void note_memory_op(const char* name) {
  g_memory.fetch_add(1, std::memory_order_relaxed);
  if (tracing()) record(IssueKind::Memory, name);
}
void trace_host_sync(const char* name) {
  if (tracing()) record(IssueKind::HostSync, name);
}

void start_trace() {
  std::lock_guard<std::mutex> lock(g_trace_mu);
  g_records.clear();
  t_pending = Pending();
  detail::g_tracing.store(true, std::memory_order_relaxed);
}
std::vector<IssueRecord> stop_trace() {
  std::lock_guard<std::mutex> lock(g_trace_mu);
  detail::g_tracing.store(false, std::memory_order_relaxed);
  std::vector<IssueRecord> out;
  out.swap(g_records);
  return out;
}
void note_work(double bytes, double flops, Unit unit) {
  Pending& p = t_pending;
  p.bytes = bytes;
  p.flops = flops;
  p.unit = unit;
  p.has_work = true;
}
void note_launch_shape(const char* kernel, uint64_t blocks, uint64_t threads) {
  Pending& p = t_pending;
  p.kernel = kernel;
  p.blocks = blocks;
  p.threads = threads;
}
namespace {
std::atomic<double> g_present_slots{45.0};
}
void set_trace_present_slots(double per_image) {
  g_present_slots.store(per_image, std::memory_order_relaxed);
}
double trace_present_slots() { return g_present_slots.load(std::memory_order_relaxed); }

namespace {
std::atomic<PhaseHook> g_phase_hook{nullptr};
}
void set_phase_hook(PhaseHook hook) { g_phase_hook.store(hook, std::memory_order_relaxed); }
const char* set_phase(const char* phase) {
  const char* now = phase ? phase : "";
  const char* previous = g_phase.exchange(now, std::memory_order_relaxed);
  if (PhaseHook h = g_phase_hook.load(std::memory_order_relaxed)) h(now);
  return previous;
}
const char* current_phase() { return g_phase.load(std::memory_order_relaxed); }

}  // namespace kernels
}  // namespace sc
