// slot_picture.h: the images a slot picture shows, and the picture itself (model/slot_vis.h),
// shared by `slotcon slots` and `slotcon train` (which draws one at the start, at every
// checkpoint and at the end).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/scenes.h"
#include "engine/tensor.h"

namespace sc {
class SlotConModel;
namespace app {

struct PictureImages {
  int size = 0;              // square, size x size
  std::vector<uint8_t> rgb;  // count * size * size * 3
  std::vector<std::string> names;
  int64_t count() const { return int64_t(names.size()); }
};

// Synthetic scenes first .. first + count - 1 of `seed` (the held-out ones start at the training
// set's size, as the grouping score's do).
PictureImages picture_scenes(uint64_t seed, int64_t first, int64_t count, int size,
                             data::SceneObjects objects = data::SceneObjects::Standard);
// `count` images of the folders spread evenly over scan_image_folders' sorted list (all of them
// when there are no more), each the centre square of its shorter side resized to size x size
// (bicubic); a file that cannot be read is named in *skipped and the next one is tried. Throws
// sc::Error when none can be used.
PictureImages picture_folder_images(const std::vector<std::string>& roots, int64_t count, int size,
                                    std::vector<std::string>* skipped);

// (image, slots) pairs per row of a picture, unless `slotcon slots --cols` says otherwise.
constexpr int kSlotPictureCols = 4;

// The teacher's arg-max prototype maps of the images (model.assign_prototypes on `dev`), drawn
// as a grid of `cols` (image, slots) pairs per row into the PNG `path` (written to a temporary
// file, then renamed). Returns how many distinct prototypes the maps use.
int write_slot_picture(SlotConModel& model, const PictureImages& images, Device dev, int cols,
                       const std::string& path);

}  // namespace app
}  // namespace sc
