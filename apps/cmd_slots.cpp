// slotcon slots: a picture of a checkpoint's slots (each image beside its teacher arg-max
// prototype map), on held-out synthetic scenes or images spread over a folder.
#include <cstdio>
#include <string>
#include <vector>

#include "apps/commands.h"
#include "apps/run_model.h"
#include "apps/slot_picture.h"
#include "data/dataset.h"
#include "model/slotcon.h"
#include "model/train_config.h"

namespace sc {
namespace app {
namespace {

void slots_usage(FILE* out) {
  std::fprintf(
      out,
      "usage: slotcon slots CHECKPOINT [--out FILE] [--images DIR[:DIR...]] [--count N]\n"
      "                     [--size S] [--cols C] [--device auto|cpu|cuda] [--config FILE]\n\n"
      "Draws the teacher's slots: each image beside itself tinted by the colour of every\n"
      "pixel's arg-max prototype (feature resolution, upsampled), with a dark line where the\n"
      "prototype changes, as a PNG grid. `slotcon train` writes the same picture into its\n"
      "output_dir at the start, at every checkpoint and at the end (config key slot_images).\n\n"
      "  --out FILE     the PNG to write (default slots.png)\n"
      "  --images DIR   N images spread evenly over DIR's sorted files (':' separates several\n"
      "                 folders), the centre square of each; default: held-out synthetic\n"
      "                 scenes of the run's seed\n"
      "  --count N      images to draw (default 8)\n"
      "  --size S       pixels per image side (default 224)\n"
      "  --cols C       (image, slots) pairs per row (default 4)\n"
      "  --device D     auto (the GPU when present), cpu or cuda (default auto)\n"
      "  --config FILE  the run's JSON config, for a state file without one in its metadata\n"
      "                 (e.g. converted from the authors' checkpoint); a checkpoint written by\n"
      "                 `slotcon train` carries its own\n");
}

}  // namespace

int cmd_slots(const Args& args) {
  std::string in, out = "slots.png", images, config_file, device = "auto";
  int64_t count = 8, size = 224, cols = kSlotPictureCols;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> std::string { return option_value(args, &i); };
    if (a == "--help" || a == "-h") {
      slots_usage(stdout);
      return 0;
    } else if (a == "--out") {
      out = value();
    } else if (a == "--images") {
      images = value();
    } else if (a == "--count") {
      count = parse_count(a, value());
    } else if (a == "--size") {
      size = parse_count(a, value());
    } else if (a == "--cols") {
      cols = parse_count(a, value());
    } else if (a == "--device") {
      device = value();
    } else if (a == "--config") {
      config_file = value();
    } else if (!a.empty() && a[0] == '-') {
      std::fprintf(stderr, "slotcon slots: unknown option '%s' (see --help)\n", a.c_str());
      return 2;
    } else {
      SC_CHECK(in.empty(), "one checkpoint only (got '", in, "' and '", a, "')");
      in = a;
    }
  }
  if (in.empty()) {
    std::fprintf(stderr, "usage: slotcon slots CHECKPOINT [options] (see --help)\n");
    return 2;
  }
  SC_CHECK(count >= 1 && count <= 1024, "--count must be in [1, 1024], got ", count);
  SC_CHECK(size >= 32 && size <= 1024, "--size must be in [32, 1024], got ", size);
  SC_CHECK(cols >= 1, "--cols must be at least 1");
  const Device dev = choose_device(device, "--device");

  RunModel run = load_run_model(in, config_file, dev);
  const TrainConfig& cfg = run.cfg;
  SlotConModel& model = *run.model;

  PictureImages pics;
  if (images.empty()) {
    pics = picture_scenes(cfg.seed, cfg.synthetic_images, count, int(size),
                          data::parse_scene_objects(cfg.synthetic_objects));
  } else {
    std::vector<std::string> skipped;
    pics = picture_folder_images(data::split_paths(images), count, int(size), &skipped);
    for (const std::string& s : skipped) std::printf("skipped %s\n", s.c_str());
  }
  const int used = write_slot_picture(model, pics, dev, int(cols), out);
  for (int64_t i = 0; i < pics.count(); ++i)
    std::printf("  %lld: %s\n", (long long)i, pics.names[size_t(i)].c_str());
  std::printf("wrote %s: %lld images at %lld px, %d of %lld prototypes in use\n", out.c_str(),
              (long long)pics.count(), (long long)size, used, (long long)cfg.num_prototypes);
  return 0;
}

}  // namespace app
}  // namespace sc
