#include "apps/run_model.h"

#include <nlohmann/json.hpp>

#include "engine/error.h"
#include "engine/safetensors.h"

namespace sc {
namespace app {

RunModel load_run_model(const std::string& in, const std::string& config_file, Device dev) {
  SafetensorsFile f = read_safetensors(in);
  RunModel r;
  if (!config_file.empty()) {
    r.cfg = load_config_file(config_file);
  } else {
    auto it = f.metadata.find("config");
    SC_CHECK(it != f.metadata.end(), in,
             " has no run config in its metadata (not written by `slotcon train`); give the "
             "run's config with --config FILE");
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(it->second);
    } catch (const std::exception& e) {
      throw Error(
          str_cat(in, ": the run config in its metadata is not valid JSON (", e.what(), ")"));
    }
    r.cfg = config_from_json(j, in + " metadata config");
  }
  TensorMap state;
  for (auto& kv : f.tensors)
    if (kv.first.rfind("optimizer.", 0) != 0) state.emplace(kv.first, kv.second);
  r.model = std::make_unique<SlotConModel>(r.cfg, dev, r.cfg.seed);
  r.model->load_state_dict(state, /*strict=*/true, {"num_batches_tracked"});
  return r;
}

}  // namespace app
}  // namespace sc
