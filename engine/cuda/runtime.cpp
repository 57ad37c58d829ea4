// The CUDA runtime glue: device queries, the engine's stream and cuBLAS handle per device.
#include <atomic>
#include <mutex>
#include <string>

#include "engine/cuda/context.h"
#include "engine/cuda_runtime.h"
#include "engine/dispatch.h"

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
