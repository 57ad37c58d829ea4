// heads.cpp: projector and slot predictor (see heads.h).
#include "model/heads.h"

#include "engine/autograd.h"
#include "engine/ops.h"

namespace sc {

namespace {
void reset_bn(BatchNorm& bn) {
  init_constant_(bn.weight, 1.0);
  init_constant_(bn.bias, 0.0);
  fill_(bn.running_mean, 0.0);
  fill_(bn.running_var, 1.0);
  fill_(bn.num_batches_tracked, 0.0);
}
}  // namespace

Projector::Projector(int64_t in_dim, int64_t hidden_dim, int64_t out_dim, Generator& gen,
                     DType dtype, Device device) {
  auto mlp = std::make_shared<Module>();
  fc0 = mlp->register_module(
      "0", std::make_shared<Conv2d>(in_dim, hidden_dim, 1, 1, 0, true, dtype, device));
  bn1 =
      mlp->register_module("1", std::make_shared<BatchNorm>(hidden_dim, 1e-5, 0.1, dtype, device));
  fc3 = mlp->register_module(
      "3", std::make_shared<Conv2d>(hidden_dim, hidden_dim, 1, 1, 0, true, dtype, device));
  bn4 =
      mlp->register_module("4", std::make_shared<BatchNorm>(hidden_dim, 1e-5, 0.1, dtype, device));
  fc6 = mlp->register_module(
      "6", std::make_shared<Conv2d>(hidden_dim, out_dim, 1, 1, 0, true, dtype, device));
  register_module("mlp", mlp);
  reset_parameters(gen);
}

void Projector::reset_parameters(Generator& gen) {
  NoGradGuard ng;
  for (Conv2d* c : {fc0.get(), fc3.get(), fc6.get()}) {
    init_trunc_normal_(c->weight, gen, 0.02);
    init_constant_(c->bias, 0.0);
  }
  reset_bn(*bn1);
  reset_bn(*bn4);
}

Tensor Projector::forward(const Tensor& x) {
  Tensor h = bn1->forward(fc0->forward(x), Act::Gelu);
  h = bn4->forward(fc3->forward(h), Act::Gelu);
  return fc6->forward(h);
}

SlotPredictor::SlotPredictor(int64_t in_dim, int64_t hidden_dim, int64_t out_dim, Generator& gen,
                             DType dtype, Device device) {
  auto mlp = std::make_shared<Module>();
  fc0 =
      mlp->register_module("0", std::make_shared<Linear>(in_dim, hidden_dim, true, dtype, device));
  bn1 =
      mlp->register_module("1", std::make_shared<BatchNorm>(hidden_dim, 1e-5, 0.1, dtype, device));
  fc3 = mlp->register_module("3",
                             std::make_shared<Linear>(hidden_dim, hidden_dim, true, dtype, device));
  bn4 =
      mlp->register_module("4", std::make_shared<BatchNorm>(hidden_dim, 1e-5, 0.1, dtype, device));
  fc6 =
      mlp->register_module("6", std::make_shared<Linear>(hidden_dim, out_dim, true, dtype, device));
  register_module("mlp", mlp);
  reset_parameters(gen);
}

void SlotPredictor::reset_parameters(Generator& gen) {
  NoGradGuard ng;
  for (Linear* l : {fc0.get(), fc3.get(), fc6.get()}) {
    init_trunc_normal_(l->weight, gen, 0.02);
    init_constant_(l->bias, 0.0);
  }
  reset_bn(*bn1);
  reset_bn(*bn4);
}

Tensor SlotPredictor::forward(const Tensor& x, const Tensor& row_mask) {
  SC_CHECK(x.defined() && x.dim() == 2, "SlotPredictor: input must be (M, D)");
  Tensor h = bn1->forward(fc0->forward(x), Act::Gelu, Tensor(), row_mask);
  h = bn4->forward(fc3->forward(h), Act::Gelu, Tensor(), row_mask);
  return fc6->forward(h);
}

}  // namespace sc
