#include "engine/optim.h"

#include <cmath>

#include "engine/autograd.h"
#include "engine/ops.h"

namespace sc {
namespace {
void zero_grads(std::vector<Tensor>& params) {
  for (Tensor& p : params) p.set_grad(Tensor());
}
// trust * ||p|| / ||g|| when both norms are > 0, else 1: a 0-d F64 tensor on p's device, computed
// there (no host synchronisation per parameter, which on a GPU would stall every step ~160
// times for a ResNet-50).
Tensor trust_ratio(const Tensor& p, const Tensor& g, double trust) {
  Tensor pn = sqrt(cast(sum(mul(p, p)), DType::F64));
  Tensor gn = sqrt(cast(sum(mul(g, g)), DType::F64));
  Tensor zero = zeros({}, DType::F64, p.device());
  // ok = (pn != 0) * (gn != 0), as 0 / 1
  Tensor ok = mul(add_scalar(neg(cast(equal_mask(pn, zero), DType::F64)), 1.0),
                  add_scalar(neg(cast(equal_mask(gn, zero), DType::F64)), 1.0));
  Tensor not_ok = add_scalar(neg(ok), 1.0);
  // where ok: trust * pn / gn; elsewhere 1 (gn + not_ok keeps the division finite)
  return add(mul(ok, mul_scalar(div(pn, add(gn, not_ok)), trust)), not_ok);
}
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
      g = mul(g, cast(trust_ratio(p, g, opt_.trust_coefficient), g.dtype()));
    }
    Tensor& v = momentum_[i];
    if (!v.defined()) v = zeros(p.shape(), p.dtype(), p.device());
    axpby_(v, opt_.momentum, g, 1.0);
    add_(p, v, -opt_.lr);
  }
}

GradScaler::GradScaler(GradScalerOptions opt) : opt_(opt), scale_(opt.init_scale) {
  SC_CHECK(opt.init_scale > 0 && std::isfinite(opt.init_scale), "GradScaler: init_scale must be > 0");
  SC_CHECK(opt.growth_factor > 1.0, "GradScaler: growth_factor must be > 1");
  SC_CHECK(opt.backoff_factor > 0.0 && opt.backoff_factor < 1.0,
           "GradScaler: backoff_factor must be in (0, 1)");
  SC_CHECK(opt.growth_interval > 0, "GradScaler: growth_interval must be > 0");
}

Tensor GradScaler::scale(const Tensor& loss) const { return mul_scalar(loss, scale_); }

bool GradScaler::unscale_(const std::vector<Tensor>& params) const {
  NoGradGuard ng;
  const double inv = 1.0 / scale_;
  // One scalar per gradient, summed on the device: Inf or NaN anywhere makes the total
  // non-finite, so one read-back answers for all of them.
  Tensor total;
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    mul_(g, inv);
    Tensor s = cast(sum(g), DType::F64);
    total = total.defined() ? add(total, s) : s;
  }
  return !total.defined() || std::isfinite(total.item());
}

void GradScaler::update(bool grads_finite) {
  if (!grads_finite) {
    scale_ *= opt_.backoff_factor;
    tracker_ = 0;
    return;
  }
  if (++tracker_ >= opt_.growth_interval) {
    scale_ *= opt_.growth_factor;
    tracker_ = 0;
  }
}

void GradScaler::load_state(double scale, int64_t growth_tracker) {
  SC_CHECK(scale > 0 && std::isfinite(scale), "GradScaler: a loss scale must be finite and > 0");
  SC_CHECK(growth_tracker >= 0, "GradScaler: the growth counter must be >= 0");
  scale_ = scale;
  tracker_ = growth_tracker;
}

}  // namespace sc
