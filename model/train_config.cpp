#include "model/train_config.h"

#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "engine/error.h"

namespace sc {
namespace {

using json = nlohmann::json;

// One table names every key once: its type, how to read it and how to write it.
struct Field {
  const char* type;
  std::function<void(TrainConfig&, const json&, const std::string&)> set;
  std::function<json(const TrainConfig&)> get;
  const char* help;
};

template <class T>
Field field(T TrainConfig::*m, const char* help) {
  Field f;
  if constexpr (std::is_same<T, std::string>::value) {
    f.type = "string";
  } else if constexpr (std::is_floating_point<T>::value) {
    f.type = "number";
  } else {
    f.type = "integer";
  }
  f.set = [m](TrainConfig& c, const json& v, const std::string& key) {
    if constexpr (std::is_same<T, std::string>::value) {
      SC_CHECK(v.is_string(), "config key '", key, "' must be a string, got ", v.dump());
      c.*m = v.get<std::string>();
    } else if constexpr (std::is_floating_point<T>::value) {
      SC_CHECK(v.is_number(), "config key '", key, "' must be a number, got ", v.dump());
      c.*m = v.get<double>();
    } else {
      SC_CHECK(v.is_number_integer() || v.is_number_unsigned(), "config key '", key,
               "' must be an integer, got ", v.dump());
      if constexpr (std::is_unsigned<T>::value) {
        SC_CHECK(v.is_number_unsigned() || v.get<int64_t>() >= 0, "config key '", key,
                 "' must be non-negative, got ", v.dump());
      }
      c.*m = v.get<T>();
    }
  };
  f.get = [m](const TrainConfig& c) { return json(c.*m); };
  f.help = help;
  return f;
}

const std::map<std::string, Field>& fields() {
  static const std::map<std::string, Field> f = {
      {"arch", field(&TrainConfig::arch, "backbone: resnet18 | resnet34 | resnet50")},
      {"dim_hidden", field(&TrainConfig::dim_hidden, "projector/predictor hidden width")},
      {"dim_out", field(&TrainConfig::dim_out, "slot dimension D")},
      {"num_prototypes", field(&TrainConfig::num_prototypes, "prototypes K")},
      {"teacher_momentum", field(&TrainConfig::teacher_momentum, "EMA momentum m0 (cosine to 1)")},
      {"teacher_temp", field(&TrainConfig::teacher_temp, "teacher temperature")},
      {"warmup_teacher_temp",
       field(&TrainConfig::warmup_teacher_temp,
             "group loss: the teacher's temperature at step 0 of its warm-up")},
      {"warmup_teacher_temp_epochs",
       field(&TrainConfig::warmup_teacher_temp_epochs,
             "epochs of the teacher-temperature warm-up (0: off, the authors')")},
      {"student_temp", field(&TrainConfig::student_temp, "student temperature")},
      {"contrast_temp", field(&TrainConfig::contrast_temp, "slot contrast temperature")},
      {"center_momentum", field(&TrainConfig::center_momentum, "center EMA momentum")},
      {"group_loss_weight", field(&TrainConfig::group_loss_weight, "weight w of the group loss")},
      {"batch_size", field(&TrainConfig::batch_size, "images per device per step")},
      {"base_lr", field(&TrainConfig::base_lr, "lr = base_lr * batch / 256")},
      {"optimizer", field(&TrainConfig::optimizer, "lars | sgd")},
      {"weight_decay", field(&TrainConfig::weight_decay, "weight decay")},
      {"momentum", field(&TrainConfig::momentum, "optimizer momentum")},
      {"warmup_epoch", field(&TrainConfig::warmup_epoch, "linear warm-up epochs")},
      {"warmup_multiplier", field(&TrainConfig::warmup_multiplier, "warm-up starts at lr / this")},
      {"epochs", field(&TrainConfig::epochs, "training epochs")},
      {"max_steps", field(&TrainConfig::max_steps, "stop after N steps (0: all epochs)")},
      {"precision", field(&TrainConfig::precision, "auto | fp32 | bf16 | fp16 | fp64")},
      {"channels_last", field(&TrainConfig::channels_last,
                              "NHWC activations and conv weights: auto (GPU) | on | off")},
      {"tf32", field(&TrainConfig::tf32,
                     "the head's F32 products (fused kernels, slot "
                     "predictor) on TF32 tensor cores (GPU): "
                     "auto (on in bf16/fp16) | on | off")},
      {"nonfinite", field(&TrainConfig::nonfinite, "stop | skip on a non-finite loss")},
      {"cuda_graph", field(&TrainConfig::cuda_graph,
                           "auto | on | off: capture the GPU step once as a CUDA graph and "
                           "replay it (auto: on for one process on a GPU without a teacher-"
                           "temperature warm-up; on falls back to the plain step, saying why)")},
      {"bucket_mb", field(&TrainConfig::bucket_mb,
                          "several processes: MB of gradients per "
                          "all-reduce bucket, started during backward")},
      {"dataset", field(&TrainConfig::dataset, "folder | synthetic")},
      {"data_dir", field(&TrainConfig::data_dir, "image folder(s), ':'-separated")},
      {"synthetic_images", field(&TrainConfig::synthetic_images, "synthetic scene count")},
      {"synthetic_objects", field(&TrainConfig::synthetic_objects,
                                  "synthetic scenes' objects: standard (2-5, radius 8-22 % of the "
                                  "side) | large (1-3, 18-32 %) | large_hues (large, one hue per "
                                  "class) | crowded_hues (5-8, 22-36 %, one hue per class)")},
      {"image_size", field(&TrainConfig::image_size, "crop size S")},
      {"min_scale", field(&TrainConfig::min_scale, "random-resized-crop minimum scale")},
      {"color_aug", field(&TrainConfig::color_aug,
                          "hue/saturation jitter and grayscale probability, times the authors' "
                          "(1: hue 0.1, saturation 0.2, grayscale p 0.2; 0: colours kept)")},
      {"num_workers", field(&TrainConfig::num_workers, "loader threads")},
      {"device", field(&TrainConfig::device, "auto | cpu | cuda")},
      {"seed", field(&TrainConfig::seed, "random seed")},
      {"output_dir", field(&TrainConfig::output_dir, "checkpoints and metrics")},
      {"save_freq", field(&TrainConfig::save_freq, "epochs between checkpoints")},
      {"keep_checkpoints",
       field(&TrainConfig::keep_checkpoints, "keep the newest N epoch checkpoints (0: all)")},
      {"print_freq", field(&TrainConfig::print_freq, "steps between progress lines")},
      {"score_images", field(&TrainConfig::score_images,
                             "held-out synthetic scenes for the grouping score (0: off)")},
      {"score_size", field(&TrainConfig::score_size, "size they are scored at (0: image_size)")},
      {"slot_images", field(&TrainConfig::slot_images,
                            "images drawn with their slots in output_dir/slots_*.png (0: off)")},
  };
  return f;
}

std::string normalise_key(std::string k) {
  for (char& c : k)
    if (c == '-') c = '_';
  return k;
}

bool one_of(const std::string& v, std::initializer_list<const char*> options) {
  for (const char* o : options)
    if (v == o) return true;
  return false;
}

}  // namespace

void TrainConfig::validate() const {
  SC_CHECK(one_of(arch, {"resnet18", "resnet34", "resnet50"}), "config key 'arch': unknown '",
           arch, "' (resnet18, resnet34 or resnet50)");
  SC_CHECK(one_of(optimizer, {"lars", "sgd"}), "config key 'optimizer': unknown '", optimizer,
           "' (lars or sgd)");
  SC_CHECK(one_of(precision, {"auto", "fp32", "bf16", "fp16", "fp64"}),
           "config key 'precision': unknown '", precision, "' (auto, fp32, bf16, fp16 or fp64)");
  SC_CHECK(one_of(channels_last, {"auto", "on", "off"}), "config key 'channels_last': unknown '",
           channels_last, "' (auto, on or off)");
  SC_CHECK(one_of(tf32, {"auto", "on", "off"}), "config key 'tf32': unknown '", tf32,
           "' (auto, on or off)");
  SC_CHECK(one_of(nonfinite, {"stop", "skip"}), "config key 'nonfinite': unknown '", nonfinite,
           "' (stop or skip)");
  SC_CHECK(one_of(cuda_graph, {"auto", "on", "off"}), "config key 'cuda_graph': unknown '",
           cuda_graph, "' (auto, on or off)");
  SC_CHECK(bucket_mb > 0 && bucket_mb <= 1e6, "config key 'bucket_mb' must be in (0, 1e6], got ",
           bucket_mb);
  SC_CHECK(one_of(dataset, {"folder", "synthetic"}), "config key 'dataset': unknown '", dataset,
           "' (folder or synthetic)");
  SC_CHECK(one_of(device, {"auto", "cpu", "cuda"}), "config key 'device': unknown '", device,
           "' (auto, cpu or cuda)");
  SC_CHECK(dataset != "folder" || !data_dir.empty(),
           "config key 'data_dir' is required when dataset is 'folder'");
  SC_CHECK(dim_hidden > 0 && dim_out > 0 && num_prototypes > 0, "config: dim_hidden, dim_out and "
           "num_prototypes must be positive");
  SC_CHECK(batch_size > 1, "config key 'batch_size' must be at least 2 (batch norm), got ",
           batch_size);
  SC_CHECK(epochs > 0, "config key 'epochs' must be positive");
  SC_CHECK(max_steps >= 0, "config key 'max_steps' must be >= 0");
  SC_CHECK(image_size >= 32, "config key 'image_size' must be at least 32, got ", image_size);
  SC_CHECK(score_images >= 0, "config key 'score_images' must be >= 0");
  SC_CHECK(slot_images >= 0 && slot_images <= 1024,
           "config key 'slot_images' must be in [0, 1024]");
  SC_CHECK(score_size == 0 || score_size >= 32, "config key 'score_size' must be 0 or at least 32");
  SC_CHECK(min_scale > 0 && min_scale <= 1, "config key 'min_scale' must be in (0, 1]");
  SC_CHECK(color_aug >= 0 && color_aug <= 1, "config key 'color_aug' must be in [0, 1], got ",
           color_aug);
  SC_CHECK(teacher_temp > 0 && student_temp > 0 && contrast_temp > 0 && warmup_teacher_temp > 0,
           "config: temperatures must be positive");
  SC_CHECK(warmup_teacher_temp_epochs >= 0, "config key 'warmup_teacher_temp_epochs' must be >= 0");
  SC_CHECK(warmup_teacher_temp_epochs == 0 || cuda_graph != "on",
           "config: a teacher-temperature warm-up needs cuda_graph off or auto (the captured step "
           "keeps its temperature)");
  SC_CHECK(teacher_momentum >= 0 && teacher_momentum <= 1, "config key 'teacher_momentum' must be "
           "in [0, 1]");
  SC_CHECK(center_momentum >= 0 && center_momentum <= 1, "config key 'center_momentum' must be "
           "in [0, 1]");
  SC_CHECK(group_loss_weight >= 0 && group_loss_weight <= 1, "config key 'group_loss_weight' must "
           "be in [0, 1]");
  SC_CHECK(base_lr > 0 && warmup_epoch >= 0 && warmup_multiplier >= 1, "config: base_lr > 0, "
           "warmup_epoch >= 0 and warmup_multiplier >= 1 are required");
  SC_CHECK(synthetic_objects == "standard" || synthetic_objects == "large" ||
               synthetic_objects == "large_hues" || synthetic_objects == "crowded_hues",
           "config key 'synthetic_objects' must be 'standard', 'large', 'large_hues' or "
           "'crowded_hues', got '",
           synthetic_objects, "'");
  SC_CHECK(num_workers >= 0 && synthetic_images > 0, "config: num_workers >= 0 and "
           "synthetic_images > 0 are required");
  SC_CHECK(save_freq > 0 && print_freq > 0, "config: save_freq and print_freq must be positive");
  SC_CHECK(keep_checkpoints >= 0, "config key 'keep_checkpoints' must be >= 0 (0: keep all), got ",
           keep_checkpoints);
}

nlohmann::json TrainConfig::to_json() const {
  json j = json::object();
  for (const auto& kv : fields()) j[kv.first] = kv.second.get(*this);
  return j;
}

std::string TrainConfig::to_json_text() const {
  return to_json().dump(-1, ' ', false, json::error_handler_t::replace);
}

TrainConfig config_from_json(const nlohmann::json& j, const std::string& where) {
  SC_CHECK(j.is_object(), where, ": a config must be a JSON object, got ", j.type_name());
  TrainConfig c;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string key = normalise_key(it.key());
    auto f = fields().find(key);
    if (f == fields().end()) {
      std::string known;
      for (const auto& kv : fields()) known += (known.empty() ? "" : ", ") + kv.first;
      throw Error(str_cat(where, ": unknown config key '", it.key(), "' (known keys: ", known,
                          ")"));
    }
    try {
      f->second.set(c, it.value(), key);
    } catch (const json::exception& e) {
      throw Error(str_cat(where, ": config key '", key, "': ", e.what()));
    } catch (const Error& e) {
      throw Error(str_cat(where, ": ", e.what()));
    }
  }
  return c;
}

TrainConfig parse_config_text(const std::string& text, const std::string& where) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {  // syntax (parse_error), a number beyond double
                                        // (out_of_range), ...
    throw Error(str_cat(where, ": not valid JSON: ", e.what()));
  }
  return config_from_json(j, where);
}

TrainConfig load_config_file(const std::string& path) {
  std::ifstream in(path);
  SC_CHECK(in.good(), "cannot open config file '", path, "'");
  std::stringstream ss;
  ss << in.rdbuf();
  SC_CHECK(!in.bad(), "cannot read config file '", path, "'");
  return parse_config_text(ss.str(), path);
}

std::vector<std::string> check_resume_config(const std::string& saved_json, const TrainConfig& now,
                                             const std::string& what) {
  static const std::set<std::string> must_match = {"arch",      "dim_hidden", "dim_out",
                                                   "num_prototypes", "optimizer",  "batch_size",
                                                   "dataset",   "synthetic_images",
                                                   "synthetic_objects"};
  json saved = json::parse(saved_json, nullptr, /*allow_exceptions=*/false);
  if (!saved.is_object())
    return {str_cat("the config saved in ", what, " could not be read; it is not compared")};
  std::vector<std::string> changed;
  const json cur = now.to_json();
  for (auto it = cur.begin(); it != cur.end(); ++it) {
    auto s = saved.find(it.key());
    if (s == saved.end() || *s == it.value()) continue;
    // numbers compare by value (5 and 5.0 are the same setting)
    if (s->is_number() && it.value().is_number() && s->get<double>() == it.value().get<double>())
      continue;
    const std::string was = s->dump(-1, ' ', false, json::error_handler_t::replace),
                      is = it.value().dump(-1, ' ', false, json::error_handler_t::replace);
    SC_CHECK(!must_match.count(it.key()), what, " was written by a run with ", it.key(), " ", was,
             ", this run has ", is, ": its state does not fit (start a new output_dir, or use "
             "--init to start from its weights)");
    changed.push_back(str_cat(it.key(), " ", was, " -> ", is));
  }
  return changed;
}

std::vector<std::string> apply_overrides(TrainConfig& cfg, const std::vector<std::string>& args) {
  std::vector<std::string> rest;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a.rfind("--", 0) != 0) {
      rest.push_back(a);
      continue;
    }
    std::string key = a.substr(2), value;
    bool inline_value = false;
    if (auto eq = key.find('='); eq != std::string::npos) {
      value = key.substr(eq + 1);
      key = key.substr(0, eq);
      inline_value = true;
    }
    key = normalise_key(key);
    auto f = fields().find(key);
    if (f == fields().end()) {
      rest.push_back(a);
      continue;
    }
    if (!inline_value) {
      SC_CHECK(i + 1 < args.size(), "option --", key, " needs a value");
      value = args[++i];
    }
    json v;
    if (std::string(f->second.type) == "string") {
      v = value;
    } else {
      try {
        v = json::parse(value);
      } catch (const json::exception&) {  // not a number, or beyond double's range
        throw Error(str_cat("option --", key, " must be ", std::string(f->second.type) == "integer"
                                                            ? "an integer"
                                                            : "a number",
                            ", got '", value, "'"));
      }
    }
    try {
      f->second.set(cfg, v, key);
    } catch (const json::exception& e) {
      throw Error(str_cat("option --", key, ": ", e.what()));
    }
  }
  return rest;
}

std::string config_help() {
  TrainConfig d;
  std::string s;
  for (const auto& kv : fields()) {
    std::string def = kv.second.get(d).dump();
    s += str_cat("  --", kv.first, std::string(kv.first.size() < 20 ? 20 - kv.first.size() : 1, ' '),
                 kv.second.type, std::string(8 - std::string(kv.second.type).size(), ' '),
                 kv.second.help, " [", def, "]\n");
  }
  return s;
}

}  // namespace sc
