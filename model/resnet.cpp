// resnet.cpp: torchvision-layout ResNet backbones (see resnet.h).
#include "model/resnet.h"

#include <cmath>

#include "engine/autograd.h"
#include "engine/ops.h"

namespace sc {

namespace {

// The optional downsample branch "downsample" = {0: 1x1 conv (stride), 1: BN}.
void make_downsample(Module& block, int64_t in, int64_t out, int64_t stride, DType dtype,
                     Device device, std::shared_ptr<Conv2d>& conv, std::shared_ptr<BatchNorm>& bn) {
  if (stride == 1 && in == out) return;
  auto seq = std::make_shared<Module>();
  conv = seq->register_module(
      "0", std::make_shared<Conv2d>(in, out, 1, stride, 0, false, dtype, device));
  bn = seq->register_module("1", std::make_shared<BatchNorm>(out, 1e-5, 0.1, dtype, device));
  block.register_module("downsample", seq);
}

Tensor shortcut(const Tensor& x, const std::shared_ptr<Conv2d>& conv,
                const std::shared_ptr<BatchNorm>& bn) {
  if (!conv) return x;
  return bn->forward(conv->forward(x));
}

}  // namespace

BasicBlock::BasicBlock(int64_t in, int64_t planes, int64_t stride, DType dtype, Device device) {
  conv1 = register_module("conv1",
                          std::make_shared<Conv2d>(in, planes, 3, stride, 1, false, dtype, device));
  bn1 = register_module("bn1", std::make_shared<BatchNorm>(planes, 1e-5, 0.1, dtype, device));
  conv2 = register_module("conv2",
                          std::make_shared<Conv2d>(planes, planes, 3, 1, 1, false, dtype, device));
  bn2 = register_module("bn2", std::make_shared<BatchNorm>(planes, 1e-5, 0.1, dtype, device));
  make_downsample(*this, in, planes * kExpansion, stride, dtype, device, down_conv, down_bn);
}

Tensor BasicBlock::forward(const Tensor& x) {
  Tensor identity = shortcut(x, down_conv, down_bn);
  Tensor out = bn1->forward(conv1->forward(x), Act::Relu);
  return bn2->forward(conv2->forward(out), Act::Relu, identity);
}

Bottleneck::Bottleneck(int64_t in, int64_t planes, int64_t stride, DType dtype, Device device) {
  conv1 =
      register_module("conv1", std::make_shared<Conv2d>(in, planes, 1, 1, 0, false, dtype, device));
  bn1 = register_module("bn1", std::make_shared<BatchNorm>(planes, 1e-5, 0.1, dtype, device));
  conv2 = register_module(
      "conv2", std::make_shared<Conv2d>(planes, planes, 3, stride, 1, false, dtype, device));
  bn2 = register_module("bn2", std::make_shared<BatchNorm>(planes, 1e-5, 0.1, dtype, device));
  conv3 = register_module("conv3", std::make_shared<Conv2d>(planes, planes * kExpansion, 1, 1, 0,
                                                            false, dtype, device));
  bn3 = register_module("bn3",
                        std::make_shared<BatchNorm>(planes * kExpansion, 1e-5, 0.1, dtype, device));
  make_downsample(*this, in, planes * kExpansion, stride, dtype, device, down_conv, down_bn);
}

Tensor Bottleneck::forward(const Tensor& x) {
  Tensor identity = shortcut(x, down_conv, down_bn);
  Tensor out = bn1->forward(conv1->forward(x), Act::Relu);
  out = bn2->forward(conv2->forward(out), Act::Relu);
  return bn3->forward(conv3->forward(out), Act::Relu, identity);
}

ResNet::ResNet(int depth, Generator& gen, DType dtype, Device device) : depth_(depth) {
  std::vector<int> counts;
  bool bottleneck = false;
  if (depth == 18) {
    counts = {2, 2, 2, 2};
  } else if (depth == 34) {
    counts = {3, 4, 6, 3};
  } else if (depth == 50) {
    counts = {3, 4, 6, 3};
    bottleneck = true;
  } else {
    throw Error(str_cat("ResNet: depth must be 18, 34 or 50, got ", depth));
  }
  const int64_t expansion = bottleneck ? Bottleneck::kExpansion : BasicBlock::kExpansion;
  conv1 = register_module("conv1", std::make_shared<Conv2d>(3, 64, 7, 2, 3, false, dtype, device));
  bn1 = register_module("bn1", std::make_shared<BatchNorm>(64, 1e-5, 0.1, dtype, device));
  int64_t in = 64;
  const int64_t planes[4] = {64, 128, 256, 512};
  for (int s = 0; s < 4; ++s) {
    auto layer = std::make_shared<Module>();
    std::vector<std::shared_ptr<Module>> blocks;
    for (int i = 0; i < counts[size_t(s)]; ++i) {
      const int64_t stride = (s > 0 && i == 0) ? 2 : 1;
      std::shared_ptr<Module> b;
      if (bottleneck)
        b = std::make_shared<Bottleneck>(in, planes[s], stride, dtype, device);
      else
        b = std::make_shared<BasicBlock>(in, planes[s], stride, dtype, device);
      layer->register_module(std::to_string(i), b);
      blocks.push_back(b);
      in = planes[s] * expansion;
    }
    register_module("layer" + std::to_string(s + 1), layer);
    layers.push_back(blocks);
  }
  out_channels_ = in;
  reset_parameters(gen);
}

void ResNet::reset_parameters(Generator& gen) {
  NoGradGuard ng;
  std::vector<Module*> stack = {this};
  // Depth-first over the tree: convs get He-normal (fan-out) weights, BNs 1 / 0 and fresh stats.
  while (!stack.empty()) {
    Module* m = stack.back();
    stack.pop_back();
    if (auto* c = dynamic_cast<Conv2d*>(m)) {
      const double std = std::sqrt(2.0 / double(c->kernel * c->kernel * c->out_channels));
      init_normal_(c->weight, gen, 0.0, std);
      if (c->bias.defined()) init_constant_(c->bias, 0.0);
    } else if (auto* bn = dynamic_cast<BatchNorm*>(m)) {
      init_constant_(bn->weight, 1.0);
      init_constant_(bn->bias, 0.0);
      fill_(bn->running_mean, 0.0);
      fill_(bn->running_var, 1.0);
      fill_(bn->num_batches_tracked, 0.0);
    }
    auto children = m->named_children();
    for (auto it = children.rbegin(); it != children.rend(); ++it)
      stack.push_back(it->second.get());
  }
  // Zero-init the last BN of every residual block.
  for (auto& layer : layers)
    for (auto& b : layer) {
      if (auto* bb = dynamic_cast<BasicBlock*>(b.get())) init_constant_(bb->bn2->weight, 0.0);
      if (auto* bt = dynamic_cast<Bottleneck*>(b.get())) init_constant_(bt->bn3->weight, 0.0);
    }
}

Tensor ResNet::forward(const Tensor& x) {
  SC_CHECK(x.defined() && x.dim() == 4 && x.size(1) == 3,
           "ResNet: input must be (N, 3, H, W), got ",
           x.defined() ? shape_str(x.shape()) : std::string("undefined"));
  Tensor h = bn1->forward(conv1->forward(x), Act::Relu);
  h = max_pool2d(h, 3, 2, 1);
  for (auto& layer : layers)
    for (auto& b : layer) {
      if (auto* bb = dynamic_cast<BasicBlock*>(b.get()))
        h = bb->forward(h);
      else
        h = static_cast<Bottleneck*>(b.get())->forward(h);
    }
  return h;
}

int64_t resnet_output_size(int64_t n) {
  n = (n + 2 * 3 - 7) / 2 + 1;                              // conv1 7x7/2 pad 3
  n = (n + 2 * 1 - 3) / 2 + 1;                              // max pool 3x3/2 pad 1
  for (int s = 0; s < 3; ++s) n = (n + 2 * 1 - 3) / 2 + 1;  // 3x3/2 pad 1 (= the 1x1/2 shortcut)
  return n;
}

}  // namespace sc
