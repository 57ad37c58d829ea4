// max_pool_ref.cpp: CPU reference of 2-D max pooling (see max_pool.h).
#include <algorithm>
#include <cmath>

#include "kernels/cpu_clones.h"
#include "kernels/max_pool.h"
#include "kernels/parallel.h"

namespace sc {
namespace {
// Element offset of (n, c, h, w) in a dense tensor of spatial size (H, W) and C channels.
inline int64_t offset_of(Layout layout, int64_t n, int64_t c, int64_t h, int64_t w, int64_t C,
                         int64_t H, int64_t W) {
  return layout == Layout::NCHW ? ((n * C + c) * H + h) * W + w : ((n * H + h) * W + w) * C + c;
}
// n outputs of a 3x3 stride-2 pool, window i starting at p + 2 i (rows p, p + xh, p + 2 xh): the
// first maximum in window order, a NaN winning (as below), written for the vectoriser.
template <class T>
SC_CPU_CLONES void pool3x3s2_row(const T* p, int64_t xh, int64_t n, T* y, uint8_t* idx) {
  for (int64_t i = 0; i < n; ++i) {
    const T* w = p + 2 * i;
    T best = w[0];
    uint8_t best_i = 0;
    for (int r = 0; r < 3; ++r)
      for (int s = 0; s < 3; ++s) {
        const T v = w[r * xh + s];
        const bool take = v > best || (v != v && best == best);
        best = take ? v : best;
        best_i = take ? uint8_t(r * 3 + s) : best_i;
      }
    y[i] = best;
    idx[i] = best_i;
  }
}
}  // namespace

template <class T>
void max_pool2d_forward_ref(const Pool2dGeom& g, Layout layout, const T* x, T* y, uint8_t* idx) {
  const int64_t OH = g.OH(), OW = g.OW();
  const bool nchw = layout == Layout::NCHW;
  const int64_t xh = nchw ? g.W : g.W * g.C, xw = nchw ? 1 : g.C;  // element strides of h, w
  const int64_t yh = nchw ? OW : OW * g.C, yw = nchw ? 1 : g.C;
  // ResNet's stem pool (3x3 / 2, NCHW): each output row's windows inside the map go through
  // pool3x3s2_row (the same selection, vectorised; the same bits), the rest through the loop.
  const bool stem = nchw && g.R == 3 && g.S == 3 && g.stride_h == 2 && g.stride_w == 2;
  // split over the (image, channel) planes
  parallel_for(g.N * g.C, grain_for(OH * OW * g.R * g.S), [&](int64_t b, int64_t e) {
    for (int64_t nc = b; nc < e; ++nc) {
      const int64_t n = nc / g.C, c = nc % g.C;
      const T* xp = x + offset_of(layout, n, c, 0, 0, g.C, g.H, g.W);
      const int64_t y0 = offset_of(layout, n, c, 0, 0, g.C, OH, OW);
      for (int64_t oh = 0; oh < OH; ++oh) {
        const int64_t ih0 = oh * g.stride_h - g.pad_h;
        const int64_t r_lo = std::max<int64_t>(0, -ih0), r_hi = std::min(g.R, g.H - ih0);
        for (int64_t ow = 0; ow < OW; ++ow) {
          const int64_t iw0 = ow * g.stride_w - g.pad_w;
          const int64_t s_lo = std::max<int64_t>(0, -iw0), s_hi = std::min(g.S, g.W - iw0);
          if (stem && r_lo == 0 && r_hi == 3 && s_lo == 0 && s_hi == 3) {
            // the run of windows inside the map from here
            int64_t ow1 = ow + 1;
            while (ow1 < OW && ow1 * 2 - g.pad_w + 3 <= g.W) ++ow1;
            const int64_t o = y0 + oh * yh + ow;
            pool3x3s2_row(xp + ih0 * xh + iw0, xh, ow1 - ow, y + o, idx + o);
            ow = ow1 - 1;
            continue;
          }
          // the first maximum in window order; a NaN wins over any number (as in PyTorch)
          T best = -INFINITY;
          int best_i = -1;
          if (r_lo < r_hi && s_lo < s_hi) {
            best = xp[(ih0 + r_lo) * xh + (iw0 + s_lo) * xw];
            best_i = int(r_lo * g.S + s_lo);
          }
          for (int64_t r = r_lo; r < r_hi; ++r) {
            const T* row = xp + (ih0 + r) * xh + iw0 * xw;
            for (int64_t s = s_lo; s < s_hi; ++s) {
              const T v = row[s * xw];
              const bool take = v > best || (v != v && best == best);
              best = take ? v : best;
              best_i = take ? int(r * g.S + s) : best_i;
            }
          }
          const int64_t o = y0 + oh * yh + ow * yw;
          y[o] = best;
          idx[o] = uint8_t(best_i);
        }
      }
    }
  });
}

template <class T>
void max_pool2d_backward_ref(const Pool2dGeom& g, Layout layout, const T* dy, const uint8_t* idx,
                             T* dx) {
  const int64_t OH = g.OH(), OW = g.OW();
  const int64_t numel = g.N * g.C * g.H * g.W;
  parallel_for(numel, grain_for(1), [&](int64_t b, int64_t e) { std::fill(dx + b, dx + e, T(0)); });
  // split over the (image, channel) planes: each writes only its own plane's elements
  parallel_for(g.N * g.C, grain_for(OH * OW * 2), [&](int64_t b, int64_t e) {
    for (int64_t nc = b; nc < e; ++nc) {
      const int64_t n = nc / g.C, c = nc % g.C;
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) {
          const int64_t o = offset_of(layout, n, c, oh, ow, g.C, OH, OW);
          const int64_t r = idx[o] / g.S, s = idx[o] % g.S;
          const int64_t ih = oh * g.stride_h - g.pad_h + r, iw = ow * g.stride_w - g.pad_w + s;
          dx[offset_of(layout, n, c, ih, iw, g.C, g.H, g.W)] += dy[o];
        }
    }
  });
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
