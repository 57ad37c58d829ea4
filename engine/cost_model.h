// cost_model.h: a predicted GPU time for the work a step asked of the device, from the trace of
// kernels/check.h (start_trace / stop_trace), without a GPU (docs/gpu.md, "A predicted step time").
//
// Per stream operation (kernel launch, library call, memory operation):
//   busy   = max(bytes / (HBM bandwidth * bw_efficiency),
//                flops / (the unit's peak * compute_efficiency))
//   fill   = b / (SMs * ceil(b / SMs)) for a kernel of b blocks (the emulator reports the grid);
//            1 for a library call, a memory operation or an unknown grid. A grid of b < SMs
//            blocks gets b/SMs of the card; a last partial wave idles the rest of the card.
//   device = max(busy / fill, min_op_s)
// The host issues each operation in launch_s (0 inside a CUDA graph) and the device runs them in
// order, each no earlier than its issue: two clocks, host h and device d,
//   h += launch_s;  d = max(d, h) + device          (a host synchronisation: h = max(h, d))
// so the step takes max(sum of device times, host issue time) where one of them dominates
// throughout, and more where they alternate. A phase's time is what it adds to the device clock
// (its device time plus the device's idle wait for the host).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/check.h"

namespace sc {

using kernels::IssueKind;
using kernels::IssueRecord;
using kernels::Unit;

struct DeviceSpec {
  std::string name;
  double hbm_bytes_per_s = 0;  // HBM bandwidth
  int sms = 0;                 // streaming multiprocessors
  double tensor16_flops = 0;   // dense bf16/fp16 tensor cores
  double tf32_flops = 0;       // dense TF32 tensor cores
  double fp32_flops = 0;       // FP32 FMA (SIMT)
  double fp64_flops = 0;       // FP64 (SIMT)
  double launch_s = 0;         // host time to issue one stream operation outside a graph
  double min_op_s = 0;         // the device's least time per operation (an assumption)
  double bw_efficiency = 1;    // achievable fraction of the bandwidth (1: the datasheet's)
  double compute_efficiency = 1;  // achievable fraction of each unit's peak
  double peak(Unit u) const;

  // NVIDIA H100 SXM5 80 GB, the datasheet's dense peaks (docs/gpu.md cites them).
  static DeviceSpec h100_sxm();
  // The same card at fractions commonly achieved (stated in docs/gpu.md): HBM 80 %, tensor
  // cores and FP32 70 %.
  static DeviceSpec h100_sxm_derated();
};

struct IssueCost {
  double bytes_s = 0, flops_s = 0;  // the two floors
  double fill = 1;                  // the fraction of the card the grid can use
  double device_s = 0;              // the predicted device time
};
IssueCost issue_cost(const IssueRecord& r, const DeviceSpec& spec);

struct PhaseCost {
  std::string phase;
  uint64_t kernels = 0, library = 0, memory = 0, syncs = 0;
  double device_s = 0;  // sum of its operations' device times (= its time inside a graph)
  double host_s = 0;    // its host issue time
  double wall_s = 0;    // what it adds to the step outside a graph (the two clocks)
};

struct NamedCost {
  std::string name;  // "issuer [kernel]"
  uint64_t count = 0;
  double device_s = 0;
  double idle_s = 0;  // device_s * (1 - fill): card time its small grids leave unused
  double min_fill = 1;
  uint64_t min_blocks = 0;
};

struct Prediction {
  DeviceSpec spec;
  std::vector<PhaseCost> phases;  // in order of first appearance
  double step_s = 0;              // outside a graph
  double graph_step_s = 0;        // the same operations in one CUDA graph (no launch cost)
  double device_s = 0, host_s = 0;
  std::vector<NamedCost> by_name;  // sorted by device time, largest first
  std::vector<NamedCost> idle;     // sorted by idle time, largest first (idle_s > 0 only)
  uint64_t without_estimate = 0;   // operations whose issuer gave no work (charged min_op_s)
  std::vector<std::string> without_estimate_names;
};
Prediction predict(const std::vector<IssueRecord>& trace, const DeviceSpec& spec);

// The prediction as text: per phase ms and images/s (for `images` per step), the top `top`
// operations by time and by idle card time.
std::string format_prediction(const Prediction& p, int64_t images, int top = 10);

}  // namespace sc
