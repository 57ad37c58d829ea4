#include "model/slotcon.h"

#include <unordered_map>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "model/view_align.h"

namespace sc {

int resnet_depth(const std::string& arch) {
  if (arch == "resnet18") return 18;
  if (arch == "resnet34") return 34;
  if (arch == "resnet50") return 50;
  throw Error(str_cat("unknown arch '", arch, "' (resnet18, resnet34 or resnet50)"));
}

Prototypes::Prototypes(int64_t K, int64_t D, Generator& gen, Device device) {
  weight = register_parameter("weight", empty({K, D}, DType::F32, device));
  init_normal_(weight, gen, 0.0, 1.0);
}

Grouping::Grouping(int64_t K, int64_t D, Generator& gen, Device device) {
  slot_embed = register_module("slot_embed", std::make_shared<Prototypes>(K, D, gen, device));
}

SlotConModel::SlotConModel(const TrainConfig& cfg, Device device, uint64_t seed) : cfg_(cfg) {
  Generator gen(seed);
  const int depth = resnet_depth(cfg.arch);
  encoder_q = register_module("encoder_q", std::make_shared<ResNet>(depth, gen, DType::F32, device));
  encoder_k = register_module("encoder_k", std::make_shared<ResNet>(depth, gen, DType::F32, device));
  const int64_t C = encoder_q->out_channels();
  projector_q = register_module(
      "projector_q",
      std::make_shared<Projector>(C, cfg.dim_hidden, cfg.dim_out, gen, DType::F32, device));
  projector_k = register_module(
      "projector_k",
      std::make_shared<Projector>(C, cfg.dim_hidden, cfg.dim_out, gen, DType::F32, device));
  grouping_q = register_module(
      "grouping_q", std::make_shared<Grouping>(cfg.num_prototypes, cfg.dim_out, gen, device));
  grouping_k = register_module(
      "grouping_k", std::make_shared<Grouping>(cfg.num_prototypes, cfg.dim_out, gen, device));
  predictor_slot = register_module(
      "predictor_slot", std::make_shared<SlotPredictor>(cfg.dim_out, cfg.dim_hidden, cfg.dim_out,
                                                        gen, DType::F32, device));
  center = register_buffer("center", zeros({1, cfg.num_prototypes}, DType::F32, device));
  sync_teacher();
  // The teacher is never optimised.
  for (auto* m : {static_cast<Module*>(encoder_k.get()), static_cast<Module*>(projector_k.get()),
                  static_cast<Module*>(grouping_k.get())})
    for (auto& kv : m->named_parameters()) kv.second.set_requires_grad(false);
}

NamedTensors SlotConModel::student_parameters() const {
  NamedTensors out;
  for (const auto& kv : encoder_q->named_parameters("encoder_q.")) out.push_back(kv);
  for (const auto& kv : projector_q->named_parameters("projector_q.")) out.push_back(kv);
  for (const auto& kv : grouping_q->named_parameters("grouping_q.")) out.push_back(kv);
  for (const auto& kv : predictor_slot->named_parameters("predictor_slot.")) out.push_back(kv);
  return out;
}

std::vector<std::pair<Tensor, Tensor>> SlotConModel::ema_pairs() const {
  std::vector<std::pair<Tensor, Tensor>> pairs;
  auto add = [&](const Module& k, const Module& q) {
    NamedTensors tk = k.named_parameters(), tq = q.named_parameters();
    SC_CHECK(tk.size() == tq.size(), "teacher and student differ in parameter count");
    for (size_t i = 0; i < tk.size(); ++i) {
      SC_CHECK(tk[i].first == tq[i].first && tk[i].second.shape() == tq[i].second.shape(),
               "teacher and student differ at ", tk[i].first);
      pairs.emplace_back(tk[i].second, tq[i].second);
    }
  };
  add(*encoder_k, *encoder_q);
  add(*projector_k, *projector_q);
  add(*grouping_k, *grouping_q);
  return pairs;
}

void SlotConModel::momentum_update(double m) {
  NoGradGuard ng;
  for (auto& [k, q] : ema_pairs()) axpby_(k, m, q, 1.0 - m);
}

void SlotConModel::sync_teacher() {
  NoGradGuard ng;
  for (auto& [k, q] : ema_pairs()) copy_(k, q);
  // BN running statistics start equal too (both are fresh: 0 / 1).
}

namespace {

// Projected map x (B, D, h, w) -> pixel rows (B*P, D), P = h*w.
Tensor pixel_rows(const Tensor& x) {
  return reshape(permute(x, {0, 2, 3, 1}), {-1, x.size(1)});
}

struct Grouped {
  Tensor dots;   // (B, P, K) raw cosine scores
  Tensor slots;  // (B, K, D)
};

// SLOTCON.md §2: dots = <P_k/|P_k|, x_p/|x_p|>, attn = softmax_k(dots / tau) + 1e-6,
// slots = sum_p x_p attn_kp / sum_p attn_kp.
Grouped group(const Tensor& x, const Tensor& prototypes, double tau) {
  const int64_t B = x.size(0), D = x.size(1), P = x.size(2) * x.size(3);
  Tensor rows = pixel_rows(x);                                     // (B*P, D)
  Tensor dots = matmul(l2_normalize(rows, 1), transpose(l2_normalize(prototypes, 1), 0, 1));
  Tensor attn = add_scalar(softmax(mul_scalar(dots, 1.0 / tau), 1), 1e-6);  // (B*P, K)
  Tensor attn_b = reshape(attn, {B, P, -1});
  Tensor num = matmul(transpose(attn_b, 1, 2), reshape(rows, {B, P, D}));  // (B, K, D)
  Tensor den = transpose(sum(attn_b, {1}, true), 1, 2);                    // (B, K, 1)
  return {reshape(dots, {B, P, -1}), div(num, den)};
}

// present[b, k] (F32 0/1): prototype k is the arg-max of at least one pixel of image b.
Tensor presence(const Tensor& dots) {
  const int64_t K = dots.size(2);
  Tensor am = cast(unsqueeze(argmax(dots, 2), -1), dots.dtype());  // (B, P, 1)
  std::vector<double> ks(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k) ks[size_t(k)] = double(k);
  Tensor onehot = cast(equal_mask(am, from_vector(ks, {K}, dots.dtype(), dots.device())),
                       dots.dtype());                                // (B, P, K)
  Tensor counts = sum(onehot, {1});                                  // (B, K)
  return add_scalar(neg(cast(equal_mask(counts, zeros({1}, dots.dtype(), dots.device())),
                             dots.dtype())),
                    1.0);
}

// Align raw scores (B, P, K) to the overlap with the per-image matrices M (B, P, P): (B*P, K).
Tensor align(const Tensor& dots, const Tensor& M) {
  return reshape(matmul(M, dots), {-1, dots.size(2)});
}

// SLOTCON.md §4: mean over pixels of -sum_k softmax((b - c)/tau_t) log_softmax(a / tau_s).
Tensor self_distill(const Tensor& a, const Tensor& b, const Tensor& center, double tau_s,
                    double tau_t) {
  Tensor target = softmax(mul_scalar(sub(b, center), 1.0 / tau_t), 1);
  return neg(mean(sum(mul(target, log_softmax(mul_scalar(a, 1.0 / tau_s), 1)), {1})));
}

}  // namespace

// Slot contrast (SLOTCON.md §5), single rank, static shapes: every (b, k) row is kept and masks
// select the queries and keys. Loss = mean over selected queries of cross-entropy against their
// own key among the present keys, times 2 tau.
static Tensor slot_contrast(SlotPredictor& predictor, const Tensor& q_slots, const Tensor& k_slots,
                            const Tensor& present_q, const Tensor& present_k, double tau) {
  const int64_t N = q_slots.size(0) * q_slots.size(1), D = q_slots.size(2);
  Tensor qmask = reshape(mul(present_q, present_k), {N});  // F32 0/1
  Tensor kmask = reshape(present_k, {N});
  Tensor q = l2_normalize(predictor.forward(reshape(q_slots, {N, D}), cast(qmask, DType::U8)), 1);
  Tensor k = l2_normalize(reshape(k_slots, {N, D}), 1);
  // absent keys get a logit far below every present one (exp underflows to exactly 0)
  Tensor key_bias = mul_scalar(add_scalar(kmask, -1.0), 1e4);  // 0 or -1e4, broadcast over rows
  Tensor logits = add(mul_scalar(matmul(q, transpose(k, 0, 1)), 1.0 / tau), key_bias);
  Tensor logp = log_softmax(logits, 1);
  std::vector<double> eye(static_cast<size_t>(N * N), 0.0);
  for (int64_t i = 0; i < N; ++i) eye[size_t(i * N + i)] = 1.0;
  Tensor own = sum(mul(logp, from_vector(eye, {N, N}, logp.dtype(), logp.device())), {1});  // (N)
  Tensor count = clamp_min(sum(qmask), 1.0);
  return mul_scalar(div(neg(sum(mul(own, qmask))), count), 2.0 * tau);
}

StepLoss SlotConModel::forward(const TwoViewBatch& batch, DType compute_dtype) {
  const TrainConfig& c = cfg_;
  const double w = c.group_loss_weight;
  Tensor xq[2], xk[2];
  for (int v = 0; v < 2; ++v) {
    Tensor in = cast(batch.crops[v], compute_dtype);
    xq[v] = cast(projector_q->forward(encoder_q->forward(in)), DType::F32);
  }
  {
    NoGradGuard ng;  // the teacher: train mode (batch statistics), no gradients
    for (int v = 0; v < 2; ++v) {
      Tensor in = cast(batch.crops[v], compute_dtype);
      xk[v] = cast(projector_k->forward(encoder_k->forward(in)), DType::F32);
    }
  }
  const int h = int(xq[0].size(2)), wd = int(xq[0].size(3));
  Tensor M[2];
  for (int v = 0; v < 2; ++v)
    M[v] = view_align_matrices(batch.coords[v], batch.flags[v], h, wd, DType::F32,
                               xq[0].device());
  Grouped gq[2], gk[2];
  Tensor ak[2], pk[2];
  for (int v = 0; v < 2; ++v) gq[v] = group(xq[v], grouping_q->slot_embed->weight, c.teacher_temp);
  {
    NoGradGuard ng;
    for (int v = 0; v < 2; ++v) {
      gk[v] = group(xk[v], grouping_k->slot_embed->weight, c.teacher_temp);
      ak[v] = align(gk[v].dots, M[v]);
      pk[v] = presence(gk[v].dots);
    }
  }
  Tensor aq[2] = {align(gq[0].dots, M[0]), align(gq[1].dots, M[1])};
  Tensor pq[2];
  {
    NoGradGuard ng;
    pq[0] = presence(gq[0].dots);
    pq[1] = presence(gq[1].dots);
  }
  Tensor group_loss = add(mul_scalar(self_distill(aq[0], ak[1], center, c.student_temp,
                                                  c.teacher_temp), w),
                          mul_scalar(self_distill(aq[1], ak[0], center, c.student_temp,
                                                  c.teacher_temp), w));
  {
    NoGradGuard ng;  // center <- m c + (1 - m) mean of the teacher's raw scores (both views)
    Tensor all = concat({reshape(gk[0].dots, {-1, c.num_prototypes}),
                         reshape(gk[1].dots, {-1, c.num_prototypes})}, 0);
    axpby_(center, c.center_momentum, mean(all, {0}, true), 1.0 - c.center_momentum);
  }
  Tensor contrast = add(
      mul_scalar(slot_contrast(*predictor_slot, gq[0].slots, gk[1].slots, pq[0], pk[1],
                               c.contrast_temp), 1.0 - w),
      mul_scalar(slot_contrast(*predictor_slot, gq[1].slots, gk[0].slots, pq[1], pk[0],
                               c.contrast_temp), 1.0 - w));
  StepLoss out;
  out.total = add(group_loss, contrast);
  out.group = group_loss.item();
  out.contrast = contrast.item();
  return out;
}

Tensor SlotConModel::assign_prototypes(const Tensor& images) {
  NoGradGuard ng;
  const bool was_training = encoder_k->is_training();
  encoder_k->eval();
  projector_k->eval();
  Tensor x = projector_k->forward(encoder_k->forward(images));  // (B, D, h, w)
  encoder_k->train(was_training);
  projector_k->train(was_training);
  const int64_t B = x.size(0), D = x.size(1), h = x.size(2), w = x.size(3);
  Tensor xp = l2_normalize(reshape(permute(x, {0, 2, 3, 1}), {B * h * w, D}), 1);
  Tensor p = l2_normalize(grouping_k->slot_embed->weight, 1);
  Tensor dots = matmul(xp, transpose(p, 0, 1));  // (B*h*w, K)
  return reshape(argmax(dots, 1), {B, h, w});
}

}  // namespace sc
