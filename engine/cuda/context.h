// context.h: per-device CUDA state shared by the engine's CUDA code (include only from .cu or
// CUDA-enabled .cpp files). One stream per device; all engine work on a device is ordered on it.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "engine/error.h"

namespace sc {
namespace cuda {

// The engine's stream for `device` (created on first use; a non-blocking stream).
cudaStream_t stream(int device = 0);
// A cuBLAS handle bound to stream(device), with workspace configured once.
cublasHandle_t cublas(int device = 0);
// Make `device` current for the calling thread.
void set_device(int device);

}  // namespace cuda
}  // namespace sc

#define SC_CUDA_CHECK(expr)                                                                \
  do {                                                                                     \
    cudaError_t err_ = (expr);                                                             \
    if (err_ != cudaSuccess)                                                               \
      throw ::sc::Error(::sc::str_cat("CUDA error at ", __FILE__, ":", __LINE__, ": ",     \
                                      cudaGetErrorString(err_), " (", #expr, ")"));       \
  } while (0)
#define SC_CUBLAS_CHECK(expr)                                                              \
  do {                                                                                     \
    cublasStatus_t st_ = (expr);                                                           \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                      \
      throw ::sc::Error(::sc::str_cat("cuBLAS error ", int(st_), " at ", __FILE__, ":",    \
                                      __LINE__, " (", #expr, ")"));                        \
  } while (0)
