// autograd.h: the define-by-run tape.
//
// Every differentiable op computes its outputs with plain backend calls, then calls
// `record_op(name, inputs, outputs, backward)`. If grad mode is on and an input requires grad, a
// Node is created: it holds edges to the inputs' producers (or to the leaves themselves) and the
// op's backward closure. `Tensor::backward` walks the nodes in reverse topological order.
//
// This is also the engine's custom-op mechanism: code above the engine (model/) can run its own
// fused kernels for the forward pass and attach their backward through record_op, with no change
// to the engine.
//
// Gradient convention: a backward closure receives dL/d(outputs) (outputs never used downstream
// get zeros) and returns dL/d(inputs), one per input, undefined where an input gets no gradient.
// Closures run in no-grad mode. Leaves accumulate (+=) into .grad().
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace sc {

using BackwardFn = std::function<std::vector<Tensor>(const std::vector<Tensor>& dL_doutputs)>;

struct Edge {
  std::shared_ptr<Node> node;         // producer of the input, or null for a leaf / constant
  std::shared_ptr<TensorImpl> leaf;   // the leaf to accumulate into (null when node is set)
  int output_nr = 0;                  // which output of `node`
  // What the input looked like, to check the gradient returned for it.
  Shape shape;
  DType dtype = DType::F32;
  Device device;
  bool active() const { return node != nullptr || leaf != nullptr; }
};

struct Node {
  std::string name;
  std::vector<Edge> inputs;
  std::vector<Shape> output_shapes;
  std::vector<DType> output_dtypes;
  Device device;
  BackwardFn backward;
  bool released = false;
  void release() {
    backward = nullptr;
    released = true;
  }
};

// Grad mode is thread-local and on by default.
bool grad_enabled();
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

// True when an op on these inputs must be recorded.
bool any_requires_grad(const std::vector<Tensor>& inputs);

// Record an op on the tape (a no-op when no input requires grad or grad mode is off).
// Requires: outputs are fresh tensors produced by this op (their grad_fn is overwritten).
void record_op(const std::string& name, const std::vector<Tensor>& inputs,
               const std::vector<Tensor>& outputs, BackwardFn backward);

// Run backward from `root` (see Tensor::backward).
void run_backward(const Tensor& root, const Tensor& grad, bool retain_graph);

}  // namespace sc
