#include "model/checkpoint.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "engine/ops.h"

namespace sc {
namespace {
constexpr const char* kFormat = "slotcon-checkpoint-v1";
constexpr const char* kOptPrefix = "optimizer.";
constexpr const char* kOptSuffix = ".momentum_buffer";

int64_t parse_counter(const std::map<std::string, std::string>& meta, const std::string& key,
                      const std::string& path) {
  auto it = meta.find(key);
  SC_CHECK(it != meta.end(), path, ": not a SlotCon checkpoint (no '", key, "' in metadata)");
  try {
    size_t used = 0;
    long long v = std::stoll(it->second, &used);
    SC_CHECK(used == it->second.size() && v >= 0, "bad");
    return v;
  } catch (...) {
    throw Error(str_cat(path, ": checkpoint metadata '", key, "' is not a counter: '", it->second,
                        "'"));
  }
}
}  // namespace

void check_finite(const NamedTensors& tensors, const std::string& what) {
  for (const auto& kv : tensors) {
    if (!is_floating(kv.second.dtype())) continue;
    for (double v : kv.second.to_vector())
      SC_CHECK(std::isfinite(v), what, ": tensor '", kv.first,
               "' holds a non-finite value; refusing to write it");
  }
}

void save_checkpoint(const std::string& path, const NamedTensors& model_state,
                     const NamedTensors& optimizer_state, const CheckpointInfo& info) {
  check_finite(model_state, path);
  check_finite(optimizer_state, path);
  TensorMap all;
  for (const auto& kv : model_state) {
    SC_CHECK(all.emplace(kv.first, kv.second).second, "save_checkpoint: duplicate name ", kv.first);
  }
  for (const auto& kv : optimizer_state)
    all.emplace(kOptPrefix + kv.first + kOptSuffix, kv.second);
  std::map<std::string, std::string> meta = {{"format", kFormat},
                                             {"epoch", std::to_string(info.epoch)},
                                             {"step", std::to_string(info.step)},
                                             {"config", info.config_json}};
  if (info.loss_scale > 0) {
    char b[64];
    std::snprintf(b, sizeof b, "%.17g", info.loss_scale);
    meta["loss_scale"] = b;
    meta["loss_scale_growth"] = std::to_string(info.loss_scale_growth);
  }
  if (info.world_size > 1) meta["world_size"] = std::to_string(info.world_size);
  write_safetensors(path, all, meta);
}

Checkpoint load_checkpoint(const std::string& path) {
  return checkpoint_from_file(read_safetensors(path), path);
}

Checkpoint checkpoint_from_file(const SafetensorsFile& f, const std::string& path) {
  auto fmt = f.metadata.find("format");
  SC_CHECK(fmt != f.metadata.end() && fmt->second == kFormat, path,
           ": not a SlotCon checkpoint (metadata 'format' is not '", kFormat, "')");
  Checkpoint c;
  c.info.epoch = parse_counter(f.metadata, "epoch", path);
  c.info.step = parse_counter(f.metadata, "step", path);
  auto cfg = f.metadata.find("config");
  if (cfg != f.metadata.end()) c.info.config_json = cfg->second;
  if (f.metadata.count("world_size")) {
    c.info.world_size = parse_counter(f.metadata, "world_size", path);
    SC_CHECK(c.info.world_size >= 1, path, ": checkpoint metadata 'world_size' must be at least 1");
  }
  auto ls = f.metadata.find("loss_scale");
  if (ls != f.metadata.end()) {
    char* end = nullptr;
    const double v = std::strtod(ls->second.c_str(), &end);
    SC_CHECK(end && *end == 0 && std::isfinite(v) && v > 0, path,
             ": checkpoint metadata 'loss_scale' is not a positive number: '", ls->second, "'");
    c.info.loss_scale = v;
    c.info.loss_scale_growth = parse_counter(f.metadata, "loss_scale_growth", path);
  }
  const std::string pre = kOptPrefix, suf = kOptSuffix;
  for (auto& kv : f.tensors) {
    const std::string& n = kv.first;
    if (n.rfind(pre, 0) == 0 && n.size() > pre.size() + suf.size() &&
        n.compare(n.size() - suf.size(), suf.size(), suf) == 0) {
      c.optimizer[n.substr(pre.size(), n.size() - pre.size() - suf.size())] = kv.second;
    } else {
      c.model[n] = kv.second;
    }
  }
  return c;
}

std::string checkpoint_path(const std::string& dir, int64_t epoch) {
  char name[64];
  std::snprintf(name, sizeof name, "ckpt_epoch_%04lld.safetensors", (long long)epoch);
  return (std::filesystem::path(dir) / name).string();
}

namespace {
// The epoch checkpoints in `dir`, newest first (zero-padded epochs sort by name; an epoch past
// 9999 has more digits and sorts by length first).
std::vector<std::string> epoch_checkpoints(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::vector<std::string> files;
  if (!fs::is_directory(dir, ec)) return files;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.rfind("ckpt_epoch_", 0) == 0 && it->path().extension() == ".safetensors")
      files.push_back(it->path().string());
  }
  std::sort(files.begin(), files.end(), [](const std::string& a, const std::string& b) {
    return a.size() != b.size() ? a.size() > b.size() : a > b;
  });
  return files;
}
}  // namespace

std::vector<std::string> prune_checkpoints(const std::string& dir, int64_t keep,
                                           std::vector<std::string>* warnings) {
  std::vector<std::string> removed;
  if (keep <= 0) return removed;
  const std::vector<std::string> files = epoch_checkpoints(dir);
  for (size_t i = size_t(keep); i < files.size(); ++i) {
    std::error_code ec;
    if (std::filesystem::remove(files[i], ec))
      removed.push_back(files[i]);
    else if (ec && warnings)
      warnings->push_back(str_cat("could not delete old checkpoint ", files[i], ": ", ec.message()));
  }
  return removed;
}

std::string find_latest_checkpoint(const std::string& dir, std::vector<std::string>* warnings) {
  const std::vector<std::string> files = epoch_checkpoints(dir);
  for (const std::string& f : files) {
    try {
      load_checkpoint(f);
      return f;
    } catch (const Error& e) {
      if (warnings) warnings->push_back(str_cat("skipping unusable checkpoint: ", e.what()));
    }
  }
  return "";
}

}  // namespace sc
