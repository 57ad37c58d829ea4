// run_model.h: a run's model rebuilt from a state file, for the commands that read checkpoints
// (`slotcon slots`, `slotcon probe`).
#pragma once
#include <memory>
#include <string>

#include "engine/dtype.h"
#include "model/slotcon.h"
#include "model/train_config.h"

namespace sc {
namespace app {

struct RunModel {
  TrainConfig cfg;
  std::unique_ptr<SlotConModel> model;
};

// The run config from `config_file` when it is not empty, else from the checkpoint's metadata
// (sc::Error naming the file when it has none or it is not valid JSON); the model built from it
// on `dev` and loaded strictly with the checkpoint's tensors (the optimizer's state left out).
RunModel load_run_model(const std::string& checkpoint, const std::string& config_file, Device dev);

}  // namespace app
}  // namespace sc
