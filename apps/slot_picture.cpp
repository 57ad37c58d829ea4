// slot_picture.cpp: the images a slot picture shows, and the picture (see slot_picture.h).
#include "apps/slot_picture.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "data/dataset.h"
#include "data/scenes.h"
#include "data/transforms.h"
#include "engine/ops.h"
#include "engine/safetensors.h"
#include "model/slot_vis.h"
#include "model/slotcon.h"

namespace sc {
namespace app {

PictureImages picture_scenes(uint64_t seed, int64_t first, int64_t count, int size,
                             data::SceneObjects objects) {
  SC_CHECK(count >= 1 && size >= 1, "slot picture: bad scene count ", count, " or size ", size);
  PictureImages out;
  out.size = size;
  data::Scene scene;
  for (int64_t i = 0; i < count; ++i) {
    data::render_scene(seed, first + i, size, size, &scene, objects);
    out.rgb.insert(out.rgb.end(), scene.image.rgb.begin(), scene.image.rgb.end());
    out.names.push_back("synthetic scene " + std::to_string(first + i));
  }
  return out;
}

PictureImages picture_folder_images(const std::vector<std::string>& roots, int64_t count,
                                    int size, std::vector<std::string>* skipped) {
  SC_CHECK(count >= 1 && size >= 1, "slot picture: bad image count ", count, " or size ", size);
  const std::vector<std::string> files = data::scan_image_folders(roots);
  const int64_t n = int64_t(files.size()), picks = std::min(count, n);
  PictureImages out;
  out.size = size;
  data::ImageU8 img, sq;
  data::ResampleScratch scratch;
  // pick j starts at file j * n / count (spread over the sorted list, e.g. over ImageNet's
  // classes); an unreadable file gives way to the next one before the next pick's start
  for (int64_t j = 0; j < picks; ++j) {
    const int64_t begin = j * n / picks, end = (j + 1) * n / picks;
    for (int64_t f = begin; f < end; ++f) {
      std::string why;
      if (!data::load_image(files[size_t(f)], &img, &why)) {
        if (skipped) skipped->push_back(files[size_t(f)] + ": " + why);
        continue;
      }
      const int side = std::min(img.width, img.height);
      data::resize_crop_bicubic(img, (img.width - side) / 2, (img.height - side) / 2, side, side,
                                size, size, false, &sq, &scratch);
      out.rgb.insert(out.rgb.end(), sq.rgb.begin(), sq.rgb.end());
      out.names.push_back(files[size_t(f)]);
      break;
    }
  }
  SC_CHECK(out.count() > 0, "slot picture: none of the ", files.size(),
           " images under the folders could be read");
  return out;
}

int write_slot_picture(SlotConModel& model, const PictureImages& images, Device dev, int cols,
                       const std::string& path) {
  const int64_t n = images.count(), S = images.size, plane = S * S;
  Tensor x = empty({n, 3, S, S}, DType::F32, Device::cpu());
  data::ImageU8 img;
  for (int64_t i = 0; i < n; ++i) {
    img.resize(int(S), int(S));
    std::memcpy(img.rgb.data(), images.rgb.data() + i * plane * 3, size_t(plane * 3));
    data::normalize_to_chw(img, x.data<float>() + i * 3 * plane);
  }
  Tensor pred = model.assign_prototypes(x.to(dev)).to(Device::cpu());  // (n, h, w) I64
  const int h = int(pred.size(1)), w = int(pred.size(2));
  std::vector<int64_t> maps(pred.data<int64_t>(), pred.data<int64_t>() + pred.numel());
  RgbImage grid = render_slot_grid(images.rgb.data(), maps.data(), n, int(S), h, w, cols);
  const std::vector<uint8_t> png = data::encode_png(grid.rgb.data(), grid.width, grid.height, 3);
  write_file_atomic(path, std::string(png.begin(), png.end()));
  return int(std::set<int64_t>(maps.begin(), maps.end()).size());
}

}  // namespace app
}  // namespace sc
