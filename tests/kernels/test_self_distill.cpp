// Self-distillation (kernels/self_distill.h), CPU reference: the loss against -sum w log s computed
// from separately formed softmax / log-softmax vectors, the center's batch mean, float64 central
// differences of dL_dstudent, and the stress cases: temperatures 0.01 for student and teacher,
// peaky scores, K not a multiple of 32, a prototype whose center dominates.
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <vector>

#include "test_seed.h"
#include "kernel_test_util.h"
#include "kernels/self_distill.h"

namespace {

using namespace kernel_test;

// Loss from the definition: softmax and log_softmax as vectors, -sum w log s, mean over pixels.
double naive_loss(const sc::SelfDistillShape& s, const Vec& a, const Vec& t, const Vec& c,
                  double ts, double tt) {
  double total = 0;
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t p = 0; p < s.P; ++p) {
      Vec za(size_t(s.K)), zt(size_t(s.K));
      double ma = -1e300, mt = -1e300;
      for (int64_t k = 0; k < s.K; ++k) {
        za[size_t(k)] = a[size_t((b * s.K + k) * s.P + p)] / ts;
        zt[size_t(k)] = (t[size_t((b * s.K + k) * s.P + p)] - c[size_t(k)]) / tt;
        ma = std::max(ma, za[size_t(k)]);
        mt = std::max(mt, zt[size_t(k)]);
      }
      double sa = 0, st = 0;
      for (int64_t k = 0; k < s.K; ++k) {
        sa += std::exp(za[size_t(k)] - ma);
        st += std::exp(zt[size_t(k)] - mt);
      }
      for (int64_t k = 0; k < s.K; ++k) {
        const double logs = za[size_t(k)] - ma - std::log(sa);
        const double w = std::exp(zt[size_t(k)] - mt) / st;
        total += -w * logs;
      }
    }
  return total / double(s.B * s.P);
}

}  // namespace

TEST_CASE("self_distill forward: loss and center mean match the definition", "[self_distill]") {
  const uint64_t seed = sc::testing::next_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const sc::SelfDistillShape s{3, 37, 49};
  const size_t n = size_t(s.B * s.K * s.P);
  struct Temps {
    double ts, tt;
  };
  for (Temps tp : {Temps{0.1, 0.07}, Temps{0.01, 0.01}, Temps{0.5, 0.01}}) {
    INFO("tau_s " << tp.ts << " tau_t " << tp.tt);
    Vec a = random_vec(n, rng), t = random_vec(n, rng), raw = random_vec(n, rng, -1, 1);
    Vec c = random_vec(size_t(s.K), rng, -0.2, 0.2);
    a[5] = 1.0;   // peaky student pixel
    t[7] = 1.0;   // peaky teacher pixel
    c[2] = -5.0;  // a prototype that the centered teacher always picks
    Vec loss(1, NAN), stats(size_t(2 * s.B * s.P), NAN), cm(size_t(s.K), NAN);
    sc::self_distill_forward_ref<double>(s, a.data(), t.data(), c.data(), tp.ts, tp.tt, raw.data(),
                                         loss.data(), stats.data(), cm.data());
    REQUIRE(loss[0] == Approx(naive_loss(s, a, t, c, tp.ts, tp.tt)).epsilon(1e-12));
    for (int64_t k = 0; k < s.K; ++k) {
      double m = 0;
      for (int64_t b = 0; b < s.B; ++b)
        for (int64_t p = 0; p < s.P; ++p) m += raw[size_t((b * s.K + k) * s.P + p)];
      REQUIRE(cm[size_t(k)] == Approx(m / double(s.B * s.P)).margin(1e-14));
    }
    for (double v : stats) REQUIRE(std::isfinite(v));
    // float instantiation
    std::vector<float> af(a.begin(), a.end()), tf(t.begin(), t.end()), cf(c.begin(), c.end());
    std::vector<float> lf(1), sf(stats.size());
    sc::self_distill_forward_ref<float>(s, af.data(), tf.data(), cf.data(), tp.ts, tp.tt, nullptr,
                                        lf.data(), sf.data(), nullptr);
    REQUIRE(lf[0] == Approx(loss[0]).epsilon(1e-4).margin(1e-4));
  }
}

TEST_CASE("self_distill backward matches float64 finite differences", "[self_distill][grad]") {
  const uint64_t seed = sc::testing::next_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const sc::SelfDistillShape s{2, 7, 5};
  const size_t n = size_t(s.B * s.K * s.P);
  for (double ts : {0.1, 0.01}) {
    INFO("tau_s " << ts);
    Vec a = random_vec(n, rng), t = random_vec(n, rng), c = random_vec(size_t(s.K), rng);
    Vec loss(1), stats(size_t(2 * s.B * s.P));
    const double g = 1.7;
    auto L = [&]() {
      sc::self_distill_forward_ref<double>(s, a.data(), t.data(), c.data(), ts, 0.07, nullptr,
                                           loss.data(), stats.data(), nullptr);
      return g * loss[0];
    };
    L();
    Vec da(n, NAN);
    sc::self_distill_backward_ref<double>(s, a.data(), t.data(), c.data(), ts, 0.07, stats.data(),
                                          &g, da.data());
    for (size_t i = 0; i < n; ++i) {
      const double saved = a[i];
      a[i] = saved + 1e-6;
      const double lp = L();
      a[i] = saved - 1e-6;
      const double lm = L();
      a[i] = saved;
      const double num = (lp - lm) / 2e-6;
      INFO("element " << i << ": analytic " << da[i] << ", numeric " << num);
      REQUIRE(std::fabs(da[i] - num) <= 1e-7 + 1e-5 * std::fabs(num));
    }
    L();
  }
}
