// elementwise.cuh: device-side element conversions and launch sizing shared by the grid-stride
// kernels of kernels/ (include from .cu files only). 16-bit types load to float and store with
// round-to-nearest; float and double stay as they are.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "kernels/check.h"
#include "kernels/dtype.h"

namespace sc {
namespace kernels {

// The accumulation type of an element type: double for double, float otherwise.
template <class T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

__device__ __forceinline__ float load_acc(const float* p) { return *p; }
__device__ __forceinline__ double load_acc(const double* p) { return *p; }
__device__ __forceinline__ float load_acc(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float load_acc(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(double* p, double v) { *p = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half(v); }

// Calls f(T{}) with T the element type of a floating dtype (F32 float, F64 double, BF16
// __nv_bfloat16, F16 __half); any other dtype fails naming `what` and the dtype. The engine's CUDA
// backend dispatches with it too (engine/cuda/device_utils.cuh).
template <class F>
void dispatch_float(DType dtype, const char* what, F&& f) {
  switch (dtype) {
    case DType::F32:
      f(float{});
      break;
    case DType::F64:
      f(double{});
      break;
    case DType::BF16:
      f(__nv_bfloat16{});
      break;
    case DType::F16:
      f(__half{});
      break;
    default:
      fail(what, std::string("the CUDA backend computes in F32, F64, BF16 and F16, not ") +
                     dtype_name(dtype));
  }
}

// Blocks for a grid-stride loop over n elements: at least 1, at most max_blocks.
inline int grid_for(int64_t n, int threads, int64_t max_blocks = 65536) {
  return int(std::max<int64_t>(1, std::min<int64_t>((n + threads - 1) / threads, max_blocks)));
}

}  // namespace kernels
}  // namespace sc
