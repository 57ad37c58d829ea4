// `slotcon train` against bad state files and a full disk (docs/hardening.md): malformed
// --batch-file and --init files, a checkpoint of another architecture or config given to --resume,
// keep_checkpoints, and a checkpoint that cannot be written. Each is a clear error that names the
// file and loses nothing that was already saved.
#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include "app_test_util.h"
#include "engine/ops.h"
#include "engine/safetensors.h"
#include "model/checkpoint.h"

using namespace sc;
namespace fs = std::filesystem;

namespace {
using app_test::Run;
using app_test::run;
std::string dir(const std::string& name) { return app_test::fresh_dir(name); }
// two steps per epoch
const std::string kTiny = app_test::kTinyTrain + "--epochs 10 --save_freq 1 ";

std::vector<std::string> epoch_files(const std::string& d) {
  std::vector<std::string> out;
  for (auto& e : fs::directory_iterator(d)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("ckpt_epoch_", 0) == 0) out.push_back(n);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// A valid batch file (B = 2, S = 32) with one thing changed by `edit`.
std::string batch_file(const std::string& path, const std::function<void(TensorMap&)>& edit) {
  TensorMap t;
  for (int v = 0; v < 2; ++v) {
    const std::string s = std::to_string(v);
    t["crops." + s] = full({2, 3, 32, 32}, 0.5);
    t["coords." + s] = from_vector({0, 0, 1, 1, 0, 0, 1, 1}, {2, 4});
    t["flags." + s] = zeros({2}, DType::U8);
  }
  edit(t);
  write_safetensors(path, t);
  return path;
}
}  // namespace

TEST_CASE("train: a malformed --batch-file or --init is refused, naming the file and the fault") {
  const std::string d = dir("state_bad_batch");
  struct Case {
    const char* name;
    std::function<void(TensorMap&)> edit;
    const char* says;
  };
  const std::vector<Case> cases = {
      {"missing", [](TensorMap& t) { t.erase("flags.1"); }, "has no 'flags.1'"},
      {"one_image", [](TensorMap& t) {
         for (int v = 0; v < 2; ++v) {
           const std::string s = std::to_string(v);
           t["crops." + s] = full({1, 3, 32, 32}, 0.5);
           t["coords." + s] = zeros({1, 4});
           t["flags." + s] = zeros({1}, DType::U8);
         }
       }, "at least 2"},
      {"not_square", [](TensorMap& t) { t["crops.0"] = full({2, 3, 32, 40}, 0.5); }, "(B, 3, S, S)"},
      {"views_differ", [](TensorMap& t) { t["crops.1"] = full({2, 3, 64, 64}, 0.5); },
       "views differ"},
      {"nan", [](TensorMap& t) { t["crops.1"] = full({2, 3, 32, 32}, std::nan("")); },
       "non-finite"},
      {"flag_2", [](TensorMap& t) { t["flags.0"] = full({2}, 2, DType::U8); }, "0 or 1"},
      {"int_crops", [](TensorMap& t) { t["crops.0"] = zeros({2, 3, 32, 32}, DType::I64); },
       "floating"},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    const std::string f = batch_file(d + "/" + c.name + ".safetensors", c.edit);
    Run r = run(kTiny + "--steps 1 --no-auto-resume --output_dir " + d + "/out --batch-file " + f);
    INFO(r.out);
    CHECK(r.code() == 1);
    CHECK(r.out.find(f) != std::string::npos);
    CHECK(r.out.find(c.says) != std::string::npos);
  }
  // a good one trains (the cases above fail for their fault alone)
  const std::string good = batch_file(d + "/good.safetensors", [](TensorMap&) {});
  Run ok = run(kTiny + "--steps 1 --no-auto-resume --output_dir " + d + "/out --batch-file " + good);
  INFO(ok.out);
  CHECK(ok.code() == 0);
  // --init: not a safetensors file, and a state dict of another module
  std::ofstream(d + "/text.safetensors") << "this is not a state file";
  Run text = run(kTiny + "--steps 1 --no-auto-resume --output_dir " + d + "/out --init " + d +
                 "/text.safetensors");
  CHECK(text.code() == 1);
  CHECK(text.out.find(d + "/text.safetensors") != std::string::npos);
  write_safetensors(d + "/other.safetensors", {{"fc.weight", zeros({2, 2})}});
  Run other = run(kTiny + "--steps 1 --no-auto-resume --output_dir " + d + "/out --init " + d +
                  "/other.safetensors");
  INFO(other.out);
  CHECK(other.code() == 1);
  CHECK(other.out.find(d + "/other.safetensors: load_state_dict") != std::string::npos);
  CHECK(other.out.find("unexpected: fc.weight") != std::string::npos);
}

TEST_CASE("train: --resume refuses a checkpoint of another architecture or config, notes other "
          "changes") {
  const std::string d = dir("state_resume_other");
  Run r1 = run(kTiny + "--epochs 1 --no-auto-resume --output_dir " + d);
  INFO(r1.out);
  REQUIRE(r1.code() == 0);
  const std::string ck = d + "/ckpt_epoch_0001.safetensors";
  REQUIRE(fs::exists(ck));
  const auto before = fs::last_write_time(ck);
  for (const char* change : {"--arch resnet34", "--num_prototypes 16", "--batch_size 2"}) {
    INFO(change);
    Run r = run(kTiny + "--epochs 2 --output_dir " + d + " " + change);
    INFO(r.out);
    CHECK(r.code() == 1);
    CHECK(r.out.find(ck + " was written by a run with") != std::string::npos);
    CHECK(r.out.find("does not fit") != std::string::npos);
  }
  CHECK(fs::last_write_time(ck) == before);
  // a longer schedule is a change the run may make: said, then trained
  Run longer = run(kTiny + "--epochs 2 --output_dir " + d);
  INFO(longer.out);
  REQUIRE(longer.code() == 0);
  CHECK(longer.out.find("note: resuming with a changed setting: epochs 1 -> 2") !=
        std::string::npos);
  CHECK(longer.out.find("resumed from " + ck) != std::string::npos);
}

TEST_CASE("train: keep_checkpoints keeps the newest N epoch checkpoints") {
  const std::string d = dir("state_keep");
  Run r = run(kTiny + "--epochs 3 --keep_checkpoints 2 --no-auto-resume --output_dir " + d);
  INFO(r.out);
  REQUIRE(r.code() == 0);
  CHECK(epoch_files(d) == std::vector<std::string>{"ckpt_epoch_0002.safetensors",
                                                   "ckpt_epoch_0003.safetensors"});
  CHECK(r.out.find("deleted " + d + "/ckpt_epoch_0001.safetensors") != std::string::npos);
  CHECK(fs::exists(d + "/final.safetensors"));
  // unit: other files are never touched, 0 keeps all, newest by epoch number
  const std::string u = dir("state_keep_unit");
  for (const char* n : {"ckpt_epoch_0009.safetensors", "ckpt_epoch_0010.safetensors",
                        "ckpt_epoch_10000.safetensors", "final.safetensors", "notes.txt"})
    std::ofstream(u + "/" + n) << "x";
  std::vector<std::string> warn;
  CHECK(prune_checkpoints(u, 0, &warn).empty());
  CHECK(prune_checkpoints(u, 1, &warn).size() == 2);
  CHECK(epoch_files(u) == std::vector<std::string>{"ckpt_epoch_10000.safetensors"});
  CHECK(fs::exists(u + "/final.safetensors"));
  CHECK(fs::exists(u + "/notes.txt"));
  CHECK(warn.empty());
  Run bad = run(kTiny + "--keep_checkpoints -1 --output_dir " + d);
  CHECK(bad.code() == 1);
  CHECK(bad.out.find("keep_checkpoints") != std::string::npos);
}

TEST_CASE("train: a checkpoint that cannot be written (a full disk) stops the run and keeps the "
          "previous one") {
  const std::string d = dir("state_full_disk");
  Run r1 = run(kTiny + "--epochs 1 --no-auto-resume --output_dir " + d);
  INFO(r1.out);
  REQUIRE(r1.code() == 0);
  const std::string ck = d + "/ckpt_epoch_0001.safetensors";
  const auto size = fs::file_size(ck);
  // RLIMIT_FSIZE below one checkpoint: the write fails with EFBIG as on a full disk (SIGXFSZ
  // ignored, as a process that handles the error sees it)
  const std::string limited = "bash -c \"trap '' XFSZ; ulimit -f " +
                              std::to_string(size / 1024 / 2) + "; exec " + SLOTCON_BINARY_DIR +
                              "/apps/slotcon " + kTiny + "--epochs 2 --output_dir " + d + "\"";
  Run r2 = app_test::run_command(limited);
  INFO(r2.out);
  CHECK(r2.code() == 1);
  CHECK(r2.out.find("ckpt_epoch_0002.safetensors") != std::string::npos);
  CHECK_FALSE(fs::exists(d + "/ckpt_epoch_0002.safetensors"));
  CHECK(epoch_files(d) == std::vector<std::string>{"ckpt_epoch_0001.safetensors"});
  CHECK(fs::file_size(ck) == size);
  CHECK(load_checkpoint(ck).info.step == 2);
  // no temporary file is left behind
  for (auto& e : fs::directory_iterator(d)) CHECK(e.path().filename().string().find(".tmp") == std::string::npos);
}
