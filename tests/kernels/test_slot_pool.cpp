// Attentive slot pooling (kernels/slot_pool.h), CPU reference: forward against its defining
// properties (a weighted mean: constant features pool to themselves, one-hot attention picks a
// pixel, scaling attn changes nothing) and the formula, and float64 central differences of the
// backward into x and attn, including peaky attention and K, D, P not multiples of 32.
#include <catch2/catch.hpp>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "test_seed.h"
#include "kernel_test_util.h"
#include "kernels/slot_pool.h"

namespace {

using namespace kernel_test;

}  // namespace

TEST_CASE("slot_pool forward is the attention-weighted mean", "[slot_pool]") {
  const uint64_t seed = sc::testing::next_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const sc::SlotPoolShape s{2, 37, 33, 49};
  const size_t nx = size_t(s.B * s.D * s.P), na = size_t(s.B * s.K * s.P);
  Vec x = random_vec(nx, rng, -2, 2), attn = random_vec(na, rng, 1e-6, 1.0);
  // Prototype 3 of image 0 is peaky: all mass on pixel 5 (plus the 1e-6 floor elsewhere).
  for (int64_t p = 0; p < s.P; ++p) attn[size_t(3 * s.P + p)] = p == 5 ? 1.0 : 1e-6;
  Vec slots(size_t(s.B * s.K * s.D));
  sc::slot_pool_forward_ref<double>(s, x.data(), attn.data(), slots.data());
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t k = 0; k < s.K; ++k)
      for (int64_t d = 0; d < s.D; ++d) {
        double num = 0, den = 0;
        for (int64_t p = 0; p < s.P; ++p) {
          num += attn[size_t((b * s.K + k) * s.P + p)] * x[size_t((b * s.D + d) * s.P + p)];
          den += attn[size_t((b * s.K + k) * s.P + p)];
        }
        REQUIRE(slots[size_t((b * s.K + k) * s.D + d)] == Approx(num / den).margin(1e-13));
      }
  for (int64_t d = 0; d < s.D; ++d)
    REQUIRE(slots[size_t(3 * s.D + d)] == Approx(x[size_t(d * s.P + 5)]).margin(5e-4));
  // Scale invariance in attn and constant features.
  Vec attn2 = attn, slots2(slots.size());
  for (double& a : attn2) a *= 7.5;
  Vec xc(nx, 0.25);
  sc::slot_pool_forward_ref<double>(s, x.data(), attn2.data(), slots2.data());
  for (size_t i = 0; i < slots.size(); ++i) REQUIRE(slots2[i] == Approx(slots[i]).margin(1e-13));
  sc::slot_pool_forward_ref<double>(s, xc.data(), attn.data(), slots2.data());
  for (double v : slots2) REQUIRE(v == Approx(0.25).margin(1e-14));
}

TEST_CASE("slot_pool backward matches float64 finite differences", "[slot_pool][grad]") {
  const uint64_t seed = sc::testing::next_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  for (sc::SlotPoolShape s : {sc::SlotPoolShape{2, 5, 3, 4}, sc::SlotPoolShape{1, 3, 7, 9}}) {
    const size_t nx = size_t(s.B * s.D * s.P), na = size_t(s.B * s.K * s.P);
    Vec x = random_vec(nx, rng), attn = random_vec(na, rng, 0.05, 1.0);
    attn[0] = 1e-6;  // a near-zero weight (the softmax floor)
    Vec cot = random_vec(size_t(s.B * s.K * s.D), rng), slots(cot.size());
    auto L = [&]() {
      sc::slot_pool_forward_ref<double>(s, x.data(), attn.data(), slots.data());
      return dotv(cot, slots);
    };
    L();
    Vec dx(nx, NAN), da(na, NAN);
    sc::slot_pool_backward_ref<double>(s, x.data(), attn.data(), slots.data(), cot.data(),
                                       dx.data(), da.data());
    std::string where;
    const double ex = fd_excess(x, L, dx, 1e-6, 1e-8, 1e-6, &where);
    INFO("dL_dx worst " << where);
    CHECK(ex <= 1.0);
    const double ea = fd_excess(attn, L, da, 1e-7, 1e-8, 1e-5, &where);
    INFO("dL_dattn worst " << where);
    CHECK(ea <= 1.0);
  }
}
