// bench_common.h: what the CUDA benchmarks share: the reference roofline and a timer (CUDA
// events on the engine stream, 3 warm-up calls, an L2 flush — a memset of twice the L2 size —
// before every repeat, the median of the repeats). Include from bench/*.cu only.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <functional>
#include <vector>

#include "engine/cuda/context.h"
#include "engine/tensor.h"

namespace bench {

// An H100 SXM by its datasheet: HBM3 bandwidth, dense BF16 tensor-core and FP32 (non-tensor)
// peaks. Leads only: bench/ceilings.cuh measures the card's own.
constexpr double kPeakGBs = 3350.0;
constexpr double kPeakBf16TF = 989.0;
constexpr double kPeakF32TF = 67.0;

struct Bench {
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  sc::Tensor flush_buf;
  int repeats = 20;

  explicit Bench(int reps) : repeats(reps) {
    stream = sc::cuda::stream(0);
    SC_CUDA_CHECK(cudaEventCreate(&start));
    SC_CUDA_CHECK(cudaEventCreate(&stop));
    int l2 = 0;
    SC_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0));
    flush_buf = sc::empty({std::max<int64_t>(2 * int64_t(l2), 1 << 20)}, sc::DType::U8,
                          sc::Device::cuda(0));
  }
  ~Bench() {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
  }
  Bench(const Bench&) = delete;
  Bench& operator=(const Bench&) = delete;

  void flush_l2() {
    SC_CUDA_CHECK(cudaMemsetAsync(flush_buf.data_ptr(), 0x5a, size_t(flush_buf.numel()), stream));
  }

  // Median milliseconds of fn over the repeats (after 3 warm-up calls).
  double time_ms(const std::function<void()>& fn) {
    for (int i = 0; i < 3; ++i) fn();
    std::vector<float> ms;
    for (int r = 0; r < repeats; ++r) {
      flush_l2();
      SC_CUDA_CHECK(cudaEventRecord(start, stream));
      fn();
      SC_CUDA_CHECK(cudaEventRecord(stop, stream));
      SC_CUDA_CHECK(cudaEventSynchronize(stop));
      float t = 0;
      SC_CUDA_CHECK(cudaEventElapsedTime(&t, start, stop));
      ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
  }
};

}  // namespace bench
