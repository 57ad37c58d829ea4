// step_graph.h: engine work captured once as a CUDA graph, then replayed.
//
//   StepGraph g(device);
//   if (g.capture([&] { /* engine ops on device */ })) g.replay();  // the first run
//   ...
//   g.replay();  // again: the same kernels on the same addresses, one launch from the host
//
// capture(fn) runs fn with the device's engine stream under stream capture (relaxed mode), every
// device allocation meanwhile coming from a private pool of the allocator that stays the graph's
// for its life (engine/cuda/device_memory.h; its segments are cudaMalloc'ed during the capture,
// which relaxed mode allows, after the shared cache has given its free segments back to the
// driver: one synchronisation, before the capture), then instantiates the graph. Nothing fn queued
// has run when it returns: replay() runs it. It returns false, with the reason in why(), when the
// capture fails: an operation that cannot be captured (a host synchronisation, a wait on an
// event recorded outside the capture, an algorithm search of cuDNN, ...) or an exception from
// fn; nothing fn queued ran then either. Either way fn's host-side effects happened once: the
// caller accounts for them (model/train_step.h).
//
// What a graph fixes at capture: every kernel's arguments (values that change from run to run
// must come from device memory: e.g. engine/optim.h's set_lr_source), every address it reads and
// writes (inputs are copied into the tensors fn read before each replay; outputs are read or
// copied out after it, before the next replay overwrites them), and the work itself (no host
// decisions inside fn that could go another way on a later run).
//
// Without CUDA (or on a CPU device) capture() returns false and says so.
#pragma once
#include <functional>
#include <memory>
#include <string>

#include "engine/tensor.h"

namespace sc {

class StepGraph {
 public:
  explicit StepGraph(Device device);
  ~StepGraph();
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;

  bool capture(const std::function<void()>& fn);
  void replay();
  bool captured() const;
  const std::string& why() const { return why_; }
  int64_t replays() const { return replays_; }

  struct Impl;  // engine/cuda/step_graph.cpp

 private:
  Device device_;
  std::unique_ptr<Impl> impl_;
  std::string why_;
  int64_t replays_ = 0;
};

}  // namespace sc
