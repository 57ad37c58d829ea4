// CPU convolution reference (im2col + BLAS) against direct loops, and its backward against
// float64 central finite differences.
#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernel_test_util.h"
#include "test_seed.h"
#include "kernels/conv2d.h"

namespace {

using sc::Conv2dGeom;
using sc::Layout;

using kernel_test::dotv;
using kernel_test::dotv_abs;
using kernel_test::random_vec;

template <class T>
std::vector<T> cast_vec(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

// Index of (n, c, h, w) in a dense tensor with the given layout.
int64_t at(Layout l, int64_t n, int64_t c, int64_t h, int64_t w, int64_t C, int64_t H, int64_t W) {
  return l == Layout::NCHW ? ((n * C + c) * H + h) * W + w : ((n * H + h) * W + w) * C + c;
}

// Direct-loop convolution in double: the definition, nothing clever.
std::vector<double> naive_conv(const Conv2dGeom& g, Layout l, const std::vector<double>& x,
                               const std::vector<double>& w, const std::vector<double>* bias) {
  const int64_t OH = g.OH(), OW = g.OW();
  std::vector<double> y(size_t(g.N * g.K * OH * OW));
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t k = 0; k < g.K; ++k)
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) {
          double s = bias ? (*bias)[size_t(k)] : 0.0;
          for (int64_t c = 0; c < g.C; ++c)
            for (int64_t r = 0; r < g.R; ++r)
              for (int64_t q = 0; q < g.S; ++q) {
                const int64_t ih = oh * g.stride_h - g.pad_h + r;
                const int64_t iw = ow * g.stride_w - g.pad_w + q;
                if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
                s += w[size_t(((k * g.C + c) * g.R + r) * g.S + q)] *
                     x[size_t(at(l, n, c, ih, iw, g.C, g.H, g.W))];
              }
          y[size_t(at(l, n, k, oh, ow, g.K, OH, OW))] = s;
        }
  return y;
}

Conv2dGeom geom(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t stride,
                int64_t pad) {
  Conv2dGeom g;
  g.N = N, g.C = C, g.H = H, g.W = W, g.K = K, g.R = R, g.S = R;
  g.stride_h = g.stride_w = stride;
  g.pad_h = g.pad_w = pad;
  return g;
}

// Every (kernel, stride, pad) that ResNet uses, on odd sizes.
std::vector<Conv2dGeom> resnet_geoms() {
  return {geom(2, 3, 15, 13, 5, 7, 2, 3),  // stem 7x7/2
          geom(2, 4, 9, 8, 6, 3, 1, 1),    // 3x3/1
          geom(2, 5, 9, 11, 3, 3, 2, 1),   // 3x3/2 (v1.5 bottleneck, basic block downsampling)
          geom(3, 6, 5, 7, 4, 1, 1, 0),    // 1x1/1
          geom(2, 4, 9, 7, 8, 1, 2, 0)};   // 1x1/2 (downsample.0)
}

template <class T>
void check_forward(double tol) {
  std::mt19937_64 rng(sc::testing::next_seed());
  for (const Conv2dGeom& g : resnet_geoms())
    for (Layout l : {Layout::NCHW, Layout::NHWC})
      for (bool with_bias : {false, true}) {
        auto x = random_vec(size_t(g.N * g.C * g.H * g.W), rng);
        auto w = random_vec(size_t(g.K * g.C * g.R * g.S), rng);
        auto b = random_vec(size_t(g.K), rng);
        auto ref = naive_conv(g, l, x, w, with_bias ? &b : nullptr);
        auto xt = cast_vec<T>(x), wt = cast_vec<T>(w), bt = cast_vec<T>(b);
        std::vector<T> y(ref.size(), T(NAN));
        sc::conv2d_forward_ref<T>(g, l, xt.data(), wt.data(), with_bias ? bt.data() : nullptr,
                                  y.data());
        for (size_t i = 0; i < y.size(); ++i) {
          INFO("R " << g.R << " stride " << g.stride_h << " layout " << int(l) << " bias "
                    << with_bias << " i " << i);
          REQUIRE(std::fabs(double(y[i]) - ref[i]) <= tol * (1 + std::fabs(ref[i])));
        }
      }
}

}  // namespace

TEST_CASE("conv2d_forward_ref matches direct loops (float and double, NCHW and NHWC)", "[conv2d]") {
  check_forward<double>(1e-12);
  check_forward<float>(2e-5);
}

TEST_CASE("conv2d backward refs match float64 finite differences", "[conv2d]") {
  std::mt19937_64 rng(sc::testing::next_seed());
  std::vector<Conv2dGeom> geoms = {geom(2, 2, 7, 6, 3, 7, 2, 3), geom(1, 3, 5, 6, 2, 3, 1, 1),
                                   geom(2, 2, 7, 5, 3, 3, 2, 1), geom(2, 3, 4, 3, 2, 1, 1, 0),
                                   geom(1, 3, 5, 5, 2, 1, 2, 0)};
  const double eps = 1e-6;
  for (const Conv2dGeom& g : geoms)
    for (Layout l : {Layout::NCHW, Layout::NHWC}) {
      const size_t nx = size_t(g.N * g.C * g.H * g.W), nw = size_t(g.K * g.C * g.R * g.S);
      const size_t ny = size_t(g.N * g.K * g.OH() * g.OW());
      auto x = random_vec(nx, rng), w = random_vec(nw, rng), b = random_vec(size_t(g.K), rng);
      auto cot = random_vec(ny, rng);
      auto loss = [&](const std::vector<double>& xx, const std::vector<double>& ww,
                      const std::vector<double>& bb) {
        std::vector<double> y(ny);
        sc::conv2d_forward_ref<double>(g, l, xx.data(), ww.data(), bb.data(), y.data());
        double s = 0;
        for (size_t i = 0; i < ny; ++i) s += y[i] * cot[i];
        return s;
      };
      std::vector<double> dx(nx, NAN), dw(nw, 0.5), db(size_t(g.K), -0.25);
      sc::conv2d_backward_data_ref<double>(g, l, cot.data(), w.data(), dx.data());
      // Parameter gradients accumulate: start from known values and subtract them afterwards.
      sc::conv2d_backward_weight_ref<double>(g, l, x.data(), cot.data(), dw.data(), db.data());
      for (double& v : dw) v -= 0.5;
      for (double& v : db) v += 0.25;
      auto fd_check = [&](std::vector<double>& p, const std::vector<double>& analytic,
                          const char* name) {
        for (size_t i = 0; i < p.size(); ++i) {
          const double saved = p[i];
          p[i] = saved + eps;
          const double lp = loss(x, w, b);
          p[i] = saved - eps;
          const double lm = loss(x, w, b);
          p[i] = saved;
          const double numeric = (lp - lm) / (2 * eps);
          INFO(name << " R " << g.R << " stride " << g.stride_h << " layout " << int(l) << " i "
                    << i << " analytic " << analytic[i] << " numeric " << numeric);
          REQUIRE(std::fabs(analytic[i] - numeric) <= 1e-7 + 1e-6 * std::fabs(numeric));
        }
      };
      fd_check(x, dx, "dx");
      fd_check(w, dw, "dw");
      fd_check(b, db, "dbias");
    }
}

TEST_CASE("conv2d float backward refs agree with double", "[conv2d]") {
  std::mt19937_64 rng(sc::testing::next_seed());
  for (const Conv2dGeom& g : resnet_geoms())
    for (Layout l : {Layout::NCHW, Layout::NHWC}) {
      const size_t nx = size_t(g.N * g.C * g.H * g.W), nw = size_t(g.K * g.C * g.R * g.S);
      const size_t ny = size_t(g.N * g.K * g.OH() * g.OW());
      auto x = random_vec(nx, rng), w = random_vec(nw, rng), dy = random_vec(ny, rng);
      std::vector<double> dx(nx), dw(nw, 0.0), db(size_t(g.K), 0.0);
      sc::conv2d_backward_data_ref<double>(g, l, dy.data(), w.data(), dx.data());
      sc::conv2d_backward_weight_ref<double>(g, l, x.data(), dy.data(), dw.data(), db.data());
      auto xf = cast_vec<float>(x), wf = cast_vec<float>(w), dyf = cast_vec<float>(dy);
      std::vector<float> dxf(nx, NAN), dwf(nw, 0.f), dbf(size_t(g.K), 0.f);
      sc::conv2d_backward_data_ref<float>(g, l, dyf.data(), wf.data(), dxf.data());
      sc::conv2d_backward_weight_ref<float>(g, l, xf.data(), dyf.data(), dwf.data(), dbf.data());
      for (size_t i = 0; i < nx; ++i)
        REQUIRE(std::fabs(dxf[i] - dx[i]) <= 1e-5 * (1 + std::fabs(dx[i])));
      for (size_t i = 0; i < nw; ++i)
        REQUIRE(std::fabs(dwf[i] - dw[i]) <= 1e-5 * (1 + std::fabs(dw[i])));
      for (size_t i = 0; i < db.size(); ++i)
        REQUIRE(std::fabs(dbf[i] - db[i]) <= 1e-5 * (1 + std::fabs(db[i])));
    }
}

TEST_CASE("conv2d NCHW refs work across image chunks (one GEMM per chunk of images)", "[conv2d]") {
  // Large enough maps that a chunk holds fewer images than the batch (the chunk budget is 4M
  // elements of columns + outputs), for a 3x3 and a pointwise conv: forward against direct loops,
  // and backward by the adjoint identities <conv(x, w), dy> = <x, dx> = <w, dw>.
  std::mt19937_64 rng(sc::testing::next_seed());
  for (const Conv2dGeom& g : {geom(3, 8, 162, 161, 8, 3, 1, 1), geom(3, 32, 148, 149, 32, 1, 1, 0)}) {
    INFO("R " << g.R);
    const size_t nx = size_t(g.N * g.C * g.H * g.W), nw = size_t(g.K * g.C * g.R * g.S);
    const size_t ny = size_t(g.N * g.K * g.OH() * g.OW());
    REQUIRE((g.C * g.R * g.S + g.K) * g.OH() * g.OW() * g.N > (int64_t(1) << 22));  // > 1 chunk
    auto x = random_vec(nx, rng), w = random_vec(nw, rng), dy = random_vec(ny, rng);
    std::vector<double> y(ny, NAN), dx(nx, NAN), dw(nw, 0.0);
    sc::conv2d_forward_ref<double>(g, Layout::NCHW, x.data(), w.data(), nullptr, y.data());
    auto ref = naive_conv(g, Layout::NCHW, x, w, nullptr);
    double worst = 0;
    for (size_t i = 0; i < ny; ++i)
      worst = std::max(worst, std::fabs(y[i] - ref[i]) / (1 + std::fabs(ref[i])));
    CHECK(worst <= 1e-10);
    sc::conv2d_backward_data_ref<double>(g, Layout::NCHW, dy.data(), w.data(), dx.data());
    sc::conv2d_backward_weight_ref<double>(g, Layout::NCHW, x.data(), dy.data(), dw.data(), nullptr);
    // The inner products are sums of 10^5 to 10^6 products of random signs that cancel (one seed
    // gave -0.031 where the magnitudes of the terms sum to ~7e5 for the 3x3 case), so their
    // rounding is bounded relative to the sum of |terms|, not to the result: gamma_n(2^-53) < 7e-11
    // for n < 6.3e5; 1e-10 of it.
    // A wrong index or a dropped chunk moves them by far more (~1/sqrt(n) of that sum at least).
    const double ydy = dotv(y, dy), xdx = dotv(x, dx), wdw = dotv(w, dw);
    const double ydy_abs = dotv_abs(y, dy), xdx_abs = dotv_abs(x, dx), wdw_abs = dotv_abs(w, dw);
    INFO("<y, dy> " << ydy << " (sum of |terms| " << ydy_abs << "), <x, dx> " << xdx << " ("
                    << xdx_abs << "), <w, dw> " << wdw << " (" << wdw_abs << ")");
    CHECK(std::fabs(xdx - ydy) <= 1e-10 * (xdx_abs + ydy_abs));
    CHECK(std::fabs(wdw - ydy) <= 1e-10 * (wdw_abs + ydy_abs));
  }
}
