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

}  // namespace sc
