// The one Catch2 runner shared by every test executable.
// An executable may define `int slotcon_test_gate()` to stop before running: tests/gpu defines it
// to print one line and exit with 77 (ctest's "Skipped") when no CUDA device is present.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

extern "C" __attribute__((weak)) int slotcon_test_gate() { return 0; }

int main(int argc, char* argv[]) {
  // Listing tests (ctest discovery) must work everywhere, device or not.
  bool listing = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--list", 0) == 0) listing = true;
  }
  if (!listing) {
    int gate = slotcon_test_gate();
    if (gate != 0) return gate;
  }
  return Catch::Session().run(argc, argv);
}
