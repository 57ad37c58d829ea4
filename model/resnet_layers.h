// resnet_layers.h: the layer modules of the backbone and the heads, named like PyTorch's
// (weight, bias, running_mean, running_var, num_batches_tracked), over the ops of engine/nn_ops.h.
//
// Mixed precision (the autocast of the fast training path): parameters stay in their own dtype
// (F32 master weights); a Conv2d whose input has another floating dtype (BF16 / F16) casts its
// weight and bias to the input's dtype inside the graph (so gradients flow back to the F32
// parameters); BatchNorm takes BF16 / F16 activations with F32 parameters directly. While a
// WeightCastScope lives, each weight is cast once per dtype (and grad mode) and the cast reused.
#pragma once
#include <functional>
#include <memory>

#include "engine/module.h"
#include "engine/nn_ops.h"

namespace sc {

// While one lives (on this thread), Conv2d's weight and bias casts are made once and reused:
// SlotConModel::forward opens one around a step's four backbone passes, so both views share one
// bf16 copy of each weight (one cast launch and one cast backward, not two). The weights must not
// change while it lives; scopes do not nest.
class WeightCastScope {
 public:
  WeightCastScope();
  ~WeightCastScope();
  WeightCastScope(const WeightCastScope&) = delete;
  WeightCastScope& operator=(const WeightCastScope&) = delete;
};

// nn.Conv2d(in, out, kernel, stride, padding, bias): weight (out, in, k, k), bias (out).
class Conv2d : public Module {
 public:
  Conv2d(int64_t in, int64_t out, int64_t kernel, int64_t stride = 1, int64_t padding = 0,
         bool bias = false, DType dtype = DType::F32, Device device = Device::cpu());
  Tensor forward(const Tensor& x) const;
  Tensor weight;
  Tensor bias;
  int64_t in_channels, out_channels, kernel, stride, padding;
};

// nn.BatchNorm1d / nn.BatchNorm2d (the same module: the input's rank decides), with the fused
// residual add + activation of sc::batch_norm and the row mask for (N, C) inputs.
// Training mode (Module::train) uses batch statistics, updates running_mean / running_var
// (momentum 0.1, unbiased variance) and increments num_batches_tracked; eval mode uses the
// running statistics.
class BatchNorm : public Module {
 public:
  explicit BatchNorm(int64_t channels, double eps = 1e-5, double momentum = 0.1,
                     DType dtype = DType::F32, Device device = Device::cpu());
  Tensor forward(const Tensor& x, Act act = Act::None, const Tensor& residual = Tensor(),
                 const Tensor& row_mask = Tensor());
  Tensor weight, bias, running_mean, running_var, num_batches_tracked;
  int64_t channels;
  double eps, momentum;
  // Distributed hooks passed to sc::batch_norm (see engine/nn_ops.h); empty by default.
  std::function<void(Tensor&)> reduce_stats;
  std::function<void(Tensor&)> reduce_grad_sums;
};

// Every BatchNorm module of a tree (in registration order), e.g. to install distributed hooks.
std::vector<BatchNorm*> batch_norm_modules(Module& root);

// Give every 4-D parameter of the tree the channels-last layout in place (values, names and
// autograd identity kept; gradients dropped). With NHWC activations on CUDA this saves the
// per-step weight layout conversion of conv2d.
void convert_conv_weights_channels_last(Module& root);

}  // namespace sc
