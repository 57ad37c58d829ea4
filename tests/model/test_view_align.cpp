// View alignment as a linear map: identity for the full box, flips, partition of unity, and the
// geometry of RoIAlign (aligned=True) checked on a linear ramp, where bilinear sampling is exact.
#include <catch2/catch.hpp>

#include "engine/ops.h"
#include "model/view_align.h"

using namespace sc;

TEST_CASE("view alignment: full box is the identity, flip mirrors columns") {
  const int h = 3, w = 5, P = h * w;
  std::vector<double> I = roi_align_matrix(0, 0, 1, 1, false, h, w);
  std::vector<double> F = roi_align_matrix(0, 0, 1, 1, true, h, w);
  for (int p = 0; p < P; ++p)
    for (int q = 0; q < P; ++q) {
      CHECK(I[size_t(p * P + q)] == Approx(p == q ? 1.0 : 0.0).margin(1e-12));
      const int py = p / w, px = p % w;
      const int mirrored = py * w + (w - 1 - px);
      CHECK(F[size_t(p * P + q)] == Approx(q == mirrored ? 1.0 : 0.0).margin(1e-12));
    }
}

TEST_CASE("view alignment: sample positions follow RoIAlign aligned=True") {
  const int h = 7, w = 7, P = h * w;
  const double x1 = 0.2, y1 = 0.1, x2 = 0.75, y2 = 0.9;
  std::vector<double> M = roi_align_matrix(x1, y1, x2, y2, false, h, w);
  for (int p = 0; p < P; ++p) {
    double s = 0, ex = 0, ey = 0;
    for (int q = 0; q < P; ++q) {
      s += M[size_t(p * P + q)];
      ex += M[size_t(p * P + q)] * (q % w);  // ramp in x
      ey += M[size_t(p * P + q)] * (q / w);  // ramp in y
    }
    CHECK(s == Approx(1.0));  // box inside the map: weights sum to one
    const int oy = p / w, ox = p % w;
    // one sample per bin (box smaller than the map), at the bin centre, half-pixel offset
    const double x = x1 * w - 0.5 + (ox + 0.5) * (x2 - x1);
    const double y = y1 * h - 0.5 + (oy + 0.5) * (y2 - y1);
    CHECK(ex == Approx(std::min(std::max(x, 0.0), w - 1.0)).margin(1e-12));
    CHECK(ey == Approx(std::min(std::max(y, 0.0), h - 1.0)).margin(1e-12));
  }
}

TEST_CASE("view alignment: a point of the overlap lands on the same pixel in both views") {
  // Two views of one 1-D "image" of 100 pixels: view 1 shows [10, 70), view 2 shows [40, 100)
  // flipped. Their overlap [40, 70) is (0.5, 1.0) in view 1 and (0.0, 0.5) in view 2 before its
  // flip, i.e. (1 - 0.5, 1 - 0.0) = (0.5, 1.0) in the flipped view's own coordinates.
  const int h = 1, w = 8;
  std::vector<double> M1 = roi_align_matrix(0.5, 0, 1.0, 1, false, h, w);
  std::vector<double> M2 = roi_align_matrix(0.5, 0, 1.0, 1, true, h, w);
  // source x of view pixel q: view 1: 10 + (q + 0.5) * 60 / w; view 2 (flipped): 100 - (q + 0.5) * 60 / w
  for (int p = 0; p < w; ++p) {
    double s1 = 0, s2 = 0;
    for (int q = 0; q < w; ++q) {
      s1 += M1[size_t(p * w + q)] * (10 + (q + 0.5) * 60.0 / w);
      s2 += M2[size_t(p * w + q)] * (100 - (q + 0.5) * 60.0 / w);
    }
    if (p > 0 && p < w - 1) CHECK(s1 == Approx(s2).margin(1e-9));  // interior: exact
  }
}

TEST_CASE("view alignment: batch matrices validate their inputs") {
  Tensor coords = from_vector({0, 0, 1, 1, 0.2, 0.2, 0.6, 0.9}, {2, 4});
  Tensor flags = from_vector({0, 1}, {2}, DType::U8);
  Tensor M = view_align_matrices(coords, flags, 2, 3, DType::F64, Device::cpu());
  CHECK(M.shape() == Shape{2, 6, 6});
  CHECK_THROWS_AS(view_align_matrices(coords, from_vector({0}, {1}, DType::U8), 2, 3, DType::F64,
                                      Device::cpu()),
                  Error);
}
