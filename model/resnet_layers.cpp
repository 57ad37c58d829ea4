// resnet_layers.cpp: Conv2d and BatchNorm modules (see resnet_layers.h).
#include "model/resnet_layers.h"

#include <unordered_map>

#include "engine/autograd.h"
#include "engine/ops.h"

namespace sc {

Conv2d::Conv2d(int64_t in, int64_t out, int64_t k, int64_t s, int64_t p, bool has_bias, DType dtype,
               Device device)
    : in_channels(in), out_channels(out), kernel(k), stride(s), padding(p) {
  SC_CHECK(in > 0 && out > 0 && k > 0 && s > 0 && p >= 0, "Conv2d: bad configuration in=", in,
           " out=", out, " kernel=", k, " stride=", s, " padding=", p);
  weight = register_parameter("weight", zeros({out, in, k, k}, dtype, device));
  if (has_bias) bias = register_parameter("bias", zeros({out}, dtype, device));
}

namespace {
struct CastKey {
  const TensorImpl* t;
  DType dt;
  bool grad;
  bool operator==(const CastKey& o) const { return t == o.t && dt == o.dt && grad == o.grad; }
};
struct CastKeyHash {
  size_t operator()(const CastKey& k) const {
    return std::hash<const void*>()(k.t) ^ (size_t(k.dt) << 1) ^ size_t(k.grad);
  }
};
using CastCache = std::unordered_map<CastKey, Tensor, CastKeyHash>;
thread_local CastCache* t_cast_cache = nullptr;

// cast(t, dt), made once per scope
Tensor cast_cached(const Tensor& t, DType dt) {
  if (!t_cast_cache) return cast(t, dt);
  const CastKey k{t.impl(), dt, grad_enabled()};
  auto it = t_cast_cache->find(k);
  if (it != t_cast_cache->end()) return it->second;
  Tensor c = cast(t, dt);
  t_cast_cache->emplace(k, c);
  return c;
}
}  // namespace

WeightCastScope::WeightCastScope() {
  SC_CHECK(!t_cast_cache, "WeightCastScope: scopes do not nest");
  t_cast_cache = new CastCache();
}
WeightCastScope::~WeightCastScope() {
  delete t_cast_cache;
  t_cast_cache = nullptr;
}

Tensor Conv2d::forward(const Tensor& x) const {
  Tensor w = weight, b = bias;
  if (x.dtype() != w.dtype() && is_floating(x.dtype())) {
    w = cast_cached(w, x.dtype());
    if (b.defined()) b = cast_cached(b, x.dtype());
  }
  return conv2d(x, w, b, stride, padding);
}

BatchNorm::BatchNorm(int64_t c, double eps_, double momentum_, DType dtype, Device device)
    : channels(c), eps(eps_), momentum(momentum_) {
  SC_CHECK(c > 0, "BatchNorm: channels must be positive, got ", c);
  weight = register_parameter("weight", ones({c}, dtype, device));
  bias = register_parameter("bias", zeros({c}, dtype, device));
  running_mean = register_buffer("running_mean", zeros({c}, dtype, device));
  running_var = register_buffer("running_var", ones({c}, dtype, device));
  // on the host whatever the module's device: the step never reads it on the device, and a
  // device counter cost three launches per training forward (Module::to(Device) still moves it)
  num_batches_tracked = register_buffer("num_batches_tracked", zeros({}, DType::I64, Device::cpu()));
}

Tensor BatchNorm::forward(const Tensor& x, Act act, const Tensor& residual,
                          const Tensor& row_mask) {
  BatchNormOptions o;
  o.training = is_training();
  o.momentum = momentum;
  o.eps = eps;
  o.act = act;
  o.residual = residual;
  o.row_mask = row_mask;
  o.reduce_stats = reduce_stats;
  o.reduce_grad_sums = reduce_grad_sums;
  Tensor y = batch_norm(x, weight, bias, running_mean, running_var, o);
  if (o.training) {
    NoGradGuard ng;
    if (num_batches_tracked.device().is_cpu()) {
      ++num_batches_tracked.data<int64_t>()[0];
    } else {  // moved to the device by Module::to: counted there, without a host synchronisation
      Tensor next = add_scalar(cast(num_batches_tracked, DType::F64), 1.0);
      copy_(num_batches_tracked, next);
    }
  }
  return y;
}

namespace {
void collect_bn(Module& m, std::vector<BatchNorm*>& out) {
  if (auto* bn = dynamic_cast<BatchNorm*>(&m)) out.push_back(bn);
  for (auto& c : m.named_children()) collect_bn(*c.second, out);
}
}  // namespace

std::vector<BatchNorm*> batch_norm_modules(Module& root) {
  std::vector<BatchNorm*> out;
  collect_bn(root, out);
  return out;
}

void convert_conv_weights_channels_last(Module& root) {
  NoGradGuard ng;
  for (auto& kv : root.named_parameters()) {
    Tensor t = kv.second;
    if (t.dim() != 4 || t.is_channels_last()) continue;
    Tensor cl = t.detach().contiguous(MemoryFormat::ChannelsLast);
    TensorImpl& d = *t.impl();
    d.storage = cl.impl()->storage;
    d.strides = cl.strides();
    d.offset = cl.offset();
    d.grad = Tensor();
  }
}

}  // namespace sc
