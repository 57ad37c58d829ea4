// The oneDNN CPU convolution (kernels/conv2d_dnnl.cpp) against the im2col + BLAS reference, in
// float32, forward and both backwards, NCHW and NHWC, on awkward shapes. Skipped (one line, exit
// code 77) in a build without oneDNN.
//
// Tolerance: a float32 sum of n products computed in any order lies within gamma_n * sum |a b|
// of the exact sum, gamma_n = n u / (1 - n u), u = 2^-24 (Higham, Accuracy and Stability of
// Numerical Algorithms, 3.1). Both paths obey that bound, each in its own summation order, so
// element i of the two may differ by 2 gamma_n times the same convolution of the absolute values
// (computed here in float64 by the reference). n is the number of products an element sums:
// C R S (forward), K R S (backward-data; at most that many reach one input element), N OH OW
// (backward-weight). The bound is rigorous, not a fitted constant; a wrong index (padding,
// stride, layout) moves an element by about the size of the values themselves, ~1 / (n u) times
// more than the bound allows for these n.
#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "test_seed.h"
#include "kernels/conv2d.h"
#include "kernels/parallel.h"

#if !defined(SLOTCON_WITH_DNNL)
TEST_CASE("conv2d oneDNN path: this build has no oneDNN", "[conv2d][dnnl]") {
  std::printf("SKIP: built without oneDNN (libdnnl-dev)\n");
  std::exit(77);
}
#else
namespace {

using sc::Conv2dGeom;
using sc::Layout;

Conv2dGeom geom(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  Conv2dGeom g;
  g.N = N, g.C = C, g.H = H, g.W = W, g.K = K, g.R = R, g.S = S;
  g.stride_h = sh, g.stride_w = sw, g.pad_h = ph, g.pad_w = pw;
  return g;
}

// Odd and non-square maps, channel counts that are and are not multiples of oneDNN's 16-wide
// blocks, every ResNet (kernel, stride, padding), a 1x1 output, rectangular kernels and unequal
// strides and paddings.
std::vector<Conv2dGeom> awkward_geoms() {
  return {
      geom(2, 3, 15, 13, 16, 7, 7, 2, 2, 3, 3),   // stem 7x7/2 pad 3 on RGB, odd map
      geom(2, 5, 9, 11, 7, 3, 3, 1, 1, 1, 1),     // 3x3/1, channels off the 16-blocks
      geom(3, 17, 9, 7, 33, 3, 3, 2, 2, 1, 1),    // 3x3/2 pad 1, odd map, 17 -> 33 channels
      geom(2, 32, 7, 7, 64, 3, 3, 2, 2, 1, 1),    // 3x3/2 pad 1 on 7x7 (ResNet's last stage)
      geom(2, 16, 8, 6, 48, 1, 1, 1, 1, 0, 0),    // 1x1/1
      geom(2, 24, 9, 7, 40, 1, 1, 2, 2, 0, 0),    // 1x1/2 on odd map (downsample)
      geom(1, 64, 16, 16, 64, 3, 3, 1, 1, 1, 1),  // blocked 3x3/1, batch 1
      geom(2, 6, 5, 5, 10, 5, 5, 1, 1, 0, 0),     // kernel = map: a 1x1 output
      geom(2, 4, 10, 9, 6, 3, 1, 2, 1, 0, 1),     // 3x1 kernel, strides 2 / 1, pads 0 / 1
      geom(1, 8, 12, 13, 8, 7, 7, 3, 2, 2, 3),    // 7x7, strides 3 / 2, pads 2 / 3
      // ResNet-18's stages at 64 px (the model tests' size), batch 4
      geom(4, 64, 16, 16, 64, 3, 3, 1, 1, 1, 1),
      geom(4, 64, 16, 16, 128, 3, 3, 2, 2, 1, 1),
      geom(4, 64, 16, 16, 128, 1, 1, 2, 2, 0, 0),
      geom(4, 128, 8, 8, 128, 3, 3, 1, 1, 1, 1),
      geom(4, 256, 4, 4, 512, 3, 3, 2, 2, 1, 1),
      geom(4, 512, 2, 2, 512, 3, 3, 1, 1, 1, 1),
      // Winograd-eligible (3x3/1 pad 1, maps >= 8x8, channels in 16s): odd and non-square maps
      geom(3, 16, 13, 9, 32, 3, 3, 1, 1, 1, 1),
      geom(2, 48, 8, 10, 16, 3, 3, 1, 1, 1, 1),
  };
}

// Whether oneDNN can run Winograd on this CPU (its F(4x4, 3x3) needs AVX-512 with BW, VL, DQ).
bool cpu_has_winograd() {
#if defined(__GNUC__) && defined(__x86_64__)
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

std::vector<float> random_floats(size_t n, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

std::vector<double> abs_double(const std::vector<float>& v) {
  std::vector<double> a(v.size());
  for (size_t i = 0; i < v.size(); ++i) a[i] = std::fabs(double(v[i]));
  return a;
}

double gamma_n(int64_t n) {
  const double u = std::ldexp(1.0, -24);
  return double(n) * u / (1.0 - double(n) * u);
}

// Every element of a (oneDNN) within 2 gamma_n * mag[i] of b (reference); returns the worst
// |a - b| / (2 gamma_n mag) seen, for the log.
double check_close(const std::vector<float>& a, const std::vector<float>& b,
                   const std::vector<double>& mag, int64_t n, const std::string& what) {
  REQUIRE(a.size() == b.size());
  REQUIRE(mag.size() == b.size());
  const double g2 = 2.0 * gamma_n(n);
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(double(a[i]) - double(b[i]));
    const double bound = g2 * mag[i];
    // an element that sums no product (mag 0) must agree exactly
    if (!(d <= bound)) {
      INFO(what << ": element " << i << " oneDNN " << a[i] << " reference " << b[i]
                << " bound " << bound);
      REQUIRE(d <= bound);
    }
    if (bound > 0) worst = std::max(worst, d / bound);
  }
  return worst;
}

std::string describe(const Conv2dGeom& g, Layout l) {
  char buf[200];
  std::snprintf(buf, sizeof buf, "N%ld C%ld %ldx%ld K%ld %ldx%ld stride %ld/%ld pad %ld/%ld %s",
                long(g.N), long(g.C), long(g.H), long(g.W), long(g.K), long(g.R), long(g.S),
                long(g.stride_h), long(g.stride_w), long(g.pad_h), long(g.pad_w),
                l == Layout::NCHW ? "NCHW" : "NHWC");
  return buf;
}

}  // namespace

TEST_CASE(
    "conv2d oneDNN path matches the im2col reference (float32, forward and both "
    "backwards, NCHW and NHWC, awkward shapes, direct and Winograd)",
    "[conv2d][dnnl]") {
  std::mt19937_64 rng(sc::testing::next_seed());
  for (bool wino : {false, true}) {
    double worst_fwd = 0, worst_bd = 0, worst_bw = 0;
    int eligible = 0, ran = 0;
    for (const Conv2dGeom& g : awkward_geoms()) {
      REQUIRE(g.valid());
      for (Layout l : {Layout::NCHW, Layout::NHWC}) {
        const std::string what = describe(g, l) + (wino ? " winograd allowed" : " direct");
        INFO(what);
        // each pass returns whether it ran Winograd: only when allowed and the shape qualifies,
        // and then on every pass wherever oneDNN has it (AVX-512)
        const bool want = wino && sc::conv2d_dnnl_winograd_eligible(g);
        eligible += want ? 1 : 0;
        auto ran_check = [&](bool r) {
          CHECK(r == (want && cpu_has_winograd()));
          ran += r ? 1 : 0;
        };
        const size_t nx = size_t(g.N * g.C * g.H * g.W), nw = size_t(g.K * g.C * g.R * g.S);
        const size_t ny = size_t(g.N * g.K * g.OH() * g.OW());
        const auto x = random_floats(nx, rng), w = random_floats(nw, rng);
        const auto b = random_floats(size_t(g.K), rng), dy = random_floats(ny, rng);
        const auto ax = abs_double(x), aw = abs_double(w), ady = abs_double(dy);

        // forward, with and without bias (the bias adds one term: n = C R S + 1)
        for (bool bias : {false, true}) {
          std::vector<float> y_ref(ny, NAN), y_dnnl(ny, NAN);
          sc::conv2d_forward_ref<float>(g, l, x.data(), w.data(), bias ? b.data() : nullptr,
                                        y_ref.data());
          ran_check(sc::conv2d_forward_dnnl(g, l, x.data(), w.data(), bias ? b.data() : nullptr,
                                            y_dnnl.data(), wino));
          std::vector<double> mag(ny);
          const auto ab = abs_double(b);
          sc::conv2d_forward_ref<double>(g, l, ax.data(), aw.data(), bias ? ab.data() : nullptr,
                                         mag.data());
          worst_fwd = std::max(
              worst_fwd, check_close(y_dnnl, y_ref, mag, g.C * g.R * g.S + 1, what + " forward"));
          // a second call (cached primitive) gives the same bits
          std::vector<float> y2(ny, NAN);
          sc::conv2d_forward_dnnl(g, l, x.data(), w.data(), bias ? b.data() : nullptr, y2.data(),
                                  wino);
          REQUIRE(y2 == y_dnnl);
        }

        // backward-data
        {
          std::vector<float> dx_ref(nx, NAN), dx_dnnl(nx, NAN);
          sc::conv2d_backward_data_ref<float>(g, l, dy.data(), w.data(), dx_ref.data());
          ran_check(sc::conv2d_backward_data_dnnl(g, l, dy.data(), w.data(), dx_dnnl.data(), wino));
          std::vector<double> mag(nx);
          sc::conv2d_backward_data_ref<double>(g, l, ady.data(), aw.data(), mag.data());
          worst_bd = std::max(worst_bd, check_close(dx_dnnl, dx_ref, mag, g.K * g.R * g.S,
                                                    what + " backward-data"));
        }

        // backward-weight: the reference accumulates into zeros, oneDNN writes over garbage
        {
          std::vector<float> dw_ref(nw, 0.0f), dw_dnnl(nw, NAN);
          sc::conv2d_backward_weight_ref<float>(g, l, x.data(), dy.data(), dw_ref.data(), nullptr);
          ran_check(
              sc::conv2d_backward_weight_dnnl(g, l, x.data(), dy.data(), dw_dnnl.data(), wino));
          std::vector<double> mag(nw, 0.0);
          sc::conv2d_backward_weight_ref<double>(g, l, ax.data(), ady.data(), mag.data(), nullptr);
          worst_bw = std::max(worst_bw, check_close(dw_dnnl, dw_ref, mag, g.N * g.OH() * g.OW(),
                                                    what + " backward-weight"));
        }
      }
    }
    // The worst difference as a fraction of the bound (typically ~1e-3: rounding errors mostly
    // cancel, and the bound assumes they never do).
    std::printf(
        "conv2d oneDNN (%s) vs reference: worst |diff| / bound: forward %.2e, "
        "backward-data %.2e, backward-weight %.2e; Winograd ran in %d of %d passes of "
        "eligible shapes\n",
        wino ? "Winograd allowed" : "direct", worst_fwd, worst_bd, worst_bw, ran, eligible * 4);
  }
}

TEST_CASE("conv2d oneDNN path: plans are per shape and layout, and survive clearing",
          "[conv2d][dnnl]") {
  std::mt19937_64 rng(sc::testing::next_seed());
  // Two shapes alternating, and the same shape in both layouts, through one cache.
  const Conv2dGeom a = geom(2, 5, 9, 8, 6, 3, 3, 1, 1, 1, 1);
  const Conv2dGeom b = geom(2, 5, 9, 8, 6, 3, 3, 2, 2, 1, 1);
  for (int round = 0; round < 2; ++round) {
    for (const Conv2dGeom& g : {a, b, a})
      for (Layout l : {Layout::NHWC, Layout::NCHW}) {
        INFO(describe(g, l) << " round " << round);
        const size_t nx = size_t(g.N * g.C * g.H * g.W), nw = size_t(g.K * g.C * g.R * g.S);
        const size_t ny = size_t(g.N * g.K * g.OH() * g.OW());
        const auto x = random_floats(nx, rng), w = random_floats(nw, rng);
        std::vector<float> y_ref(ny), y_dnnl(ny, NAN);
        sc::conv2d_forward_ref<float>(g, l, x.data(), w.data(), nullptr, y_ref.data());
        sc::conv2d_forward_dnnl(g, l, x.data(), w.data(), nullptr, y_dnnl.data());
        std::vector<double> mag(ny);
        const auto ax = abs_double(x), aw = abs_double(w);
        sc::conv2d_forward_ref<double>(g, l, ax.data(), aw.data(), nullptr, mag.data());
        check_close(y_dnnl, y_ref, mag, g.C * g.R * g.S, describe(g, l));
      }
    sc::conv2d_dnnl_clear_plans();
  }
}
TEST_CASE("conv2d oneDNN path: the same bits for any thread count", "[conv2d][dnnl]") {
  // the pool splits images (forward, backward-data) or 16-channel blocks of output channels
  // (backward-weight); neither changes what one element sums, nor its order, direct or Winograd
  std::mt19937_64 rng(sc::testing::next_seed());
  const int saved = sc::cpu_threads();
  for (const Conv2dGeom& g : awkward_geoms())
    for (Layout l : {Layout::NCHW, Layout::NHWC}) {
      INFO(describe(g, l));
      const size_t nx = size_t(g.N * g.C * g.H * g.W), nw = size_t(g.K * g.C * g.R * g.S);
      const size_t ny = size_t(g.N * g.K * g.OH() * g.OW());
      const auto x = random_floats(nx, rng), w = random_floats(nw, rng);
      const auto dy = random_floats(ny, rng);
      for (bool wino : {false, true}) {
        if (wino && !sc::conv2d_dnnl_winograd_eligible(g)) continue;
        INFO((wino ? "Winograd" : "direct"));
        std::vector<float> y1, dx1, dw1;
        for (int threads : {1, 2, 3}) {
          sc::set_cpu_threads(threads);
          std::vector<float> y(ny, NAN), dx(nx, NAN), dw(nw, NAN);
          sc::conv2d_forward_dnnl(g, l, x.data(), w.data(), nullptr, y.data(), wino);
          sc::conv2d_backward_data_dnnl(g, l, dy.data(), w.data(), dx.data(), wino);
          sc::conv2d_backward_weight_dnnl(g, l, x.data(), dy.data(), dw.data(), wino);
          if (threads == 1) {
            y1 = y, dx1 = dx, dw1 = dw;
            continue;
          }
          INFO("threads " << threads);
          CHECK(y == y1);
          CHECK(dx == dx1);
          CHECK(dw == dw1);
        }
      }
    }
  sc::set_cpu_threads(saved);
}
#endif
