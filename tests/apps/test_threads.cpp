// The CPU thread count `slotcon train` uses: SLOTCON_NUM_THREADS, else the CPUs the process may
// run on (its affinity mask, e.g. under taskset or a container's cpuset).
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "app_test_util.h"

namespace {
// `prefix slotcon train ... --steps 0` (scores nothing, trains nothing), stdout and stderr.
std::string run_with(const std::string& prefix, const std::string& out_dir) {
  const app_test::Run r = app_test::run_command(
      prefix + " " + std::string(SLOTCON_BINARY_DIR) + "/apps/slotcon " + app_test::kTinyTrain +
      "--device cpu --steps 0 --slot_images 0 --no-auto-resume --output_dir " + out_dir);
  CHECK(r.status == 0);
  return r.out;
}
}  // namespace

TEST_CASE("threads: SLOTCON_NUM_THREADS, else the process's CPUs") {
  const std::string d = app_test::fresh_dir("threads");
  const std::string three = run_with("SLOTCON_NUM_THREADS=3", d);
  INFO(three);
  CHECK(three.find("on cpu (3 threads)") != std::string::npos);
  const std::string bad = run_with("SLOTCON_NUM_THREADS=zero", d);  // ignored: the default
  CHECK(bad.find("on cpu (") != std::string::npos);
  if (std::system("taskset -c 0 true >/dev/null 2>&1") == 0) {
    const std::string one = run_with("env -u SLOTCON_NUM_THREADS taskset -c 0", d);
    INFO(one);
    CHECK(one.find("on cpu (1 thread)") != std::string::npos);
  } else {
    WARN("taskset not available: the affinity default is not checked");
  }
}
