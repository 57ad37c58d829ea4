// train_step.cpp: the training step (see train_step.h).
#include "model/train_step.h"

#include <algorithm>
#include <cmath>

#include "engine/autograd.h"
#include "engine/cuda_runtime.h"
#include "engine/ops.h"

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
  o.bucket_bytes = std::max<int64_t>(1, int64_t(cfg.bucket_mb * double(1 << 20)));
  o.cuda_graph = device.is_cuda() && (cfg.cuda_graph == "on" ||
                                      (cfg.cuda_graph == "auto" &&
                                       cfg.warmup_teacher_temp_epochs == 0));
  return o;
}

TrainStep::TrainStep(SlotConModel& model, const TrainOptions& options, const TrainConfig& cfg,
                     Communicator* comm)
    : model_(model), options_(options), comm_(comm && comm->world() > 1 ? comm : nullptr) {
  // in place: the tensors keep their identity, so handles held elsewhere follow
  if (options_.precision == Precision::FP64) model_.to(DType::F64);
  params_ = model_.student_parameters();
  if (options_.channels_last) model_.set_channels_last(true);
  for (auto& kv : params_) tensors_.push_back(kv.second);
  if (options_.optimizer == OptimizerKind::LARS)
    lars_.emplace(tensors_, LARSOptions{0.0, cfg.momentum, cfg.weight_decay, 0.001});
  else
    sgd_.emplace(tensors_, SGDOptions{0.0, cfg.momentum, cfg.weight_decay});
  const Device device = tensors_.empty() ? Device::cpu() : tensors_[0].device();
  if (options_.precision == Precision::FP16) scaler_.emplace(GradScalerOptions{}, device);
  found_ = zeros({1}, DType::U8, device);
  model_.set_communicator(comm_);
  if (comm_) {
    std::vector<std::string> names;
    for (auto& kv : params_) names.push_back(kv.first);
    buckets_ = std::make_unique<GradientBuckets>(tensors_, names, *comm_, options_.bucket_bytes);
  }
  if (options_.cuda_graph) {
    if (comm_) {
      graph_note_ =
          "cuda_graph: not with several processes yet (the NCCL watchdog queries events "
          "the capture would record): the step runs without a graph";
      options_.cuda_graph = false;
    } else {
      // the learning rate and the teacher momentum from device memory, written before each step:
      // a graph's kernel arguments are fixed at capture
      scalars_ = zeros({2}, DType::F64, device);
      lars_ ? lars_->set_lr_source(slice(scalars_, 0, 0, 1))
            : sgd_->set_lr_source(slice(scalars_, 0, 0, 1));
      for (BatchNorm* bn : batch_norm_modules(model_))
        if (bn->num_batches_tracked.device().is_cpu())
          bn_counters_.push_back(bn->num_batches_tracked);
    }
  }
}

// The mean over ranks of the loss and its parts (the logged values; a non-finite part anywhere
// makes it non-finite everywhere, so that all ranks skip or stop together).
void TrainStep::average_loss(Tensor& parts) {
  comm_->all_reduce_sum(parts);
  mul_(parts, 1.0 / double(comm_->world()));
}

std::vector<Tensor>& TrainStep::optimizer_state() { return lars_ ? lars_->state() : sgd_->state(); }

namespace {
bool same_shapes(const TwoViewBatch& a, const TwoViewBatch& b) {
  for (int v = 0; v < 2; ++v)
    if (a.crops[v].shape() != b.crops[v].shape() || a.coords[v].shape() != b.coords[v].shape() ||
        a.flags[v].shape() != b.flags[v].shape() || a.crops[v].dtype() != b.crops[v].dtype())
      return false;
  return true;
}
}  // namespace

StepResult TrainStep::run(const TwoViewBatch& batch, double lr, double teacher_momentum) {
  if (!options_.cuda_graph) return run_step(batch, lr, teacher_momentum);
  {
    // this step's learning rate and teacher momentum, where the kernels read them (a 16-byte
    // host-to-device copy queued before the step's work, outside any graph)
    NoGradGuard ng;
    copy_(scalars_, from_vector({lr, teacher_momentum}, {2}, DType::F64));
  }
  // Eager steps first (cuDNN's algorithm searches, the optimizer's buffers, the allocator's
  // cache: what a capture must not do), and whenever the batch does not fit the captured one.
  if (eager_steps_ < kGraphWarmupSteps || (graph_ && !same_shapes(batch, static_batch_))) {
    ++eager_steps_;
    return run_step(batch, lr, teacher_momentum);
  }
  if (!graph_) {
    // the inputs the graph reads: tensors of its own, into which each step's batch is copied
    for (int v = 0; v < 2; ++v) {
      NoGradGuard ng;
      static_batch_.crops[v] = batch.crops[v].clone();
      static_batch_.coords[v] = batch.coords[v].clone();
      static_batch_.flags[v] = batch.flags[v].clone();
    }
    std::vector<int64_t> before;
    for (Tensor& c : bn_counters_) before.push_back(c.data<int64_t>()[0]);
    graph_ = std::make_unique<StepGraph>(scalars_.device());
    StepResult captured;
    const bool ok =
        graph_->capture([&] { captured = run_step(static_batch_, lr, teacher_momentum); });
    if (!ok) {
      // nothing captured ran: undo the capture's host-side counts and run the step plainly
      for (size_t i = 0; i < bn_counters_.size(); ++i)
        bn_counters_[i].data<int64_t>()[0] = before[i];
      graph_note_ = "cuda_graph: the step could not be captured (" + graph_->why() +
                    "): it runs without a graph";
      graph_.reset();
      options_.cuda_graph = false;
      // plain steps from now on take the learning rate and teacher momentum from the host again
      // (run() no longer writes the device buffer the kernels would otherwise read, stale)
      lars_ ? lars_->set_lr_source(Tensor()) : sgd_->set_lr_source(Tensor());
      scalars_ = Tensor();
      return run_step(batch, lr, teacher_momentum);
    }
    // what each replay adds to the host-side BatchNorm counters (the capture added it once, for
    // the replay below)
    bn_deltas_.clear();
    for (size_t i = 0; i < bn_counters_.size(); ++i)
      bn_deltas_.push_back(bn_counters_[i].data<int64_t>()[0] - before[i]);
    graph_record_ = captured.record;
    graph_note_ = "cuda_graph: the step was captured as a CUDA graph and is replayed from now on";
  } else {
    NoGradGuard ng;
    for (int v = 0; v < 2; ++v) {
      copy_(static_batch_.crops[v], batch.crops[v]);
      copy_(static_batch_.coords[v], batch.coords[v]);
      copy_(static_batch_.flags[v], batch.flags[v]);
    }
    for (size_t i = 0; i < bn_counters_.size(); ++i)
      bn_counters_[i].data<int64_t>()[0] += bn_deltas_[i];
  }
  graph_->replay();
  // the outputs: copied out before the next replay overwrites them
  NoGradGuard ng;
  StepResult r;
  r.record = graph_record_.clone();
  r.loss.parts = slice(r.record, 0, 0, 3);
  return r;
}

StepResult TrainStep::run_step(const TwoViewBatch& batch, double lr, double teacher_momentum) {
  // tf32: the head's F32 products on the tensor cores (the slot predictor's GEMMs, forward and
  // backward), as the fused head kernels' own option
  MatmulTF32Scope tf32(options_.tf32);
  // The phases of the device trace (engine/cuda_runtime.h DevicePhase); the forward names its own.
  {
    DevicePhase phase("EMA");
    lars_ ? lars_->set_lr(lr) : sgd_->set_lr(lr);
    model_.momentum_update(teacher_momentum,
                           scalars_.defined() ? slice(scalars_, 0, 1, 2) : Tensor());
  }
  StepResult r;
  r.loss = model_.forward(batch, options_.compute_dtype(), options_.tf32);
  DevicePhase backward_phase("backward");
  if (comm_) average_loss(r.loss.parts);
  nonfinite_flag(r.loss.parts, found_);  // starts the step's flag
  lars_ ? lars_->zero_grad() : sgd_->zero_grad();
  {
    // data-parallel: each bucket's all-reduce starts as soon as backward has finished its
    // gradients (the hook), the rest and the wait come after backward
    std::optional<GradReadyScope> hook;
    if (buckets_) hook.emplace(buckets_->hook());
    (scaler_ ? scaler_->scale(r.loss.total) : r.loss.total).backward();
  }
  if (buckets_) buckets_->finish();
  DevicePhase optimizer_phase("optimizer");
  if (scaler_) {
    scaler_->unscale_(tensors_, found_);  // an Inf or NaN gradient sets it too
  }
  lars_ ? lars_->step(found_) : sgd_->step(found_);  // changes nothing when the flag is set
  if (scaler_) scaler_->update(found_);             // backoff when set
  {
    NoGradGuard ng;
    r.record = concat({r.loss.parts, cast(found_, DType::F64)}, 0);
  }
  return r;
}

namespace {
void fill_from(StepResult& r, const double* v) {
  r.loss.value = v[0];
  r.loss.group = v[1];
  r.loss.contrast = v[2];
  r.finite = std::isfinite(v[0]) && std::isfinite(v[1]) && std::isfinite(v[2]);
  r.applied = v[3] == 0.0;
}
}  // namespace

StepResult& StepResult::read() {
  const std::vector<double> v = record.to(Device::cpu()).to_vector();
  fill_from(*this, v.data());
  return *this;
}

void read_step_results(std::vector<StepResult>& results) {
  if (results.empty()) return;
  std::vector<Tensor> records;
  for (const StepResult& r : results) records.push_back(r.record);
  const std::vector<double> v =
      (records.size() == 1 ? records[0] : concat(records, 0)).to(Device::cpu()).to_vector();
  for (size_t i = 0; i < results.size(); ++i) fill_from(results[i], v.data() + 4 * i);
}

}  // namespace sc
