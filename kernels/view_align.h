// view_align.h: SlotCon's "undo the augmentation" step (docs/method.md §3): RoIAlign of each score map
// onto the overlap box of the two crops, output the same size as the input, then a horizontal
// flip where the view's flag is set. torchvision.ops.roi_align(x, rois, (H, W), spatial_scale=1,
// sampling_ratio=-1, aligned=True) followed by flip(-1), as the authors' SlotCon.invaug does.
//
// Shapes: in / out (B, K, H, W) (score maps, row-major), boxes (B, 4) = (x1, y1, x2, y2) in the
// view's normalised coordinates (scaled here by W, H), flips (B) U8 (non-zero = flipped).
//
// Forward, per image b (geometry in T, as torchvision computes it for a T-typed input):
//   start_w = x1 W - 0.5, start_h = y1 H - 0.5, roi_w = (x2 W - 0.5) - start_w, roi_h likewise,
//   bin_w = roi_w / W, bin_h = roi_h / H,
//   grid_w = ceil(roi_w / W), grid_h = ceil(roi_h / H)   (adaptive sampling: 1 for an inside box),
//   count = max(grid_h grid_w, 1);
//   a[b,k,ph,pw] = (1/count) sum_{iy<grid_h, ix<grid_w} bilinear(in[b,k], y, x) with
//   y = start_h + ph bin_h + (iy + 0.5) bin_h / grid_h, x likewise; bilinear() is torchvision's
//   (0 outside [-1, H] x [-1, W], coordinates clamped at 0 and at the last row / column);
//   out[b,k,ph,pw] = a[b,k,ph, flip ? W-1-pw : pw].
// Backward: dL_din[b,k,y,x] = sum of dL_dout over the output samples that read (y, x), each times
//   its bilinear weight / count (the transpose of the forward, a linear map).
// Gradient convention: dL_din is an activation gradient, written (=). Boxes and flips get none.
//
// Requires: B, K, H, W >= 1. Guarantees: every element of out / dL_din written.
// Types: CPU reference for T = float / double (geometry in T, sums in double). CUDA: T = float /
// double; forward one thread per output element, backward one warp per (b, k) plane accumulating in
// shared memory (no atomics to global memory, every element written once).
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

typedef struct CUstream_st* cudaStream_t;

#ifndef SC_HOST_DEVICE
#if defined(__CUDACC__)
#define SC_HOST_DEVICE __host__ __device__
#else
#define SC_HOST_DEVICE
#endif
#endif

namespace sc {

struct ViewAlignShape {
  int64_t B = 0, K = 0, H = 0, W = 0;
};

// A product the CUDA compiler may not fuse with a following add into one FMA. nvcc contracts
// a * b + c by default and the CPU build does not, so a sampling position computed as
// box * W - 0.5 would differ by an ulp between the two, and a bilinear weight with it (at W = 90
// an ulp of the position is ~8e-6 of a pixel: seen on the first H200 run, 2026-12-04).
SC_HOST_DEVICE inline float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
SC_HOST_DEVICE inline double mul_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

// The sampling geometry of one image (shared by the CPU reference and the CUDA kernels so both
// sample exactly the same points: every product that meets an add goes through mul_rn).
template <class T>
struct RoiGeom {
  T start_h, start_w, bin_h, bin_w;
  int grid_h, grid_w;
  T count;
};

template <class T>
SC_HOST_DEVICE inline RoiGeom<T> roi_geom(const T* box, int64_t H, int64_t W) {
  RoiGeom<T> g;
  const T off = T(0.5);
  g.start_w = mul_rn(box[0], T(W)) - off;
  g.start_h = mul_rn(box[1], T(H)) - off;
  const T end_w = mul_rn(box[2], T(W)) - off;
  const T end_h = mul_rn(box[3], T(H)) - off;
  const T roi_w = end_w - g.start_w, roi_h = end_h - g.start_h;  // aligned: no clamp to 1
  g.bin_h = roi_h / T(H);
  g.bin_w = roi_w / T(W);
  g.grid_h = int(ceil(double(roi_h / T(H))));
  g.grid_w = int(ceil(double(roi_w / T(W))));
  if (g.grid_h < 0) g.grid_h = 0;
  if (g.grid_w < 0) g.grid_w = 0;
  const int c = g.grid_h * g.grid_w;
  g.count = T(c > 1 ? c : 1);
  return g;
}

// Bilinear taps of (y, x) on an H x W plane, torchvision's rule: returns false (no taps) outside
// [-1, H] x [-1, W]; else idx[0..3] = (lo,lo), (lo,hi), (hi,lo), (hi,hi) and their weights.
template <class T>
SC_HOST_DEVICE inline bool bilinear_taps(T y, T x, int64_t H, int64_t W, int64_t idx[4], T w[4]) {
  if (y < T(-1) || y > T(H) || x < T(-1) || x > T(W)) return false;
  if (y <= T(0)) y = T(0);
  if (x <= T(0)) x = T(0);
  int64_t y_lo = int64_t(y), x_lo = int64_t(x), y_hi, x_hi;
  if (y_lo >= H - 1) {
    y_hi = y_lo = H - 1;
    y = T(y_lo);
  } else {
    y_hi = y_lo + 1;
  }
  if (x_lo >= W - 1) {
    x_hi = x_lo = W - 1;
    x = T(x_lo);
  } else {
    x_hi = x_lo + 1;
  }
  const T ly = y - T(y_lo), lx = x - T(x_lo), hy = T(1) - ly, hx = T(1) - lx;
  idx[0] = y_lo * W + x_lo;
  idx[1] = y_lo * W + x_hi;
  idx[2] = y_hi * W + x_lo;
  idx[3] = y_hi * W + x_hi;
  w[0] = hy * hx;
  w[1] = hy * lx;
  w[2] = ly * hx;
  w[3] = ly * lx;
  return true;
}

// Sample coordinate iy of output row ph (torchvision's arithmetic order).
template <class T>
SC_HOST_DEVICE inline T roi_sample(T start, int64_t ph, T bin, int iy, int grid) {
  return start + mul_rn(T(ph), bin) + mul_rn(T(T(iy) + T(0.5)), bin) / T(grid);
}

// ---- CPU reference ----
template <class T>
void view_align_forward_ref(const ViewAlignShape& s, const T* in, const T* boxes,
                            const uint8_t* flips, T* out);
template <class T>
void view_align_backward_ref(const ViewAlignShape& s, const T* boxes, const uint8_t* flips,
                             const T* dL_dout, T* dL_din);

}  // namespace sc

// CUDA launchers: declared in every build, defined only in builds with CUDA (reach them through
// engine/dispatch.h, which never calls them in a build without).
namespace sc {

// Asynchronous on `stream`; device pointers; no workspace, no allocation.
template <class T>
void view_align_forward_cuda(const ViewAlignShape& s, const T* in, const T* boxes,
                             const uint8_t* flips, T* out, cudaStream_t stream);
template <class T>
void view_align_backward_cuda(const ViewAlignShape& s, const T* boxes, const uint8_t* flips,
                              const T* dL_dout, T* dL_din, cudaStream_t stream);

}  // namespace sc
