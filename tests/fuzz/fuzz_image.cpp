// Fuzz target: image file bytes, as the loader reads an image folder. decode_image must either
// refuse with a reason (never throw) or return an RGB image of the size it states, within the
// limits; a decoded image then goes through the loader's per-sample path (both views sampled,
// cropped, resized, coloured and normalised at 32 px), whose values must be finite.
#include <cmath>
#include <string>
#include <vector>

#include "data/augment.h"
#include "data/image.h"
#include "data/rng.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sc::data;
  DecodeLimits limits;  // small, so that one input stays fast
  limits.max_side = 4096;
  limits.max_pixels = 1 << 20;
  ImageU8 img;
  std::string why;
  if (!decode_image(data, size, &img, &why, limits)) {
    FUZZ_CHECK(img.empty() && !why.empty());
    return 0;
  }
  FUZZ_CHECK(img.width > 0 && img.height > 0 && img.width <= limits.max_side &&
             img.height <= limits.max_side);
  FUZZ_CHECK(img.rgb.size() == size_t(img.width) * size_t(img.height) * 3);
  AugmentConfig cfg;
  cfg.size = 32;
  uint64_t seed = size;
  for (size_t i = 0; i < size && i < 16; ++i) seed = seed * 131 + data[i];
  Rng rng(seed);
  std::vector<float> v0(3 * 32 * 32), v1(3 * 32 * 32);
  AugmentScratch scratch;
  TwoViewParams p = augment_two_views(img, cfg, rng, v0.data(), v1.data(), &scratch);
  FUZZ_CHECK(p.src_width == img.width && p.src_height == img.height);
  for (int v = 0; v < 2; ++v) {
    const CropRect& c = p.view[v].crop;
    FUZZ_CHECK(c.w > 0 && c.h > 0 && c.x >= 0 && c.y >= 0 && c.x + c.w <= img.width &&
               c.y + c.h <= img.height);
  }
  for (size_t i = 0; i < v0.size(); ++i) FUZZ_CHECK(std::isfinite(v0[i]) && std::isfinite(v1[i]));
  return 0;
}
