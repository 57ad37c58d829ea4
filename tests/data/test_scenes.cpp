// The synthetic scene set: determinism, classes, colours, files written out, class maps of
// views.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/loader.h"
#include "data/scenes.h"
#include "data_test_util.h"
#include "engine/error.h"

using namespace sc::data;
using namespace sc::data::testing;

namespace {

double hue_of(double r, double g, double b) {
  const double mx = std::max(r, std::max(g, b)), mn = std::min(r, std::min(g, b));
  if (mx == mn) return 0;
  double h = r == mx   ? (g - b) / (mx - mn)
             : g == mx ? 2 + (b - r) / (mx - mn)
                       : 4 + (r - g) / (mx - mn);
  h /= 6;
  return h < 0 ? h + 1 : h;
}

// A loader of 20 scenes of seed 9 at 48 x 40, batches of 4 views of 16 px.
LoaderConfig scene_loader_config(SceneObjects objects) {
  LoaderConfig cfg;
  cfg.synthetic = true;
  cfg.synthetic_count = 20;
  cfg.synthetic_seed = 9;
  cfg.synthetic_width = 48;
  cfg.synthetic_height = 40;
  cfg.synthetic_objects = objects;
  cfg.image_size = 16;
  cfg.batch_size = 4;
  cfg.num_workers = 1;
  return cfg;
}

// The dataset (scene 3 of seed 9 at 48 x 40) and the loader of scene_loader_config draw the set
// `objects`: the dataset's class map and image are render_scene's for that set.
void check_dataset_draws(SceneObjects objects) {
  SyntheticSceneDataset ds(20, 9, 48, 40, objects);
  CHECK(ds.objects() == objects);
  Scene scene;
  render_scene(9, 3, 48, 40, &scene, objects);
  CHECK(ds.class_map(3) == scene.class_map);
  ImageU8 img;
  std::string why;
  REQUIRE(ds.load(3, &img, &why));
  CHECK(img.rgb == scene.image.rgb);
  DataLoader loader(scene_loader_config(objects));
  CHECK(dynamic_cast<const SyntheticSceneDataset&>(loader.dataset()).objects() == objects);
}

}  // namespace

TEST_CASE("scenes: deterministic by (seed, index), different otherwise", "[data][scenes]") {
  Scene a, b, c, d;
  render_scene(3, 10, 80, 60, &a);
  render_scene(3, 10, 80, 60, &b);
  render_scene(3, 11, 80, 60, &c);
  render_scene(4, 10, 80, 60, &d);
  CHECK(a.image.rgb == b.image.rgb);
  CHECK(a.class_map == b.class_map);
  CHECK(a.image.rgb != c.image.rgb);
  CHECK(a.image.rgb != d.image.rgb);
  CHECK(a.class_map.size() == 80 * 60);
  CHECK(scene_class_name(0) == "background");
  CHECK(scene_class_name(1) == "red disc");
  CHECK(scene_class_name(9) == "blue triangle");
  CHECK_THROWS_AS(scene_class_name(10), sc::Error);
}

TEST_CASE("scenes: every class appears, objects wear their colour family", "[data][scenes]") {
  std::vector<int64_t> pixels(kSceneClasses, 0);
  double bg_fraction = 0;
  int hue_checked = 0;
  for (int i = 0; i < 150; ++i) {
    Scene s;
    render_scene(0, i, 96, 96, &s);
    const SceneLayout L = make_scene_layout(0, i);
    REQUIRE(L.objects.size() >= 2);
    REQUIRE(L.objects.size() <= 5);
    std::vector<double> sum_r(kSceneClasses), sum_g(kSceneClasses), sum_b(kSceneClasses);
    std::vector<int> count(kSceneClasses);
    for (size_t p = 0; p < s.class_map.size(); ++p) {
      const int c = s.class_map[p];
      REQUIRE(c < kSceneClasses);
      ++pixels[size_t(c)];
      ++count[size_t(c)];
      sum_r[size_t(c)] += s.image.rgb[3 * p];
      sum_g[size_t(c)] += s.image.rgb[3 * p + 1];
      sum_b[size_t(c)] += s.image.rgb[3 * p + 2];
    }
    bg_fraction += double(count[0]) / s.class_map.size();
    // A class region's mean colour has the family's hue (red 0, green 1/3, blue 2/3).
    for (int c = 1; c < kSceneClasses; ++c) {
      if (count[size_t(c)] < 30) continue;
      const double h = hue_of(sum_r[size_t(c)], sum_g[size_t(c)], sum_b[size_t(c)]);
      const double family = ((c - 1) % kSceneColors) / 3.0;
      double d = std::fabs(h - family);
      d = std::min(d, 1 - d);
      REQUIRE(d < 0.1);
      ++hue_checked;
    }
  }
  for (int c = 0; c < kSceneClasses; ++c) CHECK(pixels[size_t(c)] > 2000);
  bg_fraction /= 150;
  CHECK(bg_fraction > 0.3);
  CHECK(bg_fraction < 0.9);
  CHECK(hue_checked > 200);
}

TEST_CASE("scenes: the layout does not depend on the rendering size", "[data][scenes]") {
  for (int i = 0; i < 10; ++i) {
    Scene small, big;
    render_scene(2, i, 96, 72, &small);
    render_scene(2, i, 192, 144, &big);
    int agree = 0;
    for (int y = 0; y < 72; ++y)
      for (int x = 0; x < 96; ++x)
        agree += small.class_map[size_t(y) * 96 + x] ==
                 big.class_map[size_t(2 * y + 1) * 192 + 2 * x + 1];
    CHECK(agree > 0.97 * 96 * 72);
  }
}

TEST_CASE("scenes: written to disk as images, class maps and class names", "[data][scenes]") {
  TempDir tmp;
  write_scenes(tmp.file("png"), 5, 7, 40, 30, "png");
  write_scenes(tmp.file("jpg"), 3, 7, 40, 30, "jpg");
  CHECK_THROWS_AS(write_scenes(tmp.file("x"), 1, 7, 40, 30, "bmp"), sc::Error);
  const auto imgs = scan_image_folders({tmp.file("png/images")});
  REQUIRE(imgs.size() == 5);
  CHECK(std::filesystem::path(imgs[2]).filename() == "scene_000002.png");
  for (int i = 0; i < 5; ++i) {
    Scene s;
    render_scene(7, i, 40, 30, &s);
    ImageU8 img, map;
    std::string why;
    REQUIRE(load_image(imgs[size_t(i)], &img, &why));
    CHECK(img.rgb == s.image.rgb);  // PNG is lossless
    char name[64];
    std::snprintf(name, sizeof(name), "png/class_maps/scene_%06d.png", i);
    REQUIRE(load_image(tmp.file(name), &map, &why));
    for (size_t p = 0; p < s.class_map.size(); ++p) REQUIRE(map.rgb[3 * p] == s.class_map[p]);
  }
  const auto jpgs = scan_image_folders({tmp.file("jpg/images")});
  REQUIRE(jpgs.size() == 3);
  ImageU8 j;
  std::string why;
  REQUIRE(load_image(jpgs[0], &j, &why));
  CHECK(j.width == 40);
  CHECK(j.height == 30);
  std::ifstream names(tmp.file("png/classes.txt"));
  std::string line;
  int lines = 0;
  while (std::getline(names, line)) ++lines;
  CHECK(lines == kSceneClasses);
}

TEST_CASE("scenes: the class map seen by a view follows its crop and flip", "[data][scenes]") {
  Scene s;
  render_scene(1, 4, 64, 48, &s);
  ViewParams v;
  v.crop = {0, 0, 64, 48};
  std::vector<uint8_t> out(64 * 48);
  view_class_map(s.class_map.data(), 64, 48, v, 64, 48, out.data());
  CHECK(out == s.class_map);  // identity
  v.flip = true;
  view_class_map(s.class_map.data(), 64, 48, v, 64, 48, out.data());
  for (int y = 0; y < 48; ++y)
    for (int x = 0; x < 64; ++x)
      REQUIRE(out[size_t(y) * 64 + x] == s.class_map[size_t(y) * 64 + 63 - x]);
  // A crop of (10, 8, 32, 24) shown at 16 x 12: view pixel (x, y) is source (10 + 2x + 1, 8 + 2y +
  // 1).
  v.flip = false;
  v.crop = {10, 8, 32, 24};
  std::vector<uint8_t> small(16 * 12);
  view_class_map(s.class_map.data(), 64, 48, v, 16, 12, small.data());
  for (int y = 0; y < 12; ++y)
    for (int x = 0; x < 16; ++x)
      REQUIRE(small[size_t(y) * 16 + x] ==
              s.class_map[size_t(8 + 2 * y + 1) * 64 + 10 + 2 * x + 1]);
}

TEST_CASE("scenes: dataset, evaluation batches and class maps of training views",
          "[data][scenes]") {
  SyntheticSceneDataset ds(20, 9, 48, 40);
  CHECK(ds.size() == 20);
  CHECK(ds.is_synthetic());
  ImageU8 img;
  std::string why;
  REQUIRE(ds.load(3, &img, &why));
  Scene s;
  render_scene(9, 3, 48, 40, &s);
  CHECK(img.rgb == s.image.rgb);
  CHECK(ds.class_map(3) == s.class_map);
  CHECK_THROWS_AS(ds.load(20, &img, &why), sc::Error);

  const SceneBatch eb = render_scene_batch(9, 2, 3, 32);
  CHECK(eb.images.shape() == sc::Shape{3, 3, 32, 32});
  CHECK(eb.class_maps.shape() == sc::Shape{3, 32, 32});
  render_scene(9, 4, 32, 32, &s);
  CHECK(std::memcmp(eb.class_maps.data<uint8_t>() + 2 * 32 * 32, s.class_map.data(), 32 * 32) == 0);
  CHECK(eb.images.data<float>()[2 * 3 * 32 * 32] == (s.image.rgb[0] / 255.f - 0.485f) / 0.229f);

  DataLoader loader(scene_loader_config(SceneObjects::Standard));
  const Batch b = loader.next_batch();
  const auto& sds = dynamic_cast<const SyntheticSceneDataset&>(loader.dataset());
  for (int v = 0; v < 2; ++v) {
    const sc::Tensor maps = view_class_maps(b, sds, v, 8);
    REQUIRE(maps.shape() == sc::Shape{4, 8, 8});
    for (int i = 0; i < 4; ++i) {
      const int64_t idx = b.indices.data<int64_t>()[i];
      std::vector<uint8_t> expect(64);
      const auto cm = sds.class_map(idx);
      view_class_map(cm.data(), 48, 40, b.params[size_t(i)].view[v], 8, 8, expect.data());
      REQUIRE(std::memcmp(expect.data(), maps.data<uint8_t>() + i * 64, 64) == 0);
    }
  }
}

TEST_CASE("scenes: the large-object set draws 1-3 objects of radius 18-32 %, through every path",
          "[data][scenes]") {
  CHECK(parse_scene_objects("standard") == SceneObjects::Standard);
  CHECK(parse_scene_objects("large") == SceneObjects::Large);
  CHECK(std::string(scene_objects_name(SceneObjects::Large)) == "large");
  CHECK_THROWS_AS(parse_scene_objects("huge"), sc::Error);
  CHECK_THROWS_AS(parse_scene_objects(""), sc::Error);

  std::set<size_t> counts[2];
  double rmin[2] = {1, 1}, rmax[2] = {0, 0}, bg[2] = {0, 0};
  for (int i = 0; i < 200; ++i) {
    for (int k = 0; k < 2; ++k) {
      const SceneObjects o = k ? SceneObjects::Large : SceneObjects::Standard;
      const SceneLayout L = make_scene_layout(5, i, o);
      counts[k].insert(L.objects.size());
      for (const SceneObject& ob : L.objects) {
        rmin[k] = std::min(rmin[k], ob.radius);
        rmax[k] = std::max(rmax[k], ob.radius);
      }
      Scene s;
      render_scene(5, i, 64, 64, &s, o);
      bg[k] += double(std::count(s.class_map.begin(), s.class_map.end(), 0)) / (64 * 64) / 200;
    }
  }
  CHECK(counts[0] == std::set<size_t>{2, 3, 4, 5});
  CHECK(counts[1] == std::set<size_t>{1, 2, 3});
  CHECK(rmin[0] >= 0.08);
  CHECK(rmax[0] <= 0.22);
  CHECK(rmin[1] >= 0.18);
  CHECK(rmin[1] < 0.19);
  CHECK(rmax[1] <= 0.32);
  CHECK(rmax[1] > 0.31);
  CHECK(bg[1] < bg[0] - 0.05);  // fewer background pixels

  // the dataset, the evaluation batch and the loader's dataset all draw the large set
  Scene large, standard;
  render_scene(9, 3, 48, 40, &large, SceneObjects::Large);
  render_scene(9, 3, 48, 40, &standard);
  REQUIRE(large.class_map != standard.class_map);
  check_dataset_draws(SceneObjects::Large);
  const SceneBatch eb = render_scene_batch(9, 3, 1, 48, SceneObjects::Large);
  render_scene(9, 3, 48, 48, &large, SceneObjects::Large);
  CHECK(std::memcmp(eb.class_maps.data<uint8_t>(), large.class_map.data(), 48 * 48) == 0);
}

TEST_CASE("scenes: the large-hues set is the large set with a hue of its own for every class",
          "[data][scenes]") {
  CHECK(parse_scene_objects("large_hues") == SceneObjects::LargeHues);
  CHECK(std::string(scene_objects_name(SceneObjects::LargeHues)) == "large_hues");
  CHECK(scene_class_hue(4, SceneObjects::Standard) == 0.0);  // red square: the red family
  CHECK(scene_class_hue(4, SceneObjects::LargeHues) == Approx(1.0 / 3));
  CHECK_THROWS_AS(scene_class_hue(0, SceneObjects::LargeHues), sc::Error);

  auto circular = [](double a, double b) {
    const double d = std::fabs(a - b) - std::floor(std::fabs(a - b));
    return std::min(d, 1 - d);
  };
  int regions = 0, nearest_right = 0;
  std::set<int> classes_seen;
  for (int i = 0; i < 120; ++i) {
    const SceneLayout H = make_scene_layout(5, i, SceneObjects::LargeHues);
    const SceneLayout L = make_scene_layout(5, i, SceneObjects::Large);
    REQUIRE(H.objects.size() == L.objects.size());
    for (size_t j = 0; j < H.objects.size(); ++j) {
      const SceneObject &h = H.objects[j], &l = L.objects[j];
      // the same objects where they were; only the hue differs
      CHECK(h.cls == l.cls);
      CHECK(h.cx == l.cx);
      CHECK(h.radius == l.radius);
      CHECK(h.texture == l.texture);
      CHECK(circular(h.hue, (h.cls - 1) / 9.0) <= 8.0 / 360 + 1e-12);
      classes_seen.insert(h.cls);
    }
    // Rendered: each class region's mean colour is nearest to its own class's hue, which is
    // what tells the nine classes apart by colour alone.
    Scene s;
    render_scene(5, i, 96, 96, &s, SceneObjects::LargeHues);
    std::vector<double> sum[3] = {std::vector<double>(kSceneClasses),
                                  std::vector<double>(kSceneClasses),
                                  std::vector<double>(kSceneClasses)};
    std::vector<int> count(kSceneClasses);
    for (size_t p = 0; p < s.class_map.size(); ++p) {
      const int c = s.class_map[p];
      ++count[size_t(c)];
      for (int ch = 0; ch < 3; ++ch) sum[ch][size_t(c)] += s.image.rgb[3 * p + size_t(ch)];
    }
    for (int c = 1; c < kSceneClasses; ++c) {
      if (count[size_t(c)] < 30) continue;
      const double hue = hue_of(sum[0][size_t(c)], sum[1][size_t(c)], sum[2][size_t(c)]);
      int best = 1;
      for (int k = 2; k < kSceneClasses; ++k)
        if (circular(hue, (k - 1) / 9.0) < circular(hue, (best - 1) / 9.0)) best = k;
      ++regions;
      nearest_right += best == c;
    }
  }
  CHECK(classes_seen.size() == 9);
  CHECK(regions > 100);
  CHECK(nearest_right == regions);

  // the dataset and the loader draw this set when asked
  Scene hues, large;
  render_scene(9, 3, 48, 40, &hues, SceneObjects::LargeHues);
  render_scene(9, 3, 48, 40, &large, SceneObjects::Large);
  REQUIRE(hues.image.rgb != large.image.rgb);
  CHECK(hues.class_map == large.class_map);
  check_dataset_draws(SceneObjects::LargeHues);
}

TEST_CASE("scenes: the crowded-hues set draws 5-8 objects of radius 22-36 % in class hues",
          "[data][scenes]") {
  CHECK(parse_scene_objects("crowded_hues") == SceneObjects::CrowdedHues);
  CHECK(std::string(scene_objects_name(SceneObjects::CrowdedHues)) == "crowded_hues");
  CHECK(scene_class_hue(4, SceneObjects::CrowdedHues) == Approx(1.0 / 3));

  auto circular = [](double a, double b) {
    const double d = std::fabs(a - b) - std::floor(std::fabs(a - b));
    return std::min(d, 1 - d);
  };
  std::set<size_t> counts;
  double rmin = 1, rmax = 0;
  std::vector<double> share(kSceneClasses), large_share(kSceneClasses);
  const int scenes = 200;
  for (int i = 0; i < scenes; ++i) {
    const SceneLayout L = make_scene_layout(5, i, SceneObjects::CrowdedHues);
    counts.insert(L.objects.size());
    for (const SceneObject& o : L.objects) {
      rmin = std::min(rmin, o.radius);
      rmax = std::max(rmax, o.radius);
      CHECK(circular(o.hue, (o.cls - 1) / 9.0) <= 8.0 / 360 + 1e-12);
    }
    Scene s, l;
    render_scene(5, i, 64, 64, &s, SceneObjects::CrowdedHues);
    render_scene(5, i, 64, 64, &l, SceneObjects::Large);
    for (size_t p = 0; p < s.class_map.size(); ++p) {
      share[s.class_map[p]] += 1.0 / (64 * 64 * scenes);
      large_share[l.class_map[p]] += 1.0 / (64 * 64 * scenes);
    }
  }
  CHECK(counts == std::set<size_t>{5, 6, 7, 8});
  CHECK(rmin >= 0.22);
  CHECK(rmin < 0.23);
  CHECK(rmax <= 0.36);
  CHECK(rmax > 0.35);
  // The classes' areas are about even: the background is a fraction of the large set's, and
  // each of the nine object classes covers several per cent of the pixels.
  INFO("background " << share[0] << ", large set " << large_share[0]);
  CHECK(share[0] < 0.35);
  CHECK(large_share[0] > 0.6);
  for (int c = 1; c < kSceneClasses; ++c) {
    INFO("class " << c << " covers " << share[size_t(c)]);
    CHECK(share[size_t(c)] > 0.04);
    CHECK(share[size_t(c)] < 0.14);
  }

  // the dataset and the loader draw this set when asked
  Scene crowded, hues;
  render_scene(9, 3, 48, 40, &crowded, SceneObjects::CrowdedHues);
  render_scene(9, 3, 48, 40, &hues, SceneObjects::LargeHues);
  REQUIRE(crowded.class_map != hues.class_map);
  check_dataset_draws(SceneObjects::CrowdedHues);
}
