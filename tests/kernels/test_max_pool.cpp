// CPU max pooling against direct loops and float64 finite differences.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <vector>

#include "test_seed.h"
#include "kernels/max_pool.h"

namespace {
using sc::Layout;
using sc::Pool2dGeom;

int64_t at(Layout l, int64_t n, int64_t c, int64_t h, int64_t w, int64_t C, int64_t H, int64_t W) {
  return l == Layout::NCHW ? ((n * C + c) * H + h) * W + w : ((n * H + h) * W + w) * C + c;
}

Pool2dGeom pool(int64_t N, int64_t C, int64_t H, int64_t W) {
  Pool2dGeom g;
  g.N = N, g.C = C, g.H = H, g.W = W;
  return g;
}
}  // namespace

TEST_CASE("max_pool2d 3x3/2 pad 1 forward matches direct loops", "[max_pool]") {
  std::mt19937_64 rng(sc::testing::next_seed());
  std::uniform_real_distribution<double> u(-1, 1);
  // even and odd widths: with an odd one the last window hangs over the right edge
  for (Pool2dGeom g : {pool(2, 3, 9, 8), pool(1, 4, 112, 112), pool(2, 3, 8, 9), pool(1, 2, 13, 11),
                       pool(3, 2, 2, 1), pool(1, 1, 1, 1)})
    for (Layout l : {Layout::NCHW, Layout::NHWC}) {
      std::vector<double> x(size_t(g.N * g.C * g.H * g.W));
      for (double& v : x) v = u(rng);
      const int64_t OH = g.OH(), OW = g.OW();
      REQUIRE(OH == (g.H - 1) / 2 + 1);
      std::vector<double> y(size_t(g.N * g.C * OH * OW), NAN);
      std::vector<uint8_t> idx(y.size(), 255);
      sc::max_pool2d_forward_ref<double>(g, l, x.data(), y.data(), idx.data());
      std::vector<float> xf(x.begin(), x.end()), yf(y.size(), NAN);
      std::vector<uint8_t> idxf(y.size(), 255);
      sc::max_pool2d_forward_ref<float>(g, l, xf.data(), yf.data(), idxf.data());
      for (int64_t n = 0; n < g.N; ++n)
        for (int64_t c = 0; c < g.C; ++c)
          for (int64_t oh = 0; oh < OH; ++oh)
            for (int64_t ow = 0; ow < OW; ++ow) {
              double best = -INFINITY;
              int bi = -1;
              for (int64_t r = 0; r < 3; ++r)
                for (int64_t s = 0; s < 3; ++s) {
                  const int64_t ih = 2 * oh - 1 + r, iw = 2 * ow - 1 + s;
                  if (ih < 0 || iw < 0 || ih >= g.H || iw >= g.W) continue;
                  const double v = x[size_t(at(l, n, c, ih, iw, g.C, g.H, g.W))];
                  if (v > best) best = v, bi = int(r * 3 + s);
                }
              const size_t o = size_t(at(l, n, c, oh, ow, g.C, OH, OW));
              REQUIRE(y[o] == best);
              REQUIRE(int(idx[o]) == bi);
              REQUIRE(yf[o] == float(best));
            }
    }
}

TEST_CASE("max_pool2d backward matches float64 finite differences, ties go to the first",
          "[max_pool]") {
  std::mt19937_64 rng(sc::testing::next_seed());
  std::uniform_real_distribution<double> u(-1, 1);
  for (Layout l : {Layout::NCHW, Layout::NHWC}) {
    Pool2dGeom g = pool(2, 3, 7, 6);
    const size_t nx = size_t(g.N * g.C * g.H * g.W), ny = size_t(g.N * g.C * g.OH() * g.OW());
    // Distinct values so that the max is unique and differentiable.
    std::vector<double> x(nx), cot(ny);
    for (size_t i = 0; i < nx; ++i) x[i] = double(i) * 0.01;
    std::shuffle(x.begin(), x.end(), rng);
    for (double& v : cot) v = u(rng);
    std::vector<double> y(ny), dx(nx, NAN);
    std::vector<uint8_t> idx(ny);
    sc::max_pool2d_forward_ref<double>(g, l, x.data(), y.data(), idx.data());
    sc::max_pool2d_backward_ref<double>(g, l, cot.data(), idx.data(), dx.data());
    const double eps = 1e-4;  // values are 0.01 apart
    for (size_t i = 0; i < nx; ++i) {
      auto loss = [&]() {
        std::vector<double> yy(ny);
        std::vector<uint8_t> ii(ny);
        sc::max_pool2d_forward_ref<double>(g, l, x.data(), yy.data(), ii.data());
        double s = 0;
        for (size_t k = 0; k < ny; ++k) s += yy[k] * cot[k];
        return s;
      };
      const double saved = x[i];
      x[i] = saved + eps;
      const double lp = loss();
      x[i] = saved - eps;
      const double lm = loss();
      x[i] = saved;
      REQUIRE(dx[i] == Approx((lp - lm) / (2 * eps)).margin(1e-9));
    }
  }
  // Ties: a constant input routes every window's gradient to its first valid element.
  Pool2dGeom g = pool(1, 1, 4, 4);
  std::vector<float> x(16, 1.f), y(4), dy(4, 1.f), dx(16);
  std::vector<uint8_t> idx(4);
  sc::max_pool2d_forward_ref<float>(g, Layout::NCHW, x.data(), y.data(), idx.data());
  REQUIRE(idx == std::vector<uint8_t>{4, 3, 1, 0});
  sc::max_pool2d_backward_ref<float>(g, Layout::NCHW, dy.data(), idx.data(), dx.data());
  std::vector<float> expect(16, 0.f);
  expect[0] = 1, expect[1] = 1, expect[4] = 1, expect[5] = 1;
  REQUIRE(dx == expect);
}

TEST_CASE("max_pool2d a NaN wins its window, ties go to the first, all layouts", "[max_pool]") {
  for (Layout l : {Layout::NCHW, Layout::NHWC}) {
    Pool2dGeom g = pool(1, 2, 4, 4);  // 3x3/2 pad 1: 2x2 outputs
    std::vector<float> x(size_t(g.N * g.C * g.H * g.W), 0.5f);
    x[size_t(at(l, 0, 0, 1, 1, g.C, g.H, g.W))] = NAN;  // in every window of channel 0
    x[size_t(at(l, 0, 0, 0, 0, g.C, g.H, g.W))] = 9.f;  // larger, but loses to the NaN
    std::vector<float> y(size_t(g.N * g.C * g.OH() * g.OW()));
    std::vector<uint8_t> idx(y.size());
    sc::max_pool2d_forward_ref<float>(g, l, x.data(), y.data(), idx.data());
    for (int64_t oh = 0; oh < 2; ++oh)
      for (int64_t ow = 0; ow < 2; ++ow) {
        const size_t o0 = size_t(at(l, 0, 0, oh, ow, g.C, 2, 2));
        const size_t o1 = size_t(at(l, 0, 1, oh, ow, g.C, 2, 2));
        CHECK(std::isnan(y[o0]));
        // the NaN at (1, 1) is window element (1 - oh*2 + 1, 1 - ow*2 + 1)
        CHECK(int(idx[o0]) == (2 - 2 * oh) * 3 + (2 - 2 * ow));
        CHECK(y[o1] == 0.5f);  // all equal: the first valid element of the window
        CHECK(int(idx[o1]) == (oh == 0 ? 1 : 0) * 3 + (ow == 0 ? 1 : 0));
      }
  }
}
