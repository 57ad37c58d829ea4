// normalize_images.h: the backbone's input made from uint8 RGB images (B, H, W, 3), as the data
// loader leaves them (4x fewer bytes to copy to a GPU than float32):
//
//   out[b, c, y, x] = (v / 255 - mean[c]) / std[c],  v = in[b, y, x, c]
//
// computed in float exactly as the loader's normalize_to_chw (data/transforms.h), so the CPU and
// the GPU and the old float path agree bit for bit in F32; stored in out's dtype (rounded once)
// at out's element strides ostride[4] over (b, c, y, x): NCHW or NHWC alike.
// Types: the CPU reference for T = float / double; CUDA for F32, F64, BF16, F16, asynchronous on
// `stream`.
#pragma once
#include <cstdint>

#include "kernels/dtype.h"

typedef struct CUstream_st* cudaStream_t;

namespace sc {

struct ImageNorm {
  float mean[3];
  float std_[3];
};

template <class T>
void normalize_images_ref(int64_t B, int64_t H, int64_t W, const uint8_t* in,
                          const ImageNorm& norm, T* out, const int64_t ostride[4]);
void normalize_images_cuda(DType dtype, int64_t B, int64_t H, int64_t W, const uint8_t* in,
                           const ImageNorm& norm, void* out, const int64_t ostride[4],
                           cudaStream_t stream);

}  // namespace sc
