#include "model/view_align.h"

#include <cmath>

#include "engine/ops.h"

namespace sc {
namespace {

// Bilinear weights of point (y, x) on an h x w map, as torchvision's roi_align computes them:
// points more than one pixel outside contribute nothing, others are clamped to the border.
void add_bilinear(std::vector<double>& row, double y, double x, int h, int w, double scale) {
  if (y < -1.0 || y > h || x < -1.0 || x > w) return;
  y = std::max(y, 0.0);
  x = std::max(x, 0.0);
  int y0 = int(y), x0 = int(x), y1, x1;
  if (y0 >= h - 1) {
    y1 = y0 = h - 1;
    y = y0;
  } else {
    y1 = y0 + 1;
  }
  if (x0 >= w - 1) {
    x1 = x0 = w - 1;
    x = x0;
  } else {
    x1 = x0 + 1;
  }
  const double ly = y - y0, lx = x - x0, hy = 1 - ly, hx = 1 - lx;
  row[size_t(y0 * w + x0)] += scale * hy * hx;
  row[size_t(y0 * w + x1)] += scale * hy * lx;
  row[size_t(y1 * w + x0)] += scale * ly * hx;
  row[size_t(y1 * w + x1)] += scale * ly * lx;
}

}  // namespace

std::vector<double> roi_align_matrix(double x1, double y1, double x2, double y2, bool flip, int h,
                                     int w) {
  const int P = h * w;
  std::vector<double> M(size_t(P) * size_t(P), 0.0);
  // aligned=True: half-pixel offset; the box is scaled by the map size.
  const double sx = x1 * w - 0.5, sy = y1 * h - 0.5;
  const double rw = (x2 - x1) * w, rh = (y2 - y1) * h;
  const double bw = rw / w, bh = rh / h;
  const int gw = int(std::ceil(rw / w)), gh = int(std::ceil(rh / h));
  const double count = std::max(gw * gh, 1);
  std::vector<double> row(static_cast<size_t>(P));
  for (int oy = 0; oy < h; ++oy)
    for (int ox = 0; ox < w; ++ox) {
      std::fill(row.begin(), row.end(), 0.0);
      for (int iy = 0; iy < gh; ++iy) {
        const double y = sy + oy * bh + (iy + 0.5) * bh / gh;
        for (int ix = 0; ix < gw; ++ix) {
          const double x = sx + ox * bw + (ix + 0.5) * bw / gw;
          add_bilinear(row, y, x, h, w, 1.0 / count);
        }
      }
      const int out_x = flip ? w - 1 - ox : ox;
      std::copy(row.begin(), row.end(), M.begin() + int64_t(oy * w + out_x) * P);
    }
  return M;
}

Tensor view_align_matrices(const Tensor& coords, const Tensor& flags, int h, int w, DType dtype,
                           Device device) {
  SC_CHECK(coords.dim() == 2 && coords.size(1) == 4, "view alignment: coords must be (B, 4), got ",
           shape_str(coords.shape()));
  const int64_t B = coords.size(0);
  SC_CHECK(flags.shape() == Shape({B}), "view alignment: flags must be (", B, "), got ",
           shape_str(flags.shape()));
  std::vector<double> c = coords.to_vector(), f = flags.to_vector();
  const int64_t P = int64_t(h) * w;
  std::vector<double> all;
  all.reserve(size_t(B * P * P));
  for (int64_t b = 0; b < B; ++b) {
    std::vector<double> M = roi_align_matrix(c[size_t(4 * b)], c[size_t(4 * b + 1)],
                                             c[size_t(4 * b + 2)], c[size_t(4 * b + 3)],
                                             f[size_t(b)] != 0, h, w);
    all.insert(all.end(), M.begin(), M.end());
  }
  return from_vector(all, {B, P, P}, dtype, device);
}

}  // namespace sc
