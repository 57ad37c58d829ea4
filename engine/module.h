// module.h: a tree of named parameters, buffers and child modules.
//
// Names are hierarchical and follow PyTorch's state_dict() convention: a child registered as
// "layer1" whose child "0" has a parameter "weight" under child "conv1" is "layer1.0.conv1.weight".
// Registration order is kept, so state dicts come out in a stable order.
#pragma once
#include <deque>
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

  // Register a parameter (marked requires_grad; a non-leaf is detached first) / buffer / child;
  // returns the stored handle, which stays valid for the module's lifetime. Names must be
  // non-empty, unique within this module and must not contain '.'; tensors must be defined and
  // parameters floating. Throws sc::Error otherwise.
  Tensor& register_parameter(const std::string& name, Tensor t);
  Tensor& register_buffer(const std::string& name, Tensor t);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    add_child(name, m);
    return m;
  }

  // Hierarchical names, registration order (own tensors first, then each child's, depth first).
  // named_parameters/parameters list a tensor registered twice (shared) only once.
  NamedTensors named_parameters(const std::string& prefix = "") const;
  NamedTensors named_buffers(const std::string& prefix = "") const;
  std::vector<Tensor> parameters() const;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_children() const {
    return children_;
  }
  int64_t num_parameters() const;  // elements of the (deduplicated) parameters

  // Parameters then buffers of every module, hierarchical names, registration order.
  NamedTensors state_dict(const std::string& prefix = "") const;
  // Copy values from `state` into this module's tensors (dtype converted, device kept; the
  // tensors keep their identity, so handles held elsewhere see the new values).
  // strict: every name must be present and no extra names allowed; in every mode a shape
  // mismatch is an error. Names matching an entry of `optional` (the whole name or its last
  // components, e.g. "num_batches_tracked") may be absent from `state`, and are ignored when
  // present in `state` but not in the module. Everything is checked before anything is copied:
  // on error nothing changes, and the sc::Error lists every missing, unexpected and
  // shape-mismatched name.
  void load_state_dict(const TensorMap& state, bool strict = true,
                       const std::vector<std::string>& optional = {});

  // Training mode (affects BatchNorm); applies to the whole subtree.
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  // Move / convert every parameter and buffer in place: the TensorImpl of each is kept (so
  // handles such as Linear::weight follow) and gets new storage; parameters stay leaves that
  // require grad, and an existing .grad() is moved / converted with them.
  void to(Device d);
  void to(DType t);  // floating tensors only (I64 / U8 buffers are left as they are)
  void zero_grad();  // every parameter's .grad() becomes undefined (as the optimizers do)

 protected:
  void add_child(const std::string& name, std::shared_ptr<Module> m);
  bool training_ = true;

 private:
  void check_new_name(const std::string& name, const char* what) const;
  // deques: references returned by register_* stay valid as more are added.
  std::deque<std::pair<std::string, Tensor>> params_;
  std::deque<std::pair<std::string, Tensor>> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
};

// y = x W^T + b; x (..., in), W (out, in), b (out). Parameters "weight" and "bias" start at
// zero; initialisation is the caller's choice (see the init helpers below).
class Linear : public Module {
 public:
  Linear(int64_t in, int64_t out, bool bias = true, DType dtype = DType::F32,
         Device device = Device::cpu());
  Tensor forward(const Tensor& x) const;
  Tensor weight;
  Tensor bias;
};

// ---- initialisers (in place, under no-grad; values drawn on the host in double, then
// converted to t's dtype and copied to t's device). t must be a defined floating tensor. ----
void init_normal_(Tensor& t, Generator& gen, double mean, double std);
// Normal(0, std) truncated to [a, b] (PyTorch's trunc_normal_ with mean 0 and absolute bounds
// a, b; note the bounds are NOT in units of std). Requires std >= 0 and a < b.
void init_trunc_normal_(Tensor& t, Generator& gen, double std, double a = -2.0, double b = 2.0);
void init_constant_(Tensor& t, double v);

}  // namespace sc
