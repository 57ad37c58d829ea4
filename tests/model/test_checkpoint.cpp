// Checkpoints: round trip, atomicity, corrupt/truncated files and the fallback to the previous
// good one, and the refusal to write non-finite values.
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "engine/ops.h"
#include "model/checkpoint.h"

using namespace sc;
namespace fs = std::filesystem;

namespace {
std::string fresh_dir(const std::string& name) {
  fs::path d = fs::path(SLOTCON_BINARY_DIR) / "test_tmp" / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}
NamedTensors model_state(double v) {
  return {{"encoder_k.conv1.weight", full({2, 3}, v, DType::F32)},
          {"center", full({1, 4}, v / 2, DType::F32)},
          {"encoder_k.bn1.num_batches_tracked", full({}, 3, DType::I64)}};
}
}  // namespace

TEST_CASE("checkpoint: round trip of model, optimizer and counters") {
  std::string dir = fresh_dir("ckpt_roundtrip");
  std::string p = checkpoint_path(dir, 3);
  CHECK(fs::path(p).filename() == "ckpt_epoch_0003.safetensors");
  save_checkpoint(p, model_state(1.5), {{"encoder_q.conv1.weight", full({2, 3}, 0.25)}},
                  {3, 120, "{\"epochs\": 10}"});
  Checkpoint c = load_checkpoint(p);
  CHECK(c.info.epoch == 3);
  CHECK(c.info.step == 120);
  CHECK(c.info.config_json == "{\"epochs\": 10}");
  REQUIRE(c.model.count("encoder_k.conv1.weight") == 1);
  CHECK(c.model.at("center").to_vector() == std::vector<double>(4, 0.75));
  CHECK(c.model.at("encoder_k.bn1.num_batches_tracked").dtype() == DType::I64);
  REQUIRE(c.optimizer.count("encoder_q.conv1.weight") == 1);
  CHECK(c.optimizer.at("encoder_q.conv1.weight").to_vector() == std::vector<double>(6, 0.25));
  CHECK(c.info.loss_scale == 0);  // not an fp16 run
  // nothing but the final file is left behind
  int files = 0;
  for (auto& e : fs::directory_iterator(dir)) files += e.is_regular_file();
  CHECK(files == 1);
}

TEST_CASE("checkpoint: an fp16 run's loss scale and growth counter round trip") {
  std::string dir = fresh_dir("ckpt_loss_scale");
  std::string p = dir + "/a.safetensors";
  CheckpointInfo info{1, 40, "{}"};
  info.loss_scale = 8192.0;
  info.loss_scale_growth = 17;
  save_checkpoint(p, model_state(1.0), {}, info);
  Checkpoint c = load_checkpoint(p);
  CHECK(c.info.loss_scale == 8192.0);
  CHECK(c.info.loss_scale_growth == 17);
  // a malformed scale in the metadata is a clear error naming the file
  SafetensorsFile f = read_safetensors(p);
  f.metadata["loss_scale"] = "-3";
  write_safetensors(p, f.tensors, f.metadata);
  CHECK_THROWS_WITH(load_checkpoint(p), Catch::Contains("loss_scale") && Catch::Contains(p));
}

TEST_CASE("checkpoint: the newest good checkpoint is found, corrupt ones are skipped") {
  std::string dir = fresh_dir("ckpt_fallback");
  std::vector<std::string> warn;
  CHECK(find_latest_checkpoint(dir, &warn).empty());
  save_checkpoint(checkpoint_path(dir, 1), model_state(1), {}, {1, 10, "{}"});
  save_checkpoint(checkpoint_path(dir, 2), model_state(2), {}, {2, 20, "{}"});
  CHECK(find_latest_checkpoint(dir, &warn) == checkpoint_path(dir, 2));
  // truncate the newest, as a run killed by a full disk without atomic writes would
  std::string newest = checkpoint_path(dir, 2);
  auto size = fs::file_size(newest);
  fs::resize_file(newest, size / 2);
  warn.clear();
  CHECK(find_latest_checkpoint(dir, &warn) == checkpoint_path(dir, 1));
  REQUIRE(warn.size() == 1);
  CHECK(warn[0].find("ckpt_epoch_0002") != std::string::npos);
  // garbage with a newer name
  std::ofstream(checkpoint_path(dir, 3)) << "not a checkpoint";
  warn.clear();
  CHECK(find_latest_checkpoint(dir, &warn) == checkpoint_path(dir, 1));
  CHECK(warn.size() == 2);
  CHECK_THROWS_AS(load_checkpoint(checkpoint_path(dir, 3)), Error);
  // a valid safetensors file that is not a checkpoint
  write_safetensors(checkpoint_path(dir, 4), {{"x", ones({1})}});
  CHECK_THROWS_WITH(load_checkpoint(checkpoint_path(dir, 4)), Catch::Contains("not a SlotCon"));
}

TEST_CASE("checkpoint: non-finite values are never written") {
  std::string dir = fresh_dir("ckpt_nonfinite");
  std::string p = checkpoint_path(dir, 1);
  save_checkpoint(p, model_state(1), {}, {1, 5, "{}"});
  auto before = fs::file_size(p);
  NamedTensors bad = model_state(1);
  bad[1].second = full({1, 4}, NAN);
  CHECK_THROWS_WITH(save_checkpoint(p, bad, {}, {2, 9, "{}"}), Catch::Contains("center"));
  CHECK(fs::file_size(p) == before);
  CHECK(load_checkpoint(p).info.step == 5);
  CHECK_THROWS_AS(save_checkpoint(p, model_state(1), {{"w", full({2}, INFINITY)}}, {2, 9, "{}"}),
                  Error);
}
