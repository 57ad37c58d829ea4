// The training curves (apps/curves.h): the renderer puts each line where its points say, skips
// non-finite points, keeps the score panel at 0..1; write_training_curves reads the run's logs
// (skipping malformed lines) into a PNG of one panel (losses) or two (and the grouping score).
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "app_test_util.h"
#include "apps/curves.h"
#include "data/image.h"
#include "engine/error.h"

using namespace sc;

namespace {
unsigned px(const std::vector<unsigned char>& img, int w, int x, int y) {
  const unsigned char* p = &img[(size_t(y) * size_t(w) + size_t(x)) * 3];
  return (unsigned(p[0]) << 16) | (unsigned(p[1]) << 8) | p[2];
}
}  // namespace

TEST_CASE("curves: a line goes where its points say, and non-finite points are skipped",
          "[apps][curves]") {
  // one panel 400 x 200, fixed range 0..1: the plot area is x 90..380, y 30..160 (curves.cpp)
  CurvePanel p{"t", {{"a", {{0, 0}, {10, 1}, {20, NAN}}, 0x00ff00}}, true};
  const int W = 400, H = 200;
  const std::vector<unsigned char> img = render_curves({p}, W, H);
  REQUIRE(img.size() == size_t(W) * H * 3);
  // the x range is 0..10 (the NaN point is skipped): (5, 0.5) is the middle of the plot area
  const int xm = 90 + (380 - 90) / 2, ym = 160 - (160 - 30) / 2;
  bool on_line = false;
  for (int dy = -2; dy <= 2; ++dy)
    for (int dx = -2; dx <= 2; ++dx) on_line |= px(img, W, xm + dx, ym + dy) == 0x00ff00;
  CHECK(on_line);
  // the ends, where their points say: (0, 0) bottom left, (10, 1) top right (y grows upwards)
  auto green_near = [&](int x, int y) {
    for (int dy = -2; dy <= 2; ++dy)
      for (int dx = -2; dx <= 2; ++dx)
        if (px(img, W, x + dx, y + dy) == 0x00ff00) return true;
    return false;
  };
  CHECK(green_near(90, 160));
  CHECK(green_near(380, 30));
  CHECK(!green_near(90, 30));
  CHECK(!green_near(380, 160));
  // far from the diagonal: white
  CHECK(px(img, W, 90 + 20, 30 + 20) == 0xffffff);
  CHECK(px(img, W, 380 - 20, 160 - 20) == 0xffffff);
  CHECK_THROWS_AS(render_curves({}, W, H), Error);
}

TEST_CASE("curves: write_training_curves draws the run's logs", "[apps][curves]") {
  const std::string dir = app_test::fresh_dir("curves");
  CHECK(write_training_curves(dir).empty());  // nothing logged yet
  {
    std::ofstream m(std::filesystem::path(dir) / "metrics.jsonl");
    m << R"({"step": 1, "loss": 5.0, "group": 2.0, "contrast": 3.0})" << "\n"
      << "not json\n"
      << R"({"step": 10, "loss": 4.0, "group": 1.5, "contrast": 2.5})" << "\n";
  }
  std::string path = write_training_curves(dir);
  REQUIRE(!path.empty());
  data::ImageU8 img;
  REQUIRE(data::load_image(path, &img));
  CHECK(img.width == 960);
  CHECK(img.height == 320);  // the loss panel alone
  {
    std::ofstream g(std::filesystem::path(dir) / "grouping.jsonl");
    g << R"({"step": 0, "miou": 0.1, "pixel_accuracy": 0.3})" << "\n"
      << R"({"step": 10, "miou": 0.35, "pixel_accuracy": 0.6})" << "\n";
  }
  path = write_training_curves(dir);
  REQUIRE(data::load_image(path, &img));
  CHECK(img.height == 640);  // and the score panel
}
