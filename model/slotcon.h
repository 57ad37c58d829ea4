// slotcon.h: the SlotCon networks (docs/method.md §1) and one training step's loss (§2–§6).
//
// Module tree and names (= the reference module's state_dict(), §10):
//   encoder_q, encoder_k         ResNet backbones (student, teacher)
//   projector_q, projector_k     per-pixel projectors (mlp.0/1/3/4/6)
//   grouping_q, grouping_k       prototypes: slot_embed.weight (K, D), init N(0, 1)
//   predictor_slot               slot predictor (student only)
//   center                       (1, K) running center of the teacher's scores
// The teacher starts as a copy of the student and is only ever changed by momentum_update (and
// its BatchNorm running statistics, which it updates in train mode like the authors' code).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "engine/comm.h"
#include "engine/module.h"
#include "model/heads.h"
#include "model/resnet.h"
#include "model/train_config.h"

namespace sc {

// (K, D) prototypes as a module so that the name is "<parent>.slot_embed.weight".
class Prototypes : public Module {
 public:
  Prototypes(int64_t K, int64_t D, Generator& gen, Device device);
  Tensor weight;
};
class Grouping : public Module {
 public:
  Grouping(int64_t K, int64_t D, Generator& gen, Device device);
  std::shared_ptr<Prototypes> slot_embed;
};

// One batch of two views (docs/method.md §3, §7): crops (B, 3, S, S) float, coords (B, 4) F32
// (x1, y1, x2, y2 of the overlap in the view's normalised coordinates), flags (B) U8 (flipped).
struct TwoViewBatch {
  Tensor crops[2];
  Tensor coords[2];
  Tensor flags[2];
};

struct StepLoss {
  Tensor total;  // scalar, differentiable
  Tensor parts;  // F64 (3) on the device: total, group loss, contrast loss (detached)
  // The parts' values, for logging and the non-finite check: filled by read() (one host
  // synchronisation on a device), 0 before; a step does not read them itself.
  double value = 0;
  double group = 0;
  double contrast = 0;
  StepLoss& read();
};

class SlotConModel : public Module {
 public:
  SlotConModel(const TrainConfig& cfg, Device device, uint64_t seed);

  // Parameters the optimizer updates (student: encoder_q, projector_q, grouping_q,
  // predictor_slot), with their state-dict names.
  NamedTensors student_parameters() const;
  // θ_k ← m θ_k + (1 − m) θ_q for backbone, projector and prototypes (not BN statistics).
  // m_src: m from device memory instead (engine/optim.h ema_update).
  void momentum_update(double m, const Tensor& m_src = Tensor());
  // Copy the student's parameters into the teacher (at initialisation).
  void sync_teacher();

  // The loss of one step (§2–§5, model/slotcon_loss.h), teacher in train mode, and the center
  // update (§4) as a side effect. compute_dtype: the backbone's activation dtype (F32 on the CPU;
  // BF16 / F16 on the GPU for mixed precision, parameters stay F32); the head runs in F32.
  // tf32: the head kernels' products on TF32 tensor cores (ignored on the CPU and in double).
  // compute_dtype F64 is the all-double reference step (parameters converted to F64): the head
  // runs in F64 too. The whole step around it: model/train_step.h.
  StepLoss forward(const TwoViewBatch& batch, DType compute_dtype = DType::F32, bool tf32 = false);

  // Arg-max prototype of every pixel of the teacher's projected map: (B, h, w) I64, for
  // grouping scores. Runs the teacher in eval mode (running statistics), no grad.
  Tensor assign_prototypes(const Tensor& images);
  // The teacher's maps of `images` (B, 3, H, W), in eval mode (running statistics), no grad, in
  // the parameters' dtype: the projected map (B, D, h, w) is returned, and the backbone's map
  // (B, C, h, w) (C = 512 for ResNet-18) is stored into *backbone when it is given.
  Tensor teacher_maps(const Tensor& images, Tensor* backbone = nullptr);
  // The arg-max prototype of every cell of a projected map (B, D, h, w) that teacher_maps
  // returned: (B, h, w) I64, what assign_prototypes gives for the same images.
  Tensor prototypes_of_map(const Tensor& projected);

  // Data-parallel training over comm's ranks (null or world 1: one process). Every BatchNorm of
  // the model (student, teacher, slot predictor) is synchronised: its batch statistics [sum x,
  // sum x^2, count] and, in backward, its gradient sums are all-reduced (one collective each per
  // call; the predictor's masked rows may differ in number per rank). The loss gathers the keys
  // and presence masks of every rank in rank order and all-reduces the center's batch mean
  // (model/slotcon_loss.h). The caller keeps comm alive; gradient averaging is TrainStep's.
  void set_communicator(Communicator* comm);
  Communicator* communicator() const { return comm_; }

  const TrainConfig& config() const { return cfg_; }
  // Fused head kernels (default) or the plain-op composition (the reference).
  void set_fused(bool on) { fused_ = on; }
  // The slot predictor on the compacted present rows (default) or on all B*K rows, masked
  // (SlotConLossConfig::compact_predictor); for the benchmark's before / after.
  void set_compact_predictor(bool on) { compact_predictor_ = on; }
  // The teacher's temperature in the group loss for the next steps (the warm-up of
  // TrainConfig::warmup_teacher_temp); 0: teacher_temp.
  void set_distill_teacher_temp(double t) { distill_teacher_temp_ = t; }
  // Channels-last (NHWC) backbone and projector: every conv weight is converted in place (names,
  // values and autograd identity kept) and the crops enter as NHWC, so cuDNN runs its NHWC
  // tensor-core kernels without layout conversions (what PyTorch's channels_last does). The
  // values computed are the same as NCHW up to rounding. Call before creating the optimizer's
  // state or after loading a state: both layouts load and save the same row-major values.
  void set_channels_last(bool on);
  bool channels_last() const { return channels_last_; }

  std::shared_ptr<ResNet> encoder_q, encoder_k;
  std::shared_ptr<Projector> projector_q, projector_k;
  std::shared_ptr<Grouping> grouping_q, grouping_k;
  std::shared_ptr<SlotPredictor> predictor_slot;
  Tensor center;

 private:
  // Pairs (teacher tensor, student tensor) updated by momentum_update.
  std::vector<std::pair<Tensor, Tensor>> ema_pairs() const;
  TrainConfig cfg_;
  bool fused_ = true;
  bool compact_predictor_ = true;
  double distill_teacher_temp_ = 0;
  bool channels_last_ = false;
  Communicator* comm_ = nullptr;
};

int resnet_depth(const std::string& arch);

}  // namespace sc
