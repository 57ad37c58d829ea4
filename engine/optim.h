// optim.h: optimizers over a list of parameters (leaf tensors whose .grad() backward filled).
//
// SGD:  v <- momentum * v + (g + wd * p);  p <- p - lr * v
// LARS (SlotCon's, after the authors' code): for tensors with more than one dimension,
//   g' = g + wd * p and g' *= trust * ||p|| / ||g'|| (when both norms are > 0);
//   1-D tensors (biases, BN affine) get neither weight decay nor the trust ratio;
//   v <- momentum * v + g';  p <- p - lr * v.
// Parameters without a gradient are skipped. The learning rate is set per step by the caller.
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
  void step();
  void zero_grad();
  void set_lr(double lr) { opt_.lr = lr; }
  double lr() const { return opt_.lr; }
  // Momentum buffers (one per parameter, created on the first step), for checkpoints.
  std::vector<Tensor>& state() { return momentum_; }

 private:
  std::vector<Tensor> params_;
  std::vector<Tensor> momentum_;
  SGDOptions opt_;
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
  void step();
  void zero_grad();
  void set_lr(double lr) { opt_.lr = lr; }
  double lr() const { return opt_.lr; }
  std::vector<Tensor>& state() { return momentum_; }

 private:
  std::vector<Tensor> params_;
  std::vector<Tensor> momentum_;
  LARSOptions opt_;
};


// Dynamic loss scaling for fp16 training (the semantics of torch.cuda.amp.GradScaler, which the
// authors train with): backward runs on loss * scale so that small fp16 gradients do not flush
// to zero; before the optimizer step the gradients are divided by the scale and checked; a step
// whose gradients hold an Inf or NaN is skipped and the scale multiplied by backoff_factor; after
// growth_interval good steps in a row the scale is multiplied by growth_factor.
struct GradScalerOptions {
  double init_scale = 65536.0;
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;
};

class GradScaler {
 public:
  explicit GradScaler(GradScalerOptions opt = {});
  // loss * scale, differentiable.
  Tensor scale(const Tensor& loss) const;
  // Divides every defined gradient of `params` by the scale in place and returns whether all of
  // them are finite (one host synchronisation on a device).
  bool unscale_(const std::vector<Tensor>& params) const;
  // After a step: backoff on overflow, growth after growth_interval good steps.
  void update(bool grads_finite);
  double current_scale() const { return scale_; }
  int64_t growth_tracker() const { return tracker_; }
  // For checkpoints: a resumed run continues with the same scale and counter.
  void load_state(double scale, int64_t growth_tracker);

 private:
  GradScalerOptions opt_;
  double scale_;
  int64_t tracker_ = 0;
};

}  // namespace sc
