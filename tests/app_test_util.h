// app_test_util.h: run the built `slotcon` binary with arguments and capture what it prints.
#pragma once
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <string>

namespace app_test {

struct Run {
  int status = -1;
  std::string out;  // stdout and stderr together
  // The exit code of a normal exit, -1 when the process died from a signal.
  int code() const { return WIFEXITED(status) ? WEXITSTATUS(status) : -1; }
};

// A shell command line, its stderr joined to its stdout.
inline Run run_command(const std::string& command) {
  Run r;
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) r.out.append(buf, n);
  r.status = pclose(p);
  return r;
}

// The built `slotcon` binary with these arguments.
inline Run run(const std::string& args) {
  return run_command(std::string(SLOTCON_BINARY_DIR) + "/apps/slotcon " + args);
}

// An empty directory <build>/test_tmp/<name> (removed first if it exists).
inline std::string fresh_dir(const std::string& name) {
  std::filesystem::path d = std::filesystem::path(SLOTCON_BINARY_DIR) / "test_tmp" / name;
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d.string();
}

// `slotcon train` with a tiny CPU model on 8 synthetic scenes at 64 px, a progress line per
// step, no grouping score: a few seconds per step.
inline const std::string kTinyTrain =
    "train --dataset synthetic --arch resnet18 --dim_hidden 32 --dim_out 16 --num_prototypes 8 "
    "--image_size 64 --batch_size 4 --synthetic_images 8 --num_workers 1 --warmup_epoch 0 "
    "--print_freq 1 --score-images 0 ";

}  // namespace app_test
