// add_relu.h: the fused residual add + ReLU of a ResNet block's join.
//
//   y = max(a + b, 0);   backward: da = db = dy * (y > 0)   (written, =)
//
// a, b, y (and dy, dab) are dense arrays of n elements in the same layout.
// Types: the CPU reference for T = float / double; CUDA for F32, F64, BF16, F16 (float
// accumulation), asynchronous on `stream`.
#pragma once
#include <cstdint>

#include "kernels/dtype.h"

typedef struct CUstream_st* cudaStream_t;

namespace sc {

template <class T>
void add_relu_ref(int64_t n, const T* a, const T* b, T* y);
template <class T>
void add_relu_backward_ref(int64_t n, const T* dy, const T* y, T* dab);

// CUDA launchers: declared in every build, defined only in builds with CUDA (reach them through
// engine/dispatch.h, which never calls them in a build without).
void add_relu_cuda(DType dtype, int64_t n, const void* a, const void* b, void* y,
                   cudaStream_t stream);
void add_relu_backward_cuda(DType dtype, int64_t n, const void* dy, const void* y, void* dab,
                            cudaStream_t stream);

}  // namespace sc
