// tile_gemm.cuh: a small tiled GEMM with fused operand loads and epilogue, and its tensor-core
// (TF32) tile accumulator. Used by proto_assign.cu and slot_pool.cu (the GEMM) and slot_contrast.cu
// (TcAcc, for its logits tiles). Include from .cu files only.
//
//   C_z[m, n] = sum_{kk < Kc} A(z, m, kk) B(z, kk, n),   m < M, n < N, z < Z
//
// A and B are functors, so operands can be formed on the fly (the softmax Jacobian of
// proto_assign's backward, 1/norm scales) instead of being materialised; the epilogue functor
// receives each finished element (z, m, n, acc) and stores it (or atomically adds it, for a
// split contraction). Each functor says which of its indices is contiguous in memory
// (kA_m_contiguous, kB_n_contiguous) so that the tile loads are coalesced either way.
//
// Launch: 256 threads, a 64 x 64 output tile per block, 16-deep slabs of the contraction through
// shared memory, 4 x 4 outputs per thread at stride 16 (conflict-free shared reads); optionally
// (tf32, float) the products on the tensor cores (below). Grid
// (ceil(N/64), ceil(M/64), Z * splits): blockIdx.z = z * splits + split, and split s covers the
// contraction slice [s chunk, (s+1) chunk), chunk a multiple of 16.
//
// Versions (a template flag TC of the one kernel, chosen only in launch_tile_gemm):
//   v1 SIMT (TC = false): FP32 / FP64 FMAs, 4 x 4 outputs per thread;
//   v2 TF32 (TC = true; Acc = float and tf32 asked): wmma m16n16k8, operands rounded to TF32 as
//      they are staged, float accumulators (TcAcc), staged back to v1's register layout.
#pragma once
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>

#include "kernels/common.cuh"

namespace sc {
namespace kernels {

constexpr int kTileM = 64, kTileN = 64, kTileK = 16, kGemmThreads = 256;

template <bool TC, class A>
__device__ __forceinline__ A tc_round(A v) {
  if constexpr (TC)
    return nvcuda::wmma::__float_to_tf32(v);
  else
    return v;
}
// The tensor-core accumulators of a warp (none for the SIMT path). In a block of 256 threads
// computing a 64 x 64 tile, warp w holds rows 16 (w / 2) .. + 16 and columns 32 (w % 2) .. + 32 as
// two 16 x 16 accumulators (also used by slot_contrast.cu's logits tile).
template <bool TC>
struct TcAcc {
  __device__ TcAcc() {}
};
template <>
struct TcAcc<true> {
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 8, float> c[2];
  int row0, col0;  // this warp's block of the tile
  __device__ TcAcc() : row0(int(threadIdx.x / 32) / 2 * 16), col0(int(threadIdx.x / 32) % 2 * 32) {
    nvcuda::wmma::fill_fragment(c[0], 0.0f);
    nvcuda::wmma::fill_fragment(c[1], 0.0f);
  }
  // Stores the block's tile to St (64 rows of stride ld floats, 32-byte aligned), waits for the
  // block, and gives each thread its 4 x 4: acc[i][j] = tile[ty + 16 i][tx + 16 j] (tx = t % 16,
  // ty = t / 16), the SIMT tile's layout.
  __device__ void stage(float* St, int ld, float acc[4][4]) const {
    using namespace nvcuda;
    wmma::store_matrix_sync(St + row0 * ld + col0, c[0], ld, wmma::mem_row_major);
    wmma::store_matrix_sync(St + row0 * ld + col0 + 16, c[1], ld, wmma::mem_row_major);
    __syncthreads();
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = St[(ty + 16 * i) * ld + tx + 16 * j];
  }
};

// TC (Acc = float only): the products on the tensor cores, wmma m16n16k8 TF32 with float
// accumulators. The same tiles, padded to a row stride of 68 (wmma's 16-byte rule), operands
// rounded to TF32 as they are staged; warp w computes rows 16 (w / 2) and columns 32 (w % 2) of
// the tile as two accumulators, stores them to a 64 x 68 staging tile, and every thread reads its
// 4 x 4 back for the same epilogue.
constexpr int kTcLd = kTileM + 4;
template <class Acc, bool TC>
struct GemmSmem {
  static constexpr int kLd = TC ? kTcLd : kTileM + 1;
  Acc As[kTileK][kLd];  // As[k][m]
  Acc Bs[kTileK][kLd];  // Bs[k][n]
  Acc St[TC ? kTileM : 1][TC ? kTcLd : 1];
};

template <class Acc, bool TC, class LoadA, class LoadB, class Epi>
__global__ void __launch_bounds__(kGemmThreads)
    tile_gemm_kernel(int64_t M, int64_t N, int64_t Kc, int splits, int64_t chunk, LoadA la,
                     LoadB lb, Epi epi) {
  static_assert(!TC || sizeof(Acc) == 4, "the tensor-core path is float only");
  __shared__ __align__(32) GemmSmem<Acc, TC> sm;
  auto& As = sm.As;
  auto& Bs = sm.Bs;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t z = blockIdx.z / splits, split = blockIdx.z % splits;
  const int64_t m0 = int64_t(blockIdx.y) * kTileM, n0 = int64_t(blockIdx.x) * kTileN;
  const int64_t k_begin = split * chunk;
  const int64_t k_end = k_begin + chunk < Kc ? k_begin + chunk : Kc;
  Acc acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = Acc(0);
  TcAcc<TC> tc;

  for (int64_t k0 = k_begin; k0 < k_end; k0 += kTileK) {
    // 64 x 16 elements of each operand, 4 per thread.
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int e = tid + r * kGemmThreads;
      int mm, kk;
      if (LoadA::kA_m_contiguous) {
        mm = e % kTileM;
        kk = e / kTileM;
      } else {
        mm = e / kTileK;
        kk = e % kTileK;
      }
      const int64_t gm = m0 + mm, gk = k0 + kk;
      As[kk][mm] = tc_round<TC>((gm < M && gk < k_end) ? Acc(la(z, gm, gk)) : Acc(0));
      int nn, kb;
      if (LoadB::kB_n_contiguous) {
        nn = e % kTileN;
        kb = e / kTileN;
      } else {
        nn = e / kTileK;
        kb = e % kTileK;
      }
      const int64_t gn = n0 + nn, gkb = k0 + kb;
      Bs[kb][nn] = tc_round<TC>((gn < N && gkb < k_end) ? Acc(lb(z, gkb, gn)) : Acc(0));
    }
    __syncthreads();
    if constexpr (TC) {
      using namespace nvcuda;
#pragma unroll
      for (int kk = 0; kk < kTileK; kk += 8) {
        wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::col_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> b0, b1;
        wmma::load_matrix_sync(a, &As[kk][tc.row0], kTcLd);
        wmma::load_matrix_sync(b0, &Bs[kk][tc.col0], kTcLd);
        wmma::load_matrix_sync(b1, &Bs[kk][tc.col0 + 16], kTcLd);
        wmma::mma_sync(tc.c[0], a, b0, tc.c[0]);
        wmma::mma_sync(tc.c[1], a, b1, tc.c[1]);
      }
    } else {
#pragma unroll
      for (int kk = 0; kk < kTileK; ++kk) {
        Acc a[4], b[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i];
#pragma unroll
        for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx + 16 * j];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
      }
    }
    __syncthreads();
  }
  if constexpr (TC) tc.stage(&sm.St[0][0], kTcLd, acc);
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t gm = m0 + ty + 16 * i, gn = n0 + tx + 16 * j;
      if (gm < M && gn < N) epi(z, gm, gn, acc[i][j]);
    }
}

// Launches tile_gemm_kernel; `splits` >= 1 slices the contraction (the epilogue must then add).
// tf32: the tensor-core path (honoured for Acc = float, ignored for double).
template <class Acc, class LoadA, class LoadB, class Epi>
void launch_tile_gemm(int64_t M, int64_t N, int64_t Kc, int64_t Z, int splits, const LoadA& la,
                      const LoadB& lb, const Epi& epi, cudaStream_t stream, bool tf32 = false) {
  int64_t chunk = (Kc + splits - 1) / splits;
  chunk = (chunk + kTileK - 1) / kTileK * kTileK;
  const dim3 grid(unsigned((N + kTileN - 1) / kTileN), unsigned((M + kTileM - 1) / kTileM),
                  unsigned(Z * splits));
  // the trace's work: Z products of (M x Kc) . (Kc x N), each operand and the result once
  SC_TRACE_WORK_AS(double(Z) * double(M * Kc + Kc * N + M * N) * sizeof(Acc),
                   2.0 * double(Z) * double(M) * double(N) * double(Kc),
                   sizeof(Acc) == 8 ? Unit::FP64 : (tf32 ? Unit::TF32 : Unit::FP32));
  if constexpr (sizeof(Acc) == 4) {
    if (tf32) {
      tile_gemm_kernel<Acc, true>
          <<<grid, kGemmThreads, 0, stream>>>(M, N, Kc, splits, chunk, la, lb, epi);
      SC_KERNEL_LAUNCHED("tile_gemm_kernel");
      return;
    }
  }
  (void)tf32;
  tile_gemm_kernel<Acc, false>
      <<<grid, kGemmThreads, 0, stream>>>(M, N, Kc, splits, chunk, la, lb, epi);
  SC_KERNEL_LAUNCHED("tile_gemm_kernel");
}

}  // namespace kernels
}  // namespace sc
