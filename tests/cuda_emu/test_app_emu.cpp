// `slotcon train` end to end on the emulated GPU (a -DSLOTCON_CUDA_EMU=ON build): the app's GPU
// path (device choice, bf16 by default, channels-last, fp16 with loss scaling, pinned-memory
// batches, checkpoints written from device tensors, resume onto the device) runs every CUDA kernel
// and library call of a real training run, on the CPU.
#include <catch2/catch.hpp>

#include <filesystem>
#include <string>

#include "app_test_util.h"

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
  fs::remove_all(dir);
}
