// Slot pictures from `slotcon train` (start, checkpoints, end) and `slotcon slots` (checkpoints,
// plain state files with --config, image folders with unreadable files, usage errors).
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "app_test_util.h"
#include "data/image.h"
#include "engine/safetensors.h"

namespace fs = std::filesystem;
using app_test::Run;
using app_test::run;

namespace {
using app_test::fresh_dir;
const std::string kTiny = app_test::kTinyTrain + "--no-auto-resume ";

// The size of a PNG, read back with the project's decoder.
std::pair<int, int> png_size(const std::string& path) {
  sc::data::ImageU8 img;
  std::string why;
  INFO(path);
  REQUIRE(sc::data::load_image(path, &img, &why));
  return {img.width, img.height};
}
// Grid size for n images of s px, c pairs per row (model/slot_vis.h: gaps 12, pair gap 2).
std::pair<int, int> grid_size(int n, int s, int c) {
  const int cols = std::min(n, c), rows = (n + cols - 1) / cols;
  return {cols * (2 * s + 2 + 12) + 12, rows * (s + 12) + 12};
}
}  // namespace

TEST_CASE("slots: train draws them at the start, at each checkpoint and at the end") {
  const std::string d = fresh_dir("slots_train");
  Run r = run(kTiny + "--epochs 1 --slot_images 3 --output_dir " + d);
  INFO(r.out);
  REQUIRE(r.code() == 0);
  for (const char* f : {"slots_epoch_0000.png", "slots_epoch_0001.png", "slots_final.png"}) {
    CHECK(r.out.find(std::string("slots drawn in ") + d + "/" + f) != std::string::npos);
    CHECK(png_size(d + "/" + f) == grid_size(3, 64, 4));
  }
  const std::string off = fresh_dir("slots_train_off");
  Run r0 = run(kTiny + "--steps 1 --slot_images 0 --output_dir " + off);
  INFO(r0.out);
  REQUIRE(r0.code() == 0);
  CHECK_FALSE(fs::exists(off + "/slots_epoch_0000.png"));
  CHECK_FALSE(fs::exists(off + "/slots_final.png"));
  Run bad = run(kTiny + "--steps 1 --slot_images -1 --output_dir " + off);
  CHECK(bad.code() != 0);
  CHECK(bad.out.find("slot_images") != std::string::npos);
}

TEST_CASE("slots: slotcon slots draws a checkpoint, a state file with --config, a folder") {
  const std::string d = fresh_dir("slots_cmd");
  Run t = run(kTiny + "--steps 1 --slot_images 0 --output_dir " + d);
  INFO(t.out);
  REQUIRE(t.code() == 0);
  const std::string ckpt = d + "/final.safetensors";

  // held-out synthetic scenes (default)
  Run r = run("slots " + ckpt + " --out " + d + "/a.png --count 5 --cols 2 --size 48");
  INFO(r.out);
  REQUIRE(r.code() == 0);
  CHECK(r.out.find("5 images at 48 px") != std::string::npos);
  CHECK(r.out.find("of 8 prototypes in use") != std::string::npos);
  CHECK(png_size(d + "/a.png") == grid_size(5, 48, 2));

  // an image folder with one unreadable file: skipped and named
  const std::string imgs = fresh_dir("slots_cmd_images");
  std::vector<uint8_t> px(size_t(80 * 50 * 3));
  for (size_t i = 0; i < px.size(); ++i) px[i] = uint8_t(i * 7);
  sc::data::write_png(imgs + "/a.png", px.data(), 80, 50, 3);
  sc::data::write_png(imgs + "/c.png", px.data(), 50, 80, 3);
  std::ofstream(imgs + "/b.png") << "not a png at all";
  Run f = run("slots " + ckpt + " --images " + imgs + " --out " + d + "/f.png --size 32");
  INFO(f.out);
  REQUIRE(f.code() == 0);
  CHECK(f.out.find("skipped " + imgs + "/b.png") != std::string::npos);
  CHECK(png_size(d + "/f.png") == grid_size(2, 32, 4));
  const std::string empty = fresh_dir("slots_cmd_bad_only");
  std::ofstream(empty + "/x.png") << "garbage";
  Run none = run("slots " + ckpt + " --images " + empty + " --out " + d + "/n.png");
  CHECK(none.code() == 1);
  CHECK(none.out.find("could be read") != std::string::npos);
  CHECK_FALSE(fs::exists(d + "/n.png"));

  // picks spread over the sorted files: one per class folder
  const std::string classes = fresh_dir("slots_cmd_classes");
  for (const char* c : {"a", "b", "c"}) {
    fs::create_directories(classes + "/" + c);
    for (int i = 0; i < 3; ++i)
      sc::data::write_png(classes + "/" + c + "/" + std::to_string(i) + ".png", px.data(), 80, 50,
                          3);
  }
  std::ofstream(classes + "/b/0.png") << "corrupt";  // b's pick moves on to b/1.png
  Run sp = run("slots " + ckpt + " --images " + classes + " --count 3 --out " + d + "/sp.png");
  INFO(sp.out);
  REQUIRE(sp.code() == 0);
  CHECK(sp.out.find("0: " + classes + "/a/0.png") != std::string::npos);
  CHECK(sp.out.find("1: " + classes + "/b/1.png") != std::string::npos);
  CHECK(sp.out.find("2: " + classes + "/c/0.png") != std::string::npos);

  // a state file without the run's config: a clear error, then fine with --config
  sc::SafetensorsFile c = sc::read_safetensors(ckpt);
  sc::TensorMap model;
  for (auto& kv : c.tensors)
    if (kv.first.rfind("optimizer.", 0) != 0) model.emplace(kv.first, kv.second);
  sc::write_safetensors(d + "/state.safetensors", model);
  Run nc = run("slots " + d + "/state.safetensors --out " + d + "/s.png");
  CHECK(nc.code() == 1);
  CHECK(nc.out.find("no run config") != std::string::npos);
  std::ofstream(d + "/cfg.json") << R"({"arch": "resnet18", "dim_hidden": 32, "dim_out": 16,
      "num_prototypes": 8, "image_size": 64, "synthetic_images": 8})";
  Run wc = run("slots " + d + "/state.safetensors --config " + d + "/cfg.json --count 2 --out " +
               d + "/s.png --size 40");
  INFO(wc.out);
  REQUIRE(wc.code() == 0);
  CHECK(png_size(d + "/s.png") == grid_size(2, 40, 4));
  // a config that does not match the state is refused by the state loader
  std::ofstream(d + "/cfg8.json") << R"({"arch": "resnet18", "num_prototypes": 9})";
  Run mismatch = run("slots " + d + "/state.safetensors --config " + d + "/cfg8.json");
  CHECK(mismatch.code() == 1);

  // usage
  CHECK(run("slots").code() == 2);
  CHECK(run("slots " + ckpt + " --bogus").code() == 2);
  Run zero = run("slots " + ckpt + " --count 0");
  CHECK(zero.code() == 1);
  CHECK(zero.out.find("--count") != std::string::npos);
  Run help = run("slots --help");
  CHECK(help.code() == 0);
  CHECK(help.out.find("usage: slotcon slots") != std::string::npos);
  CHECK(run("--help").out.find("slots") != std::string::npos);
}

TEST_CASE("slots: train on an image folder, a corrupt file in it, draws its first images") {
  const std::string imgs = fresh_dir("slots_folder_images");
  std::mt19937 rng(7);
  for (int i = 0; i < 6; ++i) {  // landscape and portrait, not square
    const int w = i % 2 ? 90 : 70, h = i % 2 ? 70 : 90;
    std::vector<uint8_t> px(size_t(w * h * 3));
    for (uint8_t& v : px) v = uint8_t(rng() % 256);
    sc::data::write_png(imgs + "/img" + std::to_string(i) + ".png", px.data(), w, h, 3);
  }
  std::ofstream(imgs + "/img0_bad.png") << "truncated";  // sorts second: the picture skips it
  const std::string d = fresh_dir("slots_folder");
  Run r = run(app_test::kTinyTrain + "--no-auto-resume --dataset folder --data_dir " + imgs +
              " --steps 2 --slot_images 3 --output_dir " + d);
  INFO(r.out);
  REQUIRE(r.code() == 0);
  CHECK(r.out.find("done: 2 steps") != std::string::npos);
  CHECK(png_size(d + "/slots_epoch_0000.png") == grid_size(3, 64, 4));
  CHECK(png_size(d + "/slots_final.png") == grid_size(3, 64, 4));
}
