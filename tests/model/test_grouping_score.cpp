// The grouping score: perfect, permuted, over-clustered and degenerate groupings, and what
// groupings that know only part of the class score on the held-out synthetic scenes.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>

#include "data/scenes.h"
#include "engine/error.h"
#include "engine/tensor.h"
#include "model/grouping_score.h"

using namespace sc;

TEST_CASE("grouping score: one-to-one matching of prototypes to classes") {
  std::vector<int> cls = {0, 0, 1, 1, 2, 2, 2, 0};
  // a permutation of the classes is a perfect grouping
  std::vector<int64_t> perm = {5, 5, 3, 3, 1, 1, 1, 5};
  GroupingScore s = grouping_score(perm, cls, 8, 3);
  CHECK(s.miou == Approx(1.0));
  CHECK(s.pixel_accuracy == Approx(1.0));
  CHECK(s.prototypes_used == 3);
  // splitting class 2 over two prototypes costs the pixels of the unmatched one
  std::vector<int64_t> split = {0, 0, 1, 1, 2, 4, 4, 0};
  GroupingScore sp = grouping_score(split, cls, 5, 3);
  CHECK(sp.miou == Approx((1.0 + 1.0 + 2.0 / 3.0) / 3.0));
  CHECK(sp.pixel_accuracy == Approx(7.0 / 8.0));
  // one prototype everywhere: it is matched to one class only
  std::vector<int64_t> one(cls.size(), 0);
  GroupingScore d = grouping_score(one, cls, 4, 3);
  CHECK(d.prototypes_used == 1);
  CHECK(d.miou == Approx((3.0 / 8.0) / 3.0));
  // a half-right grouping lies in between
  std::vector<int64_t> half = {0, 1, 1, 1, 2, 2, 0, 0};
  double m = grouping_score(half, cls, 3, 3).miou;
  CHECK(m > d.miou);
  CHECK(m < 1.0);
  CHECK_THROWS_AS(grouping_score({9}, {0}, 3, 3), Error);
  CHECK_THROWS_AS(grouping_score({0, 1}, {0}, 3, 3), Error);
}

TEST_CASE("grouping score: the matching maximises the shared pixels") {
  // brute force over all assignments of 4 rows to 3 columns
  Generator g(11);
  for (int trial = 0; trial < 20; ++trial) {
    const int R = 4, C = 3;
    std::vector<double> w(size_t(R * C));
    for (double& v : w) v = std::floor(10 * g.uniform());
    std::vector<int> m = max_weight_matching(w, R, C);
    double got = 0;
    std::vector<int> used(C, 0);
    for (int r = 0; r < R; ++r)
      if (m[size_t(r)] >= 0) {
        got += w[size_t(r * C + m[size_t(r)])];
        CHECK(used[size_t(m[size_t(r)])]++ == 0);
      }
    double best = 0;
    for (int a = 0; a < R; ++a)
      for (int b = 0; b < R; ++b)
        for (int c = 0; c < R; ++c) {
          if (a == b || b == c || a == c) continue;
          best = std::max(best, w[size_t(a * C)] + w[size_t(b * C + 1)] + w[size_t(c * C + 2)]);
        }
    CHECK(got == Approx(best));
  }
}

TEST_CASE("grouping score: class maps at feature resolution take the mode of each cell") {
  // 4x4 map, 2x2 grid
  const uint8_t cls[16] = {1, 1, 2, 2, 1, 0, 2, 2, 0, 0, 3, 1, 0, 0, 1, 3};
  std::vector<int> d = downsample_mode(cls, 4, 4, 2, 2, 4);
  CHECK(d == std::vector<int>{1, 2, 0, 1});  // last cell: 1 and 3 tie -> 1
}

// docs/training.md ("A 30-minute synthetic run: why 0.3 mIoU is out of reach"): on the held-out
// scenes a training run scores (scenes 512..575 of seed 0, as with configs/demo.json), the
// score's ceiling at the stride-32 grid is 1 (each cell's majority class), but a grouping that
// separates the colours perfectly and ignores shape scores only ~0.23 mIoU, as does one that
// separates shapes and ignores colour; objects-vs-background ~0.12. A score of 0.3 needs colour
// and shape. The large-object scenes (fewer, larger objects, 71 % background cells at 224 px
// against 82 %) do not change that: 0.21 for colour or shape alone. The standard rows also hold
// the standard scenes' draws to what they were before the large set existed.
TEST_CASE(
    "grouping score: colour-only and shape-only groupings of the held-out scenes stay below 0.3") {
  struct Grid {
    data::SceneObjects objects;
    int first, size;
    double colour, shape, fg;
  };
  // measured 2026-12-03 (standard: scenes 512..575, configs/demo.json's held-out set) and
  // 2026-12-04 (large: scenes 2048..2111, the held-out set of configs/slots_30min.json's
  // first version, docs/training.md's fourth round)
  using data::SceneObjects;
  for (const Grid g : {Grid{SceneObjects::Standard, 512, 96, 0.235, 0.244, 0.122},
                       Grid{SceneObjects::Standard, 512, 224, 0.226, 0.231, 0.118},
                       Grid{SceneObjects::Large, 2048, 96, 0.221, 0.221, 0.116},
                       Grid{SceneObjects::Large, 2048, 224, 0.214, 0.213, 0.114}}) {
    const int n = g.size / 32;
    std::vector<int> cls;
    std::vector<int64_t> truth, colour, shape, fg;
    data::Scene scene;
    for (int i = 0; i < 64; ++i) {
      data::render_scene(0, g.first + i, g.size, g.size, &scene, g.objects);
      for (int c :
           downsample_mode(scene.class_map.data(), g.size, g.size, n, n, data::kSceneClasses)) {
        cls.push_back(c);
        truth.push_back(c);
        colour.push_back(c == 0 ? 0 : 1 + (c - 1) % data::kSceneColors);
        shape.push_back(c == 0 ? 0 : 1 + (c - 1) / data::kSceneColors);
        fg.push_back(c == 0 ? 0 : 1);
      }
    }
    const int K = 16, C = data::kSceneClasses;
    CAPTURE(data::scene_objects_name(g.objects), g.size);
    CHECK(grouping_score(truth, cls, K, C).miou == Approx(1.0));
    const double mc = grouping_score(colour, cls, K, C).miou;
    const double ms = grouping_score(shape, cls, K, C).miou;
    const double mf = grouping_score(fg, cls, K, C).miou;
    CHECK(mc == Approx(g.colour).margin(0.001));
    CHECK(ms == Approx(g.shape).margin(0.001));
    CHECK(mf == Approx(g.fg).margin(0.001));
    CHECK(mc < 0.3);
    CHECK(ms < 0.3);
  }
}

TEST_CASE("grouping score: the nearest-class-mean probe") {
  // four classes along four axes of a 6-d space, rows of different lengths and a little noise
  const int C = 4;
  const int64_t D = 6;
  std::vector<double> fit, test;
  std::vector<int> fit_cls, test_cls;
  uint64_t s = 12345;
  auto noise = [&s]() {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return (double((s >> 11) & 0xfffff) / double(0xfffff) - 0.5) * 0.2;
  };
  for (int i = 0; i < 200; ++i) {
    const int c = i % C;
    const double len = 0.5 + (i % 7);
    for (auto* rows : {&fit, &test}) {
      for (int64_t d = 0; d < D; ++d) rows->push_back(len * ((d == c ? 1.0 : 0.0) + noise()));
    }
    fit_cls.push_back(c);
    test_cls.push_back(c);
  }
  const ClassMeans m = fit_class_means(fit, D, fit_cls, C);
  CHECK(m.count == std::vector<int64_t>{50, 50, 50, 50});
  for (int c = 0; c < C; ++c) {
    double n2 = 0;
    for (int64_t d = 0; d < D; ++d) n2 += m.mean[size_t(c * D + d)] * m.mean[size_t(c * D + d)];
    CHECK(n2 == Approx(1.0));
  }
  const std::vector<int64_t> pred = nearest_class_mean(m, test);
  const GroupingScore g = grouping_score(pred, test_cls, C, C);
  CHECK(g.miou == Approx(1.0));

  // every row counts alike, whatever its length: the mean of (1, 0) and (0, 100) lies at 45
  // degrees, not near (0, 1)
  const ClassMeans two = fit_class_means({1, 0, 0, 100, 0, 1}, 2, {0, 0, 1}, 3);
  CHECK(two.mean[0] == Approx(std::sqrt(0.5)));
  CHECK(two.mean[1] == Approx(std::sqrt(0.5)));
  // a row's length does not change its class; a class without fit cells (2) is never predicted
  CHECK(nearest_class_mean(two, {1, 0.3, 50, 15, -1, -1})[0] == 0);
  CHECK(nearest_class_mean(two, {1, 0.3, 50, 15, -1, -1})[1] == 0);
  CHECK(nearest_class_mean(two, {1, 0.3, 50, 15, -1, -1})[2] != 2);
  CHECK(nearest_class_mean(two, {0.1, 1})[0] == 1);

  CHECK_THROWS_AS(fit_class_means({1, 2, 3}, 2, {0, 1}, 2), Error);  // 3 values for 2 rows
  CHECK_THROWS_AS(fit_class_means({1, 2}, 2, {5}, 2), Error);        // label out of range
  CHECK_THROWS_AS(nearest_class_mean(two, {1, 2, 3}), Error);        // not rows of 2
  CHECK_THROWS_AS(nearest_class_mean(ClassMeans{2, 2, {0, 0, 0, 0}, {0, 0}}, {1, 2}), Error);
}

// The linear probe of `slotcon probe`: it finds a class boundary that a nearest class mean
// misses, weighs every class alike however rare, and predicts no class it was not fit on.
TEST_CASE("grouping score: the linear probe") {
  // Two classes in 3-d: (1, u + 0.2 s, u) plus a little noise, s = +1 or -1, u ~ N(0, 1) shared
  // by both coordinates. The classes differ by 0.2 along x1 - x2 only; their means differ along
  // x1, which u swamps, so the nearest class mean is near chance while a linear probe separates
  // them (the unit rows keep the sign of x1 - x2).
  Generator g(2024);
  auto planted = [&](int n, std::vector<double>* rows, std::vector<int>* cls) {
    for (int i = 0; i < n; ++i) {
      const int c = i % 2;
      const double sgn = c ? 1.0 : -1.0, u = g.normal();
      rows->insert(rows->end(), {1.0 + 0.01 * g.normal(), u + 0.2 * sgn + 0.01 * g.normal(),
                                 u + 0.01 * g.normal()});
      cls->push_back(c);
    }
  };
  std::vector<double> fit, test;
  std::vector<int> fit_cls, test_cls;
  planted(2000, &fit, &fit_cls);
  planted(1000, &test, &test_cls);
  const LinearProbe p = fit_linear_probe(fit, 3, fit_cls, 2);
  CHECK(p.count == std::vector<int64_t>{1000, 1000});
  CHECK(p.iterations > 0);
  CHECK(p.loss < 0.1);  // ln 2 = 0.69 for a probe that learnt nothing
  const GroupingScore linear = grouping_score(linear_probe_predict(p, test), test_cls, 2, 2);
  const GroupingScore means =
      grouping_score(nearest_class_mean(fit_class_means(fit, 3, fit_cls, 2), test), test_cls, 2, 2);
  INFO("linear " << linear.pixel_accuracy << ", class means " << means.pixel_accuracy);
  CHECK(linear.pixel_accuracy > 0.97);
  CHECK(means.pixel_accuracy < 0.75);
  // deterministic: the same fit twice gives the same probe
  const LinearProbe again = fit_linear_probe(fit, 3, fit_cls, 2);
  CHECK(again.weight == p.weight);
  CHECK(again.bias == p.bias);

  // Balanced: class 1 is 5 % of the rows and overlaps class 0 (1-d positions N(-1, 1) and
  // N(+1, 1) on an axis beside a constant one). Weighed by rows, the boundary would move far
  // into class 1 and lose most of it; weighed by class, the two recalls stay alike.
  std::vector<double> imb, imb_test;
  std::vector<int> imb_cls, imb_test_cls;
  for (int i = 0; i < 4000; ++i) {
    const int c = i % 20 == 0 ? 1 : 0;
    for (auto [rows, labels] : {std::pair{&imb, &imb_cls}, std::pair{&imb_test, &imb_test_cls}}) {
      rows->insert(rows->end(), {1.0, 0.2 * ((c ? 1.0 : -1.0) + g.normal())});
      labels->push_back(c);
    }
  }
  const std::vector<int64_t> pred =
      linear_probe_predict(fit_linear_probe(imb, 2, imb_cls, 2), imb_test);
  double hit[2] = {0, 0}, total[2] = {0, 0};
  for (size_t i = 0; i < pred.size(); ++i) {
    total[imb_test_cls[i]] += 1;
    hit[imb_test_cls[i]] += pred[i] == imb_test_cls[i];
  }
  INFO("recall of class 0 " << hit[0] / total[0] << ", of class 1 " << hit[1] / total[1]);
  CHECK(hit[1] / total[1] > 0.75);  // about 0.84 for the midpoint; a row-weighted fit: ~0.3
  CHECK(std::abs(hit[0] / total[0] - hit[1] / total[1]) < 0.1);

  // a class with no fit row (class 2 of 3) is never predicted; bad input is refused
  const LinearProbe absent = fit_linear_probe(fit, 3, fit_cls, 3);
  CHECK(absent.count[2] == 0);
  for (int64_t c : linear_probe_predict(absent, test)) CHECK(c != 2);
  CHECK_THROWS_AS(fit_linear_probe({1, 2, 3}, 2, {0, 1}, 2), Error);  // 3 values for 2 rows
  CHECK_THROWS_AS(fit_linear_probe({1, 2}, 2, {5}, 2), Error);        // label out of range
  CHECK_THROWS_AS(fit_linear_probe({1, 2}, 2, {0}, 2, -1.0), Error);  // negative penalty
  CHECK_THROWS_AS(linear_probe_predict(p, {1, 2}), Error);            // not rows of 3
}

// The many-to-one readout of `slotcon probe`: a class split over several prototypes loses
// nothing there (it does under the one-to-one score), a mixed prototype counts as its majority.
TEST_CASE("grouping score: prototypes read as their majority class") {
  // 3 classes; class 0 over prototypes 0, 1 and 2, class 1 on prototype 3, class 2 on 4; 5
  // prototypes of 7, and prototype 4 also holds one cell of class 1
  const std::vector<int64_t> proto = {0, 1, 2, 0, 1, 2, 3, 3, 4, 4, 4};
  const std::vector<int> cls = {0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 1};
  const std::vector<int> map = majority_class_map(proto, cls, 7, 3);
  CHECK(map == std::vector<int>{0, 0, 0, 1, 2, 0, 0});  // 5, 6: no cell, background
  const std::vector<int64_t> pred = map_prototypes(map, proto);
  CHECK(pred == std::vector<int64_t>{0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 2});
  const GroupingScore many = grouping_score(pred, cls, 3, 3);
  const GroupingScore one = grouping_score(proto, cls, 7, 3);
  CHECK(many.pixel_accuracy == Approx(10.0 / 11.0));
  CHECK(many.miou > one.miou);  // the one-to-one score keeps one of class 0's three prototypes
  CHECK(one.pixel_accuracy == Approx(6.0 / 11.0));
  // ties go to the smaller class
  CHECK(majority_class_map({0, 0}, {2, 1}, 1, 3) == std::vector<int>{1});
  CHECK_THROWS_AS(majority_class_map({0, 7}, {0, 1}, 7, 3), Error);  // prototype out of range
  CHECK_THROWS_AS(majority_class_map({0}, {0, 1}, 7, 3), Error);     // lengths differ
  CHECK_THROWS_AS(map_prototypes({0, 1}, {2}), Error);
}

// The unsupervised readout of `slotcon probe`: spherical k-means finds planted groups of
// directions whatever the rows' lengths, and its centroids assign new rows as class means do.
TEST_CASE("grouping score: cosine k-means finds planted groups") {
  const int G = 5;
  const int64_t D = 7;
  uint64_t s = 777;
  auto noise = [&s]() {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return (double((s >> 11) & 0xfffff) / double(0xfffff) - 0.5) * 0.3;
  };
  // group g points along axis g plus half of axis g + 1: directions 0.6 to 0.9 apart in cosine
  // from their neighbours' groups' nearest rows once noise is added; sizes 10, 20, ..., 50
  std::vector<double> fit, test;
  std::vector<int> fit_cls, test_cls;
  for (int g = 0; g < G; ++g)
    for (int i = 0; i < 10 * (g + 1); ++i)
      for (auto* rows : {&fit, &test}) {
        const double len = 0.2 + (i % 5);
        for (int64_t d = 0; d < D; ++d)
          rows->push_back(len * ((d == g ? 1.0 : d == g + 1 ? 0.5 : 0.0) + noise()));
        (rows == &fit ? fit_cls : test_cls).push_back(g);
      }
  const ClassMeans km = fit_cosine_kmeans(fit, D, G, 42);
  REQUIRE(km.num_classes == G);
  std::vector<int64_t> sizes = km.count;
  std::sort(sizes.begin(), sizes.end());
  CHECK(sizes == std::vector<int64_t>{10, 20, 30, 40, 50});
  for (int g = 0; g < G; ++g) {
    double n2 = 0;
    for (int64_t d = 0; d < D; ++d) n2 += km.mean[size_t(g * D + d)] * km.mean[size_t(g * D + d)];
    CHECK(n2 == Approx(1.0));
  }
  const GroupingScore got = grouping_score(nearest_class_mean(km, test), test_cls, G, G);
  CHECK(got.miou == Approx(1.0));
  // deterministic for a seed, and too few groups cannot recover the planted ones
  CHECK(fit_cosine_kmeans(fit, D, G, 42).mean == km.mean);
  const ClassMeans three = fit_cosine_kmeans(fit, D, 3, 42);
  CHECK(grouping_score(nearest_class_mean(three, test), test_cls, 3, G).miou < 0.75);
  // one group: every row to it
  const ClassMeans one = fit_cosine_kmeans(fit, D, 1, 1, 1, 5);
  CHECK(one.count == std::vector<int64_t>{int64_t(fit_cls.size())});

  CHECK_THROWS_AS(fit_cosine_kmeans({1, 2, 3}, 2, 1, 0), Error);     // not rows of 2
  CHECK_THROWS_AS(fit_cosine_kmeans({1, 2, 3, 4}, 2, 3, 0), Error);  // more groups than rows
  CHECK_THROWS_AS(fit_cosine_kmeans({1, 2}, 2, 0, 0), Error);
}

TEST_CASE("grouping score: removing each group's mean row, and the cells' spread") {
  // two groups of two rows of 2
  const std::vector<double> rows = {1, 2, 3, 6, 10, 0, 20, 4};
  const std::vector<double> out = remove_group_means(rows, 2, 2);
  CHECK(out == std::vector<double>{-1, -2, 1, 2, -5, -2, 5, 2});
  CHECK(remove_group_means(rows, 2, 4) == std::vector<double>{-7.5, -1, -5.5, 3, 1.5, -3, 11.5, 1});
  CHECK_THROWS_AS(remove_group_means(rows, 2, 3), Error);  // 4 rows are not groups of 3

  // all rows one way (whatever their lengths): length 1, that direction; the cosines with the
  // prototypes (1, 0), (0, 2), (-1, -1)
  const std::vector<double> protos = {1, 0, 0, 2, -1, -1};
  const CellSpread one = cell_spread({3, 4, 0.3, 0.4, 30, 40}, 2, protos);
  CHECK(one.resultant_length == Approx(1.0));
  CHECK(one.direction[0] == Approx(0.6));
  CHECK(one.direction[1] == Approx(0.8));
  REQUIRE(one.cos_to.size() == 3);
  CHECK(one.cos_to[0] == Approx(0.6));
  CHECK(one.cos_to[1] == Approx(0.8));
  CHECK(one.cos_to[2] == Approx(-1.4 / std::sqrt(2.0)));
  // rows at right angles: length 1/sqrt(2) along the diagonal; opposite rows: length 0
  const CellSpread two = cell_spread({5, 0, 0, 1}, 2, protos);
  CHECK(two.resultant_length == Approx(std::sqrt(0.5)));
  CHECK(two.cos_to[0] == Approx(std::sqrt(0.5)));
  const CellSpread none = cell_spread({1, 1, -2, -2}, 2, protos);
  CHECK(none.resultant_length == Approx(0.0).margin(1e-12));
  CHECK(none.cos_to[0] == Approx(0.0).margin(1e-12));
  CHECK_THROWS_AS(cell_spread({1, 2, 3}, 2, protos), Error);
  CHECK_THROWS_AS(cell_spread({}, 2, protos), Error);
}
