// GPU tests run only where a CUDA device is present; elsewhere every test is reported skipped.
#include <cstdio>

#include "engine/cuda_runtime.h"

extern "C" int slotcon_test_gate() {
  if (!sc::cuda_built()) {
    std::printf("SKIP: GPU tests: this build has no CUDA backend\n");
    return 77;
  }
  if (!sc::cuda_available()) {
    std::printf("SKIP: GPU tests: no CUDA device present\n");
    return 77;
  }
  return 0;
}
