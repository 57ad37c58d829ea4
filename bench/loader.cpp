// bench_loader: data-loader throughput for SlotCon's two 224 px views from real-size JPEGs.
//
// Generates a few hundred 640x480 JPEGs from the synthetic scene generator (or uses --dir), then
//   1. one thread, stage by stage: read + decode, two crops + bicubic resizes, colour / blur /
//      solarize, normalisation (median ms per image over the files);
//   2. the DataLoader with W workers (default: all cores), batch 32: images per second, and per
//      core.
// Usage: bench_loader [--images N] [--workers W] [--batches M] [--size S] [--dir DIR]
//                     [--write-only DIR]
// --write-only DIR writes the JPEGs to DIR and exits (bench/loader_pil_baseline.py reads them).
// CPU only: no GPU is involved (batches go to pinned memory when a CUDA device is present).
#include "data/loader.h"

#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "data/augment.h"
#include "data/dataset.h"
#include "data/image.h"
#include "data/scenes.h"

using namespace sc::data;
using Clock = std::chrono::steady_clock;

namespace {

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// CPU time (ms) of this thread or of the whole process: robust to other load on the machine.
double cpu_ms(clockid_t which) {
  timespec ts;
  clock_gettime(which, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}
double thread_ms() { return cpu_ms(CLOCK_THREAD_CPUTIME_ID); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

void write_jpegs(const std::string& dir, int n) {
  std::filesystem::create_directories(dir);
  Scene s;
  char name[64];
  for (int i = 0; i < n; ++i) {
    render_scene(2024, i, 640, 480, &s);
    std::snprintf(name, sizeof(name), "/img_%05d.jpg", i);
    write_jpeg(dir + name, s.image.rgb.data(), 640, 480, 3, 90);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int images = 300, batches = 0, size = 224;
  int workers = int(std::max(1u, std::thread::hardware_concurrency()));
  std::string dir, write_only;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "missing value after %s\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--images")
      images = std::atoi(next().c_str());
    else if (a == "--workers")
      workers = std::atoi(next().c_str());
    else if (a == "--batches")
      batches = std::atoi(next().c_str());
    else if (a == "--size")
      size = std::atoi(next().c_str());
    else if (a == "--dir")
      dir = next();
    else if (a == "--write-only")
      write_only = next();
    else {
      std::fprintf(stderr,
                   "usage: bench_loader [--images N] [--workers W] [--batches M] [--size S] "
                   "[--dir DIR] [--write-only DIR]\n");
      return 2;
    }
  }
  if (!write_only.empty()) {
    const auto t0 = Clock::now();
    write_jpegs(write_only, images);
    std::printf("wrote %d 640x480 JPEGs (quality 90) to %s in %.1f s\n", images, write_only.c_str(),
                ms_since(t0) / 1000);
    return 0;
  }
  bool own_dir = false;
  if (dir.empty()) {
    dir = (std::filesystem::temp_directory_path() /
           ("slotcon_bench_loader_" + std::to_string(::getpid())))
              .string();
    std::printf("writing %d 640x480 JPEGs to %s ...\n", images, dir.c_str());
    write_jpegs(dir, images);
    own_dir = true;
  }
  const std::vector<std::string> files = scan_image_folders({dir});
  std::printf("%zu files, views %dx%d, cores visible: %u\n", files.size(), size, size,
              std::thread::hardware_concurrency());

  // 1. Stage by stage, one thread.
  {
    AugmentConfig cfg;
    cfg.size = size;
    AugmentScratch scratch;
    std::vector<float> out(size_t(3) * size * size);
    std::vector<double> t_read, t_decode, t_resize, t_color, t_norm, t_total;
    ImageU8 img, view;
    std::vector<uint8_t> bytes;
    std::string why;
    const size_t n = std::min<size_t>(files.size(), 200);
    for (size_t i = 0; i < n; ++i) {
      double t0 = thread_ms();
      read_file(files[i], &bytes, &why);
      t_read.push_back((thread_ms() - t0));
      t0 = thread_ms();
      if (!decode_image(bytes.data(), bytes.size(), &img, &why)) continue;
      t_decode.push_back((thread_ms() - t0));
      Rng rng(7, i);
      const TwoViewParams p = sample_two_view_params(img.width, img.height, cfg, rng);
      double tr = 0, tc = 0, tn = 0;
      for (int v = 0; v < 2; ++v) {
        ViewParams geo = p.view[v];
        ViewParams col = geo;
        geo.color = ColorParams();
        t0 = thread_ms();
        render_view_u8(img, geo, cfg, &view, &scratch);  // crop + resize + flip
        tr += (thread_ms() - t0);
        t0 = thread_ms();
        ImageU8 full;
        render_view_u8(img, col, cfg, &full, &scratch);  // the same with colour: difference
        tc += (thread_ms() - t0);
        t0 = thread_ms();
        normalize_to_chw(full, out.data());
        tn += (thread_ms() - t0);
      }
      t_resize.push_back(tr);
      t_color.push_back(std::max(0.0, tc - tr));
      t_norm.push_back(tn);
      t_total.push_back(t_read.back() + t_decode.back() + tc + tn);
    }
    std::printf("\none thread, median CPU ms per image (two views):\n");
    std::printf("  read file           %7.3f\n", median(t_read));
    std::printf("  decode JPEG (stb)   %7.3f\n", median(t_decode));
    std::printf("  2x crop + resize    %7.3f\n", median(t_resize));
    std::printf("  2x colour/blur/sol. %7.3f\n", median(t_color));
    std::printf("  2x normalise        %7.3f\n", median(t_norm));
    std::printf("  total               %7.3f  -> %.1f images/s on one core\n", median(t_total),
                1000.0 / median(t_total));
  }

  // 2. The loader.
  for (int w : {1, workers}) {
    LoaderConfig cfg;
    cfg.data_dir = dir;
    cfg.image_size = size;
    cfg.batch_size = 32;
    cfg.num_workers = w;
    cfg.prefetch_batches = std::max(2, w);
    DataLoader loader(cfg);
    const int warm = 2;
    const int m = batches > 0 ? batches : std::max(4, int(2 * files.size() / 32));
    for (int i = 0; i < warm; ++i) loader.next_batch();
    const auto t0 = Clock::now();
    const double c0 = cpu_ms(CLOCK_PROCESS_CPUTIME_ID);
    int64_t n = 0;
    for (int i = 0; i < m; ++i) n += loader.next_batch().size;
    const double s = ms_since(t0) / 1000;
    const double cpu_s = (cpu_ms(CLOCK_PROCESS_CPUTIME_ID) - c0) / 1000;
    std::printf(
        "\nDataLoader, %d worker(s), batch 32, %d batches (each image = two %dx%d views):\n", w, m,
        size, size);
    std::printf("  wall: %.1f images/s (%.1f per worker)\n", n / s, n / s / w);
    std::printf("  CPU:  %.1f images per CPU-second (all threads, consumer included)\n", n / cpu_s);
    if (w == workers) break;
  }
  if (own_dir) std::filesystem::remove_all(dir);
  return 0;
}
