// Training configuration: defaults, JSON files, overrides and every kind of error.
#include <catch2/catch.hpp>
#include <cmath>
#include <fstream>

#include "engine/error.h"
#include "model/schedule.h"
#include "model/train_config.h"

using namespace sc;
using nlohmann::json;

TEST_CASE("config: defaults follow the authors' settings") {
  TrainConfig c;
  CHECK(c.arch == "resnet50");
  CHECK(c.dim_hidden == 4096);
  CHECK(c.dim_out == 256);
  CHECK(c.num_prototypes == 256);
  CHECK(c.teacher_momentum == 0.99);
  CHECK(c.teacher_temp == 0.07);
  CHECK(c.student_temp == 0.1);
  CHECK(c.center_momentum == 0.9);
  CHECK(c.group_loss_weight == 0.5);
  CHECK(c.optimizer == "lars");
  CHECK(c.base_lr == 1.0);
  CHECK(c.weight_decay == 1e-5);
  CHECK(c.warmup_epoch == 5);
  CHECK(c.min_scale == 0.08);
}

TEST_CASE("config: shipped configs parse and validate") {
  for (const char* f : {"coco_r50_800ep.json", "imagenet_r50_100ep.json", "demo.json"}) {
    INFO(f);
    TrainConfig c = load_config_file(std::string(SLOTCON_SOURCE_DIR) + "/configs/" + f);
    CHECK_NOTHROW(c.validate());
  }
  TrainConfig in = load_config_file(std::string(SLOTCON_SOURCE_DIR) +
                                    "/configs/imagenet_r50_100ep.json");
  CHECK(in.num_prototypes == 2048);
  CHECK(in.epochs == 100);
}

TEST_CASE("config: overrides, round trip through JSON") {
  TrainConfig c;
  auto rest = apply_overrides(c, {"--batch-size", "32", "--base_lr=0.5", "--arch", "resnet18",
                                  "--seed", "7", "--config", "x.json", "positional"});
  CHECK(c.batch_size == 32);
  CHECK(c.base_lr == 0.5);
  CHECK(c.arch == "resnet18");
  CHECK(c.seed == 7);
  CHECK(rest == std::vector<std::string>{"--config", "x.json", "positional"});
  TrainConfig back = config_from_json(c.to_json());
  CHECK(back.to_json() == c.to_json());
}

TEST_CASE("config: errors name the key") {
  CHECK_THROWS_WITH(config_from_json(json{{"bogus_key", 1}}), Catch::Contains("bogus_key"));
  CHECK_THROWS_WITH(config_from_json(json{{"batch_size", "64"}}),
                    Catch::Contains("batch_size") && Catch::Contains("integer"));
  CHECK_THROWS_WITH(config_from_json(json{{"base_lr", true}}), Catch::Contains("number"));
  CHECK_THROWS_WITH(config_from_json(json{{"arch", 50}}), Catch::Contains("string"));
  CHECK_THROWS_WITH(config_from_json(json{{"seed", -1}}), Catch::Contains("non-negative"));
  CHECK_THROWS_WITH(config_from_json(json::array()), Catch::Contains("object"));
  TrainConfig c;
  CHECK_THROWS_WITH(apply_overrides(c, {"--batch-size", "abc"}), Catch::Contains("integer"));
  CHECK_THROWS_WITH(apply_overrides(c, {"--epochs"}), Catch::Contains("needs a value"));
  TrainConfig bad;
  bad.arch = "vgg";
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("arch"));
  bad = TrainConfig();
  bad.data_dir = "";
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("data_dir"));
  bad = TrainConfig();
  bad.data_dir = "x";
  bad.batch_size = 1;
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("batch_size"));
  bad = TrainConfig();
  bad.data_dir = "x";
  bad.tf32 = "yes";
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("tf32"));
  // malformed file
  std::string path = std::string(SLOTCON_BINARY_DIR) + "/bad_config.json";
  std::ofstream(path) << "{\"epochs\": 10,";
  CHECK_THROWS_WITH(load_config_file(path), Catch::Contains("not valid JSON"));
  CHECK_THROWS_WITH(load_config_file(path + ".missing"), Catch::Contains("cannot open"));
}

TEST_CASE("schedules: warm-up, cosine and teacher momentum") {
  const int64_t S = 1000, W = 100;
  CHECK(lr_at(0, S, W, 2.0, 100) == Approx(0.02));
  CHECK(lr_at(50, S, W, 2.0, 100) == Approx(0.02 + (2.0 - 0.02) * 0.5));
  CHECK(lr_at(W, S, W, 2.0, 100) == Approx(2.0));
  CHECK(lr_at(W + 450, S, W, 2.0, 100) == Approx(1e-6 + 0.5 * (2.0 - 1e-6)));
  CHECK(lr_at(S, S, W, 2.0, 100) == Approx(1e-6));
  for (int64_t s = W; s < S; ++s) CHECK(lr_at(s + 1, S, W, 2.0, 100) <= lr_at(s, S, W, 2.0, 100));
  CHECK(teacher_momentum_at(0, S, 0.99) == Approx(0.99));
  CHECK(teacher_momentum_at(S / 2, S, 0.99) == Approx(0.995));
  CHECK(teacher_momentum_at(S, S, 0.99) == Approx(1.0));
}
