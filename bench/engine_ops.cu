// bench_engine_ops: the engine's CUDA backend through the front door (engine/ops.h).
//
// elementwise add (F32, BF16), softmax over rows, sum over rows, and a 4096^3 GEMM (BF16, F32),
// each beside a baseline measured in the same run: a device-to-device cudaMemcpy of the same
// bytes for the memory-bound ops (the achievable bandwidth), the unfused exp/sum/div composition
// for softmax. Timing: CUDA events on the engine stream, warm-up, an L2 flush (a memset of twice
// the L2 size) before every repeat, the median of the repeats. The reference roofline printed is
// an H100 SXM's (3350 GB/s HBM3, 989 TFLOP/s dense BF16, 67 TFLOP/s FP32); the card used is named.
//
// Usage: bench_engine_ops [repeats]   (default 20)
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "bench/bench_common.h"
#include "engine/autograd.h"
#include "engine/cuda/context.h"
#include "engine/cuda_runtime.h"
#include "engine/ops.h"

namespace {

using namespace sc;

using namespace bench;  // kPeak*, Bench

void report_bw(const char* what, double ms, double bytes) {
  const double gbs = bytes / (ms * 1e-3) / 1e9;
  std::printf("  %-46s %9.3f ms %9.1f GB/s  (%5.1f%% of %.0f GB/s)\n", what, ms, gbs,
              100.0 * gbs / kPeakGBs, kPeakGBs);
}
void report_tf(const char* what, double ms, double flops, double peak) {
  const double tf = flops / (ms * 1e-3) / 1e12;
  std::printf("  %-46s %9.3f ms %9.1f TFLOP/s (%5.1f%% of %.0f TFLOP/s)\n", what, ms, tf,
              100.0 * tf / peak, peak);
}

}  // namespace

int main(int argc, char** argv) {
  if (!sc::cuda_available()) {
    std::printf("bench_engine_ops: no CUDA device present, nothing to measure\n");
    return 0;
  }
  const int repeats = argc > 1 ? std::max(1, std::atoi(argv[1])) : 20;
  try {
    NoGradGuard no_grad;
    Bench b(repeats);
    const Device dev = Device::cuda(0);
    Generator gen(42);
    std::printf("bench_engine_ops on %s, median of %d repeats, L2 flushed\n",
                cuda_device_name(0).c_str(), repeats);

    // ---- elementwise add ----
    {
      const int64_t n = int64_t(1) << 26;  // 64 Mi elements
      std::printf("elementwise add, %lld elements\n", (long long)n);
      for (DType dt : {DType::F32, DType::BF16}) {
        // Values do not change the timing of these ops; full() avoids a slow host fill.
        Tensor x = full({n}, 0.5, dt, dev), y = full({n}, -0.25, dt, dev);
        Tensor out = empty({n}, dt, dev);
        const double es = double(dtype_size(dt));
        double ms = b.time_ms([&] { Tensor z = add(x, y); });
        report_bw(dt == DType::F32 ? "add F32 (read 2, write 1)" : "add BF16 (read 2, write 1)", ms,
                  3 * es * double(n));
        ms = b.time_ms([&] { axpby_(out, 1.0, x, 1.0); });
        report_bw(dt == DType::F32 ? "add_ F32 in place" : "add_ BF16 in place", ms,
                  3 * es * double(n));
        ms = b.time_ms([&] {
          SC_CUDA_CHECK(cudaMemcpyAsync(out.data_ptr(), x.data_ptr(), size_t(n * es),
                                        cudaMemcpyDeviceToDevice, b.stream));
        });
        report_bw("baseline: cudaMemcpy D2D (read 1, write 1)", ms, 2 * es * double(n));
      }
      // Broadcast bias add on an NHWC activation (the strided path).
      Tensor act = empty({64, 256, 56, 56}, DType::BF16, dev, MemoryFormat::ChannelsLast);
      fill_(act, 0.5);
      Tensor bias = rand_uniform({256, 1, 1}, gen, -1, 1, DType::BF16, dev);
      double ms = b.time_ms([&] { Tensor z = add(act, bias); });
      report_bw("add BF16 NHWC (64,256,56,56) + bias (256,1,1)", ms, 2 * 2.0 * double(act.numel()));
    }

    // ---- softmax and sum over rows ----
    {
      const int64_t R = 8192, C = 4096;
      std::printf("rows: (%lld, %lld) F32\n", (long long)R, (long long)C);
      Tensor x = rand_uniform({R, C}, gen, -3, 3, DType::F32, dev);
      const double bytes = 4.0 * double(R * C);
      double ms = b.time_ms([&] { Tensor y = softmax(x, 1); });
      report_bw("softmax (read 1, write 1)", ms, 2 * bytes);
      ms = b.time_ms([&] {
        Tensor e = exp(x);
        Tensor y = div(e, sum(e, {1}, true));
      });
      report_bw("unfused baseline: exp, sum, div", ms, 2 * bytes);
      ms = b.time_ms([&] { Tensor y = log_softmax(x, 1); });
      report_bw("log_softmax", ms, 2 * bytes);
      ms = b.time_ms([&] { Tensor s = sum(x, {1}); });
      report_bw("sum over rows (read 1)", ms, bytes);
      ms = b.time_ms([&] { Tensor s = sum(x, {0}); });
      report_bw("sum over columns (transpose copy + rows)", ms, bytes);
      Tensor flat = reshape(x, {1, R * C});
      ms = b.time_ms([&] { Tensor s = sum(flat); });
      report_bw("sum of everything (one row, split over blocks)", ms, bytes);
      Tensor out = empty({R, C}, DType::F32, dev);
      ms = b.time_ms([&] {
        SC_CUDA_CHECK(cudaMemcpyAsync(out.data_ptr(), x.data_ptr(), size_t(bytes),
                                      cudaMemcpyDeviceToDevice, b.stream));
      });
      report_bw("baseline: cudaMemcpy D2D (read 1, write 1)", ms, 2 * bytes);
    }

    // ---- GEMM ----
    {
      const int64_t n = 4096;
      std::printf("gemm %lld^3\n", (long long)n);
      const double flops = 2.0 * double(n) * double(n) * double(n);
      for (DType dt : {DType::BF16, DType::F32}) {
        Tensor a = rand_uniform({n, n}, gen, -1, 1, dt, dev);
        Tensor w = rand_uniform({n, n}, gen, -1, 1, dt, dev);
        double ms = b.time_ms([&] { Tensor c = matmul(a, w); });
        report_tf(dt == DType::BF16 ? "matmul BF16 (FP32 accumulate)" : "matmul F32 (no TF32)", ms,
                  flops, dt == DType::BF16 ? kPeakBf16TF : kPeakF32TF);
        ms = b.time_ms([&] { Tensor c = matmul(a, transpose(w, 0, 1)); });
        report_tf(dt == DType::BF16 ? "matmul BF16 A B^T (linear layout)" : "matmul F32 A B^T", ms,
                  flops, dt == DType::BF16 ? kPeakBf16TF : kPeakF32TF);
      }
    }
    const AllocatorStats s = cuda_allocator_stats(0);
    std::printf("allocator: %zu B allocated, %zu B reserved, peak %zu B, %llu cudaMalloc calls\n",
                s.allocated_bytes, s.reserved_bytes, s.peak_allocated_bytes,
                (unsigned long long)s.device_malloc_calls);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_engine_ops: %s\n", e.what());
    return 1;
  }
  return 0;
}
