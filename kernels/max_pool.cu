// max_pool.cu: CUDA 2-D max pooling (see max_pool.h). Forward: one thread per output element.
// Backward: one thread per input element gathers dy from the (at most ceil(R/sh) x ceil(S/sw))
// windows that cover it and whose stored arg-max is this element, so no atomics are needed.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/check.h"
#include "kernels/common.cuh"
#include "kernels/max_pool.h"

namespace sc {
namespace {

using namespace kernels;  // AccOf, load_acc, store, grid_for

struct Dims {
  int64_t N, C, H, W, OH, OW, R, S, sh, sw, ph, pw;
  bool nhwc;
  // Decompose a dense index of a tensor of spatial size (h, w) into (n, c, y, x).
  __device__ __forceinline__ void split(int64_t i, int64_t h, int64_t w, int64_t& n, int64_t& c,
                                        int64_t& y, int64_t& x) const {
    if (nhwc) {
      c = i % C;
      i /= C;
      x = i % w;
      i /= w;
      y = i % h;
      n = i / h;
    } else {
      x = i % w;
      i /= w;
      y = i % h;
      i /= h;
      c = i % C;
      n = i / C;
    }
  }
  __device__ __forceinline__ int64_t at(int64_t n, int64_t c, int64_t y, int64_t x, int64_t h,
                                        int64_t w) const {
    return nhwc ? ((n * h + y) * w + x) * C + c : ((n * C + c) * h + y) * w + x;
  }
};

template <class T>
__global__ void max_pool_forward_kernel(Dims d, const T* x, T* y, uint8_t* idx) {
  using A = typename AccOf<T>::type;
  const int64_t total = d.N * d.C * d.OH * d.OW;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t n, c, oh, ow;
    d.split(i, d.OH, d.OW, n, c, oh, ow);
    A best = 0;
    int best_i = -1;
    for (int64_t r = 0; r < d.R; ++r) {
      const int64_t ih = oh * d.sh - d.ph + r;
      if (ih < 0 || ih >= d.H) continue;
      for (int64_t s = 0; s < d.S; ++s) {
        const int64_t iw = ow * d.sw - d.pw + s;
        if (iw < 0 || iw >= d.W) continue;
        const A v = load_acc(x + d.at(n, c, ih, iw, d.H, d.W));
        if (best_i < 0 || v > best || (isnan(v) && !isnan(best))) {
          best = v;
          best_i = int(r * d.S + s);
        }
      }
    }
    store(y + i, best);
    idx[i] = uint8_t(best_i);
  }
}

template <class T>
__global__ void max_pool_backward_kernel(Dims d, const T* dy, const uint8_t* idx, T* dx) {
  using A = typename AccOf<T>::type;
  const int64_t total = d.N * d.C * d.H * d.W;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t n, c, ih, iw;
    d.split(i, d.H, d.W, n, c, ih, iw);
    // Windows oh with oh*sh - ph <= ih <= oh*sh - ph + R - 1.
    const int64_t oh0 = max(int64_t(0), (ih + d.ph - d.R + d.sh) / d.sh);
    const int64_t oh1 = min(d.OH - 1, (ih + d.ph) / d.sh);
    const int64_t ow0 = max(int64_t(0), (iw + d.pw - d.S + d.sw) / d.sw);
    const int64_t ow1 = min(d.OW - 1, (iw + d.pw) / d.sw);
    A acc = 0;
    for (int64_t oh = oh0; oh <= oh1; ++oh)
      for (int64_t ow = ow0; ow <= ow1; ++ow) {
        const int64_t o = d.at(n, c, oh, ow, d.OH, d.OW);
        const int64_t r = ih - (oh * d.sh - d.ph), s = iw - (ow * d.sw - d.pw);
        if (int64_t(idx[o]) == r * d.S + s) acc += load_acc(dy + o);
      }
    store(dx + i, acc);
  }
}

Dims make_dims(const Pool2dGeom& g, Layout layout) {
  return Dims{g.N,
              g.C,
              g.H,
              g.W,
              g.OH(),
              g.OW(),
              g.R,
              g.S,
              g.stride_h,
              g.stride_w,
              g.pad_h,
              g.pad_w,
              layout == Layout::NHWC};
}

}  // namespace

void max_pool2d_forward_cuda(DType dtype, const Pool2dGeom& g, Layout layout, const void* x,
                             void* y, uint8_t* idx, cudaStream_t stream) {
  SC_KERNEL_REQUIRE(g.valid(), "max_pool2d_forward_cuda", "invalid pooling geometry");
  const Dims d = make_dims(g, layout);
  const int grid = grid_for(g.N * g.C * g.OH() * g.OW(), 256);
  dispatch_float(dtype, "max_pool2d_forward_cuda", [&](auto tv) {
    using T = decltype(tv);
    max_pool_forward_kernel<<<grid, 256, 0, stream>>>(d, static_cast<const T*>(x),
                                                      static_cast<T*>(y), idx);
    SC_TRACE_WORK(double(g.N * g.C) * (double(g.H * g.W) * sizeof(T) +
                                        double(g.OH() * g.OW()) * (sizeof(T) + 1.0)),
                  double(g.N * g.C * g.OH() * g.OW()) * double(g.R * g.S), FP32);
    SC_KERNEL_LAUNCHED("max_pool_forward_kernel");
  });
  SC_KERNEL_LAUNCH_CHECK("max_pool2d_forward_cuda");
}

void max_pool2d_backward_cuda(DType dtype, const Pool2dGeom& g, Layout layout, const void* dy,
                              const uint8_t* idx, void* dx, cudaStream_t stream) {
  SC_KERNEL_REQUIRE(g.valid(), "max_pool2d_backward_cuda", "invalid pooling geometry");
  const Dims d = make_dims(g, layout);
  const int grid = grid_for(g.N * g.C * g.H * g.W, 256);
  dispatch_float(dtype, "max_pool2d_backward_cuda", [&](auto tv) {
    using T = decltype(tv);
    max_pool_backward_kernel<<<grid, 256, 0, stream>>>(d, static_cast<const T*>(dy), idx,
                                                       static_cast<T*>(dx));
    SC_TRACE_WORK(double(g.N * g.C) * (double(g.H * g.W) * sizeof(T) +
                                        double(g.OH() * g.OW()) * (sizeof(T) + 1.0)),
                  double(g.N * g.C * g.H * g.W), FP32);
    SC_KERNEL_LAUNCHED("max_pool_backward_kernel");
  });
  SC_KERNEL_LAUNCH_CHECK("max_pool2d_backward_cuda");
}

}  // namespace sc
