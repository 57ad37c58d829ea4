// Prototype assignment (kernels/proto_assign.h), CPU reference: forward against the cosine /
// softmax formula written independently, float64 central differences of the backward (dL_dx and
// the accumulated dL_dprotos, from random cotangents on dots and attn), and the stress cases:
// temperature 0.01, peaky scores (a pixel equal to a prototype), a zero pixel (the eps branch),
// K not a multiple of 32.
#include <catch2/catch.hpp>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "test_seed.h"
#include "kernel_test_util.h"
#include "kernels/proto_assign.h"

namespace {

using namespace kernel_test;

}  // namespace

TEST_CASE("proto_assign forward matches the cosine-softmax formula", "[proto_assign]") {
  const uint64_t seed = sc::testing::next_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const sc::ProtoAssignShape s{3, 37, 5, 7};
  for (double tau : {0.07, 0.01}) {
    Vec x = random_vec(size_t(s.B * s.D * s.P), rng, -2, 2);
    Vec pr = random_vec(size_t(s.K * s.D), rng, -3, 3);
    // A pixel that is a scaled copy of prototype 4: a peaky column (dot = 1).
    for (int64_t d = 0; d < s.D; ++d)
      x[size_t((1 * s.D + d) * s.P + 2)] = 2.5 * pr[size_t(4 * s.D + d)];
    // A zero pixel: normalised to zero, all dots 0, uniform attention.
    for (int64_t d = 0; d < s.D; ++d) x[size_t((2 * s.D + d) * s.P + 6)] = 0;
    Vec dots(size_t(s.B * s.K * s.P)), attn(dots.size());
    sc::proto_assign_forward_ref<double>(s, x.data(), pr.data(), tau, dots.data(), attn.data());
    for (int64_t b = 0; b < s.B; ++b)
      for (int64_t p = 0; p < s.P; ++p) {
        double nx = 0;
        for (int64_t d = 0; d < s.D; ++d)
          nx += x[size_t((b * s.D + d) * s.P + p)] * x[size_t((b * s.D + d) * s.P + p)];
        nx = std::sqrt(nx);
        Vec cosv(size_t(s.K));
        double zsum = 0;
        for (int64_t k = 0; k < s.K; ++k) {
          double np = 0, ip = 0;
          for (int64_t d = 0; d < s.D; ++d) {
            np += pr[size_t(k * s.D + d)] * pr[size_t(k * s.D + d)];
            ip += pr[size_t(k * s.D + d)] * x[size_t((b * s.D + d) * s.P + p)];
          }
          cosv[size_t(k)] = nx == 0 ? 0.0 : ip / (std::sqrt(np) * nx);
        }
        double mx = -1e300;
        for (double c : cosv) mx = std::max(mx, c);
        for (double c : cosv) zsum += std::exp((c - mx) / tau);
        double asum = 0;
        for (int64_t k = 0; k < s.K; ++k) {
          const size_t i = size_t((b * s.K + k) * s.P + p);
          REQUIRE(dots[i] == Approx(cosv[size_t(k)]).margin(1e-13));
          REQUIRE(attn[i] ==
                  Approx(std::exp((cosv[size_t(k)] - mx) / tau) / zsum + 1e-6).margin(1e-13));
          asum += attn[i];
        }
        REQUIRE(asum == Approx(1.0 + s.K * 1e-6).epsilon(1e-12));
      }
    REQUIRE(dots[size_t((1 * s.K + 4) * s.P + 2)] == Approx(1.0).margin(1e-13));
    for (int64_t k = 0; k < s.K; ++k)
      REQUIRE(attn[size_t((2 * s.K + k) * s.P + 6)] == Approx(1.0 / s.K + 1e-6).margin(1e-13));
    // float instantiation agrees with double to float precision
    std::vector<float> xf(x.begin(), x.end()), pf(pr.begin(), pr.end());
    std::vector<float> df(dots.size()), af(dots.size());
    sc::proto_assign_forward_ref<float>(s, xf.data(), pf.data(), tau, df.data(), af.data());
    for (size_t i = 0; i < dots.size(); ++i) {
      REQUIRE(df[i] == Approx(dots[i]).margin(1e-6));
      REQUIRE(af[i] == Approx(attn[i]).margin(1e-6 / tau).epsilon(1e-4));
    }
  }
}

TEST_CASE("proto_assign backward matches float64 finite differences", "[proto_assign][grad]") {
  const uint64_t seed = sc::testing::next_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const sc::ProtoAssignShape s{2, 5, 4, 3};
  // (tau, use dL_ddots, use dL_dattn)
  struct Case {
    double tau;
    bool gd, ga;
  };
  for (Case c : {Case{0.5, true, true}, Case{0.07, true, true}, Case{0.01, true, true},
                 Case{0.2, true, false}, Case{0.2, false, true}}) {
    INFO("tau " << c.tau << " dL_ddots " << c.gd << " dL_dattn " << c.ga);
    Vec x = random_vec(size_t(s.B * s.D * s.P), rng, -1, 1);
    Vec pr = random_vec(size_t(s.K * s.D), rng, -1, 1);
    const size_t n = size_t(s.B * s.K * s.P);
    Vec cd = random_vec(n, rng), ca = random_vec(n, rng);
    Vec dots(n), attn(n);
    auto L = [&]() {
      sc::proto_assign_forward_ref<double>(s, x.data(), pr.data(), c.tau, dots.data(), attn.data());
      return (c.gd ? dotv(cd, dots) : 0.0) + (c.ga ? dotv(ca, attn) : 0.0);
    };
    L();
    Vec dx(x.size(), NAN), dp0 = random_vec(pr.size(), rng), dp = dp0;
    sc::proto_assign_backward_ref<double>(s, x.data(), pr.data(), dots.data(), c.tau,
                                          c.gd ? cd.data() : nullptr, c.ga ? ca.data() : nullptr,
                                          dx.data(), dp.data());
    for (size_t i = 0; i < dp.size(); ++i) dp[i] -= dp0[i];  // accumulated (+=) onto dp0
    std::string where;
    const double ex = fd_excess(x, L, dx, 1e-6, 1e-7, 1e-5, &where);
    INFO("dL_dx worst " << where);
    CHECK(ex <= 1.0);
    const double ep = fd_excess(pr, L, dp, 1e-6, 1e-7, 1e-5, &where);
    INFO("dL_dprotos worst " << where);
    CHECK(ep <= 1.0);
  }
}

TEST_CASE("proto_assign backward with null outputs and a zero pixel stays finite",
          "[proto_assign][grad]") {
  std::mt19937_64 rng(7);
  const sc::ProtoAssignShape s{1, 33, 6, 4};
  Vec x = random_vec(size_t(s.D * s.P), rng), pr = random_vec(size_t(s.K * s.D), rng);
  for (int64_t d = 0; d < s.D; ++d) x[size_t(d * s.P + 1)] = 0;
  const size_t n = size_t(s.K * s.P);
  Vec dots(n), attn(n), ca = random_vec(n, rng);
  sc::proto_assign_forward_ref<double>(s, x.data(), pr.data(), 0.01, dots.data(), attn.data());
  Vec dx(x.size(), NAN), dp(pr.size(), 0.0);
  sc::proto_assign_backward_ref<double>(s, x.data(), pr.data(), dots.data(), 0.01, nullptr,
                                        ca.data(), dx.data(), nullptr);
  for (double v : dx) REQUIRE(std::isfinite(v));
  // Uniform attention at the zero pixel: dL/dxn there is sum_k G_k pn_k; F.normalize's eps branch
  // passes it divided by eps (like PyTorch), so it may be large but it must be finite.
  sc::proto_assign_backward_ref<double>(s, x.data(), pr.data(), dots.data(), 0.01, ca.data(),
                                        nullptr, nullptr, dp.data());
  for (double v : dp) REQUIRE(std::isfinite(v));
}
