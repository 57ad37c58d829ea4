// proto_assign.cu: CUDA prototype assignment (see proto_assign.h and docs/kernels/proto_assign.md).
//
// Forward (4 launches):
//   1. inverse norms of the prototypes (warp per row) and of the pixels (thread per (b, p));
//   2. dots = tile GEMM protos (K x D) . x_b (D x P), scaled by both inverse norms in the epilogue;
//   3. per pixel column, softmax over K: a block of 32 pixels x 8 slices of K keeps an online
//      (max, sum) per thread, combines the 8 in shared memory and writes attn.
// Backward:
//   1. inverse norms; per-pixel (max, sum, c = sum_k s dL_dattn) in one online pass over K;
//   2. dL_dxn = tile GEMM pn^T (D x K) . G_b (K x P), G formed on the fly from dots, dL_ddots,
//      dL_dattn and the pixel statistics; written into dL_dx, then normalised back in place;
//   3. dL_dpn = sum_b G_b (K x P) . xn_b^T (P x D): a split contraction over the B*P pixels with
//      atomic adds into a workspace, then per prototype the normalisation backward, added (+=)
//      into dL_dprotos.
//
// Versions of the GEMMs (tile_gemm.cuh, chosen in one place, launch_tile_gemm): v1 SIMT (FP32 /
// FP64), v2 TF32 tensor cores (float with the shape's tf32 flag).
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/check.h"
#include "kernels/proto_assign.h"
#include "kernels/tile_gemm.cuh"

namespace sc {
namespace {

using kernels::AccOf;
using kernels::align256;
using kernels::launch_tile_gemm;
using kernels::warp_sum;

// Workspace layout (in Acc units, each part 256-byte aligned).
template <class A>
struct Workspace {
  A* invp;   // K
  A* invx;   // B*P
  A* stats;  // B*P*3: max, sum, c
  A* dpn;    // K*D
  static size_t bytes(const ProtoAssignShape& s) {
    return align256(sizeof(A) * s.K) + align256(sizeof(A) * s.B * s.P) +
           align256(sizeof(A) * s.B * s.P * 3) + align256(sizeof(A) * s.K * s.D);
  }
  Workspace(const ProtoAssignShape& s, void* ws) {
    char* p = static_cast<char*>(ws);
    invp = reinterpret_cast<A*>(p);
    p += align256(sizeof(A) * s.K);
    invx = reinterpret_cast<A*>(p);
    p += align256(sizeof(A) * s.B * s.P);
    stats = reinterpret_cast<A*>(p);
    p += align256(sizeof(A) * s.B * s.P * 3);
    dpn = reinterpret_cast<A*>(p);
  }
};

// inv[r] = 1 / max(||row r||, eps) for rows (R, D) row-major: one warp per row.
template <class T, class A>
__global__ void row_inv_norm_kernel(int64_t R, int64_t D, const T* a, A* inv) {
  const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (r >= R) return;
  A ss = 0;
  for (int64_t d = lane; d < D; d += 32) {
    const A v = A(a[r * D + d]);
    ss += v * v;
  }
  ss = warp_sum(ss);
  if (lane == 0) inv[r] = A(1) / max(sqrt(ss), A(kProtoNormEps));
}

// inv[b*P + p] = 1 / max(||x[b,:,p]||, eps): one thread per pixel (coalesced along p).
template <class T, class A>
__global__ void col_inv_norm_kernel(int64_t B, int64_t D, int64_t P, const T* x, A* inv) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B * P) return;
  const int64_t b = i / P, p = i % P;
  const T* xb = x + b * D * P + p;
  A ss = 0;
  for (int64_t d = 0; d < D; ++d) {
    const A v = A(xb[d * P]);
    ss += v * v;
  }
  inv[i] = A(1) / max(sqrt(ss), A(kProtoNormEps));
}

template <class A>
__device__ __forceinline__ void online_merge(A& m, A& s, A m2, A s2) {
  const A mn = max(m, m2);
  if (mn == A(-INFINITY)) return;
  s = s * exp(m - mn) + s2 * exp(m2 - mn);
  m = mn;
}

// Block (32, 8): threadIdx.x = pixel within a 32-pixel slice of image b = blockIdx.y,
// threadIdx.y = one of 8 interleaved slices of K. Online max / sum of dots/tau per pixel, then
// attn = exp(dots/tau - max) / sum + 1e-6.
template <class T, class A>
__global__ void softmax_cols_kernel(int64_t K, int64_t P, const T* dots, A inv_tau, T* attn) {
  __shared__ A sm[8][33], ss[8][33];
  const int64_t b = blockIdx.y, p = int64_t(blockIdx.x) * 32 + threadIdx.x;
  const bool ok = p < P;
  const T* col = dots + b * K * P + p;
  A m = A(-INFINITY), s = A(0);
  if (ok)
    for (int64_t k = threadIdx.y; k < K; k += 8) {
      const A z = A(col[k * P]) * inv_tau;
      if (z > m) {
        s = s * exp(m - z) + A(1);
        m = z;
      } else {
        s += exp(z - m);
      }
    }
  sm[threadIdx.y][threadIdx.x] = m;
  ss[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  A M = sm[0][threadIdx.x], S = ss[0][threadIdx.x];
  for (int j = 1; j < 8; ++j) online_merge(M, S, sm[j][threadIdx.x], ss[j][threadIdx.x]);
  if (!ok) return;
  const A inv_s = A(1) / S;
  T* out = attn + b * K * P + p;
  for (int64_t k = threadIdx.y; k < K; k += 8)
    out[k * P] = T(exp(A(col[k * P]) * inv_tau - M) * inv_s + A(kAttnEps));
}

// Per pixel: max and sum of exp(dots/tau - max), and c = sum_k s_k dL_dattn_k (0 if null).
template <class T, class A>
__global__ void pixel_stats_kernel(int64_t K, int64_t P, const T* dots, const T* g_attn, A inv_tau,
                                   A* stats) {
  __shared__ A sm[8][33], ss[8][33], sc_[8][33];
  const int64_t b = blockIdx.y, p = int64_t(blockIdx.x) * 32 + threadIdx.x;
  const bool ok = p < P;
  A m = A(-INFINITY), s = A(0), c = A(0);
  if (ok)
    for (int64_t k = threadIdx.y; k < K; k += 8) {
      const int64_t i = (b * K + k) * P + p;
      const A z = A(dots[i]) * inv_tau;
      const A g = g_attn ? A(g_attn[i]) : A(0);
      if (z > m) {
        const A r = exp(m - z);
        s = s * r + A(1);
        c = c * r + g;
        m = z;
      } else {
        const A e = exp(z - m);
        s += e;
        c += e * g;
      }
    }
  sm[threadIdx.y][threadIdx.x] = m;
  ss[threadIdx.y][threadIdx.x] = s;
  sc_[threadIdx.y][threadIdx.x] = c;
  __syncthreads();
  if (threadIdx.y != 0 || !ok) return;
  A M = A(-INFINITY);
  for (int j = 0; j < 8; ++j) M = max(M, sm[j][threadIdx.x]);
  A S = 0, C = 0;
  for (int j = 0; j < 8; ++j) {
    if (sm[j][threadIdx.x] == A(-INFINITY)) continue;
    const A r = exp(sm[j][threadIdx.x] - M);
    S += ss[j][threadIdx.x] * r;
    C += sc_[j][threadIdx.x] * r;
  }
  A* st = stats + (b * P + p) * 3;
  st[0] = M;
  st[1] = S;
  st[2] = C / S;
}

// G[b,k,p] = dL_ddots + s (dL_dattn - c) / tau, s from the pixel statistics.
template <class T, class A>
struct GradDots {
  const T* dots;
  const T* g_dots;
  const T* g_attn;
  const A* stats;
  int64_t K, P;
  A inv_tau;
  __device__ __forceinline__ A operator()(int64_t b, int64_t k, int64_t p) const {
    const int64_t i = (b * K + k) * P + p;
    A g = g_dots ? A(g_dots[i]) : A(0);
    if (g_attn) {
      const A* st = stats + (b * P + p) * 3;
      const A s = exp(A(dots[i]) * inv_tau - st[0]) / st[1];
      g += s * (A(g_attn[i]) - st[2]) * inv_tau;
    }
    return g;
  }
};

// ---- operand functors of the three GEMMs ----
template <class T>
struct ProtoRows {  // A(k, d) = protos[k, d]
  static constexpr bool kA_m_contiguous = false;
  const T* protos;
  int64_t D;
  __device__ __forceinline__ T operator()(int64_t, int64_t k, int64_t d) const {
    return protos[k * D + d];
  }
};
template <class T>
struct PixelCols {  // B(d, p) = x[b, d, p]
  static constexpr bool kB_n_contiguous = true;
  const T* x;
  int64_t D, P;
  __device__ __forceinline__ T operator()(int64_t b, int64_t d, int64_t p) const {
    return x[(b * D + d) * P + p];
  }
};
template <class T, class A>
struct DotsEpilogue {
  T* dots;
  const A* invp;
  const A* invx;
  int64_t K, P;
  __device__ __forceinline__ void operator()(int64_t b, int64_t k, int64_t p, A acc) const {
    dots[(b * K + k) * P + p] = T(acc * invp[k] * invx[b * P + p]);
  }
};
template <class T, class A>
struct UnitProtosT {  // A(d, k) = pn[k, d]
  static constexpr bool kA_m_contiguous = true;
  const T* protos;
  const A* invp;
  int64_t D;
  __device__ __forceinline__ A operator()(int64_t, int64_t d, int64_t k) const {
    return A(protos[k * D + d]) * invp[k];
  }
};
template <class T, class A>
struct GradCols {  // B(k, p) = G[b, k, p]
  static constexpr bool kB_n_contiguous = true;
  GradDots<T, A> g;
  __device__ __forceinline__ A operator()(int64_t b, int64_t k, int64_t p) const {
    return g(b, k, p);
  }
};
template <class T, class A>
struct StoreDx {
  T* dx;
  int64_t D, P;
  __device__ __forceinline__ void operator()(int64_t b, int64_t d, int64_t p, A acc) const {
    dx[(b * D + d) * P + p] = T(acc);
  }
};
template <class T, class A>
struct GradRowsFlat {  // A(k, j) = G[b, k, p], j = b*P + p
  static constexpr bool kA_m_contiguous = false;
  GradDots<T, A> g;
  __device__ __forceinline__ A operator()(int64_t, int64_t k, int64_t j) const {
    return g(j / g.P, k, j % g.P);
  }
};
template <class T, class A>
struct UnitPixelsFlat {  // B(j, d) = xn[b, d, p], j = b*P + p
  static constexpr bool kB_n_contiguous = false;
  const T* x;
  const A* invx;
  int64_t D, P;
  __device__ __forceinline__ A operator()(int64_t, int64_t j, int64_t d) const {
    const int64_t b = j / P, p = j % P;
    return A(x[(b * D + d) * P + p]) * invx[j];
  }
};
template <class A>
struct AddDpn {
  A* dpn;
  int64_t D;
  __device__ __forceinline__ void operator()(int64_t, int64_t k, int64_t d, A acc) const {
    atomicAdd(dpn + k * D + d, acc);
  }
};

// In place on g = dL_dxn (B, D, P): g <- (g - x <x, g> / n^2) / n, or g / eps when n <= eps.
template <class T, class A>
__global__ void pixel_norm_backward_kernel(int64_t B, int64_t D, int64_t P, const T* x, T* g) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B * P) return;
  const int64_t b = i / P, p = i % P;
  const T* xb = x + b * D * P + p;
  T* gb = g + b * D * P + p;
  A ss = 0, dot = 0;
  for (int64_t d = 0; d < D; ++d) {
    const A v = A(xb[d * P]);
    ss += v * v;
    dot += v * A(gb[d * P]);
  }
  const A n = sqrt(ss);
  if (n > A(kProtoNormEps)) {
    const A inv = A(1) / n, proj = dot * inv * inv;
    for (int64_t d = 0; d < D; ++d) gb[d * P] = T((A(gb[d * P]) - A(xb[d * P]) * proj) * inv);
  } else {
    for (int64_t d = 0; d < D; ++d) gb[d * P] = T(A(gb[d * P]) / A(kProtoNormEps));
  }
}

// dL_dprotos[k] += normalisation backward of dpn[k] (warp per prototype).
template <class T, class A>
__global__ void proto_norm_backward_kernel(int64_t K, int64_t D, const T* protos, const A* dpn,
                                           T* dprotos) {
  const int64_t k = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (k >= K) return;
  A ss = 0, dot = 0;
  for (int64_t d = lane; d < D; d += 32) {
    const A v = A(protos[k * D + d]);
    ss += v * v;
    dot += v * dpn[k * D + d];
  }
  ss = warp_sum(ss);
  dot = warp_sum(dot);
  const A n = sqrt(ss);
  const bool big = n > A(kProtoNormEps);
  const A inv = big ? A(1) / n : A(1) / A(kProtoNormEps), proj = big ? dot * inv * inv : A(0);
  for (int64_t d = lane; d < D; d += 32) {
    const A v = (dpn[k * D + d] - A(protos[k * D + d]) * proj) * inv;
    dprotos[k * D + d] = T(A(dprotos[k * D + d]) + v);
  }
}

void check_args(const ProtoAssignShape& s, double tau, const char* what) {
  SC_KERNEL_REQUIRE(s.B >= 1 && s.K >= 1 && s.D >= 1 && s.P >= 1, what, "empty shape");
  SC_KERNEL_REQUIRE(tau > 0, what, "tau must be positive");
  SC_KERNEL_REQUIRE(s.B <= 65535, what, "B must be <= 65535 (grid z)");
}

unsigned blocks_for(int64_t n, int threads) { return unsigned((n + threads - 1) / threads); }

}  // namespace

size_t proto_assign_workspace_bytes(const ProtoAssignShape& s) {
  // Sized for double so one buffer serves both instantiations.
  return Workspace<double>::bytes(s);
}

template <class T>
void proto_assign_forward_cuda(const ProtoAssignShape& s, const T* x, const T* protos, double tau,
                               T* dots, T* attn, void* workspace, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  const char* what = "proto_assign_forward_cuda";
  check_args(s, tau, what);
  SC_KERNEL_REQUIRE(dots != nullptr, what, "dots must be given (the softmax reads it)");
  Workspace<A> ws(s, workspace);
  row_inv_norm_kernel<T, A>
      <<<blocks_for(s.K * 32, 256), 256, 0, stream>>>(s.K, s.D, protos, ws.invp);
  SC_TRACE_WORK(double(s.K * s.D) * sizeof(T), 2 * s.K * s.D, FP32);
  SC_KERNEL_LAUNCHED("row_inv_norm_kernel");
  col_inv_norm_kernel<T, A>
      <<<blocks_for(s.B * s.P, 256), 256, 0, stream>>>(s.B, s.D, s.P, x, ws.invx);
  SC_TRACE_WORK(double(s.B * s.P * s.D) * sizeof(T), 2 * s.B * s.P * s.D, FP32);
  SC_KERNEL_LAUNCHED(what);
  launch_tile_gemm<A>(s.K, s.P, s.D, s.B, 1, ProtoRows<T>{protos, s.D}, PixelCols<T>{x, s.D, s.P},
                      DotsEpilogue<T, A>{dots, ws.invp, ws.invx, s.K, s.P}, stream, s.tf32);
  SC_KERNEL_LAUNCH_CHECK(what);
  if (attn) {
    softmax_cols_kernel<T, A><<<dim3(blocks_for(s.P, 32), unsigned(s.B)), dim3(32, 8), 0, stream>>>(
        s.K, s.P, dots, A(1.0 / tau), attn);
    SC_TRACE_WORK(2.0 * double(s.B * s.K * s.P) * sizeof(T), 4 * s.B * s.K * s.P, FP32);
    SC_KERNEL_LAUNCHED(what);
  }
}

template <class T>
void proto_assign_backward_cuda(const ProtoAssignShape& s, const T* x, const T* protos,
                                const T* dots, double tau, const T* dL_ddots, const T* dL_dattn,
                                T* dL_dx, T* dL_dprotos, void* workspace, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  const char* what = "proto_assign_backward_cuda";
  check_args(s, tau, what);
  if (!dL_dx && !dL_dprotos) return;
  Workspace<A> ws(s, workspace);
  const A inv_tau = A(1.0 / tau);
  row_inv_norm_kernel<T, A>
      <<<blocks_for(s.K * 32, 256), 256, 0, stream>>>(s.K, s.D, protos, ws.invp);
  SC_TRACE_WORK(double(s.K * s.D) * sizeof(T), 2 * s.K * s.D, FP32);
  SC_KERNEL_LAUNCHED("row_inv_norm_kernel");
  col_inv_norm_kernel<T, A>
      <<<blocks_for(s.B * s.P, 256), 256, 0, stream>>>(s.B, s.D, s.P, x, ws.invx);
  SC_TRACE_WORK(double(s.B * s.P * s.D) * sizeof(T), 2 * s.B * s.P * s.D, FP32);
  SC_KERNEL_LAUNCHED("col_inv_norm_kernel");
  if (dL_dattn) {
    pixel_stats_kernel<T, A><<<dim3(blocks_for(s.P, 32), unsigned(s.B)), dim3(32, 8), 0, stream>>>(
        s.K, s.P, dots, dL_dattn, inv_tau, ws.stats);
    SC_TRACE_WORK(2.0 * double(s.B * s.K * s.P) * sizeof(T), 4 * s.B * s.K * s.P, FP32);
    SC_KERNEL_LAUNCHED(what);
  }
  const GradDots<T, A> G{dots, dL_ddots, dL_dattn, ws.stats, s.K, s.P, inv_tau};
  if (dL_dx) {
    launch_tile_gemm<A>(s.D, s.P, s.K, s.B, 1, UnitProtosT<T, A>{protos, ws.invp, s.D},
                        GradCols<T, A>{G}, StoreDx<T, A>{dL_dx, s.D, s.P}, stream, s.tf32);
    pixel_norm_backward_kernel<T, A>
        <<<blocks_for(s.B * s.P, 256), 256, 0, stream>>>(s.B, s.D, s.P, x, dL_dx);
    SC_TRACE_WORK(3.0 * double(s.B * s.P * s.D) * sizeof(T), 4 * s.B * s.P * s.D, FP32);
    SC_KERNEL_LAUNCHED(what);
  }
  if (dL_dprotos) {
    if (cudaMemsetAsync(ws.dpn, 0, sizeof(A) * size_t(s.K * s.D), stream) != cudaSuccess)
      kernels::fail(what, "cudaMemsetAsync failed");
    SC_TRACE_WORK(double(s.K * s.D) * sizeof(A), 0, Memory);
    kernels::note_memory_op("cudaMemsetAsync (proto_assign)");
    const int64_t tiles = ((s.K + 63) / 64) * ((s.D + 63) / 64);
    const int64_t contraction = s.B * s.P;
    const int splits = int(std::max<int64_t>(
        1, std::min<int64_t>((contraction + 255) / 256, std::max<int64_t>(1, 264 / tiles))));
    launch_tile_gemm<A>(s.K, s.D, contraction, 1, splits, GradRowsFlat<T, A>{G},
                        UnitPixelsFlat<T, A>{x, ws.invx, s.D, s.P}, AddDpn<A>{ws.dpn, s.D}, stream,
                        s.tf32);
    SC_KERNEL_LAUNCH_CHECK(what);
    proto_norm_backward_kernel<T, A>
        <<<blocks_for(s.K * 32, 256), 256, 0, stream>>>(s.K, s.D, protos, ws.dpn, dL_dprotos);
    SC_TRACE_WORK(3.0 * double(s.K * s.D) * sizeof(T), 4 * s.K * s.D, FP32);
    SC_KERNEL_LAUNCHED(what);
  }
}

#define SC_INSTANTIATE(T)                                                                          \
  template void proto_assign_forward_cuda<T>(const ProtoAssignShape&, const T*, const T*, double,  \
                                             T*, T*, void*, cudaStream_t);                         \
  template void proto_assign_backward_cuda<T>(const ProtoAssignShape&, const T*, const T*,         \
                                              const T*, double, const T*, const T*, T*, T*, void*, \
                                              cudaStream_t);
SC_INSTANTIATE(float)
SC_INSTANTIATE(double)
#undef SC_INSTANTIATE

}  // namespace sc
