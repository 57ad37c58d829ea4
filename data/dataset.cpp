#include "data/dataset.h"

#include <algorithm>
#include <cctype>
#include <filesystem>

#include "data/scenes.h"
#include "engine/error.h"

namespace sc {
namespace data {
namespace {

bool has_image_extension(const std::filesystem::path& p) {
  std::string ext = p.extension().string();
  for (char& c : ext) c = char(std::tolower(static_cast<unsigned char>(c)));
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png";
}

}  // namespace

std::vector<std::string> split_paths(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find(sep, start);
    if (end == std::string::npos) end = s.size();
    if (end > start) out.push_back(s.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

std::vector<std::string> scan_image_folders(const std::vector<std::string>& roots) {
  namespace fs = std::filesystem;
  SC_CHECK(!roots.empty(), "image folder: no folder given");
  std::vector<std::string> all;
  for (const std::string& root : roots) {
    std::error_code ec;
    const fs::file_status st = fs::status(root, ec);
    SC_CHECK(!ec && fs::exists(st), "image folder: '", root, "' does not exist");
    SC_CHECK(fs::is_directory(st), "image folder: '", root, "' is not a directory");
    std::vector<std::string> rel;
    fs::recursive_directory_iterator it(root, fs::directory_options::skip_permission_denied, ec);
    SC_CHECK(!ec, "image folder: cannot read '", root, "': ", ec.message());
    for (; it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (ec) break;
      const fs::directory_entry& e = *it;
      std::error_code ec2;
      if (!e.is_regular_file(ec2) || ec2) continue;  // follows links to files
      if (!has_image_extension(e.path())) continue;
      rel.push_back(e.path().lexically_relative(root).generic_string());
    }
    SC_CHECK(!ec, "image folder: error while listing '", root, "': ", ec.message());
    SC_CHECK(!rel.empty(), "image folder: no .jpg, .jpeg or .png file under '", root, "'");
    std::sort(rel.begin(), rel.end());
    for (const std::string& r : rel) all.push_back((fs::path(root) / r).string());
  }
  return all;
}

ImageFolderDataset::ImageFolderDataset(const std::vector<std::string>& roots, DecodeLimits limits)
    : files_(scan_image_folders(roots)), limits_(limits) {}

std::shared_ptr<ImageFolderDataset> ImageFolderDataset::from_files(std::vector<std::string> files,
                                                                   DecodeLimits limits) {
  SC_CHECK(!files.empty(), "image folder: empty file list");
  std::shared_ptr<ImageFolderDataset> d(new ImageFolderDataset());
  d->files_ = std::move(files);
  d->limits_ = limits;
  return d;
}

bool ImageFolderDataset::load(int64_t i, ImageU8* out, std::string* why) const {
  SC_CHECK(i >= 0 && i < size(), "image folder: index ", i, " out of range [0, ", size(), ")");
  return load_image(files_[size_t(i)], out, why, limits_);
}

std::string ImageFolderDataset::item_name(int64_t i) const {
  if (i < 0 || i >= size()) return "<index " + std::to_string(i) + ">";
  return files_[size_t(i)];
}

SyntheticSceneDataset::SyntheticSceneDataset(int64_t count, uint64_t seed, int width, int height,
                                             SceneObjects objects)
    : count_(count), seed_(seed), width_(width), height_(height), objects_(objects) {
  SC_CHECK(count > 0, "synthetic scenes: count must be positive, got ", count);
  SC_CHECK(width >= 8 && height >= 8, "synthetic scenes: size must be at least 8x8, got ", width,
           "x", height);
}

bool SyntheticSceneDataset::load(int64_t i, ImageU8* out, std::string*) const {
  SC_CHECK(i >= 0 && i < count_, "synthetic scenes: index ", i, " out of range [0, ", count_, ")");
  thread_local Scene scene;
  render_scene(seed_, i, width_, height_, &scene, objects_);
  std::swap(*out, scene.image);
  return true;
}

std::string SyntheticSceneDataset::item_name(int64_t i) const {
  return "synthetic scene " + std::to_string(i);
}

std::vector<uint8_t> SyntheticSceneDataset::class_map(int64_t i) const {
  SC_CHECK(i >= 0 && i < count_, "synthetic scenes: index ", i, " out of range");
  Scene scene;
  render_scene(seed_, i, width_, height_, &scene, objects_);
  return std::move(scene.class_map);
}

}  // namespace data
}  // namespace sc
