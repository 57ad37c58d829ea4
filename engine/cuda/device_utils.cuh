// device_utils.cuh: what the engine's CUDA backend files share (include only from
// engine/cuda/*.cu).
//
// - element types: float, double, __nv_bfloat16, __half (compute), int64_t, uint8_t (storage);
//   Acc<T> is the accumulation type (double for double, float otherwise);
// - conversions that match the CPU backend's (engine/cpu/backend_cpu.cpp) bit for bit where it
//   is cheap to do so (a double goes to a 16-bit type through float, as on the CPU);
// - Strided<N>: the shared shape and the N operands' strides of an elementwise launch, built on
//   the host with size-1 dims dropped, dims ordered by the first operand's strides and adjacent
//   dims merged, so dense tensors in the same layout (NCHW or NHWC) take the flat path;
// - warp and block all-reductions of any trivially copyable value.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "engine/backend.h"
#include "engine/cuda/context.h"
#include "engine/cuda_runtime.h"
#include "kernels/check.h"
#include "kernels/common.cuh"

namespace sc {
namespace cuda {
namespace detail {

using bf16 = __nv_bfloat16;
using f16 = __half;

using kernels::Acc;  // the accumulation type (kernels/common.cuh)

// ---- loads and stores in the accumulation type ----
__device__ __forceinline__ float load_acc(float x) { return x; }
__device__ __forceinline__ double load_acc(double x) { return x; }
__device__ __forceinline__ float load_acc(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float load_acc(f16 x) { return __half2float(x); }

template <class T>
__device__ __forceinline__ T store_acc(Acc<T> v);
template <>
__device__ __forceinline__ float store_acc<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ double store_acc<double>(double v) {
  return v;
}
template <>
__device__ __forceinline__ bf16 store_acc<bf16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ f16 store_acc<f16>(float v) {
  return __float2half_rn(v);
}

// ---- any-to-any conversion (copy with a dtype change), matching the CPU backend ----
// Widen: 16-bit floats to float, integers to double (as the CPU does), others as they are.
__device__ __forceinline__ float widen(float x) { return x; }
__device__ __forceinline__ double widen(double x) { return x; }
__device__ __forceinline__ float widen(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float widen(f16 x) { return __half2float(x); }
__device__ __forceinline__ double widen(int64_t x) { return double(x); }
__device__ __forceinline__ double widen(uint8_t x) { return double(x); }

template <class D>
struct Narrow {
  template <class W>
  __device__ __forceinline__ static D apply(W v) {
    return static_cast<D>(v);
  }
};
template <>
struct Narrow<bf16> {
  template <class W>
  __device__ __forceinline__ static bf16 apply(W v) {
    return __float2bfloat16_rn(static_cast<float>(v));
  }
};
template <>
struct Narrow<f16> {
  template <class W>
  __device__ __forceinline__ static f16 apply(W v) {
    return __float2half_rn(static_cast<float>(v));
  }
};
template <class D, class S>
__device__ __forceinline__ D convert(S s) {
  return Narrow<D>::apply(widen(s));
}

// ---- strided index maps ----
template <int N>
struct Strided {
  int ndim = 0;
  bool flat = true;  // every operand is dense with unit stride in iteration order
  int64_t shape[kMaxDims];
  int64_t stride[N][kMaxDims];

  // Element offsets of the N operands for iteration index i (row-major over `shape`).
  __device__ __forceinline__ void offsets(int64_t i, int64_t (&off)[N]) const {
    if (flat) {
#pragma unroll
      for (int k = 0; k < N; ++k) off[k] = i;
      return;
    }
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] = 0;
    for (int d = ndim - 1; d >= 0; --d) {
      const int64_t q = i / shape[d];
      const int64_t r = i - q * shape[d];
      i = q;
#pragma unroll
      for (int k = 0; k < N; ++k) off[k] += r * stride[k][d];
    }
  }
};

// Build the index map of N same-shape operands; ts[0] (the output) decides the iteration order.
template <int N>
Strided<N> make_strided(const Tensor* const (&ts)[N], const char* op) {
  const Shape& shape = ts[0]->shape();
  const int nd = int(shape.size());
  for (int k = 1; k < N; ++k)
    SC_CHECK(ts[k]->shape() == shape, op, ": operand shapes differ (", shape_str(shape), " and ",
             shape_str(ts[k]->shape()), ")");
  // Keep the dims of size > 1.
  int dims[64];
  int m = 0;
  SC_CHECK(nd <= 64, op, ": too many dims");
  for (int d = 0; d < nd; ++d)
    if (shape[d] != 1) dims[m++] = d;
  // Order them by the first operand's stride, largest first (stable: ties keep their order).
  for (int i = 1; i < m; ++i) {
    const int v = dims[i];
    int j = i;
    while (j > 0 && ts[0]->strides()[dims[j - 1]] < ts[0]->strides()[v]) {
      dims[j] = dims[j - 1];
      --j;
    }
    dims[j] = v;
  }
  // Merge adjacent dims that every operand walks as one.
  int64_t sh[64];
  int64_t st[N][64];
  int r = 0;
  for (int i = 0; i < m; ++i) {
    const int d = dims[i];
    bool merge = r > 0;
    for (int k = 0; k < N && merge; ++k) merge = st[k][r - 1] == ts[k]->strides()[d] * shape[d];
    if (merge) {
      sh[r - 1] *= shape[d];
      for (int k = 0; k < N; ++k) st[k][r - 1] = ts[k]->strides()[d];
    } else {
      sh[r] = shape[d];
      for (int k = 0; k < N; ++k) st[k][r] = ts[k]->strides()[d];
      ++r;
    }
  }
  SC_CHECK(r <= kMaxDims, op, ": a strided operand needs ", r, " dims after merging; at most ",
           kMaxDims, " are supported");
  Strided<N> s;
  s.ndim = r;
  s.flat = r == 0 || r == 1;
  for (int k = 0; k < N && r == 1; ++k) s.flat = s.flat && st[k][0] == 1;
  for (int i = 0; i < r; ++i) {
    s.shape[i] = sh[i];
    for (int k = 0; k < N; ++k) s.stride[k][i] = st[k][i];
  }
  return s;
}

// ---- launch helpers ----
constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n elements.
inline unsigned grid_for(int64_t n, int device) {
  const int64_t want = (n + kThreads - 1) / kThreads;
  const int64_t cap = int64_t(sm_count(device)) * 32;
  return unsigned(want < cap ? (want > 0 ? want : 1) : cap);
}

// The unit a backend kernel's arithmetic runs on (its FLOPs in the trace, kernels/check.h).
inline kernels::Unit simt_unit(DType t) {
  return t == DType::F64 ? kernels::Unit::FP64 : kernels::Unit::FP32;
}

// Directly after every kernel launch of the backend: counts it (kernels/check.h issue_counts)
// and checks it.
inline void check_launch(const char* what) {
  SC_TRACE_LAUNCH_SHAPE();
  kernels::note_kernel_launch(what);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    throw Error(str_cat(what, ": CUDA kernel launch failed: ", cudaGetErrorString(e)));
}

// Sets the device of `t` current and returns its index.
inline int device_of(const Tensor& t) {
  const int d = t.device().index;
  set_device(d);
  return d;
}

// ---- reductions ----
using kernels::warp_allreduce;  // kernels/common.cuh

// Every thread of the block gets combine() over the block's values. blockDim.x must be a
// multiple of 32 (at most 1024); `smem` holds 32 values. Every thread must call it.
template <class V, class C>
__device__ __forceinline__ V block_allreduce(V v, C combine, V* smem) {
  v = warp_allreduce(v, combine);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  __syncthreads();  // smem may still be read by a previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  v = smem[0];
  for (int i = 1; i < nw; ++i) v = combine(v, smem[i]);  // same order in every thread
  return v;
}

// Row kernels: a warp per row for short rows (8 rows per 256-thread block), a block per row for
// long ones.
constexpr int64_t kWarpRowMaxCols = 1024;
constexpr int kRowBlockThreads = 512;

template <bool kBlockPerRow>
struct RowMap {
  int64_t row;
  int lane;     // index of this thread inside the row's team
  int threads;  // team size
  __device__ __forceinline__ RowMap() {
    if (kBlockPerRow) {
      row = blockIdx.x;
      lane = threadIdx.x;
      threads = blockDim.x;
    } else {
      row = int64_t(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
      lane = threadIdx.x & 31;
      threads = 32;
    }
  }
};

template <bool kBlockPerRow, class V, class C>
__device__ __forceinline__ V row_allreduce(V v, C combine, V* smem) {
  if (kBlockPerRow) return block_allreduce(v, combine, smem);
  return warp_allreduce(v, combine);
}

inline bool block_per_row(int64_t cols) { return cols > kWarpRowMaxCols; }
inline unsigned row_grid(int64_t rows, bool block_rows) {
  const int64_t b = block_rows ? rows : (rows + kThreads / 32 - 1) / (kThreads / 32);
  SC_CHECK(b <= 0x7fffffff, "too many rows for one launch: ", rows);
  return unsigned(b);
}
inline unsigned row_threads(bool block_rows) {
  return block_rows ? unsigned(kRowBlockThreads) : unsigned(kThreads);
}

template <class F>
void dispatch_any(DType t, F&& f) {
  switch (t) {
    case DType::F32:
      f(float());
      return;
    case DType::F64:
      f(double());
      return;
    case DType::BF16:
      f(bf16());
      return;
    case DType::F16:
      f(f16());
      return;
    case DType::I64:
      f(int64_t());
      return;
    case DType::U8:
      f(uint8_t());
      return;
  }
  throw Error("unknown dtype");
}

// f(T{}) for the float types only: the kernels' dispatch (kernels/common.cuh).
using kernels::dispatch_float;

// Unsigned integer of an element's width, for code that only moves bits.
template <class F>
void dispatch_width(size_t bytes, F&& f) {
  switch (bytes) {
    case 1:
      f(uint8_t());
      return;
    case 2:
      f(uint16_t());
      return;
    case 4:
      f(uint32_t());
      return;
    case 8:
      f(uint64_t());
      return;
  }
  throw Error(str_cat("no element type of ", bytes, " bytes"));
}

}  // namespace detail
}  // namespace cuda
}  // namespace sc
