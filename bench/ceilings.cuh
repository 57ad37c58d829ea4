// ceilings.cuh: the card's ceilings, measured in the benchmark run that uses them (METHOD: a
// datasheet's rates are leads). A .cuh, not a .h: it launches kernels (and so is rewritten for the
// CUDA emulator like the .cu files). Include from bench/*.cu only.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <functional>
#include <vector>

#include "bench/bench_common.h"

namespace bench {

namespace detail {
// 8 independent FMA chains per thread; the store the compiler cannot rule out keeps the loop.
__global__ void ceiling_fma_kernel(float* out, int iters, float a, float b) {
  float x[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) x[j] = float(threadIdx.x + j);
  for (int i = 0; i < iters; ++i) {
#pragma unroll
    for (int j = 0; j < 8; ++j) x[j] = fmaf(x[j], a, b);
  }
  float s = 0;
#pragma unroll
  for (int j = 0; j < 8; ++j) s += x[j];
  if (s == -1.2345f) out[0] = s;
}
__global__ void ceiling_empty_kernel() {}
}  // namespace detail

// The card's ceilings, measured in the run that uses them (METHOD: datasheet rates are leads):
// device-to-device copy bandwidth counting bytes read + written (512 MiB, far over the L2), FP32
// FMA rate (a full grid of register-resident FMA chains), and the cost of one kernel launch
// back to back (the least any single-kernel op can take, whatever its bytes). Each the median of
// 5 (Bench). `tiny`: sizes for the CUDA emulator (figures meaningless).
struct Ceilings {
  double copy_gbs = 0, f32_tf = 0, launch_us = 0;
};
inline Ceilings measure_ceilings(bool tiny = false) {
  Bench timer(5);  // the benchmarks' own timer: 3 warm-ups, the median of 5
  cudaStream_t st = timer.stream;
  auto median_ms = [&](const std::function<void()>& fn) { return timer.time_ms(fn); };
  Ceilings c;
  const size_t bytes = tiny ? (size_t(1) << 16) : (size_t(512) << 20);
  sc::Tensor src = sc::empty({int64_t(bytes)}, sc::DType::U8, sc::Device::cuda(0));
  sc::Tensor dst = sc::empty({int64_t(bytes)}, sc::DType::U8, sc::Device::cuda(0));
  SC_CUDA_CHECK(cudaMemsetAsync(src.data_ptr(), 0x3c, bytes, st));
  const double copy_ms = median_ms([&] {
    SC_CUDA_CHECK(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), bytes,
                                  cudaMemcpyDeviceToDevice, st));
  });
  c.copy_gbs = 2.0 * double(bytes) / (copy_ms * 1e-3) / 1e9;

  int sms = 1;
  SC_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const int threads = 256, blocks = tiny ? 2 : sms * 8, iters = tiny ? 4 : 8192;
  const double fma_ms = median_ms([&] {
    detail::ceiling_fma_kernel<<<blocks, threads, 0, st>>>(static_cast<float*>(dst.data_ptr()),
                                                          iters, 0.9999f, 1e-4f);
    SC_CUDA_CHECK(cudaGetLastError());
  });
  c.f32_tf = 2.0 * 8 * double(iters) * blocks * threads / (fma_ms * 1e-3) / 1e12;

  const int launches = tiny ? 4 : 400;
  const double launch_ms = median_ms([&] {
    for (int i = 0; i < launches; ++i) detail::ceiling_empty_kernel<<<1, 32, 0, st>>>();
    SC_CUDA_CHECK(cudaGetLastError());
  });
  c.launch_us = launch_ms * 1e3 / launches;
  return c;
}

}  // namespace bench
