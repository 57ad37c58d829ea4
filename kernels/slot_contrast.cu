// slot_contrast.cu: CUDA slot contrast (see slot_contrast.h and
// docs/kernels/slot_contrast.md).
//
// Everything is static-shape and stays on the device:
//   1. compaction (one block of 1024 threads, a chunked scan): the valid queries and the valid keys
//      as ascending index lists, their counts in device memory;
//   2. norms: one warp per valid row; for a query also the label logit <zn_i, kn_label> / tau;
//   3. forward: flash-style streaming. A block owns 64 valid queries and sweeps the valid keys in
//      tiles of 64: the 64 x 64 logits tile is computed through shared memory (16-deep slabs of D,
//      4 x 4 per thread) and folded into per-thread online (max, sum); the tile is never stored.
//      The 16 threads sharing a row merge by shuffles; the row's loss lse - label goes to a partial
//      buffer that a one-block finalize sums in a fixed order.
//   4. backward: the same sweep recomputes each logits tile, turns it into probabilities in shared
//      memory and accumulates P . kn (64 x D, registers, D in chunks of 256 floats / 128 doubles)
//      into the output buffer; the transposed sweep (rows = keys, columns = queries) gives the key
//      gradient. A finish pass (warp per row) subtracts the label term, scales by 2 dL/dloss / n
//      and applies the normalisation backward; invalid rows get zeros.
// Grids are sized for the worst case (every row valid); blocks beyond the device-side counts exit.
//
// Versions of the two tile products (the logits tile, and the backward's P . kn), a template
// flag TC of the same kernels, chosen in one place (with_version):
//   v1 SIMT (TC = false): FP32 / FP64 FMAs through shared memory, 4 x 4 outputs per thread;
//   v2 TF32 (TC = true, T = float and SlotContrastShape::tf32): wmma m16n16k8 on the tensor cores,
//      operands rounded to TF32, float accumulators (tile_gemm.cuh's TcAcc), staged back to the
//      v1 register layout so that everything after the product is shared.
#include <cuda_runtime.h>
#include <mma.h>

#include <type_traits>

#include "kernels/check.h"
#include "kernels/common.cuh"
#include "kernels/slot_contrast.h"
#include "kernels/tile_gemm.cuh"  // TcAcc, the tensor-core tile accumulators

namespace sc {
namespace {

using kernels::AccOf;
using kernels::align256;
using kernels::TcAcc;
using kernels::warp_sum;

constexpr double kEps = 1e-12;
constexpr int kTile = 64, kSlab = 16, kThreads = 256, kScanThreads = 1024;
// Tensor-core tiles (TF32, float only): slabs of 32 of D, row stride 36 floats (a multiple of 16
// bytes, as wmma needs, and off the 32-bank period); the 64 x 64 result is staged through shared
// memory with row stride 68.
constexpr int kSlabTC = 32, kLdT = kSlabTC + 4, kLdS = kTile + 4;

// ---------------------------------------------------------------- compaction
// idx[0..count) = ascending i < n with m1[i] && (m2 == null || m2[off2 + i]).
__global__ void __launch_bounds__(kScanThreads)
    compact_kernel(int64_t n, const uint8_t* m1, const uint8_t* m2, int64_t off2, int* idx,
                   int* count) {
  __shared__ int scan[kScanThreads];
  const int t = threadIdx.x;
  const int64_t chunk = (n + kScanThreads - 1) / kScanThreads;
  const int64_t begin = t * chunk, end = begin + chunk < n ? begin + chunk : n;
  int c = 0;
  for (int64_t i = begin; i < end; ++i) c += (m1[i] && (!m2 || m2[off2 + i])) ? 1 : 0;
  scan[t] = c;
  __syncthreads();
  for (int o = 1; o < kScanThreads; o <<= 1) {
    const int v = t >= o ? scan[t - o] : 0;
    __syncthreads();
    scan[t] += v;
    __syncthreads();
  }
  int pos = scan[t] - c;
  for (int64_t i = begin; i < end; ++i)
    if (m1[i] && (!m2 || m2[off2 + i])) idx[pos++] = int(i);
  if (t == kScanThreads - 1) *count = scan[t];
}

// ---------------------------------------------------------------- norms
// Warp per valid key: kinv[c] = 1 / max(||keys[k_idx[c]]||, eps).
template <class T, class A>
__global__ void key_norms_kernel(int64_t D, const T* keys, const int* k_idx, const int* k_count,
                                 A* kinv) {
  const int lane = threadIdx.x % 32;
  const int64_t nwarps = int64_t(gridDim.x) * blockDim.x / 32;
  const int n = *k_count;
  for (int64_t c = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; c < n; c += nwarps) {
    const T* row = keys + int64_t(k_idx[c]) * D;
    A ss = 0;
    for (int64_t d = lane; d < D; d += 32) ss += A(row[d]) * A(row[d]);
    ss = warp_sum(ss);
    if (lane == 0) kinv[c] = A(1) / max(sqrt(ss), A(kEps));
  }
}

// Warp per valid query r: qinv[r] and the label logit <zn_i, kn_label> / tau.
template <class T, class A>
__global__ void query_norms_kernel(int64_t D, int64_t label_offset, const T* z, const T* keys,
                                   const int* q_idx, const int* q_count, A inv_tau, A* qinv,
                                   A* qlabel) {
  const int lane = threadIdx.x % 32;
  const int64_t nwarps = int64_t(gridDim.x) * blockDim.x / 32;
  const int n = *q_count;
  for (int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; r < n; r += nwarps) {
    const int64_t i = q_idx[r];
    const T* zr = z + i * D;
    const T* kr = keys + (label_offset + i) * D;
    A sz = 0, sk = 0, dot = 0;
    for (int64_t d = lane; d < D; d += 32) {
      const A a = A(zr[d]), b = A(kr[d]);
      sz += a * a;
      sk += b * b;
      dot += a * b;
    }
    sz = warp_sum(sz);
    sk = warp_sum(sk);
    dot = warp_sum(dot);
    if (lane == 0) {
      const A iz = A(1) / max(sqrt(sz), A(kEps)), ik = A(1) / max(sqrt(sk), A(kEps));
      qinv[r] = iz;
      qlabel[r] = dot * iz * ik * inv_tau;
    }
  }
}

// ---------------------------------------------------------------- streaming tiles
template <class T, class A>
struct Side {  // the valid rows of a (rows, D) matrix, compacted
  const T* src;
  const int* idx;
  const int* count;
  const A* inv;  // per compacted row
};

// acc[i][j] = <u_r, u_c> / tau for rows r0 + ty + 16 i and columns c0 + tx + 16 j (unit vectors),
// garbage-free zeros outside the counts. Rs / Cs: [kSlab][kTile + 1] shared arrays.
template <class T, class A>
__device__ __forceinline__ void logits_tile(const Side<T, A>& R, const Side<T, A>& C, int nr,
                                            int nc, int r0, int c0, int64_t D, A inv_tau, A* Rs,
                                            A* Cs, A acc[4][4]) {
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = A(0);
  for (int64_t d0 = 0; d0 < D; d0 += kSlab) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int e = tid + q * kThreads, row = e / kSlab, dd = e % kSlab;
      const int64_t d = d0 + dd;
      const int rr = r0 + row, cc = c0 + row;
      Rs[dd * (kTile + 1) + row] = (rr < nr && d < D) ? A(R.src[int64_t(R.idx[rr]) * D + d]) : A(0);
      Cs[dd * (kTile + 1) + row] = (cc < nc && d < D) ? A(C.src[int64_t(C.idx[cc]) * D + d]) : A(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kSlab; ++kk) {
      A a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = Rs[kk * (kTile + 1) + ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = Cs[kk * (kTile + 1) + tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int rr = r0 + ty + 16 * i;
    const A ri = rr < nr ? R.inv[rr] * inv_tau : A(0);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int cc = c0 + tx + 16 * j;
      acc[i][j] *= cc < nc ? ri * C.inv[cc] : A(0);
    }
  }
}

// The same tile on the tensor cores (TF32 operands, float accumulation), same result layout:
// acc[i][j] for rows r0 + ty + 16 i and columns c0 + tx + 16 j. Warp w computes the 16 x 32 block
// of rows 16 (w / 2) and columns 32 (w % 2) as two 16 x 16 wmma accumulators over D; the tile is
// staged through St (kTile x kLdS floats, 32-byte aligned) and each thread reads its 4 x 4 back.
// Ta / Tb: kTile x kLdT floats each, 32-byte aligned. St may be read by the caller until its next
// call (the D loop's barriers come before the next store).
template <class T>
__device__ __forceinline__ void logits_tile_tc(const Side<T, float>& R, const Side<T, float>& C,
                                               int nr, int nc, int r0, int c0, int64_t D,
                                               float inv_tau, float* Ta, float* Tb, float* St,
                                               float acc[4][4]) {
  using namespace nvcuda;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  TcAcc<true> tc;
  for (int64_t d0 = 0; d0 < D; d0 += kSlabTC) {
#pragma unroll
    for (int q = 0; q < kTile * kSlabTC / kThreads; ++q) {
      const int e = tid + q * kThreads, row = e / kSlabTC, dd = e % kSlabTC;
      const int64_t d = d0 + dd;
      const int rr = r0 + row, cc = c0 + row;
      Ta[row * kLdT + dd] = wmma::__float_to_tf32(
          (rr < nr && d < D) ? float(R.src[int64_t(R.idx[rr]) * D + d]) : 0.0f);
      Tb[row * kLdT + dd] = wmma::__float_to_tf32(
          (cc < nc && d < D) ? float(C.src[int64_t(C.idx[cc]) * D + d]) : 0.0f);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kSlabTC; kk += 8) {
      wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a;
      wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> b0, b1;
      wmma::load_matrix_sync(a, Ta + tc.row0 * kLdT + kk, kLdT);
      wmma::load_matrix_sync(b0, Tb + tc.col0 * kLdT + kk, kLdT);
      wmma::load_matrix_sync(b1, Tb + (tc.col0 + 16) * kLdT + kk, kLdT);
      wmma::mma_sync(tc.c[0], a, b0, tc.c[0]);
      wmma::mma_sync(tc.c[1], a, b1, tc.c[1]);
    }
    __syncthreads();
  }
  tc.stage(St, kLdS, acc);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int rr = r0 + ty + 16 * i;
    const float ri = rr < nr ? R.inv[rr] * inv_tau : 0.0f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int cc = c0 + tx + 16 * j;
      acc[i][j] *= cc < nc ? ri * C.inv[cc] : 0.0f;
    }
  }
}

// Shared memory of the two tile paths: SIMT Rs, Cs [kSlab][kTile + 1] (A); TC Ta, Tb
// [kTile][kLdT] (float). Rounded to 32 bytes.
template <class A, bool TC>
constexpr int tile_smem_elems() {
  return TC ? 2 * kTile * kLdT
            : ((2 * kSlab * (kTile + 1) * int(sizeof(A)) + 31) / 32 * 32) / int(sizeof(A));
}

template <class T, class A, bool TC>
__device__ __forceinline__ void logits_any(const Side<T, A>& R, const Side<T, A>& C, int nr, int nc,
                                           int r0, int c0, int64_t D, A inv_tau, A* tiles, A* St,
                                           A acc[4][4]) {
  if constexpr (TC) {
    logits_tile_tc(R, C, nr, nc, r0, c0, D, inv_tau, tiles, tiles + kTile * kLdT, St, acc);
  } else {
    (void)St;
    logits_tile(R, C, nr, nc, r0, c0, D, inv_tau, tiles, tiles + kSlab * (kTile + 1), acc);
  }
}

template <class A>
__device__ __forceinline__ void merge_stats(A& m, A& s, A m2, A s2) {
  const A mn = max(m, m2);
  if (mn == A(-INFINITY)) return;
  s = s * exp(m - mn) + s2 * exp(m2 - mn);
  m = mn;
}

template <class T, class A, bool TC>
__global__ void __launch_bounds__(kThreads)
    contrast_forward_kernel(Side<T, A> Q, Side<T, A> K, int64_t D, A inv_tau, const A* qlabel,
                            T* row_lse, A* part_loss) {
  constexpr int kTiles = tile_smem_elems<A, TC>(), kStage = TC ? kTile * kLdS : 0;
  __shared__ __align__(32) A smem[kTiles + (kStage > 0 ? kStage : 1)];
  A* const St = smem + kTiles;
  const int nq = *Q.count, nk = *K.count;
  const int r0 = blockIdx.x * kTile;
  if (r0 >= nq) return;  // uniform over the block
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  A m[4], s[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    m[i] = A(-INFINITY);
    s[i] = A(0);
  }
  A acc[4][4];
  for (int c0 = 0; c0 < nk; c0 += kTile) {
    logits_any<T, A, TC>(Q, K, nq, nk, r0, c0, D, inv_tau, smem, St, acc);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (c0 + tx + 16 * j >= nk) continue;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const A z = acc[i][j];
        if (z > m[i]) {
          s[i] = s[i] * exp(m[i] - z) + A(1);
          m[i] = z;
        } else {
          s[i] += exp(z - m[i]);
        }
      }
    }
  }
  // Merge the 16 threads of each row (lanes differing in the low 4 bits).
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int o = 1; o < 16; o <<= 1) {
      const A m2 = __shfl_xor_sync(0xffffffffu, m[i], o);
      const A s2 = __shfl_xor_sync(0xffffffffu, s[i], o);
      merge_stats(m[i], s[i], m2, s2);
    }
  if (tx != 0) return;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = r0 + ty + 16 * i;
    if (r >= nq) continue;
    const A lse = m[i] + log(s[i]);
    row_lse[Q.idx[r]] = T(lse);
    part_loss[r] = lse - qlabel[r];
  }
}

// loss = 2 tau / n sum part_loss (n = valid queries, 0 when n == 0); row_lse = 0 on invalid rows.
template <class T, class A>
__global__ void contrast_finalize_kernel(int64_t N, int64_t label_offset, const uint8_t* qm,
                                         const uint8_t* km, const int* q_count, const A* part_loss,
                                         double two_tau, T* loss, T* row_lse) {
  __shared__ double red[256];
  const int n = *q_count;
  double s = 0;
  for (int j = threadIdx.x; j < n; j += blockDim.x) s += double(part_loss[j]);
  red[threadIdx.x] = s;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {
    if (int(threadIdx.x) < w) red[threadIdx.x] += red[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) loss[0] = T(n > 0 ? two_tau * red[0] / double(n) : 0.0);
  if (row_lse)
    for (int64_t i = threadIdx.x; i < N; i += blockDim.x)
      if (!(qm[i] && km[label_offset + i])) row_lse[i] = T(0);
}

// Backward sweep: out[R.idx[r], d] = sum_c p_rc * unit(C)[c, d] over the valid columns, with
// p_rc = exp(l_rc - lse), lse of the row (lse_on_rows) or of the column (the query side).
// Dynamic shared memory: union{logits tiles | Vs[kSlab][NJ*16 + 1]}, Ps[kTile][kPld] (the TC
// tile stages its result in Ps; the probabilities then overwrite it element for element).
template <int NJ>
constexpr int grad_chunk() {
  return NJ * 16;
}
// Row stride of Vs: + 1 against bank conflicts (SIMT), + 4 for wmma's 16-byte rule (TC).
template <bool TC, int NJ>
constexpr int grad_vld() {
  return grad_chunk<NJ>() + (TC ? 4 : 1);
}
template <class A, bool TC, int NJ>
constexpr int grad_union_elems() {
  constexpr int t = tile_smem_elems<A, TC>(), v = kSlab * grad_vld<TC, NJ>();
  constexpr int u = t > v ? t : v;
  return (u * int(sizeof(A)) + 31) / 32 * 32 / int(sizeof(A));
}
template <class T, class A, bool TC, int NJ>
__global__ void __launch_bounds__(kThreads)
    contrast_grad_kernel(Side<T, A> R, Side<T, A> C, int64_t D, A inv_tau, const T* row_lse,
                         bool lse_on_rows, T* out) {
  extern __shared__ __align__(32) unsigned char smem_raw[];
  A* base = reinterpret_cast<A*>(smem_raw);
  constexpr int kChunk = grad_chunk<NJ>();
  constexpr int kUnion = grad_union_elems<A, TC, NJ>();
  constexpr int kPld = TC ? kLdS : kTile + 1;
  A* Vs = base;
  A* Ps = base + kUnion;
  const int nr = *R.count, nc = *C.count;
  const int r0 = blockIdx.x * kTile;
  if (r0 >= nr) return;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  A lse_r[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int rr = r0 + ty + 16 * i;
    lse_r[i] = (lse_on_rows && rr < nr) ? A(row_lse[R.idx[rr]]) : A(0);
  }
  constexpr int kVld = grad_vld<TC, NJ>();
  for (int64_t dc0 = 0; dc0 < D; dc0 += kChunk) {
    // SIMT: o[i][j] for rows ty + 16 i, columns tx + 16 j of the chunk. TC: warp w owns rows
    // 16 (w / 2) and the chunk's half w % 2, as kChunk / 32 wmma accumulators.
    A o[TC ? 1 : 4][TC ? 1 : NJ];
    constexpr int kFrags = TC ? kChunk / 32 : 1;
    nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 8, float> of[kFrags];
    if constexpr (TC) {
#pragma unroll
      for (int f = 0; f < kFrags; ++f) nvcuda::wmma::fill_fragment(of[f], 0.0f);
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < NJ; ++j) o[i][j] = A(0);
    }
    for (int c0 = 0; c0 < nc; c0 += kTile) {
      A acc[4][4];
      logits_any<T, A, TC>(R, C, nr, nc, r0, c0, D, inv_tau, base, Ps, acc);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int cc = c0 + tx + 16 * j;
        const A lse_c = (!lse_on_rows && cc < nc) ? A(row_lse[C.idx[cc]]) : A(0);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int rr = r0 + ty + 16 * i;
          const A lse = lse_on_rows ? lse_r[i] : lse_c;
          const A p = (cc < nc && rr < nr) ? exp(acc[i][j] - lse) : A(0);
          A& dst = Ps[(ty + 16 * i) * kPld + tx + 16 * j];
          if constexpr (TC)
            dst = nvcuda::wmma::__float_to_tf32(p);
          else
            dst = p;
        }
      }
      __syncthreads();
      for (int cs = 0; cs < kTile; cs += kSlab) {
        for (int e = tid; e < kSlab * kChunk; e += kThreads) {
          const int c = e / kChunk, dd = e % kChunk;
          const int cc = c0 + cs + c;
          const int64_t d = dc0 + dd;
          const A v = (cc < nc && d < D) ? A(C.src[int64_t(C.idx[cc]) * D + d]) * C.inv[cc] : A(0);
          if constexpr (TC)
            Vs[c * kVld + dd] = nvcuda::wmma::__float_to_tf32(v);
          else
            Vs[c * kVld + dd] = v;
        }
        __syncthreads();
        if constexpr (TC) {
          using namespace nvcuda;
          const int warp = tid / 32, fr = warp / 2, half = warp % 2;
#pragma unroll
          for (int kk = 0; kk < kSlab; kk += 8) {
            wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> pa;
            wmma::load_matrix_sync(pa, Ps + fr * 16 * kPld + cs + kk, kPld);
#pragma unroll
            for (int f = 0; f < kFrags; ++f) {
              wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> vb;
              wmma::load_matrix_sync(vb, Vs + kk * kVld + half * (kChunk / 2) + f * 16, kVld);
              wmma::mma_sync(of[f], pa, vb, of[f]);
            }
          }
        } else {
#pragma unroll 4
          for (int c = 0; c < kSlab; ++c) {
            A pr[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) pr[i] = Ps[(ty + 16 * i) * kPld + cs + c];
#pragma unroll
            for (int j = 0; j < NJ; ++j) {
              const A v = Vs[c * kVld + tx + 16 * j];
#pragma unroll
              for (int i = 0; i < 4; ++i) o[i][j] += pr[i] * v;
            }
          }
        }
        __syncthreads();
      }
    }
    if constexpr (TC) {
      // Each warp stages one 16 x 16 accumulator at a time in its own part of Ps (free now: the
      // last barrier above ended the reads; the next logits tile stores there only after the
      // barriers of its D loop), then its lanes write 8 elements each to the scattered rows.
      using namespace nvcuda;
      const int warp = tid / 32, lane = tid % 32, fr = warp / 2, half = warp % 2;
      constexpr int kStLd = 20;
      A* stage = Ps + warp * 16 * kStLd;
      const int sr = lane / 2, sc = (lane % 2) * 8;
      const int rr = r0 + fr * 16 + sr;
      T* orow = rr < nr ? out + int64_t(R.idx[rr]) * D : nullptr;
#pragma unroll
      for (int f = 0; f < kFrags; ++f) {
        wmma::store_matrix_sync(stage, of[f], kStLd, wmma::mem_row_major);
        __syncwarp();
        const int64_t d0 = dc0 + half * (kChunk / 2) + f * 16 + sc;
        if (orow)
#pragma unroll
          for (int k = 0; k < 8; ++k)
            if (d0 + k < D) orow[d0 + k] = T(stage[sr * kStLd + sc + k]);
        __syncwarp();
      }
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int rr = r0 + ty + 16 * i;
        if (rr >= nr) continue;
        T* orow = out + int64_t(R.idx[rr]) * D;
#pragma unroll
        for (int j = 0; j < NJ; ++j) {
          const int64_t d = dc0 + tx + 16 * j;
          if (d < D) orow[d] = T(o[i][j]);
        }
      }
    }
  }
}

template <class A, bool TC, int NJ>
size_t grad_smem_bytes() {
  return sizeof(A) * size_t(grad_union_elems<A, TC, NJ>() + kTile * (TC ? kLdS : kTile + 1));
}

// Finish, warp per row i of `rows` rows (own = the side being differentiated):
//   valid:   ghat = c (acc - unit(label row)) (label term only when the row has a valid label),
//            out = (ghat - u <u, ghat>) / ||v||   (ghat / eps when ||v|| <= eps), u = unit(v);
//   invalid: out = 0.
// Queries (keys_side = false): valid = qm[i] && km[off + i], label row = keys[off + i].
// Keys (keys_side = true): valid = km[j], label row = z[j - off] when 0 <= j - off < N and
// qm[j - off].
template <class T, class A>
__global__ void contrast_finish_kernel(int64_t rows, int64_t N, int64_t D, int64_t off,
                                       bool keys_side, const T* own, const T* other,
                                       const uint8_t* qm, const uint8_t* km, const int* q_count,
                                       const T* dL_dloss, T* out) {
  const int lane = threadIdx.x % 32;
  const int64_t nwarps = int64_t(gridDim.x) * blockDim.x / 32;
  const int n = *q_count;
  const A c = n > 0 ? A(2) * A(dL_dloss[0]) / A(n) : A(0);
  for (int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; i < rows; i += nwarps) {
    T* orow = out + i * D;
    bool valid, has_label;
    int64_t lab = -1;
    if (!keys_side) {
      valid = qm[i] && km[off + i];
      has_label = valid;
      lab = off + i;
    } else {
      valid = km[i] != 0;
      const int64_t q = i - off;
      has_label = valid && q >= 0 && q < N && qm[q];
      lab = q;
    }
    if (!valid) {
      for (int64_t d = lane; d < D; d += 32) orow[d] = T(0);
      continue;
    }
    const T* v = own + i * D;
    const T* u = has_label ? other + lab * D : nullptr;
    A sv = 0, su = 0;
    for (int64_t d = lane; d < D; d += 32) {
      sv += A(v[d]) * A(v[d]);
      if (u) su += A(u[d]) * A(u[d]);
    }
    sv = warp_sum(sv);
    su = warp_sum(su);
    const A nv = sqrt(sv), iu = A(1) / max(sqrt(su), A(kEps));
    A dot = 0;
    for (int64_t d = lane; d < D; d += 32) {
      const A g = c * (A(orow[d]) - (u ? A(u[d]) * iu : A(0)));
      dot += A(v[d]) * g;
    }
    dot = warp_sum(dot);
    const bool big = nv > A(kEps);
    const A inv = big ? A(1) / nv : A(1) / A(kEps), proj = big ? dot * inv * inv : A(0);
    for (int64_t d = lane; d < D; d += 32) {
      const A g = c * (A(orow[d]) - (u ? A(u[d]) * iu : A(0)));
      orow[d] = T((g - A(v[d]) * proj) * inv);
    }
  }
}

// ---------------------------------------------------------------- workspace
template <class A>
struct Workspace {
  int* q_idx;   // N
  int* k_idx;   // R*N
  int* counts;  // [0] queries, [1] keys
  A* qinv;      // N
  A* qlabel;    // N
  A* kinv;      // R*N
  A* part;      // N
  static size_t bytes(const SlotContrastShape& s) {
    const size_t N = size_t(s.rows()), NK = size_t(s.key_rows());
    return align256(4 * N) + align256(4 * NK) + 256 + 3 * align256(sizeof(A) * N) +
           align256(sizeof(A) * NK);
  }
  Workspace(const SlotContrastShape& s, void* ws) {
    const size_t N = size_t(s.rows()), NK = size_t(s.key_rows());
    char* p = static_cast<char*>(ws);
    q_idx = reinterpret_cast<int*>(p);
    p += align256(4 * N);
    k_idx = reinterpret_cast<int*>(p);
    p += align256(4 * NK);
    counts = reinterpret_cast<int*>(p);
    p += 256;
    qinv = reinterpret_cast<A*>(p);
    p += align256(sizeof(A) * N);
    qlabel = reinterpret_cast<A*>(p);
    p += align256(sizeof(A) * N);
    part = reinterpret_cast<A*>(p);
    p += align256(sizeof(A) * N);
    kinv = reinterpret_cast<A*>(p);
  }
};

void check_args(const SlotContrastShape& s, double tau, const char* what) {
  SC_KERNEL_REQUIRE(s.B >= 1 && s.K >= 1 && s.D >= 1 && s.R >= 1, what, "empty shape");
  SC_KERNEL_REQUIRE(s.rank >= 0 && s.rank < s.R, what, "rank out of range");
  SC_KERNEL_REQUIRE(tau > 0, what, "tau must be positive");
  SC_KERNEL_REQUIRE(s.key_rows() < (int64_t(1) << 31), what, "too many key rows for int32");
}

// The trace's assumption for the rows that are present (the kernels skip the others on the
// device, which the host does not see): kernels::trace_present_slots() per image and rank.
double valid_rows(const SlotContrastShape& s, int64_t rows) {
  const double per_image = std::min(double(s.K), kernels::trace_present_slots());
  return std::min(double(rows), per_image * double(rows / s.K));
}

int row_blocks(int64_t rows, int per_block) {
  const int64_t b = (rows + per_block - 1) / per_block;
  return int(b < 1024 ? (b < 1 ? 1 : b) : 1024);
}

// Compaction and norms shared by forward and backward.
template <class T, class A>
void prepare(const SlotContrastShape& s, const T* z, const T* keys, const uint8_t* qm,
             const uint8_t* km, double tau, const Workspace<A>& ws, cudaStream_t stream) {
  const int64_t N = s.rows(), NK = s.key_rows(), off = s.rank * N;
  compact_kernel<<<1, kScanThreads, 0, stream>>>(N, qm, km, off, ws.q_idx, ws.counts);
  SC_TRACE_WORK(double(N) * 10.0, N, FP32);
  SC_KERNEL_LAUNCHED("compact_kernel");
  compact_kernel<<<1, kScanThreads, 0, stream>>>(NK, km, nullptr, 0, ws.k_idx, ws.counts + 1);
  SC_TRACE_WORK(double(NK) * 9.0, NK, FP32);
  SC_KERNEL_LAUNCHED("compact_kernel");
  query_norms_kernel<T, A><<<row_blocks(N, 8), 256, 0, stream>>>(
      s.D, off, z, keys, ws.q_idx, ws.counts, A(1.0 / tau), ws.qinv, ws.qlabel);
  SC_TRACE_WORK(2.0 * valid_rows(s, N) * double(s.D) * sizeof(T), 4.0 * valid_rows(s, N) * double(s.D),
                FP32);
  SC_KERNEL_LAUNCHED("query_norms_kernel");
  key_norms_kernel<T, A>
      <<<row_blocks(NK, 8), 256, 0, stream>>>(s.D, keys, ws.k_idx, ws.counts + 1, ws.kinv);
  SC_TRACE_WORK(valid_rows(s, NK) * double(s.D) * sizeof(T), 2.0 * valid_rows(s, NK) * double(s.D),
                FP32);
  SC_KERNEL_LAUNCHED("key_norms_kernel");
}

template <class T>
struct GradChunk {
  static constexpr int NJ = 16;  // 256 floats of D per sweep
};
template <>
struct GradChunk<double> {
  static constexpr int NJ = 8;  // 128 doubles
};

template <class T, class A, bool TC>
void launch_grad(const Side<T, A>& R, const Side<T, A>& C, int64_t rows, int64_t D, double tau,
                 const T* row_lse, bool lse_on_rows, T* out, cudaStream_t stream,
                 const char* what) {
  constexpr int NJ = GradChunk<T>::NJ;
  const size_t smem = grad_smem_bytes<A, TC, NJ>();
  if (cudaFuncSetAttribute(contrast_grad_kernel<T, A, TC, NJ>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)) != cudaSuccess)
    kernels::fail(what, "cudaFuncSetAttribute (dynamic shared memory) failed");
  const unsigned blocks = unsigned((rows + kTile - 1) / kTile);
  contrast_grad_kernel<T, A, TC, NJ>
      <<<blocks, kThreads, smem, stream>>>(R, C, D, A(1.0 / tau), row_lse, lse_on_rows, out);
  SC_KERNEL_LAUNCHED("contrast_grad_kernel");  // its work: noted by the caller
}

// The one place a version is chosen: f(std::true_type{}) runs v2 (TF32 tensor cores; T = float
// with tf32 set), f(std::false_type{}) v1 (SIMT) in every other case.
template <class T, class F>
void with_version(bool tf32, F&& f) {
  if constexpr (std::is_same<T, float>::value) {
    if (tf32) return f(std::true_type{});
  }
  f(std::false_type{});
}

}  // namespace

size_t slot_contrast_workspace_bytes(const SlotContrastShape& s) {
  return Workspace<double>::bytes(s);
}

template <class T>
void slot_contrast_forward_cuda(const SlotContrastShape& s, const T* z, const T* keys,
                                const uint8_t* query_mask, const uint8_t* key_mask, double tau,
                                T* loss, T* row_lse, void* workspace, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  const char* what = "slot_contrast_forward_cuda";
  check_args(s, tau, what);
  SC_KERNEL_REQUIRE(row_lse != nullptr, what, "row_lse must be given");
  Workspace<A> ws(s, workspace);
  prepare<T, A>(s, z, keys, query_mask, key_mask, tau, ws, stream);
  SC_KERNEL_LAUNCH_CHECK(what);
  const Side<T, A> Q{z, ws.q_idx, ws.counts, ws.qinv};
  const Side<T, A> Kside{keys, ws.k_idx, ws.counts + 1, ws.kinv};
  const unsigned blocks = unsigned((s.rows() + kTile - 1) / kTile);
  {  // the trace's work: the logits of the present rows, (Nq x D) . (D x Nk), and their exps
    const double nq = valid_rows(s, s.rows()), nk = valid_rows(s, s.key_rows());
    SC_TRACE_WORK_AS((nq + nk) * double(s.D) * sizeof(T) + 2.0 * nq * sizeof(A),
                     2.0 * nq * nk * double(s.D) + 4.0 * nq * nk,
                     s.tf32 && sizeof(A) == 4 ? kernels::Unit::TF32
                                              : (sizeof(A) == 8 ? kernels::Unit::FP64
                                                                : kernels::Unit::FP32));
  }
  with_version<T>(s.tf32, [&](auto tc) {
    contrast_forward_kernel<T, A, decltype(tc)::value>
        <<<blocks, kThreads, 0, stream>>>(Q, Kside, s.D, A(1.0 / tau), ws.qlabel, row_lse, ws.part);
    SC_KERNEL_LAUNCHED("contrast_forward_kernel");
  });
  SC_KERNEL_LAUNCH_CHECK(what);
  contrast_finalize_kernel<T, A><<<1, 256, 0, stream>>>(s.rows(), s.rank * s.rows(), query_mask,
                                                        key_mask, ws.counts, ws.part, 2.0 * tau,
                                                        loss, row_lse);
  SC_TRACE_WORK(double(s.rows()) * (2 * sizeof(T) + 2), s.rows(), FP32);
  SC_KERNEL_LAUNCHED(what);
}

template <class T>
void slot_contrast_backward_cuda(const SlotContrastShape& s, const T* z, const T* keys,
                                 const uint8_t* query_mask, const uint8_t* key_mask, double tau,
                                 const T* row_lse, const T* dL_dloss, T* dL_dz, T* dL_dkeys,
                                 void* workspace, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  const char* what = "slot_contrast_backward_cuda";
  check_args(s, tau, what);
  if (!dL_dz && !dL_dkeys) return;
  Workspace<A> ws(s, workspace);
  prepare<T, A>(s, z, keys, query_mask, key_mask, tau, ws, stream);
  SC_KERNEL_LAUNCH_CHECK(what);
  const Side<T, A> Q{z, ws.q_idx, ws.counts, ws.qinv};
  const Side<T, A> Kside{keys, ws.k_idx, ws.counts + 1, ws.kinv};
  const int64_t N = s.rows(), NK = s.key_rows(), off = s.rank * N;
  auto grad = [&](const Side<T, A>& R, const Side<T, A>& C, int64_t rows, bool lse_on_rows,
                  T* out) {
    // the trace's work: the logits recomputed and P . C accumulated for the present rows
    const double nr = valid_rows(s, rows), nc = valid_rows(s, rows == N ? NK : N);
    SC_TRACE_WORK_AS((2.0 * nr + nc) * double(s.D) * sizeof(T) + nr * sizeof(T),
                     4.0 * nr * nc * double(s.D) + 4.0 * nr * nc,
                     s.tf32 && sizeof(A) == 4 ? kernels::Unit::TF32
                                              : (sizeof(A) == 8 ? kernels::Unit::FP64
                                                                : kernels::Unit::FP32));
    with_version<T>(s.tf32, [&](auto tc) {
      launch_grad<T, A, decltype(tc)::value>(R, C, rows, s.D, tau, row_lse, lse_on_rows, out,
                                             stream, what);
    });
  };
  if (dL_dz) {
    grad(Q, Kside, N, true, dL_dz);
    SC_KERNEL_LAUNCH_CHECK(what);
    contrast_finish_kernel<T, A><<<row_blocks(N, 8), 256, 0, stream>>>(
        N, N, s.D, off, false, z, keys, query_mask, key_mask, ws.counts, dL_dloss, dL_dz);
    SC_TRACE_WORK(3.0 * double(N * s.D) * sizeof(T), 2 * N * s.D, FP32);
    SC_KERNEL_LAUNCHED(what);
  }
  if (dL_dkeys) {
    grad(Kside, Q, NK, false, dL_dkeys);
    SC_KERNEL_LAUNCH_CHECK(what);
    contrast_finish_kernel<T, A><<<row_blocks(NK, 8), 256, 0, stream>>>(
        NK, N, s.D, off, true, keys, z, query_mask, key_mask, ws.counts, dL_dloss, dL_dkeys);
    SC_TRACE_WORK(3.0 * double(NK * s.D) * sizeof(T), 2 * NK * s.D, FP32);
    SC_KERNEL_LAUNCHED(what);
  }
}

#define SC_INSTANTIATE(T)                                                                        \
  template void slot_contrast_forward_cuda<T>(const SlotContrastShape&, const T*, const T*,      \
                                              const uint8_t*, const uint8_t*, double, T*, T*,    \
                                              void*, cudaStream_t);                              \
  template void slot_contrast_backward_cuda<T>(const SlotContrastShape&, const T*, const T*,     \
                                               const uint8_t*, const uint8_t*, double, const T*, \
                                               const T*, T*, T*, void*, cudaStream_t);
SC_INSTANTIATE(float)
SC_INSTANTIATE(double)
#undef SC_INSTANTIATE

}  // namespace sc
