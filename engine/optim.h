// optim.h: optimizers over a list of parameters (leaf tensors whose .grad() backward filled).
//
// SGD:  v <- momentum * v + (g + wd * p);  p <- p - lr * v
// LARS (SlotCon's, after the authors' code): for tensors with more than one dimension,
//   g' = g + wd * p and g' *= trust * ||p|| / ||g'|| (when both norms are > 0);
//   1-D tensors (biases, BN affine) get neither weight decay nor the trust ratio;
//   v <- momentum * v + g';  p <- p - lr * v.
// Parameters without a gradient are skipped. The learning rate is set per step by the caller.
//
// Each step is a multi-tensor update (kernels/multi_tensor.h): all the parameters in a few
// launches on a GPU (LARS: two per 32 tensors, SGD: one), the trust ratios' norms summed on the
// device, nothing read back. step(skip): when `skip` (a U8 tensor of one element on the
// parameters' device) is non-zero when the update runs, nothing changes: the step's
// non-finite / overflow decision is taken on the device, not by the host. Parameters, gradients
// and momentum share one dtype (F32 or F64) and device; a gradient in another layout than its
// parameter is copied into the parameter's layout first.
#pragma once
#include <vector>

#include "engine/module.h"

namespace sc {

struct SGDOptions {
  double lr = 0.1;
  double momentum = 0.9;
  double weight_decay = 0.0;
};

class SGD {
 public:
  SGD(std::vector<Tensor> params, SGDOptions opt);
  void step(const Tensor& skip = Tensor());
  void zero_grad();
  void set_lr(double lr) { opt_.lr = lr; }
  double lr() const { return opt_.lr; }
  // The learning rate read from device memory where the update runs instead of set_lr's value:
  // a one-element F64 tensor on the parameters' device (a CUDA graph that replays the step reads
  // the value written before each replay); an undefined tensor goes back to set_lr's.
  void set_lr_source(Tensor lr) { lr_src_ = std::move(lr); }
  // Momentum buffers (one per parameter, created on the first step), for checkpoints.
  std::vector<Tensor>& state() { return momentum_; }

 private:
  std::vector<Tensor> params_;
  std::vector<Tensor> momentum_;
  SGDOptions opt_;
  Tensor lr_src_;
};

struct LARSOptions {
  double lr = 0.1;
  double momentum = 0.9;
  double weight_decay = 1e-5;
  double trust_coefficient = 0.001;
};

class LARS {
 public:
  LARS(std::vector<Tensor> params, LARSOptions opt);
  void step(const Tensor& skip = Tensor());
  void zero_grad();
  void set_lr(double lr) { opt_.lr = lr; }
  double lr() const { return opt_.lr; }
  void set_lr_source(Tensor lr) { lr_src_ = std::move(lr); }  // as SGD's
  std::vector<Tensor>& state() { return momentum_; }

 private:
  std::vector<Tensor> params_;
  std::vector<Tensor> momentum_;
  LARSOptions opt_;
  Tensor lr_src_;
};

// targets[i] = m * targets[i] + (1 - m) * sources[i] for every pair (the teacher's EMA), in a
// few launches; pairs of one dtype and device, equal shapes and layouts. m_src: when defined, m
// is read from it where the update runs (as set_lr_source).
void ema_update(const std::vector<Tensor>& targets, const std::vector<Tensor>& sources, double m,
                const Tensor& m_src = Tensor());

// found (U8, one element) = 1 when any element of x (F64, dense) is not finite, else 0; on x's
// device, without a read-back.
void nonfinite_flag(const Tensor& x, const Tensor& found);

// Dynamic loss scaling for fp16 training (the semantics of torch.cuda.amp.GradScaler, which the
// authors train with): backward runs on loss * scale so that small fp16 gradients do not flush
// to zero; before the optimizer step the gradients are divided by the scale and checked; a step
// whose gradients hold an Inf or NaN is skipped and the scale multiplied by backoff_factor; after
// growth_interval good steps in a row the scale is multiplied by growth_factor. The scale and the
// counter live on the device (state(): F64 {scale, counter}) and change there, as PyTorch's
// GradScaler's do: a step reads nothing back; current_scale() and growth_tracker() do.
struct GradScalerOptions {
  double init_scale = 65536.0;
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;
};

class GradScaler {
 public:
  explicit GradScaler(GradScalerOptions opt = {}, Device device = Device::cpu());
  // loss * scale, differentiable.
  Tensor scale(const Tensor& loss) const;
  // Divides every defined gradient of `params` by the scale in place and sets found (U8, one
  // element, on the device) to 1 when one of them holds an Inf or a NaN; leaves it alone
  // otherwise (it ORs into the step's flag).
  void unscale_(const std::vector<Tensor>& params, const Tensor& found) const;
  // The same, answering whether all of them are finite (a read-back: for tests and tools).
  bool unscale_(const std::vector<Tensor>& params) const;
  // After a step, on the device: backoff when found is set, growth after growth_interval good
  // steps.
  void update(const Tensor& found);
  void update(bool grads_finite);  // the same from a host answer
  double current_scale() const;    // read back
  int64_t growth_tracker() const;  // read back
  const Tensor& state() const { return state_; }
  // For checkpoints: a resumed run continues with the same scale and counter.
  void load_state(double scale, int64_t growth_tracker);

 private:
  GradScalerOptions opt_;
  Tensor state_;  // F64 {scale, growth tracker} on the device
};

}  // namespace sc
