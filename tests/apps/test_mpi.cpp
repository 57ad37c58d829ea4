// `slotcon train` on several processes under mpirun on the CPU (--device cpu, also where a GPU and
// the NCCL backend are present; tests/cuda_emu/test_app_emu.cpp has the GPUs): the state after
// two steps is what the loopback communicator computes in one process (SGD and LARS); with no
// contrast term, two processes on four images each equal one process on eight; the loader shards
// the data and rank 0 alone writes; a checkpoint of two processes resumes on one; a configuration
// that differs between ranks is refused; a rank that stops answering ends the other with the
// communicator's timeout, and a killed one ends the job. Skipped (exit 77) when this build has no
// MPI or mpirun is not installed.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <regex>
#include <thread>

#include "app_test_util.h"
#include "data/loader.h"
#include "engine/comm.h"
#include "engine/ops.h"
#include "engine/safetensors.h"
#include "model/schedule.h"
#include "model/train_step.h"
#include "state_moves.h"

using namespace sc;
namespace fs = std::filesystem;
using app_test::Run;

namespace {

void skip_without_mpi() {
  if (!comm_has_mpi()) {
    std::printf("SKIP: MPI tests: this build has no MPI (install libopenmpi-dev)\n");
    std::exit(77);
  }
  if (app_test::run_command("command -v mpirun").code() != 0) {
    std::printf("SKIP: MPI tests: mpirun not found (install openmpi-bin)\n");
    std::exit(77);
  }
}

// `mpirun -np N` around `command` (a command line run by each rank), one thread per process so
// that two processes fit two cores; as root Open MPI needs --allow-run-as-root, and on a busy
// machine --oversubscribe. The shared-memory transport's single-copy mechanism (CMA) needs
// ptrace rights that containers often lack: off.
std::string mpirun(int np, const std::string& command, const std::string& env = "") {
  return std::string("mpirun ") + (geteuid() == 0 ? "--allow-run-as-root " : "") +
         "--oversubscribe --bind-to none --mca btl_vader_single_copy_mechanism none -np " +
         std::to_string(np) + " -x SLOTCON_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1 " + env + " " +
         command;
}
const std::string kBin = std::string(SLOTCON_BINARY_DIR) + "/apps/slotcon";

// The golden setting of test_train.cpp: a tiny ResNet-18 SlotCon (D 8, K 8, hidden 32), one
// recorded batch of 8 images at 64 px, the authors' schedule with 2 warm-up epochs.
const std::string kArgs =
    "train --dataset synthetic --arch resnet18 --dim_hidden 32 --dim_out 8 --num_prototypes 8 "
    "--batch_size 4 --image_size 64 --epochs 100 --warmup_epoch 2 --print_freq 1 "
    "--score_images 0 --slot_images 0 --no-auto-resume --device cpu --bucket_mb 1 ";
TrainConfig golden_config(const std::string& optimizer, double group_weight) {
  TrainConfig cfg;
  cfg.arch = "resnet18";
  cfg.dim_hidden = 32;
  cfg.dim_out = 8;
  cfg.num_prototypes = 8;
  cfg.batch_size = 4;
  cfg.image_size = 64;
  cfg.epochs = 100;
  cfg.warmup_epoch = 2;
  cfg.optimizer = optimizer;
  cfg.group_loss_weight = group_weight;
  cfg.bucket_mb = 1;
  return cfg;
}

TwoViewBatch first_batch() {
  data::LoaderConfig lc;
  lc.synthetic = true;
  lc.synthetic_count = 8;
  lc.image_size = 64;
  lc.batch_size = 8;
  lc.num_workers = 0;
  data::DataLoader loader(lc);
  data::Batch b = loader.next_batch();
  TwoViewBatch t;
  for (int v = 0; v < 2; ++v)
    t.crops[v] = b.crops[v], t.coords[v] = b.coords[v], t.flags[v] = b.flags[v];
  return t;
}

// <d>/init.safetensors (the engine's init, seed 7) and <d>/batch.safetensors (8 images).
void write_inputs(const std::string& d) {
  SlotConModel init(golden_config("lars", 0.5), Device::cpu(), 7);
  TensorMap state;
  for (auto& kv : init.state_dict()) state[kv.first] = kv.second;
  write_safetensors(d + "/init.safetensors", state);
  const TwoViewBatch b = first_batch();
  TensorMap t;
  for (int v = 0; v < 2; ++v) {
    t["crops." + std::to_string(v)] = b.crops[v];
    t["coords." + std::to_string(v)] = b.coords[v];
    t["flags." + std::to_string(v)] = b.flags[v];
  }
  write_safetensors(d + "/batch.safetensors", t);
}

std::string inputs(const std::string& d) {
  return "--init " + d + "/init.safetensors --batch-file " + d + "/batch.safetensors ";
}

// What `slotcon train --batch-file --steps 2` does on `world` ranks, played by the loopback
// communicator: each rank its rows of the batch, the app's schedule (one batch per epoch; lr from
// the global batch of 8). The state by checkpoint name.
TensorMap loopback_steps(const TrainConfig& cfg, int world, int steps) {
  const TwoViewBatch all = first_batch();
  const int64_t per = 8 / world;
  const TrainOptions opts = resolve_train_options(cfg, Device::cpu());
  const double peak = cfg.base_lr * 8 / 256.0;
  const int64_t warm = int64_t(std::llround(cfg.warmup_epoch));
  LoopbackGroup g(world, 120.0);
  std::vector<TensorMap> states(static_cast<size_t>(world));
  std::vector<std::exception_ptr> err(static_cast<size_t>(world));
  std::vector<std::thread> ts;
  for (int r = 0; r < world; ++r)
    ts.emplace_back([&, r] {
      try {
        SlotConModel m(cfg, Device::cpu(), 7);
        m.train();
        TrainStep step(m, opts, cfg, &g.comm(r));
        TwoViewBatch b;
        for (int v = 0; v < 2; ++v) {
          b.crops[v] = slice(all.crops[v], 0, r * per, (r + 1) * per).contiguous();
          b.coords[v] = slice(all.coords[v], 0, r * per, (r + 1) * per).contiguous();
          b.flags[v] = slice(all.flags[v], 0, r * per, (r + 1) * per).contiguous();
        }
        for (int64_t s = 0; s < steps; ++s)
          step.run(b, lr_at(s, cfg.epochs, warm, peak, cfg.warmup_multiplier),
                   teacher_momentum_at(s, cfg.epochs, cfg.teacher_momentum));
        TensorMap& st = states[size_t(r)];
        for (auto& kv : m.state_dict()) st[kv.first] = kv.second.clone();
        for (size_t i = 0; i < step.parameters().size(); ++i)
          st["optimizer." + step.parameters()[i].first + ".momentum_buffer"] =
              step.optimizer_state()[i].clone();
      } catch (...) {
        err[size_t(r)] = std::current_exception();
        g.comm(r).abort(1);
      }
    });
  for (auto& t : ts) t.join();
  for (auto& e : err)
    if (e) std::rethrow_exception(e);
  return states[0];
}

// state vs ref, each tensor's error relative to its move from init (tests/state_moves.h).
state_moves::Stats compare_states(const TensorMap& state, const TensorMap& init,
                                  const TensorMap& ref, const char* what, double* still_out) {
  state_moves::Errors e = state_moves::errors(state, init, ref);
  CHECK(e.missing.empty());
  const double noise = state_moves::drop_zero_gradient_biases(e, state, ref);
  std::printf("%s: zero-gradient biases: largest difference %.1e\n", what, noise);
  // round-off noise in a zero gradient (measured up to 1.1e-5: SGD, mpirun vs loopback)
  CHECK(noise <= 1e-4);
  const state_moves::Stats st = state_moves::stats(e.moved);
  double still = 0;
  for (auto& kv : e.still) still = std::max(still, kv.second);
  std::printf(
      "%s: %zu moved tensors: median %.2e, 90th percentile %.2e, worst %.2e (%s); %zu "
      "unmoved: worst rms %.1e\n",
      what, e.moved.size(), st.median, st.p90, st.worst, st.worst_name.c_str(), e.still.size(),
      still);
  CHECK(e.moved.size() > 200);
  *still_out = still;
  return st;
}

}  // namespace

TEST_CASE("mpi: two processes train as the loopback communicator computes (SGD, LARS)", "[mpi]") {
  skip_without_mpi();
  const std::string d = app_test::fresh_dir("mpi_loopback");
  write_inputs(d);
  const TensorMap init = read_safetensors(d + "/init.safetensors").tensors;
  for (const char* opt : {"sgd", "lars"}) {
    INFO("optimizer " << opt);
    const std::string out = d + "/" + opt;
    Run r = app_test::run_command(mpirun(2, kBin + " " + kArgs + inputs(d) + "--optimizer " + opt +
                                                " --steps 2 --output_dir " + out));
    INFO(r.out);
    REQUIRE(r.code() == 0);
    CHECK(r.out.find("data-parallel: 2 processes (mpi), batch 4 per process") != std::string::npos);
    CHECK(r.out.find("B = 8, 4 per process") != std::string::npos);
    // ResNet-18's 45 MB of gradients in 1 MB buckets, each started as backward finished it
    CHECK(
        std::regex_search(r.out, std::regex("gradients averaged in ([0-9]{2}) buckets of at most 1 "
                                            "MB \\(bucket_mb\\), \\1 started during")));
    const TensorMap got = read_safetensors(out + "/final.safetensors").tensors;
    const TensorMap want = loopback_steps(golden_config(opt, 0.5), 2, 2);
    double still = 0;
    const state_moves::Stats st = compare_states(
        got, init, want, (std::string("mpirun vs loopback, ") + opt).c_str(), &still);
    // the same semantics; float32 round-off apart (OpenBLAS with one thread per process here,
    // more in the test): measured median 2.2e-6 / 2.5e-6, worst 1.1e-4 (SGD / LARS)
    CHECK(st.median <= 3e-5);
    CHECK(st.p90 <= 3e-4);
    CHECK(st.worst <= 3e-3);
    CHECK(still <= 1e-6);
  }
}

// Through the loader: its epoch permutation p, sharded, gives rank r the images p[4k + r] and
// p[4k + 2 + r] at step k, and one process with batch 4 the images p[4k .. 4k + 3]: the same
// images, augmented the same way (every random decision comes from the seed, the epoch and the
// image), and the same lr (global batch 4 in both).
TEST_CASE("mpi: without the contrast term, 2 processes x 2 images = 1 process x 4 (loader)",
          "[mpi]") {
  skip_without_mpi();
  const std::string d = app_test::fresh_dir("mpi_invariant");
  write_inputs(d);
  const std::string args = kArgs + "--init " + d +
                           "/init.safetensors --synthetic_images 8 --num_workers 1 --optimizer "
                           "sgd --group_loss_weight 1 --steps 2 ";
  Run one = app_test::run_command(kBin + " " + args + "--batch_size 4 --output_dir " + d + "/one");
  INFO(one.out);
  REQUIRE(one.code() == 0);
  Run two = app_test::run_command(
      mpirun(2, kBin + " " + args + "--batch_size 2 --output_dir " + d + "/two"));
  INFO(two.out);
  REQUIRE(two.code() == 0);
  // the same lr from the same global batch in both
  CHECK(one.out.find("2 steps (2 per epoch), lr 0.01562 after 4 warm-up steps, batch 4") !=
        std::string::npos);
  CHECK(two.out.find("2 steps (2 per epoch), lr 0.01562 after 4 warm-up steps, batch 4") !=
        std::string::npos);
  const TensorMap init = read_safetensors(d + "/init.safetensors").tensors;
  double still = 0;
  const state_moves::Stats st =
      compare_states(read_safetensors(d + "/two/final.safetensors").tensors, init,
                     read_safetensors(d + "/one/final.safetensors").tensors,
                     "2 processes x 2 vs 1 x 4 (loader), no contrast", &still);
  // measured: median 2.5e-6, 90th percentile 4.5e-6, worst 4.3e-5 (with a replayed batch: worst
  // 4.1e-4, the teacher, moved by 1 - m of the student's small step)
  CHECK(st.median <= 3e-5);
  CHECK(st.p90 <= 3e-4);
  CHECK(st.worst <= 5e-3);
  CHECK(still <= 1e-6);
}

TEST_CASE("mpi: the loader shards the data, rank 0 alone writes, and 2 processes resume on 1",
          "[mpi]") {
  skip_without_mpi();
  const std::string d = app_test::fresh_dir("mpi_loader");
  // 8 scenes, 2 per process and step: 2 steps per epoch; 2 epochs, a checkpoint after each
  const std::string args =
      app_test::kTinyTrain + "--device cpu --batch_size 2 --slot_images 0 --save_freq 1 ";
  Run r = app_test::run_command(mpirun(2, kBin + " " + args + "--epochs 2 --output_dir " + d));
  INFO(r.out);
  REQUIRE(r.code() == 0);
  CHECK(r.out.find("4 steps (2 per epoch)") != std::string::npos);
  CHECK(r.out.find("batch 4") != std::string::npos);  // the global batch sets the lr
  // every BatchNorm synchronised: ResNet-18 + projector have 22, run 4 times forward (student and
  // teacher, two views) and twice backward, the predictor's 2 twice each way; plus the center,
  // 4 gathers (keys and masks of both directions), the loss and the gradients in 2 buckets (45 MB
  // in 25 MB ones): 148 a step, and once in the run, after the first step, the check that the
  // ranks agree on the buckets' order: 148.25 a step over 4 (printed 148.2)
  CHECK(r.out.find("into 148.2 collectives on rank 0") != std::string::npos);
  // one progress line per step (rank 0's), one banner
  std::ifstream m(d + "/metrics.jsonl");
  int lines = 0;
  for (std::string l; std::getline(m, l);) ++lines;
  CHECK(lines == 4);
  size_t banners = 0;
  for (size_t at = 0; (at = r.out.find("slotcon train: resnet18", at)) != std::string::npos; ++at)
    ++banners;
  CHECK(banners == 1);
  REQUIRE(fs::exists(d + "/ckpt_epoch_0002.safetensors"));
  CHECK(read_safetensors(d + "/ckpt_epoch_0002.safetensors").metadata.at("world_size") == "2");
  // one process resumes the two-process run: 4 steps per epoch now, from the start of epoch 2
  Run one = app_test::run(args + "--epochs 3 --output_dir " + d);
  INFO(one.out);
  REQUIRE(one.code() == 0);
  CHECK(one.out.find("written by 2 processes, this run has 1") != std::string::npos);
  CHECK(one.out.find("step 4 of 2 per epoch becomes step 8 of 4") != std::string::npos);
  CHECK(one.out.find("12 steps (4 per epoch)") != std::string::npos);
}

TEST_CASE("mpi: a configuration that differs between ranks is refused", "[mpi]") {
  skip_without_mpi();
  const std::string d = app_test::fresh_dir("mpi_config");
  Run r = app_test::run_command(mpirun(2, "sh -c '" + kBin + " " + app_test::kTinyTrain +
                                              "--device cpu --steps 1 --output_dir " + d +
                                              " --seed $OMPI_COMM_WORLD_RANK'"));
  INFO(r.out);
  CHECK(r.code() != 0);
  CHECK(r.out.find("the configuration differs between ranks: rank(s) 1") != std::string::npos);
  CHECK_FALSE(fs::exists(d + "/final.safetensors"));
}

TEST_CASE("mpi: a stopped rank ends the other within the timeout, a killed one ends the job",
          "[mpi]") {
  skip_without_mpi();
  const std::string d = app_test::fresh_dir("mpi_dead");
  for (const char* sig : {"STOP", "KILL"}) {
    INFO("rank 1 gets SIG" << sig);
    // rank 1 receives the signal 6 s after it starts (inside the training loop: each step takes
    // a second or more); the timeout of the collectives is 5 s
    const std::string self_signal =
        std::string("if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then (sleep 6; kill -") + sig +
        " $$) >/dev/null 2>&1 & fi; exec ";
    const auto start = std::chrono::steady_clock::now();
    Run r = app_test::run_command(
        mpirun(2,
               "sh -c '" + self_signal + kBin + " " + app_test::kTinyTrain +
                   "--device cpu --steps 200 --epochs 100 --slot_images 0 --output_dir " + d +
                   "/" + sig + "'",
               "-x SLOTCON_COMM_TIMEOUT=5"));
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    INFO(r.out);
    std::printf("rank 1 SIG%s: the job ended after %.1f s with code %d\n", sig, secs, r.code());
    CHECK(r.code() != 0);
    CHECK(secs < 60);
    if (std::string(sig) == "STOP")
      CHECK(r.out.find("no answer from the other ranks within 5 s") != std::string::npos);
  }
}
