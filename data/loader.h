// loader.h: batches of two augmented views, made by worker threads, ready before they are asked
// for.
//
// Order and determinism. Epoch e shuffles the whole dataset with a permutation drawn from
// (seed, e); rank r of world_size W takes positions r, r + W, r + 2W, ... of it, floor(N / W)
// samples, so ranks see disjoint parts (at most W - 1 samples per epoch are left out, different
// ones every epoch). The rank's share is cut into batches in order; drop_last drops a last,
// incomplete batch. Every random decision for a sample comes from (seed, epoch, dataset index),
// so the batches are identical whatever the number of workers (0 included) and whichever thread
// made them.
//
// Stream. next_batch() returns batches in order, epoch after epoch without a pause: the workers
// run ahead into the next epoch. Batch::epoch and Batch::index say where a batch belongs; size()
// is the number of batches per epoch.
//
// Memory. At most prefetch_batches batches exist in the loader at once (being filled or ready).
// Batch tensors are page-locked when pin_memory is set and a CUDA device is present, so that the
// copy to the device can be asynchronous. Each batch gets fresh tensors (the engine's host
// allocators cache the blocks), so a batch the caller holds is never overwritten.
//
// Bad input. A file that cannot be decoded (corrupt, truncated, empty, not an image, an
// unsupported variant such as some CMYK or 12-bit JPEGs, or dimensions beyond DecodeLimits) is
// skipped: it is counted, the first `log_bad_files` are named in the log, it is remembered so it
// is never read again, and the sample is made from the next decodable index of the dataset (so
// batch shapes never change and the result stays deterministic). If no file of the dataset can be
// decoded, next_batch() throws sc::Error. A missing or empty folder is an sc::Error from the
// constructor.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "data/augment.h"
#include "data/dataset.h"
#include "data/image.h"
#include "engine/tensor.h"

namespace sc {
namespace data {

struct LoaderConfig {
  // Source: an image folder (several are separated by ':', e.g. COCO+
  // ".../train2017:.../unlabeled2017"), or the synthetic scenes when `synthetic` is set.
  std::string data_dir;
  bool synthetic = false;
  int64_t synthetic_count = 2048;
  int synthetic_width = 256;
  int synthetic_height = 256;
  uint64_t synthetic_seed = 0;  // the scenes' layout, independent of `seed`
  SceneObjects synthetic_objects = SceneObjects::Standard;  // data/scenes.h

  // Augmentation: image_size and min_scale override augment.size and augment.min_scale.
  int image_size = 224;
  double min_scale = 0.08;
  AugmentConfig augment;

  int batch_size = 64;
  int num_workers = 4;  // 0: batches are made on the calling thread
  uint64_t seed = 0;
  int rank = 0;
  int world_size = 1;
  bool drop_last = true;
  int64_t start_epoch = 0;
  int prefetch_batches = 4;
  bool pin_memory = true;
  // Crops as uint8 (B, S, S, 3), RGB interleaved, not normalised (4x fewer bytes to copy to a
  // GPU; engine/nn_ops.h normalize_images makes the backbone's input from them), instead of
  // float32 (B, 3, S, S) normalised.
  bool u8_crops = false;

  DecodeLimits limits;
  int log_bad_files = 5;
  // Where messages go (default: standard error, prefixed "[data] ").
  std::function<void(const std::string&)> log;
};

struct Batch {
  int64_t epoch = 0;
  int64_t index = 0;  // batch index within the epoch, 0 .. size() - 1
  int64_t size = 0;   // B
  Tensor crops[2];    // F32 (B, 3, S, S), ImageNet-normalised; U8 (B, S, S, 3) with u8_crops
  Tensor coords[2];   // F32 (B, 4): overlap box x1, y1, x2, y2 in the view's coordinates
  Tensor flags[2];    // U8 (B): 1 when the view is flipped
  Tensor indices;     // I64 (B): the dataset index each sample was made from
  std::vector<TwoViewParams> params;  // every decision per sample (crops, flips, colour)
};

struct LoaderStats {
  int64_t samples = 0;                    // samples made so far
  int64_t bad_files = 0;                  // distinct files refused so far
  std::vector<std::string> bad_examples;  // the first few, "path: reason"
};

class DataLoader {
 public:
  // Builds the dataset from cfg (image folder or synthetic scenes).
  explicit DataLoader(const LoaderConfig& cfg);
  DataLoader(std::shared_ptr<const Dataset> dataset, const LoaderConfig& cfg);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // The next batch of the stream (blocks until it is ready). Throws sc::Error when a sample could
  // not be made (see "Bad input").
  Batch next_batch();

  int64_t size() const;               // batches per epoch on this rank
  int64_t samples_per_epoch() const;  // this rank's share of an epoch
  const Dataset& dataset() const;
  std::shared_ptr<const Dataset> dataset_ptr() const;
  const LoaderConfig& config() const;
  const AugmentConfig& augment_config() const;
  LoaderStats stats() const;
  // This rank's dataset indices for epoch e, in batch order (before bad-file substitution).
  std::vector<int64_t> epoch_indices(int64_t epoch) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Builds the dataset a LoaderConfig names (what the DataLoader(cfg) constructor uses).
std::shared_ptr<const Dataset> make_dataset(const LoaderConfig& cfg);

// The permutation of [0, n) used for epoch `epoch` with this seed (Fisher-Yates).
std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, int64_t epoch);
// The random source of the sample made from dataset index `index` in epoch `epoch`: the loader
// calls augment_two_views(image, augment_config(), rng, ...) with it.
Rng sample_rng(uint64_t seed, int64_t epoch, int64_t index);

// Unaugmented synthetic scenes first .. first + count - 1 (of the set with `seed`), rendered at
// size x size: images F32 (B, 3, S, S) ImageNet-normalised and class maps U8 (B, S, S), for
// scoring the grouping (arg-max prototype against the class map).
struct SceneBatch {
  Tensor images;
  Tensor class_maps;
};
SceneBatch render_scene_batch(uint64_t seed, int64_t first, int64_t count, int size,
                              SceneObjects objects = SceneObjects::Standard);

// The class maps seen by view v (0 or 1) of each sample of a synthetic batch, resampled
// (nearest) to out_size x out_size: U8 (B, out_size, out_size). The dataset must be the
// SyntheticSceneDataset the batch came from.
Tensor view_class_maps(const Batch& batch, const SyntheticSceneDataset& dataset, int view,
                       int out_size);

}  // namespace data
}  // namespace sc
