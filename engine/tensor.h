// tensor.h: a small reference-counted, strided tensor that can be a node of the autograd tape.
//
// A Tensor is a handle: copies share the same TensorImpl (as in PyTorch). Views (reshape of a
// dense tensor, permute, transpose, slice, expand) share storage and differ in shape, strides and
// offset. Strides and offset count elements, not bytes.
//
// Memory layout of 4-D activations: the logical shape is always (N, C, H, W); the layout is
// carried by the strides. MemoryFormat::ChannelsLast is the NHWC layout (strides H*W*C, 1, W*C, C).
// Ops that create an output "like" an input keep the input's layout.
#pragma once
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/allocator.h"
#include "engine/dtype.h"
#include "engine/error.h"

namespace sc {

struct Node;
struct TensorImpl;
using Shape = std::vector<int64_t>;

enum class MemoryFormat : uint8_t { Contiguous, ChannelsLast };

std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);
Shape contiguous_strides(const Shape& shape);
// Strides of `shape` in `fmt`; ChannelsLast requires a 4-D shape.
Shape format_strides(const Shape& shape, MemoryFormat fmt);

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  bool defined() const { return impl_ != nullptr; }
  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool same(const Tensor& o) const { return impl_ == o.impl_; }

  // ---- metadata ----
  const Shape& shape() const;
  const Shape& strides() const;
  int64_t size(int d) const;    // negative d counts from the end
  int64_t stride(int d) const;
  int dim() const;
  int64_t numel() const;
  int64_t offset() const;
  DType dtype() const;
  Device device() const;
  bool is_cuda() const { return device().is_cuda(); }
  // Dense, row-major, no gaps.
  bool is_contiguous() const;
  // 4-D and dense in NHWC order.
  bool is_channels_last() const;
  // Dense (no gaps, no overlap) in some permutation of the dims.
  bool is_non_overlapping_and_dense() const;
  MemoryFormat suggest_memory_format() const;
  const std::shared_ptr<Storage>& storage() const;
  // Pointer to element 0 (storage + offset). The Tensor must be defined.
  void* data_ptr() const;
  template <class T>
  T* data() const { return static_cast<T*>(data_ptr()); }
  std::string str() const;  // "Tensor(shape=[2, 3], F32, cpu)"

  // ---- autograd ----
  bool requires_grad() const;
  // Only leaves (tensors with no grad_fn) may be marked; returns *this.
  Tensor& set_requires_grad(bool on);
  bool is_leaf() const;
  Tensor grad() const;
  void set_grad(const Tensor& g);
  std::shared_ptr<Node> grad_fn() const;
  // Back-propagate from this tensor. A scalar may omit `grad` (taken as 1). Gradients are
  // accumulated (+=) into every leaf that requires grad. The graph is released afterwards
  // unless retain_graph is true; a second backward through a released graph is an error.
  void backward(const Tensor& grad = Tensor(), bool retain_graph = false) const;
  // Same data, cut from the tape.
  Tensor detach() const;

  // ---- conversions (all differentiable where it makes sense) ----
  Tensor to(Device d) const;
  Tensor to(DType t) const;
  Tensor contiguous(MemoryFormat fmt = MemoryFormat::Contiguous) const;
  Tensor clone() const;
  // A CPU tensor in page-locked memory (plain host memory when CUDA is absent).
  Tensor pin_memory() const;
  bool is_pinned() const;

  // ---- host access ----
  // Value of a one-element tensor as double (copies from the device if needed).
  double item() const;
  // All elements in logical row-major order, as doubles.
  std::vector<double> to_vector() const;

 private:
  std::shared_ptr<TensorImpl> impl_;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Shape strides;
  int64_t offset = 0;
  DType dtype = DType::F32;
  // autograd
  bool requires_grad = false;
  Tensor grad;
  std::shared_ptr<Node> grad_fn;
  int output_nr = 0;
};

// ---- factories ----
Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu(),
             MemoryFormat fmt = MemoryFormat::Contiguous);
// Same shape, dtype, device and layout as `t` (dense even if t is a strided view).
Tensor empty_like(const Tensor& t);
Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
Tensor ones(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
Tensor full(const Shape& shape, double value, DType dtype = DType::F32,
            Device device = Device::cpu());
Tensor zeros_like(const Tensor& t);
// Copy host values (logical row-major) into a new tensor of the given dtype and device.
Tensor from_vector(const std::vector<double>& values, const Shape& shape,
                   DType dtype = DType::F32, Device device = Device::cpu());
Tensor from_vector_f32(const std::vector<float>& values, const Shape& shape,
                       Device device = Device::cpu());
Tensor scalar_tensor(double v, DType dtype = DType::F32, Device device = Device::cpu());
// A view of existing storage.
Tensor make_view(const Tensor& base, const Shape& shape, const Shape& strides, int64_t offset);

// A seeded random source. Random tensors are drawn on the host and copied, so the same seed
// gives the same values on every device.
class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : eng_(seed) {}
  double normal() { return nd_(eng_); }
  double uniform() { return ud_(eng_); }
  uint64_t next_u64() { return eng_(); }
  std::mt19937_64& engine() { return eng_; }

 private:
  std::mt19937_64 eng_;
  std::normal_distribution<double> nd_{0.0, 1.0};
  std::uniform_real_distribution<double> ud_{0.0, 1.0};
};
Tensor randn(const Shape& shape, Generator& gen, DType dtype = DType::F32,
             Device device = Device::cpu());
Tensor rand_uniform(const Shape& shape, Generator& gen, double lo = 0.0, double hi = 1.0,
                    DType dtype = DType::F32, Device device = Device::cpu());

}  // namespace sc
