#include "model/slotcon.h"

#include <unordered_map>

#include "engine/autograd.h"
#include "engine/cuda_runtime.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "model/resnet_layers.h"
#include "model/slotcon_loss.h"

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
  for (const auto& kv : encoder_q->named_parameters("encoder_q")) out.push_back(kv);
  for (const auto& kv : projector_q->named_parameters("projector_q")) out.push_back(kv);
  for (const auto& kv : grouping_q->named_parameters("grouping_q")) out.push_back(kv);
  for (const auto& kv : predictor_slot->named_parameters("predictor_slot")) out.push_back(kv);
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

void SlotConModel::momentum_update(double m, const Tensor& m_src) {
  std::vector<Tensor> ks, qs;
  for (auto& [k, q] : ema_pairs()) {
    ks.push_back(k);
    qs.push_back(q);
  }
  ema_update(ks, qs, m, m_src);  // all pairs in a few launches
}

void SlotConModel::sync_teacher() {
  NoGradGuard ng;
  for (auto& [k, q] : ema_pairs()) copy_(k, q);
  // BN running statistics start equal too (both are fresh: 0 / 1).
}

void SlotConModel::set_channels_last(bool on) {
  if (on == channels_last_) return;
  SC_CHECK(on, "set_channels_last(false) after true is not supported; build a fresh model");
  for (Module* m : {static_cast<Module*>(encoder_q.get()), static_cast<Module*>(encoder_k.get()),
                    static_cast<Module*>(projector_q.get()),
                    static_cast<Module*>(projector_k.get())})
    convert_conv_weights_channels_last(*m);
  channels_last_ = true;
}

void SlotConModel::set_communicator(Communicator* comm) {
  comm_ = comm && comm->world() > 1 ? comm : nullptr;
  std::function<void(Tensor&)> reduce;
  if (comm_) reduce = [c = comm_](Tensor& t) { c->all_reduce_sum(t); };
  for (BatchNorm* bn : batch_norm_modules(*this)) {
    bn->reduce_stats = reduce;
    bn->reduce_grad_sums = reduce;
  }
}

namespace {
Tensor backbone_input(const Tensor& crops, DType compute, bool channels_last) {
  Tensor in = cast(crops, compute);
  return channels_last ? in.contiguous(MemoryFormat::ChannelsLast) : in;
}
}  // namespace

StepLoss SlotConModel::forward(const TwoViewBatch& batch, DType compute_dtype, bool tf32) {
  // the head in F32, or F64 in the all-double reference step
  const DType head_dtype = compute_dtype == DType::F64 ? DType::F64 : DType::F32;
  SlotConViews views;
  WeightCastScope casts;  // bf16 / fp16: each weight cast once for both views
  // The phases of the device trace (engine/cuda_runtime.h DevicePhase; engine/cost_model.h).
  for (int v = 0; v < 2; ++v) {
    Tensor in;
    {
      DevicePhase phase("data");
      in = backbone_input(batch.crops[v], compute_dtype, channels_last_);
    }
    DevicePhase phase("student forward");
    // the head's dtype whatever the backbone's activation dtype
    views.x[v] = cast(projector_q->forward(encoder_q->forward(in)), head_dtype);
    views.boxes[v] = batch.coords[v];
    views.flips[v] = batch.flags[v];
  }
  {
    NoGradGuard ng;  // the teacher: train mode (batch statistics), no gradients
    for (int v = 0; v < 2; ++v) {
      Tensor in;
      {
        DevicePhase phase("data");
        in = backbone_input(batch.crops[v], compute_dtype, channels_last_);
      }
      DevicePhase phase("teacher forward");
      views.y[v] = cast(projector_k->forward(encoder_k->forward(in)), head_dtype);
    }
  }
  DevicePhase phase("head");
  SlotConLossConfig lc;
  lc.teacher_temp = cfg_.teacher_temp;
  lc.distill_teacher_temp = distill_teacher_temp_;
  lc.student_temp = cfg_.student_temp;
  lc.contrast_temp = cfg_.contrast_temp;
  lc.group_loss_weight = cfg_.group_loss_weight;
  lc.center_momentum = cfg_.center_momentum;
  lc.fused = fused_;
  lc.compact_predictor = compact_predictor_;
  lc.tf32 = tf32;
  SlotPredictor& pred = *predictor_slot;
  SlotConDistributed dist;
  if (comm_) {
    dist.rank = comm_->rank();
    dist.world = comm_->world();
    dist.all_gather_rows = [c = comm_](const Tensor& t) { return c->all_gather_rows(t); };
    dist.all_reduce_sum = [c = comm_](Tensor& t) { c->all_reduce_sum(t); };
  }
  SlotConLossParts parts = slotcon_loss(
      views, grouping_q->slot_embed->weight, grouping_k->slot_embed->weight, center,
      [&pred](const Tensor& slots, const Tensor& mask) { return pred.forward(slots, mask); }, lc,
      dist);
  StepLoss out;
  out.total = parts.loss;
  {
    NoGradGuard ng;  // kept on the device: reading it here would stall the step
    out.parts = concat({reshape(cast(parts.loss.detach(), DType::F64), {1}),
                        reshape(cast(parts.group_loss.detach(), DType::F64), {1}),
                        reshape(cast(parts.contrast_loss.detach(), DType::F64), {1})},
                       0);
  }
  return out;
}

StepLoss& StepLoss::read() {
  const std::vector<double> v = parts.to(Device::cpu()).to_vector();
  value = v[0];
  group = v[1];
  contrast = v[2];
  return *this;
}

Tensor SlotConModel::teacher_maps(const Tensor& images, Tensor* backbone) {
  NoGradGuard ng;
  const bool was_training = encoder_k->is_training();
  encoder_k->eval();
  projector_k->eval();
  // in the parameters' dtype (F32, or F64 after an fp64 step)
  const DType param_dtype = grouping_k->slot_embed->weight.dtype();
  Tensor f = encoder_k->forward(backbone_input(images, param_dtype, channels_last_));
  Tensor x = projector_k->forward(f);  // (B, D, h, w)
  encoder_k->train(was_training);
  projector_k->train(was_training);
  if (backbone) *backbone = f;
  return x;
}

Tensor SlotConModel::assign_prototypes(const Tensor& images) {
  return prototypes_of_map(teacher_maps(images));
}

Tensor SlotConModel::prototypes_of_map(const Tensor& x) {
  NoGradGuard ng;
  const int64_t B = x.size(0), D = x.size(1), h = x.size(2), w = x.size(3);
  Tensor xp = l2_normalize(reshape(permute(x, {0, 2, 3, 1}), {B * h * w, D}), 1);
  Tensor p = l2_normalize(grouping_k->slot_embed->weight, 1);
  Tensor dots = matmul(xp, transpose(p, 0, 1));  // (B*h*w, K)
  return reshape(argmax(dots, 1), {B, h, w});
}

}  // namespace sc
