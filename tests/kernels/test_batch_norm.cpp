// CPU batch-norm passes against the textbook formula, PyTorch's running-statistics rule, float64
// finite differences of the backward passes, and the mask semantics (= BN of the selected rows).
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <vector>

#include "kernels/add_relu.h"
#include "kernels/batch_norm.h"
#include "kernels/parallel.h"
#include "test_seed.h"

namespace {

using sc::Act;
using sc::BnGeom;

std::vector<double> random_vec(size_t n, std::mt19937_64& rng, double lo = -1, double hi = 1) {
  std::uniform_real_distribution<double> u(lo, hi);
  std::vector<double> v(n);
  for (double& x : v) x = u(rng);
  return v;
}

struct BnCase {
  BnGeom g;
  std::vector<uint8_t> mask;  // empty: no mask
  const uint8_t* mask_ptr() const { return mask.empty() ? nullptr : mask.data(); }
};

// Full training-mode forward through the passes (no running stats).
template <class T>
std::vector<T> bn_forward(const BnCase& bc, const std::vector<T>& x, const std::vector<T>& gamma,
                          const std::vector<T>& beta, const std::vector<T>* residual, Act act,
                          bool training, std::vector<T>* rm, std::vector<T>* rv,
                          std::vector<double>* stats_out = nullptr,
                          std::vector<double>* save_out = nullptr) {
  const int64_t C = bc.g.C;
  std::vector<double> stats(size_t(2 * C + 1)), save(size_t(2 * C));
  if (training) sc::batch_norm_stats_ref<T>(bc.g, x.data(), bc.mask_ptr(), stats.data());
  sc::batch_norm_finalize_ref<T>(C, training ? stats.data() : nullptr, rm ? rm->data() : nullptr,
                                 rv ? rv->data() : nullptr, training, 0.1, 1e-5, save.data());
  std::vector<T> y(x.size(), T(NAN));
  sc::batch_norm_apply_ref<T>(bc.g, x.data(), save.data(), gamma.data(), beta.data(),
                              residual ? residual->data() : nullptr, act, y.data());
  if (stats_out) *stats_out = stats;
  if (save_out) *save_out = save;
  return y;
}

}  // namespace

TEST_CASE("batch_norm forward matches the formula, running stats follow PyTorch", "[batch_norm]") {
  std::mt19937_64 rng(sc::testing::next_seed());
  // (outer, C, inner): NCHW 2-D, NHWC 2-D, 1-D, 1-D with a mask.
  std::vector<BnCase> cases = {{{3, 4, 10}, {}},
                               {{21, 5, 1}, {}},
                               {{9, 6, 1}, {}},
                               {{9, 3, 1}, {1, 0, 1, 1, 0, 0, 1, 1, 0}}};
  for (const BnCase& bc : cases)
    for (Act act : {Act::None, Act::Relu, Act::Gelu}) {
      const BnGeom& g = bc.g;
      const int64_t C = g.C;
      auto x = random_vec(size_t(g.numel()), rng, -2, 3);
      auto gamma = random_vec(size_t(C), rng, 0.5, 1.5), beta = random_vec(size_t(C), rng);
      auto res = random_vec(size_t(g.numel()), rng);
      std::vector<double> rm0 = random_vec(size_t(C), rng),
                          rv0 = random_vec(size_t(C), rng, 0.5, 2);
      std::vector<double> rm = rm0, rv = rv0;
      auto y = bn_forward<double>(bc, x, gamma, beta, &res, act, true, &rm, &rv);
      for (int64_t c = 0; c < C; ++c) {
        // Statistics of the selected rows, two-pass.
        double n = 0, s = 0;
        for (int64_t o = 0; o < g.outer; ++o)
          for (int64_t i = 0; i < g.inner; ++i)
            if (bc.mask.empty() || bc.mask[size_t(o)]) {
              s += x[size_t((o * C + c) * g.inner + i)];
              n += 1;
            }
        const double mean = s / n;
        double ss = 0;
        for (int64_t o = 0; o < g.outer; ++o)
          for (int64_t i = 0; i < g.inner; ++i)
            if (bc.mask.empty() || bc.mask[size_t(o)]) {
              const double d = x[size_t((o * C + c) * g.inner + i)] - mean;
              ss += d * d;
            }
        const double var = ss / n;
        for (int64_t o = 0; o < g.outer; ++o)
          for (int64_t i = 0; i < g.inner; ++i) {
            const size_t k = size_t((o * C + c) * g.inner + i);
            const double z =
                (x[k] - mean) / std::sqrt(var + 1e-5) * gamma[size_t(c)] + beta[size_t(c)] + res[k];
            REQUIRE(y[k] == Approx(sc::act_forward(act, z)).margin(1e-12));
          }
        REQUIRE(rm[size_t(c)] == Approx(0.9 * rm0[size_t(c)] + 0.1 * mean).margin(1e-14));
        REQUIRE(rv[size_t(c)] == Approx(0.9 * rv0[size_t(c)] + 0.1 * ss / (n - 1)).margin(1e-14));
      }
      // Eval mode uses the running statistics and leaves them alone.
      std::vector<double> rm1 = rm, rv1 = rv;
      auto ye = bn_forward<double>(bc, x, gamma, beta, nullptr, act, false, &rm1, &rv1);
      REQUIRE(rm1 == rm);
      REQUIRE(rv1 == rv);
      for (int64_t o = 0; o < g.outer; ++o)
        for (int64_t c = 0; c < C; ++c)
          for (int64_t i = 0; i < g.inner; ++i) {
            const size_t k = size_t((o * C + c) * g.inner + i);
            const double z =
                (x[k] - rm[size_t(c)]) / std::sqrt(rv[size_t(c)] + 1e-5) * gamma[size_t(c)] +
                beta[size_t(c)];
            REQUIRE(ye[k] == Approx(sc::act_forward(act, z)).margin(1e-12));
          }
      // float agrees with double.
      std::vector<float> xf(x.begin(), x.end()), gf(gamma.begin(), gamma.end()),
          bf(beta.begin(), beta.end()), rf(res.begin(), res.end());
      auto yf = bn_forward<float>(bc, xf, gf, bf, &rf, act, true, nullptr, nullptr);
      for (size_t k = 0; k < y.size(); ++k)
        REQUIRE(std::fabs(yf[k] - y[k]) <= 1e-5 * (1 + std::fabs(y[k])));
    }
}

TEST_CASE("batch_norm backward passes match float64 finite differences", "[batch_norm]") {
  std::mt19937_64 rng(sc::testing::next_seed());
  std::vector<BnCase> cases = {
      {{2, 3, 5}, {}}, {{7, 3, 1}, {}}, {{8, 2, 1}, {0, 1, 1, 0, 1, 1, 1, 0}}};
  const double eps = 1e-6;
  for (const BnCase& bc : cases)
    for (Act act : {Act::None, Act::Relu, Act::Gelu})
      for (bool training : {true, false})
        for (bool with_res : {false, true}) {
          const BnGeom& g = bc.g;
          const int64_t C = g.C;
          auto x = random_vec(size_t(g.numel()), rng, -2, 2);
          auto gamma = random_vec(size_t(C), rng, 0.5, 1.5), beta = random_vec(size_t(C), rng);
          auto res = random_vec(size_t(g.numel()), rng);
          auto rm = random_vec(size_t(C), rng), rv = random_vec(size_t(C), rng, 0.5, 2);
          auto cot = random_vec(size_t(g.numel()), rng);
          // Unselected rows are "don't care": the check projects on the selected rows only.
          for (int64_t o = 0; o < g.outer; ++o)
            if (!bc.mask.empty() && !bc.mask[size_t(o)])
              for (int64_t k = 0; k < C * g.inner; ++k) cot[size_t(o * C * g.inner + k)] = 0;
          const std::vector<double>* rp = with_res ? &res : nullptr;
          auto loss = [&]() {
            auto rm1 = rm, rv1 = rv;
            auto y = bn_forward<double>(bc, x, gamma, beta, rp, act, training, &rm1, &rv1);
            double s = 0;
            for (size_t k = 0; k < y.size(); ++k) s += y[k] * cot[k];
            return s;
          };
          std::vector<double> stats, save;
          auto rm1 = rm, rv1 = rv;
          bn_forward<double>(bc, x, gamma, beta, rp, act, training, &rm1, &rv1, &stats, &save);
          std::vector<double> gsum(size_t(2 * C));
          // Poison the cotangent on unselected rows: the backward must ignore it.
          auto dy = cot;
          for (int64_t o = 0; o < g.outer; ++o)
            if (!bc.mask.empty() && !bc.mask[size_t(o)])
              for (int64_t k = 0; k < C * g.inner; ++k) dy[size_t(o * C * g.inner + k)] = 1e3;
          sc::batch_norm_grad_sums_ref<double>(g, dy.data(), x.data(), save.data(), gamma.data(),
                                               beta.data(), rp ? rp->data() : nullptr, act,
                                               bc.mask_ptr(), gsum.data());
          std::vector<double> dx(x.size(), NAN), dres(x.size(), NAN);
          sc::batch_norm_grad_apply_ref<double>(g, dy.data(), x.data(), save.data(), gamma.data(),
                                                beta.data(), rp ? rp->data() : nullptr, act,
                                                bc.mask_ptr(), gsum.data(), stats[size_t(2 * C)],
                                                training, dx.data(), rp ? dres.data() : nullptr);
          std::vector<double> dgamma(size_t(C), 1.0), dbeta(size_t(C), 2.0);
          sc::batch_norm_param_grads_ref<double>(C, gsum.data(), dgamma.data(), dbeta.data());
          for (double& v : dgamma) v -= 1.0;
          for (double& v : dbeta) v -= 2.0;
          auto fd = [&](std::vector<double>& p, const std::vector<double>& analytic,
                        const char* name) {
            for (size_t i = 0; i < p.size(); ++i) {
              const double saved = p[i];
              p[i] = saved + eps;
              const double lp = loss();
              p[i] = saved - eps;
              const double lm = loss();
              p[i] = saved;
              const double numeric = (lp - lm) / (2 * eps);
              INFO(name << " act " << int(act) << " training " << training << " res " << with_res
                        << " outer " << g.outer << " i " << i << " analytic " << analytic[i]
                        << " numeric " << numeric);
              REQUIRE(std::fabs(analytic[i] - numeric) <= 1e-7 + 1e-5 * std::fabs(numeric));
            }
          };
          fd(x, dx, "dx");
          fd(gamma, dgamma, "dgamma");
          fd(beta, dbeta, "dbeta");
          if (with_res) fd(res, dres, "dresidual");
        }
}

TEST_CASE("masked BN1d equals BN1d of the selected rows, forward and backward", "[batch_norm]") {
  std::mt19937_64 rng(sc::testing::next_seed());
  const int64_t N = 12, C = 5;
  std::vector<uint8_t> mask(static_cast<size_t>(N), 0);
  std::bernoulli_distribution coin(0.5);
  for (auto& m : mask) m = coin(rng);
  mask[0] = 1, mask[1] = 1, mask[2] = 0;
  std::vector<int64_t> rows;
  for (int64_t o = 0; o < N; ++o)
    if (mask[size_t(o)]) rows.push_back(o);
  const int64_t M = int64_t(rows.size());
  auto x = random_vec(size_t(N * C), rng, -2, 2), dy = random_vec(size_t(N * C), rng);
  auto gamma = random_vec(size_t(C), rng), beta = random_vec(size_t(C), rng);
  std::vector<double> xs, dys;
  for (int64_t o : rows)
    for (int64_t c = 0; c < C; ++c) {
      xs.push_back(x[size_t(o * C + c)]);
      dys.push_back(dy[size_t(o * C + c)]);
    }
  auto run = [&](const BnCase& bc, const std::vector<double>& xx, const std::vector<double>& gg,
                 std::vector<double>& y, std::vector<double>& dx, std::vector<double>& dgb,
                 std::vector<double>& rm, std::vector<double>& rv) {
    std::vector<double> stats, save;
    y = bn_forward<double>(bc, xx, gamma, beta, nullptr, Act::Gelu, true, &rm, &rv, &stats, &save);
    std::vector<double> gsum(size_t(2 * C));
    sc::batch_norm_grad_sums_ref<double>(bc.g, gg.data(), xx.data(), save.data(), gamma.data(),
                                         beta.data(), nullptr, Act::Gelu, bc.mask_ptr(),
                                         gsum.data());
    dx.assign(xx.size(), NAN);
    sc::batch_norm_grad_apply_ref<double>(
        bc.g, gg.data(), xx.data(), save.data(), gamma.data(), beta.data(), nullptr, Act::Gelu,
        bc.mask_ptr(), gsum.data(), stats[size_t(2 * C)], true, dx.data(), nullptr);
    dgb.assign(size_t(2 * C), 0.0);
    sc::batch_norm_param_grads_ref<double>(C, gsum.data(), dgb.data(), dgb.data() + C);
  };
  std::vector<double> y1, dx1, dgb1, rm1(size_t(C), 0.0), rv1(size_t(C), 1.0);
  std::vector<double> y2, dx2, dgb2, rm2(size_t(C), 0.0), rv2(size_t(C), 1.0);
  run({{N, C, 1}, mask}, x, dy, y1, dx1, dgb1, rm1, rv1);
  run({{M, C, 1}, {}}, xs, dys, y2, dx2, dgb2, rm2, rv2);
  for (int64_t j = 0; j < M; ++j)
    for (int64_t c = 0; c < C; ++c) {
      const size_t a = size_t(rows[size_t(j)] * C + c), b = size_t(j * C + c);
      REQUIRE(y1[a] == Approx(y2[b]).margin(1e-13));
      REQUIRE(dx1[a] == Approx(dx2[b]).margin(1e-13));
    }
  for (int64_t o = 0; o < N; ++o)
    if (!mask[size_t(o)])
      for (int64_t c = 0; c < C; ++c) {
        REQUIRE(std::isfinite(y1[size_t(o * C + c)]));
        REQUIRE(dx1[size_t(o * C + c)] == 0.0);
      }
  for (size_t k = 0; k < dgb1.size(); ++k) REQUIRE(dgb1[k] == Approx(dgb2[k]).margin(1e-12));
  for (int64_t c = 0; c < C; ++c) {
    REQUIRE(rm1[size_t(c)] == Approx(rm2[size_t(c)]).margin(1e-14));
    REQUIRE(rv1[size_t(c)] == Approx(rv2[size_t(c)]).margin(1e-14));
  }
}

TEST_CASE("batch_norm with no selected rows leaves running stats alone", "[batch_norm]") {
  const BnGeom g{4, 2, 1};
  std::vector<uint8_t> mask(4, 0);
  std::vector<double> x = {1, 2, 3, 4, 5, 6, 7, 8}, stats(5), save(4);
  std::vector<double> rm = {0.5, -0.5}, rv = {2, 3};
  sc::batch_norm_stats_ref<double>(g, x.data(), mask.data(), stats.data());
  REQUIRE(stats[4] == 0.0);
  sc::batch_norm_finalize_ref<double>(2, stats.data(), rm.data(), rv.data(), true, 0.1, 1e-5,
                                      save.data());
  REQUIRE(rm == std::vector<double>{0.5, -0.5});
  REQUIRE(rv == std::vector<double>{2, 3});
  for (double v : save) REQUIRE(std::isfinite(v));
}

TEST_CASE("add_relu reference and its backward", "[batch_norm]") {
  std::mt19937_64 rng(sc::testing::next_seed());
  auto a = random_vec(100, rng), b = random_vec(100, rng), dy = random_vec(100, rng);
  std::vector<double> y(100), d(100);
  sc::add_relu_ref<double>(100, a.data(), b.data(), y.data());
  sc::add_relu_backward_ref<double>(100, dy.data(), y.data(), d.data());
  for (size_t i = 0; i < 100; ++i) {
    REQUIRE(y[i] == std::max(a[i] + b[i], 0.0));
    REQUIRE(d[i] == (a[i] + b[i] > 0 ? dy[i] : 0.0));
  }
}

// The float32 fast path (batch_norm_cpu.cpp) against the reference: the same double arithmetic
// arranged for the vectoriser, so the element-wise outputs may differ by one float rounding (a
// fused multiply-add in double can move the result across a float rounding boundary) and the sums
// by double round-off; and the same bits for any thread count.
TEST_CASE("batch_norm float32 fast path matches the reference, for any thread count",
          "[batch_norm]") {
  std::mt19937_64 rng(sc::testing::next_seed());
  // (outer, C, inner): channel-major maps with inner sizes off the 8 lanes (and under them),
  // channel-contiguous (NHWC / BN1d) with C off the vector widths, one masked BN1d (reference).
  std::vector<BnCase> cases = {{{3, 5, 37}, {}},
                               {{2, 7, 64}, {}},
                               {{4, 3, 5}, {}},
                               {{1, 2, 1031}, {}},
                               {{29, 13, 1}, {}},
                               {{6, 67, 1}, {}},
                               {{9, 3, 1}, {1, 0, 1, 1, 0, 0, 1, 1, 0}}};
  auto fvec = [&](size_t n, double lo, double hi) {
    auto d = random_vec(n, rng, lo, hi);
    return std::vector<float>(d.begin(), d.end());
  };
  // |a - b| within one float rounding of b (plus a floor for results that cancel to ~0)
  auto near = [](float a, float b, double floor) {
    return std::fabs(double(a) - double(b)) <= std::ldexp(std::fabs(double(b)), -23) + floor;
  };
  const int saved = sc::cpu_threads();
  for (const BnCase& bc : cases)
    for (Act act : {Act::None, Act::Relu, Act::Gelu})
      for (bool with_res : {false, true})
        for (bool training : {true, false}) {
          const BnGeom& g = bc.g;
          const int64_t C = g.C;
          const size_t n = size_t(g.numel());
          INFO("outer " << g.outer << " C " << C << " inner " << g.inner << " act " << int(act)
                        << " residual " << with_res << " training " << training);
          auto x = fvec(n, -2, 3), dy = fvec(n, -1, 1), res = fvec(n, -1, 1);
          auto gamma = fvec(size_t(C), 0.5, 1.5), beta = fvec(size_t(C), -1, 1);
          auto rm = fvec(size_t(C), -1, 1), rv = fvec(size_t(C), 0.5, 2);
          const float* r = with_res ? res.data() : nullptr;
          const uint8_t* m = bc.mask_ptr();
          std::vector<double> stats_ref(size_t(2 * C + 1)), save(size_t(2 * C));
          sc::batch_norm_stats_ref<float>(g, x.data(), m, stats_ref.data());
          if (training)
            sc::batch_norm_finalize_ref<float>(C, stats_ref.data(), nullptr, nullptr, true, 0.1,
                                               1e-5, save.data());
          else
            sc::batch_norm_finalize_ref<float>(C, nullptr, rm.data(), rv.data(), false, 0.1, 1e-5,
                                               save.data());
          std::vector<float> y_ref(n), dx_ref(n), dres_ref(n);
          std::vector<double> gsum_ref(size_t(2 * C));
          sc::batch_norm_apply_ref<float>(g, x.data(), save.data(), gamma.data(), beta.data(), r,
                                          act, y_ref.data());
          sc::batch_norm_grad_sums_ref<float>(g, dy.data(), x.data(), save.data(), gamma.data(),
                                              beta.data(), r, act, m, gsum_ref.data());
          const double count = stats_ref[size_t(2 * C)];
          sc::batch_norm_grad_apply_ref<float>(g, dy.data(), x.data(), save.data(), gamma.data(),
                                               beta.data(), r, act, m, gsum_ref.data(), count,
                                               training, dx_ref.data(),
                                               with_res ? dres_ref.data() : nullptr);
          std::vector<float> y1, dx1, dres1;
          std::vector<double> stats1, gsum1;
          for (int threads : {1, 2, 3}) {
            sc::set_cpu_threads(threads);
            INFO("threads " << threads);
            std::vector<double> stats(size_t(2 * C + 1), NAN), gsum(size_t(2 * C), NAN);
            std::vector<float> y(n, NAN), dx(n, NAN), dres(n, NAN);
            sc::batch_norm_stats_cpu(g, x.data(), m, stats.data());
            sc::batch_norm_apply_cpu(g, x.data(), save.data(), gamma.data(), beta.data(), r, act,
                                     y.data());
            sc::batch_norm_grad_sums_cpu(g, dy.data(), x.data(), save.data(), gamma.data(),
                                         beta.data(), r, act, m, gsum.data());
            sc::batch_norm_grad_apply_cpu(g, dy.data(), x.data(), save.data(), gamma.data(),
                                          beta.data(), r, act, m, gsum_ref.data(), count, training,
                                          dx.data(), with_res ? dres.data() : nullptr);
            REQUIRE(stats[size_t(2 * C)] == count);
            for (int64_t c = 0; c < C; ++c) {
              // sums of |values| bound the round-off of a reordered double sum
              REQUIRE(std::fabs(stats[size_t(c)] - stats_ref[size_t(c)]) <= 1e-13 * count * 3);
              REQUIRE(std::fabs(stats[size_t(C + c)] - stats_ref[size_t(C + c)]) <=
                      1e-13 * count * 9);
              REQUIRE(std::fabs(gsum[size_t(c)] - gsum_ref[size_t(c)]) <= 1e-13 * count);
              REQUIRE(std::fabs(gsum[size_t(C + c)] - gsum_ref[size_t(C + c)]) <=
                      1e-13 * count * 10);
            }
            for (size_t k = 0; k < n; ++k) {
              REQUIRE(near(y[k], y_ref[k], 1e-12));
              // dx = gamma invstd (dz - mean dz - xhat mean dzx): a float rounding of terms of
              // size ~10 at most here
              REQUIRE(near(dx[k], dx_ref[k], 1e-12 * 10));
              if (with_res) REQUIRE(dres[k] == dres_ref[k]);
            }
            if (threads == 1) {
              y1 = y, dx1 = dx, dres1 = dres, stats1 = stats, gsum1 = gsum;
              continue;
            }
            REQUIRE(y == y1);
            REQUIRE(dx == dx1);
            if (with_res) REQUIRE(dres == dres1);
            REQUIRE(stats == stats1);
            REQUIRE(gsum == gsum1);
          }
        }
  sc::set_cpu_threads(saved);
}
