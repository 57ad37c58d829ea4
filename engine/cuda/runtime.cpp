// The CUDA runtime glue: device queries, the engine's stream and cuBLAS handle per device.
#include <cuda_profiler_api.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <string>

#include "engine/cuda/context.h"
#include "engine/cuda_runtime.h"
#include "engine/dispatch.h"
#include "kernels/check.h"

namespace sc {

bool cuda_built() { return true; }

cudaStream_t stream_of(const Tensor& t) {
  cuda::set_device(t.device().index);
  return cuda::stream(t.device().index);
}

int cuda_device_count() {
  // Asked once: with no driver or no device cudaGetDeviceCount fails, and that means "none".
  static const int count = [] {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();  // clear the error so later calls do not see it
      return 0;
    }
    return n;
  }();
  return count;
}

std::string cuda_device_name(int i) {
  if (i < 0 || i >= cuda_device_count()) return "";
  cudaDeviceProp p;
  if (cudaGetDeviceProperties(&p, i) != cudaSuccess) {
    (void)cudaGetLastError();
    return "";
  }
  return str_cat(p.name, ", sm_", p.major, p.minor);
}

void cuda_synchronize(int i) {
  if (cuda_device_count() == 0) return;  // nothing can be pending
  cuda::set_device(i);
  note_host_sync();
  SC_CUDA_CHECK(cudaStreamSynchronize(cuda::stream(i)));
  cuda::check_deferred_errors(i);
}

namespace {
// The phase timing's events: (event, label) in the order recorded, on device 0's engine stream.
struct PhaseTiming {
  std::mutex mu;
  std::vector<std::pair<cudaEvent_t, const char*>> marks;
  std::vector<cudaEvent_t> spare;  // events of an earlier timing, reused
};
PhaseTiming& phase_timing() {
  static PhaseTiming* t = new PhaseTiming();  // never freed: used until exit
  return *t;
}
// Called from DevicePhase's destructor too, so it never throws: an event it cannot make or
// record is left out (stop_phase_timing then merges that interval into the one before).
void mark_phase(const char* phase) noexcept {
  PhaseTiming& t = phase_timing();
  std::lock_guard<std::mutex> lock(t.mu);
  cudaEvent_t e = nullptr;
  if (!t.spare.empty()) {
    e = t.spare.back();
    t.spare.pop_back();
  } else if (cudaEventCreate(&e) != cudaSuccess) {
    (void)cudaGetLastError();
    return;
  }
  int previous = 0;  // the caller's current device, restored
  const bool ok = cudaGetDevice(&previous) == cudaSuccess && cudaSetDevice(0) == cudaSuccess &&
                  cudaEventRecord(e, cuda::stream(0)) == cudaSuccess;
  if (cudaSetDevice(previous) != cudaSuccess || !ok) {
    (void)cudaGetLastError();
    t.spare.push_back(e);
    return;
  }
  t.marks.emplace_back(e, phase);
}
}  // namespace

void start_phase_timing() {
  SC_CHECK(cuda_device_count() > 0, "start_phase_timing: no CUDA device");
  {
    PhaseTiming& t = phase_timing();
    std::lock_guard<std::mutex> lock(t.mu);
    for (auto& m : t.marks) t.spare.push_back(m.first);
    t.marks.clear();
  }
  mark_phase(kernels::current_phase());
  kernels::set_phase_hook(&mark_phase);
}

std::vector<PhaseTime> stop_phase_timing() {
  if (cuda_device_count() == 0) return {};
  kernels::set_phase_hook(nullptr);
  mark_phase(kernels::current_phase());
  PhaseTiming& t = phase_timing();
  std::lock_guard<std::mutex> lock(t.mu);
  if (t.marks.empty()) return {};
  note_host_sync();
  SC_CUDA_CHECK(cudaEventSynchronize(t.marks.back().first));
  std::vector<PhaseTime> out;
  for (size_t i = 0; i + 1 < t.marks.size(); ++i) {
    float ms = 0;
    SC_CUDA_CHECK(cudaEventElapsedTime(&ms, t.marks[i].first, t.marks[i + 1].first));
    const std::string name = t.marks[i].second;
    auto it =
        std::find_if(out.begin(), out.end(), [&](const PhaseTime& p) { return p.phase == name; });
    if (it == out.end()) it = out.insert(out.end(), PhaseTime{name, 0.0, 0});
    it->ms += double(ms);
    ++it->intervals;
  }
  return out;
}

void cuda_profiler_start() {
  if (cuda_device_count() == 0) return;
  if (cudaProfilerStart() != cudaSuccess) (void)cudaGetLastError();
}
void cuda_profiler_stop() {
  if (cuda_device_count() == 0) return;
  if (cudaProfilerStop() != cudaSuccess) (void)cudaGetLastError();
}

namespace cuda {
namespace {

// cuBLAS workspace per handle (NVIDIA recommends 32 MiB on Hopper; enough for Ampere too). A
// user-provided workspace keeps cuBLAS from allocating on its own during a step.
constexpr size_t kCublasWorkspaceBytes = size_t(32) << 20;

struct DeviceState {
  std::once_flag stream_once;
  std::once_flag blas_once;
  std::once_flag copy_once;
  std::atomic<cudaStream_t> stream{nullptr};
  std::atomic<cudaStream_t> copy{nullptr};
  cublasHandle_t blas = nullptr;
  void* workspace = nullptr;
  int sms = 0;
};

DeviceState& state(int device) {
  static DeviceState* states = new DeviceState[kMaxDevices];  // never freed: used until exit
  SC_CHECK(device >= 0 && device < kMaxDevices && device < cuda_device_count(), "CUDA device ",
           device, " does not exist (", cuda_device_count(), " device(s) present)");
  return states[device];
}

DeviceState& ready_state(int device) {
  DeviceState& s = state(device);
  std::call_once(s.stream_once, [&] {
    set_device(device);
    cudaStream_t st = nullptr;
    SC_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    SC_CUDA_CHECK(cudaDeviceGetAttribute(&s.sms, cudaDevAttrMultiProcessorCount, device));
    s.stream.store(st);
  });
  return s;
}

}  // namespace

void set_device(int device) {
  int cur = -1;
  SC_CUDA_CHECK(cudaGetDevice(&cur));
  if (cur != device) SC_CUDA_CHECK(cudaSetDevice(device));
}

cudaStream_t stream(int device) { return ready_state(device).stream.load(); }

cudaStream_t existing_stream(int device) {
  if (device < 0 || device >= kMaxDevices || device >= cuda_device_count()) return nullptr;
  return state(device).stream.load();
}

cudaStream_t copy_stream(int device) {
  DeviceState& s = ready_state(device);
  std::call_once(s.copy_once, [&] {
    set_device(device);
    cudaStream_t st = nullptr;
    SC_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    s.copy.store(st);
  });
  return s.copy.load();
}

cudaStream_t existing_copy_stream(int device) {
  if (device < 0 || device >= kMaxDevices || device >= cuda_device_count()) return nullptr;
  return state(device).copy.load();
}

int sm_count(int device) { return ready_state(device).sms; }

cublasHandle_t cublas(int device) {
  DeviceState& s = ready_state(device);
  std::call_once(s.blas_once, [&] {
    set_device(device);
    cublasHandle_t h = nullptr;
    SC_CUBLAS_CHECK(cublasCreate(&h));
    void* ws = nullptr;
    try {
      SC_CUBLAS_CHECK(cublasSetStream(h, s.stream.load()));
      // Exact FP32 (no TF32: CUBLAS_COMPUTE_32F is requested per call) and no reduced-precision
      // reductions for the 16-bit types.
      SC_CUBLAS_CHECK(cublasSetMathMode(
          h, cublasMath_t(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
      // After cublasSetStream, which resets the workspace to cuBLAS's own pool.
      SC_CUDA_CHECK(cudaMalloc(&ws, kCublasWorkspaceBytes));
      SC_CUBLAS_CHECK(cublasSetWorkspace(h, ws, kCublasWorkspaceBytes));
    } catch (...) {
      cublasDestroy(h);
      if (ws) cudaFree(ws);
      throw;
    }
    s.blas = h;
    s.workspace = ws;
  });
  return s.blas;
}

}  // namespace cuda
}  // namespace sc
