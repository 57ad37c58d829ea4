// bench_conv: convolution forward and backward through the engine (sc::conv2d + autograd) against
// the same cuDNN calls made directly (a CudnnConvPlan with preallocated workspaces), for the
// convolutions of ResNet-50 at batch 64, BF16 NHWC (and F32 NCHW with --f32). The engine's
// overhead (argument checks, allocation from the caching allocator, plan lookup, the tape)
// should be near zero for these sizes.
//
// Timing: warm-up, CUDA events on the engine stream, an L2 flush (a 256 MiB memset) before every
// repeat, the median of the repeats. Prints ms and TFLOP/s beside the card's dense peak, and under
// each layer what the engine's forward + backward issued (names, counts, the bytes each issuer
// estimated), which the emulator prints too (SLOTCON_EMU_DRY_RUN=1: counted, not computed).
#include <cuda_runtime.h>
#include <cudnn.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/cuda/context.h"
#include "engine/cuda_runtime.h"
#include "engine/nn_ops.h"
#include "engine/ops.h"
#include "kernels/check.h"
#include "kernels/conv2d.h"

using namespace sc;

namespace {

struct Shape4 {
  const char* name;
  int64_t N, C, H, W, K, R, stride, pad;
};

double peak_tflops(const std::string& dev, DType dt) {
  const bool half = dt == DType::BF16 || dt == DType::F16;
  if (dev.find("H100") != std::string::npos || dev.find("H200") != std::string::npos)
    return half ? 989.0 : 67.0;  // dense tensor-core BF16 / FP32 (SXM)
  if (dev.find("A100") != std::string::npos) return half ? 312.0 : 19.5;
  return 0.0;
}

class Timer {
 public:
  explicit Timer(cudaStream_t s) : s_(s) {
    cudaEventCreate(&a_);
    cudaEventCreate(&b_);
    cudaMalloc(&flush_, kFlush);
  }
  ~Timer() {
    cudaEventDestroy(a_);
    cudaEventDestroy(b_);
    cudaFree(flush_);
  }
  template <class F>
  double median_ms(F&& f, int warmup = 3, int reps = 30) {
    for (int i = 0; i < warmup; ++i) f();
    std::vector<float> t;
    for (int i = 0; i < reps; ++i) {
      cudaMemsetAsync(flush_, i & 0xff, kFlush, s_);  // evict the inputs from L2
      cudaEventRecord(a_, s_);
      f();
      cudaEventRecord(b_, s_);
      cudaEventSynchronize(b_);
      float ms = 0;
      cudaEventElapsedTime(&ms, a_, b_);
      t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  }

 private:
  static constexpr size_t kFlush = size_t(256) << 20;
  cudaStream_t s_;
  cudaEvent_t a_, b_;
  void* flush_ = nullptr;
};

// The stream operations one call of f issues, by name and count, in the order first seen.
template <class F>
std::string issued(F&& f) {
  kernels::start_trace();
  f();
  const std::vector<kernels::IssueRecord> recs = kernels::stop_trace();
  std::vector<std::pair<std::string, int>> seen;
  for (const kernels::IssueRecord& r : recs) {
    char mb[48] = "";
    if (r.has_work && r.bytes > 0) std::snprintf(mb, sizeof mb, " (%.1f MB)", r.bytes / 1e6);
    const std::string name = r.name + mb;
    auto it = std::find_if(seen.begin(), seen.end(), [&](const auto& p) { return p.first == name; });
    if (it == seen.end())
      seen.emplace_back(name, 1);
    else
      ++it->second;
  }
  std::string out;
  for (const auto& p : seen)
    out += " " + p.first + (p.second > 1 ? " x" + std::to_string(p.second) : "") + ";";
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (!cuda_available()) {
    std::printf("bench_conv: no CUDA device present, nothing to measure\n");
    return 0;
  }
  const bool f32 = argc > 1 && std::strcmp(argv[1], "--f32") == 0;
  const DType dt = f32 ? DType::F32 : DType::BF16;
  const bool nhwc = !f32;
  const std::string dev = cuda_device_name(0);
  const double peak = peak_tflops(dev, dt);
  std::printf("bench_conv on %s, %s %s, batch 64 (peak %.0f TFLOP/s dense)\n", dev.c_str(),
              dtype_name(dt), nhwc ? "NHWC" : "NCHW", peak);
  std::printf("%-22s %10s %10s %9s | %10s %10s %9s | %8s\n", "conv", "eng fwd", "cudnn fwd",
              "TFLOP/s", "eng f+b", "cudnn f+b", "TFLOP/s", "overhead");
  const std::vector<Shape4> shapes = {
      {"stem 7x7/2 3->64", 64, 3, 224, 224, 64, 7, 2, 3},
      {"l1 1x1 64->64", 64, 64, 56, 56, 64, 1, 1, 0},
      {"l1 3x3 64->64", 64, 64, 56, 56, 64, 3, 1, 1},
      {"l1 1x1 64->256", 64, 64, 56, 56, 256, 1, 1, 0},
      {"l2 3x3/2 128->128", 64, 128, 56, 56, 128, 3, 2, 1},
      {"l2 ds 1x1/2 256->512", 64, 256, 56, 56, 512, 1, 2, 0},
      {"l3 3x3 256->256", 64, 256, 14, 14, 256, 3, 1, 1},
      {"l4 3x3 512->512", 64, 512, 7, 7, 512, 3, 1, 1},
      {"l4 1x1 512->2048", 64, 512, 7, 7, 2048, 1, 1, 0},
  };
  cudaStream_t st = cuda::stream(0);
  cudnnHandle_t h;
  cudnnCreate(&h);
  cudnnSetStream(h, st);
  Timer timer(st);
  Generator gen(1);
  const Device cu = Device::cuda(0);
  const MemoryFormat fmt = nhwc ? MemoryFormat::ChannelsLast : MemoryFormat::Contiguous;
  for (const Shape4& s : shapes) {
    Conv2dGeom g;
    g.N = s.N, g.C = s.C, g.H = s.H, g.W = s.W, g.K = s.K, g.R = g.S = s.R;
    g.stride_h = g.stride_w = s.stride, g.pad_h = g.pad_w = s.pad;
    Tensor x = randn({g.N, g.C, g.H, g.W}, gen, dt, cu).contiguous(fmt);
    Tensor w = (randn({g.K, g.C, g.R, g.S}, gen, dt, cu) * 0.05).contiguous(fmt);
    Tensor dy = randn({g.N, g.K, g.OH(), g.OW()}, gen, dt, cu).contiguous(fmt);
    Tensor xr = x.detach().set_requires_grad(true), wr = w.detach().set_requires_grad(true);
    // Engine: forward under no-grad; forward + backward with the tape.
    auto eng_fwd = [&] {
      NoGradGuard ng;
      Tensor y = conv2d(x, w, Tensor(), s.stride, s.pad);
    };
    auto eng_fb = [&] {
      xr.set_grad(Tensor());
      wr.set_grad(Tensor());
      Tensor y = conv2d(xr, wr, Tensor(), s.stride, s.pad);
      y.backward(dy);
    };
    // Direct: one plan, algorithms selected once, workspaces preallocated.
    CudnnConvPlan plan(g, nhwc ? Layout::NHWC : Layout::NCHW, dt, conv_allow_tf32());
    Tensor y = empty({g.N, g.K, g.OH(), g.OW()}, dt, cu, fmt);
    Tensor dx = empty_like(x), dw = empty_like(w);
    void* find_ws = nullptr;
    const size_t find_bytes = size_t(512) << 20;
    cudaMalloc(&find_ws, find_bytes);
    plan.select_forward(h, x.data_ptr(), w.data_ptr(), y.data_ptr(), find_ws, find_bytes);
    plan.select_backward_data(h, dy.data_ptr(), w.data_ptr(), dx.data_ptr(), find_ws, find_bytes);
    plan.select_backward_weight(h, x.data_ptr(), dy.data_ptr(), dw.data_ptr(), find_ws, find_bytes);
    auto dir_fwd = [&] {
      plan.forward(h, x.data_ptr(), w.data_ptr(), y.data_ptr(), find_ws, find_bytes);
    };
    auto dir_fb = [&] {
      dir_fwd();
      plan.backward_data(h, dy.data_ptr(), w.data_ptr(), dx.data_ptr(), find_ws, find_bytes);
      plan.backward_weight(h, x.data_ptr(), dy.data_ptr(), dw.data_ptr(), false, find_ws,
                           find_bytes);
    };
    const double flop = 2.0 * double(g.N * g.K * g.OH() * g.OW()) * double(g.C * g.R * g.S);
    const double ef = timer.median_ms(eng_fwd), df = timer.median_ms(dir_fwd);
    const double eb = timer.median_ms(eng_fb), db = timer.median_ms(dir_fb);
    std::printf("%-22s %8.3fms %8.3fms %9.1f | %8.3fms %8.3fms %9.1f | %+7.1f%%\n", s.name, ef, df,
                flop / (df * 1e9), eb, db, 3 * flop / (db * 1e9), 100.0 * (eb - db) / db);
    // What the engine's forward + backward issues beyond the three cuDNN calls (counted, so that
    // the overhead column can be read without a profiler; the emulator prints it too)
    std::printf("  engine f+b issues:%s\n", issued(eng_fb).c_str());
    cudaFree(find_ws);
  }
  cudnnDestroy(h);
  return 0;
}
