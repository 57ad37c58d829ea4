#include "engine/optim.h"

#include <cmath>

#include "engine/autograd.h"
#include "engine/dispatch.h"
#include "engine/ops.h"
#include "kernels/multi_tensor.h"

namespace sc {
namespace {
void zero_grads(std::vector<Tensor>& params) {
  for (Tensor& p : params) p.set_grad(Tensor());
}

// t in p's layout (same strides, dense): t itself when it already is, else a copy.
Tensor in_layout_of(const Tensor& t, const Tensor& p) {
  if (t.strides() == p.strides() && t.is_non_overlapping_and_dense()) return t;
  Tensor c = empty_like(p);
  copy_(c, t);
  return c;
}

void check_flag(const char* op, const Tensor& flag, const Tensor& like, const char* what) {
  if (!flag.defined()) return;
  SC_CHECK(flag.dtype() == DType::U8 && flag.numel() == 1 && flag.device() == like.device(), op,
           ": ", what, " must be a U8 tensor of one element on ", like.device().str(), ", got ",
           dtype_name(flag.dtype()), " ", shape_str(flag.shape()), " on ", flag.device().str());
}

// A per-step scalar from device memory (set_lr_source, ema_update's m_src): null when undefined;
// the value itself where the update runs on the CPU.
const double* scalar_source(const char* op, const Tensor& src, const Tensor& like,
                            double* host_value) {
  if (!src.defined()) return nullptr;
  SC_CHECK(src.dtype() == DType::F64 && src.numel() == 1 && src.device() == like.device(), op,
           ": a scalar source must be an F64 tensor of one element on ", like.device().str(),
           ", got ", dtype_name(src.dtype()), " ", shape_str(src.shape()), " on ",
           src.device().str());
  if (src.device().is_cpu()) {
    *host_value = src.data<double>()[0];
    return nullptr;
  }
  return static_cast<const double*>(src.data_ptr());
}

// The multi-tensor list of the parameters that have a gradient: a = p, b = g, c = momentum
// (created as zeros in p's layout on first use, moved into it after a checkpoint load), flag =
// p is a matrix. `keep` holds the gradient copies the list points into.
TensorList update_list(const char* op, const std::vector<Tensor>& params,
                       std::vector<Tensor>& momentum, std::vector<Tensor>& keep, Tensor& first) {
  TensorList l;
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i];
    Tensor g = p.grad();
    if (!g.defined() || p.numel() == 0) continue;
    if (!first.defined()) first = p;
    SC_CHECK(p.dtype() == first.dtype() && p.device() == first.device() &&
                 g.dtype() == p.dtype() && g.device() == p.device(),
             op, ": parameters and gradients must share one dtype and device (",
             dtype_name(first.dtype()), " on ", first.device().str(), "), parameter ", i, " is ",
             dtype_name(p.dtype()), " on ", p.device().str(), " with a ", dtype_name(g.dtype()),
             " gradient");
    SC_CHECK(p.is_non_overlapping_and_dense(), op, ": parameter ", i, " is not dense");
    g = in_layout_of(g, p);
    keep.push_back(g);
    Tensor& v = momentum[i];
    v = v.defined() ? in_layout_of(v, p) : zeros_like(p);
    l.a.push_back(p.data_ptr());
    l.b.push_back(g.data_ptr());
    l.c.push_back(v.data_ptr());
    l.n.push_back(p.numel());
    l.flag.push_back(p.dim() > 1 ? 1 : 0);
  }
  return l;
}
}  // namespace

SGD::SGD(std::vector<Tensor> params, SGDOptions opt)
    : params_(std::move(params)), momentum_(params_.size()), opt_(opt) {}

void SGD::zero_grad() { zero_grads(params_); }

void SGD::step(const Tensor& skip) {
  NoGradGuard ng;
  std::vector<Tensor> keep;
  Tensor first;
  const TensorList l = update_list("SGD", params_, momentum_, keep, first);
  if (l.size() == 0) return;
  check_flag("SGD", skip, first, "the skip flag");
  const uint8_t* sk = data_or_null<uint8_t>(skip);
  double lr = opt_.lr;
  const double* lr_dev = scalar_source("SGD", lr_src_, first, &lr);
  dispatch(
      "SGD", first,
      [&](auto tv) { multi_sgd_ref<decltype(tv)>(l, lr, opt_.momentum, opt_.weight_decay, sk); },
      [&](auto st) {
        multi_sgd_cuda(first.dtype(), l, lr, opt_.momentum, opt_.weight_decay, sk, st, lr_dev);
      });
}

LARS::LARS(std::vector<Tensor> params, LARSOptions opt)
    : params_(std::move(params)), momentum_(params_.size()), opt_(opt) {}

void LARS::zero_grad() { zero_grads(params_); }

void LARS::step(const Tensor& skip) {
  NoGradGuard ng;
  std::vector<Tensor> keep;
  Tensor first;
  const TensorList l = update_list("LARS", params_, momentum_, keep, first);
  if (l.size() == 0) return;
  check_flag("LARS", skip, first, "the skip flag");
  const uint8_t* sk = data_or_null<uint8_t>(skip);
  double lr = opt_.lr;
  const double* lr_dev = scalar_source("LARS", lr_src_, first, &lr);
  dispatch(
      "LARS", first,
      [&](auto tv) {
        multi_lars_ref<decltype(tv)>(l, lr, opt_.momentum, opt_.weight_decay,
                                     opt_.trust_coefficient, sk);
      },
      [&](auto st) {
        Workspace ws(multi_lars_workspace_bytes(l), first);
        multi_lars_cuda(first.dtype(), l, lr, opt_.momentum, opt_.weight_decay,
                        opt_.trust_coefficient, sk, ws.data(), st, lr_dev);
      });
}

void ema_update(const std::vector<Tensor>& targets, const std::vector<Tensor>& sources, double m,
                const Tensor& m_src) {
  NoGradGuard ng;
  SC_CHECK(targets.size() == sources.size(), "ema_update: ", targets.size(), " targets but ",
           sources.size(), " sources");
  TensorList l;
  std::vector<Tensor> keep;
  Tensor first;
  for (size_t i = 0; i < targets.size(); ++i) {
    const Tensor& k = targets[i];
    if (k.numel() == 0) continue;
    if (!first.defined()) first = k;
    SC_CHECK(k.shape() == sources[i].shape() && k.dtype() == first.dtype() &&
                 sources[i].dtype() == k.dtype() && k.device() == first.device() &&
                 sources[i].device() == k.device() && k.is_non_overlapping_and_dense(),
             "ema_update: pair ", i, " differs in shape, dtype or device, or is not dense");
    keep.push_back(in_layout_of(sources[i], k));
    l.a.push_back(k.data_ptr());
    l.b.push_back(keep.back().data_ptr());
    l.n.push_back(k.numel());
  }
  if (l.size() == 0) return;
  const double* m_dev = scalar_source("ema_update", m_src, first, &m);
  dispatch(
      "ema_update", first, [&](auto tv) { multi_ema_ref<decltype(tv)>(l, m); },
      [&](auto st) { multi_ema_cuda(first.dtype(), l, m, st, m_dev); });
}

void nonfinite_flag(const Tensor& x, const Tensor& found) {
  SC_CHECK(x.dtype() == DType::F64 && x.is_contiguous(), "nonfinite_flag: x must be dense F64, got ",
           dtype_name(x.dtype()), " ", shape_str(x.shape()));
  check_flag("nonfinite_flag", found, x, "found");
  SC_CHECK(found.defined(), "nonfinite_flag: found is undefined");
  dispatch(
      "nonfinite_flag", x,
      [&](auto) { nonfinite_flag_ref(x.numel(), x.data<double>(), found.data<uint8_t>()); },
      [&](auto st) { nonfinite_flag_cuda(x.numel(), x.data<double>(), found.data<uint8_t>(), st); });
}

GradScaler::GradScaler(GradScalerOptions opt, Device device) : opt_(opt) {
  SC_CHECK(opt.init_scale > 0 && std::isfinite(opt.init_scale), "GradScaler: init_scale must be > 0");
  SC_CHECK(opt.growth_factor > 1.0, "GradScaler: growth_factor must be > 1");
  SC_CHECK(opt.backoff_factor > 0.0 && opt.backoff_factor < 1.0,
           "GradScaler: backoff_factor must be in (0, 1)");
  SC_CHECK(opt.growth_interval > 0, "GradScaler: growth_interval must be > 0");
  state_ = from_vector({opt.init_scale, 0.0}, {2}, DType::F64, device);
}

Tensor GradScaler::scale(const Tensor& loss) const {
  // the scale as a 0-d tensor of the loss's dtype, read on the device
  return mul(loss, cast(reshape(slice(state_, 0, 0, 1), {}), loss.dtype()));
}

void GradScaler::unscale_(const std::vector<Tensor>& params, const Tensor& found) const {
  NoGradGuard ng;
  SC_CHECK(found.defined(), "GradScaler::unscale_: found is undefined");
  check_flag("GradScaler::unscale_", found, state_, "found");
  TensorList l;
  Tensor first;
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (!g.defined() || g.numel() == 0) continue;
    if (!g.is_non_overlapping_and_dense()) {
      g = g.contiguous();
      const_cast<Tensor&>(p).set_grad(g);
    }
    if (!first.defined()) first = g;
    SC_CHECK(g.dtype() == first.dtype() && g.device() == state_.device(),
             "GradScaler::unscale_: the gradients must share one dtype and the scaler's device");
    l.a.push_back(g.data_ptr());
    l.n.push_back(g.numel());
  }
  if (l.size() == 0) return;
  const double* sc = state_.data<double>();
  uint8_t* f = found.data<uint8_t>();
  dispatch(
      "GradScaler::unscale_", first, [&](auto tv) { multi_unscale_ref<decltype(tv)>(l, sc, f); },
      [&](auto st) { multi_unscale_cuda(first.dtype(), l, sc, f, st); });
}

bool GradScaler::unscale_(const std::vector<Tensor>& params) const {
  Tensor found = zeros({1}, DType::U8, state_.device());
  unscale_(params, found);
  return found.to(Device::cpu()).data<uint8_t>()[0] == 0;
}

void GradScaler::update(const Tensor& found) {
  SC_CHECK(found.defined(), "GradScaler::update: found is undefined");
  check_flag("GradScaler::update", found, state_, "found");
  double* s = state_.data<double>();
  const uint8_t* f = found.data<uint8_t>();
  dispatch(
      "GradScaler::update", state_,
      [&](auto) {
        scaler_update_ref(s, f, opt_.growth_factor, opt_.backoff_factor, opt_.growth_interval);
      },
      [&](auto st) {
        scaler_update_cuda(s, f, opt_.growth_factor, opt_.backoff_factor, opt_.growth_interval, st);
      });
}

void GradScaler::update(bool grads_finite) {
  update(full({1}, grads_finite ? 0.0 : 1.0, DType::U8, state_.device()));
}

double GradScaler::current_scale() const { return state_.to(Device::cpu()).to_vector()[0]; }

int64_t GradScaler::growth_tracker() const {
  return int64_t(state_.to(Device::cpu()).to_vector()[1]);
}

void GradScaler::load_state(double scale, int64_t growth_tracker) {
  SC_CHECK(scale > 0 && std::isfinite(scale), "GradScaler: a loss scale must be finite and > 0");
  SC_CHECK(growth_tracker >= 0, "GradScaler: the growth counter must be >= 0");
  copy_(state_, from_vector({scale, double(growth_tracker)}, {2}, DType::F64));
}

}  // namespace sc
