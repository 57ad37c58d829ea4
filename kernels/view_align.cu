// view_align.cu: CUDA view alignment (see view_align.h and docs/kernels/view_align.md).
//
// Forward: one thread per output element (b, k, oy, ox); the sampling geometry of image b is
// recomputed per thread with the same host/device helpers as the CPU reference (a handful of
// flops), then up to 4 * grid_h * grid_w taps are read from the (b, k) plane.
// Backward: the transpose. One warp per (b, k) plane scatters dL_dout * weight / count into a
// shared-memory copy of the plane with shared atomics, then writes the plane out (every element
// written once, no global atomics). Planes too large for 48 KiB of shared memory fall back to
// a zeroed output and global atomics.
#include <cuda_runtime.h>

#include "kernels/check.h"
#include "kernels/common.cuh"
#include "kernels/view_align.h"

namespace sc {
namespace {

using kernels::AccOf;

constexpr int kWarpsPerBlock = 4;
constexpr size_t kMaxSmemBytes = 48 * 1024;  // no opt-in needed below this

template <class T, class A>
__global__ void view_align_forward_kernel(int64_t B, int64_t K, int64_t H, int64_t W, const T* in,
                                          const T* boxes, const uint8_t* flips, T* out) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t HW = H * W;
  if (i >= B * K * HW) return;
  const int64_t plane = i / HW, o = i % HW, b = plane / K;
  const int64_t oy = o / W, ox_out = o % W;
  const bool flip = flips && flips[b] != 0;
  const int64_t ox = flip ? W - 1 - ox_out : ox_out;
  const RoiGeom<T> g = roi_geom(boxes + 4 * b, H, W);
  const T* src = in + plane * HW;
  A acc = 0;
  for (int iy = 0; iy < g.grid_h; ++iy) {
    const T y = roi_sample(g.start_h, oy, g.bin_h, iy, g.grid_h);
    for (int ix = 0; ix < g.grid_w; ++ix) {
      const T x = roi_sample(g.start_w, ox, g.bin_w, ix, g.grid_w);
      int64_t idx[4];
      T w[4];
      if (!bilinear_taps(y, x, H, W, idx, w)) continue;
#pragma unroll
      for (int t = 0; t < 4; ++t) acc += A(w[t]) * A(src[idx[t]]);
    }
  }
  out[i] = T(acc / A(g.count));
}

// Scatter of one output element's gradient into `dst` (shared or global) with atomics.
template <class T, class A>
__device__ __forceinline__ void scatter_one(const RoiGeom<T>& g, int64_t H, int64_t W, int64_t oy,
                                            int64_t ox, A go, A* dst) {
  for (int iy = 0; iy < g.grid_h; ++iy) {
    const T y = roi_sample(g.start_h, oy, g.bin_h, iy, g.grid_h);
    for (int ix = 0; ix < g.grid_w; ++ix) {
      const T x = roi_sample(g.start_w, ox, g.bin_w, ix, g.grid_w);
      int64_t idx[4];
      T w[4];
      if (!bilinear_taps(y, x, H, W, idx, w)) continue;
#pragma unroll
      for (int t = 0; t < 4; ++t) atomicAdd(dst + idx[t], go * A(w[t]));
    }
  }
}

template <class T, class A>
__global__ void view_align_backward_smem_kernel(int64_t B, int64_t K, int64_t H, int64_t W,
                                                const T* boxes, const uint8_t* flips, const T* dout,
                                                T* din) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* sm = reinterpret_cast<A*>(smem_raw);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t plane = int64_t(blockIdx.x) * kWarpsPerBlock + warp;
  const int64_t HW = H * W;
  if (plane >= B * K) return;  // whole warps exit together; no block-wide sync below
  A* acc = sm + int64_t(warp) * HW;
  for (int64_t j = lane; j < HW; j += 32) acc[j] = A(0);
  __syncwarp();
  const int64_t b = plane / K;
  const bool flip = flips && flips[b] != 0;
  const RoiGeom<T> g = roi_geom(boxes + 4 * b, H, W);
  const A inv_count = A(1) / A(g.count);
  const T* gplane = dout + plane * HW;
  for (int64_t o = lane; o < HW; o += 32) {
    const int64_t oy = o / W, ox_out = o % W, ox = flip ? W - 1 - ox_out : ox_out;
    scatter_one<T, A>(g, H, W, oy, ox, A(gplane[o]) * inv_count, acc);
  }
  __syncwarp();
  T* dplane = din + plane * HW;
  for (int64_t j = lane; j < HW; j += 32) dplane[j] = T(acc[j]);
}

template <class T, class A>
__global__ void view_align_backward_global_kernel(int64_t B, int64_t K, int64_t H, int64_t W,
                                                  const T* boxes, const uint8_t* flips,
                                                  const T* dout, A* din) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t HW = H * W;
  if (i >= B * K * HW) return;
  const int64_t plane = i / HW, o = i % HW, b = plane / K;
  const bool flip = flips && flips[b] != 0;
  const int64_t oy = o / W, ox_out = o % W, ox = flip ? W - 1 - ox_out : ox_out;
  const RoiGeom<T> g = roi_geom(boxes + 4 * b, H, W);
  scatter_one<T, A>(g, H, W, oy, ox, A(dout[i]) / A(g.count), din + plane * HW);
}

void check_args(const ViewAlignShape& s, const char* what) {
  SC_KERNEL_REQUIRE(s.B >= 1 && s.K >= 1 && s.H >= 1 && s.W >= 1, what, "empty shape");
}

}  // namespace

template <class T>
void view_align_forward_cuda(const ViewAlignShape& s, const T* in, const T* boxes,
                             const uint8_t* flips, T* out, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  const char* what = "view_align_forward_cuda";
  check_args(s, what);
  const int64_t n = s.B * s.K * s.H * s.W;
  view_align_forward_kernel<T, A>
      <<<unsigned((n + 255) / 256), 256, 0, stream>>>(s.B, s.K, s.H, s.W, in, boxes, flips, out);
  SC_TRACE_WORK(2.0 * double(n) * sizeof(T), 10 * n, FP32);
  SC_KERNEL_LAUNCHED(what);
}

template <class T>
void view_align_backward_cuda(const ViewAlignShape& s, const T* boxes, const uint8_t* flips,
                              const T* dL_dout, T* dL_din, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  const char* what = "view_align_backward_cuda";
  check_args(s, what);
  const int64_t HW = s.H * s.W, planes = s.B * s.K;
  const size_t smem = sizeof(A) * size_t(HW) * kWarpsPerBlock;
  if (smem <= kMaxSmemBytes) {
    view_align_backward_smem_kernel<T, A>
        <<<unsigned((planes + kWarpsPerBlock - 1) / kWarpsPerBlock), 32 * kWarpsPerBlock, smem,
           stream>>>(s.B, s.K, s.H, s.W, boxes, flips, dL_dout, dL_din);
    SC_TRACE_WORK(2.0 * double(planes * HW) * sizeof(T), 10 * planes * HW, FP32);
    SC_KERNEL_LAUNCHED("view_align_backward_smem_kernel");
  } else {
    // Large planes: accumulate in the output itself (T = A for both instantiations).
    static_assert(sizeof(A) == sizeof(T), "the global fallback accumulates in T");
    if (cudaMemsetAsync(dL_din, 0, sizeof(T) * size_t(planes * HW), stream) != cudaSuccess)
      kernels::fail(what, "cudaMemsetAsync failed");
    SC_TRACE_WORK(double(planes * HW) * sizeof(T), 0, Memory);
    kernels::note_memory_op("cudaMemsetAsync (view_align)");
    const int64_t n = planes * HW;
    view_align_backward_global_kernel<T, A><<<unsigned((n + 255) / 256), 256, 0, stream>>>(
        s.B, s.K, s.H, s.W, boxes, flips, dL_dout, reinterpret_cast<A*>(dL_din));
    SC_TRACE_WORK(3.0 * double(n) * sizeof(T), 10 * n, FP32);
    SC_KERNEL_LAUNCHED("view_align_backward_global_kernel");
  }
  SC_KERNEL_LAUNCH_CHECK(what);
}

#define SC_INSTANTIATE(T)                                                                    \
  template void view_align_forward_cuda<T>(const ViewAlignShape&, const T*, const T*,        \
                                           const uint8_t*, T*, cudaStream_t);                \
  template void view_align_backward_cuda<T>(const ViewAlignShape&, const T*, const uint8_t*, \
                                            const T*, T*, cudaStream_t);
SC_INSTANTIATE(float)
SC_INSTANTIATE(double)
#undef SC_INSTANTIATE

}  // namespace sc
