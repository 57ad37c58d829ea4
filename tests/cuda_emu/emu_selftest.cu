// emu_selftest.cu: small kernels, in CUDA syntax, that test the CUDA emulator itself
// (test_emulator.cpp). Rewritten by cuda_emu_rewrite like the kernels of kernels/; it would also
// compile with nvcc.
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>

namespace emu_selftest {

// out[blockIdx.x] = sum of in[block's slice], a shared-memory tree reduction; with `barrier`
// false the barrier inside the tree is left out (a race the emulator must expose).
template <bool kBarrier>
__global__ void block_sum_kernel(const float* in, float* out) {
  __shared__ float s[256];
  const unsigned t = threadIdx.x;
  s[t] = in[blockIdx.x * blockDim.x + t];
  __syncthreads();
  for (unsigned h = blockDim.x / 2; h > 0; h /= 2) {
    if (t < h) s[t] += s[t + h];
    if (kBarrier) __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = s[0];
}

void block_sum(const float* in, float* out, int blocks, bool barrier) {
  if (barrier)
    block_sum_kernel<true><<<blocks, 256>>>(in, out);
  else
    block_sum_kernel<false><<<blocks, 256>>>(in, out);
}

// Thread 0 returns before a barrier the others reach.
__global__ void divergent_kernel(float* out) {
  if (threadIdx.x == 0) return;
  __syncthreads();
  out[threadIdx.x] = 1.f;
}
void divergent(float* out) { divergent_kernel<<<1, 64>>>(out); }

// Half the block waits at a barrier the other half never reaches (it waits at a warp barrier).
__global__ void deadlock_kernel(float* out) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncwarp();
  }
  out[threadIdx.x] = 1.f;
}
void deadlock(float* out) { deadlock_kernel<<<1, 64>>>(out); }

// out[lane-group] = warp sum of in by xor shuffles; out2[i] = in[i + 1] within the warp (down).
__global__ void warp_kernel(const double* in, double* out, double* out2) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  double v = in[i];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) out[i / 32] = v;
  out2[i] = __shfl_down_sync(0xffffffffu, in[i], 1);
}
void warp(const double* in, double* out, double* out2, int blocks) {
  warp_kernel<<<blocks, 64>>>(in, out, out2);
}

// out[linear thread of the grid] = packed (block, thread) coordinates, 3-D grid and block.
__global__ void coords_kernel(int64_t* out) {
  const int64_t block = (int64_t(blockIdx.z) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const int64_t thread = (int64_t(threadIdx.z) * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  const int64_t threads = int64_t(blockDim.x) * blockDim.y * blockDim.z;
  out[block * threads + thread] = ((((int64_t(blockIdx.z) * 8 + blockIdx.y) * 8 + blockIdx.x) * 8 +
                                    threadIdx.z) * 8 + threadIdx.y) * 8 + threadIdx.x;
}
void coords(int64_t* out, dim3 grid, dim3 block) { coords_kernel<<<grid, block>>>(out); }

// Every thread of every block adds 1 (atomically) to *count.
__global__ void count_kernel(unsigned long long* count, float* fsum) {
  atomicAdd(count, 1ull);
  atomicAdd(fsum, 0.5f);
}
void count(unsigned long long* c, float* fsum, int blocks, int threads) {
  count_kernel<<<blocks, threads>>>(c, fsum);
}

// out[t] = dynamic shared memory read before any write (poisoned), then after a write.
__global__ void dyn_smem_kernel(float* before, float* after) {
  extern __shared__ __align__(16) unsigned char raw[];
  float* s = reinterpret_cast<float*>(raw);
  before[threadIdx.x] = s[threadIdx.x];
  __syncthreads();
  s[threadIdx.x] = float(threadIdx.x);
  __syncthreads();
  after[threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}
cudaError_t dyn_smem(float* before, float* after, int threads, size_t smem, int raise_to) {
  if (raise_to > 0 &&
      cudaFuncSetAttribute(dyn_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           raise_to) != cudaSuccess)
    return cudaErrorInvalidValue;
  dyn_smem_kernel<<<1, threads, smem>>>(before, after);
  return cudaGetLastError();
}

// Static shared memory, which only thread 0 writes (element 0) before all threads read their
// element; then every element is written, which the next block must not see. `flag` (a second
// declarator) is read before any write too.
__global__ void static_smem_kernel(float* out, int* flags) {
  __shared__ float s[32], t2[2];
  __shared__ int flag;
  if (threadIdx.x == 0) {
    s[0] = float(blockIdx.x + 1);
    flags[blockIdx.x] = flag;
  }
  __syncthreads();
  out[blockIdx.x * 32 + threadIdx.x] = s[threadIdx.x];
  __syncthreads();
  s[threadIdx.x] = 7.f;
  if (threadIdx.x == 0) flag = 5, t2[0] = t2[1] = 0.f;
}
void static_smem(float* out, int* flags, int blocks) {
  static_smem_kernel<<<blocks, 32>>>(out, flags);
}

// Thread 0 of block 0 writes p[i] (out of bounds when the test says so).
__global__ void write_at_kernel(float* p, int i) {
  if (blockIdx.x == 0 && threadIdx.x == 0) p[i] = 1.f;
}
void write_at(float* p, int i) { write_at_kernel<<<2, 32>>>(p, i); }

// One warp: d (16 x 16, row-major) = 1 + A (16 x 8, row-major, ld 8, from a + a_off) x B (8 x 16,
// col-major, ld 8) in TF32 through wmma, staged through shared memory; each lane then copies out
// 8 elements that other lanes stored, after a __syncwarp only when `sync` (else the emulator must
// show stale values: the staging buffer is poisoned first).
template <bool kSync>
__global__ void wmma_kernel(const float* a, const float* b, float* d, int a_off) {
  using namespace nvcuda;
  __shared__ __align__(32) float st[16 * 16];
  const int lane = threadIdx.x;
  for (int k = 0; k < 8; ++k) st[lane * 8 + k] = -1.0f;
  __syncwarp();
  wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> fc;
  wmma::fill_fragment(fc, 1.0f);
  wmma::load_matrix_sync(fa, a + a_off, 8);
  wmma::load_matrix_sync(fb, b, 8);
  for (int i = 0; i < fa.num_elements; ++i) fa.x[i] = wmma::__float_to_tf32(fa.x[i]);
  for (int i = 0; i < fb.num_elements; ++i) fb.x[i] = wmma::__float_to_tf32(fb.x[i]);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(st, fc, 16, wmma::mem_row_major);
  if (kSync) __syncwarp();
  for (int k = 0; k < 8; ++k) d[lane * 8 + k] = st[lane * 8 + k];
}
void wmma_tf32(const float* a, const float* b, float* d, int a_off, bool sync) {
  if (sync) wmma_kernel<true><<<1, 32>>>(a, b, d, a_off);
  else wmma_kernel<false><<<1, 32>>>(a, b, d, a_off);
}

// out[i] = base * factor[0] + i for i < n: a kernel reading device memory (factor) and taking host
// values by argument (base, n), on `stream` (the graph tests capture it).
__global__ void affine_kernel(const float* factor, float* out, float base, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = base * factor[0] + float(i);
}
void affine(const float* factor, float* out, float base, int n, cudaStream_t stream) {
  affine_kernel<<<(n + 63) / 64, 64, 0, stream>>>(factor, out, base, n);
}

}  // namespace emu_selftest
