// max_pool_ref.cpp: CPU reference of 2-D max pooling (see max_pool.h).
#include <algorithm>
#include <cmath>

#include "kernels/max_pool.h"

namespace sc {
namespace {
// Element offset of (n, c, h, w) in a dense tensor of spatial size (H, W) and C channels.
inline int64_t offset_of(Layout layout, int64_t n, int64_t c, int64_t h, int64_t w, int64_t C,
                         int64_t H, int64_t W) {
  return layout == Layout::NCHW ? ((n * C + c) * H + h) * W + w : ((n * H + h) * W + w) * C + c;
}
}  // namespace

template <class T>
void max_pool2d_forward_ref(const Pool2dGeom& g, Layout layout, const T* x, T* y, uint8_t* idx) {
  const int64_t OH = g.OH(), OW = g.OW();
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t c = 0; c < g.C; ++c)
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) {
          T best = -INFINITY;
          int best_i = -1;
          for (int64_t r = 0; r < g.R; ++r) {
            const int64_t ih = oh * g.stride_h - g.pad_h + r;
            if (ih < 0 || ih >= g.H) continue;
            for (int64_t s = 0; s < g.S; ++s) {
              const int64_t iw = ow * g.stride_w - g.pad_w + s;
              if (iw < 0 || iw >= g.W) continue;
              const T v = x[offset_of(layout, n, c, ih, iw, g.C, g.H, g.W)];
              if (best_i < 0 || v > best || (std::isnan(v) && !std::isnan(best))) {
                best = v;
                best_i = int(r * g.S + s);
              }
            }
          }
          const int64_t o = offset_of(layout, n, c, oh, ow, g.C, OH, OW);
          y[o] = best;
          idx[o] = uint8_t(best_i);
        }
}

template <class T>
void max_pool2d_backward_ref(const Pool2dGeom& g, Layout layout, const T* dy, const uint8_t* idx,
                             T* dx) {
  const int64_t OH = g.OH(), OW = g.OW();
  std::fill(dx, dx + g.N * g.C * g.H * g.W, T(0));
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t c = 0; c < g.C; ++c)
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) {
          const int64_t o = offset_of(layout, n, c, oh, ow, g.C, OH, OW);
          const int64_t r = idx[o] / g.S, s = idx[o] % g.S;
          const int64_t ih = oh * g.stride_h - g.pad_h + r, iw = ow * g.stride_w - g.pad_w + s;
          dx[offset_of(layout, n, c, ih, iw, g.C, g.H, g.W)] += dy[o];
        }
}

template void max_pool2d_forward_ref<float>(const Pool2dGeom&, Layout, const float*, float*,
                                            uint8_t*);
template void max_pool2d_forward_ref<double>(const Pool2dGeom&, Layout, const double*, double*,
                                             uint8_t*);
template void max_pool2d_backward_ref<float>(const Pool2dGeom&, Layout, const float*,
                                             const uint8_t*, float*);
template void max_pool2d_backward_ref<double>(const Pool2dGeom&, Layout, const double*,
                                              const uint8_t*, double*);

}  // namespace sc
