// The SlotCon loss (model/slotcon_loss.h): the fused path (custom ops over kernels/) equals the
// unfused path (plain engine ops; RoIAlign as per-image interpolation matrices) in value and in
// every gradient, op by op and for the whole loss with the slot predictor (BatchNorm over the
// selected rows), in float64 on the CPU; the center update follows the authors' rule; and the
// fused loss passes a float64 finite-difference gradient check. The slot predictor on the
// compacted present rows equals the predictor on all B*K rows with BatchNorm row masks (value,
// every gradient, the running statistics), in float64 and float32.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "test_seed.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "gradcheck.h"
#include "model/heads.h"
#include "model/slotcon_loss.h"
#include "model/slotcon_loss_ops.h"
#include "predictor_paths.h"

using namespace sc;

namespace {

Tensor leaf(const Shape& s, Generator& gen, double lo = -1, double hi = 1) {
  Tensor t = rand_uniform(s, gen, lo, hi, DType::F64);
  t.set_requires_grad(true);
  return t;
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  REQUIRE(a.defined());
  REQUIRE(b.defined());
  REQUIRE(a.shape() == b.shape());
  const auto va = a.to_vector(), vb = b.to_vector();
  double m = 0;
  for (size_t i = 0; i < va.size(); ++i) m = std::max(m, std::fabs(va[i] - vb[i]));
  return m;
}

double max_abs(const Tensor& a) {
  double m = 0;
  for (double v : a.to_vector()) m = std::max(m, std::fabs(v));
  return m;
}

// Both paths through f(fused?) on the same leaves: outputs and the leaves' gradients of
// sum(out * cot) agree to tol (relative to the largest magnitude).
void check_paths(const std::string& what, std::vector<Tensor> leaves,
                 const std::function<Tensor(bool, const std::vector<Tensor>&)>& f, double tol,
                 uint64_t seed) {
  INFO(what << " seed " << seed);
  Generator gen(seed);
  std::vector<Tensor> out(2);
  std::vector<std::vector<Tensor>> grads(2);
  Tensor cot;
  for (int path = 0; path < 2; ++path) {
    for (Tensor& l : leaves) l.set_grad(Tensor());
    out[path] = f(path == 0, leaves);
    if (!cot.defined()) cot = randn(out[path].shape(), gen, DType::F64);
    sum(mul(out[path], cot)).backward();
    for (Tensor& l : leaves) grads[size_t(path)].push_back(l.grad());
  }
  const double scale = std::max(1.0, max_abs(out[1]));
  CHECK(max_abs_diff(out[0], out[1]) <= tol * scale);
  for (size_t i = 0; i < leaves.size(); ++i) {
    INFO("gradient of leaf " << i);
    const Tensor g0 = grads[0][i], g1 = grads[1][i];
    REQUIRE(g0.defined() == g1.defined());
    if (!g0.defined()) continue;
    CHECK(max_abs_diff(g0, g1) <= tol * std::max(1.0, max_abs(g1)));
  }
}

}  // namespace

TEST_CASE("slotcon head ops: fused equals unfused, values and gradients", "[slotcon_loss]") {
  const uint64_t seed = sc::testing::next_seed();
  Generator gen(seed);
  const int64_t B = 3, K = 37, D = 5, H = 3, W = 4, P = H * W;
  for (double tau : {0.07, 0.01}) {
    check_paths(
        "proto_assign dots+attn", {leaf({B, D, H, W}, gen), leaf({K, D}, gen)},
        [&](bool fz, const std::vector<Tensor>& in) {
          const GroupingScores g = fz ? fused::proto_assign(in[0], in[1], tau)
                                      : unfused::proto_assign(in[0], in[1], tau);
          return concat({g.dots.contiguous(), g.attn.contiguous()}, 0);
        },
        1e-10, seed);
  }
  check_paths(
      "slot_pool", {leaf({B, D, P}, gen), leaf({B, K, P}, gen, 1e-3, 1)},
      [&](bool fz, const std::vector<Tensor>& in) {
        return fz ? fused::slot_pool(in[0], in[1]) : unfused::slot_pool(in[0], in[1]);
      },
      1e-11, seed);
  const Tensor boxes =
      from_vector({0, 0, 1, 1, 0.1, 0.0, 1.0, 0.7, -0.2, -0.3, 1.2, 1.4}, {B, 4}, DType::F64);
  const Tensor flips = from_vector({1, 0, 1}, {B}, DType::U8);
  check_paths(
      "view_align", {leaf({B, K, P}, gen)},
      [&](bool fz, const std::vector<Tensor>& in) {
        return fz ? fused::view_align(in[0], boxes, flips, H, W)
                  : unfused::view_align(in[0], boxes, flips, H, W);
      },
      1e-12, seed);
  const Tensor teacher = rand_uniform({B, K, P}, gen, -1, 1, DType::F64);
  const Tensor center = rand_uniform({K}, gen, -0.2, 0.2, DType::F64);
  for (double ts : {0.1, 0.01}) {
    check_paths(
        "self_distill", {leaf({B, K, P}, gen)},
        [&](bool fz, const std::vector<Tensor>& in) {
          const SelfDistillResult r =
              fz ? fused::self_distill(in[0], teacher, center, ts, 0.07, teacher)
                 : unfused::self_distill(in[0], teacher, center, ts, 0.07, teacher);
          return concat({reshape(r.loss, {1}), r.center_mean}, 0);
        },
        1e-11, seed);
  }
  // presence and contrast (keys from 3 ranks, this is rank 1)
  const Tensor dots = rand_uniform({B, K, P}, gen, -1, 1, DType::F64);
  const Tensor and_mask = cast(rand_uniform({B, K}, gen, 0, 2, DType::F64), DType::U8);
  const Tensor p1 = fused::slot_presence(dots, and_mask),
               p2 = unfused::slot_presence(dots, and_mask);
  CHECK(p1.to_vector() == p2.to_vector());
  CHECK(fused::slot_presence(dots).to_vector() == unfused::slot_presence(dots).to_vector());
  const int64_t N = B * K, R = 3, rank = 1;
  std::mt19937_64 rng(seed);
  std::bernoulli_distribution bd(0.6);
  std::vector<double> qm(static_cast<size_t>(N)), km(static_cast<size_t>(R * N));
  for (double& v : qm) v = bd(rng) ? 1 : 0;
  for (double& v : km) v = bd(rng) ? 1 : 0;
  const Tensor qmask = from_vector(qm, {N}, DType::U8), kmask = from_vector(km, {R * N}, DType::U8);
  for (double tau : {0.2, 0.05}) {
    check_paths(
        "slot_contrast", {leaf({N, D}, gen, -2, 2), leaf({R * N, D}, gen, -2, 2)},
        [&](bool fz, const std::vector<Tensor>& in) {
          return reshape(fz ? fused::slot_contrast(in[0], in[1], qmask, kmask, rank, tau)
                            : unfused::slot_contrast(in[0], in[1], qmask, kmask, rank, tau),
                         {1});
        },
        1e-11, seed);
  }
}

namespace {

struct LossSetup {
  int64_t B = 4, K = 7, D = 6, H = 3, W = 3, hidden = 8;
  SlotConViews views;
  Tensor protos_q, protos_k, center;
  std::shared_ptr<SlotPredictor> predictor;

  explicit LossSetup(uint64_t seed) {
    Generator gen(seed);
    for (int v = 0; v < 2; ++v) {
      views.x[v] = leaf({B, D, H, W}, gen, -1, 1);
      views.y[v] = rand_uniform({B, D, H, W}, gen, -1, 1, DType::F64);
    }
    views.boxes[0] = from_vector(
        {0, 0, 1, 1, 0.1, 0.2, 0.9, 1.0, 0, 0.3, 0.6, 1, 0.2, 0.1, 0.8, 0.7}, {B, 4}, DType::F64);
    views.boxes[1] = from_vector({0, 0, 1, 1, 0.0, 0.0, 0.8, 0.7, 0.4, 0, 1, 0.7, 0.3, 0.3, 1, 1},
                                 {B, 4}, DType::F64);
    views.flips[0] = from_vector({0, 1, 0, 1}, {B}, DType::U8);
    views.flips[1] = from_vector({1, 1, 0, 0}, {B}, DType::U8);
    protos_q = leaf({K, D}, gen, -1, 1);
    protos_k = rand_uniform({K, D}, gen, -1, 1, DType::F64);
    center = rand_uniform({1, K}, gen, -0.1, 0.1, DType::F64);
    predictor = std::make_shared<SlotPredictor>(D, hidden, D, gen, DType::F64);
  }
  SlotPredictorFn predictor_fn() const {
    auto p = predictor;
    return [p](const Tensor& x, const Tensor& m) { return p->forward(x, m); };
  }
  std::vector<Tensor> leaves() const {
    std::vector<Tensor> l = {views.x[0], views.x[1], protos_q};
    for (const Tensor& t : predictor->parameters()) l.push_back(t);
    return l;
  }
};

}  // namespace

TEST_CASE("slotcon loss: fused equals unfused (value, every gradient, center)", "[slotcon_loss]") {
  const uint64_t seed = sc::testing::next_seed();
  INFO("seed " << seed);
  LossSetup st(seed);
  SlotConLossConfig cfg;
  std::vector<double> loss(2), group(2), contrast(2);
  std::vector<std::vector<Tensor>> grads(2);
  std::vector<Tensor> centers(2);
  const Tensor center0 = st.center.clone();
  for (int path = 0; path < 2; ++path) {
    cfg.fused = path == 0;
    for (Tensor l : st.leaves()) l.set_grad(Tensor());
    Tensor center = center0.clone();
    const SlotConLossParts parts =
        slotcon_loss(st.views, st.protos_q, st.protos_k, center, st.predictor_fn(), cfg);
    parts.loss.backward();
    loss[size_t(path)] = parts.loss.item();
    group[size_t(path)] = parts.group_loss.item();
    contrast[size_t(path)] = parts.contrast_loss.item();
    centers[size_t(path)] = center;
    for (const Tensor& l : st.leaves()) grads[size_t(path)].push_back(l.grad());
    // center <- 0.9 center + 0.1 batch mean of the teacher's raw dots
    CHECK(max_abs_diff(center, add(mul_scalar(center0, 0.9),
                                   mul_scalar(reshape(parts.batch_center, {1, st.K}), 0.1))) <
          1e-15);
  }
  CHECK(std::isfinite(loss[0]));
  CHECK(contrast[0] > 0);  // at least one query was selected
  CHECK(loss[0] == Approx(loss[1]).epsilon(1e-11));
  CHECK(group[0] == Approx(group[1]).epsilon(1e-11));
  CHECK(contrast[0] == Approx(contrast[1]).epsilon(1e-11));
  CHECK(max_abs_diff(centers[0], centers[1]) < 1e-14);
  for (size_t i = 0; i < grads[0].size(); ++i) {
    INFO("leaf " << i);
    REQUIRE(grads[0][i].defined());
    REQUIRE(grads[1][i].defined());
    CHECK(max_abs_diff(grads[0][i], grads[1][i]) <= 1e-10 * std::max(1.0, max_abs(grads[1][i])));
  }
}

TEST_CASE(
    "slotcon loss: the group loss's own teacher temperature (the warm-up) changes only "
    "the group loss, on both paths",
    "[slotcon_loss]") {
  const uint64_t seed = sc::testing::next_seed();
  INFO("seed " << seed);
  LossSetup st(seed);
  // the views in the other order: the group loss sums both directions, so it must not change
  SlotConViews swapped = st.views;
  for (auto f : {&SlotConViews::x, &SlotConViews::y, &SlotConViews::boxes, &SlotConViews::flips})
    std::swap((swapped.*f)[0], (swapped.*f)[1]);
  auto run = [&](bool fused, double td, bool swap = false) {
    SlotConLossConfig cfg;
    cfg.fused = fused;
    cfg.distill_teacher_temp = td;
    Tensor center = st.center.clone();
    const SlotConLossParts p = slotcon_loss(swap ? swapped : st.views, st.protos_q, st.protos_k,
                                            center, st.predictor_fn(), cfg);
    return std::make_pair(p.group_loss.item(), p.contrast_loss.item());
  };
  for (bool fused : {true, false}) {
    INFO("fused " << fused);
    const auto base = run(fused, 0);
    const auto same = run(fused, SlotConLossConfig().teacher_temp);
    CHECK(same.first == base.first);
    CHECK(same.second == base.second);
    const auto sharp = run(fused, 0.04);
    CHECK(std::fabs(sharp.first - base.first) > 1e-6 * std::fabs(base.first));
    CHECK(sharp.second == base.second);
    const auto other = run(!fused, 0.04);
    CHECK(sharp.first == Approx(other.first).epsilon(1e-11));
    CHECK(run(fused, 0.04, true).first == Approx(sharp.first).epsilon(1e-12));
  }
}

TEST_CASE("slotcon loss (fused) passes a float64 gradient check", "[slotcon_loss][grad]") {
  LossSetup st(20240611);
  SlotConLossConfig cfg;
  const Tensor center0 = st.center.clone();
  auto f = [&](const std::vector<Tensor>& in) {
    SlotConViews v = st.views;
    v.x[0] = in[0];
    v.x[1] = in[1];
    Tensor center = center0.clone();
    return slotcon_loss(v, in[2], st.protos_k, center, st.predictor_fn(), cfg).loss;
  };
  const std::string worst =
      testing::gradcheck(f, {st.views.x[0].detach().clone(), st.views.x[1].detach().clone(),
                             st.protos_q.detach().clone()});
  INFO(worst);
  CHECK(worst.empty());
}

TEST_CASE("slotcon loss: the predictor on the compacted present rows equals the masked path",
          "[slotcon_loss]") {
  // Both paths in one dtype on the CPU: the loss, its parts, the gradients of the student
  // features, the prototypes and every predictor parameter, the predictor's running statistics
  // and the center. The paths differ only in the rows the GEMMs see (the present rows in order
  // vs all rows with zero gradients on the absent ones) and in the BLAS blocking that follows from
  // it; the BatchNorm statistics are over the same rows in the same order. Tolerances: a few
  // units of round-off, relative to each tensor's largest element.
  //   K = 37 > P = 9: M = B*P = 36 of 148 rows; K = 64, P = 4: M = 8 of 128;
  //   K = 5 < P = 6: M = B*K (the compaction only moves the present rows to the front);
  //   P = 1 with the teacher on the negated map: no row present (M = B = 2 padding slots).
  const testing::PredictorPathCase cases[] = {{4, 37, 6, 3, 3, 8},
                                              {2, 64, 5, 2, 2, 7},
                                              {3, 5, 4, 2, 3, 6},
                                              {2, 9, 4, 1, 1, 5, true}};
  for (const auto& c : cases) {
    for (DType dt : {DType::F64, DType::F32}) {
      uint64_t seed = 0;
      const testing::LossRun compact = testing::run_compact_with_present(c, dt, Device::cpu(), &seed);
      INFO("B " << c.B << " K " << c.K << " P " << c.H * c.W << " " << dtype_name(dt) << " seed "
                << seed);
      const testing::LossRun masked = testing::run_slotcon_loss(c, seed, dt, Device::cpu(), false);
      std::string worst;
      const double d = testing::max_rel_diff(compact, masked, &worst);
      INFO("largest relative difference " << d << " (" << worst << "), present rows "
                                          << compact.present << " and " << compact.present_back
                                          << " of " << c.B * c.K);
      if (std::getenv("SLOTCON_TOL_REPORT"))
        std::printf("compact vs masked predictor, cpu %s, K %lld P %lld: %.3g (%s)\n",
                    dtype_name(dt), (long long)c.K, (long long)(c.H * c.W), d, worst.c_str());
      CHECK(compact.present <= c.B * c.H * c.W);
      if (c.opposite) {
        CHECK(compact.present == 0);
        CHECK(compact.present_back == 0);
        CHECK(compact.contrast == 0);
      } else {
        CHECK(compact.present > 0);
        CHECK(compact.contrast > 0);
      }
      CHECK(d <= (dt == DType::F64 ? 1e-12 : 2e-5));
    }
  }
}
