// Slot presence and slot contrast (kernels/slot_contrast.h), CPU reference: presence against the
// authors' scatter-of-argmax formulation, the masked static-shape loss against the authors'
// compact formulation (nonzero rows, an explicit logits matrix, labels from the cumulative sum of
// the gathered key mask, cross-entropy x 2 tau) with keys from several ranks, float64 central
// differences of dL_dz and dL_dkeys, a prototype that no pixel picks, and an empty selection.
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "test_seed.h"
#include "kernel_test_util.h"
#include "kernels/slot_contrast.h"
#include "kernels/slot_presence.h"

namespace {

using namespace kernel_test;
using Mask = std::vector<uint8_t>;

Mask random_mask(size_t n, std::mt19937_64& rng, double p) {
  std::bernoulli_distribution bd(p);
  Mask m(n);
  for (auto& v : m) v = bd(rng) ? 1 : 0;
  return m;
}

Vec normalised(const Vec& a, int64_t rows, int64_t D) {
  Vec o(a.size());
  for (int64_t i = 0; i < rows; ++i) {
    double ss = 0;
    for (int64_t d = 0; d < D; ++d) ss += a[size_t(i * D + d)] * a[size_t(i * D + d)];
    const double nr = std::max(std::sqrt(ss), 1e-12);
    for (int64_t d = 0; d < D; ++d) o[size_t(i * D + d)] = a[size_t(i * D + d)] / nr;
  }
  return o;
}

// The authors' formulation: compact rows, full logits, labels = cumsum(mask_k)[idx] - 1.
double compact_loss(const sc::SlotContrastShape& s, const Vec& z, const Vec& keys, const Mask& qm,
                    const Mask& km, double tau) {
  const int64_t N = s.rows(), D = s.D;
  const Vec zn = normalised(z, N, D), kn = normalised(keys, s.key_rows(), D);
  std::vector<int64_t> idx_q, idx_k, cum(size_t(s.key_rows()));
  int64_t run = 0;
  for (int64_t j = 0; j < s.key_rows(); ++j) {
    run += km[size_t(j)];
    cum[size_t(j)] = run;
    if (km[size_t(j)]) idx_k.push_back(j);
  }
  for (int64_t i = 0; i < N; ++i)
    if (qm[size_t(i)] && km[size_t(s.rank * N + i)]) idx_q.push_back(i);
  if (idx_q.empty()) return 0.0;
  double ce = 0;
  for (int64_t i : idx_q) {
    Vec logits;
    for (int64_t j : idx_k) {
      double v = 0;
      for (int64_t d = 0; d < D; ++d) v += zn[size_t(i * D + d)] * kn[size_t(j * D + d)];
      logits.push_back(v / tau);
    }
    const int64_t label = cum[size_t(i + N * s.rank)] - 1;
    double m = -1e300, se = 0;
    for (double l : logits) m = std::max(m, l);
    for (double l : logits) se += std::exp(l - m);
    ce += -(logits[size_t(label)] - m - std::log(se));
  }
  return ce / double(idx_q.size()) * 2 * tau;
}

}  // namespace

TEST_CASE("slot_presence matches scatter of the per-pixel argmax", "[slot_contrast]") {
  const uint64_t seed = sc::testing::next_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t B = 4, K = 37, P = 49;
  Vec dots = random_vec(size_t(B * K * P), rng);
  // Image 1: prototype 9 is picked everywhere (peaky), so every other prototype is absent.
  for (int64_t p = 0; p < P; ++p) dots[size_t((1 * K + 9) * P + p)] = 1.5;
  Mask present(size_t(B * K), 7), and_mask = random_mask(size_t(B * K), rng, 0.5), pa(present);
  sc::slot_presence_ref<double>(B, K, P, dots.data(), nullptr, present.data());
  sc::slot_presence_ref<double>(B, K, P, dots.data(), and_mask.data(), pa.data());
  for (int64_t b = 0; b < B; ++b) {
    Vec hits(size_t(K), 0.0);
    for (int64_t p = 0; p < P; ++p) {
      int64_t best = 0;
      double bv = -1e300;
      for (int64_t k = 0; k < K; ++k)
        if (dots[size_t((b * K + k) * P + p)] > bv) {
          bv = dots[size_t((b * K + k) * P + p)];
          best = k;
        }
      hits[size_t(best)] += 1;
    }
    for (int64_t k = 0; k < K; ++k) {
      REQUIRE(int(present[size_t(b * K + k)]) == int(hits[size_t(k)] > 0));
      REQUIRE(int(pa[size_t(b * K + k)]) ==
              int(hits[size_t(k)] > 0 && and_mask[size_t(b * K + k)]));
    }
  }
  for (int64_t k = 0; k < K; ++k) REQUIRE(int(present[size_t(K + k)]) == int(k == 9));
}

TEST_CASE("slot_contrast forward equals the authors' compact formulation", "[slot_contrast]") {
  const uint64_t seed = sc::testing::next_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  for (double tau : {0.2, 0.01}) {
    for (int64_t rank : {0, 2}) {
      const sc::SlotContrastShape s{3, 37, 33, 3, rank};
      INFO("tau " << tau << " rank " << rank);
      Vec z = random_vec(size_t(s.rows() * s.D), rng, -2, 2);
      Vec keys = random_vec(size_t(s.key_rows() * s.D), rng, -2, 2);
      Mask qm = random_mask(size_t(s.rows()), rng, 0.6),
           km = random_mask(size_t(s.key_rows()), rng, 0.6);
      qm[3] = 0;                              // a prototype no pixel picks in the student view
      km[size_t(s.rank * s.rows() + 4)] = 0;  // ... and one in the teacher view
      Vec loss(1, NAN), lse(size_t(s.rows()), NAN);
      sc::slot_contrast_forward_ref<double>(s, z.data(), keys.data(), qm.data(), km.data(), tau,
                                            loss.data(), lse.data());
      REQUIRE(loss[0] == Approx(compact_loss(s, z, keys, qm, km, tau)).epsilon(1e-12));
      for (int64_t i = 0; i < s.rows(); ++i)
        if (!(qm[size_t(i)] && km[size_t(s.rank * s.rows() + i)])) REQUIRE(lse[size_t(i)] == 0.0);
    }
  }
  // Nothing selected: loss 0 (the authors' code would produce NaN), gradients 0.
  const sc::SlotContrastShape s{2, 5, 4, 1, 0};
  Vec z = random_vec(size_t(s.rows() * s.D), rng),
      keys = random_vec(size_t(s.key_rows() * s.D), rng);
  Mask qm(size_t(s.rows()), 0), km(size_t(s.key_rows()), 1);
  Vec loss(1, NAN), lse(size_t(s.rows()), NAN), dz(z.size(), NAN), dk(keys.size(), NAN);
  const double g = 1.0;
  sc::slot_contrast_forward_ref<double>(s, z.data(), keys.data(), qm.data(), km.data(), 0.2,
                                        loss.data(), lse.data());
  sc::slot_contrast_backward_ref<double>(s, z.data(), keys.data(), qm.data(), km.data(), 0.2,
                                         lse.data(), &g, dz.data(), dk.data());
  REQUIRE(loss[0] == 0.0);
  for (double v : dz) REQUIRE(v == 0.0);
  for (double v : dk) REQUIRE(v == 0.0);
}

TEST_CASE("slot_contrast backward matches float64 finite differences", "[slot_contrast][grad]") {
  const uint64_t seed = sc::testing::next_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  for (double tau : {0.2, 0.05}) {
    const sc::SlotContrastShape s{2, 5, 4, 2, 1};
    INFO("tau " << tau);
    Vec z = random_vec(size_t(s.rows() * s.D), rng),
        keys = random_vec(size_t(s.key_rows() * s.D), rng);
    Mask qm = random_mask(size_t(s.rows()), rng, 0.7),
         km = random_mask(size_t(s.key_rows()), rng, 0.7);
    qm[0] = 1;
    km[size_t(s.rows())] = 1;  // at least one valid query (row 0 of rank 1)
    Vec loss(1), lse(size_t(s.rows()));
    const double g = 0.8;
    auto L = [&]() {
      sc::slot_contrast_forward_ref<double>(s, z.data(), keys.data(), qm.data(), km.data(), tau,
                                            loss.data(), lse.data());
      return g * loss[0];
    };
    L();
    Vec dz(z.size(), NAN), dk(keys.size(), NAN);
    sc::slot_contrast_backward_ref<double>(s, z.data(), keys.data(), qm.data(), km.data(), tau,
                                           lse.data(), &g, dz.data(), dk.data());
    for (int which = 0; which < 2; ++which) {
      Vec& x = which == 0 ? z : keys;
      const Vec& an = which == 0 ? dz : dk;
      for (size_t i = 0; i < x.size(); ++i) {
        const double saved = x[i];
        x[i] = saved + 1e-6;
        const double lp = L();
        x[i] = saved - 1e-6;
        const double lm = L();
        x[i] = saved;
        const double num = (lp - lm) / 2e-6;
        INFO((which == 0 ? "dL_dz" : "dL_dkeys")
             << " element " << i << ": analytic " << an[i] << ", numeric " << num);
        REQUIRE(std::fabs(an[i] - num) <= 1e-7 + 1e-5 * std::fabs(num));
      }
    }
  }
}
