// slot_vis.h: pictures of the slots, to watch them form. Each image is drawn beside itself with
// every pixel tinted by the colour of its arg-max prototype (the teacher's assignment at feature
// resolution, upsampled nearest) and a dark line where the prototype changes.
#pragma once
#include <array>
#include <cstdint>
#include <vector>

namespace sc {

// The colour of prototype k: hues a golden-ratio turn apart, with three brightness/saturation
// levels, so that neighbouring indices differ clearly. Deterministic.
std::array<uint8_t, 3> prototype_color(int64_t k);

struct RgbImage {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // row-major, 3 bytes per pixel
};

// The tint weight: overlay = (1 - kSlotTint) * image + kSlotTint * colour, rounded.
constexpr double kSlotTint = 0.55;
// White pixels between tiles (and around the grid), and between an image and its slots.
constexpr int kSlotGridGap = 12;
constexpr int kSlotPairGap = 2;

// A grid of `count` tiles, `cols` per row. Tile i is image i (size x size RGB, images + i *
// size * size * 3) and, to its right, the same image tinted by maps[i] (h x w prototype indices,
// row-major, maps + i * h * w) upsampled to size x size: pixel (x, y) takes cell (x * w / size,
// y * h / size); a pixel whose right or lower neighbour lies in a cell of another prototype is
// drawn black. Throws sc::Error on a bad size or a negative prototype index.
RgbImage render_slot_grid(const uint8_t* images, const int64_t* maps, int64_t count, int size,
                          int h, int w, int cols);

}  // namespace sc
