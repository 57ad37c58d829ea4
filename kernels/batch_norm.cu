// batch_norm.cu: CUDA batch-norm passes (see batch_norm.h).
//
// Reductions (stats, grad sums) come in two shapes:
//   rows   (inner == 1: NHWC and BN1d): x (rows, C) row-major, block (32, 8): threadIdx.x walks 32
//          adjacent channels (coalesced), threadIdx.y and gridDim.y stride over rows;
//   planar (inner > 1: NCHW): block per (channel, slice of the outer*inner elements).
// Each thread sums in float (double for F64), each block combines its threads in double and adds
// to the output with double atomics (the outputs are zeroed first on the stream).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <string>

#include "kernels/batch_norm.h"
#include "kernels/check.h"
#include "kernels/common.cuh"

namespace sc {
namespace {

using namespace kernels;  // AccOf, load_acc, store, grid_for

template <class A>
__device__ __forceinline__ A act_fwd(Act a, A z) {
  if (a == Act::Relu) return z > A(0) ? z : A(0);
  if (a == Act::Gelu) return A(0.5) * z * (A(1) + erf(z * A(0.70710678118654752)));
  return z;
}
template <class A>
__device__ __forceinline__ A act_grad(Act a, A z) {
  if (a == Act::Relu) return z > A(0) ? A(1) : A(0);
  if (a == Act::Gelu) {
    const A cdf = A(0.5) * (A(1) + erf(z * A(0.70710678118654752)));
    return cdf + z * exp(A(-0.5) * z * z) * A(0.39894228040143268);
  }
  return A(1);
}

// Per-channel constants read by the element kernels (in the accumulation type).
template <class A, class P>
struct ChannelParams {
  const double* save;  // mean (C), invstd (C)
  const P* gamma;      // may be null
  const P* beta;       // may be null
  int64_t C;
  __device__ __forceinline__ A mean(int64_t c) const { return A(save[c]); }
  __device__ __forceinline__ A invstd(int64_t c) const { return A(save[C + c]); }
  __device__ __forceinline__ A g(int64_t c) const { return gamma ? A(gamma[c]) : A(1); }
  __device__ __forceinline__ A b(int64_t c) const { return beta ? A(beta[c]) : A(0); }
};

// ---- the two per-element pair functions that the reductions sum ----
template <class T>
struct StatsOp {
  using A = typename AccOf<T>::type;
  const T* x;
  __device__ __forceinline__ void operator()(int64_t i, int64_t, A& s0, A& s1) const {
    const A v = load_acc(x + i);
    s0 += v;
    s1 += v * v;
  }
};

template <class T, class P>
struct GradOp {
  using A = typename AccOf<T>::type;
  const T* dy;
  const T* x;
  const T* residual;
  Act act;
  ChannelParams<A, P> cp;
  __device__ __forceinline__ void operator()(int64_t i, int64_t c, A& s0, A& s1) const {
    const A xhat = (load_acc(x + i) - cp.mean(c)) * cp.invstd(c);
    A dz = load_acc(dy + i);
    if (act != Act::None) {
      A z = xhat * cp.g(c) + cp.b(c);
      if (residual) z += load_acc(residual + i);
      dz *= act_grad(act, z);
    }
    s0 += dz;
    s1 += dz * xhat;
  }
};

// out[c] += sum, out[C + c] += sum of the second component; count (if non-null) += selected
// rows * inner, computed by the blocks with blockIdx.x == 0.
template <class Op>
__global__ void reduce_rows_kernel(int64_t rows, int64_t C, const uint8_t* mask, Op op, double* out,
                                   double* count) {
  using A = typename Op::A;
  __shared__ double part0[8][33], part1[8][33];
  __shared__ double rows_part[8][33];
  const int64_t c = blockIdx.x * 32 + threadIdx.x;
  A s0 = 0, s1 = 0;
  int64_t nrows = 0;
  for (int64_t r = blockIdx.y * 8 + threadIdx.y; r < rows; r += int64_t(gridDim.y) * 8) {
    if (mask && !mask[r]) continue;
    ++nrows;
    if (c < C) op(r * C + c, c, s0, s1);
  }
  part0[threadIdx.y][threadIdx.x] = double(s0);
  part1[threadIdx.y][threadIdx.x] = double(s1);
  rows_part[threadIdx.y][threadIdx.x] = double(nrows);
  __syncthreads();
  if (threadIdx.y == 0) {
    double a = 0, b = 0, n = 0;
    for (int k = 0; k < 8; ++k) {
      a += part0[k][threadIdx.x];
      b += part1[k][threadIdx.x];
      n += rows_part[k][threadIdx.x];
    }
    if (c < C) {
      atomicAdd(out + c, a);
      atomicAdd(out + C + c, b);
    }
    if (count && blockIdx.x == 0 && threadIdx.x == 0) atomicAdd(count, n);
  }
}

template <class Op>
__global__ void reduce_planar_kernel(int64_t outer, int64_t C, int64_t inner, Op op, double* out,
                                     double* count) {
  using A = typename Op::A;
  __shared__ double part0[256], part1[256];
  const int64_t c = blockIdx.x;
  const int64_t total = outer * inner;
  A s0 = 0, s1 = 0;
  for (int64_t j = blockIdx.y * int64_t(blockDim.x) + threadIdx.x; j < total;
       j += int64_t(gridDim.y) * blockDim.x) {
    const int64_t o = j / inner, i = j - o * inner;
    op((o * C + c) * inner + i, c, s0, s1);
  }
  part0[threadIdx.x] = double(s0);
  part1[threadIdx.x] = double(s1);
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) {
      part0[threadIdx.x] += part0[threadIdx.x + s];
      part1[threadIdx.x] += part1[threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    atomicAdd(out + c, part0[0]);
    atomicAdd(out + C + c, part1[0]);
  }
  if (count && c == 0 && blockIdx.y == 0 && threadIdx.x == 0) *count = double(total);
}

template <class Op>
void launch_reduce(const BnGeom& g, const uint8_t* mask, const Op& op, double* out, double* count,
                   size_t zero_doubles, cudaStream_t stream, const char* what, double elem_bytes,
                   double elem_flops) {
  if (cudaMemsetAsync(out, 0, zero_doubles * sizeof(double), stream) != cudaSuccess)
    kernels::fail(what, "cudaMemsetAsync failed");
  SC_TRACE_WORK(zero_doubles * sizeof(double), 0, Memory);
  kernels::note_memory_op("cudaMemsetAsync (BatchNorm sums)");
  // the trace's work of the reduction: each element's operands read once, 2C partials written
  const double reduce_bytes = double(g.numel()) * elem_bytes + double(2 * g.C) * sizeof(double);
  const double reduce_flops = double(g.numel()) * elem_flops;
  const int64_t C = g.C;
  if (g.inner == 1) {
    const int64_t cx = (C + 31) / 32;
    const int64_t ry = std::max<int64_t>(1, std::min<int64_t>((g.outer + 7) / 8, 1024 / cx + 1));
    reduce_rows_kernel<Op><<<dim3(unsigned(cx), unsigned(ry)), dim3(32, 8), 0, stream>>>(
        g.outer, C, mask, op, out, count);
    SC_TRACE_WORK(reduce_bytes, reduce_flops, FP32);
    SC_KERNEL_LAUNCHED("reduce_rows_kernel");
  } else {
    SC_KERNEL_REQUIRE(mask == nullptr, what, "a row mask needs inner == 1 (BN1d)");
    const int64_t per = g.outer * g.inner;
    const int64_t sy = std::max<int64_t>(1, std::min<int64_t>((per + 255) / 256, 2048 / C + 1));
    reduce_planar_kernel<Op>
        <<<dim3(unsigned(C), unsigned(sy)), 256, 0, stream>>>(g.outer, C, g.inner, op, out, count);
    SC_TRACE_WORK(reduce_bytes, reduce_flops, FP32);
    SC_KERNEL_LAUNCHED("reduce_planar_kernel");
  }
  SC_KERNEL_LAUNCH_CHECK(what);
}

template <class P>
__global__ void finalize_kernel(int64_t C, const double* stats, P* running_mean, P* running_var,
                                bool training, double momentum, double eps, double* save) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  double mean, var;
  if (training) {
    const double n = stats[2 * C];
    mean = n > 0 ? stats[c] / n : 0.0;
    var = n > 0 ? fmax(stats[C + c] / n - mean * mean, 0.0) : 0.0;
    if (n > 0 && running_mean && running_var) {
      const double unbiased = n > 1 ? var * n / (n - 1) : var;
      running_mean[c] = P((1 - momentum) * double(running_mean[c]) + momentum * mean);
      running_var[c] = P((1 - momentum) * double(running_var[c]) + momentum * unbiased);
    }
  } else {
    mean = double(running_mean[c]);
    var = double(running_var[c]);
  }
  save[c] = mean;
  save[C + c] = 1.0 / sqrt(var + eps);
}

template <class T, class P>
__global__ void apply_kernel(int64_t n, int64_t C, int64_t inner, const T* x,
                             ChannelParams<typename AccOf<T>::type, P> cp, const T* residual,
                             Act act, T* y) {
  using A = typename AccOf<T>::type;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = inner == 1 ? i % C : (i / inner) % C;
    const A scale = cp.g(c) * cp.invstd(c);
    A z = (load_acc(x + i) - cp.mean(c)) * scale + cp.b(c);
    if (residual) z += load_acc(residual + i);
    store(y + i, act_fwd(act, z));
  }
}

template <class T, class P>
__global__ void grad_apply_kernel(int64_t n, int64_t C, int64_t inner, const T* dy, const T* x,
                                  ChannelParams<typename AccOf<T>::type, P> cp, const T* residual,
                                  Act act, const uint8_t* mask, const double* gsum,
                                  const double* count, bool training, T* dx, T* dresidual) {
  using A = typename AccOf<T>::type;
  const double cnt = training ? *count : 0.0;
  const A inv_n = cnt > 0 ? A(1.0 / cnt) : A(0);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t q = inner == 1 ? i / C : i / inner;  // q = o * C + c (inner > 1) or o
    const int64_t c = inner == 1 ? i - q * C : q % C;
    const bool sel = mask == nullptr || mask[inner == 1 ? q : q / C];
    const A invstd = cp.invstd(c), gm = cp.g(c);
    const A xhat = (load_acc(x + i) - cp.mean(c)) * invstd;
    A dz = load_acc(dy + i);
    if (act != Act::None) {
      A z = xhat * gm + cp.b(c);
      if (residual) z += load_acc(residual + i);
      dz *= act_grad(act, z);
    }
    if (dresidual) store(dresidual + i, sel ? dz : A(0));
    A d = 0;
    if (sel) {
      if (training)
        d = gm * invstd * (dz - A(gsum[c]) * inv_n - xhat * A(gsum[C + c]) * inv_n);
      else
        d = gm * invstd * dz;
    }
    store(dx + i, d);
  }
}

// ---- the element passes on rows (inner == 1: NHWC, BN1d), 16 bytes at a time
// The H200's profile of the ResNet-50 step (docs/gpu.md, "The third card session") found the
// element kernels above at ~0.85 TB/s: a 64-bit division by C for every element, 2-byte loads,
// and the per-channel constants (mean and 1/std as doubles, gamma, beta) read again for every
// element. Here a block owns a tile of channels: its constants are read once into shared memory,
// the tile's threads step along a row 16 bytes (VEC elements) at a time and down the rows, and
// no index is divided. The arithmetic is the element kernels' own, term for term, so the results
// are theirs. Taken when C is a multiple of VEC and every pointer is 16-byte aligned.
template <class T>
struct alignas(16) Vec16 {
  static constexpr int N = 16 / int(sizeof(T));
  T v[N];
};

template <class T>
__device__ __forceinline__ Vec16<T> load16(const T* p) {
  return *reinterpret_cast<const Vec16<T>*>(p);
}
template <class T>
__device__ __forceinline__ void store16(T* p, const Vec16<T>& v) {
  *reinterpret_cast<Vec16<T>*>(p) = v;
}

constexpr int kRowTileVecs = 32;   // 16-byte vectors of one row a block's tile spans at most
constexpr int kRowThreads = 256;   // threads per block: tile width x rows in flight

// The launch shape of a row pass: tile width tx (vectors), ty rows in flight, the grid.
struct RowLaunch {
  int tx, ty;
  dim3 grid;
};
inline RowLaunch row_launch(int64_t rows, int64_t cvecs) {
  RowLaunch l;
  l.tx = int(std::min<int64_t>(cvecs, kRowTileVecs));
  l.ty = kRowThreads / l.tx;
  const int64_t gx = (cvecs + l.tx - 1) / l.tx;
  // about 16 blocks per multiprocessor of a large card in all, at least one row per thread
  const int64_t gy = std::max<int64_t>(
      1, std::min<int64_t>((rows + l.ty - 1) / l.ty, std::max<int64_t>(1, 2048 / gx)));
  l.grid = dim3(unsigned(gx), unsigned(gy));
  return l;
}

// A row kernel's block and thread: the block's channel tile [c0, c0 + width) (its constants are
// written by fill(k, c) for every tile channel k = c - c0, across the block, before any thread
// goes on), the thread's first channel k0 in the tile (it has work when k0 < width), and its
// rows: first_row, first_row + row_step, ...
template <int V>
struct RowTile {
  int64_t c0;
  int width, k0;
  int64_t first_row, row_step;
  template <class Fill>
  __device__ RowTile(int64_t C, Fill&& fill)
      : c0(int64_t(blockIdx.x) * blockDim.x * V),
        width(int(std::min<int64_t>(int64_t(blockDim.x) * V, C - c0))),
        k0(int(threadIdx.x) * V),
        first_row(int64_t(blockIdx.y) * blockDim.y + threadIdx.y),
        row_step(int64_t(gridDim.y) * blockDim.y) {
    for (int k = int(threadIdx.y * blockDim.x + threadIdx.x); k < width;
         k += int(blockDim.x * blockDim.y))
      fill(k, c0 + k);
    __syncthreads();
  }
};

template <class T, class P>
__global__ void apply_rows_kernel(int64_t rows, int64_t C, const T* x,
                                  ChannelParams<typename AccOf<T>::type, P> cp, const T* residual,
                                  Act act, T* y) {
  using A = typename AccOf<T>::type;
  constexpr int V = Vec16<T>::N;
  __shared__ A s_mean[kRowTileVecs * V], s_scale[kRowTileVecs * V], s_beta[kRowTileVecs * V];
  const RowTile<V> t(C, [&](int k, int64_t c) {
    s_mean[k] = cp.mean(c);
    s_scale[k] = cp.g(c) * cp.invstd(c);
    s_beta[k] = cp.b(c);
  });
  const int k0 = t.k0;
  if (k0 >= t.width) return;
  for (int64_t r = t.first_row; r < rows; r += t.row_step) {
    const int64_t at = r * C + t.c0 + k0;
    const Vec16<T> xv = load16(x + at);
    Vec16<T> rv;
    if (residual) rv = load16(residual + at);
    Vec16<T> yv;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      A z = (load_acc(&xv.v[j]) - s_mean[k0 + j]) * s_scale[k0 + j] + s_beta[k0 + j];
      if (residual) z += load_acc(&rv.v[j]);
      store(&yv.v[j], act_fwd(act, z));
    }
    store16(y + at, yv);
  }
}

template <class T, class P>
__global__ void grad_apply_rows_kernel(int64_t rows, int64_t C, const T* dy, const T* x,
                                       ChannelParams<typename AccOf<T>::type, P> cp,
                                       const T* residual, Act act, const uint8_t* mask,
                                       const double* gsum, const double* count, bool training,
                                       T* dx, T* dresidual) {
  using A = typename AccOf<T>::type;
  constexpr int V = Vec16<T>::N;
  constexpr int W = kRowTileVecs * V;
  __shared__ A s_mean[W], s_invstd[W], s_g[W], s_b[W], s_k[W], s_gs0n[W], s_gs1[W];
  const double cnt = training ? *count : 0.0;
  const A inv_n = cnt > 0 ? A(1.0 / cnt) : A(0);
  const RowTile<V> t(C, [&](int k, int64_t c) {
    s_mean[k] = cp.mean(c);
    s_invstd[k] = cp.invstd(c);
    s_g[k] = cp.g(c);
    s_b[k] = cp.b(c);
    s_k[k] = s_g[k] * s_invstd[k];
    s_gs0n[k] = training ? A(gsum[c]) * inv_n : A(0);
    s_gs1[k] = training ? A(gsum[C + c]) : A(0);
  });
  const int k0 = t.k0;
  if (k0 >= t.width) return;
  for (int64_t r = t.first_row; r < rows; r += t.row_step) {
    const int64_t at = r * C + t.c0 + k0;
    const bool sel = mask == nullptr || mask[r];
    const Vec16<T> xv = load16(x + at), dyv = load16(dy + at);
    Vec16<T> rv, dxv, drv;
    if (residual) rv = load16(residual + at);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int k = k0 + j;
      const A xhat = (load_acc(&xv.v[j]) - s_mean[k]) * s_invstd[k];
      A dz = load_acc(&dyv.v[j]);
      if (act != Act::None) {
        A z = xhat * s_g[k] + s_b[k];
        if (residual) z += load_acc(&rv.v[j]);
        dz *= act_grad(act, z);
      }
      if (dresidual) store(&drv.v[j], sel ? dz : A(0));
      A d = 0;
      if (sel) {
        if (training)
          d = s_k[k] * (dz - s_gs0n[k] - xhat * s_gs1[k] * inv_n);
        else
          d = s_k[k] * dz;
      }
      store(&dxv.v[j], d);
    }
    store16(dx + at, dxv);
    if (dresidual) store16(dresidual + at, drv);
  }
}

// Whether the row kernels can take a pass: rows (inner == 1), C a multiple of the vector, every
// pointer on a 16-byte boundary (SLOTCON_BN_ROWS=0 keeps the element kernels, for comparison).
template <class T>
bool rows_path(const BnGeom& g, std::initializer_list<const void*> ptrs) {
  static const bool off = [] {
    const char* e = std::getenv("SLOTCON_BN_ROWS");
    return e != nullptr && std::string(e) == "0";
  }();
  if (off || g.inner != 1 || g.C % Vec16<T>::N != 0) return false;
  for (const void* p : ptrs)
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

template <class P>
__global__ void param_grads_kernel(int64_t C, const double* gsum, P* dgamma, P* dbeta) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  if (dgamma) dgamma[c] = P(double(dgamma[c]) + gsum[C + c]);
  if (dbeta) dbeta[c] = P(double(dbeta[c]) + gsum[c]);
}

// Dispatch on the activation dtype; P follows (double for F64, float otherwise).
template <class F>
void dispatch(DType x_dtype, DType p_dtype, const char* what, F&& f) {
  const bool ok_p = (x_dtype == DType::F64) == (p_dtype == DType::F64) &&
                    (p_dtype == DType::F64 || p_dtype == DType::F32);
  SC_KERNEL_REQUIRE(ok_p, what, "parameters must be F64 for F64 activations and F32 otherwise");
  dispatch_float(x_dtype, what, [&](auto tv) {
    using T = decltype(tv);
    using P = typename AccOf<T>::type;  // double for double, float otherwise
    f(T{}, P{});
  });
}

}  // namespace

void batch_norm_stats_cuda(DType x_dtype, const BnGeom& g, const void* x, const uint8_t* mask,
                           double* stats, cudaStream_t stream) {
  const DType p = x_dtype == DType::F64 ? DType::F64 : DType::F32;
  dispatch(x_dtype, p, "batch_norm_stats_cuda", [&](auto tv, auto) {
    using T = decltype(tv);
    StatsOp<T> op{static_cast<const T*>(x)};
    launch_reduce(g, mask, op, stats, stats + 2 * g.C, size_t(2 * g.C + 1), stream,
                  "batch_norm_stats_cuda", double(sizeof(T)), 3.0);
  });
}

void batch_norm_finalize_cuda(DType p_dtype, int64_t C, const double* stats, void* running_mean,
                              void* running_var, bool training, double momentum, double eps,
                              double* save, cudaStream_t stream) {
  if (p_dtype == DType::F64)
    finalize_kernel<double><<<grid_for(C, 256), 256, 0, stream>>>(
        C, stats, (double*)running_mean, (double*)running_var, training, momentum, eps, save);
  else if (p_dtype == DType::F32)
    finalize_kernel<float><<<grid_for(C, 256), 256, 0, stream>>>(
        C, stats, (float*)running_mean, (float*)running_var, training, momentum, eps, save);
  else
    kernels::fail("batch_norm_finalize_cuda", "parameters must be F32 or F64");
  SC_TRACE_WORK(double(C) * (3 * sizeof(double) + 4 * dtype_size(p_dtype)), 10 * C, FP64);
  SC_KERNEL_LAUNCHED("batch_norm_finalize_cuda");  // one of the two launches ran
}

void batch_norm_apply_cuda(DType x_dtype, DType p_dtype, const BnGeom& g, const void* x,
                           const double* save, const void* gamma, const void* beta,
                           const void* residual, Act act, void* y, cudaStream_t stream) {
  dispatch(x_dtype, p_dtype, "batch_norm_apply_cuda", [&](auto tv, auto pv) {
    using T = decltype(tv);
    using P = decltype(pv);
    using A = typename AccOf<T>::type;
    ChannelParams<A, P> cp{save, (const P*)gamma, (const P*)beta, g.C};
    const int64_t n = g.numel();
    if (rows_path<T>(g, {x, residual, y})) {
      const RowLaunch l = row_launch(g.outer, g.C / Vec16<T>::N);
      apply_rows_kernel<T, P><<<l.grid, dim3(l.tx, l.ty), 0, stream>>>(
          g.outer, g.C, (const T*)x, cp, (const T*)residual, act, (T*)y);
      SC_TRACE_WORK(double(n) * sizeof(T) * (residual ? 3.0 : 2.0), 4 * n, FP32);
      SC_KERNEL_LAUNCHED("apply_rows_kernel");
      return;
    }
    apply_kernel<T, P><<<grid_for(n, 256), 256, 0, stream>>>(n, g.C, g.inner, (const T*)x, cp,
                                                             (const T*)residual, act, (T*)y);
    SC_TRACE_WORK(double(n) * sizeof(T) * (residual ? 3.0 : 2.0), 4 * n, FP32);
    SC_KERNEL_LAUNCHED("apply_kernel");
  });
  SC_KERNEL_LAUNCH_CHECK("batch_norm_apply_cuda");
}

void batch_norm_grad_sums_cuda(DType x_dtype, DType p_dtype, const BnGeom& g, const void* dy,
                               const void* x, const double* save, const void* gamma,
                               const void* beta, const void* residual, Act act, const uint8_t* mask,
                               double* gsum, cudaStream_t stream) {
  dispatch(x_dtype, p_dtype, "batch_norm_grad_sums_cuda", [&](auto tv, auto pv) {
    using T = decltype(tv);
    using P = decltype(pv);
    using A = typename AccOf<T>::type;
    GradOp<T, P> op{(const T*)dy, (const T*)x, (const T*)residual, act,
                    ChannelParams<A, P>{save, (const P*)gamma, (const P*)beta, g.C}};
    launch_reduce(g, mask, op, gsum, nullptr, size_t(2 * g.C), stream, "batch_norm_grad_sums_cuda",
                  double(sizeof(T)) * (residual ? 3.0 : 2.0), 10.0);
  });
}

void batch_norm_grad_apply_cuda(DType x_dtype, DType p_dtype, const BnGeom& g, const void* dy,
                                const void* x, const double* save, const void* gamma,
                                const void* beta, const void* residual, Act act,
                                const uint8_t* mask, const double* gsum, const double* count_dev,
                                bool training, void* dx, void* dresidual, cudaStream_t stream) {
  SC_KERNEL_REQUIRE(mask == nullptr || g.inner == 1, "batch_norm_grad_apply_cuda",
                    "a row mask needs inner == 1 (BN1d)");
  SC_KERNEL_REQUIRE(!training || count_dev != nullptr, "batch_norm_grad_apply_cuda",
                    "training mode needs the forward count");
  dispatch(x_dtype, p_dtype, "batch_norm_grad_apply_cuda", [&](auto tv, auto pv) {
    using T = decltype(tv);
    using P = decltype(pv);
    using A = typename AccOf<T>::type;
    ChannelParams<A, P> cp{save, (const P*)gamma, (const P*)beta, g.C};
    const int64_t n = g.numel();
    const double bytes =
        double(n) * sizeof(T) * (3.0 + (residual ? 1.0 : 0.0) + (dresidual ? 1.0 : 0.0));
    if (rows_path<T>(g, {dy, x, residual, dx, dresidual})) {
      const RowLaunch l = row_launch(g.outer, g.C / Vec16<T>::N);
      grad_apply_rows_kernel<T, P><<<l.grid, dim3(l.tx, l.ty), 0, stream>>>(
          g.outer, g.C, (const T*)dy, (const T*)x, cp, (const T*)residual, act, mask, gsum,
          count_dev, training, (T*)dx, (T*)dresidual);
      SC_TRACE_WORK(bytes, 12 * n, FP32);
      SC_KERNEL_LAUNCHED("grad_apply_rows_kernel");
      return;
    }
    grad_apply_kernel<T, P><<<grid_for(n, 256), 256, 0, stream>>>(
        n, g.C, g.inner, (const T*)dy, (const T*)x, cp, (const T*)residual, act, mask, gsum,
        count_dev, training, (T*)dx, (T*)dresidual);
    SC_TRACE_WORK(bytes, 12 * n, FP32);
    SC_KERNEL_LAUNCHED("grad_apply_kernel");
  });
  SC_KERNEL_LAUNCH_CHECK("batch_norm_grad_apply_cuda");
}

void batch_norm_param_grads_cuda(DType p_dtype, int64_t C, const double* gsum, void* dgamma,
                                 void* dbeta, cudaStream_t stream) {
  if (p_dtype == DType::F64)
    param_grads_kernel<double>
        <<<grid_for(C, 256), 256, 0, stream>>>(C, gsum, (double*)dgamma, (double*)dbeta);
  else if (p_dtype == DType::F32)
    param_grads_kernel<float>
        <<<grid_for(C, 256), 256, 0, stream>>>(C, gsum, (float*)dgamma, (float*)dbeta);
  else
    kernels::fail("batch_norm_param_grads_cuda", "parameters must be F32 or F64");
  SC_TRACE_WORK(double(C) * (2 * sizeof(double) + 4 * dtype_size(p_dtype)), 2 * C, FP64);
  SC_KERNEL_LAUNCHED("batch_norm_param_grads_cuda");  // one of the two launches ran
}

}  // namespace sc
