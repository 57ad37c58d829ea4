// predictor_paths.h: the SlotCon loss with the slot predictor on the compacted present rows
// (SlotConLossConfig::compact_predictor, the default) against the predictor on all B*K rows with
// the absent ones masked out of its BatchNorms, on one device in one dtype. Shared by the CPU test
// (tests/model/test_slotcon_loss.cpp) and the GPU test (tests/gpu/test_fused_ops.cpp).
//
// Each run builds the same state from the seed (views, prototypes, center, a fresh predictor with
// running statistics 0 / 1), evaluates the loss once (both contrast directions, so the predictor
// runs twice and its running statistics move twice), backpropagates it, and returns everything a
// difference between the paths could reach, as CPU F64 copies: the loss and its parts, the
// gradients of the student features, the prototypes and every predictor parameter, the
// predictor's running statistics and the updated center. The numbers of present query rows of
// both directions are returned too, so a test can make sure the compaction had work to do.
#pragma once
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "model/heads.h"
#include "model/slotcon_loss.h"
#include "model/slotcon_loss_ops.h"
#include "test_seed.h"

namespace sc {
namespace testing {

struct PredictorPathCase {
  int64_t B, K, D, H, W, hidden;
  // The views are noisy copies of one map and the teacher's prototypes of the student's, so that
  // many slots are present in both views; `opposite`: the teacher sees the negated map, so with
  // P = 1 its one arg-max is the student's arg-min and no row is present.
  bool opposite = false;
};

struct LossRun {
  double loss = 0, group = 0, contrast = 0;
  std::vector<std::string> names;  // of the tensors below, for messages
  std::vector<Tensor> tensors;     // gradients, running statistics, center (CPU F64)
  int64_t present = 0;             // present query rows, direction 1 -> 2
  int64_t present_back = 0;        // and direction 2 -> 1
};

inline LossRun run_slotcon_loss(const PredictorPathCase& c, uint64_t seed, DType dt, Device dev,
                                bool compact) {
  Generator gen(seed);
  auto draw = [&](const Shape& s, double lo, double hi, bool grad) {
    Tensor t = to_device(cast(rand_uniform(s, gen, lo, hi, DType::F64), dt), dev).detach();
    if (grad) t.set_requires_grad(true);
    return t;
  };
  SlotConViews views;
  const Shape map{c.B, c.D, c.H, c.W};
  const Tensor base = rand_uniform(map, gen, -1, 1, DType::F64);
  auto noisy = [&](const Tensor& t, double amp, bool grad) {
    Tensor n = to_device(cast(add(t, rand_uniform(t.shape(), gen, -amp, amp, DType::F64)), dt), dev)
                   .detach();
    if (grad) n.set_requires_grad(true);
    return n;
  };
  for (int v = 0; v < 2; ++v) {
    views.x[v] = noisy(base, 0.3, true);
    views.y[v] = noisy(c.opposite ? neg(base) : base, 0.3, false);
    std::vector<double> box, flip;
    for (int64_t b = 0; b < c.B; ++b) {
      const double x0 = 0.4 * gen.uniform(), y0 = 0.4 * gen.uniform();
      box.insert(box.end(), {x0, y0, x0 + 0.4 + 0.2 * gen.uniform(), y0 + 0.4 + 0.2 * gen.uniform()});
      flip.push_back(double(gen.next_u64() % 2));
    }
    views.boxes[v] = from_vector(box, {c.B, 4}, dt, dev);
    views.flips[v] = from_vector(flip, {c.B}, DType::U8, dev);
  }
  const Tensor protos = rand_uniform({c.K, c.D}, gen, -1, 1, DType::F64);
  const Tensor protos_q = noisy(protos, 0.1, true);
  const Tensor protos_k = noisy(protos, 0.1, false);
  Tensor center = draw({1, c.K}, -0.1, 0.1, false);
  auto pred = std::make_shared<SlotPredictor>(c.D, c.hidden, c.D, gen, DType::F64);
  pred->to(dt);
  pred->to(dev);
  SlotConLossConfig cfg;
  cfg.compact_predictor = compact;
  const SlotConLossParts parts = slotcon_loss(
      views, protos_q, protos_k, center,
      [pred](const Tensor& x, const Tensor& m) { return pred->forward(x, m); }, cfg);
  parts.loss.backward();

  LossRun r;
  r.loss = parts.loss.item();
  r.group = parts.group_loss.item();
  r.contrast = parts.contrast_loss.item();
  auto keep = [&](const std::string& name, const Tensor& t) {
    r.names.push_back(name);
    r.tensors.push_back(t.defined() ? cast(to_device(t.detach(), Device::cpu()), DType::F64)
                                    : Tensor());
  };
  keep("grad x1", views.x[0].grad());
  keep("grad x2", views.x[1].grad());
  keep("grad protos", protos_q.grad());
  for (const auto& np : pred->named_parameters()) keep("grad predictor." + np.first, np.second.grad());
  for (const auto& nb : pred->named_buffers()) keep("predictor." + nb.first, nb.second);
  keep("center", center);
  {
    NoGradGuard ng;
    for (int d = 0; d < 2; ++d) {
      const GroupingScores q = fused::proto_assign(views.x[d], protos_q, cfg.teacher_temp);
      const GroupingScores k = fused::proto_assign(views.y[1 - d], protos_k, cfg.teacher_temp);
      const Tensor qm = fused::slot_presence(q.dots, fused::slot_presence(k.dots));
      (d == 0 ? r.present : r.present_back) =
          int64_t(std::lround(sum(cast(qm, DType::F64)).item()));
    }
  }
  return r;
}

// Largest difference of a and b relative to max(1, max |b|) over the loss, its parts and every
// tensor; `worst` names where.
inline double max_rel_diff(const LossRun& a, const LossRun& b, std::string* worst) {
  double m = 0;
  auto upd = [&](double d, const std::string& what) {
    if (!(d <= m)) {  // NaN counts as the worst
      m = std::isnan(d) ? INFINITY : d;
      if (worst) *worst = what;
    }
  };
  upd(std::fabs(a.loss - b.loss) / std::max(1.0, std::fabs(b.loss)), "loss");
  upd(std::fabs(a.group - b.group) / std::max(1.0, std::fabs(b.group)), "group loss");
  upd(std::fabs(a.contrast - b.contrast) / std::max(1.0, std::fabs(b.contrast)), "contrast loss");
  for (size_t i = 0; i < b.tensors.size(); ++i) {
    if (a.tensors[i].defined() != b.tensors[i].defined()) {
      upd(INFINITY, b.names[i] + " defined on one path only");
      continue;
    }
    if (!b.tensors[i].defined()) continue;
    const std::vector<double> va = a.tensors[i].to_vector(), vb = b.tensors[i].to_vector();
    double scale = 1, d = 0;
    for (double v : vb) scale = std::max(scale, std::fabs(v));
    for (size_t j = 0; j < va.size(); ++j) d = std::max(d, std::fabs(va[j] - vb[j]));
    if (std::isnan(d)) d = INFINITY;
    for (double v : va)
      if (!std::isfinite(v)) d = INFINITY;
    upd(d / scale, b.names[i]);
  }
  return m;
}

// The compact path on a seed from next_seed (test_seed.h), drawn again (up to 8 times) while the draw
// does not give the case what it is for: a small map against many prototypes (4 pixels, 64 or 70
// prototypes) leaves no slot in both views about once in a hundred draws, and then the
// compaction has nothing to do; an `opposite` case is for no row present in either direction,
// and the noise on the views and prototypes now and then makes one slot the arg-max of both
// (a few draws in a hundred). Presence is counted by proto_assign and slot_presence, apart from
// the loss, so that the test's checks on the loss stay checks. The seed used is returned in
// *seed, for the test's message and its other runs.
inline LossRun run_compact_with_present(const PredictorPathCase& c, DType dt, Device dev,
                                        uint64_t* seed) {
  *seed = next_seed();
  LossRun r = run_slotcon_loss(c, *seed, dt, dev, true);
  auto fits = [&c](const LossRun& run) {
    return c.opposite ? run.present == 0 && run.present_back == 0 : run.present > 0;
  };
  for (int redraw = 0; redraw < 8 && !fits(r); ++redraw) {
    *seed = next_seed();
    r = run_slotcon_loss(c, *seed, dt, dev, true);
  }
  return r;
}

}  // namespace testing
}  // namespace sc
