// dataset.h: what the loader reads from: an image folder (or several) or the synthetic scenes.
//
// A Dataset is a fixed-size, indexable list of images. load() is called from several worker
// threads at once and must be thread-safe; it is called once per sample (never per pixel).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/image.h"
#include "data/scenes.h"

namespace sc {
namespace data {

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  // Decode item i into *out. Returns false with a reason when the item cannot be used (a bad
  // file); never throws for bad data.
  virtual bool load(int64_t i, ImageU8* out, std::string* why) const = 0;
  // A name for messages (the file path, or "synthetic scene 12").
  virtual std::string item_name(int64_t i) const = 0;
  virtual bool is_synthetic() const { return false; }
};

// Every .jpg, .jpeg and .png (extension in any case) under each root, recursively. Roots are
// listed in the order given; within a root, files are sorted by their path relative to the
// root (byte order), so the order is the same on every machine and every run. Symbolic links to
// files are followed, links to directories are not (no cycles). Throws sc::Error when a root is
// missing, is not a directory, or holds no image.
std::vector<std::string> scan_image_folders(const std::vector<std::string>& roots);
// "a:b:c" -> {"a", "b", "c"} (empty parts dropped): how several folders are given in one string.
std::vector<std::string> split_paths(const std::string& s, char sep = ':');

class ImageFolderDataset : public Dataset {
 public:
  explicit ImageFolderDataset(const std::vector<std::string>& roots, DecodeLimits limits = {});
  // An explicit file list (used by tests and tools); must not be empty.
  static std::shared_ptr<ImageFolderDataset> from_files(std::vector<std::string> files,
                                                        DecodeLimits limits = {});
  int64_t size() const override { return int64_t(files_.size()); }
  bool load(int64_t i, ImageU8* out, std::string* why) const override;
  std::string item_name(int64_t i) const override;
  const std::vector<std::string>& files() const { return files_; }

 private:
  ImageFolderDataset() = default;
  std::vector<std::string> files_;
  DecodeLimits limits_;
};

// Scene i of scenes.h, rendered on the fly at width x height from (seed, i).
class SyntheticSceneDataset : public Dataset {
 public:
  SyntheticSceneDataset(int64_t count, uint64_t seed, int width, int height,
                        SceneObjects objects = SceneObjects::Standard);
  int64_t size() const override { return count_; }
  bool load(int64_t i, ImageU8* out, std::string* why) const override;
  std::string item_name(int64_t i) const override;
  bool is_synthetic() const override { return true; }
  uint64_t seed() const { return seed_; }
  int width() const { return width_; }
  int height() const { return height_; }
  SceneObjects objects() const { return objects_; }
  // The class map of scene i at the dataset's size (width * height, row-major).
  std::vector<uint8_t> class_map(int64_t i) const;

 private:
  int64_t count_;
  uint64_t seed_;
  int width_, height_;
  SceneObjects objects_;
};

}  // namespace data
}  // namespace sc
