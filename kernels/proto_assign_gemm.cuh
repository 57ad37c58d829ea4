// proto_assign_gemm.cuh: the small tiled GEMM shared by the semantic-grouping kernels
// (proto_assign.cu and slot_pool.cu). Include from .cu files only.
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
// shared memory, 4 x 4 outputs per thread at stride 16 (conflict-free shared reads). Grid
// (ceil(N/64), ceil(M/64), Z * splits): blockIdx.z = z * splits + split, and split s covers the
// contraction slice [s chunk, (s+1) chunk), chunk a multiple of 16.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace sc {
namespace grouping {

constexpr int kTileM = 64, kTileN = 64, kTileK = 16, kGemmThreads = 256;

template <class T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

template <class Acc, class LoadA, class LoadB, class Epi>
__global__ void __launch_bounds__(kGemmThreads)
    tile_gemm_kernel(int64_t M, int64_t N, int64_t Kc, int splits, int64_t chunk, LoadA la,
                     LoadB lb, Epi epi) {
  __shared__ Acc As[kTileK][kTileM + 1];
  __shared__ Acc Bs[kTileK][kTileN + 1];
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
      As[kk][mm] = (gm < M && gk < k_end) ? Acc(la(z, gm, gk)) : Acc(0);
      int nn, kb;
      if (LoadB::kB_n_contiguous) {
        nn = e % kTileN;
        kb = e / kTileN;
      } else {
        nn = e / kTileK;
        kb = e % kTileK;
      }
      const int64_t gn = n0 + nn, gkb = k0 + kb;
      Bs[kb][nn] = (gn < N && gkb < k_end) ? Acc(lb(z, gkb, gn)) : Acc(0);
    }
    __syncthreads();
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
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t gm = m0 + ty + 16 * i, gn = n0 + tx + 16 * j;
      if (gm < M && gn < N) epi(z, gm, gn, acc[i][j]);
    }
}

// Launches tile_gemm_kernel; `splits` >= 1 slices the contraction (the epilogue must then add).
template <class Acc, class LoadA, class LoadB, class Epi>
void launch_tile_gemm(int64_t M, int64_t N, int64_t Kc, int64_t Z, int splits, const LoadA& la,
                      const LoadB& lb, const Epi& epi, cudaStream_t stream) {
  int64_t chunk = (Kc + splits - 1) / splits;
  chunk = (chunk + kTileK - 1) / kTileK * kTileK;
  const dim3 grid(unsigned((N + kTileN - 1) / kTileN), unsigned((M + kTileM - 1) / kTileM),
                  unsigned(Z * splits));
  tile_gemm_kernel<Acc><<<grid, kGemmThreads, 0, stream>>>(M, N, Kc, splits, chunk, la, lb, epi);
}

// Warp-level sum (all lanes get the total).
template <class A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

inline size_t align256(size_t n) { return (n + 255) / 256 * 256; }

}  // namespace grouping
}  // namespace sc
