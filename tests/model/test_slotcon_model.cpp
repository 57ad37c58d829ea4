// The SlotCon networks: reference names, the teacher's EMA, and one step's loss (fused equals
// unfused through the whole model).
#include <catch2/catch.hpp>
#include <cmath>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "model/slotcon.h"

using namespace sc;

namespace {
TrainConfig tiny() {
  TrainConfig c;
  c.arch = "resnet18";
  c.dim_hidden = 16;
  c.dim_out = 8;
  c.num_prototypes = 5;
  return c;
}
TwoViewBatch random_batch(int64_t B, int64_t S, Generator& g) {
  TwoViewBatch b;
  for (int v = 0; v < 2; ++v) {
    b.crops[v] = randn({B, 3, S, S}, g);
    std::vector<double> c, f;
    for (int64_t i = 0; i < B; ++i) {
      double x1 = 0.3 * g.uniform(), y1 = 0.3 * g.uniform();
      c.insert(c.end(), {x1, y1, x1 + 0.5 + 0.2 * g.uniform(), y1 + 0.5 + 0.2 * g.uniform()});
      f.push_back(g.uniform() < 0.5 ? 1 : 0);
    }
    b.coords[v] = from_vector(c, {B, 4});
    b.flags[v] = from_vector(f, {B}, DType::U8);
  }
  return b;
}
}  // namespace

TEST_CASE("slotcon model: state dict names follow the reference module") {
  SlotConModel m(tiny(), Device::cpu(), 1);
  TensorMap names;
  for (auto& kv : m.state_dict()) names[kv.first] = kv.second;
  for (const char* n :
       {"encoder_q.conv1.weight", "encoder_k.layer4.1.bn2.running_var",
        "encoder_q.layer2.0.downsample.0.weight", "projector_q.mlp.0.weight",
        "projector_k.mlp.4.running_mean", "projector_q.mlp.6.bias", "grouping_q.slot_embed.weight",
        "grouping_k.slot_embed.weight", "predictor_slot.mlp.0.weight",
        "predictor_slot.mlp.4.running_var", "predictor_slot.mlp.6.bias", "center"}) {
    INFO(n);
    CHECK(names.count(n) == 1);
  }
  CHECK(names.at("grouping_q.slot_embed.weight").shape() == Shape{5, 8});
  CHECK(names.at("center").shape() == Shape{1, 5});
  // the optimizer's state is saved under these names: they must be the state-dict names
  NamedTensors student = m.student_parameters();
  CHECK(student.size() == m.encoder_q->named_parameters().size() +
                              m.projector_q->named_parameters().size() + 1 +
                              m.predictor_slot->named_parameters().size());
  for (auto& kv : student) {
    INFO(kv.first);
    CHECK(kv.first.rfind("encoder_k", 0) != 0);
    CHECK(names.count(kv.first) == 1);
    CHECK(kv.second.requires_grad());
  }
  // the teacher starts equal to the student and is not optimised
  CHECK(compare(names.at("encoder_q.conv1.weight"), names.at("encoder_k.conv1.weight"), 0, 0)
            .max_abs == 0);
  CHECK_FALSE(m.encoder_k->conv1->weight.requires_grad());
}

TEST_CASE("slotcon model: the teacher update is an EMA of the student") {
  SlotConModel m(tiny(), Device::cpu(), 2);
  Tensor q = m.grouping_q->slot_embed->weight, k = m.grouping_k->slot_embed->weight;
  {
    NoGradGuard ng;
    add_(q, ones(q.shape()), 1.0);  // student moves by +1
  }
  std::vector<double> before = k.to_vector();
  m.momentum_update(0.9);
  std::vector<double> after = k.to_vector(), qv = q.to_vector();
  for (size_t i = 0; i < after.size(); ++i)
    CHECK(after[i] == Approx(0.9 * before[i] + 0.1 * qv[i]).margin(1e-6));
  // BN running statistics are not averaged
  std::vector<double> rv = m.encoder_k->bn1->running_var.to_vector();
  for (double v : rv) CHECK(v == 1.0);
}

TEST_CASE("slotcon model: one step's loss, fused equals unfused, gradients reach the student") {
  Generator g(3);
  TwoViewBatch b = random_batch(4, 64, g);
  SlotConModel fused(tiny(), Device::cpu(), 4), plain(tiny(), Device::cpu(), 4);
  plain.set_fused(false);
  StepLoss lf = fused.forward(b).read(), lp = plain.forward(b).read();
  CHECK(std::isfinite(lf.total.item()));
  CHECK(lf.total.item() == Approx(lp.total.item()).epsilon(1e-4));
  CHECK(lf.value == Approx(lf.group + lf.contrast).epsilon(1e-6));
  {
    // the parts are weighted w and 1 - w: the same step at w = 0.25 scales them by 1/2 and 3/2
    TrainConfig c = tiny();
    c.group_loss_weight = 0.25;
    SlotConModel quarter(c, Device::cpu(), 4);
    StepLoss lq = quarter.forward(b).read();
    CHECK(lq.group == Approx(lf.group * 0.5).epsilon(1e-5));
    CHECK(lq.contrast == Approx(lf.contrast * 1.5).epsilon(1e-5));
    CHECK(lq.value == Approx(lq.group + lq.contrast).epsilon(1e-6));
  }
  CHECK(lf.group == Approx(lp.group).epsilon(1e-4));
  CHECK(lf.contrast == Approx(lp.contrast).epsilon(1e-4));
  CHECK(compare(fused.center, plain.center, 1e-6, 1e-4).max_scaled <= 1);
  lf.total.backward();
  lp.total.backward();
  Tensor gf = fused.grouping_q->slot_embed->weight.grad();
  Tensor gp = plain.grouping_q->slot_embed->weight.grad();
  REQUIRE(gf.defined());
  CHECK(compare(gf, gp, 1e-5, 1e-3).max_scaled <= 1);
  // every student parameter gets a finite gradient, and one that is not all zeros once the
  // residual branches are open (at initialisation each block's last BatchNorm scale is 0, which
  // zeroes the gradient of the layers before it in the branch); no teacher tensor gets one
  SlotConModel open(tiny(), Device::cpu(), 4);
  {
    NoGradGuard ng;
    for (auto& kv : open.student_parameters()) {
      bool zero = true;
      for (double v : kv.second.to_vector()) zero = zero && v == 0;
      if (zero && kv.first.find(".bn") != std::string::npos) fill_(kv.second, 1.0);
    }
  }
  open.forward(b).total.backward();
  std::string still;
  for (auto& kv : open.student_parameters()) {
    INFO(kv.first);
    Tensor gr = kv.second.grad();
    REQUIRE(gr.defined());
    double sq = 0;
    for (double v : gr.to_vector()) sq += v * v;
    CHECK(std::isfinite(sq));
    if (!(sq > 0)) still += kv.first + " ";
  }
  CHECK(still == "");
  size_t teacher = 0;
  for (auto& kv : open.named_parameters())
    if (kv.first.find("_k.") != std::string::npos) {
      INFO(kv.first);
      CHECK_FALSE(kv.second.grad().defined());
      ++teacher;
    }
  size_t mirrored = 0;  // the student's tensors that the teacher has too (not the predictor's)
  for (auto& kv : open.student_parameters()) mirrored += kv.first.rfind("predictor", 0) != 0;
  CHECK(teacher == mirrored);
}

TEST_CASE("slotcon model: channels-last (NHWC) computes what NCHW does, and saves the same") {
  SlotConModel a(tiny(), Device::cpu(), 11), b(tiny(), Device::cpu(), 11);
  b.set_channels_last(true);
  CHECK(b.channels_last());
  CHECK(b.encoder_q->conv1->weight.is_channels_last());
  CHECK(b.projector_k->named_parameters().front().second.is_channels_last());
  Generator g(3);
  TwoViewBatch batch = random_batch(4, 64, g);
  a.train();
  b.train();
  for (int step = 0; step < 2; ++step) {
    a.momentum_update(0.9);
    b.momentum_update(0.9);
    StepLoss la = a.forward(batch).read(), lb = b.forward(batch).read();
    CHECK(lb.total.item() == Approx(la.total.item()).epsilon(1e-5));
    CHECK(lb.group == Approx(la.group).epsilon(1e-5));
    CHECK(lb.contrast == Approx(la.contrast).epsilon(1e-5));
    for (auto* m : {&a, &b})
      for (auto& kv : m->student_parameters()) kv.second.set_grad(Tensor());
    la.total.backward();
    lb.total.backward();
    NamedTensors pa = a.student_parameters(), pb = b.student_parameters();
    for (size_t i = 0; i < pa.size(); ++i) {
      INFO(pa[i].first);
      REQUIRE(pb[i].second.grad().defined());
      // float32 with batch statistics over 4 images at 2x2: compare as relative L2 norms
      Tensor ga = pa[i].second.grad(), gb = pb[i].second.grad().contiguous();
      const double diff = std::sqrt(sum(mul(sub(ga, gb), sub(ga, gb))).item());
      const double ref = std::sqrt(sum(mul(ga, ga)).item());
      CHECK(diff <= 1e-4 * ref + 1e-5);  // (biases in front of a BN: true gradient 0, noise)
      // a plain SGD-like update through mixed layouts
      NoGradGuard ng;
      add_(pa[i].second, pa[i].second.grad(), -0.01);
      add_(pb[i].second, pb[i].second.grad(), -0.01);
    }
  }
  // the state dicts hold the same row-major values, whatever the layout in memory
  NamedTensors sa = a.state_dict(), sb = b.state_dict();
  REQUIRE(sa.size() == sb.size());
  for (size_t i = 0; i < sa.size(); ++i) {
    INFO(sa[i].first);
    CHECK(compare(sb[i].second.contiguous(), sa[i].second, 1e-5, 1e-3).max_scaled <= 1.0);
  }
  // and a state saved from one loads into the other's layout
  TensorMap m;
  for (auto& kv : sa) m[kv.first] = kv.second;
  b.load_state_dict(m, true);
  CHECK(b.encoder_q->conv1->weight.is_channels_last());
  CHECK(compare(b.encoder_q->conv1->weight.contiguous(), a.encoder_q->conv1->weight, 0, 0).max_abs ==
        0);
}
