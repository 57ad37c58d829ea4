// Export names: torchvision prefix stripping and the detectron2 renaming rules.
#include <catch2/catch.hpp>

#include "engine/ops.h"
#include "model/export.h"

using namespace sc;

TEST_CASE("export: detectron2 names") {
  CHECK(detectron2_name("conv1.weight") == "stem.conv1.weight");
  CHECK(detectron2_name("bn1.running_var") == "stem.conv1.norm.running_var");
  CHECK(detectron2_name("layer1.0.conv1.weight") == "res2.0.conv1.weight");
  CHECK(detectron2_name("layer1.2.bn3.bias") == "res2.2.conv3.norm.bias");
  CHECK(detectron2_name("layer4.0.downsample.0.weight") == "res5.0.shortcut.weight");
  CHECK(detectron2_name("layer3.0.downsample.1.running_mean") == "res4.0.shortcut.norm.running_mean");
  CHECK(detectron2_name("layer2.1.bn2.num_batches_tracked").empty());
  CHECK_THROWS_AS(detectron2_name("fc.weight"), Error);
}

TEST_CASE("export: the teacher backbone is taken from encoder_k") {
  TensorMap state = {{"encoder_k.conv1.weight", ones({1})},
                     {"encoder_k.bn1.num_batches_tracked", zeros({}, DType::I64)},
                     {"encoder_q.conv1.weight", zeros({1})},
                     {"projector_k.mlp.0.weight", zeros({1})}};
  TensorMap tv = strip_prefix(state, "encoder_k.");
  CHECK(tv.size() == 2);
  CHECK(tv.at("conv1.weight").item() == 1.0);
  TensorMap d2 = to_detectron2(tv);
  CHECK(d2.size() == 1);
  CHECK(d2.count("stem.conv1.weight") == 1);
  CHECK_THROWS_AS(strip_prefix(state, "encoder_x."), Error);
}
