// max_pool.h: 2-D max pooling (PyTorch's MaxPool2d, dilation 1, floor mode), e.g. ResNet's stem
// pool: kernel 3x3, stride 2, padding 1.
//
// Maths: y[n, c, oh, ow] = max over r < R, s < S of x[n, c, oh*sh - ph + r, ow*sw - pw + s], the
// padding reading -infinity. idx[n, c, oh, ow] = r*S + s of the first maximum in row-major window
// order (a NaN counts as the maximum, as in PyTorch), stored as one byte (R*S <= 255).
// Backward: dx[n, c, ih, iw] = sum over the windows whose arg-max is (ih, iw) of dy (written).
// Shapes: x, dx (N, C, H, W); y, dy, idx (N, C, OH, OW), OH = (H + 2 ph - R) / sh + 1, likewise
// OW. Requires ph <= R / 2 and pw <= S / 2 (every window overlaps the input).
// Layouts: all tensors dense in the same Layout (NCHW or NHWC; idx follows it).
// Types: CPU float / double; CUDA F32, F64, BF16, F16 (max is exact; the backward sums in float,
// double for F64).
#pragma once
#include <cstdint>

#include "kernels/conv2d.h"  // Layout

namespace sc {

struct Pool2dGeom {
  int64_t N = 0, C = 0, H = 0, W = 0;
  int64_t R = 3, S = 3, stride_h = 2, stride_w = 2, pad_h = 1, pad_w = 1;
  int64_t OH() const { return (H + 2 * pad_h - R) / stride_h + 1; }
  int64_t OW() const { return (W + 2 * pad_w - S) / stride_w + 1; }
  bool valid() const {
    return N > 0 && C > 0 && H > 0 && W > 0 && R > 0 && S > 0 && R * S <= 255 && stride_h > 0 &&
           stride_w > 0 && pad_h >= 0 && pad_w >= 0 && 2 * pad_h <= R && 2 * pad_w <= S &&
           H + 2 * pad_h >= R && W + 2 * pad_w >= S;
  }
};

template <class T>
void max_pool2d_forward_ref(const Pool2dGeom& g, Layout layout, const T* x, T* y, uint8_t* idx);
template <class T>
void max_pool2d_backward_ref(const Pool2dGeom& g, Layout layout, const T* dy, const uint8_t* idx,
                             T* dx);

}  // namespace sc

// CUDA launchers: declared in every build, defined only in builds with CUDA (reach them through
// engine/dispatch.h, which never calls them in a build without).
#include "kernels/dtype.h"
namespace sc {
void max_pool2d_forward_cuda(DType dtype, const Pool2dGeom& g, Layout layout, const void* x,
                             void* y, uint8_t* idx, cudaStream_t stream);
void max_pool2d_backward_cuda(DType dtype, const Pool2dGeom& g, Layout layout, const void* dy,
                              const uint8_t* idx, void* dx, cudaStream_t stream);
}  // namespace sc
