// train_config.h: every setting of a SlotCon training run, with the authors' defaults.
//
// A run is configured by a JSON object (a file) whose keys are the fields below, then by
// command-line overrides `--key value` or `--key=value` (dashes and underscores are the same).
// An unknown key, a value of the wrong type or an out-of-range value is an sc::Error naming the
// key. Defaults follow the authors' COCO ResNet-50 recipe (docs/method.md §9); `batch_size` is the
// per-device batch.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace sc {

struct TrainConfig {
  // model
  std::string arch = "resnet50";  // resnet18 | resnet34 | resnet50
  int64_t dim_hidden = 4096;
  int64_t dim_out = 256;
  int64_t num_prototypes = 256;
  double teacher_momentum = 0.99;
  double teacher_temp = 0.07;
  // DINO's remedy for an early collapse (not the authors'): the teacher's sharpening in the group
  // loss goes linearly from warmup_teacher_temp to teacher_temp over the first
  // warmup_teacher_temp_epochs epochs (0: off, the authors' constant teacher_temp).
  double warmup_teacher_temp = 0.04;
  double warmup_teacher_temp_epochs = 0;
  double student_temp = 0.1;
  double contrast_temp = 0.2;
  double center_momentum = 0.9;
  double group_loss_weight = 0.5;
  // optimisation
  int64_t batch_size = 64;  // per device (the authors: 512 over 8 GPUs)
  double base_lr = 1.0;     // lr = base_lr * global batch / 256
  std::string optimizer = "lars";  // lars | sgd
  double weight_decay = 1e-5;
  double momentum = 0.9;
  double warmup_epoch = 5;
  double warmup_multiplier = 100;  // warm-up starts at lr / warmup_multiplier
  int64_t epochs = 800;
  int64_t max_steps = 0;            // stop after this many steps (0: run every epoch)
  std::string precision = "auto";   // auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16 | fp64
  std::string channels_last = "auto";  // auto (on for the GPU, off for the CPU) | on | off
  std::string tf32 = "auto";  // the head kernels' products on TF32 tensor cores: auto (on when
                              // the GPU trains in bf16/fp16) | on | off
  std::string nonfinite = "stop";   // stop | skip: what a non-finite loss does
  double bucket_mb = 25;            // data-parallel: MB of gradients per all-reduce bucket
                                    // (engine/grad_buckets.h; DDP's default)
  std::string cuda_graph = "auto";  // auto | on | off: the GPU step captured once as a CUDA
                                    // graph (auto: on unless a teacher-temperature warm-up)
  // data
  std::string dataset = "folder";   // folder | synthetic
  std::string data_dir = "";        // image folder(s), ':'-separated for COCO+
  int64_t synthetic_images = 2048;  // size of the synthetic scene set
  std::string synthetic_objects = "standard";  // standard | large | large_hues | crowded_hues (data/scenes.h)
  int64_t image_size = 224;
  double min_scale = 0.08;
  double color_aug = 1.0;  // hue and saturation jitter and grayscale probability, x the authors'
                           // (1: hue 0.1, saturation 0.2, grayscale p 0.2; 0: colours kept)
  int64_t num_workers = 8;
  // run
  std::string device = "auto";      // auto | cpu | cuda
  uint64_t seed = 0;
  std::string output_dir = "output";
  int64_t save_freq = 50;           // epochs between checkpoints (and always at the end)
  int64_t keep_checkpoints = 0;     // keep the newest N epoch checkpoints, delete older ones
                                    // after each save (0: keep all)
  int64_t print_freq = 10;          // steps between progress lines
  // grouping score (synthetic scenes only): held-out scenes (0: off), rendered at score_size px
  // (0: image_size)
  int64_t score_images = 64;
  int64_t score_size = 0;
  // slot pictures (apps/slot_picture.h): this many images drawn beside their prototype maps into
  // output_dir/slots_*.png at the start, at every checkpoint and at the end, at score_size px
  // (held-out scenes, or images spread over data_dir); 0: off
  int64_t slot_images = 8;

  // Validate ranges and choices; throws sc::Error naming the key.
  void validate() const;
  nlohmann::json to_json() const;
  // to_json() as text (as checkpoints store it); bytes that are not UTF-8 (a Linux path may hold
  // any) become U+FFFD instead of failing the save.
  std::string to_json_text() const;
};

// Parse a JSON object into a config on top of the defaults.
TrainConfig config_from_json(const nlohmann::json& j, const std::string& where = "config");
// Parse JSON text (a file's bytes) into a config; every failure is an sc::Error naming `where`
// and, for syntax errors, the byte position.
TrainConfig parse_config_text(const std::string& text, const std::string& where);
// Read a JSON file; errors name the file and, for syntax errors, the byte position.
TrainConfig load_config_file(const std::string& path);
// Apply `--key value` / `--key=value` overrides (values parsed by the key's type); returns the
// arguments that are not config keys, in order, for the caller to handle.
std::vector<std::string> apply_overrides(TrainConfig& cfg, const std::vector<std::string>& args);
// Resuming: compare the config a checkpoint was written with (its JSON text, `saved_json`) with
// this run's. A key that changes the state's shapes or what its step counter means (arch,
// dim_hidden, dim_out, num_prototypes, optimizer, batch_size, dataset, synthetic_images) must be
// equal: an sc::Error naming `what`, the key and both values otherwise. The other keys that differ
// are returned as "key saved -> now" for the caller to report. Keys missing on either side and
// an unreadable `saved_json` (returned as one note) are not errors.
std::vector<std::string> check_resume_config(const std::string& saved_json, const TrainConfig& now,
                                             const std::string& what);
// One line per key: name, type, default (for --help).
std::string config_help();

}  // namespace sc
