// Slot pictures: prototype colours and the grid's pixels against their definition.
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <set>
#include <vector>

#include "test_seed.h"
#include "engine/error.h"
#include "model/slot_vis.h"

TEST_CASE("slot pictures: prototype colours are deterministic and tell neighbours apart",
          "[slot_vis]") {
  std::set<std::array<uint8_t, 3>> seen;
  for (int64_t k = 0; k < 256; ++k) {
    const auto c = sc::prototype_color(k);
    CHECK(c == sc::prototype_color(k));
    seen.insert(c);
    if (k > 0) {  // consecutive prototypes differ clearly (sum of channel differences)
      const auto p = sc::prototype_color(k - 1);
      int d = 0;
      for (int ch = 0; ch < 3; ++ch) d += std::abs(int(c[size_t(ch)]) - int(p[size_t(ch)]));
      CHECK(d >= 60);
    }
  }
  CHECK(seen.size() >= 250);  // 256 indices, (almost) all distinct
  CHECK_THROWS_AS(sc::prototype_color(-1), sc::Error);
}

TEST_CASE("slot pictures: the grid holds each image and its tinted prototype map", "[slot_vis]") {
  std::mt19937_64 rng(sc::testing::next_seed());
  const int S = 37, h = 5, w = 3, cols = 2;  // awkward: S not a multiple of the map size
  const int64_t n = 3;                       // two rows, the second half empty
  std::vector<uint8_t> images(size_t(n * S * S * 3));
  for (uint8_t& v : images) v = uint8_t(rng() % 256);
  std::vector<int64_t> maps(size_t(n * h * w));
  for (int64_t& k : maps) k = int64_t(rng() % 5);
  const sc::RgbImage g = sc::render_slot_grid(images.data(), maps.data(), n, S, h, w, cols);
  const int gap = sc::kSlotGridGap, pair = sc::kSlotPairGap, tile_w = 2 * S + pair;
  REQUIRE(g.width == cols * (tile_w + gap) + gap);
  REQUIRE(g.height == 2 * (S + gap) + gap);
  REQUIRE(g.rgb.size() == size_t(g.width) * g.height * 3);
  auto px = [&](int x, int y, int ch) { return g.rgb[(size_t(y) * g.width + x) * 3 + ch]; };
  for (int64_t i = 0; i < n; ++i) {
    const int ox = gap + int(i % cols) * (tile_w + gap), oy = gap + int(i / cols) * (S + gap);
    const uint8_t* img = images.data() + i * S * S * 3;
    const int64_t* map = maps.data() + i * h * w;
    auto cell = [&](int x, int y) { return map[(y * h / S) * w + x * w / S]; };
    for (int y = 0; y < S; ++y)
      for (int x = 0; x < S; ++x) {
        const int64_t k = cell(x, y);
        const bool edge = (x + 1 < S && cell(x + 1, y) != k) || (y + 1 < S && cell(x, y + 1) != k);
        const auto col = sc::prototype_color(k);
        for (int ch = 0; ch < 3; ++ch) {
          const uint8_t v = img[(y * S + x) * 3 + ch];
          REQUIRE(px(ox + x, oy + y, ch) == v);
          const long want =
              edge ? 0 : std::lround((1 - sc::kSlotTint) * v + sc::kSlotTint * col[size_t(ch)]);
          REQUIRE(long(px(ox + S + pair + x, oy + y, ch)) == want);
        }
      }
    for (int y = 0; y < S; ++y)  // the gap inside the pair is white
      for (int ch = 0; ch < 3; ++ch) REQUIRE(px(ox + S, oy + y, ch) == 255);
  }
  // the empty slot of the second row and the margins stay white
  for (int y = gap + S + gap; y < g.height; ++y)
    for (int x = gap + tile_w + gap; x < g.width; ++x) REQUIRE(px(x, y, 1) == 255);
  for (int x = 0; x < g.width; ++x) REQUIRE(px(x, 0, 0) == 255);
}

TEST_CASE("slot pictures: bad sizes and negative prototypes are errors", "[slot_vis]") {
  std::vector<uint8_t> img(4 * 4 * 3, 0);
  std::vector<int64_t> map = {0, 1, 2, -1};
  CHECK_THROWS_AS(sc::render_slot_grid(img.data(), map.data(), 1, 4, 2, 2, 1), sc::Error);
  map[3] = 3;
  CHECK_NOTHROW(sc::render_slot_grid(img.data(), map.data(), 1, 4, 2, 2, 1));
  CHECK_THROWS_AS(sc::render_slot_grid(img.data(), map.data(), 0, 4, 2, 2, 1), sc::Error);
  CHECK_THROWS_AS(sc::render_slot_grid(img.data(), map.data(), 1, 4, 2, 2, 0), sc::Error);
}
