// self_distill.cu: CUDA self-distillation loss and center mean (see self_distill.h and
// docs/kernels/self_distill.md).
//
// Forward: block (32, 8) per (image b, slice of 32 pixels): threadIdx.x is the pixel (coalesced
// reads along p), threadIdx.y one of 8 interleaved slices of K. In one read of student, teacher
// and (optionally) the raw teacher dots, each thread keeps online statistics of its slice:
//   (m_a, s_a)       max and sum of exp of a/tau_s
//   (m_t, s_t, w_a)  max and sum of exp of (t - c)/tau_t, and sum exp(.) * a/tau_s
// and each warp reduces the raw teacher dots over its 32 pixels per k (center partials). The 8
// slices merge in shared memory; the block writes pixel_stats and one partial loss. A one-block
// finalize kernel sums the partials in a fixed order (deterministic), so no atomics and no host
// synchronisation. Backward is elementwise.
#include <cuda_runtime.h>

#include "kernels/check.h"
#include "kernels/common.cuh"
#include "kernels/self_distill.h"

namespace sc {
namespace {

using kernels::AccOf;
using kernels::align256;
using kernels::warp_sum;

int64_t num_blocks(const SelfDistillShape& s) { return s.B * ((s.P + 31) / 32); }

template <class A>
__device__ __forceinline__ void online_add(A z, A& m, A& s) {
  if (z > m) {
    s = s * exp(m - z) + A(1);
    m = z;
  } else {
    s += exp(z - m);
  }
}

template <class T, class A>
__global__ void self_distill_forward_kernel(int64_t K, int64_t P, const T* a, const T* t,
                                            const T* center, A inv_ts, A inv_tt,
                                            const T* teacher_raw, T* pixel_stats, A* part_loss,
                                            A* part_center) {
  __shared__ A s_ma[8][33], s_sa[8][33], s_mt[8][33], s_st[8][33], s_wa[8][33];
  __shared__ A s_loss[32];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t b = blockIdx.y, p = int64_t(blockIdx.x) * 32 + tx;
  const int64_t blk = b * gridDim.x + blockIdx.x;
  const bool ok = p < P;
  A ma = A(-INFINITY), sa = 0, mt = A(-INFINITY), st = 0, wa = 0;
  for (int64_t k = ty; k < K; k += 8) {
    const int64_t i = (b * K + k) * P + p;
    if (ok) {
      const A za = A(a[i]) * inv_ts;
      const A zt = (A(t[i]) - A(center[k])) * inv_tt;
      online_add(za, ma, sa);
      if (zt > mt) {
        const A r = exp(mt - zt);
        st = st * r + A(1);
        wa = wa * r + za;
        mt = zt;
      } else {
        const A e = exp(zt - mt);
        st += e;
        wa += e * za;
      }
    }
    if (teacher_raw) {
      const A v = warp_sum(ok ? A(teacher_raw[i]) : A(0));
      if (tx == 0) part_center[blk * K + k] = v;
    }
  }
  s_ma[ty][tx] = ma;
  s_sa[ty][tx] = sa;
  s_mt[ty][tx] = mt;
  s_st[ty][tx] = st;
  s_wa[ty][tx] = wa;
  __syncthreads();
  if (ty == 0) {
    A l = 0;
    if (ok) {
      A Ma = A(-INFINITY), Mt = A(-INFINITY);
      for (int j = 0; j < 8; ++j) {
        Ma = max(Ma, s_ma[j][tx]);
        Mt = max(Mt, s_mt[j][tx]);
      }
      A Sa = 0, St = 0, Wa = 0;
      for (int j = 0; j < 8; ++j) {
        if (s_ma[j][tx] != A(-INFINITY)) Sa += s_sa[j][tx] * exp(s_ma[j][tx] - Ma);
        if (s_mt[j][tx] != A(-INFINITY)) {
          const A r = exp(s_mt[j][tx] - Mt);
          St += s_st[j][tx] * r;
          Wa += s_wa[j][tx] * r;
        }
      }
      const A lse_a = Ma + log(Sa), lse_t = Mt + log(St);
      l = lse_a - Wa / St;
      pixel_stats[(b * P + p) * 2] = T(lse_a);
      pixel_stats[(b * P + p) * 2 + 1] = T(lse_t);
    }
    s_loss[tx] = l;
  }
  __syncthreads();
  if (ty == 0 && tx == 0) {
    A sum = 0;
    for (int j = 0; j < 32; ++j) sum += s_loss[j];
    part_loss[blk] = sum;
  }
}

// One block: loss = sum(part_loss) / n; center_mean[k] = sum over blocks of part_center / n.
template <class T, class A>
__global__ void self_distill_finalize_kernel(int64_t nblk, int64_t K, double inv_n,
                                             const A* part_loss, const A* part_center, T* loss,
                                             T* center_mean) {
  __shared__ double red[256];
  double s = 0;
  for (int64_t j = threadIdx.x; j < nblk; j += blockDim.x) s += double(part_loss[j]);
  red[threadIdx.x] = s;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {
    if (int(threadIdx.x) < w) red[threadIdx.x] += red[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) loss[0] = T(red[0] * inv_n);
  if (center_mean)
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
      double c = 0;
      for (int64_t j = 0; j < nblk; ++j) c += double(part_center[j * K + k]);
      center_mean[k] = T(c * inv_n);
    }
}

template <class T, class A>
__global__ void self_distill_backward_kernel(int64_t B, int64_t K, int64_t P, const T* a,
                                             const T* t, const T* center, A inv_ts, A inv_tt,
                                             const T* pixel_stats, const T* dL_dloss, double inv_n,
                                             T* da) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B * K * P) return;
  const int64_t p = i % P, k = (i / P) % K, b = i / (K * P);
  const T* st = pixel_stats + (b * P + p) * 2;
  const A sa = exp(A(a[i]) * inv_ts - A(st[0]));
  const A w = exp((A(t[i]) - A(center[k])) * inv_tt - A(st[1]));
  const A scale = A(dL_dloss[0]) * inv_ts * A(inv_n);
  da[i] = T(scale * (sa - w));
}

void check_args(const SelfDistillShape& s, double tau_s, double tau_t, const char* what) {
  SC_KERNEL_REQUIRE(s.B >= 1 && s.K >= 1 && s.P >= 1, what, "empty shape");
  SC_KERNEL_REQUIRE(tau_s > 0 && tau_t > 0, what, "temperatures must be positive");
  SC_KERNEL_REQUIRE(s.B <= 65535, what, "B must be <= 65535 (grid y)");
}

}  // namespace

size_t self_distill_workspace_bytes(const SelfDistillShape& s) {
  const int64_t n = num_blocks(s);
  return align256(sizeof(double) * size_t(n)) + align256(sizeof(double) * size_t(n * s.K));
}

template <class T>
void self_distill_forward_cuda(const SelfDistillShape& s, const T* student, const T* teacher,
                               const T* center, double tau_s, double tau_t, const T* teacher_raw,
                               T* loss, T* pixel_stats, T* center_mean, void* workspace,
                               cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  const char* what = "self_distill_forward_cuda";
  check_args(s, tau_s, tau_t, what);
  SC_KERNEL_REQUIRE(pixel_stats != nullptr, what, "pixel_stats must be given");
  const int64_t nblk = num_blocks(s);
  A* part_loss = static_cast<A*>(workspace);
  A* part_center =
      reinterpret_cast<A*>(static_cast<char*>(workspace) + align256(sizeof(double) * size_t(nblk)));
  const dim3 grid(unsigned((s.P + 31) / 32), unsigned(s.B));
  self_distill_forward_kernel<T, A><<<grid, dim3(32, 8), 0, stream>>>(
      s.K, s.P, student, teacher, center, A(1.0 / tau_s), A(1.0 / tau_t), teacher_raw, pixel_stats,
      part_loss, part_center);
  SC_TRACE_WORK(double(s.B * s.K * s.P) * sizeof(T) * (teacher_raw ? 3.0 : 2.0) +
                    2.0 * double(s.B * s.P) * sizeof(T),
                12 * s.B * s.K * s.P, FP32);
  SC_KERNEL_LAUNCHED(what);
  self_distill_finalize_kernel<T, A><<<1, 256, 0, stream>>>(nblk, s.K, 1.0 / double(s.B * s.P),
                                                            part_loss, part_center, loss,
                                                            teacher_raw ? center_mean : nullptr);
  SC_TRACE_WORK(double(nblk) * double(1 + s.K) * sizeof(A), nblk * (1 + s.K), FP32);
  SC_KERNEL_LAUNCHED(what);
}

template <class T>
void self_distill_backward_cuda(const SelfDistillShape& s, const T* student, const T* teacher,
                                const T* center, double tau_s, double tau_t, const T* pixel_stats,
                                const T* dL_dloss, T* dL_dstudent, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  const char* what = "self_distill_backward_cuda";
  check_args(s, tau_s, tau_t, what);
  const int64_t n = s.B * s.K * s.P;
  self_distill_backward_kernel<T, A><<<unsigned((n + 255) / 256), 256, 0, stream>>>(
      s.B, s.K, s.P, student, teacher, center, A(1.0 / tau_s), A(1.0 / tau_t), pixel_stats,
      dL_dloss, 1.0 / double(s.B * s.P), dL_dstudent);
  SC_TRACE_WORK(3.0 * double(n) * sizeof(T), 8 * n, FP32);
  SC_KERNEL_LAUNCHED(what);
}

#define SC_INSTANTIATE(T)                                                                       \
  template void self_distill_forward_cuda<T>(const SelfDistillShape&, const T*, const T*,       \
                                             const T*, double, double, const T*, T*, T*, T*,    \
                                             void*, cudaStream_t);                              \
  template void self_distill_backward_cuda<T>(const SelfDistillShape&, const T*, const T*,      \
                                              const T*, double, double, const T*, const T*, T*, \
                                              cudaStream_t);
SC_INSTANTIATE(float)
SC_INSTANTIATE(double)
#undef SC_INSTANTIATE

}  // namespace sc
