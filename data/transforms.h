// transforms.h: the pixel operations of SlotCon's augmentation, with torchvision-on-PIL semantics.
//
// Every operation works on 8-bit interleaved RGB (ImageU8), as PIL does between the steps of a
// torchvision pipeline, and reproduces PIL's arithmetic (fixed point, truncation, clamping), so
// that a view made here matches the authors' pictures to within a grey level. The last step,
// normalize_to_chw, produces the float tensor layout (3, S, S).
//
// Formulas (f is the factor, v an 8-bit value, blend(a, b, f) = a + f * (b - a) evaluated in
// float, clamped to [0, 255] and truncated, as PIL's Image.blend):
//   brightness  v' = blend(0, v, f)
//   contrast    v' = blend(m, v, f), m = int(mean over the image of L + 0.5)
//   saturation  v' = blend(L, v, f), L of the same pixel
//   hue         PIL's RGB -> HSV (8-bit H, S, V), H += int(h * 255) modulo 256, HSV -> RGB
//   grayscale   L = (19595 R + 38470 G + 7471 B + 32768) >> 16 (PIL's 0.299/0.587/0.114 in
//               16-bit fixed point), copied to the three channels
//   solarize    v' = v < threshold ? v : 255 - v
//   blur        separable Gaussian of standard deviation sigma, radius ceil(3 sigma), edges
//               replicated (PIL's GaussianBlur(radius=sigma) approximates the same Gaussian
//               with three box blurs)
//   normalize   x = (v / 255 - mean_c) / std_c in float32, ImageNet mean and std.
#pragma once
#include <cstdint>
#include <vector>

#include "data/image.h"

namespace sc {
namespace data {

// ---- resampling (PIL's bicubic, crop then resize) -------------------------------------------

// A 1-D resampling filter in PIL's form: output o reads `count[o]` consecutive inputs starting
// at `first[o]`, with weights weights[o * taps + k] (fixed point, kResampleBits fractional bits,
// each row summing to 1 << kResampleBits up to rounding); weights_f holds the same in double.
constexpr int kResampleBits = 22;
struct ResampleFilter {
  int in_size = 0;
  int out_size = 0;
  int taps = 0;
  std::vector<int> first;
  std::vector<int> count;
  std::vector<int32_t> weights;
  std::vector<double> weights_f;
};

// PIL's bicubic kernel (a = -0.5).
double bicubic_kernel(double x);

// The filter that maps in_size pixels onto out_size pixels (PIL's precompute_coeffs with the
// bicubic kernel): output o is centred at (o + 0.5) * scale, scale = in_size / out_size, its
// support is 2 * max(scale, 1) input pixels each side, taps that fall outside [0, in_size) are
// dropped and the rest renormalised.
void make_bicubic_filter(int in_size, int out_size, ResampleFilter* f);

struct ResampleScratch {
  ResampleFilter fx, fy;
  std::vector<uint8_t> tmp;  // horizontal pass output
  std::vector<int32_t> acc;  // vertical pass accumulators
};

// dst = resize(src.crop(x0, y0, cw, ch), (out_w, out_h), BICUBIC), exactly as PIL computes it for
// 8-bit images: horizontal pass first (into an 8-bit image), then vertical; either pass is
// skipped when that dimension keeps its size. When `flip` is set, the result is mirrored left to
// right. Requires 0 <= x0, 0 <= y0, x0 + cw <= src.width, y0 + ch <= src.height, cw, ch >= 1.
void resize_crop_bicubic(const ImageU8& src, int x0, int y0, int cw, int ch, int out_w, int out_h,
                         bool flip, ImageU8* dst, ResampleScratch* scratch);

// ---- colour ---------------------------------------------------------------------------------

// PIL's RGB -> L.
inline uint8_t luma_u8(uint8_t r, uint8_t g, uint8_t b) {
  return uint8_t((uint32_t(r) * 19595u + uint32_t(g) * 38470u + uint32_t(b) * 7471u + 0x8000u) >>
                 16);
}
// PIL's Image.blend of two 8-bit values with a float factor.
inline uint8_t blend_u8(int a, int b, float f) {
  float t = float(a) + f * float(b - a);
  if (t <= 0.f) return 0;
  if (t >= 255.f) return 255;
  return uint8_t(t);
}
// PIL's 8-bit HSV conversions (colorsys formulas, hue and saturation scaled to 0..255).
void rgb_to_hsv_u8(uint8_t r, uint8_t g, uint8_t b, uint8_t* h, uint8_t* s, uint8_t* v);
void hsv_to_rgb_u8(uint8_t h, uint8_t s, uint8_t v, uint8_t* r, uint8_t* g, uint8_t* b);

void adjust_brightness(ImageU8* img, float factor);
void adjust_contrast(ImageU8* img, float factor);
void adjust_saturation(ImageU8* img, float factor);
// hue_factor in [-0.5, 0.5] (a fraction of a turn).
void adjust_hue(ImageU8* img, double hue_factor);
void to_grayscale(ImageU8* img);
void solarize(ImageU8* img, int threshold = 128);

// The normalised Gaussian taps exp(-k^2 / (2 sigma^2)), k = -r..r, r = max(1, ceil(3 sigma)).
std::vector<float> gaussian_taps(float sigma);
// In place; `scratch` is reused between calls (no allocation once it is large enough).
void gaussian_blur(ImageU8* img, float sigma, std::vector<float>* scratch);

// ImageNet statistics used by SlotCon (torchvision.transforms.Normalize).
constexpr float kImageNetMean[3] = {0.485f, 0.456f, 0.406f};
constexpr float kImageNetStd[3] = {0.229f, 0.224f, 0.225f};

// out[c * H * W + y * W + x] = (img(x, y, c) / 255 - mean[c]) / std[c], float32 throughout as
// torchvision's ToTensor + Normalize compute it.
void normalize_to_chw(const ImageU8& img, float* out, const float mean[3] = kImageNetMean,
                      const float std[3] = kImageNetStd);

}  // namespace data
}  // namespace sc
