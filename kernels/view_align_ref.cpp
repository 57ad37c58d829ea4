// view_align_ref.cpp: CPU reference of the view alignment (see view_align.h).
#include <algorithm>
#include <vector>

#include "kernels/check.h"
#include "kernels/view_align.h"

namespace sc {
namespace {

void check_shape(const ViewAlignShape& s, const char* what) {
  SC_KERNEL_REQUIRE(s.B >= 1 && s.K >= 1 && s.H >= 1 && s.W >= 1, what, "empty shape");
}

}  // namespace

template <class T>
void view_align_forward_ref(const ViewAlignShape& s, const T* in, const T* boxes,
                            const uint8_t* flips, T* out) {
  check_shape(s, "view_align_forward_ref");
  const int64_t H = s.H, W = s.W, HW = H * W;
  for (int64_t b = 0; b < s.B; ++b) {
    const RoiGeom<T> g = roi_geom(boxes + 4 * b, H, W);
    const bool flip = flips && flips[b] != 0;
    for (int64_t k = 0; k < s.K; ++k) {
      const T* plane = in + (b * s.K + k) * HW;
      T* oplane = out + (b * s.K + k) * HW;
      for (int64_t ph = 0; ph < H; ++ph)
        for (int64_t pw = 0; pw < W; ++pw) {
          double acc = 0;
          for (int iy = 0; iy < g.grid_h; ++iy) {
            const T y = roi_sample(g.start_h, ph, g.bin_h, iy, g.grid_h);
            for (int ix = 0; ix < g.grid_w; ++ix) {
              const T x = roi_sample(g.start_w, pw, g.bin_w, ix, g.grid_w);
              int64_t idx[4];
              T w[4];
              if (!bilinear_taps(y, x, H, W, idx, w)) continue;
              for (int t = 0; t < 4; ++t) acc += double(w[t]) * double(plane[idx[t]]);
            }
          }
          oplane[ph * W + (flip ? W - 1 - pw : pw)] = T(acc / double(g.count));
        }
    }
  }
}

template <class T>
void view_align_backward_ref(const ViewAlignShape& s, const T* boxes, const uint8_t* flips,
                             const T* dL_dout, T* dL_din) {
  check_shape(s, "view_align_backward_ref");
  const int64_t H = s.H, W = s.W, HW = H * W;
  std::vector<double> acc(static_cast<size_t>(HW));
  for (int64_t b = 0; b < s.B; ++b) {
    const RoiGeom<T> g = roi_geom(boxes + 4 * b, H, W);
    const bool flip = flips && flips[b] != 0;
    for (int64_t k = 0; k < s.K; ++k) {
      const T* gplane = dL_dout + (b * s.K + k) * HW;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t ph = 0; ph < H; ++ph)
        for (int64_t pw = 0; pw < W; ++pw) {
          const double go = double(gplane[ph * W + (flip ? W - 1 - pw : pw)]) / double(g.count);
          for (int iy = 0; iy < g.grid_h; ++iy) {
            const T y = roi_sample(g.start_h, ph, g.bin_h, iy, g.grid_h);
            for (int ix = 0; ix < g.grid_w; ++ix) {
              const T x = roi_sample(g.start_w, pw, g.bin_w, ix, g.grid_w);
              int64_t idx[4];
              T w[4];
              if (!bilinear_taps(y, x, H, W, idx, w)) continue;
              for (int t = 0; t < 4; ++t) acc[size_t(idx[t])] += go * double(w[t]);
            }
          }
        }
      T* dplane = dL_din + (b * s.K + k) * HW;
      for (int64_t i = 0; i < HW; ++i) dplane[i] = T(acc[size_t(i)]);
    }
  }
}

#define SC_INSTANTIATE(T)                                                                   \
  template void view_align_forward_ref<T>(const ViewAlignShape&, const T*, const T*,        \
                                          const uint8_t*, T*);                              \
  template void view_align_backward_ref<T>(const ViewAlignShape&, const T*, const uint8_t*, \
                                           const T*, T*);
SC_INSTANTIATE(float)
SC_INSTANTIATE(double)
#undef SC_INSTANTIATE

}  // namespace sc
