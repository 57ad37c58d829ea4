#include "engine/optim.h"

#include <cmath>

#include "engine/autograd.h"
#include "engine/ops.h"

namespace sc {
namespace {
void zero_grads(std::vector<Tensor>& params) {
  for (Tensor& p : params) p.set_grad(Tensor());
}
double norm2(const Tensor& t) { return std::sqrt(sum(mul(t, t)).item()); }
}  // namespace

SGD::SGD(std::vector<Tensor> params, SGDOptions opt)
    : params_(std::move(params)), momentum_(params_.size()), opt_(opt) {}

void SGD::zero_grad() { zero_grads(params_); }

void SGD::step() {
  NoGradGuard ng;
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor& p = params_[i];
    Tensor g = p.grad();
    if (!g.defined()) continue;
    if (opt_.weight_decay != 0) g = add(g, mul_scalar(p, opt_.weight_decay));
    Tensor& v = momentum_[i];
    if (!v.defined()) v = zeros(p.shape(), p.dtype(), p.device());
    axpby_(v, opt_.momentum, g, 1.0);
    add_(p, v, -opt_.lr);
  }
}

LARS::LARS(std::vector<Tensor> params, LARSOptions opt)
    : params_(std::move(params)), momentum_(params_.size()), opt_(opt) {}

void LARS::zero_grad() { zero_grads(params_); }

void LARS::step() {
  NoGradGuard ng;
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor& p = params_[i];
    Tensor g = p.grad();
    if (!g.defined()) continue;
    if (p.dim() > 1) {
      g = add(g, mul_scalar(p, opt_.weight_decay));
      const double pn = norm2(p), gn = norm2(g);
      if (pn > 0 && gn > 0) g = mul_scalar(g, opt_.trust_coefficient * pn / gn);
    }
    Tensor& v = momentum_[i];
    if (!v.defined()) v = zeros(p.shape(), p.dtype(), p.device());
    axpby_(v, opt_.momentum, g, 1.0);
    add_(p, v, -opt_.lr);
  }
}

}  // namespace sc
