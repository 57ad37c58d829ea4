// Crop sampling (torchvision's RandomResizedCrop and the authors' overlap condition), the overlap
// box convention, and the geometry of rendered views.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

#include "data/augment.h"
#include "data/rng.h"

using namespace sc::data;

namespace {

// Kolmogorov-Smirnov statistic of samples against U(lo, hi).
double ks_uniform(std::vector<double> xs, double lo, double hi) {
  std::sort(xs.begin(), xs.end());
  const double n = double(xs.size());
  double d = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const double f = std::min(1.0, std::max(0.0, (xs[i] - lo) / (hi - lo)));
    d = std::max(d, std::max(std::fabs(f - i / n), std::fabs(f - (i + 1) / n)));
  }
  return d;
}

// Bilinear sample of channel c at continuous pixel position (px, py) (pixel centres at integers).
double bilinear(const ImageU8& im, double px, double py, int c) {
  px = std::min(std::max(px, 0.0), double(im.width - 1));
  py = std::min(std::max(py, 0.0), double(im.height - 1));
  const int x0 = std::min(int(px), im.width - 2), y0 = std::min(int(py), im.height - 2);
  const double fx = px - x0, fy = py - y0;
  auto at = [&](int x, int y) { return double(im.row(y)[3 * x + c]); };
  return (at(x0, y0) * (1 - fx) + at(x0 + 1, y0) * fx) * (1 - fy) +
         (at(x0, y0 + 1) * (1 - fx) + at(x0 + 1, y0 + 1) * fx) * fy;
}

// Where aligned grid point (a, b) in [0, 1]^2 of the overlap lands in view `v`'s normalised
// coordinates: RoIAlign over the view's box, then a horizontal flip of the result when the view
// is flipped (docs/method.md §3).
void aligned_to_view(const ViewParams& v, double a, double b, double* u, double* w) {
  const double aa = v.flip ? 1.0 - a : a;
  *u = v.box.x1 + aa * (v.box.x2 - v.box.x1);
  *w = v.box.y1 + b * (v.box.y2 - v.box.y1);
}

}  // namespace

TEST_CASE("boxes: overlap in each crop's coordinates, mirrored when flipped", "[data][geometry]") {
  Box a, b;
  overlap_boxes({0, 0, 100, 100}, {50, 50, 100, 100}, &a, &b);
  CHECK(a.x1 == 0.5f);
  CHECK(a.y1 == 0.5f);
  CHECK(a.x2 == 1.0f);
  CHECK(a.y2 == 1.0f);
  CHECK(b.x1 == 0.0f);
  CHECK(b.y1 == 0.0f);
  CHECK(b.x2 == 0.5f);
  CHECK(b.y2 == 0.5f);
  const Box m = mirror_box(b);
  CHECK(m.x1 == 0.5f);
  CHECK(m.x2 == 1.0f);
  CHECK(m.y1 == 0.0f);
  CHECK(m.y2 == 0.5f);
  CHECK(crop_intersection({0, 0, 100, 100}, {50, 50, 100, 100}) == 2500);
  CHECK(crop_intersection({0, 0, 10, 10}, {10, 0, 10, 10}) == 0);
  // Disjoint crops keep the authors' (inverted) box.
  overlap_boxes({0, 0, 10, 10}, {20, 0, 10, 10}, &a, &b);
  CHECK(a.x2 < a.x1);
}

TEST_CASE("boxes: a point of the overlap maps to the same source place in both views",
          "[data][geometry]") {
  Rng pick(1);
  int checked = 0, flipped = 0;
  for (int t = 0; t < 3000; ++t) {
    const int W = int(pick.randint(40, 900)), H = int(pick.randint(40, 900));
    AugmentConfig cfg;
    cfg.min_scale = 0.05;
    Rng rng(uint64_t(t), 77);
    const TwoViewParams p = sample_two_view_params(W, H, cfg, rng);
    if (crop_intersection(p.view[0].crop, p.view[1].crop) == 0) continue;
    flipped += p.view[0].flip != p.view[1].flip;
    for (int k = 0; k < 5; ++k) {
      const double a = pick.uniform(), b = pick.uniform();
      double sx[2], sy[2];
      for (int v = 0; v < 2; ++v) {
        double u, w;
        aligned_to_view(p.view[v], a, b, &u, &w);
        REQUIRE(u >= -1e-6);
        REQUIRE(u <= 1 + 1e-6);
        view_to_source(p.view[v], u, w, &sx[v], &sy[v]);
      }
      // Boxes are float32: agreement to float precision in source pixels.
      REQUIRE(std::fabs(sx[0] - sx[1]) < 1e-3 * W);
      REQUIRE(std::fabs(sy[0] - sy[1]) < 1e-3 * H);
    }
    ++checked;
  }
  CHECK(checked > 2000);
  CHECK(flipped > 500);  // views with different flips were exercised
}

TEST_CASE("boxes: rendered views show the same source pixels at aligned points",
          "[data][geometry]") {
  // The source encodes its own coordinates: R = x, G = y at pixel (x, y). Bicubic resampling
  // reproduces a linear ramp, so a view's R and G tell which source place it shows.
  const int W = 256, H = 256, S = 64;
  ImageU8 src;
  src.resize(W, H);
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x) {
      src.row(y)[3 * x] = uint8_t(x);
      src.row(y)[3 * x + 1] = uint8_t(y);
      src.row(y)[3 * x + 2] = 128;
    }
  AugmentConfig cfg = AugmentConfig::geometry_only(S, 0.2);
  AugmentScratch scratch;
  ImageU8 views[2];
  Rng pick(2);
  int checked = 0;
  double worst = 0;
  for (int t = 0; t < 300; ++t) {
    Rng rng(uint64_t(t), 5);
    const TwoViewParams p = sample_two_view_params(W, H, cfg, rng);
    const Box& b0 = p.view[0].box;
    if ((b0.x2 - b0.x1) * p.view[0].crop.w < 24 || (b0.y2 - b0.y1) * p.view[0].crop.h < 24)
      continue;
    for (int v = 0; v < 2; ++v) render_view_u8(src, p.view[v], cfg, &views[v], &scratch);
    for (int k = 0; k < 10; ++k) {
      const double a = pick.uniform(), b = pick.uniform();
      // Stay out of the filter's reach of a crop border, where PIL renormalises the taps.
      bool inside = true;
      for (int v = 0; v < 2; ++v) {
        double u, w, x, y;
        aligned_to_view(p.view[v], a, b, &u, &w);
        view_to_source(p.view[v], u, w, &x, &y);
        const CropRect& c = p.view[v].crop;
        const double mx = 2.0 * std::max(double(c.w) / S, 1.0) + 1.0;
        const double my = 2.0 * std::max(double(c.h) / S, 1.0) + 1.0;
        inside = inside && x > c.x + mx && x < c.x + c.w - mx && y > c.y + my && y < c.y + c.h - my;
      }
      if (!inside) continue;
      double est_x[2], est_y[2], sx = 0, sy = 0;
      for (int v = 0; v < 2; ++v) {
        double u, w;
        aligned_to_view(p.view[v], a, b, &u, &w);
        est_x[v] = bilinear(views[v], u * S - 0.5, w * S - 0.5, 0) + 0.5;
        est_y[v] = bilinear(views[v], u * S - 0.5, w * S - 0.5, 1) + 0.5;
        view_to_source(p.view[v], u, w, &sx, &sy);
        // Interpolation tolerance: the 8-bit rounding of the view (the ramp itself is reproduced).
        const double tol = 1.0;
        REQUIRE(std::fabs(est_x[v] - sx) < tol);
        REQUIRE(std::fabs(est_y[v] - sy) < tol);
      }
      worst =
          std::max(worst, std::max(std::fabs(est_x[0] - est_x[1]), std::fabs(est_y[0] - est_y[1])));
      REQUIRE(std::fabs(est_x[0] - est_x[1]) < 2.0);
      REQUIRE(std::fabs(est_y[0] - est_y[1]) < 2.0);
      ++checked;
    }
  }
  CHECK(checked > 500);
  INFO("largest disagreement between views: " << worst << " source pixels");
  CHECK(worst < 2.0);
}

TEST_CASE("crops: scale, ratio and position follow RandomResizedCrop", "[data][geometry]") {
  // Square 1000 x 1000 image, scale (0.08, 0.5): every first try fits, so the accepted scale is
  // U(0.08, 0.5), the log-ratio U(log 3/4, log 4/3) and the position uniform.
  AugmentConfig cfg;
  cfg.min_scale = 0.08;
  cfg.max_scale = 0.5;
  Rng rng(9);
  const int N = 4000;
  std::vector<double> scale, logr, posx;
  for (int i = 0; i < N; ++i) {
    bool fb = true;
    const CropRect c = sample_crop(1000, 1000, cfg, rng, &fb);
    REQUIRE(!fb);
    scale.push_back(double(c.w) * c.h / 1e6);
    logr.push_back(std::log(double(c.w) / c.h));
    if (c.w < 1000) posx.push_back((c.x + 0.5) / (1000 - c.w + 1));
  }
  const double crit = 1.63 / std::sqrt(double(N));  // KS, 1% level
  CHECK(ks_uniform(scale, 0.08, 0.5) < crit);
  CHECK(ks_uniform(logr, std::log(0.75), std::log(4.0 / 3.0)) < crit);
  CHECK(ks_uniform(posx, 0.0, 1.0) < 1.63 / std::sqrt(double(posx.size())));

  // Scale (0.08, 1): tries are refused when w or h exceeds the side, which biases the accepted
  // scale. For a square image a try (s, r) fits iff s <= exp(-|log r|) (up to rounding), so the
  // first fitting try has E[s] = E[(e^2 - 0.08^2) / 2 / (e - 0.08)] weighted by (e - 0.08),
  // e = exp(-|log r|), log r uniform: integrate numerically.
  cfg.max_scale = 1.0;
  double num = 0, den = 0;
  const int G = 20000;
  for (int i = 0; i < G; ++i) {
    const double l = std::log(0.75) + (i + 0.5) / G * (std::log(4.0 / 3.0) - std::log(0.75));
    const double e = std::exp(-std::fabs(l));
    num += (e * e - 0.08 * 0.08) / 2.0;
    den += e - 0.08;
  }
  const double expect_mean = num / den;
  double sum = 0, sum2 = 0;
  int fallbacks = 0;
  for (int i = 0; i < N; ++i) {
    bool fb = false;
    const CropRect c = sample_crop(1000, 1000, cfg, rng, &fb);
    REQUIRE(c.w >= 1);
    REQUIRE(c.x + c.w <= 1000);
    REQUIRE(c.y + c.h <= 1000);
    fallbacks += fb;
    const double s = double(c.w) * c.h / 1e6;
    sum += s;
    sum2 += s * s;
  }
  const double mean = sum / N, sd = std::sqrt(sum2 / N - mean * mean);
  CHECK(fallbacks == 0);  // P(10 refusals) ~ 1e-9
  CHECK(std::fabs(mean - expect_mean) < 4 * sd / std::sqrt(double(N)));
  CHECK(expect_mean < 0.54 - 0.01);  // the bias is real: U(0.08, 1) would give 0.54
}

TEST_CASE("crops: centre fallback after 10 refusals", "[data][geometry]") {
  AugmentConfig cfg;
  cfg.min_scale = 3.9;  // targets larger than the image: every try is refused
  cfg.max_scale = 4.0;
  Rng rng(1);
  bool fb = false;
  CropRect c = sample_crop(2000, 50, cfg, rng, &fb);  // too wide: ratio clamped to 4/3
  CHECK(fb);
  CHECK(c.h == 50);
  CHECK(c.w == 67);
  CHECK(c.y == 0);
  CHECK(c.x == (2000 - 67) / 2);
  c = sample_crop(50, 2000, cfg, rng, &fb);  // too tall: ratio clamped to 3/4
  CHECK(c.w == 50);
  CHECK(c.h == 67);
  CHECK(c.x == 0);
  CHECK(c.y == (2000 - 67) / 2);
  c = sample_crop(300, 250, cfg, rng, &fb);  // ratio within range: the whole image
  CHECK(c.x == 0);
  CHECK(c.y == 0);
  CHECK(c.w == 300);
  CHECK(c.h == 250);
}

TEST_CASE("crops: the second crop must overlap the first by 1% of its area", "[data][geometry]") {
  AugmentConfig cfg;
  cfg.min_scale = 0.01;
  cfg.max_scale = 0.05;
  // A 1 x 1 corner crop can never hold 1% of a crop of >= 2500 pixels: every try is refused and
  // the result is a plain crop (same distribution, no condition).
  for (int t = 0; t < 50; ++t) {
    Rng rng(static_cast<uint64_t>(t));
    bool cond = true;
    const CropRect c = sample_crop_conditioned(500, 500, cfg, {0, 0, 1, 1}, rng, &cond);
    REQUIRE(!cond);
    REQUIRE(c.w * c.h >= 2000);
  }
  // Against the whole image the first try always qualifies, so the draws are those of a plain
  // sample_crop with the same seed.
  for (int t = 0; t < 50; ++t) {
    Rng r1(static_cast<uint64_t>(t)), r2(static_cast<uint64_t>(t));
    bool cond = false;
    const CropRect a = sample_crop_conditioned(500, 400, cfg, {0, 0, 500, 400}, r1, &cond);
    const CropRect b = sample_crop(500, 400, cfg, r2);
    REQUIRE(cond);
    REQUIRE((a.x == b.x && a.y == b.y && a.w == b.w && a.h == b.h));
  }
  // Against a small crop: every accepted crop meets the condition, and conditioning raises the
  // overlap rate well above that of independent crops.
  const CropRect first{100, 100, 80, 80};
  int cond_n = 0, indep_overlap = 0;
  const int N = 2000;
  for (int t = 0; t < N; ++t) {
    Rng rng(uint64_t(t), 3);
    bool cond = false;
    const CropRect c = sample_crop_conditioned(500, 500, cfg, first, rng, &cond);
    if (cond) {
      ++cond_n;
      // target area vs rounded w * h: allow the rounding of each side
      REQUIRE(double(crop_intersection(c, first)) >= 0.01 * (c.w - 1) * (c.h - 1));
    }
    Rng rng2(uint64_t(t), 4);
    indep_overlap += crop_intersection(sample_crop(500, 500, cfg, rng2), first) > 0;
  }
  CHECK(cond_n > 2 * indep_overlap);
}

TEST_CASE("augmentation: parameters are a function of the seed", "[data][geometry]") {
  AugmentConfig cfg;
  for (int t = 0; t < 20; ++t) {
    Rng a(uint64_t(t), 1, 2), b(uint64_t(t), 1, 2), c(uint64_t(t) + 1000, 1, 2);
    const TwoViewParams p = sample_two_view_params(640, 480, cfg, a);
    const TwoViewParams q = sample_two_view_params(640, 480, cfg, b);
    for (int v = 0; v < 2; ++v) {
      REQUIRE(p.view[v].crop.x == q.view[v].crop.x);
      REQUIRE(p.view[v].crop.w == q.view[v].crop.w);
      REQUIRE(p.view[v].flip == q.view[v].flip);
      REQUIRE(p.view[v].color.brightness == q.view[v].color.brightness);
      REQUIRE(p.view[v].color.sigma == q.view[v].color.sigma);
    }
    (void)c;
  }
  // Probabilities of the random decisions over many samples.
  int flips = 0, jitter = 0, gray = 0, blur0 = 0, blur1 = 0, sol0 = 0, sol1 = 0;
  const int N = 4000;
  for (int t = 0; t < N; ++t) {
    Rng r(uint64_t(t), 99);
    const TwoViewParams p = sample_two_view_params(300, 200, cfg, r);
    for (int v = 0; v < 2; ++v) {
      flips += p.view[v].flip;
      jitter += p.view[v].color.jitter;
      gray += p.view[v].color.grayscale;
      const ColorParams& c = p.view[v].color;
      if (c.jitter) {
        REQUIRE((c.brightness >= 0.6 && c.brightness <= 1.4));
        REQUIRE((c.contrast >= 0.6 && c.contrast <= 1.4));
        REQUIRE((c.saturation >= 0.8 && c.saturation <= 1.2));
        REQUIRE((c.hue >= -0.1 && c.hue <= 0.1));
        std::vector<int> o(c.order, c.order + 4);
        std::sort(o.begin(), o.end());
        REQUIRE(o == std::vector<int>{0, 1, 2, 3});
      }
      if (c.blur) REQUIRE((c.sigma >= 0.1 && c.sigma <= 2.0));
    }
    blur0 += p.view[0].color.blur;
    blur1 += p.view[1].color.blur;
    sol0 += p.view[0].color.solarize;
    sol1 += p.view[1].color.solarize;
  }
  auto near = [](int count, int n, double p) {
    return std::fabs(double(count) / n - p) < 4 * std::sqrt(p * (1 - p) / n) + 1e-9;
  };
  CHECK(near(flips, 2 * N, 0.5));
  CHECK(near(jitter, 2 * N, 0.8));
  CHECK(near(gray, 2 * N, 0.2));
  CHECK(blur0 == N);
  CHECK(near(blur1, N, 0.1));
  CHECK(sol0 == 0);
  CHECK(near(sol1, N, 0.2));
}
