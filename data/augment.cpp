#include "data/augment.h"

#include <algorithm>
#include <cmath>

#include "engine/error.h"

namespace sc {
namespace data {
namespace {

// Python's round() on a non-negative double: half to even (the default floating-point rounding
// mode), then int().
int py_round(double x) { return int(std::nearbyint(x)); }

// One try of get_params: returns false when the drawn size does not fit.
bool try_crop(int W, int H, const AugmentConfig& cfg, Rng& rng, CropRect* out,
              double* target_area) {
  const double area = double(W) * double(H);
  const double t = rng.uniform(cfg.min_scale, cfg.max_scale) * area;
  const double aspect = std::exp(rng.uniform(std::log(cfg.min_ratio), std::log(cfg.max_ratio)));
  const int w = py_round(std::sqrt(t * aspect));
  const int h = py_round(std::sqrt(t / aspect));
  *target_area = t;
  if (0 < w && w <= W && 0 < h && h <= H) {
    out->y = int(rng.randint(0, H - h));
    out->x = int(rng.randint(0, W - w));
    out->w = w;
    out->h = h;
    return true;
  }
  return false;
}

void randperm4(Rng& rng, int order[4]) {
  for (int i = 0; i < 4; ++i) order[i] = i;
  for (int i = 3; i > 0; --i) std::swap(order[i], order[rng.randint(0, i)]);
}

void sample_color(const AugmentConfig& cfg, int v, Rng& rng, ColorParams* c) {
  c->jitter = rng.bernoulli(cfg.jitter_p);
  if (c->jitter) {
    randperm4(rng, c->order);
    c->brightness = rng.uniform(std::max(0.0, 1.0 - cfg.brightness), 1.0 + cfg.brightness);
    c->contrast = rng.uniform(std::max(0.0, 1.0 - cfg.contrast), 1.0 + cfg.contrast);
    c->saturation = rng.uniform(std::max(0.0, 1.0 - cfg.saturation), 1.0 + cfg.saturation);
    c->hue = rng.uniform(-cfg.hue, cfg.hue);
  }
  c->grayscale = rng.bernoulli(cfg.grayscale_p);
  c->blur = rng.bernoulli(cfg.blur_p[v]);
  if (c->blur) c->sigma = rng.uniform(cfg.blur_sigma_min, cfg.blur_sigma_max);
  c->solarize = rng.bernoulli(cfg.solarize_p[v]);
}

}  // namespace

AugmentConfig AugmentConfig::geometry_only(int size, double min_scale) {
  AugmentConfig c;
  c.size = size;
  c.min_scale = min_scale;
  c.jitter_p = 0.0;
  c.grayscale_p = 0.0;
  c.blur_p[0] = c.blur_p[1] = 0.0;
  c.solarize_p[0] = c.solarize_p[1] = 0.0;
  return c;
}

CropRect sample_crop(int W, int H, const AugmentConfig& cfg, Rng& rng, bool* fallback) {
  SC_CHECK(W >= 1 && H >= 1, "sample_crop: bad image size ", W, "x", H);
  CropRect r;
  double t;
  for (int i = 0; i < 10; ++i) {
    if (try_crop(W, H, cfg, rng, &r, &t)) {
      if (fallback) *fallback = false;
      return r;
    }
  }
  // Centre fallback.
  const double in_ratio = double(W) / double(H);
  if (in_ratio < cfg.min_ratio) {
    r.w = W;
    r.h = py_round(r.w / cfg.min_ratio);
  } else if (in_ratio > cfg.max_ratio) {
    r.h = H;
    r.w = py_round(r.h * cfg.max_ratio);
  } else {
    r.w = W;
    r.h = H;
  }
  r.w = std::max(1, std::min(r.w, W));
  r.h = std::max(1, std::min(r.h, H));
  r.y = (H - r.h) / 2;
  r.x = (W - r.w) / 2;
  if (fallback) *fallback = true;
  return r;
}

int64_t crop_intersection(const CropRect& a, const CropRect& b) {
  const int64_t xo = std::max(0, std::min(a.x + a.w, b.x + b.w) - std::max(a.x, b.x));
  const int64_t yo = std::max(0, std::min(a.y + a.h, b.y + b.h) - std::max(a.y, b.y));
  return xo * yo;
}

CropRect sample_crop_conditioned(int W, int H, const AugmentConfig& cfg, const CropRect& other,
                                 Rng& rng, bool* conditioned) {
  CropRect r;
  double t;
  for (int i = 0; i < 10; ++i) {
    if (try_crop(W, H, cfg, rng, &r, &t) && double(crop_intersection(r, other)) >= 0.01 * t) {
      if (conditioned) *conditioned = true;
      return r;
    }
  }
  if (conditioned) *conditioned = false;
  return sample_crop(W, H, cfg, rng);
}

void overlap_boxes(const CropRect& a, const CropRect& b, Box* box_a, Box* box_b) {
  const double x1 = std::max(a.x, b.x), y1 = std::max(a.y, b.y);
  const double x2 = std::min(a.x + a.w, b.x + b.w), y2 = std::min(a.y + a.h, b.y + b.h);
  auto to_box = [&](const CropRect& c) {
    Box o;
    o.x1 = float((x1 - c.x) / c.w);
    o.y1 = float((y1 - c.y) / c.h);
    o.x2 = float((x2 - c.x) / c.w);
    o.y2 = float((y2 - c.y) / c.h);
    return o;
  };
  *box_a = to_box(a);
  *box_b = to_box(b);
}

Box mirror_box(const Box& b) {
  Box o = b;
  o.x1 = 1.f - b.x2;
  o.x2 = 1.f - b.x1;
  return o;
}

void view_to_source(const ViewParams& view, double u, double v, double* sx, double* sy) {
  const double uu = view.flip ? 1.0 - u : u;
  *sx = view.crop.x + uu * view.crop.w;
  *sy = view.crop.y + v * view.crop.h;
}

TwoViewParams sample_two_view_params(int W, int H, const AugmentConfig& cfg, Rng& rng) {
  TwoViewParams p;
  p.src_width = W;
  p.src_height = H;
  p.view[0].crop = sample_crop(W, H, cfg, rng, &p.crop1_fallback);
  if (cfg.condition_overlap) {
    p.view[1].crop = sample_crop_conditioned(W, H, cfg, p.view[0].crop, rng, &p.crop2_conditioned);
  } else {
    p.view[1].crop = sample_crop(W, H, cfg, rng);
  }
  overlap_boxes(p.view[0].crop, p.view[1].crop, &p.view[0].box, &p.view[1].box);
  for (int v = 0; v < 2; ++v) {
    p.view[v].flip = rng.bernoulli(cfg.flip_p);
    if (p.view[v].flip) p.view[v].box = mirror_box(p.view[v].box);
  }
  for (int v = 0; v < 2; ++v) sample_color(cfg, v, rng, &p.view[v].color);
  return p;
}

void render_view_u8(const ImageU8& src, const ViewParams& view, const AugmentConfig& cfg,
                    ImageU8* out, AugmentScratch* scratch) {
  const CropRect& c = view.crop;
  resize_crop_bicubic(src, c.x, c.y, c.w, c.h, cfg.size, cfg.size, view.flip, out,
                      &scratch->resample);
  const ColorParams& col = view.color;
  if (col.jitter) {
    for (int id : col.order) {
      switch (id) {
        case 0:
          adjust_brightness(out, float(col.brightness));
          break;
        case 1:
          adjust_contrast(out, float(col.contrast));
          break;
        case 2:
          adjust_saturation(out, float(col.saturation));
          break;
        default:
          adjust_hue(out, col.hue);
          break;
      }
    }
  }
  if (col.grayscale) to_grayscale(out);
  if (col.blur) gaussian_blur(out, float(col.sigma), &scratch->blur);
  if (col.solarize) solarize(out, cfg.solarize_threshold);
}

TwoViewParams augment_two_views(const ImageU8& src, const AugmentConfig& cfg, Rng& rng, float* out0,
                                float* out1, AugmentScratch* scratch) {
  SC_CHECK(!src.empty(), "augment_two_views: empty image");
  TwoViewParams p = sample_two_view_params(src.width, src.height, cfg, rng);
  float* outs[2] = {out0, out1};
  for (int v = 0; v < 2; ++v) {
    render_view_u8(src, p.view[v], cfg, &scratch->view, scratch);
    normalize_to_chw(scratch->view, outs[v]);
  }
  return p;
}

TwoViewParams augment_two_views_u8(const ImageU8& src, const AugmentConfig& cfg, Rng& rng,
                                   uint8_t* out0, uint8_t* out1, AugmentScratch* scratch) {
  SC_CHECK(!src.empty(), "augment_two_views_u8: empty image");
  TwoViewParams p = sample_two_view_params(src.width, src.height, cfg, rng);
  uint8_t* outs[2] = {out0, out1};
  for (int v = 0; v < 2; ++v) {
    render_view_u8(src, p.view[v], cfg, &scratch->view, scratch);
    std::copy(scratch->view.rgb.begin(), scratch->view.rgb.end(), outs[v]);
  }
  return p;
}

}  // namespace data
}  // namespace sc
