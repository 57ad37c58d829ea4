// resnet.h: torchvision-layout ResNet-18 / 34 / 50 backbones (v1.5: a bottleneck's stride sits on
// its 3x3 conv) without the average pool and fc: forward returns the stride-32 feature map
// (N, 512 or 2048, H/32, W/32) of layer4.
//
// Parameter names are torchvision's: conv1.weight, bn1.{weight, bias, running_mean, running_var,
// num_batches_tracked}, layer{1..4}.{i}.conv{1,2[,3]}.weight, layer{1..4}.{i}.bn{1,2[,3]}.*,
// layer{1..4}.0.downsample.0.weight (1x1 conv), layer{1..4}.0.downsample.1.* (BN).
//
// Initialisation (docs/method.md §1): conv weights N(0, sqrt(2 / (k*k*out_channels))), BN gamma 1 and
// beta 0, and the last BN gamma of every residual block (bn2 of a basic block, bn3 of a
// bottleneck) zero.
//
// Layout / precision: the forward accepts NCHW or NHWC input of any float dtype the ops support;
// with BF16 / F16 input the convs cast their F32 weights per call and the BNs keep F32 parameters
// (see resnet_layers.h). The residual join is fused into the last BN of each block
// (y = relu(bn(x) + identity)).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "model/resnet_layers.h"

namespace sc {

class BasicBlock : public Module {
 public:
  static constexpr int64_t kExpansion = 1;
  BasicBlock(int64_t in, int64_t planes, int64_t stride, DType dtype, Device device);
  Tensor forward(const Tensor& x);
  std::shared_ptr<Conv2d> conv1, conv2, down_conv;
  std::shared_ptr<BatchNorm> bn1, bn2, down_bn;  // down_* null when there is no downsample
};

class Bottleneck : public Module {
 public:
  static constexpr int64_t kExpansion = 4;
  Bottleneck(int64_t in, int64_t planes, int64_t stride, DType dtype, Device device);
  Tensor forward(const Tensor& x);
  std::shared_ptr<Conv2d> conv1, conv2, conv3, down_conv;
  std::shared_ptr<BatchNorm> bn1, bn2, bn3, down_bn;
};

class ResNet : public Module {
 public:
  // depth: 18, 34 or 50.
  ResNet(int depth, Generator& gen, DType dtype = DType::F32, Device device = Device::cpu());
  // x (N, 3, H, W) -> (N, out_channels(), ceil(H/32), ceil(W/32)) (exactly H/32 for multiples of
  // 32).
  Tensor forward(const Tensor& x);
  int depth() const { return depth_; }
  int64_t out_channels() const { return out_channels_; }
  // Re-draw every parameter and reset the buffers as docs/method.md §1 says.
  void reset_parameters(Generator& gen);

  std::shared_ptr<Conv2d> conv1;
  std::shared_ptr<BatchNorm> bn1;
  // layers[s] = the blocks of layer{s+1}; each is a BasicBlock or a Bottleneck.
  std::vector<std::vector<std::shared_ptr<Module>>> layers;

 private:
  int depth_;
  int64_t out_channels_;
};

// The output size of a ResNet stage chain for an input side length (stem conv /2, pool /2,
// three more stride-2 stages): the number of output pixels along that side.
int64_t resnet_output_size(int64_t input_size);

}  // namespace sc
