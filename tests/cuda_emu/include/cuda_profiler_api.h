// cuda_profiler_api.h for the CUDA emulator: no profiler attaches to it, so the range calls that
// tell one where to record (engine/cuda_runtime.h, cuda_profiler_range) do nothing.
#pragma once
#include "cuda_emu.h"

inline cudaError_t cudaProfilerStart() { return cudaSuccess; }
inline cudaError_t cudaProfilerStop() { return cudaSuccess; }
