// bench_train_step: images/s of the full SlotCon training step as `slotcon train` runs it
// (model/train_step.h: teacher EMA, student and teacher forward on both views, fused head loss,
// backward, LARS, the center update), at the authors' per-GPU scale by default: ResNet-50, 224 px,
// batch 64, K 256, D 256, H 4096, bf16 activations with fp32 master weights. Data loading is not
// included (the crops are fixed random tensors already on the device), as in the baseline.
//
// The baseline, bench/train_step_torch.py (the same step in PyTorch, channels_last + bf16
// autocast), runs afterwards in the same invocation with the same settings; the last line is
//   RESULT train_step images_per_s=<engine> torch_images_per_s=<baseline> ratio=<engine/torch>
//
// Without a GPU it measures a small CPU configuration instead (ResNet-18, 64 px, batch 8, K 16,
// fp32) unless sizes are given, and says so: a CPU figure, not the goal's.
//
// usage: bench_train_step [--arch A] [--size S] [--batch B] [--K K] [--dim-hidden H]
//                         [--dim-out D] [--warmup N] [--steps N] [--precision fp32|bf16]
//                         [--channels-last on|off] [--no-baseline] [--script PATH]
//                         [--compact-predictor on|off|both] [--predict h100] [--profile]
//                         [--cuda-graph on|off] [--fused on|off]
// (channels-last: NHWC backbone, on by default on the GPU as `slotcon train`'s auto setting;
// compact-predictor: the slot predictor on the compacted present rows (on, the default) or on all
// B*K rows with BatchNorm masks (off); `both` alternates the two step by step in one run, in ABBA
// order, so that a machine shared with other work slows both alike, and prints each median and
// their ratio; profile: on the CPU, the timed steps' mean milliseconds in the convolution and
// batch-norm kernels, per pass, and the rest of the step: nn_ops.h's cpu_nn_op_times;
// cuda-graph on: the step captured as a CUDA graph after its warm-up and replayed, as
// `slotcon train --cuda_graph on`; the timed steps are replays: at least 3 warm-up steps then;
// fused off: the head's losses composed from plain engine ops, the fused kernels' baseline, which
// reads the valid query count back to the host and so cannot be captured)
//
// --predict h100: instead of timing, trace one step (after the warm-up) and print its predicted
// time on an H100 SXM by phase (engine/cost_model.h, docs/gpu.md "A predicted step time"). On
// the CUDA emulator's build the steps run as a dry run (counted and checked, not computed), so
// the authors' shape takes seconds; --execute runs them in full.
#include "model/train_step.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench_baseline.h"
#include "engine/autograd.h"
#include "engine/blas_threads.h"
#include "engine/cost_model.h"
#include "engine/cuda_runtime.h"
#include "engine/nn_ops.h"
#include "engine/ops.h"
#include "kernels/parallel.h"
#include "model/slotcon.h"
#if defined(SLOTCON_CUDA_EMU)
#include "cuda_emu_control.h"
#endif

using namespace sc;

int main(int argc, char** argv) {
  restart_with_blas_thread_timeout(argv, "bench_train_step");  // as slotcon does
  const bool gpu = cuda_available();
  TrainConfig cfg;
  cfg.arch = gpu ? "resnet50" : "resnet18";
  cfg.image_size = gpu ? 224 : 64;
  cfg.batch_size = gpu ? 64 : 8;
  cfg.num_prototypes = gpu ? 256 : 16;
  cfg.dim_hidden = gpu ? 4096 : 256;
  cfg.dim_out = gpu ? 256 : 64;
  cfg.cuda_graph = "off";  // the plain step unless --cuda-graph on (slotcon train's is auto)
  int warmup = gpu ? 5 : 1, steps = gpu ? 20 : 3;
  std::string precision = gpu ? "bf16" : "fp32", script;
  bool baseline = true, nhwc = gpu, profile = false;
  std::string compact = "on", predict, fused = "on";
  bool execute = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_train_step: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--arch") cfg.arch = next();
    else if (a == "--size") cfg.image_size = std::atol(next().c_str());
    else if (a == "--batch") cfg.batch_size = std::atol(next().c_str());
    else if (a == "--K") cfg.num_prototypes = std::atol(next().c_str());
    else if (a == "--dim-hidden") cfg.dim_hidden = std::atol(next().c_str());
    else if (a == "--dim-out") cfg.dim_out = std::atol(next().c_str());
    else if (a == "--warmup") warmup = std::atoi(next().c_str());
    else if (a == "--steps") steps = std::atoi(next().c_str());
    else if (a == "--precision") precision = next();
    else if (a == "--no-baseline") baseline = false;
    else if (a == "--channels-last") nhwc = next() == "on";
    else if (a == "--script") script = next();
    else if (a == "--compact-predictor") compact = next();
    else if (a == "--predict") predict = next();
    else if (a == "--execute") execute = true;
    else if (a == "--fused") fused = next();
    else if (a == "--profile") profile = true;
    else if (a == "--cuda-graph")
      cfg.cuda_graph = next();
    else {
      std::fprintf(stderr, "bench_train_step: unknown option %s (see the file's header)\n",
                   a.c_str());
      return 2;
    }
  }
  if (!predict.empty()) {
    if (predict != "h100") {
      std::fprintf(stderr, "bench_train_step: --predict knows h100 only\n");
      return 2;
    }
    if (!gpu) {
      std::fprintf(stderr, "bench_train_step: --predict counts a GPU step: it needs a CUDA build "
                           "(or the CUDA emulator's)\n");
      return 2;
    }
#if defined(SLOTCON_CUDA_EMU)
    if (!execute) emu::set_dry_run(true);
#endif
    baseline = false;
    warmup = std::max(warmup, 2);
  }
  if (!gpu && precision != "fp32") {
    std::printf("bench_train_step: precision %s needs a GPU; the CPU runs fp32\n",
                precision.c_str());
    precision = "fp32";
  }
  cfg.precision = precision;
  cfg.channels_last = nhwc ? "on" : "off";
  if (cfg.cuda_graph != "on" && cfg.cuda_graph != "off") {
    std::fprintf(stderr, "bench_train_step: --cuda-graph takes on or off\n");
    return 2;
  }
  if (fused != "on" && fused != "off") {
    std::fprintf(stderr, "bench_train_step: --fused takes on or off\n");
    return 2;
  }
  if (cfg.cuda_graph == "on") warmup = std::max(warmup, int(TrainStep::kGraphWarmupSteps) + 1);
  const Device dev = gpu ? Device::cuda(0) : Device::cpu();
  const std::string where = gpu ? cuda_device_name(0) : std::string("the CPU");
  if (!gpu)
    std::printf("bench_train_step: no CUDA device; measuring a small CPU configuration (the "
                "goal's figure needs the GPU)\n");

  SlotConModel model(cfg, dev, 0);
  model.train();
  model.set_fused(fused == "on");
  TrainStep train(model, resolve_train_options(cfg, dev), cfg);
  const DType compute = train.options().compute_dtype();
  const double lr = cfg.base_lr * double(cfg.batch_size) / 256.0;

  Generator gen(1);
  const int64_t B = cfg.batch_size, S = cfg.image_size;
  TwoViewBatch batch;
  for (int v = 0; v < 2; ++v) {
    batch.crops[v] = cast(randn({B, 3, S, S}, gen, DType::F32, Device::cpu()), compute).to(dev);
    // overlap boxes inside each view, every other image flipped (as bench/train_step_torch.py)
    std::vector<double> box, flag;
    for (int64_t b = 0; b < B; ++b) {
      const double x = 0.5 * double((b * 37 + v * 11) % 100) / 100.0,
                   y = 0.5 * double((b * 53 + v * 7) % 100) / 100.0;
      box.insert(box.end(), {x, y, x + 0.5, y + 0.5});
      flag.push_back(double((b + v) % 2));
    }
    batch.coords[v] = from_vector(box, {B, 4}, DType::F32).to(dev);
    batch.flags[v] = from_vector(flag, {B}, DType::U8).to(dev);
  }

  if (compact != "on" && compact != "off" && compact != "both") {
    std::fprintf(stderr, "bench_train_step: --compact-predictor takes on, off or both\n");
    return 2;
  }
  const bool alternate = compact == "both";
  model.set_compact_predictor(compact != "off");
  if (!predict.empty()) {
    for (int i = 0; i < warmup; ++i) train.run(batch, lr, 0.99);
    cuda_synchronize(0);
    const DeviceCounters c0 = device_counters();
    kernels::start_trace();
    train.run(batch, lr, 0.99);
    const std::vector<IssueRecord> trace = kernels::stop_trace();
    const DeviceCounters c = device_counters() - c0;
    std::printf("bench_train_step --predict h100: %s, %ldpx, batch %ld, K %ld, D %ld, H %ld, %s%s%s; "
                "one step after %d warm-up steps: %llu kernel launches + %llu library calls + %llu "
                "memory ops = %llu stream ops, %llu host synchronisations\n",
                cfg.arch.c_str(), long(S), long(B), long(cfg.num_prototypes), long(cfg.dim_out),
                long(cfg.dim_hidden), precision.c_str(), nhwc ? " channels_last" : "",
                execute ? "" : " (dry run on the emulator where it is one)", warmup,
                (unsigned long long)c.kernel_launches, (unsigned long long)c.library_calls,
                (unsigned long long)c.memory_ops, (unsigned long long)c.stream_ops(),
                (unsigned long long)c.host_syncs);
    if (const char* path = std::getenv("SLOTCON_TRACE_TSV")) {  // every record, for a closer look
      if (FILE* f = std::fopen(path, "w")) {
        std::fprintf(f, "phase\tkind\tname\tkernel\tblocks\tthreads\tbytes\tflops\tunit\tdevice_us\n");
        const DeviceSpec spec = DeviceSpec::h100_sxm();
        for (const IssueRecord& r : trace)
          std::fprintf(f, "%s\t%d\t%s\t%s\t%llu\t%llu\t%.0f\t%.0f\t%d\t%.3f\n", r.phase.c_str(),
                       int(r.kind), r.name.c_str(), r.kernel.c_str(), (unsigned long long)r.blocks,
                       (unsigned long long)r.threads, r.bytes, r.flops, int(r.unit),
                       issue_cost(r, spec).device_s * 1e6);
        std::fclose(f);
      }
    }
    for (const DeviceSpec& spec : {DeviceSpec::h100_sxm(), DeviceSpec::h100_sxm_derated()}) {
      const Prediction p = ::sc::predict(trace, spec);
      std::printf("\n%s", format_prediction(p, B).c_str());
      std::printf("RESULT predict_h100 spec=\"%s\" step_ms=%.3f images_per_s=%.1f "
                  "graph_images_per_s=%.1f\n",
                  spec.name.c_str(), p.step_s * 1e3, double(B) / p.step_s,
                  double(B) / p.graph_step_s);
    }
    return 0;
  }
  std::vector<double> ms, ms_masked;
  DeviceCounters last;  // what the last step asked of the GPU (zeros on the CPU)
  for (int i = 0; i < (alternate ? 2 : 1) * (warmup + steps); ++i) {
    // ABBA order (compact, masked, masked, compact, ...): a cost that depends on a step's place
    // in the pair (a cache, the allocator, idle BLAS threads waking) falls on both alike.
    const bool masked_step = alternate && ((i % 2) ^ ((i / 2) % 2)) == 1;
    if (alternate) model.set_compact_predictor(!masked_step);
    if (gpu) cuda_synchronize(0);
    if (i == (alternate ? 2 : 1) * warmup) reset_cpu_nn_op_times();
    const DeviceCounters c0 = device_counters();
    auto t0 = std::chrono::steady_clock::now();
    train.run(batch, lr, 0.99);
    if (gpu) cuda_synchronize(0);
    auto t1 = std::chrono::steady_clock::now();
    last = device_counters() - c0;
    if (i / (alternate ? 2 : 1) >= warmup)
      (masked_step ? ms_masked : ms)
          .push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  if (alternate) {
    std::sort(ms_masked.begin(), ms_masked.end());
    std::vector<double> c = ms;
    std::sort(c.begin(), c.end());
    const double mm = ms_masked[ms_masked.size() / 2], mc = c[c.size() / 2];
    std::printf("slot predictor: masked (all B*K rows) %.1f ms/step, compact (present rows) %.1f "
                "ms/step, median of %d alternating steps each: masked / compact = %.3f\n",
                mm, mc, steps, mm / mc);
  }
  if (profile && !gpu) {
    const CpuNnOpTimes t = cpu_nn_op_times();
    double total = 0;
    for (double m : ms) total += m;
    for (double m : ms_masked) total += m;
    const double n = double(ms.size() + ms_masked.size()), k = 1000.0 / n;
    const double conv = t.conv_forward + t.conv_backward_data + t.conv_backward_weight;
    const double bn = t.batch_norm_forward + t.batch_norm_backward;
    const CpuConvImpl ci = cpu_conv_impl();
    std::printf(
        "profile (mean of %d steps, ms/step; CPU convolutions: %s, batch norm: %s): step "
        "%.1f = conv %.1f (forward %.1f, backward-data %.1f, backward-weight %.1f) + "
        "batch norm %.1f (forward %.1f, backward %.1f) + rest %.1f\n",
        int(n),
        ci == CpuConvImpl::OneDnn         ? "oneDNN, Winograd where eligible"
        : ci == CpuConvImpl::OneDnnDirect ? "oneDNN direct"
                                          : "im2col + BLAS",
        cpu_bn_impl() == CpuBnImpl::Fast ? "vectorised" : "reference", total / n, conv * k,
        t.conv_forward * k, t.conv_backward_data * k, t.conv_backward_weight * k, bn * k,
        t.batch_norm_forward * k, t.batch_norm_backward * k, total / n - (conv + bn) * k);
  }
  if (!train.graph_note().empty()) std::printf("%s\n", train.graph_note().c_str());
  std::sort(ms.begin(), ms.end());
  const double med = ms[ms.size() / 2], ips = 1000.0 * double(B) / med;
  std::printf("bench_train_step (engine) on %s: %s, %ldpx, batch %ld, K %ld, D %ld, H %ld, %s%s%s: "
              "%.1f ms/step, %.1f images/s (median of %d, min %.1f ms)\n",
              where.c_str(), cfg.arch.c_str(), long(S), long(B), long(cfg.num_prototypes),
              long(cfg.dim_out), long(cfg.dim_hidden), precision.c_str(),
              nhwc ? " channels_last" : "", fused == "on" ? "" : ", unfused head", med, ips,
              steps, ms.front());
  const bool replayed = train.graph() != nullptr;
  if (replayed)
    std::printf(
        "(the timed steps were CUDA graph replays: one cudaGraphLaunch each, besides the "
        "stream ops counted below: the inputs' and the record's copies)\n");

  if (gpu)  // the timing's own cuda_synchronize is counted among the host synchronisations
    std::printf("per step (counted): %llu kernel launches + %llu library calls + %llu memory ops "
                "= %llu stream ops; %llu host synchronisations; %llu device allocations; "
                "host-to-device %llu B in %llu copies, device-to-host %llu B in %llu copies\n",
                (unsigned long long)last.kernel_launches, (unsigned long long)last.library_calls,
                (unsigned long long)last.memory_ops, (unsigned long long)last.stream_ops(),
                (unsigned long long)last.host_syncs, (unsigned long long)last.device_mallocs,
                (unsigned long long)last.h2d_bytes, (unsigned long long)last.h2d_copies,
                (unsigned long long)last.d2h_bytes, (unsigned long long)last.d2h_copies);

  // Where the device time goes, measured: one more plain step with CUDA events at every phase
  // change (engine/cuda_runtime.h, start_phase_timing), printed beside the cost model's phases
  // (docs/gpu.md, "The prediction now") so that a disagreement names its phase.
  // The same step is the one a profiler started with "--profile-from-start off" records
  // (scripts/gpu_check.sh's profile stage: ncu's time of every kernel of one steady step).
  if (gpu && !replayed) {
    cuda_synchronize(0);
    cuda_profiler_start();
    start_phase_timing();
    train.run(batch, lr, 0.99);
    const std::vector<PhaseTime> phases = stop_phase_timing();
    cuda_profiler_stop();
    double total = 0;
    for (const PhaseTime& p : phases) total += p.ms;
    std::printf("device time by phase (one plain step, CUDA events at each phase change): %.2f ms\n",
                total);
    std::string line;
    for (const PhaseTime& p : phases) {
      const std::string name = p.phase.empty() ? "(outside)" : p.phase;
      std::printf("  %-18s %8.3f ms  %5.1f %%  (%d interval%s)\n", name.c_str(), p.ms,
                  total > 0 ? 100.0 * p.ms / total : 0.0, p.intervals, p.intervals == 1 ? "" : "s");
      std::string key = name;
      for (char& c : key)
        if (c == ' ' || c == '(' || c == ')') c = '_';
      char buf[96];
      std::snprintf(buf, sizeof buf, " %s=%.3f", key.c_str(), p.ms);
      line += buf;
    }
    std::printf("RESULT phases_ms total=%.3f%s\n", total, line.c_str());
  }

  std::optional<double> torch_ips;
  if (baseline) {
    const std::string path = bench::find_script("bench/train_step_torch.py", script);
    if (path.empty()) {
      std::printf("baseline: bench/train_step_torch.py not found; pass --script PATH\n");
    } else {
      char args[512];
      std::snprintf(args, sizeof args,
                    "bench --device %s --arch %s --size %ld --batch %ld --K %ld --dim-hidden %ld "
                    "--dim-out %ld --dtype %s --warmup %d --iters %d%s --threads %d",
                    gpu ? "cuda" : "cpu", cfg.arch.c_str(), long(S), long(B),
                    long(cfg.num_prototypes), long(cfg.dim_hidden), long(cfg.dim_out),
                    precision.c_str(), warmup, steps, nhwc ? "" : " --no-channels-last",
                    gpu ? 0 : cpu_threads());
      torch_ips = bench::run_baseline(path, args);
    }
  }
  if (torch_ips && *torch_ips > 0) {
    std::printf("the engine's step takes %.2fx PyTorch's time%s\n", *torch_ips / ips,
                gpu ? "" : " (the CPU goal: at most 0.8x, docs/cpu_profile.md)");
    std::printf("RESULT train_step images_per_s=%.1f torch_images_per_s=%.1f ratio=%.2f (%s)%s\n",
                ips, *torch_ips, ips / *torch_ips, where.c_str(), replayed ? " graph" : "");
  } else {
    std::printf("RESULT train_step images_per_s=%.1f torch_images_per_s=n/a (%s)%s\n", ips,
                where.c_str(), replayed ? " graph" : "");
  }
  return 0;
}
