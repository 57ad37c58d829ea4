// slot_vis.cpp: pictures of the slots (see slot_vis.h).
#include "model/slot_vis.h"

#include <algorithm>
#include <cmath>

#include "engine/error.h"

namespace sc {

std::array<uint8_t, 3> prototype_color(int64_t k) {
  SC_CHECK(k >= 0, "prototype_color: negative index ", k);
  const double golden = 0.6180339887498949;
  const double hue = std::fmod(0.1 + double(k) * golden, 1.0) * 6.0;  // [0, 6)
  static const double kSat[3] = {0.85, 0.55, 0.95}, kVal[3] = {0.95, 0.8, 0.6};
  const double s = kSat[k % 3], v = kVal[k % 3];
  const int sector = int(hue);
  const double f = hue - sector;
  const double p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f));
  double r, g, b;
  switch (sector) {
    case 0:
      r = v, g = t, b = p;
      break;
    case 1:
      r = q, g = v, b = p;
      break;
    case 2:
      r = p, g = v, b = t;
      break;
    case 3:
      r = p, g = q, b = v;
      break;
    case 4:
      r = t, g = p, b = v;
      break;
    default:
      r = v, g = p, b = q;
      break;
  }
  auto u8 = [](double x) { return uint8_t(std::lround(std::clamp(x, 0.0, 1.0) * 255.0)); };
  return {u8(r), u8(g), u8(b)};
}

RgbImage render_slot_grid(const uint8_t* images, const int64_t* maps, int64_t count, int size,
                          int h, int w, int cols) {
  SC_CHECK(count >= 1 && size >= 1 && h >= 1 && w >= 1 && cols >= 1,
           "render_slot_grid: bad sizes (count ", count, ", size ", size, ", map ", h, "x", w,
           ", cols ", cols, ")");
  const int64_t ncols = std::min<int64_t>(cols, count), nrows = (count + ncols - 1) / ncols;
  const int64_t tile_w = 2 * int64_t(size) + kSlotPairGap, tile_h = size;
  RgbImage out;
  out.width = int(ncols * (tile_w + kSlotGridGap) + kSlotGridGap);
  out.height = int(nrows * (tile_h + kSlotGridGap) + kSlotGridGap);
  out.rgb.assign(size_t(out.width) * size_t(out.height) * 3, 255);
  std::vector<int> cx(static_cast<size_t>(size)), cy(static_cast<size_t>(size));  // pixel -> cell
  for (int x = 0; x < size; ++x) cx[size_t(x)] = int(int64_t(x) * w / size);
  for (int y = 0; y < size; ++y) cy[size_t(y)] = int(int64_t(y) * h / size);
  for (int64_t i = 0; i < count; ++i) {
    const uint8_t* img = images + i * int64_t(size) * size * 3;
    const int64_t* map = maps + i * int64_t(h) * w;
    for (int64_t c = 0; c < int64_t(h) * w; ++c)
      SC_CHECK(map[c] >= 0, "render_slot_grid: image ", i, " has prototype index ", map[c]);
    const int64_t ox = kSlotGridGap + (i % ncols) * (tile_w + kSlotGridGap);
    const int64_t oy = kSlotGridGap + (i / ncols) * (tile_h + kSlotGridGap);
    for (int y = 0; y < size; ++y) {
      uint8_t* row = out.rgb.data() + ((oy + y) * out.width + ox) * 3;
      const uint8_t* src = img + int64_t(y) * size * 3;
      std::copy(src, src + int64_t(size) * 3, row);  // the image
      uint8_t* tint = row + (int64_t(size) + kSlotPairGap) * 3;
      const int64_t* mrow = map + int64_t(cy[size_t(y)]) * w;
      const int64_t* mnext = y + 1 < size ? map + int64_t(cy[size_t(y + 1)]) * w : mrow;
      for (int x = 0; x < size; ++x) {
        const int64_t k = mrow[cx[size_t(x)]];
        const bool edge =
            (x + 1 < size && mrow[cx[size_t(x + 1)]] != k) || mnext[cx[size_t(x)]] != k;
        const std::array<uint8_t, 3> col = prototype_color(k);
        for (int ch = 0; ch < 3; ++ch) {
          const double v = (1 - kSlotTint) * src[x * 3 + ch] + kSlotTint * col[size_t(ch)];
          tint[x * 3 + ch] = edge ? 0 : uint8_t(std::lround(v));
        }
      }
    }
  }
  return out;
}

}  // namespace sc
