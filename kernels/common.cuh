// common.cuh: the device helpers every CUDA file shares, kernels/*.cu and the engine's CUDA
// backend (engine/cuda/device_utils.cuh) alike. Include from .cu files only.
//
// - AccOf<T> / Acc<T>: the accumulation type of an element type (double for double, float for
//   float, __nv_bfloat16 and __half);
// - load_acc / store: element loads in the accumulation type, stores rounding to nearest (16-bit
//   types); float and double stay as they are;
// - warp_sum (every lane gets the warp's sum, a butterfly over __shfl_xor_sync) and
//   warp_allreduce (any combine over any trivially copyable value, shuffled as 32-bit words);
// - align256: workspace carving, every buffer starting on a 256-byte boundary;
// - dispatch_float: a floating DType to its element type, for the launchers;
// - grid_for: blocks of a grid-stride loop.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "kernels/check.h"
#include "kernels/dtype.h"

namespace sc {
namespace kernels {

template <class T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <class T>
using Acc = typename AccOf<T>::type;

__device__ __forceinline__ float load_acc(const float* p) { return *p; }
__device__ __forceinline__ double load_acc(const double* p) { return *p; }
__device__ __forceinline__ float load_acc(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float load_acc(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(double* p, double v) { *p = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half(v); }

// ---- warp reductions ----
template <class A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// v of lane (lane ^ mask), for any value made of 32-bit words.
template <class V>
__device__ __forceinline__ V shfl_xor_any(V v, int mask) {
  static_assert(sizeof(V) % 4 == 0, "shuffled values are made of 32-bit words");
  constexpr int W = int(sizeof(V) / 4);
  int w[W];
  memcpy(w, &v, sizeof(V));
#pragma unroll
  for (int i = 0; i < W; ++i) w[i] = __shfl_xor_sync(0xffffffffu, w[i], mask);
  memcpy(&v, w, sizeof(V));
  return v;
}

// Every lane of the warp gets combine() over the warp's 32 values (a butterfly tree).
template <class V, class C>
__device__ __forceinline__ V warp_allreduce(V v, C combine) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = combine(v, shfl_xor_any(v, o));
  return v;
}

// ---- host side ----
inline size_t align256(size_t n) { return (n + 255) / 256 * 256; }

// Calls f(T{}) with T the element type of a floating dtype (F32 float, F64 double, BF16
// __nv_bfloat16, F16 __half); any other dtype fails naming `what` and the dtype. The engine's CUDA
// backend dispatches with it too.
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
