#include "data/transforms.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/error.h"

// Hot loops get an AVX2 clone next to the baseline one, picked at load time (GCC, x86-64). The
// loops are element-wise (no reassociation), so both clones give the same bytes. Not under the
// sanitizers: their instrumentation breaks the ifunc resolvers, which run before they start.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    !defined(__SANITIZE_THREAD__) && !defined(__SANITIZE_ADDRESS__)
#define SC_DATA_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SC_DATA_VECTOR_CLONES
#endif

namespace sc {
namespace data {
namespace {

inline uint8_t clip_fixed(int32_t v) {
  v >>= kResampleBits;  // arithmetic shift, as PIL's clip8
  return v < 0 ? 0 : (v > 255 ? 255 : uint8_t(v));
}

inline uint8_t clip_round(float v) {
  v += 0.5f;
  return v <= 0.f ? 0 : (v >= 255.f ? 255 : uint8_t(v));
}

void reverse_pixels(uint8_t* row, int w) {
  for (int a = 0, b = w - 1; a < b; ++a, --b) {
    for (int c = 0; c < 3; ++c) std::swap(row[a * 3 + c], row[b * 3 + c]);
  }
}

// acc[i] += s[i] * w for i < n (vertical pass of the resampling).
SC_DATA_VECTOR_CLONES void mac_row_u8(int32_t* acc, const uint8_t* s, int32_t w, int n) {
  for (int i = 0; i < n; ++i) acc[i] += int32_t(s[i]) * w;
}

// acc[i] += s[i] * w for i < n (blur passes).
SC_DATA_VECTOR_CLONES void mac_row_f32(float* acc, const float* s, float w, int n) {
  for (int i = 0; i < n; ++i) acc[i] += w * s[i];
}

// One row of the horizontal pass: d[o] = sum_k s[first[o] + k] * w[o][k] for 3 channels.
void resample_row_h(const uint8_t* s, const ResampleFilter& f, uint8_t* d) {
  const int taps = f.taps;
  for (int o = 0; o < f.out_size; ++o) {
    const uint8_t* p = s + size_t(f.first[o]) * 3;
    const int32_t* w = f.weights.data() + size_t(o) * taps;
    int32_t a0 = 1 << (kResampleBits - 1), a1 = a0, a2 = a0;
    const int n = f.count[o];
    for (int k = 0; k < n; ++k) {
      const int32_t wk = w[k];
      a0 += int32_t(p[3 * k + 0]) * wk;
      a1 += int32_t(p[3 * k + 1]) * wk;
      a2 += int32_t(p[3 * k + 2]) * wk;
    }
    d[3 * o + 0] = clip_fixed(a0);
    d[3 * o + 1] = clip_fixed(a1);
    d[3 * o + 2] = clip_fixed(a2);
  }
}

}  // namespace

double bicubic_kernel(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

void make_bicubic_filter(int in_size, int out_size, ResampleFilter* f) {
  SC_CHECK(in_size >= 1 && out_size >= 1, "make_bicubic_filter: sizes must be positive, got ",
           in_size, " -> ", out_size);
  const double scale = double(in_size) / double(out_size);
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = 2.0 * filterscale;
  const int taps = int(std::ceil(support)) * 2 + 1;
  f->in_size = in_size;
  f->out_size = out_size;
  f->taps = taps;
  f->first.assign(out_size, 0);
  f->count.assign(out_size, 0);
  f->weights.assign(size_t(out_size) * taps, 0);
  f->weights_f.assign(size_t(out_size) * taps, 0.0);
  const double ss = 1.0 / filterscale;
  for (int o = 0; o < out_size; ++o) {
    const double center = (o + 0.5) * scale;
    int xmin = int(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = int(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double* k = f->weights_f.data() + size_t(o) * taps;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      const double w = bicubic_kernel((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x) {
      if (ww != 0.0) k[x] /= ww;
    }
    int32_t* ki = f->weights.data() + size_t(o) * taps;
    for (int x = 0; x < xmax; ++x) {
      const double v = k[x] * double(1 << kResampleBits);
      ki[x] = int32_t(v < 0 ? v - 0.5 : v + 0.5);
    }
    f->first[o] = xmin;
    f->count[o] = xmax;
  }
}

void resize_crop_bicubic(const ImageU8& src, int x0, int y0, int cw, int ch, int out_w, int out_h,
                         bool flip, ImageU8* dst, ResampleScratch* scratch) {
  SC_CHECK(
      cw >= 1 && ch >= 1 && x0 >= 0 && y0 >= 0 && x0 + cw <= src.width && y0 + ch <= src.height,
      "resize_crop_bicubic: crop (", x0, ", ", y0, ", ", cw, ", ", ch, ") is not inside the ",
      src.width, "x", src.height, " image");
  SC_CHECK(out_w >= 1 && out_h >= 1, "resize_crop_bicubic: bad output size ", out_w, "x", out_h);
  dst->resize(out_w, out_h);
  const bool need_h = out_w != cw;
  const bool need_v = out_h != ch;
  ResampleFilter& fx = scratch->fx;
  ResampleFilter& fy = scratch->fy;
  if (need_h && (fx.in_size != cw || fx.out_size != out_w)) make_bicubic_filter(cw, out_w, &fx);
  if (need_v && (fy.in_size != ch || fy.out_size != out_h)) make_bicubic_filter(ch, out_h, &fy);

  // Rows of the (cropped) source the vertical pass reads.
  int ybox_first = 0, ybox_last = ch;
  if (need_v) {
    ybox_first = fy.first[0];
    ybox_last = fy.first[out_h - 1] + fy.count[out_h - 1];
  }

  // Horizontal pass, into tmp (rows ybox_first..ybox_last-1 of the crop), or straight into dst.
  const uint8_t* vsrc = nullptr;  // row r of the vertical pass input: vsrc + r * vstride
  size_t vstride = 0;
  if (need_h) {
    const size_t row_bytes = size_t(out_w) * 3;
    uint8_t* out;
    if (need_v) {
      scratch->tmp.resize(row_bytes * size_t(ybox_last - ybox_first));
      out = scratch->tmp.data();
    } else {
      out = dst->rgb.data();
    }
    for (int r = ybox_first; r < ybox_last; ++r) {
      resample_row_h(src.row(y0 + r) + size_t(x0) * 3, fx,
                     out + size_t(r - ybox_first) * row_bytes);
    }
    vsrc = out;
    vstride = row_bytes;
  } else {
    vsrc = src.row(y0 + ybox_first) + size_t(x0) * 3;
    vstride = size_t(src.width) * 3;
  }

  if (need_v) {
    const int n = out_w * 3;
    scratch->acc.resize(size_t(n));
    int32_t* acc = scratch->acc.data();
    const int taps = fy.taps;
    for (int o = 0; o < out_h; ++o) {
      std::fill(acc, acc + n, int32_t(1) << (kResampleBits - 1));
      const int32_t* w = fy.weights.data() + size_t(o) * taps;
      const int r0 = fy.first[o] - ybox_first;
      for (int k = 0; k < fy.count[o]; ++k) {
        mac_row_u8(acc, vsrc + size_t(r0 + k) * vstride, w[k], n);
      }
      uint8_t* d = dst->row(o);
      for (int i = 0; i < n; ++i) d[i] = clip_fixed(acc[i]);
    }
  } else if (!need_h) {
    // Same size in both directions: PIL copies the crop.
    for (int r = 0; r < out_h; ++r) {
      std::memcpy(dst->row(r), vsrc + size_t(r) * vstride, size_t(out_w) * 3);
    }
  }
  if (flip) {
    for (int r = 0; r < out_h; ++r) reverse_pixels(dst->row(r), out_w);
  }
}

void rgb_to_hsv_u8(uint8_t r, uint8_t g, uint8_t b, uint8_t* uh, uint8_t* us, uint8_t* uv) {
  // Bit-identical to Pillow's rgb2hsv_row: the same float variables and double constants;
  // fmod(x, 1) and the final truncations are written out (exact for the ranges involved) to keep
  // libm calls out of the per-pixel loop.
  const uint8_t maxc = std::max(r, std::max(g, b));
  const uint8_t minc = std::min(r, std::min(g, b));
  *uv = maxc;
  if (minc == maxc) {
    *uh = 0;
    *us = 0;
    return;
  }
  const float cr = float(maxc - minc);
  const float s = cr / float(maxc);
  float h;
  if (r == maxc) {
    h = float(maxc - b) / cr - float(maxc - g) / cr;
  } else if (g == maxc) {
    h = float(2.0 + float(maxc - r) / cr - float(maxc - b) / cr);
  } else {
    h = float(4.0 + float(maxc - g) / cr - float(maxc - r) / cr);
  }
  double x = h / 6.0 + 1.0;  // in [5/6, 11/6]: fmod(x, 1) is x or x - 1, both exact
  if (x >= 1.0) x -= 1.0;
  h = float(x);
  const int ih = int(h * 255.0);
  const int is = int(s * 255.0);
  *uh = uint8_t(ih < 0 ? 0 : (ih > 255 ? 255 : ih));
  *us = uint8_t(is < 0 ? 0 : (is > 255 ? 255 : is));
}

namespace {
// round() (half away from zero) of a non-negative double, clipped to 0..255.
inline uint8_t round_clip_nonneg(double x) {
  int t = int(x);
  if (x - double(t) >= 0.5) ++t;
  return uint8_t(t > 255 ? 255 : t);
}
}  // namespace

void hsv_to_rgb_u8(uint8_t h, uint8_t s, uint8_t v, uint8_t* r, uint8_t* g, uint8_t* b) {
  if (s == 0) {
    *r = *g = *b = v;
    return;
  }
  const double hh = float(h) * 6.0 / 255.0;  // >= 0: int() is floor()
  const int i = int(hh);
  const float f = float(hh - float(i));
  const float fs = float(float(s) / 255.0);
  const uint8_t p = round_clip_nonneg(float(v) * (1.0 - fs));
  const uint8_t q = round_clip_nonneg(float(v) * (1.0 - fs * f));
  const uint8_t t = round_clip_nonneg(float(v) * (1.0 - fs * (1.0 - f)));
  switch (i % 6) {
    case 0:
      *r = v, *g = t, *b = p;
      break;
    case 1:
      *r = q, *g = v, *b = p;
      break;
    case 2:
      *r = p, *g = v, *b = t;
      break;
    case 3:
      *r = p, *g = q, *b = v;
      break;
    case 4:
      *r = t, *g = p, *b = v;
      break;
    default:
      *r = v, *g = p, *b = q;
      break;
  }
}

void adjust_brightness(ImageU8* img, float factor) {
  uint8_t lut[256];
  for (int v = 0; v < 256; ++v) lut[v] = blend_u8(0, v, factor);
  for (uint8_t& p : img->rgb) p = lut[p];
}

void adjust_contrast(ImageU8* img, float factor) {
  const size_t npix = size_t(img->width) * size_t(img->height);
  if (npix == 0) return;
  uint64_t sum = 0;
  const uint8_t* p = img->rgb.data();
  for (size_t i = 0; i < npix; ++i, p += 3) sum += luma_u8(p[0], p[1], p[2]);
  const int mean = int(double(sum) / double(npix) + 0.5);
  uint8_t lut[256];
  for (int v = 0; v < 256; ++v) lut[v] = blend_u8(mean, v, factor);
  for (uint8_t& q : img->rgb) q = lut[q];
}

void adjust_saturation(ImageU8* img, float factor) {
  const size_t npix = size_t(img->width) * size_t(img->height);
  uint8_t* p = img->rgb.data();
  for (size_t i = 0; i < npix; ++i, p += 3) {
    const int l = luma_u8(p[0], p[1], p[2]);
    p[0] = blend_u8(l, p[0], factor);
    p[1] = blend_u8(l, p[1], factor);
    p[2] = blend_u8(l, p[2], factor);
  }
}

void adjust_hue(ImageU8* img, double hue_factor) {
  SC_CHECK(hue_factor >= -0.5 && hue_factor <= 0.5, "adjust_hue: factor ", hue_factor,
           " is not in [-0.5, 0.5]");
  // torchvision: np_h += np.int32(hue_factor * 255).astype(np.uint8) (wraps modulo 256).
  const uint8_t shift = uint8_t(uint32_t(int32_t(hue_factor * 255.0)) & 0xFFu);
  // No shortcut for shift == 0: torchvision still makes the (lossy) 8-bit HSV round trip.
  const size_t npix = size_t(img->width) * size_t(img->height);
  uint8_t* p = img->rgb.data();
  for (size_t i = 0; i < npix; ++i, p += 3) {
    uint8_t h, s, v;
    rgb_to_hsv_u8(p[0], p[1], p[2], &h, &s, &v);
    hsv_to_rgb_u8(uint8_t(h + shift), s, v, &p[0], &p[1], &p[2]);
  }
}

void to_grayscale(ImageU8* img) {
  const size_t npix = size_t(img->width) * size_t(img->height);
  uint8_t* p = img->rgb.data();
  for (size_t i = 0; i < npix; ++i, p += 3) p[0] = p[1] = p[2] = luma_u8(p[0], p[1], p[2]);
}

void solarize(ImageU8* img, int threshold) {
  uint8_t lut[256];
  for (int v = 0; v < 256; ++v) lut[v] = uint8_t(v < threshold ? v : 255 - v);
  for (uint8_t& q : img->rgb) q = lut[q];
}

std::vector<float> gaussian_taps(float sigma) {
  SC_CHECK(sigma > 0.f, "gaussian_taps: sigma must be positive, got ", sigma);
  const int r = std::max(1, int(std::ceil(3.0 * double(sigma))));
  std::vector<double> w(2 * r + 1);
  double sum = 0.0;
  for (int k = -r; k <= r; ++k) {
    w[k + r] = std::exp(-double(k) * double(k) / (2.0 * double(sigma) * double(sigma)));
    sum += w[k + r];
  }
  std::vector<float> out(w.size());
  for (size_t i = 0; i < w.size(); ++i) out[i] = float(w[i] / sum);
  return out;
}

void gaussian_blur(ImageU8* img, float sigma, std::vector<float>* scratch) {
  const int W = img->width, H = img->height;
  if (W <= 0 || H <= 0) return;
  const std::vector<float> taps = gaussian_taps(sigma);
  const int r = int(taps.size() / 2);
  const int ntaps = int(taps.size());
  const int n = W * 3;
  // scratch: [the image as float, H * n][vertical result, H * n][padded row, (W + 2r) * 3]
  const size_t plane = size_t(H) * size_t(n);
  const size_t psize = size_t(W + 2 * r) * 3;
  if (scratch->size() < 2 * plane + psize) scratch->resize(2 * plane + psize);
  float* src = scratch->data();
  float* vbuf = src + plane;
  float* pad = vbuf + plane;
  for (size_t i = 0; i < plane; ++i) src[i] = float(img->rgb[i]);
  // Vertical pass (edges replicated).
  for (int y = 0; y < H; ++y) {
    float* acc = vbuf + size_t(y) * n;
    std::fill(acc, acc + n, 0.f);
    for (int k = 0; k < ntaps; ++k) {
      const int yy = std::min(H - 1, std::max(0, y + k - r));
      mac_row_f32(acc, src + size_t(yy) * n, taps[size_t(k)], n);
    }
  }
  // Horizontal pass on a row padded with replicated edge pixels.
  float* acc = src;  // the float copy of the image is no longer needed: reuse one row of it
  for (int y = 0; y < H; ++y) {
    const float* v = vbuf + size_t(y) * n;
    for (int x = 0; x < r; ++x) {
      for (int c = 0; c < 3; ++c) {
        pad[x * 3 + c] = v[c];
        pad[(r + W + x) * 3 + c] = v[(W - 1) * 3 + c];
      }
    }
    std::memcpy(pad + size_t(r) * 3, v, sizeof(float) * size_t(n));
    std::fill(acc, acc + n, 0.f);
    for (int k = 0; k < ntaps; ++k) {
      mac_row_f32(acc, pad + size_t(k) * 3, taps[size_t(k)], n);
    }
    uint8_t* d = img->row(y);
    for (int i = 0; i < n; ++i) d[i] = clip_round(acc[i]);
  }
}

void normalize_to_chw(const ImageU8& img, float* out, const float mean[3], const float std_[3]) {
  float lut[3][256];
  for (int c = 0; c < 3; ++c) {
    for (int v = 0; v < 256; ++v) lut[c][v] = (float(v) / 255.f - mean[c]) / std_[c];
  }
  const size_t plane = size_t(img.width) * size_t(img.height);
  float* o0 = out;
  float* o1 = out + plane;
  float* o2 = out + 2 * plane;
  const uint8_t* p = img.rgb.data();
  for (size_t i = 0; i < plane; ++i, p += 3) {
    o0[i] = lut[0][p[0]];
    o1[i] = lut[1][p[1]];
    o2[i] = lut[2][p[2]];
  }
}

}  // namespace data
}  // namespace sc
