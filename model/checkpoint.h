// checkpoint.h: training checkpoints as safetensors files, written atomically.
//
// A checkpoint holds the model's state dict under its reference names (docs/method.md §10), the
// optimizer's momentum buffers as "optimizer.<parameter name>.momentum_buffer", and in
// "__metadata__": "format" = "slotcon-checkpoint-v1", "epoch" (epochs completed), "step"
// (optimizer steps done), "config" (the run's JSON config), for fp16 runs "loss_scale" and
// "loss_scale_growth" (the dynamic loss scaler's state), for data-parallel runs "world_size".
// Files are named
// ckpt_epoch_<EEEE>.safetensors (and "final.safetensors" / any path for explicit saves) and are
// written with write_file_atomic (temp file, fsync, rename), so a run killed mid-save leaves the
// previous checkpoint intact. Non-finite values are refused before anything is written.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "engine/safetensors.h"

namespace sc {

struct CheckpointInfo {
  int64_t epoch = 0;
  int64_t step = 0;
  std::string config_json;
  // fp16 runs: the dynamic loss scale and its growth counter ("loss_scale" and
  // "loss_scale_growth" in the metadata; absent / 0 for fp32 and bf16 runs).
  double loss_scale = 0;
  int64_t loss_scale_growth = 0;
  // Processes of the data-parallel run that wrote it ("world_size" in the metadata, written when
  // > 1; absent = 1). Its steps count global batches of batch_size x world_size images.
  int64_t world_size = 1;
};

struct Checkpoint {
  CheckpointInfo info;
  TensorMap model;                 // state-dict names
  TensorMap optimizer;             // parameter name -> momentum buffer
};

// Throws sc::Error if any floating tensor holds NaN or Inf (naming the first such tensor).
void check_finite(const NamedTensors& tensors, const std::string& what);

void save_checkpoint(const std::string& path, const NamedTensors& model_state,
                     const NamedTensors& optimizer_state, const CheckpointInfo& info);
// Read and validate a checkpoint (format tag, counters); throws sc::Error naming the file.
Checkpoint load_checkpoint(const std::string& path);
// The same validation of an already parsed file; errors name `what`.
Checkpoint checkpoint_from_file(const SafetensorsFile& f, const std::string& what);

// Path of the checkpoint for `epoch` in `dir`.
std::string checkpoint_path(const std::string& dir, int64_t epoch);
// The newest checkpoint in `dir` that loads; corrupt or truncated ones are skipped and reported
// through `warnings`. Returns "" when there is none.
std::string find_latest_checkpoint(const std::string& dir, std::vector<std::string>* warnings);
// Keep the newest `keep` epoch checkpoints (ckpt_epoch_*.safetensors, by epoch number) in `dir`
// and delete the older ones; keep <= 0 keeps all. Other files (final.safetensors, temporaries)
// are never touched. Returns the paths deleted; a file that cannot be deleted is reported
// through `warnings` and left.
std::vector<std::string> prune_checkpoints(const std::string& dir, int64_t keep,
                                           std::vector<std::string>* warnings);

}  // namespace sc
