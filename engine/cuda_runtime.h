// cuda_runtime.h: the engine's view of the CUDA runtime, safe to include in CPU-only builds.
#pragma once
#include <string>

namespace sc {

// True when this build has the CUDA backend compiled in.
bool cuda_built();
// Number of usable CUDA devices (0 when not built with CUDA or when no driver/device is present).
int cuda_device_count();
inline bool cuda_available() { return cuda_device_count() > 0; }
// Human-readable name of device i ("NVIDIA H100 80GB HBM3, sm_90"), or "" when absent.
std::string cuda_device_name(int i = 0);
// Block the host until all work on the engine's stream of device i has finished.
void cuda_synchronize(int i = 0);

}  // namespace sc
