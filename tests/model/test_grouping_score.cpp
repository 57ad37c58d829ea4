// The grouping score: perfect, permuted, over-clustered and degenerate groupings.
#include <catch2/catch.hpp>

#include "engine/error.h"
#include "model/grouping_score.h"

using namespace sc;

TEST_CASE("grouping score: matching prototypes to classes") {
  std::vector<int> cls = {0, 0, 1, 1, 2, 2, 2, 0};
  // a permutation of the classes is a perfect grouping
  std::vector<int64_t> perm = {5, 5, 3, 3, 1, 1, 1, 5};
  GroupingScore s = grouping_score(perm, cls, 8, 3);
  CHECK(s.miou == Approx(1.0));
  CHECK(s.pixel_accuracy == Approx(1.0));
  CHECK(s.prototypes_used == 3);
  // over-clustering (two prototypes for class 2) is still perfect
  std::vector<int64_t> over = {0, 0, 1, 1, 2, 4, 4, 0};
  CHECK(grouping_score(over, cls, 5, 3).miou == Approx(1.0));
  // one prototype everywhere: only the majority class (0 and 2 tie -> 0) is matched
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

TEST_CASE("grouping score: class maps at feature resolution take the mode of each cell") {
  // 4x4 map, 2x2 grid
  const uint8_t cls[16] = {1, 1, 2, 2,
                           1, 0, 2, 2,
                           0, 0, 3, 1,
                           0, 0, 1, 3};
  std::vector<int> d = downsample_mode(cls, 4, 4, 2, 2, 4);
  CHECK(d == std::vector<int>{1, 2, 0, 1});  // last cell: 1 and 3 tie -> 1
}
