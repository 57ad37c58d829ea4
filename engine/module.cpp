// module.cpp: the module tree, state dicts, Linear and the initialisers.
#include "engine/module.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <set>
#include <unordered_set>

#include "engine/autograd.h"
#include "engine/ops.h"

namespace sc {

namespace {

std::string join_name(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}

// Calls f(full_name, tensor&) for every parameter (params=true) or buffer of the subtree, in
// registration order, own tensors first, then each child depth first.
template <class Deque, class F>
void visit_own(Deque& d, const std::string& prefix, F&& f) {
  for (auto& kv : d) f(join_name(prefix, kv.first), kv.second);
}

// The names `optional` lets be absent: the whole name or its last dot-separated components.
bool matches_optional(const std::string& name, const std::vector<std::string>& optional) {
  for (const std::string& o : optional) {
    if (o.empty()) continue;
    if (name == o) return true;
    if (name.size() > o.size() && name.compare(name.size() - o.size(), o.size(), o) == 0 &&
        name[name.size() - o.size() - 1] == '.')
      return true;
  }
  return false;
}

std::string list_names(const std::vector<std::string>& names) {
  std::string r;
  for (size_t i = 0; i < names.size(); ++i) r += (i ? ", " : "") + names[i];
  return r;
}

// Replace the contents of `dst`'s TensorImpl by those of `src` (same logical tensor, new storage,
// layout, dtype); autograd identity (requires_grad, leaf-ness) is kept.
void swap_contents(Tensor& dst, const Tensor& src) {
  TensorImpl& d = *dst.impl();
  const TensorImpl& s = *src.impl();
  d.storage = s.storage;
  d.shape = s.shape;
  d.strides = s.strides;
  d.offset = s.offset;
  d.dtype = s.dtype;
}

}  // namespace

// ---------------------------------------------------------------- registration
void Module::check_new_name(const std::string& name, const char* what) const {
  SC_CHECK(!name.empty(), "Module: cannot register a ", what, " with an empty name");
  SC_CHECK(name.find('.') == std::string::npos, "Module: ", what, " name '", name,
           "' must not contain '.'");
  auto taken = [&](const auto& list) {
    for (const auto& kv : list)
      if (kv.first == name) return true;
    return false;
  };
  SC_CHECK(!taken(params_) && !taken(buffers_) && !taken(children_), "Module: cannot register ",
           what, " '", name, "': the name is already used in this module");
}

Tensor& Module::register_parameter(const std::string& name, Tensor t) {
  check_new_name(name, "parameter");
  SC_CHECK(t.defined(), "Module: parameter '", name, "' is an undefined tensor");
  SC_CHECK(is_floating(t.dtype()), "Module: parameter '", name, "' must be floating, it is ",
           dtype_name(t.dtype()));
  if (!t.is_leaf()) t = t.detach();
  t.set_requires_grad(true);
  params_.emplace_back(name, std::move(t));
  return params_.back().second;
}

Tensor& Module::register_buffer(const std::string& name, Tensor t) {
  check_new_name(name, "buffer");
  SC_CHECK(t.defined(), "Module: buffer '", name, "' is an undefined tensor");
  buffers_.emplace_back(name, std::move(t));
  return buffers_.back().second;
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> m) {
  check_new_name(name, "child module");
  SC_CHECK(m != nullptr, "Module: child module '", name, "' is null");
  SC_CHECK(m.get() != this, "Module: a module cannot be its own child ('", name, "')");
  children_.emplace_back(name, std::move(m));
}

// ---------------------------------------------------------------- listing
NamedTensors Module::named_parameters(const std::string& prefix) const {
  NamedTensors all;
  std::unordered_set<const TensorImpl*> seen;
  // One walk over the tree with one `seen` set, so a tensor shared by two modules is listed once.
  std::function<void(const std::string&, const Module&)> walk = [&](const std::string& p,
                                                                    const Module& m) {
    visit_own(m.params_, p, [&](const std::string& n, const Tensor& t) {
      if (seen.insert(t.impl()).second) all.emplace_back(n, t);
    });
    for (const auto& c : m.children_) walk(join_name(p, c.first), *c.second);
  };
  walk(prefix, *this);
  return all;
}

NamedTensors Module::named_buffers(const std::string& prefix) const {
  NamedTensors all;
  visit_own(buffers_, prefix,
            [&](const std::string& n, const Tensor& t) { all.emplace_back(n, t); });
  for (const auto& c : children_) {
    NamedTensors sub = c.second->named_buffers(join_name(prefix, c.first));
    all.insert(all.end(), sub.begin(), sub.end());
  }
  return all;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> r;
  for (auto& kv : named_parameters()) r.push_back(kv.second);
  return r;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (auto& kv : named_parameters()) n += kv.second.numel();
  return n;
}

NamedTensors Module::state_dict(const std::string& prefix) const {
  NamedTensors all;
  visit_own(params_, prefix,
            [&](const std::string& n, const Tensor& t) { all.emplace_back(n, t); });
  visit_own(buffers_, prefix,
            [&](const std::string& n, const Tensor& t) { all.emplace_back(n, t); });
  for (const auto& c : children_) {
    NamedTensors sub = c.second->state_dict(join_name(prefix, c.first));
    all.insert(all.end(), sub.begin(), sub.end());
  }
  return all;
}

// ---------------------------------------------------------------- loading
void Module::load_state_dict(const TensorMap& state, bool strict,
                             const std::vector<std::string>& optional) {
  NamedTensors mine = state_dict();
  std::vector<std::string> missing, unexpected, mismatched;
  std::set<std::string> my_names;
  std::vector<std::pair<Tensor, Tensor>> copies;  // (destination, source)
  for (auto& kv : mine) {
    my_names.insert(kv.first);
    auto it = state.find(kv.first);
    if (it == state.end()) {
      if (strict && !matches_optional(kv.first, optional)) missing.push_back(kv.first);
      continue;
    }
    const Tensor& src = it->second;
    if (!src.defined()) {
      mismatched.push_back(kv.first + " (undefined tensor in the state dict)");
      continue;
    }
    if (src.shape() != kv.second.shape()) {
      mismatched.push_back(str_cat(kv.first, " (module ", shape_str(kv.second.shape()),
                                   ", state dict ", shape_str(src.shape()), ")"));
      continue;
    }
    copies.emplace_back(kv.second, src);
  }
  if (strict) {
    for (auto& kv : state)
      if (!my_names.count(kv.first) && !matches_optional(kv.first, optional))
        unexpected.push_back(kv.first);
  }
  if (!missing.empty() || !unexpected.empty() || !mismatched.empty()) {
    std::string msg = "load_state_dict: the state dict does not fit the module (nothing loaded)";
    if (!missing.empty()) msg += str_cat("; ", missing.size(), " missing: ", list_names(missing));
    if (!unexpected.empty())
      msg += str_cat("; ", unexpected.size(), " unexpected: ", list_names(unexpected));
    if (!mismatched.empty())
      msg += str_cat("; ", mismatched.size(), " shape mismatch: ", list_names(mismatched));
    throw Error(msg);
  }
  NoGradGuard ng;
  for (auto& c : copies) copy_(c.first, c.second);
}

// ---------------------------------------------------------------- modes and conversions
void Module::train(bool on) {
  training_ = on;
  for (auto& c : children_) c.second->train(on);
}

namespace {

// Every distinct tensor of the subtree once (parameters and buffers).
void collect_unique(const NamedTensors& sd, std::vector<Tensor>& out) {
  std::unordered_set<const TensorImpl*> seen;
  for (auto& kv : sd)
    if (seen.insert(kv.second.impl()).second) out.push_back(kv.second);
}

}  // namespace

void Module::to(Device d) {
  std::vector<Tensor> all;
  collect_unique(state_dict(), all);
  NoGradGuard ng;
  for (Tensor& t : all) {
    Tensor g = t.grad();
    if (t.device() != d) swap_contents(t, t.detach().to(d));
    if (g.defined() && g.device() != d) t.impl()->grad = g.detach().to(d);
  }
}

void Module::to(DType dt) {
  SC_CHECK(is_floating(dt), "Module::to: can only convert to a floating dtype, not ",
           dtype_name(dt));
  std::vector<Tensor> all;
  collect_unique(state_dict(), all);
  NoGradGuard ng;
  for (Tensor& t : all) {
    if (!is_floating(t.dtype())) continue;
    Tensor g = t.grad();
    if (t.dtype() != dt) swap_contents(t, t.detach().to(dt));
    if (g.defined() && g.dtype() != dt) t.impl()->grad = g.detach().to(dt);
  }
}

void Module::zero_grad() {
  for (Tensor& p : parameters()) p.set_grad(Tensor());
}

// ---------------------------------------------------------------- Linear
Linear::Linear(int64_t in, int64_t out, bool has_bias, DType dtype, Device device) {
  SC_CHECK(in > 0 && out > 0, "Linear: in and out features must be positive, got in=", in,
           " out=", out);
  SC_CHECK(is_floating(dtype), "Linear: dtype must be floating, not ", dtype_name(dtype));
  weight = register_parameter("weight", zeros({out, in}, dtype, device));
  if (has_bias) bias = register_parameter("bias", zeros({out}, dtype, device));
}

Tensor Linear::forward(const Tensor& x) const { return linear(x, weight, bias); }

// ---------------------------------------------------------------- initialisers
namespace {

void check_init_target(const Tensor& t, const char* fn) {
  SC_CHECK(t.defined(), fn, ": undefined tensor");
  SC_CHECK(is_floating(t.dtype()), fn, ": tensor must be floating, it is ", dtype_name(t.dtype()));
}

void assign_host_values(Tensor& t, const std::vector<double>& v) {
  NoGradGuard ng;
  Tensor src = from_vector(v, t.shape(), DType::F64, Device::cpu());
  copy_(t, src);
}

double normal_cdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }

}  // namespace

void init_normal_(Tensor& t, Generator& gen, double mean, double std) {
  check_init_target(t, "init_normal_");
  SC_CHECK(std >= 0 && std::isfinite(std) && std::isfinite(mean),
           "init_normal_: need a finite mean and std >= 0, got mean=", mean, " std=", std);
  std::vector<double> v(size_t(t.numel()));
  for (double& x : v) x = mean + std * gen.normal();
  assign_host_values(t, v);
}

void init_trunc_normal_(Tensor& t, Generator& gen, double std, double a, double b) {
  check_init_target(t, "init_trunc_normal_");
  SC_CHECK(std >= 0 && std::isfinite(std), "init_trunc_normal_: need std >= 0, got ", std);
  SC_CHECK(a < b, "init_trunc_normal_: need a < b, got a=", a, " b=", b);
  std::vector<double> v(size_t(t.numel()));
  if (std == 0) {
    std::fill(v.begin(), v.end(), std::min(std::max(0.0, a), b));
    assign_host_values(t, v);
    return;
  }
  // Standardised bounds. If the whole interval lies above 0, sample its mirror image below 0,
  // where the normal CDF (via erfc) keeps its relative precision far into the tail.
  double lo = a / std, hi = b / std;
  const bool mirror = lo > 0;
  if (mirror) {
    double l = -hi;
    hi = -lo;
    lo = l;
  }
  const double p_lo = normal_cdf(lo), p_hi = normal_cdf(hi);
  const double mass = p_hi - p_lo;
  SC_CHECK(mass > 0, "init_trunc_normal_: the interval [", a, ", ", b,
           "] holds no probability mass of N(0, ", std, ") in double precision");
  for (double& x : v) {
    double z;
    if (mass >= 0.05) {
      // Rejection: at least one draw in 20 is accepted.
      do {
        z = gen.normal();
      } while (!(z >= lo && z <= hi));
    } else {
      // Inverse CDF: u uniform on [p_lo, p_hi], z = Phi^-1(u) by bisection.
      const double u = p_lo + gen.uniform() * mass;
      double l = lo, h = hi;
      for (int it = 0; it < 200 && l < h; ++it) {
        const double m = 0.5 * (l + h);
        if (m <= l || m >= h) break;
        (normal_cdf(m) < u ? l : h) = m;
      }
      z = 0.5 * (l + h);
    }
    double val = (mirror ? -z : z) * std;
    x = std::min(std::max(val, a), b);
  }
  assign_host_values(t, v);
}

void init_constant_(Tensor& t, double value) {
  check_init_target(t, "init_constant_");
  NoGradGuard ng;
  fill_(t, value);
}

}  // namespace sc
