// conv2d.h: 2-D convolution (cross-correlation, as PyTorch's nn.Conv2d), groups = 1, dilation 1.
//
// Maths: y[n, k, oh, ow] = bias[k] + sum_{c, r, s} w[k, c, r, s] * x[n, c, oh*sh - ph + r,
// ow*sw - pw + s], out-of-range input positions reading 0.
// Shapes: x (N, C, H, W), w (K, C, R, S), bias (K), y (N, K, OH, OW) with
// OH = (H + 2 ph - R) / sh + 1, OW = (W + 2 pw - S) / sw + 1.
// Layouts: activations (x, y, dx, dy) are dense, all in the same Layout: NCHW (row-major
// (N, C, H, W)) or NHWC (row-major (N, H, W, C), PyTorch's channels_last). The CPU reference takes
// w dense KCRS; the cuDNN path takes w dense KCRS with NCHW activations and dense KRSC
// (channels-last weights) with NHWC activations.
//
// Gradient convention: parameter gradients (dw, dbias) accumulate (+=); the activation gradient
// dx is written (=).
//
// CPU reference (conv2d_ref.cpp): float and double; im2col per image + one BLAS GEMM
// (cblas_sgemm / cblas_dgemm), a 1x1 stride-1 unpadded conv skips im2col. It allocates its own
// column buffer (host memory). Accumulation: the BLAS's, in T.
//
// CUDA (conv2d.cu): cuDNN (legacy convolution API) for the convolutions, own kernels for the
// bias. float, double, bf16 and fp16 activations; the compute (accumulation) type is float for
// float/bf16/fp16 and double for double. No hidden allocations: the caller passes the workspace.
#pragma once
#include <cstddef>
#include <cstdint>

typedef struct CUstream_st* cudaStream_t;

namespace sc {

enum class Layout : uint8_t { NCHW, NHWC };

struct Conv2dGeom {
  int64_t N = 0, C = 0, H = 0, W = 0;  // input
  int64_t K = 0, R = 0, S = 0;         // output channels, kernel height, kernel width
  int64_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0;
  int64_t OH() const { return (H + 2 * pad_h - R) / stride_h + 1; }
  int64_t OW() const { return (W + 2 * pad_w - S) / stride_w + 1; }
  // Requires: every size positive, the kernel fits the padded input.
  bool valid() const {
    return N > 0 && C > 0 && H > 0 && W > 0 && K > 0 && R > 0 && S > 0 && stride_h > 0 &&
           stride_w > 0 && pad_h >= 0 && pad_w >= 0 && H + 2 * pad_h >= R && W + 2 * pad_w >= S;
  }
};

// ---- CPU reference (T = float or double) ----
// y (written) = conv(x, w) + bias; bias may be null.
template <class T>
void conv2d_forward_ref(const Conv2dGeom& g, Layout layout, const T* x, const T* w, const T* bias,
                        T* y);
// dx (written) = conv_transpose(dy, w).
template <class T>
void conv2d_backward_data_ref(const Conv2dGeom& g, Layout layout, const T* dy, const T* w, T* dx);
// dw (+=) = sum_n dy_n (x) im2col(x_n); dbias (+=) = sum over n, oh, ow of dy (null: skipped).
// Either of dw / dbias may be null.
template <class T>
void conv2d_backward_weight_ref(const Conv2dGeom& g, Layout layout, const T* x, const T* dy, T* dw,
                                T* dbias);

// Per-channel sum of a dense activation tensor viewed as (outer, C, inner):
// out[c] (+=) = sum_{o, i} v[o, c, i]. Used for bias gradients.
template <class T>
void channel_sum_ref(int64_t outer, int64_t C, int64_t inner, const T* v, T* out);

#if defined(SLOTCON_WITH_DNNL)
// ---- CPU through oneDNN (conv2d_dnnl.cpp; built when CMake finds oneDNN), float only ----
// Same geometry and layouts as the reference (w dense KCRS with either activation layout).
// Threads: the pool (kernels/parallel.h) runs min(N, cpu_threads()) chunks side by side, each
// through a oneDNN primitive on one OpenMP thread (no OpenMP team): chunks of whole images for
// forward and backward-data, of whole 16-channel blocks of output channels for backward-weight
// (so every dw element is one sum over the whole batch). Primitives are built once per (chunk
// shape, layout, pass, bias) with the memory formats oneDNN prefers (blocked on AVX-512) and
// cached; the dense operands are reordered in and out around each call (buffers and oneDNN's
// scratchpads: a per-thread arena, reused). Accumulation: oneDNN's, in float, in an order that
// differs from the reference's. Thread-safe.
// Algorithm: direct, except that with allow_winograd the 3x3 stride-1 convolutions on maps of at
// least 8x8 with channel counts that are multiples of 16 (ResNet's stages 1-3) take oneDNN's
// Winograd F(4x4, 3x3) where this machine has it (AVX-512): about a third of the multiplies, and
// a rounding error ~10x the direct sum's, still far inside the per-element bound the tests hold
// both to (docs/cpu_profile.md). Each returns whether Winograd ran (false when oneDNN has no
// Winograd implementation here and the direct one ran instead).
bool conv2d_dnnl_winograd_eligible(const Conv2dGeom& g);
bool conv2d_forward_dnnl(const Conv2dGeom& g, Layout layout, const float* x, const float* w,
                         const float* bias, float* y, bool allow_winograd = false);
bool conv2d_backward_data_dnnl(const Conv2dGeom& g, Layout layout, const float* dy, const float* w,
                               float* dx, bool allow_winograd = false);
// dw is written (=), not accumulated as the reference's is; the bias gradient is left to
// channel_sum_ref.
bool conv2d_backward_weight_dnnl(const Conv2dGeom& g, Layout layout, const float* x,
                                 const float* dy, float* dw, bool allow_winograd = false);

// Forget the cached primitives.
void conv2d_dnnl_clear_plans();
#endif

}  // namespace sc

#if defined(SLOTCON_WITH_CUDA)
#include <memory>
#include <string>

#include "kernels/dtype.h"

typedef struct cudnnContext* cudnnHandle_t;

namespace sc {

// cuDNN convolution for one shape, layout and dtype: descriptors built once, algorithms chosen
// once (by benchmarking with cudnnFind*Ex, each on first use, inside the caller's workspace) and
// remembered. Not thread-safe; one plan per (shape, layout, dtype, device).
//
// `allow_tf32`: let float32 convolutions use TF32 tensor cores (off: exact float FMA maths, which
// the GPU tests compare against the CPU at 1e-5). 16-bit types always use tensor cores with float
// accumulation.
class CudnnConvPlan {
 public:
  CudnnConvPlan(const Conv2dGeom& g, Layout layout, DType dtype, bool allow_tf32);
  ~CudnnConvPlan();
  CudnnConvPlan(const CudnnConvPlan&) = delete;
  CudnnConvPlan& operator=(const CudnnConvPlan&) = delete;

  bool forward_ready() const;
  bool backward_data_ready() const;
  bool backward_weight_ready() const;
  // Choose the algorithm of each pass by benchmarking with the given buffers (their contents are
  // overwritten for outputs: y, dx, dw) inside a workspace of ws_bytes. Runs on handle's stream
  // and synchronises it.
  void select_forward(cudnnHandle_t h, const void* x, const void* w, void* y, void* ws,
                      size_t ws_bytes);
  void select_backward_data(cudnnHandle_t h, const void* dy, const void* w, void* dx, void* ws,
                            size_t ws_bytes);
  void select_backward_weight(cudnnHandle_t h, const void* x, const void* dy, void* dw, void* ws,
                              size_t ws_bytes);
  // The chosen algorithm of each pass, as cuDNN numbers it (requires the pass to be selected).
  int forward_algorithm() const;
  int backward_data_algorithm() const;
  int backward_weight_algorithm() const;
  // Workspace the chosen algorithm needs (requires the pass to be selected).
  size_t forward_workspace() const;
  size_t backward_data_workspace() const;
  size_t backward_weight_workspace() const;

  // y = conv(x, w) (written); dx = conv_transpose(dy, w) (written); dw (+= when accumulate,
  // else written). Asynchronous on the handle's stream.
  void forward(cudnnHandle_t h, const void* x, const void* w, void* y, void* ws, size_t ws_bytes);
  void backward_data(cudnnHandle_t h, const void* dy, const void* w, void* dx, void* ws,
                     size_t ws_bytes);
  void backward_weight(cudnnHandle_t h, const void* x, const void* dy, void* dw, bool accumulate,
                       void* ws, size_t ws_bytes);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Algorithm choices kept in a text file, one line per pass and shape: a pass whose shape has a
// line there takes that algorithm without a search, and every search's choice is appended (a
// line of its own, written at once). So a second process runs the algorithms the first chose:
// a profiler's, whose interception of every launch changes what a search times (2026-12-04 on
// the H200: under ncu the ResNet-50 step's 3x3 convolutions ran another algorithm). The path
// comes from SLOTCON_CUDNN_ALGOS at the first search unless set here first; "" turns it off. A
// malformed line is an error naming the file and line; a file that cannot be appended to is said
// once on stderr and dropped (the run goes on). Thread-safe.
void set_cudnn_algo_file(const std::string& path);

// Bias epilogue and bias gradient on a dense activation viewed as (outer, C, inner) (NCHW:
// (N, K, OH*OW); NHWC: (N*OH*OW, K, 1)). dtype: F32, F64, BF16, F16; bias / dbias have the
// activations' dtype; sums accumulate in float (double for F64).
// y[o, c, i] += bias[c]
void conv2d_bias_add_cuda(DType dtype, int64_t outer, int64_t C, int64_t inner, void* y,
                          const void* bias, cudaStream_t stream);
// dbias[c] += sum_{o, i} dy[o, c, i]. Requires a workspace of channel_sum_workspace_bytes(C)
// bytes (double partial sums).
size_t channel_sum_workspace_bytes(int64_t C);
void channel_sum_cuda(DType dtype, int64_t outer, int64_t C, int64_t inner, const void* dy,
                      void* dbias, void* ws, cudaStream_t stream);

}  // namespace sc
#endif
