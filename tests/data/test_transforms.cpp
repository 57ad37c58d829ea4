// Pixel operations against their formulas, and against values produced by PIL 9.4 (the library
// the authors' torchvision pipeline runs on) for small known inputs.
#include <array>
#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

#include "data/rng.h"
#include "data/transforms.h"
#include "engine/error.h"

using namespace sc::data;

namespace {

ImageU8 pattern_7x5() {
  ImageU8 im;
  im.resize(7, 5);
  for (int y = 0; y < 5; ++y)
    for (int x = 0; x < 7; ++x)
      for (int c = 0; c < 3; ++c)
        im.row(y)[3 * x + c] = uint8_t((x * 37 + y * 59 + c * 101 + x * y * 13) % 256);
  return im;
}

ImageU8 from_pixels(const std::vector<std::array<int, 3>>& px) {
  ImageU8 im;
  im.resize(int(px.size()), 1);
  for (size_t i = 0; i < px.size(); ++i)
    for (int c = 0; c < 3; ++c) im.rgb[3 * i + c] = uint8_t(px[i][c]);
  return im;
}

std::vector<int> as_ints(const ImageU8& im) {
  return std::vector<int>(im.rgb.begin(), im.rgb.end());
}

ImageU8 random_image(int w, int h, uint64_t seed) {
  Rng rng(seed);
  ImageU8 im;
  im.resize(w, h);
  for (auto& v : im.rgb) v = uint8_t(rng.randint(0, 255));
  return im;
}

// Luma in double, rounded: PIL's 0.299 R + 0.587 G + 0.114 B.
int luma_formula(int r, int g, int b) {
  return int(std::floor(0.299 * r + 0.587 * g + 0.114 * b + 0.5));
}
int blend_formula(double a, double b, double f) {
  double t = a + f * (b - a);
  t = std::min(255.0, std::max(0.0, t));
  return int(t);  // truncation, as PIL
}

}  // namespace

TEST_CASE("bicubic filter: kernel values and PIL's support and centres", "[data][resample]") {
  CHECK(bicubic_kernel(0.0) == 1.0);
  CHECK(bicubic_kernel(1.0) == Approx(0.0).margin(1e-15));
  CHECK(bicubic_kernel(2.0) == 0.0);
  // a = -0.5: k(0.5) = (1.5 * 0.5 - 2.5) * 0.25 + 1 = 0.5625, k(1.5) = -0.0625.
  CHECK(bicubic_kernel(0.5) == Approx(0.5625));
  CHECK(bicubic_kernel(-1.5) == Approx(-0.0625));

  // Shrinking 12 -> 4: scale 3, support 6, output o centred at 3 (o + 0.5).
  ResampleFilter f;
  make_bicubic_filter(12, 4, &f);
  for (int o = 0; o < 4; ++o) {
    const double center = 3.0 * (o + 0.5);
    double sum = 0;
    int64_t isum = 0;
    std::vector<double> expect;
    for (int x = 0; x < 12; ++x) {
      const double w = bicubic_kernel((x + 0.5 - center) / 3.0);
      expect.push_back(w);
      sum += w;
    }
    for (int k = 0; k < f.count[o]; ++k) {
      const int x = f.first[o] + k;
      CHECK(f.weights_f[size_t(o) * f.taps + k] == Approx(expect[size_t(x)] / sum).margin(1e-12));
      isum += f.weights[size_t(o) * f.taps + k];
    }
    // Taps outside the filter's support are not used.
    for (int x = 0; x < 12; ++x) {
      if (x < f.first[o] || x >= f.first[o] + f.count[o]) CHECK(expect[size_t(x)] == 0.0);
    }
    CHECK(std::llabs(isum - (int64_t(1) << kResampleBits)) <= f.count[o]);
  }
}

TEST_CASE("bicubic resize: matches PIL 9.4 byte for byte", "[data][resample]") {
  const ImageU8 im = pattern_7x5();
  ResampleScratch rs;
  ImageU8 out;
  // PIL: Image.frombytes(...).resize((4, 3), Image.BICUBIC).tobytes()
  resize_crop_bicubic(im, 0, 0, 7, 5, 4, 3, false, &out, &rs);
  CHECK(as_ints(out) == std::vector<int>{38,  148, 134, 118, 124, 85,  111, 156, 138,
                                         151, 106, 149, 154, 124, 84,  169, 104, 156,
                                         106, 141, 160, 154, 119, 149, 183, 87,  129,
                                         149, 118, 92,  163, 130, 121, 79,  114, 156});
  // PIL: .crop((1, 1, 6, 5)).resize((3, 7), Image.BICUBIC): shrink in x, enlarge in y.
  resize_crop_bicubic(im, 1, 1, 5, 4, 3, 7, false, &out, &rs);
  CHECK(as_ints(out) == std::vector<int>{129, 127, 66,  159, 35,  152, 17,  138, 248, 159, 96,
                                         100, 138, 78,  173, 64,  127, 189, 209, 49,  154, 106,
                                         156, 201, 142, 107, 96,  201, 88,  148, 121, 193, 141,
                                         143, 108, 157, 170, 134, 116, 152, 192, 84,  124, 110,
                                         217, 127, 110, 73,  181, 125, 118, 127, 96,  124, 103,
                                         92,  49,  196, 84,  143, 130, 87,  65});
  // Enlarging 7x5 -> 11x9: first row and last pixel from PIL.
  resize_crop_bicubic(im, 0, 0, 7, 5, 11, 9, false, &out, &rs);
  CHECK(std::vector<int>(out.rgb.begin(), out.rgb.begin() + 6) ==
        std::vector<int>{0, 93, 215, 8, 108, 246});
  CHECK(std::vector<int>(out.rgb.end() - 3, out.rgb.end()) == std::vector<int>{0, 99, 223});
}

TEST_CASE("bicubic resize: constants stay, same size copies, flip mirrors", "[data][resample]") {
  ImageU8 c;
  c.resize(37, 23);
  for (size_t i = 0; i < c.rgb.size(); ++i)
    c.rgb[i] = uint8_t(i % 3 == 0 ? 200 : i % 3 == 1 ? 17 : 99);
  ResampleScratch rs;
  ImageU8 out;
  resize_crop_bicubic(c, 3, 2, 30, 19, 64, 8, false, &out, &rs);
  for (size_t i = 0; i < out.rgb.size(); ++i) REQUIRE(int(out.rgb[i]) == int(c.rgb[i % 3]));

  const ImageU8 r = random_image(40, 30, 5);
  resize_crop_bicubic(r, 4, 6, 20, 10, 20, 10, false, &out, &rs);
  for (int y = 0; y < 10; ++y)
    for (int x = 0; x < 60; ++x) REQUIRE(out.row(y)[x] == r.row(y + 6)[4 * 3 + x]);

  ImageU8 flipped;
  resize_crop_bicubic(r, 1, 2, 33, 25, 17, 13, false, &out, &rs);
  resize_crop_bicubic(r, 1, 2, 33, 25, 17, 13, true, &flipped, &rs);
  for (int y = 0; y < 13; ++y)
    for (int x = 0; x < 17; ++x)
      for (int ch = 0; ch < 3; ++ch)
        REQUIRE(flipped.row(y)[3 * x + ch] == out.row(y)[3 * (16 - x) + ch]);
}

TEST_CASE("colour: brightness, contrast, saturation on known pixels", "[data][color]") {
  ImageU8 im = from_pixels({{100, 200, 50}, {0, 255, 7}});
  adjust_brightness(&im, 1.3f);
  CHECK(as_ints(im) == std::vector<int>{130, 255, 65, 0, 255, 9});  // 7 * 1.3 = 9.1 -> 9
  im = from_pixels({{100, 200, 50}});
  adjust_brightness(&im, 0.7f);
  CHECK(as_ints(im) == std::vector<int>{70, 140, 35});

  // Saturation 0.5 of (200, 100, 50): L = 124, blend -> (162, 112, 87).
  im = from_pixels({{200, 100, 50}});
  adjust_saturation(&im, 0.5f);
  CHECK(as_ints(im) == std::vector<int>{162, 112, 87});

  // Contrast: L of (0,0,0) = 0, of (255,255,255) = 255 -> mean = int(127.5 + 0.5) = 128;
  // factor 0.5: 0 -> 64, 255 -> 191.5 -> 191.
  im = from_pixels({{0, 0, 0}, {255, 255, 255}});
  adjust_contrast(&im, 0.5f);
  CHECK(as_ints(im) == std::vector<int>{64, 64, 64, 191, 191, 191});

  // Against PIL 9.4 (ImageEnhance.Contrast(...).enhance(1.37), ImageEnhance.Color(0.81)).
  const std::vector<std::array<int, 3>> px = {{255, 0, 0},  {12, 200, 99}, {250, 250, 3},
                                              {77, 66, 55}, {0, 0, 1},     {128, 64, 255}};
  im = from_pixels(px);
  adjust_contrast(&im, 1.37f);
  CHECK(as_ints(im) ==
        std::vector<int>{255, 0, 0, 0, 236, 98, 255, 255, 0, 68, 53, 37, 0, 0, 0, 137, 50, 255});
  im = from_pixels(px);
  adjust_saturation(&im, 0.81f);
  CHECK(as_ints(im) == std::vector<int>{220, 14, 14, 34, 187, 105, 244, 244, 44, 75, 66, 57, 0, 0,
                                        0, 123, 71, 226});
}

TEST_CASE("colour: brightness, contrast, saturation follow torchvision's formulas",
          "[data][color]") {
  Rng rng(11);
  for (int trial = 0; trial < 20; ++trial) {
    const ImageU8 src = random_image(13, 7, 100 + trial);
    const double f = rng.uniform(0.5, 1.5);
    // Luma and the image mean, from the formula.
    double lsum = 0;
    for (size_t i = 0; i < src.rgb.size(); i += 3)
      lsum += luma_formula(src.rgb[i], src.rgb[i + 1], src.rgb[i + 2]);
    const int mean = int(lsum / (13 * 7) + 0.5);

    ImageU8 b = src, c = src, s = src;
    adjust_brightness(&b, float(f));
    adjust_contrast(&c, float(f));
    adjust_saturation(&s, float(f));
    for (size_t i = 0; i < src.rgb.size(); ++i) {
      const size_t p = i / 3 * 3;
      const int l = luma_formula(src.rgb[p], src.rgb[p + 1], src.rgb[p + 2]);
      // One grey level of slack: float vs double at truncation boundaries, and PIL's 16-bit
      // fixed-point luma vs the exact weights.
      REQUIRE(std::abs(int(b.rgb[i]) - blend_formula(0, src.rgb[i], f)) <= 1);
      REQUIRE(std::abs(int(c.rgb[i]) - blend_formula(mean, src.rgb[i], f)) <= 1);
      REQUIRE(std::abs(int(s.rgb[i]) - blend_formula(l, src.rgb[i], f)) <= 1);
    }
  }
}

TEST_CASE("colour: hue shift in PIL's HSV", "[data][color]") {
  // Pure red shifted by a third of a turn: shift = int(255 / 3) = 85 -> h = 85 -> green-ish.
  ImageU8 im = from_pixels({{255, 0, 0}});
  adjust_hue(&im, 1.0 / 3.0);
  CHECK(as_ints(im) == std::vector<int>{0, 255, 0});

  // Against PIL 9.4 + torchvision's adjust_hue (np_h += int(hue * 255) mod 256).
  const std::vector<std::array<int, 3>> px = {{255, 0, 0},  {12, 200, 99}, {250, 250, 3},
                                              {77, 66, 55}, {0, 0, 1},     {128, 64, 255}};
  im = from_pixels(px);
  adjust_hue(&im, 0.1);
  CHECK(as_ints(im) == std::vector<int>{255, 150, 0, 13, 193, 200, 108, 250, 4, 75, 77, 55, 1, 0, 1,
                                        239, 64, 255});
  im = from_pixels(px);
  adjust_hue(&im, -0.1);
  CHECK(as_ints(im) ==
        std::vector<int>{255, 0, 144, 39, 200, 13, 250, 102, 4, 77, 55, 57, 0, 1, 1, 64, 113, 255});
  im = from_pixels(px);
  adjust_hue(&im, 0.05);
  CHECK(as_ints(im) ==
        std::vector<int>{255, 72, 0, 13, 200, 149, 183, 250, 4, 77, 72, 55, 0, 0, 1, 181, 64, 255});

  // Formula: colorsys hue of the output = hue of the input + shift (mod 1), saturation and value
  // kept, up to the 8-bit quantisation of PIL's HSV.
  auto hsv = [](int r, int g, int b, double* h, double* s, double* v) {
    const double R = r / 255.0, G = g / 255.0, B = b / 255.0;
    const double mx = std::max(R, std::max(G, B)), mn = std::min(R, std::min(G, B));
    *v = mx;
    *s = mx > 0 ? (mx - mn) / mx : 0;
    if (mx == mn) {
      *h = 0;
      return;
    }
    const double rc = (mx - R) / (mx - mn), gc = (mx - G) / (mx - mn), bc = (mx - B) / (mx - mn);
    double hh = R == mx ? bc - gc : G == mx ? 2 + rc - bc : 4 + gc - rc;
    *h = std::fmod(hh / 6.0 + 1.0, 1.0);
  };
  Rng rng(3);
  int checked = 0;
  for (int t = 0; t < 2000; ++t) {
    const int r = int(rng.randint(0, 255)), g = int(rng.randint(0, 255)),
              b = int(rng.randint(0, 255));
    double h0, s0, v0;
    hsv(r, g, b, &h0, &s0, &v0);
    if (s0 < 0.5 || v0 < 0.5) continue;  // hue is ill-defined near grey and black
    const double factor = rng.uniform(-0.1, 0.1);
    ImageU8 p = from_pixels({{r, g, b}});
    adjust_hue(&p, factor);
    double h1, s1, v1;
    hsv(p.rgb[0], p.rgb[1], p.rgb[2], &h1, &s1, &v1);
    const double shift = double(int(factor * 255.0)) / 255.0;
    double dh = std::fmod(h1 - h0 - shift + 2.5, 1.0) - 0.5;
    REQUIRE(std::fabs(dh) < 0.012);
    REQUIRE(std::fabs(s1 - s0) < 0.03);
    REQUIRE(std::fabs(v1 - v0) <= 1.0 / 255 + 1e-9);
    ++checked;
  }
  CHECK(checked > 200);
  CHECK_THROWS_AS(adjust_hue(&im, 0.7), sc::Error);
}

TEST_CASE("colour: grayscale and solarize", "[data][color]") {
  ImageU8 im = from_pixels({{255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {10, 20, 30}});
  to_grayscale(&im);
  // PIL: red -> 76, green -> 150, blue -> 29; (10, 20, 30) -> 18.
  CHECK(as_ints(im) == std::vector<int>{76, 76, 76, 150, 150, 150, 29, 29, 29, 18, 18, 18});
  Rng rng(4);
  for (int t = 0; t < 1000; ++t) {
    const int r = int(rng.randint(0, 255)), g = int(rng.randint(0, 255)),
              b = int(rng.randint(0, 255));
    REQUIRE(std::abs(int(luma_u8(uint8_t(r), uint8_t(g), uint8_t(b))) - luma_formula(r, g, b)) <=
            1);
  }
  im = from_pixels({{0, 127, 128}, {200, 254, 255}});
  solarize(&im, 128);
  CHECK(as_ints(im) == std::vector<int>{0, 127, 127, 55, 1, 0});
}

TEST_CASE("blur: a Gaussian of the requested sigma", "[data][color]") {
  // An impulse in the middle of a black image spreads as the outer product of the taps.
  for (float sigma : {0.1f, 0.7f, 2.0f}) {
    const std::vector<float> taps = gaussian_taps(sigma);
    const int r = int(taps.size() / 2);
    CHECK(r == std::max(1, int(std::ceil(3.0 * sigma))));
    double sum = 0, var = 0;
    for (int k = -r; k <= r; ++k) {
      sum += taps[size_t(k + r)];
      var += taps[size_t(k + r)] * k * k;
    }
    CHECK(sum == Approx(1.0).epsilon(1e-6));
    if (sigma >= 0.5f) CHECK(std::sqrt(var) == Approx(sigma).epsilon(0.02));

    ImageU8 im;
    im.resize(31, 31);
    std::fill(im.rgb.begin(), im.rgb.end(), 0);
    im.row(15)[15 * 3 + 1] = 255;
    std::vector<float> scratch;
    gaussian_blur(&im, sigma, &scratch);
    for (int y = 0; y < 31; ++y) {
      for (int x = 0; x < 31; ++x) {
        const int dy = y - 15, dx = x - 15;
        double expect = 0;
        if (std::abs(dx) <= r && std::abs(dy) <= r)
          expect = 255.0 * taps[size_t(dx + r)] * taps[size_t(dy + r)];
        REQUIRE(std::fabs(im.row(y)[3 * x + 1] - expect) <= 0.5 + 1e-3);
        REQUIRE(im.row(y)[3 * x] == 0);
      }
    }
  }
  // A constant image is unchanged, edges included (replicated borders).
  ImageU8 c;
  c.resize(9, 4);
  std::fill(c.rgb.begin(), c.rgb.end(), 173);
  std::vector<float> scratch;
  gaussian_blur(&c, 1.9f, &scratch);
  for (uint8_t v : c.rgb) REQUIRE(int(v) == 173);
}

TEST_CASE("normalize: ToTensor + Normalize with ImageNet statistics, CHW", "[data][color]") {
  ImageU8 im = from_pixels({{0, 128, 255}, {255, 0, 10}});
  std::vector<float> out(6);
  normalize_to_chw(im, out.data());
  CHECK(out[0] == (0.f / 255.f - 0.485f) / 0.229f);
  CHECK(out[1] == (255.f / 255.f - 0.485f) / 0.229f);
  CHECK(out[2] == (128.f / 255.f - 0.456f) / 0.224f);
  CHECK(out[3] == (0.f / 255.f - 0.456f) / 0.224f);
  CHECK(out[4] == (255.f / 255.f - 0.406f) / 0.225f);
  CHECK(out[5] == (10.f / 255.f - 0.406f) / 0.225f);
}
