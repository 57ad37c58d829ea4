// View alignment (kernels/view_align.h), CPU reference: forward against an independently written
// bilinear sampler (torchvision's rules), the identity box, flips, boxes touching the map border
// and boxes larger than the map (adaptive sampling with 2x2 or 3x3 samples per bin and taps outside
// the map), and the backward as the exact adjoint of the forward (a float64 gradient check of a
// linear map), plus central differences.
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <vector>

#include "test_seed.h"
#include "kernel_test_util.h"
#include "kernels/view_align.h"

namespace {

using namespace kernel_test;

// Bilinear value of plane (H, W) at (y, x), torchvision's boundary rules, written out directly.
double sample(const double* plane, int64_t H, int64_t W, double y, double x) {
  if (y < -1.0 || y > double(H) || x < -1.0 || x > double(W)) return 0.0;
  y = std::min(std::max(y, 0.0), double(H - 1));
  x = std::min(std::max(x, 0.0), double(W - 1));
  const int64_t y0 = int64_t(std::floor(y)), x0 = int64_t(std::floor(x));
  const int64_t y1 = std::min(y0 + 1, H - 1), x1 = std::min(x0 + 1, W - 1);
  const double fy = y - double(y0), fx = x - double(x0);
  return (1 - fy) * ((1 - fx) * plane[y0 * W + x0] + fx * plane[y0 * W + x1]) +
         fy * ((1 - fx) * plane[y1 * W + x0] + fx * plane[y1 * W + x1]);
}

// RoIAlign(aligned=True, adaptive sampling) + flip, straight from the definition.
Vec naive_align(const sc::ViewAlignShape& s, const Vec& in, const Vec& boxes,
                const std::vector<uint8_t>& flips) {
  const int64_t H = s.H, W = s.W;
  Vec out(in.size());
  for (int64_t b = 0; b < s.B; ++b) {
    const double* bx = &boxes[size_t(4 * b)];
    const double x1 = bx[0] * W - 0.5, y1 = bx[1] * H - 0.5;
    const double rw = bx[2] * W - 0.5 - x1, rh = bx[3] * H - 0.5 - y1;
    const int gh = int(std::ceil(rh / H)), gw = int(std::ceil(rw / W));
    const double cnt = std::max(gh * gw, 1);
    for (int64_t k = 0; k < s.K; ++k) {
      const double* plane = &in[size_t((b * s.K + k) * H * W)];
      for (int64_t oy = 0; oy < H; ++oy)
        for (int64_t ox = 0; ox < W; ++ox) {
          double acc = 0;
          for (int iy = 0; iy < gh; ++iy)
            for (int ix = 0; ix < gw; ++ix)
              acc += sample(plane, H, W, y1 + (oy + (iy + 0.5) / gh) * rh / H,
                            x1 + (ox + (ix + 0.5) / gw) * rw / W);
          const int64_t wx = flips[size_t(b)] ? W - 1 - ox : ox;
          out[size_t((b * s.K + k) * H * W + oy * W + wx)] = acc / cnt;
        }
    }
  }
  return out;
}

}  // namespace

TEST_CASE("view_align forward: identity box, flips, border and oversized boxes", "[view_align]") {
  const uint64_t seed = sc::testing::next_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const sc::ViewAlignShape s{8, 5, 7, 6};
  const size_t n = size_t(s.B * s.K * s.H * s.W);
  Vec in = random_vec(n, rng);
  // image 0: identity; 1: identity flipped; 2: box touching the left/top border; 3: touching the
  // right/bottom border, flipped; 4: random inside box; 5: oversized box (2x2 samples, taps
  // outside); 6: very oversized (3x3 samples, bins fully outside); 7: degenerate zero-width box.
  Vec boxes = {0,    0,   1,    1,    0,   0,    1,    1,    0,    0,    0.6,
               0.45, 0.3, 0.55, 1,    1,   0.21, 0.13, 0.77, 0.92, -0.2, -0.35,
               1.3,  1.1, -1.1, -0.9, 1.7, 1.8,  0.4,  0.2,  0.4,  0.9};
  std::vector<uint8_t> flips = {0, 1, 0, 1, 1, 0, 1, 0};
  Vec out(n, NAN);
  sc::view_align_forward_ref<double>(s, in.data(), boxes.data(), flips.data(), out.data());
  const Vec want = naive_align(s, in, boxes, flips);
  for (size_t i = 0; i < n; ++i) REQUIRE(out[i] == Approx(want[i]).margin(1e-12));
  const int64_t HW = s.H * s.W;
  for (int64_t k = 0; k < s.K; ++k)
    for (int64_t y = 0; y < s.H; ++y)
      for (int64_t x = 0; x < s.W; ++x) {
        const double v = in[size_t(k * HW + y * s.W + x)];
        REQUIRE(out[size_t(k * HW + y * s.W + x)] == Approx(v).margin(1e-14));
        const double vf = in[size_t((s.K + k) * HW + y * s.W + x)];
        REQUIRE(out[size_t((s.K + k) * HW + y * s.W + (s.W - 1 - x))] == Approx(vf).margin(1e-14));
        REQUIRE(out[size_t((7 * s.K + k) * HW + y * s.W + x)] == 0.0);  // zero-width box
      }
  // The same through the float instantiation.
  std::vector<float> inf(in.begin(), in.end()), bf(boxes.begin(), boxes.end()), of(n);
  sc::view_align_forward_ref<float>(s, inf.data(), bf.data(), flips.data(), of.data());
  for (size_t i = 0; i < n; ++i) REQUIRE(of[i] == Approx(want[i]).margin(2e-6));
}

TEST_CASE("view_align backward is the adjoint of the forward (float64 gradient check)",
          "[view_align][grad]") {
  const uint64_t seed = sc::testing::next_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const sc::ViewAlignShape s{5, 3, 7, 7};
  const size_t n = size_t(s.B * s.K * s.H * s.W);
  Vec boxes = {0,    0,   1,    1,    0.05, 0.1, 1,    0.83, 0.0,  0.37,
               0.52, 1.0, -0.3, -0.2, 1.25, 1.4, 0.33, 0.21, 0.71, 0.64};
  std::vector<uint8_t> flips = {1, 0, 1, 0, 1};
  Vec in = random_vec(n, rng), cot = random_vec(n, rng), out(n), din(n, NAN);
  sc::view_align_forward_ref<double>(s, in.data(), boxes.data(), flips.data(), out.data());
  sc::view_align_backward_ref<double>(s, boxes.data(), flips.data(), cot.data(), din.data());
  REQUIRE(dotv(cot, out) == Approx(dotv(din, in)).margin(1e-12));
  // Central differences on every input element (exact up to rounding for a linear map).
  for (size_t i = 0; i < n; ++i) {
    const double saved = in[i];
    in[i] = saved + 1e-3;
    sc::view_align_forward_ref<double>(s, in.data(), boxes.data(), flips.data(), out.data());
    const double lp = dotv(cot, out);
    in[i] = saved - 1e-3;
    sc::view_align_forward_ref<double>(s, in.data(), boxes.data(), flips.data(), out.data());
    const double lm = dotv(cot, out);
    in[i] = saved;
    INFO("element " << i);
    REQUIRE(din[i] == Approx((lp - lm) / 2e-3).margin(1e-9));
  }
}
