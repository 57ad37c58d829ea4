// train_step.h: one SlotCon training step, the only one: `slotcon train`, bench_train_step and the
// GPU step test all run it.
//
// TrainOptions: the string settings of a TrainConfig (precision, tf32, channels_last, optimizer,
// nonfinite) resolved once, for one device, into typed values; nothing below reads the strings.
//
// TrainStep::run(batch, lr, m), in this order:
//   1. the optimizer's learning rate is set to lr;
//   2. teacher EMA: θ_k ← m θ_k + (1 − m) θ_q (SlotConModel::momentum_update, one multi-tensor
//      update);
//   3. both forwards and the loss (SlotConModel::forward: student and teacher on both views, the
//      teacher in train mode without gradients, the head in F32), which also updates the center;
//   4. the step's flag, on the device: set when the loss or one of its parts is not finite;
//   5. zero_grad, backward (of loss × scale with fp16 loss scaling), unscale (fp16: an Inf or NaN
//      gradient sets the flag too, as GradScaler's found_inf), the optimizer step (LARS or SGD),
//      which changes nothing when the flag is set, the scaler's update (backoff when set).
// Nothing is read back: the host never waits for the device inside a step. The result holds the
// loss parts and the flag on the device (StepResult::record); read() or read_step_results()
// fetch them when they are wanted (slotcon train: at print_freq and before a checkpoint). A
// non-finite step therefore runs its backward (on NaNs) but changes no parameter and no optimizer
// state; only the center and the BatchNorm running statistics, updated during the forward, move
// (as before, and as in the authors' code, which does not check at all).
//
// Data-parallel (a communicator of world W > 1, engine/comm.h): the model's BatchNorms and loss
// are synchronised (SlotConModel::set_communicator); the loss and its parts are averaged over the
// ranks in step 3 (one all-reduce of three doubles), so that every rank sees the same values and
// takes the same branch in step 4; in step 5 the gradients are averaged over the ranks before
// unscale and the optimizer, so that every rank applies the same update and the replicas stay
// equal: in buckets of bucket_mb whose all-reduces start during backward, as soon as their
// gradients are final (engine/grad_buckets.h; what PyTorch's DistributedDataParallel does). The
// learning rate is the caller's (from the global batch).
//
// CUDA graph (TrainOptions::cuda_graph, config `cuda_graph: on`; one process on a GPU): the first
// kGraphWarmupSteps steps run plainly (cuDNN's algorithm searches, the optimizer's buffers and the
// allocator's cache are made there, which a capture must not do); the next one is captured once
// (engine/step_graph.h) with its inputs in tensors of its own, then every step is a replay: the
// batch copied into those inputs, the learning rate and teacher momentum written to a device
// buffer the optimizer and EMA kernels read (set_lr_source: a graph's kernel arguments are fixed
// at capture), the host-side BatchNorm counters advanced by what the captured step added, and the
// record copied out after the replay (StepResult::loss.total is then undefined: the step's
// autograd graph lives in the CUDA graph). A batch of another shape runs plainly. Where the
// capture fails, graph_note() says why and every step runs plainly; nothing else changes: the
// replayed steps equal the plain ones bit for bit (tests/gpu/test_train_step.cpp).
#pragma once
#include <memory>
#include <optional>
#include <vector>

#include "engine/grad_buckets.h"
#include "engine/optim.h"
#include "engine/step_graph.h"
#include "model/slotcon.h"
#include "model/train_config.h"

namespace sc {

enum class Precision : uint8_t { FP32, BF16, FP16, FP64 };
enum class OptimizerKind : uint8_t { LARS, SGD };
enum class NonFinitePolicy : uint8_t { Stop, Skip };

struct TrainOptions {
  // Backbone activations: F32, or BF16 / F16 with F32 master weights (GPU only); the head is F32.
  // FP64: everything in double (parameters, activations, head, optimizer state), the reference
  // against which the float32 step is measured (tests/apps/test_train.cpp); slow, not for training.
  Precision precision = Precision::FP32;
  bool tf32 = false;           // the head kernels' products on TF32 tensor cores (F32 GPU only)
  bool channels_last = false;  // NHWC backbone and projector
  OptimizerKind optimizer = OptimizerKind::LARS;
  NonFinitePolicy nonfinite = NonFinitePolicy::Stop;
  int64_t bucket_bytes = int64_t(25) << 20;  // data-parallel gradient buckets (cfg.bucket_mb)
  bool cuda_graph = false;  // cfg.cuda_graph on, or auto without a teacher-temperature warm-up,
                            // on a CUDA device

  DType compute_dtype() const;
  const char* precision_name() const;  // "fp32", "bf16", "fp16", "fp64"
};

// The `auto` rules: precision bf16 on CUDA, fp32 on the CPU; channels_last on for CUDA; tf32 on
// when the precision is not fp32 or fp64; cuda_graph on for CUDA unless a teacher-temperature
// warm-up changes the step (TrainStep turns it off for several processes, and falls back to the
// plain step when the capture fails, saying why). A reduced precision on the CPU is an sc::Error.
TrainOptions resolve_train_options(const TrainConfig& cfg, Device device);

struct StepResult {
  StepLoss loss;
  Tensor record;  // F64 (4) on the device: total, group, contrast, skipped (1: no update)
  // After read():
  bool finite = true;   // false: the loss or a part is not finite; the update changed nothing
  bool applied = true;  // the optimizer step changed the parameters (false when not finite or
                        // fp16 overflowed)
  StepResult& read();   // one host synchronisation on a device
};
// Reads the records of several steps with one copy (one host synchronisation on a device).
void read_step_results(std::vector<StepResult>& results);

class TrainStep {
 public:
  // Over `model` (kept by reference): conversion to F64 in fp64 mode, NHWC when asked, the
  // optimizer over the
  // student's parameters (momentum and weight decay from cfg, lr set by each run), fp16's
  // GradScaler (GradScaler's defaults).
  // comm: null or world 1 for one process; otherwise kept by pointer for the step's life.
  TrainStep(SlotConModel& model, const TrainOptions& options, const TrainConfig& cfg,
            Communicator* comm = nullptr);

  StepResult run(const TwoViewBatch& batch, double lr, double teacher_momentum);

  SlotConModel& model() { return model_; }
  const TrainOptions& options() const { return options_; }
  // The student's parameters with their state-dict names, in the optimizer's order.
  const NamedTensors& parameters() const { return params_; }
  // The optimizer's momentum buffers (one per parameter, undefined before the first step).
  std::vector<Tensor>& optimizer_state();
  // fp16 only (null otherwise).
  GradScaler* scaler() { return scaler_ ? &*scaler_ : nullptr; }
  // The communicator (null on one process).
  Communicator* communicator() const { return comm_; }
  // The gradient buckets (null on one process).
  const GradientBuckets* gradient_buckets() const { return buckets_.get(); }
  // cuda_graph: what became of it (empty until there is something to say: the capture, or why
  // the step runs without a graph); the graph (null when none).
  const std::string& graph_note() const { return graph_note_; }
  const StepGraph* graph() const { return graph_.get(); }
  static constexpr int64_t kGraphWarmupSteps = 2;

 private:
  SlotConModel& model_;
  TrainOptions options_;
  NamedTensors params_;
  std::vector<Tensor> tensors_;
  std::optional<LARS> lars_;
  std::optional<SGD> sgd_;
  std::optional<GradScaler> scaler_;
  Communicator* comm_ = nullptr;
  std::unique_ptr<GradientBuckets> buckets_;

  Tensor found_;  // U8 (1) on the device: the step's skip flag (non-finite loss or overflow)

  // cuda_graph
  Tensor scalars_;                   // F64 (2) on the device: lr, teacher momentum
  std::vector<Tensor> bn_counters_;  // the host-side BatchNorm counters
  std::vector<int64_t> bn_deltas_;   // what one step adds to each
  std::unique_ptr<StepGraph> graph_;
  TwoViewBatch static_batch_;  // the graph's inputs
  Tensor graph_record_;        // the graph's output record
  int64_t eager_steps_ = 0;
  std::string graph_note_;

  StepResult run_step(const TwoViewBatch& batch, double lr, double teacher_momentum);
  void average_loss(Tensor& parts);
};

}  // namespace sc
