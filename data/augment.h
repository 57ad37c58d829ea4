// augment.h: SlotCon's two-view augmentation (docs/method.md §7; the authors' data/transforms.py).
//
// For one source image of W x H pixels, sample_two_view_params draws, in this order:
//   crop 1    torchvision RandomResizedCrop.get_params: 10 tries of scale ~ U(min_scale, 1) of
//             the area and log-ratio ~ U(log 3/4, log 4/3); w = round(sqrt(area * ratio)),
//             h = round(sqrt(area / ratio)); accepted when 0 < w <= W and 0 < h <= H, placed at
//             y ~ randint(0, H - h), x ~ randint(0, W - w); otherwise the centre fallback (ratio
//             clamped to [3/4, 4/3], whole image when it fits).
//   crop 2    the same 10 tries, but a try is accepted only if its intersection with crop 1 is
//             at least 1% of its target area; after 10 refusals, a plain get_params (crop 1's
//             procedure, no overlap condition).
//   flips     view 1 then view 2, each with probability 0.5.
//   colour    view 1: jitter (p 0.8: a random permutation of the four operations, brightness and
//             contrast factors ~ U(0.6, 1.4), saturation ~ U(0.8, 1.2), hue ~ U(-0.1, 0.1)),
//             grayscale (p 0.2), blur (p 1.0, sigma ~ U(0.1, 2)); view 2: the same jitter and
//             grayscale, blur with p 0.1, solarize with p 0.2.
// A view is then rendered: crop, bicubic resize to S x S, flip, colour operations, normalisation
// (transforms.h).
//
// Box convention (the authors' _clip_coords and CustomRandomHorizontalFlip): the intersection of
// the two crops, in source pixels [x1, x2) x [y1, y2), is expressed in each view's normalised
// coordinates, box_v = ((x1 - cx_v) / cw_v, (y1 - cy_v) / ch_v, (x2 - cx_v) / cw_v,
// (y2 - cy_v) / ch_v), where (cx_v, cy_v, cw_v, ch_v) is crop v. A flipped view mirrors its box:
// (x1, x2) -> (1 - x2, 1 - x1). Normalised coordinate u of a view (0 = left edge, 1 = right edge
// of the S x S picture) shows source column cx_v + u * cw_v when the view is not flipped and
// cx_v + (1 - u) * cw_v when it is. When the crops do not intersect (only possible after the
// fallback), the box is kept as computed (x2 < x1 or y2 < y1), as the authors' code does.
#pragma once
#include <cstdint>

#include "data/image.h"
#include "data/rng.h"
#include "data/transforms.h"

namespace sc {
namespace data {

// A crop in source pixels (torchvision's i = y, j = x, h, w).
struct CropRect {
  int x = 0;
  int y = 0;
  int w = 0;
  int h = 0;
};

// Normalised box (x1, y1, x2, y2) in a view's coordinates.
struct Box {
  float x1 = 0.f, y1 = 0.f, x2 = 1.f, y2 = 1.f;
};

struct AugmentConfig {
  int size = 224;  // S: output views are S x S
  double min_scale = 0.08;
  double max_scale = 1.0;
  double min_ratio = 3.0 / 4.0;
  double max_ratio = 4.0 / 3.0;
  bool condition_overlap = true;
  double flip_p = 0.5;
  double jitter_p = 0.8;
  double brightness = 0.4;
  double contrast = 0.4;
  double saturation = 0.2;
  double hue = 0.1;
  double grayscale_p = 0.2;
  double blur_p[2] = {1.0, 0.1};
  double blur_sigma_min = 0.1;
  double blur_sigma_max = 2.0;
  double solarize_p[2] = {0.0, 0.2};
  int solarize_threshold = 128;

  // Geometry only: no colour, blur or solarize (used by tests and for evaluation views).
  static AugmentConfig geometry_only(int size, double min_scale);
};

// The colour decisions of one view.
struct ColorParams {
  bool jitter = false;
  int order[4] = {0, 1, 2, 3};  // 0 brightness, 1 contrast, 2 saturation, 3 hue
  double brightness = 1.0, contrast = 1.0, saturation = 1.0, hue = 0.0;
  bool grayscale = false;
  bool blur = false;
  double sigma = 0.0;
  bool solarize = false;
};

struct ViewParams {
  CropRect crop;
  bool flip = false;
  Box box;  // overlap box in this view's normalised coordinates (mirrored when flipped)
  ColorParams color;
};

struct TwoViewParams {
  int src_width = 0, src_height = 0;
  ViewParams view[2];
  bool crop1_fallback = false;     // crop 1 came from the centre fallback
  bool crop2_conditioned = false;  // crop 2 met the overlap condition within its 10 tries
};

// torchvision RandomResizedCrop.get_params. *fallback (optional) tells whether the centre
// fallback was used.
CropRect sample_crop(int W, int H, const AugmentConfig& cfg, Rng& rng, bool* fallback = nullptr);
// The authors' get_params_conditioned: *conditioned tells whether a try met the overlap
// condition (otherwise the result is a plain sample_crop).
CropRect sample_crop_conditioned(int W, int H, const AugmentConfig& cfg, const CropRect& other,
                                 Rng& rng, bool* conditioned = nullptr);
// Area of the intersection of two crops, in pixels.
int64_t crop_intersection(const CropRect& a, const CropRect& b);
// The intersection of crops a and b in each one's normalised coordinates (not flipped).
void overlap_boxes(const CropRect& a, const CropRect& b, Box* box_a, Box* box_b);
Box mirror_box(const Box& b);
// Source pixel coordinate (continuous, pixel edges at integers) shown at normalised view
// coordinate (u, v) of a view.
void view_to_source(const ViewParams& view, double u, double v, double* sx, double* sy);

// Draw every random decision for one sample of a W x H image.
TwoViewParams sample_two_view_params(int W, int H, const AugmentConfig& cfg, Rng& rng);

// Per-thread buffers, reused across samples.
struct AugmentScratch {
  ResampleScratch resample;
  ImageU8 view;
  std::vector<float> blur;
};

// Crop, resize, flip and colour one view into an S x S 8-bit image (before normalisation).
void render_view_u8(const ImageU8& src, const ViewParams& view, const AugmentConfig& cfg,
                    ImageU8* out, AugmentScratch* scratch);

// The whole pipeline for one sample: draws the parameters from rng, renders both views and
// writes them normalised to out[0] and out[1] (each 3 * S * S floats, CHW).
TwoViewParams augment_two_views(const ImageU8& src, const AugmentConfig& cfg, Rng& rng, float* out0,
                                float* out1, AugmentScratch* scratch);
// The same views before normalisation: out[0] and out[1] each S * S * 3 bytes, RGB interleaved
// (HWC), for normalisation where the batch is used (engine/nn_ops.h normalize_images, on a GPU
// after a copy 4x smaller than the floats'). The same draws from rng as augment_two_views.
TwoViewParams augment_two_views_u8(const ImageU8& src, const AugmentConfig& cfg, Rng& rng,
                                   uint8_t* out0, uint8_t* out1, AugmentScratch* scratch);

}  // namespace data
}  // namespace sc
