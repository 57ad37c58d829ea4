#include "engine/tensor.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"

namespace sc {

std::string shape_str(const Shape& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape st(shape.size());
  int64_t acc = 1;
  for (int i = int(shape.size()) - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= std::max<int64_t>(shape[i], 1);
  }
  return st;
}

Shape format_strides(const Shape& shape, MemoryFormat fmt) {
  if (fmt == MemoryFormat::Contiguous) return contiguous_strides(shape);
  SC_CHECK(shape.size() == 4, "channels-last layout needs a 4-D shape, got ", shape_str(shape));
  int64_t C = std::max<int64_t>(shape[1], 1), H = std::max<int64_t>(shape[2], 1),
          W = std::max<int64_t>(shape[3], 1);
  return {H * W * C, 1, W * C, C};
}

// ---- Tensor metadata ----
static TensorImpl& checked(const std::shared_ptr<TensorImpl>& p) {
  SC_CHECK(p != nullptr, "use of an undefined tensor");
  return *p;
}

const Shape& Tensor::shape() const { return checked(impl_).shape; }
const Shape& Tensor::strides() const { return checked(impl_).strides; }
int Tensor::dim() const { return int(shape().size()); }
int64_t Tensor::size(int d) const {
  int n = dim();
  if (d < 0) d += n;
  SC_CHECK(d >= 0 && d < n, "dim ", d, " out of range for a ", n, "-D tensor");
  return shape()[d];
}
int64_t Tensor::stride(int d) const {
  int n = dim();
  if (d < 0) d += n;
  SC_CHECK(d >= 0 && d < n, "dim ", d, " out of range for a ", n, "-D tensor");
  return strides()[d];
}
int64_t Tensor::numel() const { return shape_numel(shape()); }
int64_t Tensor::offset() const { return checked(impl_).offset; }
DType Tensor::dtype() const { return checked(impl_).dtype; }
Device Tensor::device() const { return checked(impl_).storage->device; }
const std::shared_ptr<Storage>& Tensor::storage() const { return checked(impl_).storage; }
void* Tensor::data_ptr() const {
  auto& t = checked(impl_);
  return static_cast<char*>(t.storage->data) + t.offset * int64_t(dtype_size(t.dtype));
}

bool Tensor::is_contiguous() const {
  if (numel() == 0) return true;  // no element to misplace (PyTorch agrees)
  const Shape& s = shape();
  const Shape& st = strides();
  int64_t expect = 1;
  for (int i = int(s.size()) - 1; i >= 0; --i) {
    if (s[i] == 1) continue;
    if (st[i] != expect) return false;
    expect *= s[i];
  }
  return true;
}

bool Tensor::is_channels_last() const {
  if (dim() != 4) return false;
  if (numel() == 0) return true;
  const Shape& s = shape();
  const Shape& st = strides();
  // order of dims from innermost: C, W, H, N
  const int order[4] = {1, 3, 2, 0};
  int64_t expect = 1;
  for (int i : order) {
    if (s[i] == 1) continue;
    if (st[i] != expect) return false;
    expect *= s[i];
  }
  return true;
}

bool Tensor::is_non_overlapping_and_dense() const {
  if (is_contiguous()) return true;
  std::vector<int> idx(dim());
  std::iota(idx.begin(), idx.end(), 0);
  const Shape& s = shape();
  const Shape& st = strides();
  std::sort(idx.begin(), idx.end(), [&](int a, int b) { return st[a] < st[b]; });
  int64_t expect = 1;
  for (int i : idx) {
    if (s[i] == 1) continue;
    if (st[i] != expect) return false;
    expect *= s[i];
  }
  return true;
}

MemoryFormat Tensor::suggest_memory_format() const {
  if (dim() == 4 && !is_contiguous() && is_channels_last()) return MemoryFormat::ChannelsLast;
  return MemoryFormat::Contiguous;
}

std::string Tensor::str() const {
  if (!defined()) return "Tensor(undefined)";
  return str_cat("Tensor(shape=", shape_str(shape()), ", ", dtype_name(dtype()), ", ",
                 device().str(), ")");
}

// ---- autograd accessors ----
bool Tensor::requires_grad() const { return defined() && impl_->requires_grad; }
Tensor& Tensor::set_requires_grad(bool on) {
  auto& t = checked(impl_);
  SC_CHECK(t.grad_fn == nullptr,
           "set_requires_grad: only leaf tensors can be marked; this tensor was produced by op '",
           t.grad_fn ? "?" : "", "' (use detach() first)");
  SC_CHECK(!on || is_floating(t.dtype), "set_requires_grad: only floating tensors can require "
           "grad, this one is ", dtype_name(t.dtype));
  t.requires_grad = on;
  return *this;
}
bool Tensor::is_leaf() const { return checked(impl_).grad_fn == nullptr; }
Tensor Tensor::grad() const { return checked(impl_).grad; }
void Tensor::set_grad(const Tensor& g) {
  if (g.defined()) {
    SC_CHECK(g.shape() == shape(), "set_grad: gradient shape ", shape_str(g.shape()),
             " does not match tensor shape ", shape_str(shape()));
  }
  checked(impl_).grad = g;
}
std::shared_ptr<Node> Tensor::grad_fn() const { return checked(impl_).grad_fn; }
void Tensor::backward(const Tensor& grad, bool retain_graph) const {
  run_backward(*this, grad, retain_graph);
}
Tensor Tensor::detach() const {
  auto& t = checked(impl_);
  auto d = std::make_shared<TensorImpl>();
  d->storage = t.storage;
  d->shape = t.shape;
  d->strides = t.strides;
  d->offset = t.offset;
  d->dtype = t.dtype;
  return Tensor(d);
}

// ---- conversions ----
Tensor Tensor::to(Device d) const { return to_device(*this, d); }
Tensor Tensor::to(DType t) const { return cast(*this, t); }
Tensor Tensor::contiguous(MemoryFormat fmt) const {
  if (fmt == MemoryFormat::Contiguous ? is_contiguous() : is_channels_last()) return *this;
  Tensor out = empty(shape(), dtype(), device(), fmt);
  {
    NoGradGuard ng;
    copy_(out, *this);
  }
  record_op("contiguous", {*this}, {out},
            [](const std::vector<Tensor>& g) { return std::vector<Tensor>{g[0]}; });
  return out;
}
Tensor Tensor::clone() const {
  Tensor out = empty_like(*this);
  {
    NoGradGuard ng;
    copy_(out, *this);
  }
  record_op("clone", {*this}, {out},
            [](const std::vector<Tensor>& g) { return std::vector<Tensor>{g[0]}; });
  return out;
}
Tensor Tensor::pin_memory() const {
  SC_CHECK(device().is_cpu(), "pin_memory: tensor must be on the CPU, it is on ", device().str());
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = allocate(size_t(numel()) * dtype_size(dtype()), Device::cpu(), true);
  impl->shape = shape();
  impl->strides = contiguous_strides(shape());
  impl->dtype = dtype();
  Tensor out(impl);
  NoGradGuard ng;
  copy_(out, *this);
  return out;
}
bool Tensor::is_pinned() const { return storage()->pinned; }

std::vector<double> Tensor::to_vector() const {
  Tensor c = detach();
  if (c.device().is_cuda()) c = to_device(c, Device::cpu());
  Tensor d = empty(c.shape(), DType::F64, Device::cpu());
  cpu::copy(d, c);
  const double* p = d.data<double>();
  return std::vector<double>(p, p + d.numel());
}
double Tensor::item() const {
  SC_CHECK(numel() == 1, "item: tensor must have one element, it has ", numel(), " (shape ",
           shape_str(shape()), ")");
  return to_vector()[0];
}

// ---- factories ----
Tensor empty(const Shape& shape, DType dtype, Device device, MemoryFormat fmt) {
  for (int64_t d : shape) SC_CHECK(d >= 0, "empty: negative dimension in shape ", shape_str(shape));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = allocate(size_t(shape_numel(shape)) * dtype_size(dtype), device);
  impl->shape = shape;
  impl->strides = format_strides(shape, fmt);
  impl->dtype = dtype;
  return Tensor(impl);
}
Tensor empty_like(const Tensor& t) {
  return empty(t.shape(), t.dtype(), t.device(), t.suggest_memory_format());
}
Tensor full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  fill_(t, value);
  return t;
}
Tensor zeros(const Shape& shape, DType dtype, Device device) { return full(shape, 0, dtype, device); }
Tensor ones(const Shape& shape, DType dtype, Device device) { return full(shape, 1, dtype, device); }
Tensor zeros_like(const Tensor& t) {
  Tensor z = empty_like(t);
  fill_(z, 0.0);
  return z;
}
Tensor from_vector(const std::vector<double>& values, const Shape& shape, DType dtype,
                   Device device) {
  SC_CHECK(int64_t(values.size()) == shape_numel(shape), "from_vector: ", values.size(),
           " values for shape ", shape_str(shape));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>();
  impl->storage->data = const_cast<double*>(values.data());  // borrowed for the copy below only
  impl->storage->nbytes = values.size() * sizeof(double);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = DType::F64;
  Tensor src(impl);
  Tensor out = empty(shape, dtype, device);
  try {
    copy_(out, src);
  } catch (...) {
    impl->storage->data = nullptr;
    throw;
  }
  impl->storage->data = nullptr;  // not ours to free
  return out;
}
Tensor from_vector_f32(const std::vector<float>& values, const Shape& shape, Device device) {
  std::vector<double> d(values.begin(), values.end());
  return from_vector(d, shape, DType::F32, device);
}
Tensor scalar_tensor(double v, DType dtype, Device device) { return full({}, v, dtype, device); }

Tensor make_view(const Tensor& base, const Shape& shape, const Shape& strides, int64_t offset) {
  SC_CHECK(shape.size() == strides.size(), "make_view: shape and strides differ in rank");
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = base.storage();
  impl->shape = shape;
  impl->strides = strides;
  impl->offset = offset;
  impl->dtype = base.dtype();
  return Tensor(impl);
}

Tensor randn(const Shape& shape, Generator& gen, DType dtype, Device device) {
  std::vector<double> v(size_t(shape_numel(shape)));
  for (auto& x : v) x = gen.normal();
  return from_vector(v, shape, dtype, device);
}
Tensor rand_uniform(const Shape& shape, Generator& gen, double lo, double hi, DType dtype,
                    Device device) {
  std::vector<double> v(size_t(shape_numel(shape)));
  for (auto& x : v) x = lo + (hi - lo) * gen.uniform();
  return from_vector(v, shape, dtype, device);
}

}  // namespace sc
