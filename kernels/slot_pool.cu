// slot_pool.cu: CUDA attentive slot pooling (see slot_pool.h and docs/kernels/slot_pool.md).
//
// Forward: a = row sums of attn (warp per (b, k)); slots_b = attn_b (K x P) . x_b^T (P x D) with
// the 1/a scale in the epilogue (the tile GEMM of tile_gemm.cuh, one z per image).
// Backward: per (b, k) the row sum a and c = <dL_dslots, slots>; then two tile GEMMs:
//   dL_dx_b    = dL_dslots_b^T (D x K) . (attn_b / a) (K x P)
//   dL_dattn_b = (dL_dslots_b (K x D) . x_b (D x P) - c) / a     (epilogue)
//
// Versions of the GEMMs (tile_gemm.cuh, chosen in one place, launch_tile_gemm): v1 SIMT (FP32 /
// FP64), v2 TF32 tensor cores (float with the shape's tf32 flag).
#include <cuda_runtime.h>

#include "kernels/check.h"
#include "kernels/slot_pool.h"
#include "kernels/tile_gemm.cuh"

namespace sc {
namespace {

using kernels::AccOf;
using kernels::align256;
using kernels::launch_tile_gemm;
using kernels::warp_sum;

template <class A>
struct Workspace {
  A* asum;  // B*K
  A* c;     // B*K
  static size_t bytes(const SlotPoolShape& s) { return 2 * align256(sizeof(A) * s.B * s.K); }
  Workspace(const SlotPoolShape& s, void* ws) {
    asum = static_cast<A*>(ws);
    c = reinterpret_cast<A*>(static_cast<char*>(ws) + align256(sizeof(A) * s.B * s.K));
  }
};

// asum[r] = sum_p attn[r, p]; when g and slots are given also c[r] = <g[r, :], slots[r, :]>.
// One warp per row r = b*K + k.
template <class T, class A>
__global__ void row_sums_kernel(int64_t R, int64_t P, int64_t D, const T* attn, const T* g,
                                const T* slots, A* asum, A* c) {
  const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (r >= R) return;
  A s = 0;
  for (int64_t p = lane; p < P; p += 32) s += A(attn[r * P + p]);
  s = warp_sum(s);
  A d = 0;
  if (g)
    for (int64_t j = lane; j < D; j += 32) d += A(g[r * D + j]) * A(slots[r * D + j]);
  d = warp_sum(d);
  if (lane == 0) {
    asum[r] = s;
    if (g) c[r] = d;
  }
}

template <class T>
struct AttnRows {  // A(k, p) = attn[b, k, p]
  static constexpr bool kA_m_contiguous = false;
  const T* attn;
  int64_t K, P;
  __device__ __forceinline__ T operator()(int64_t b, int64_t k, int64_t p) const {
    return attn[(b * K + k) * P + p];
  }
};
template <class T>
struct PixelsT {  // B(p, d) = x[b, d, p]
  static constexpr bool kB_n_contiguous = false;
  const T* x;
  int64_t D, P;
  __device__ __forceinline__ T operator()(int64_t b, int64_t p, int64_t d) const {
    return x[(b * D + d) * P + p];
  }
};
template <class T, class A>
struct SlotsEpilogue {
  T* slots;
  const A* asum;
  int64_t K, D;
  __device__ __forceinline__ void operator()(int64_t b, int64_t k, int64_t d, A acc) const {
    slots[(b * K + k) * D + d] = T(acc / asum[b * K + k]);
  }
};
template <class T>
struct GradSlotsT {  // A(d, k) = g[b, k, d]
  static constexpr bool kA_m_contiguous = true;
  const T* g;
  int64_t K, D;
  __device__ __forceinline__ T operator()(int64_t b, int64_t d, int64_t k) const {
    return g[(b * K + k) * D + d];
  }
};
template <class T, class A>
struct AttnWeights {  // B(k, p) = attn[b, k, p] / a[b, k]
  static constexpr bool kB_n_contiguous = true;
  const T* attn;
  const A* asum;
  int64_t K, P;
  __device__ __forceinline__ A operator()(int64_t b, int64_t k, int64_t p) const {
    return A(attn[(b * K + k) * P + p]) / asum[b * K + k];
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
template <class T>
struct GradSlots {  // A(k, d) = g[b, k, d]
  static constexpr bool kA_m_contiguous = false;
  const T* g;
  int64_t K, D;
  __device__ __forceinline__ T operator()(int64_t b, int64_t k, int64_t d) const {
    return g[(b * K + k) * D + d];
  }
};
template <class T>
struct Pixels {  // B(d, p) = x[b, d, p]
  static constexpr bool kB_n_contiguous = true;
  const T* x;
  int64_t D, P;
  __device__ __forceinline__ T operator()(int64_t b, int64_t d, int64_t p) const {
    return x[(b * D + d) * P + p];
  }
};
template <class T, class A>
struct DattnEpilogue {
  T* dattn;
  const A* asum;
  const A* c;
  int64_t K, P;
  __device__ __forceinline__ void operator()(int64_t b, int64_t k, int64_t p, A acc) const {
    dattn[(b * K + k) * P + p] = T((acc - c[b * K + k]) / asum[b * K + k]);
  }
};

void check_args(const SlotPoolShape& s, const char* what) {
  SC_KERNEL_REQUIRE(s.B >= 1 && s.K >= 1 && s.D >= 1 && s.P >= 1, what, "empty shape");
  SC_KERNEL_REQUIRE(s.B <= 65535, what, "B must be <= 65535 (grid z)");
}

unsigned blocks_for(int64_t n, int threads) { return unsigned((n + threads - 1) / threads); }

}  // namespace

size_t slot_pool_workspace_bytes(const SlotPoolShape& s) { return Workspace<double>::bytes(s); }

template <class T>
void slot_pool_forward_cuda(const SlotPoolShape& s, const T* x, const T* attn, T* slots,
                            void* workspace, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  const char* what = "slot_pool_forward_cuda";
  check_args(s, what);
  Workspace<A> ws(s, workspace);
  row_sums_kernel<T, A><<<blocks_for(s.B * s.K * 32, 256), 256, 0, stream>>>(
      s.B * s.K, s.P, s.D, attn, nullptr, nullptr, ws.asum, ws.c);
  SC_TRACE_WORK(double(s.B * s.K * s.P) * sizeof(T), s.B * s.K * s.P, FP32);
  SC_KERNEL_LAUNCHED(what);
  launch_tile_gemm<A>(s.K, s.D, s.P, s.B, 1, AttnRows<T>{attn, s.K, s.P}, PixelsT<T>{x, s.D, s.P},
                      SlotsEpilogue<T, A>{slots, ws.asum, s.K, s.D}, stream, s.tf32);
  SC_KERNEL_LAUNCH_CHECK(what);
}

template <class T>
void slot_pool_backward_cuda(const SlotPoolShape& s, const T* x, const T* attn, const T* slots,
                             const T* dL_dslots, T* dL_dx, T* dL_dattn, void* workspace,
                             cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  const char* what = "slot_pool_backward_cuda";
  check_args(s, what);
  if (!dL_dx && !dL_dattn) return;
  Workspace<A> ws(s, workspace);
  row_sums_kernel<T, A><<<blocks_for(s.B * s.K * 32, 256), 256, 0, stream>>>(
      s.B * s.K, s.P, s.D, attn, dL_dslots, slots, ws.asum, ws.c);
  SC_TRACE_WORK(double(s.B * s.K * (s.P + 2 * s.D)) * sizeof(T), s.B * s.K * (s.P + 2 * s.D), FP32);
  SC_KERNEL_LAUNCHED(what);
  if (dL_dx) {
    launch_tile_gemm<A>(s.D, s.P, s.K, s.B, 1, GradSlotsT<T>{dL_dslots, s.K, s.D},
                        AttnWeights<T, A>{attn, ws.asum, s.K, s.P}, StoreDx<T, A>{dL_dx, s.D, s.P},
                        stream, s.tf32);
    SC_KERNEL_LAUNCH_CHECK(what);
  }
  if (dL_dattn) {
    launch_tile_gemm<A>(s.K, s.P, s.D, s.B, 1, GradSlots<T>{dL_dslots, s.K, s.D},
                        Pixels<T>{x, s.D, s.P},
                        DattnEpilogue<T, A>{dL_dattn, ws.asum, ws.c, s.K, s.P}, stream, s.tf32);
    SC_KERNEL_LAUNCH_CHECK(what);
  }
}

#define SC_INSTANTIATE(T)                                                                      \
  template void slot_pool_forward_cuda<T>(const SlotPoolShape&, const T*, const T*, T*, void*, \
                                          cudaStream_t);                                       \
  template void slot_pool_backward_cuda<T>(const SlotPoolShape&, const T*, const T*, const T*, \
                                           const T*, T*, T*, void*, cudaStream_t);
SC_INSTANTIATE(float)
SC_INSTANTIATE(double)
#undef SC_INSTANTIATE

}  // namespace sc
