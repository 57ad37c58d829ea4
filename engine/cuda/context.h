// context.h: per-device CUDA state shared by the engine's CUDA code (include only from .cu or
// CUDA-enabled .cpp files). One stream per device; all engine work on a device is ordered on it.
//
// Thread safety: the per-device state is created once (std::call_once) and may be queried from
// any thread. A cuBLAS handle must not be used by two threads at the same time; the engine issues
// its GEMMs from one thread.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "engine/error.h"

namespace sc {
namespace cuda {

// Most devices the engine's per-device tables hold.
constexpr int kMaxDevices = 64;

// The engine's stream for `device` (created on first use; a non-blocking stream).
cudaStream_t stream(int device = 0);
// The stream of `device` if it was already created, else nullptr; never creates anything (the
// pinned allocator uses it to order host-buffer reuse after pending copies).
cudaStream_t existing_stream(int device);
// The device's copy stream (created on first use; non-blocking): host-to-device input copies that
// overlap the engine stream's work (engine/upload.h), ordered against it by events only.
cudaStream_t copy_stream(int device = 0);
cudaStream_t existing_copy_stream(int device);  // nullptr until copy_stream created it
// A cuBLAS handle bound to stream(device), with its workspace configured once. Full FP32 maths:
// TF32 is never enabled, and reduced-precision split-K reductions are disallowed.
cublasHandle_t cublas(int device = 0);
// Make `device` current for the calling thread (a cheap no-op when it already is).
void set_device(int device);
// Number of streaming multiprocessors of `device` (cached).
int sm_count(int device = 0);
// Errors that device code can only report after the fact (an out-of-range row index in
// index_select_rows / index_add_rows): throws sc::Error describing the first one and clears it.
// Call after `device`'s stream has been synchronised; costs one small device-to-host copy.
void check_deferred_errors(int device);

}  // namespace cuda
}  // namespace sc

#define SC_CUDA_CHECK(expr)                                                            \
  do {                                                                                 \
    cudaError_t err_ = (expr);                                                         \
    if (err_ != cudaSuccess)                                                           \
      throw ::sc::Error(::sc::str_cat("CUDA error at ", __FILE__, ":", __LINE__, ": ", \
                                      cudaGetErrorString(err_), " (", #expr, ")"));    \
  } while (0)
#define SC_CUBLAS_CHECK(expr)                                                                     \
  do {                                                                                            \
    cublasStatus_t st_ = (expr);                                                                  \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                             \
      throw ::sc::Error(::sc::str_cat("cuBLAS error ", int(st_), " at ", __FILE__, ":", __LINE__, \
                                      " (", #expr, ")"));                                         \
  } while (0)
