#include "engine/autograd.h"

#include <unordered_map>
#include <unordered_set>

#include "engine/backend.h"
#include "engine/grad_ready.h"
#include "engine/ops.h"

namespace sc {
namespace {
thread_local bool t_grad_enabled = true;
thread_local GradReadyFn* t_grad_ready = nullptr;  // the innermost GradReadyScope's call
}  // namespace

GradReadyScope::GradReadyScope(GradReadyFn fn) : fn_(std::move(fn)), previous_(t_grad_ready) {
  t_grad_ready = fn_ ? &fn_ : nullptr;
}
GradReadyScope::~GradReadyScope() { t_grad_ready = previous_; }

bool grad_enabled() { return t_grad_enabled; }
NoGradGuard::NoGradGuard() : prev_(t_grad_enabled) { t_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { t_grad_enabled = prev_; }

bool any_requires_grad(const std::vector<Tensor>& inputs) {
  if (!t_grad_enabled) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

void record_op(const std::string& name, const std::vector<Tensor>& inputs,
               const std::vector<Tensor>& outputs, BackwardFn backward) {
  if (!any_requires_grad(inputs)) return;
  auto node = std::make_shared<Node>();
  node->name = name;
  node->backward = std::move(backward);
  for (const Tensor& t : inputs) {
    Edge e;
    if (t.defined()) {
      e.shape = t.shape();
      e.dtype = t.dtype();
      e.device = t.device();
      if (t.requires_grad()) {
        if (t.grad_fn()) {
          e.node = t.grad_fn();
          e.output_nr = t.impl()->output_nr;
        } else {
          e.leaf = t.impl_ptr();
        }
      }
    }
    node->inputs.push_back(std::move(e));
  }
  for (size_t i = 0; i < outputs.size(); ++i) {
    const Tensor& o = outputs[i];
    SC_CHECK(o.defined(), "record_op(", name, "): output ", i, " is undefined");
    node->output_shapes.push_back(o.shape());
    node->output_dtypes.push_back(o.dtype());
    node->device = o.device();
    if (!is_floating(o.dtype())) continue;  // index outputs carry no gradient
    o.impl()->grad_fn = node;
    o.impl()->output_nr = int(i);
    o.impl()->requires_grad = true;
  }
}

namespace {

// dst = dst + src (out of place: gradients handed between nodes may be shared).
void accumulate(Tensor& dst, const Tensor& src) {
  dst = dst.defined() ? add(dst, src) : src;
}

void check_grad(const Node& node, size_t i, const Tensor& g) {
  const Edge& e = node.inputs[i];
  SC_CHECK(g.shape() == e.shape, "backward of '", node.name, "': gradient for input ", i,
           " has shape ", shape_str(g.shape()), " but the input has shape ", shape_str(e.shape));
  SC_CHECK(g.dtype() == e.dtype, "backward of '", node.name, "': gradient for input ", i,
           " is ", dtype_name(g.dtype()), " but the input is ", dtype_name(e.dtype));
  SC_CHECK(g.device() == e.device, "backward of '", node.name, "': gradient for input ", i,
           " is on ", g.device().str(), " but the input is on ", e.device.str());
}

void accumulate_leaf(TensorImpl& leaf, const Tensor& g) {
  if (!leaf.grad.defined()) {
    // Own a fresh copy so that later in-place accumulation never writes into another tensor, in
    // the gradient's own memory format: a channels-last convolution weight's gradient stays
    // channels-last, as its weight is (a contiguous copy transposed it, and the optimizer then
    // transposed it back: docs/gpu.md, "The third card session").
    Tensor c = empty_like(g);
    copy_(c, g);
    leaf.grad = c;
  } else {
    add_(leaf.grad, g);
  }
}

}  // namespace

void run_backward(const Tensor& root, const Tensor& grad_in, bool retain_graph) {
  SC_CHECK(root.defined(), "backward: called on an undefined tensor");
  SC_CHECK(root.requires_grad(),
           "backward: the tensor does not require grad (no input of the computation that made "
           "it requires grad, or it was computed under NoGradGuard)");
  Tensor grad = grad_in;
  if (!grad.defined()) {
    SC_CHECK(root.numel() == 1, "backward: the tensor has shape ", shape_str(root.shape()),
             "; pass a gradient for a non-scalar output");
    grad = full(root.shape(), 1.0, root.dtype(), root.device());
  } else {
    SC_CHECK(grad.shape() == root.shape(), "backward: gradient shape ", shape_str(grad.shape()),
             " does not match tensor shape ", shape_str(root.shape()));
    SC_CHECK(grad.dtype() == root.dtype() && grad.device() == root.device(),
             "backward: gradient is ", dtype_name(grad.dtype()), " on ", grad.device().str(),
             " but the tensor is ", dtype_name(root.dtype()), " on ", root.device().str());
  }
  NoGradGuard ng;
  GradReadyFn* const ready_fn = t_grad_ready;
  if (!root.grad_fn()) {  // a leaf
    accumulate_leaf(*root.impl(), grad);
    if (ready_fn) (*ready_fn)(*root.impl());
    return;
  }
  // Count, for every node reachable from the root, how many edges point at it (and, for the
  // GradReadyScope's call, at every leaf).
  std::unordered_map<Node*, int> deps;
  std::unordered_map<TensorImpl*, int> leaf_deps;
  std::vector<Node*> stack{root.grad_fn().get()};
  std::unordered_set<Node*> seen{stack[0]};
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (const Edge& e : n->inputs) {
      if (ready_fn && e.leaf) leaf_deps[e.leaf.get()]++;
      if (!e.node) continue;
      deps[e.node.get()]++;
      if (seen.insert(e.node.get()).second) stack.push_back(e.node.get());
    }
  }
  // A leaf's last contribution of this pass has been handled: report it.
  auto leaf_done = [&](const Edge& e) {
    if (ready_fn && --leaf_deps[e.leaf.get()] == 0) (*ready_fn)(*e.leaf);
  };
  // Keep nodes alive while we work even if outputs drop them.
  std::shared_ptr<Node> root_node = root.grad_fn();
  std::unordered_map<Node*, std::vector<Tensor>> pending;
  pending[root_node.get()].resize(root_node->output_shapes.size());
  accumulate(pending[root_node.get()][root.impl()->output_nr], grad);

  std::vector<std::shared_ptr<Node>> ready{root_node};
  while (!ready.empty()) {
    std::shared_ptr<Node> node = ready.back();
    ready.pop_back();
    SC_CHECK(!node->released,
             "backward: the graph through op '", node->name, "' has already been freed by an "
             "earlier backward; call backward(grad, /*retain_graph=*/true) the first time if you "
             "need to go through it twice");
    std::vector<Tensor> gouts = std::move(pending[node.get()]);
    pending.erase(node.get());
    gouts.resize(node->output_shapes.size());
    for (size_t i = 0; i < gouts.size(); ++i) {
      if (!gouts[i].defined())
        gouts[i] = zeros(node->output_shapes[i], node->output_dtypes[i], node->device);
    }
    std::vector<Tensor> gins = node->backward(gouts);
    SC_CHECK(gins.size() == node->inputs.size(), "backward of '", node->name, "' returned ",
             gins.size(), " gradients for ", node->inputs.size(), " inputs");
    for (size_t i = 0; i < gins.size(); ++i) {
      const Edge& e = node->inputs[i];
      if (!e.active() || !gins[i].defined()) {
        if (e.node && --deps[e.node.get()] == 0) ready.push_back(e.node);
        if (e.leaf) leaf_done(e);
        continue;
      }
      check_grad(*node, i, gins[i]);
      if (e.node) {
        auto& slot = pending[e.node.get()];
        slot.resize(e.node->output_shapes.size());
        accumulate(slot[e.output_nr], gins[i]);
        if (--deps[e.node.get()] == 0) ready.push_back(e.node);
      } else {
        accumulate_leaf(*e.leaf, gins[i]);
        leaf_done(e);
      }
    }
    if (!retain_graph) node->release();
  }
}

}  // namespace sc
