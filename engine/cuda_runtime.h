// cuda_runtime.h: the engine's view of the CUDA runtime, safe to include in CPU-only builds.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace sc {

// True when this build has the CUDA backend compiled in.
bool cuda_built();
// Number of usable CUDA devices (0 when not built with CUDA or when no driver/device is present).
int cuda_device_count();
inline bool cuda_available() { return cuda_device_count() > 0; }
// Human-readable name of device i ("NVIDIA H100 80GB HBM3, sm_90"), or "" when absent.
std::string cuda_device_name(int i = 0);
// Block the host until all work on the engine's stream of device i has finished.
void cuda_synchronize(int i = 0);

// What the host asked of the GPU so far (all devices, all threads), counted as it was asked: the
// numbers a GPU step's cost is predicted from where no GPU is present (docs/gpu.md, "Counted
// without a GPU"). Take the difference of two readings for one step.
struct DeviceCounters {
  uint64_t kernel_launches = 0;  // the engine's own kernels (kernels/, engine/cuda)
  uint64_t library_calls = 0;    // cuBLAS GEMMs, cuDNN convolutions (one or more kernels each)
  uint64_t memory_ops = 0;       // memsets and device-to-device copies
  uint64_t host_syncs = 0;       // the host waited for the device (a read-back, a synchronize)
  uint64_t device_mallocs = 0;   // cudaMalloc + cudaHostAlloc calls of the caching allocators
  uint64_t h2d_copies = 0, h2d_bytes = 0;
  uint64_t d2h_copies = 0, d2h_bytes = 0;
  // Stream operations: what a launch costs the host each time outside a CUDA graph.
  uint64_t stream_ops() const { return kernel_launches + library_calls + memory_ops; }
};
DeviceCounters device_counters();
DeviceCounters operator-(const DeviceCounters& a, const DeviceCounters& b);
// Called by the CUDA backend where it copies across and where the host waits.
void note_host_to_device(uint64_t bytes);
void note_device_to_host(uint64_t bytes);
void note_host_sync();

// Measured device time per phase, a card's reading of the cost model's phases: while a timing
// runs, every change of the DevicePhase label records a CUDA event on device 0's engine stream,
// and stop_phase_timing() waits for the last one and returns, per label, the summed time between
// each of its events and the next (the label "" is the time outside any phase), in the order the
// labels first appeared. Like the model's phase time, it is what the phase adds to the device's
// clock: its kernels plus the device's idle waits for the host inside it. Only for steps run
// plainly on one device (a CUDA graph's replay changes no label); empty in a build without CUDA.
struct PhaseTime {
  std::string phase;
  double ms = 0;
  int intervals = 0;  // how many times the phase was entered
};
void start_phase_timing();
std::vector<PhaseTime> stop_phase_timing();

// The range a profiler started with "--profile-from-start off" (ncu, nsys) records: between
// cuda_profiler_start() and cuda_profiler_stop() (cudaProfilerStart / Stop). Without a profiler
// attached, and in a build without CUDA, they do nothing.
void cuda_profiler_start();
void cuda_profiler_stop();

// A phase label for the device trace (kernels/check.h's start_trace; engine/cost_model.h): every
// stream operation issued while the marker lives is recorded under `name` (a string with static
// storage), the enclosing label restored after. Process-wide; costs one atomic exchange.
class DevicePhase {
 public:
  explicit DevicePhase(const char* name);
  ~DevicePhase();
  DevicePhase(const DevicePhase&) = delete;
  DevicePhase& operator=(const DevicePhase&) = delete;

 private:
  const char* previous_;
};

}  // namespace sc
