// train_step.cpp: the training step (see train_step.h).
#include "model/train_step.h"

#include <cmath>

#include "engine/autograd.h"

namespace sc {

DType TrainOptions::compute_dtype() const {
  switch (precision) {
    case Precision::BF16: return DType::BF16;
    case Precision::FP16: return DType::F16;
    case Precision::FP64: return DType::F64;
    case Precision::FP32: break;
  }
  return DType::F32;
}

const char* TrainOptions::precision_name() const {
  switch (precision) {
    case Precision::BF16: return "bf16";
    case Precision::FP16: return "fp16";
    case Precision::FP64: return "fp64";
    case Precision::FP32: break;
  }
  return "fp32";
}

TrainOptions resolve_train_options(const TrainConfig& cfg, Device device) {
  TrainOptions o;
  const std::string precision =
      cfg.precision == "auto" ? (device.is_cuda() ? "bf16" : "fp32") : cfg.precision;
  SC_CHECK(device.is_cuda() || precision == "fp32" || precision == "fp64", "precision '",
           precision, "' needs a GPU; the CPU trains in fp32 (or fp64)");
  o.precision = precision == "bf16"   ? Precision::BF16
                : precision == "fp16" ? Precision::FP16
                : precision == "fp64" ? Precision::FP64
                                      : Precision::FP32;
  o.tf32 = cfg.tf32 == "on" || (cfg.tf32 == "auto" && (o.precision == Precision::BF16 ||
                                                        o.precision == Precision::FP16));
  o.channels_last = cfg.channels_last == "on" || (cfg.channels_last == "auto" && device.is_cuda());
  o.optimizer = cfg.optimizer == "sgd" ? OptimizerKind::SGD : OptimizerKind::LARS;
  o.nonfinite = cfg.nonfinite == "skip" ? NonFinitePolicy::Skip : NonFinitePolicy::Stop;
  return o;
}

TrainStep::TrainStep(SlotConModel& model, const TrainOptions& options, const TrainConfig& cfg)
    : model_(model), options_(options) {
  // in place: the tensors keep their identity, so handles held elsewhere follow
  if (options_.precision == Precision::FP64) model_.to(DType::F64);
  params_ = model_.student_parameters();
  if (options_.channels_last) model_.set_channels_last(true);
  for (auto& kv : params_) tensors_.push_back(kv.second);
  if (options_.optimizer == OptimizerKind::LARS)
    lars_.emplace(tensors_, LARSOptions{0.0, cfg.momentum, cfg.weight_decay, 0.001});
  else
    sgd_.emplace(tensors_, SGDOptions{0.0, cfg.momentum, cfg.weight_decay});
  if (options_.precision == Precision::FP16) scaler_.emplace();
}

std::vector<Tensor>& TrainStep::optimizer_state() { return lars_ ? lars_->state() : sgd_->state(); }

StepResult TrainStep::run(const TwoViewBatch& batch, double lr, double teacher_momentum) {
  lars_ ? lars_->set_lr(lr) : sgd_->set_lr(lr);
  model_.momentum_update(teacher_momentum);
  StepResult r;
  r.loss = model_.forward(batch, options_.compute_dtype(), options_.tf32, options_.head_dtype());
  r.finite =
      std::isfinite(r.loss.value) && std::isfinite(r.loss.group) && std::isfinite(r.loss.contrast);
  if (!r.finite) {
    r.applied = false;
    return r;
  }
  lars_ ? lars_->zero_grad() : sgd_->zero_grad();
  if (scaler_) {
    scaler_->scale(r.loss.total).backward();
    r.applied = scaler_->unscale_(tensors_);
    if (r.applied) lars_ ? lars_->step() : sgd_->step();  // an overflowed step changes nothing
    scaler_->update(r.applied);                           // but the scale
  } else {
    r.loss.total.backward();
    lars_ ? lars_->step() : sgd_->step();
  }
  return r;
}

}  // namespace sc
