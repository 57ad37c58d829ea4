// normalize_images.cu: CUDA uint8 image normalisation (see normalize_images.h): one thread per
// pixel, its three channels. The division is IEEE (nvcc's default -prec-div=true) and there is no
// product to fuse, so the float values equal the CPU's.
#include <cuda_runtime.h>

#include "kernels/check.h"
#include "kernels/common.cuh"
#include "kernels/normalize_images.h"

namespace sc {
namespace {

using namespace kernels;  // store, grid_for, dispatch_float

struct Strides {
  int64_t s[4];
};

template <class T>
__global__ void normalize_images_kernel(int64_t B, int64_t H, int64_t W, const uint8_t* in,
                                        ImageNorm norm, T* out, Strides os) {
  const int64_t n = B * H * W;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t x = i % W, y = (i / W) % H, b = i / (W * H);
    T* o = out + b * os.s[0] + y * os.s[2] + x * os.s[3];
    for (int c = 0; c < 3; ++c) {
      const float v = (float(in[i * 3 + c]) / 255.f - norm.mean[c]) / norm.std_[c];
      store(o + c * os.s[1], v);
    }
  }
}

}  // namespace

void normalize_images_cuda(DType dtype, int64_t B, int64_t H, int64_t W, const uint8_t* in,
                           const ImageNorm& norm, void* out, const int64_t ostride[4],
                           cudaStream_t stream) {
  const int64_t n = B * H * W;
  if (n == 0) return;
  const Strides os{{ostride[0], ostride[1], ostride[2], ostride[3]}};
  const int grid = grid_for(n, 256);
  dispatch_float(dtype, "normalize_images_cuda", [&](auto tv) {
    using T = decltype(tv);
    normalize_images_kernel<T><<<grid, 256, 0, stream>>>(B, H, W, in, norm, static_cast<T*>(out), os);
    SC_TRACE_WORK(double(n) * 3 * (1 + sizeof(T)), 6 * n, FP32);
    SC_KERNEL_LAUNCHED("normalize_images_kernel");
  });
  SC_KERNEL_LAUNCH_CHECK("normalize_images_cuda");
}

}  // namespace sc
