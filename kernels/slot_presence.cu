// slot_presence.cu: CUDA slot presence (see slot_presence.h).
#include <cuda_runtime.h>

#include "kernels/check.h"
#include "kernels/slot_presence.h"

namespace sc {
namespace {

// Block (32, 8): 32 pixels of image blockIdx.y, 8 interleaved slices of K; first arg-max.
template <class T>
__global__ void presence_kernel(int64_t K, int64_t P, const T* dots, const uint8_t* and_mask,
                                uint8_t* present) {
  __shared__ T s_v[8][33];
  __shared__ int64_t s_k[8][33];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t b = blockIdx.y, p = int64_t(blockIdx.x) * 32 + tx;
  const bool ok = p < P;
  T best = T(0);
  int64_t bk = -1;
  if (ok)
    for (int64_t k = ty; k < K; k += 8) {
      const T v = dots[(b * K + k) * P + p];
      if (bk < 0 || v > best) {
        best = v;
        bk = k;
      }
    }
  s_v[ty][tx] = best;
  s_k[ty][tx] = bk;
  __syncthreads();
  if (ty != 0 || !ok) return;
  for (int j = 1; j < 8; ++j) {
    const int64_t k2 = s_k[j][tx];
    if (k2 < 0) continue;
    const T v2 = s_v[j][tx];
    if (v2 > best || (v2 == best && k2 < bk)) {
      best = v2;
      bk = k2;
    }
  }
  if (!and_mask || and_mask[b * K + bk]) present[b * K + bk] = 1;
}

}  // namespace

template <class T>
void slot_presence_cuda(int64_t B, int64_t K, int64_t P, const T* dots, const uint8_t* and_mask,
                        uint8_t* present, cudaStream_t stream) {
  const char* what = "slot_presence_cuda";
  SC_KERNEL_REQUIRE(B >= 1 && K >= 1 && P >= 1, what, "empty shape");
  SC_KERNEL_REQUIRE(B <= 65535, what, "B must be <= 65535 (grid y)");
  if (cudaMemsetAsync(present, 0, size_t(B * K), stream) != cudaSuccess)
    kernels::fail(what, "cudaMemsetAsync failed");
  SC_TRACE_WORK(B * K, 0, Memory);
  kernels::note_memory_op("cudaMemsetAsync (slot_presence)");
  presence_kernel<T><<<dim3(unsigned((P + 31) / 32), unsigned(B)), dim3(32, 8), 0, stream>>>(
      K, P, dots, and_mask, present);
  SC_TRACE_WORK(double(B * K * P) * sizeof(T) + double(B * P) + double(B * K), 2 * B * K * P, FP32);
  SC_KERNEL_LAUNCHED(what);
}

template void slot_presence_cuda<float>(int64_t, int64_t, int64_t, const float*, const uint8_t*,
                                        uint8_t*, cudaStream_t);
template void slot_presence_cuda<double>(int64_t, int64_t, int64_t, const double*, const uint8_t*,
                                         uint8_t*, cudaStream_t);

}  // namespace sc
