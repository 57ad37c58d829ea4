// add_relu.cu: CUDA fused residual add + ReLU (see add_relu.h): grid-stride loops, float
// accumulation for 16-bit types.
#include <cuda_runtime.h>

#include "kernels/add_relu.h"
#include "kernels/check.h"
#include "kernels/common.cuh"

namespace sc {
namespace {

using namespace kernels;  // AccOf, load_acc, store, grid_for, dispatch_float

template <class T>
__global__ void add_relu_kernel(int64_t n, const T* a, const T* b, T* y) {
  using A = typename AccOf<T>::type;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const A z = load_acc(a + i) + load_acc(b + i);
    store(y + i, z > A(0) ? z : A(0));
  }
}

template <class T>
__global__ void add_relu_backward_kernel(int64_t n, const T* dy, const T* y, T* dab) {
  using A = typename AccOf<T>::type;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    store(dab + i, load_acc(y + i) > A(0) ? load_acc(dy + i) : A(0));
}

}  // namespace

void add_relu_cuda(DType dtype, int64_t n, const void* a, const void* b, void* y,
                   cudaStream_t stream) {
  const int grid = grid_for(n, 256);
  dispatch_float(dtype, "add_relu_cuda", [&](auto tv) {
    using T = decltype(tv);
    add_relu_kernel<<<grid, 256, 0, stream>>>(n, static_cast<const T*>(a), static_cast<const T*>(b),
                                              static_cast<T*>(y));
    SC_TRACE_WORK(3.0 * double(n) * sizeof(T), 2 * n, FP32);
    SC_KERNEL_LAUNCHED("add_relu_kernel");
  });
  SC_KERNEL_LAUNCH_CHECK("add_relu_cuda");
}

void add_relu_backward_cuda(DType dtype, int64_t n, const void* dy, const void* y, void* dab,
                            cudaStream_t stream) {
  const int grid = grid_for(n, 256);
  dispatch_float(dtype, "add_relu_backward_cuda", [&](auto tv) {
    using T = decltype(tv);
    add_relu_backward_kernel<<<grid, 256, 0, stream>>>(
        n, static_cast<const T*>(dy), static_cast<const T*>(y), static_cast<T*>(dab));
    SC_TRACE_WORK(3.0 * double(n) * sizeof(T), n, FP32);
    SC_KERNEL_LAUNCHED("add_relu_backward_kernel");
  });
  SC_KERNEL_LAUNCH_CHECK("add_relu_backward_cuda");
}

}  // namespace sc
