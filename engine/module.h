// module.h: a tree of named parameters, buffers and child modules.
//
// Names are hierarchical and follow PyTorch's state_dict() convention: a child registered as
// "layer1" whose child "0" has a parameter "weight" under child "conv1" is "layer1.0.conv1.weight".
// Registration order is kept, so state dicts come out in a stable order.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace sc {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;
// Name -> tensor, sorted by name (what files hold).
using TensorMap = std::map<std::string, Tensor>;

class Module {
 public:
  virtual ~Module() = default;

  // Register a parameter (marked requires_grad) / buffer / child; returns the stored handle.
  // Names must be unique within this module and must not contain '.'.
  Tensor& register_parameter(const std::string& name, Tensor t);
  Tensor& register_buffer(const std::string& name, Tensor t);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    add_child(name, m);
    return m;
  }

  NamedTensors named_parameters(const std::string& prefix = "") const;
  NamedTensors named_buffers(const std::string& prefix = "") const;
  std::vector<Tensor> parameters() const;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_children() const {
    return children_;
  }
  int64_t num_parameters() const;

  // Parameters then buffers of every module, hierarchical names, registration order.
  NamedTensors state_dict(const std::string& prefix = "") const;
  // Copy values from `state` into this module's tensors (dtype converted, device kept).
  // strict: every name must be present and no extra names allowed; in every mode a shape
  // mismatch is an error. Names listed in `optional` (suffix match, e.g. "num_batches_tracked")
  // may be absent. Throws sc::Error listing the offending names.
  void load_state_dict(const TensorMap& state, bool strict = true,
                       const std::vector<std::string>& optional = {});

  // Training mode (affects BatchNorm); applies to the whole subtree.
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  // Move / convert every parameter and buffer in place (parameters stay leaves).
  void to(Device d);
  void to(DType t);  // floating tensors only
  void zero_grad();

 protected:
  void add_child(const std::string& name, std::shared_ptr<Module> m);
  bool training_ = true;

 private:
  std::vector<std::pair<std::string, Tensor>> params_;
  std::vector<std::pair<std::string, Tensor>> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
};

// y = x W^T + b; W (out, in), b (out). Init: the caller's choice (see init helpers).
class Linear : public Module {
 public:
  Linear(int64_t in, int64_t out, bool bias = true, DType dtype = DType::F32,
         Device device = Device::cpu());
  Tensor forward(const Tensor& x) const;
  Tensor weight;
  Tensor bias;
};

// ---- initialisers (in place, under no-grad; values drawn on the host) ----
void init_normal_(Tensor& t, Generator& gen, double mean, double std);
// Normal(mean, std) truncated to [a, b] (PyTorch's trunc_normal_ with absolute bounds a, b).
void init_trunc_normal_(Tensor& t, Generator& gen, double std, double a = -2.0, double b = 2.0);
void init_constant_(Tensor& t, double v);

}  // namespace sc
