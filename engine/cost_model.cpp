// cost_model.cpp: see cost_model.h.
#include "engine/cost_model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

namespace sc {

double DeviceSpec::peak(Unit u) const {
  switch (u) {
    case Unit::Tensor16:
      return tensor16_flops;
    case Unit::TF32:
      return tf32_flops;
    case Unit::FP32:
      return fp32_flops;
    case Unit::FP64:
      return fp64_flops;
    case Unit::Memory:
      break;
  }
  return 0;
}

DeviceSpec DeviceSpec::h100_sxm() {
  DeviceSpec s;
  s.name = "H100 SXM (datasheet peaks)";
  s.hbm_bytes_per_s = 3.35e12;
  s.sms = 132;
  s.tensor16_flops = 989.4e12;  // dense BF16/FP16 tensor core (1,979 with sparsity)
  s.tf32_flops = 494.7e12;      // dense TF32 tensor core (989 with sparsity)
  s.fp32_flops = 66.9e12;       // FP32 (FMA counted as 2)
  s.fp64_flops = 33.5e12;       // FP64 SIMT (67 is the FP64 tensor core's, which SIMT kernels do not use)
  s.launch_s = 4e-6;
  s.min_op_s = 1e-6;
  return s;
}

DeviceSpec DeviceSpec::h100_sxm_derated() {
  DeviceSpec s = h100_sxm();
  s.name = "H100 SXM (derated: HBM 80 %, compute 70 %)";
  s.bw_efficiency = 0.8;
  s.compute_efficiency = 0.7;
  return s;
}

IssueCost issue_cost(const IssueRecord& r, const DeviceSpec& spec) {
  IssueCost c;
  if (r.kind == IssueKind::HostSync) return c;
  c.bytes_s = r.bytes / (spec.hbm_bytes_per_s * spec.bw_efficiency);
  const double peak = spec.peak(r.unit);
  c.flops_s = (peak > 0 && r.flops > 0) ? r.flops / (peak * spec.compute_efficiency) : 0.0;
  if (r.kind == IssueKind::Kernel && r.blocks > 0 && spec.sms > 0) {
    const double sms = double(spec.sms);
    const double waves = std::ceil(double(r.blocks) / sms);
    c.fill = double(r.blocks) / (sms * waves);
  }
  c.device_s = std::max(std::max(c.bytes_s, c.flops_s) / c.fill, spec.min_op_s);
  return c;
}

namespace {
std::string display_name(const IssueRecord& r) {
  if (r.kernel.empty() || r.kernel == r.name) return r.name;
  return r.name + " [" + r.kernel + "]";
}
}  // namespace

Prediction predict(const std::vector<IssueRecord>& trace, const DeviceSpec& spec) {
  Prediction p;
  p.spec = spec;
  std::map<std::string, size_t> phase_at;
  std::map<std::string, NamedCost> named;
  std::map<std::string, bool> unestimated;
  double host = 0, dev = 0;
  for (const IssueRecord& r : trace) {
    const std::string ph = r.phase.empty() ? "(no phase)" : r.phase;
    auto it = phase_at.find(ph);
    if (it == phase_at.end()) {
      it = phase_at.emplace(ph, p.phases.size()).first;
      p.phases.push_back(PhaseCost{ph});
    }
    PhaseCost& pc = p.phases[it->second];
    if (r.kind == IssueKind::HostSync) {
      ++pc.syncs;
      host = std::max(host, dev);
      continue;
    }
    if (r.kind == IssueKind::Kernel) ++pc.kernels;
    if (r.kind == IssueKind::Library) ++pc.library;
    if (r.kind == IssueKind::Memory) ++pc.memory;
    const IssueCost c = issue_cost(r, spec);
    const double before = dev;
    host += spec.launch_s;
    dev = std::max(dev, host) + c.device_s;
    pc.wall_s += dev - before;
    pc.device_s += c.device_s;
    pc.host_s += spec.launch_s;
    p.device_s += c.device_s;
    p.host_s += spec.launch_s;
    const std::string name = display_name(r);
    NamedCost& n = named[name];
    n.name = name;
    ++n.count;
    n.device_s += c.device_s;
    n.idle_s += c.device_s * (1.0 - c.fill);
    if (n.count == 1 || c.fill < n.min_fill) {
      n.min_fill = c.fill;
      n.min_blocks = r.blocks;
    }
    if (!r.has_work) {
      ++p.without_estimate;
      unestimated[name] = true;
    }
  }
  p.step_s = std::max(dev, host);
  if (!p.phases.empty()) p.phases.back().wall_s += p.step_s - dev;
  p.graph_step_s = p.device_s;
  for (auto& kv : named) {
    p.by_name.push_back(kv.second);
    if (kv.second.idle_s > 0) p.idle.push_back(kv.second);
  }
  std::sort(p.by_name.begin(), p.by_name.end(),
            [](const NamedCost& a, const NamedCost& b) { return a.device_s > b.device_s; });
  std::sort(p.idle.begin(), p.idle.end(),
            [](const NamedCost& a, const NamedCost& b) { return a.idle_s > b.idle_s; });
  for (auto& kv : unestimated) p.without_estimate_names.push_back(kv.first);
  return p;
}

std::string format_prediction(const Prediction& p, int64_t images, int top) {
  std::string out;
  char line[512];
  auto add = [&](const char* fmt, auto... args) {
    std::snprintf(line, sizeof line, fmt, args...);
    out += line;
  };
  auto ips = [&](double s) { return s > 0 ? double(images) / s : 0.0; };
  add("predicted on %s: %.2f TB/s, %d SMs, bf16 %.0f / TF32 %.0f / FP32 %.1f / FP64 %.1f TFLOP/s, "
      "%.1f us per stream op on the host, >= %.1f us per op on the device\n",
      p.spec.name.c_str(), p.spec.hbm_bytes_per_s * p.spec.bw_efficiency / 1e12, p.spec.sms,
      p.spec.tensor16_flops * p.spec.compute_efficiency / 1e12,
      p.spec.tf32_flops * p.spec.compute_efficiency / 1e12,
      p.spec.fp32_flops * p.spec.compute_efficiency / 1e12,
      p.spec.fp64_flops * p.spec.compute_efficiency / 1e12, p.spec.launch_s * 1e6,
      p.spec.min_op_s * 1e6);
  add("%-16s %6s %6s %6s %5s %10s %10s %10s %12s %12s\n", "phase", "kernel", "lib", "mem", "sync",
      "device ms", "host ms", "step ms", "images/s", "graph img/s");
  for (const PhaseCost& ph : p.phases)
    add("%-16s %6llu %6llu %6llu %5llu %10.3f %10.3f %10.3f %12.0f %12.0f\n", ph.phase.c_str(),
        (unsigned long long)ph.kernels, (unsigned long long)ph.library,
        (unsigned long long)ph.memory, (unsigned long long)ph.syncs, ph.device_s * 1e3,
        ph.host_s * 1e3, ph.wall_s * 1e3, ips(ph.wall_s), ips(ph.device_s));
  add("%-16s %27s %10.3f %10.3f %10.3f %12.0f %12.0f\n", "step", "", p.device_s * 1e3,
      p.host_s * 1e3, p.step_s * 1e3, ips(p.step_s), ips(p.graph_step_s));
  add("top %d by predicted device time:\n", top);
  for (int i = 0; i < top && i < int(p.by_name.size()); ++i) {
    const NamedCost& n = p.by_name[size_t(i)];
    add("  %8.3f ms %5.1f%% %5llu x  %s\n", n.device_s * 1e3, 100.0 * n.device_s / p.device_s,
        (unsigned long long)n.count, n.name.c_str());
  }
  add("top %d leaving the card idle (grid smaller than a full wave of %d SMs):\n", top, p.spec.sms);
  for (int i = 0; i < top && i < int(p.idle.size()); ++i) {
    const NamedCost& n = p.idle[size_t(i)];
    add("  %8.3f ms idle of %8.3f ms %5llu x  smallest grid %llu blocks (%.0f%% of the card)  %s\n",
        n.idle_s * 1e3, n.device_s * 1e3, (unsigned long long)n.count,
        (unsigned long long)n.min_blocks, 100.0 * n.min_fill, n.name.c_str());
  }
  if (p.without_estimate) {
    add("%llu operations without a work estimate (charged the %.1f us floor):",
        (unsigned long long)p.without_estimate, p.spec.min_op_s * 1e6);
    for (const std::string& n : p.without_estimate_names) add(" %s;", n.c_str());
    out += "\n";
  }
  return out;
}

}  // namespace sc
