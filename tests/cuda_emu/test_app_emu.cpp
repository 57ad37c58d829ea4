// `slotcon train` end to end on the emulated GPU (a -DSLOTCON_CUDA_EMU=ON build): the app's GPU
// path (device choice, bf16 by default, channels-last, fp16 with loss scaling, pinned-memory
// batches, checkpoints written from device tensors, resume onto the device, bitwise equal to an
// uninterrupted run) runs every CUDA kernel and library call of a real training run, on the CPU.
#include <catch2/catch.hpp>

#include <cstring>
#include <filesystem>
#include <string>

#include "app_test_util.h"
#include "engine/safetensors.h"

namespace fs = std::filesystem;

namespace {
std::string tiny_run(const fs::path& out, int steps, const std::string& extra = "") {
  return "train --config " + std::string(SLOTCON_SOURCE_DIR) +
         "/configs/demo.json --device cuda --image_size 64 --batch_size 4 --max_steps " +
         std::to_string(steps) +
         " --print_freq 1 --synthetic_images 8 --score_images 4 --score_size 64 --num_workers 1"
         " --slot_images 2"
         " --output_dir " + out.string() + " " + extra;
}
}  // namespace

TEST_CASE("emulated GPU: slotcon train in bf16 and fp16 on cuda:0, checkpoints and resume",
          "[cuda_emu][app]") {
  const fs::path dir = fs::path(SLOTCON_BINARY_DIR) / "test_tmp" / "cuda_emu_app";
  fs::remove_all(dir);
  {
    const app_test::Run r = app_test::run(tiny_run(dir / "bf16", 2));
    INFO(r.out);
    REQUIRE(r.code() == 0);
    CHECK_THAT(r.out, Catch::Contains("on cuda:0 (CUDA emulator") &&
                          Catch::Contains("precision bf16") && Catch::Contains("done: 2 steps"));
    CHECK_THAT(r.out, !Catch::Contains("nan") && !Catch::Contains("inf "));
    CHECK(fs::exists(dir / "bf16" / "final.safetensors"));
    CHECK(fs::exists(dir / "bf16" / "slots_final.png"));  // the teacher's maps from the device
  }
  {
    const app_test::Run r = app_test::run(tiny_run(dir / "fp16", 2, "--precision fp16"));
    INFO(r.out);
    REQUIRE(r.code() == 0);
    CHECK_THAT(r.out, Catch::Contains("precision fp16") && Catch::Contains("fp16: loss scale"));
    CHECK(fs::exists(dir / "fp16" / "ckpt_epoch_0001.safetensors"));
  }
  {
    // One more step: auto-resumes from the epoch checkpoint, loss scale included.
    const app_test::Run r = app_test::run(tiny_run(dir / "fp16", 3, "--precision fp16"));
    INFO(r.out);
    REQUIRE(r.code() == 0);
    CHECK_THAT(r.out, Catch::Contains("resumed from") && Catch::Contains("at step 2") &&
                          Catch::Contains("done: 1 steps"));
  }
  {
    // bf16 (the first run's checkpoint at step 2) resumed for one more step ends where an
    // uninterrupted 3-step run ends, bit for bit (the emulator runs the kernels in a fixed order):
    // every state tensor (weights, momentum buffers, BatchNorm statistics, the center) and the
    // step counter. (fp16 is not compared: its first steps overflow and change no weight.)
    const app_test::Run r1 = app_test::run(tiny_run(dir / "bf16", 3));
    INFO(r1.out);
    REQUIRE(r1.code() == 0);
    CHECK_THAT(r1.out, Catch::Contains("resumed from") && Catch::Contains("at step 2"));
    const app_test::Run r = app_test::run(tiny_run(dir / "bf16_ref", 3));
    INFO(r.out);
    REQUIRE(r.code() == 0);
    const sc::SafetensorsFile a = sc::read_safetensors((dir / "bf16" / "final.safetensors").string());
    const sc::SafetensorsFile b =
        sc::read_safetensors((dir / "bf16_ref" / "final.safetensors").string());
    REQUIRE(a.tensors.size() == b.tensors.size());
    size_t differ = 0;
    for (const auto& kv : a.tensors) {
      INFO(kv.first);
      REQUIRE(b.tensors.count(kv.first) == 1);
      const sc::Tensor& x = kv.second;
      const sc::Tensor& y = b.tensors.at(kv.first);
      REQUIRE(x.shape() == y.shape());
      const size_t n = size_t(x.numel()) * sc::dtype_size(x.dtype());
      if (n && std::memcmp(x.contiguous().data_ptr(), y.contiguous().data_ptr(), n) != 0) {
        UNSCOPED_INFO("differs: " << kv.first);
        ++differ;
      }
    }
    CHECK(differ == 0);
    CHECK(a.metadata.at("step") == "3");
    CHECK(b.metadata.at("step") == "3");
  }
  fs::remove_all(dir);
}
