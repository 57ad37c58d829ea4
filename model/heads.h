// heads.h: SlotCon's projector and slot predictor (docs/method.md §1, names as §10).
//
// Projector (per pixel): mlp.0 = 1x1 conv C->H with bias, mlp.1 = BN2d(H), GELU, mlp.3 = 1x1 conv
// H->H, mlp.4 = BN2d(H), GELU, mlp.6 = 1x1 conv H->D. x (N, C, h, w) -> (N, D, h, w), NCHW or
// NHWC. Each BN + GELU pair is one fused op.
// Predictor (per slot): mlp.0 = Linear D->H, mlp.1 = BN1d(H), GELU, mlp.3 = Linear H->H,
// mlp.4 = BN1d(H), GELU, mlp.6 = Linear H->D. x (M, D) -> (M, D); an optional U8 row mask (M)
// makes both BNs take their statistics (and gradients) from the selected rows only; unselected
// rows still get finite outputs, which the caller ignores (see engine/nn_ops.h).
// Init: conv / linear weights truncated normal std 0.02 (bounds +-2), biases 0; BN gamma 1, beta 0.
#pragma once
#include <memory>

#include "model/resnet_layers.h"

namespace sc {

class Projector : public Module {
 public:
  Projector(int64_t in_dim, int64_t hidden_dim, int64_t out_dim, Generator& gen,
            DType dtype = DType::F32, Device device = Device::cpu());
  Tensor forward(const Tensor& x);
  void reset_parameters(Generator& gen);
  std::shared_ptr<Conv2d> fc0, fc3, fc6;
  std::shared_ptr<BatchNorm> bn1, bn4;
};

class SlotPredictor : public Module {
 public:
  SlotPredictor(int64_t in_dim, int64_t hidden_dim, int64_t out_dim, Generator& gen,
                DType dtype = DType::F32, Device device = Device::cpu());
  Tensor forward(const Tensor& x, const Tensor& row_mask = Tensor());
  void reset_parameters(Generator& gen);
  std::shared_ptr<Linear> fc0, fc3, fc6;
  std::shared_ptr<BatchNorm> bn1, bn4;
};

}  // namespace sc
