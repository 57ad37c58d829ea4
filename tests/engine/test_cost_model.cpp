// The cost model (engine/cost_model.h) on examples computed by hand, and the trace it reads
// (kernels/check.h) on the CPU: off by default, records only while on, phases from DevicePhase.
#include <catch2/catch.hpp>

#include "engine/cost_model.h"
#include "engine/cuda_runtime.h"

using namespace sc;

namespace {
IssueRecord rec(IssueKind kind, const char* name, uint64_t blocks, double bytes, double flops,
                Unit unit, const char* phase = "p") {
  IssueRecord r;
  r.kind = kind;
  r.name = name;
  r.phase = phase;
  r.blocks = blocks;
  r.threads = blocks ? 256 : 0;
  r.bytes = bytes;
  r.flops = flops;
  r.unit = unit;
  r.has_work = true;
  return r;
}
}  // namespace

TEST_CASE("cost model: memory-bound, compute-bound and small-grid operations by hand",
          "[cost_model]") {
  const DeviceSpec h = DeviceSpec::h100_sxm();
  REQUIRE(h.hbm_bytes_per_s == 3.35e12);
  REQUIRE(h.sms == 132);

  // A memory-bound kernel: 3.35 GB over 3.35 TB/s is 1 ms; its 1 GFLOP of FP32 would take 15 us.
  // 1320 blocks are exactly 10 waves of 132: the whole card.
  const IssueCost m = issue_cost(rec(IssueKind::Kernel, "copy", 1320, 3.35e9, 1e9, Unit::FP32), h);
  CHECK(m.fill == Approx(1.0));
  CHECK(m.bytes_s == Approx(1e-3));
  CHECK(m.flops_s == Approx(1e9 / 66.9e12));
  CHECK(m.device_s == Approx(1e-3));

  // A compute-bound GEMM, m = n = k = 8192 in bf16 (a library call: grid unknown, whole card):
  // 2 * 8192^3 = 1.0995e12 FLOPs over 989.4 TFLOP/s = 1.1113 ms; its three 128 MiB matrices,
  // 402.65 MB, would take 0.120 ms.
  const double n = 8192;
  const IssueCost g = issue_cost(
      rec(IssueKind::Library, "gemm", 0, 3 * n * n * 2, 2 * n * n * n, Unit::Tensor16), h);
  CHECK(g.fill == 1.0);
  CHECK(g.bytes_s == Approx(402.653184e6 / 3.35e12));
  CHECK(g.device_s == Approx(1.0995116e12 / 989.4e12).epsilon(1e-6));
  CHECK(g.device_s == Approx(1.1113e-3).epsilon(1e-3));
  // the same GEMM in TF32 takes twice as long, on FP32 FMA ~14.8x
  CHECK(issue_cost(rec(IssueKind::Library, "gemm", 0, 0, 2 * n * n * n, Unit::TF32), h).device_s ==
        Approx(1.0995116e12 / 494.7e12).epsilon(1e-6));
  CHECK(issue_cost(rec(IssueKind::Library, "gemm", 0, 0, 2 * n * n * n, Unit::FP32), h).device_s ==
        Approx(1.0995116e12 / 66.9e12).epsilon(1e-6));

  // A one-block kernel gets 1/132 of the card: 33.5 MB, 10 us on the whole card, is charged
  // 1.32 ms; 66 blocks get half of it (20 us).
  const IssueCost one = issue_cost(rec(IssueKind::Kernel, "norm", 1, 33.5e6, 0, Unit::FP32), h);
  CHECK(one.fill == Approx(1.0 / 132));
  CHECK(one.device_s == Approx(1.32e-3));
  CHECK(issue_cost(rec(IssueKind::Kernel, "half", 66, 33.5e6, 0, Unit::FP32), h).device_s ==
        Approx(20e-6));
  // 133 blocks need two waves: 133 / 264 of the card.
  CHECK(issue_cost(rec(IssueKind::Kernel, "tail", 133, 33.5e6, 0, Unit::FP32), h).fill ==
        Approx(133.0 / 264));
  // an empty operation costs the device's floor
  CHECK(issue_cost(rec(IssueKind::Memory, "memset", 0, 0, 0, Unit::Memory), h).device_s ==
        Approx(h.min_op_s));
  // derating: 80 % of the bandwidth, 70 % of the peak
  const DeviceSpec d = DeviceSpec::h100_sxm_derated();
  CHECK(issue_cost(rec(IssueKind::Kernel, "copy", 1320, 3.35e9, 0, Unit::FP32), d).device_s ==
        Approx(1.25e-3));
  CHECK(issue_cost(rec(IssueKind::Library, "gemm", 0, 0, 989.4e12, Unit::Tensor16), d).device_s ==
        Approx(1.0 / 0.7));
}

TEST_CASE("cost model: the host and device clocks, phases, a graph, the named lists",
          "[cost_model]") {
  DeviceSpec s = DeviceSpec::h100_sxm();
  s.launch_s = 4e-6;
  s.min_op_s = 1e-6;
  // Phase a: 10 tiny kernels (1 us each on the device, 4 us each to issue): host bound; the
  // last is issued at 40 us and ends at 41 us. Phase b: one 1 ms copy: device bound; it starts
  // when issued (44 us) and ends at 1.044 ms, adding 1.003 ms.
  // A host synchronisation, then phase c: one tiny kernel issued at 1.044 + 0.004 ms.
  std::vector<IssueRecord> t;
  for (int i = 0; i < 10; ++i) t.push_back(rec(IssueKind::Kernel, "tiny", 1320, 0, 0, Unit::FP32, "a"));
  t.push_back(rec(IssueKind::Kernel, "big", 1320, 3.35e9, 0, Unit::FP32, "b"));
  IssueRecord sync;
  sync.kind = IssueKind::HostSync;
  sync.phase = "b";
  t.push_back(sync);
  t.push_back(rec(IssueKind::Kernel, "small grid", 2, 0, 0, Unit::FP32, "c"));
  const Prediction p = predict(t, s);
  REQUIRE(p.phases.size() == 3);
  CHECK(p.phases[0].phase == "a");
  CHECK(p.phases[0].kernels == 10);
  CHECK(p.phases[0].wall_s == Approx(41e-6));  // the device waits for the host: 4 us apart
  CHECK(p.phases[0].device_s == Approx(10e-6));
  CHECK(p.phases[1].wall_s == Approx(1e-3 + 3e-6));  // issued at 44 us, 1 ms long
  CHECK(p.phases[1].syncs == 1);
  CHECK(p.phases[2].wall_s == Approx(4e-6 + 1e-6));  // the host waited; issue 4 us, run 1 us
  CHECK(p.step_s == Approx(40e-6 + 1.004e-3 + 5e-6));
  CHECK(p.graph_step_s == Approx(10e-6 + 1e-3 + 1e-6));  // no launch cost: device time only
  CHECK(p.host_s == Approx(12 * 4e-6));
  REQUIRE(p.by_name.size() == 3);
  CHECK(p.by_name[0].name == "big");
  CHECK(p.by_name[1].name == "tiny");
  CHECK(p.by_name[1].count == 10);
  REQUIRE(p.idle.size() == 1);  // only the 2-block grid leaves the card idle
  CHECK(p.idle[0].name == "small grid");
  CHECK(p.idle[0].min_blocks == 2);
  CHECK(p.idle[0].idle_s == Approx(1e-6 * (1 - 2.0 / 132)));
  CHECK(p.without_estimate == 0);
  const std::string text = format_prediction(p, 64);
  CHECK(text.find("small grid") != std::string::npos);
}

TEST_CASE("device trace: off by default, records only while on, with the phase", "[cost_model]") {
  CHECK_FALSE(kernels::tracing());
  kernels::note_memory_op("not traced");
  kernels::start_trace();
  CHECK(kernels::tracing());
  {
    DevicePhase outer("outer");
    SC_TRACE_WORK(100, 7, FP32);
    kernels::note_kernel_launch("k");
    {
      DevicePhase inner("inner");
      kernels::note_library_call("lib");
    }
    kernels::note_memory_op("mem");  // no work given: has_work false
  }
  const std::vector<IssueRecord> t = kernels::stop_trace();
  CHECK_FALSE(kernels::tracing());
  kernels::note_kernel_launch("after");
  REQUIRE(t.size() == 3);
  CHECK(t[0].name == "k");
  CHECK(t[0].phase == "outer");
  CHECK(t[0].bytes == 100);
  CHECK(t[0].flops == 7);
  CHECK(t[0].unit == Unit::FP32);
  CHECK(t[0].has_work);
  CHECK(t[1].kind == IssueKind::Library);
  CHECK(t[1].phase == "inner");
  CHECK_FALSE(t[1].has_work);  // the work noted before "k" was consumed by "k"
  CHECK(t[2].phase == "outer");
  CHECK(std::string(kernels::current_phase()).empty());
}
