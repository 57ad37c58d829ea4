// grad_ready.h: a call from backward when a leaf's gradient for this pass is complete.
//
// While a GradReadyScope lives on a thread, every run_backward on that thread (Tensor::backward)
// calls fn(leaf) once for each leaf it reaches (a tensor that requires grad and has no grad_fn:
// a parameter), right after the last gradient this pass sends the leaf has been accumulated into
// its .grad() (or dropped, when the op that uses the leaf returned none for it). From then on
// this pass does not touch the leaf's .grad() again. Leaves are reported in the order their last
// contribution arrives, which follows the backward's walk of the graph: the same order for the
// same graph, whatever the values in it. A leaf the pass does not reach is not reported.
//
// This is what data-parallel training needs to start a gradient's all-reduce while the rest of
// backward is still running (engine/grad_buckets.h). The scope nests: an inner one replaces the
// outer one until it ends. Without a scope, backward does no extra work.
#pragma once
#include <functional>

#include "engine/tensor.h"

namespace sc {

using GradReadyFn = std::function<void(TensorImpl& leaf)>;

class GradReadyScope {
 public:
  explicit GradReadyScope(GradReadyFn fn);
  ~GradReadyScope();
  GradReadyScope(const GradReadyScope&) = delete;
  GradReadyScope& operator=(const GradReadyScope&) = delete;

 private:
  GradReadyFn fn_;
  GradReadyFn* previous_;
};

}  // namespace sc
