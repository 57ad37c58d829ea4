// batch_norm.h: batch normalisation (1-D and 2-D) split into passes, with a fused residual add and
// activation, and an optional row mask for the 1-D case.
//
// View: a dense activation is seen as (outer, C, inner):
//   BN2d NCHW (N, C, H, W):  outer = N,       inner = H*W
//   BN2d NHWC (channels-last): outer = N*H*W, inner = 1
//   BN1d (N, C):             outer = N,       inner = 1
// A row mask (U8, one byte per outer index) is allowed only when inner == 1 (BN1d).
//
// Forward, per channel c, over the n = count elements of the *selected* rows (all rows when there
// is no mask):
//   mean = sum x / n,  var = sum x^2 / n - mean^2 (biased),  invstd = 1 / sqrt(var + eps)
//   z = (x - mean) * invstd * gamma + beta (+ residual),  y = act(z)   for EVERY row
// Training mode uses these batch statistics and updates the running ones like PyTorch:
//   running_mean = (1 - m) running_mean + m mean,
//   running_var  = (1 - m) running_var  + m var * n / (n - 1)   (biased var when n <= 1);
// nothing is updated when n == 0 (then mean = 0, var = 0). Eval mode uses the running statistics.
//
// Mask semantics: unselected rows do not enter the statistics; their outputs are still computed
// with the selected rows' statistics (finite values), but they are treated as "don't care": their
// dL/dy is ignored (it does not reach dgamma, dbeta or the selected rows) and their dL/dx is 0.
// Selected rows get exactly the gradients of BN applied to the selected rows alone, i.e. what
// PyTorch computes for bn(x[mask]).
//
// Passes (the buffers between them are double, so a distributed caller can all-reduce them with a
// plain sum between two passes; see docs/nn_ops.md):
//   1. stats:      stats[0:C] = sum x, stats[C:2C] = sum x^2, stats[2C] = n         (written)
//   2. finalize:   save[0:C] = mean, save[C:2C] = invstd (from stats in training mode, from the
//                  running statistics in eval mode); running stats updated in training mode.
//   3. apply:      y = act(x * scale + shift (+ residual)), scale = gamma invstd,
//                  shift = beta - mean scale                                           (written)
//   backward:
//   4. grad sums:  gsum[0:C] = sum dz, gsum[C:2C] = sum dz * xhat over selected rows, with
//                  dz = dy * act'(z) and xhat = (x - mean) invstd                     (written)
//   5. grad apply: training: dx = gamma invstd (dz - gsum[0:C]/n - xhat gsum[C:2C]/n)
//                  eval:     dx = gamma invstd dz;      unselected rows: dx = 0       (written)
//                  dresidual = dz, 0 on unselected rows (written; only with a residual)
//   6. param grads: dgamma += gsum[C:2C], dbeta += gsum[0:C]                           (+=)
// Gradient convention: parameter gradients accumulate (+=), activation gradients are written (=).
//
// Types: the CPU reference is templated on T = float / double with parameters (gamma, beta,
// running stats) in the same T and every sum in double. CUDA: activations F32 / F64 / BF16 / F16,
// parameters F32 (F64 for F64 activations), sums in float per thread then double.
#pragma once
#include <cstdint>

#include "kernels/dtype.h"  // sc::Act

typedef struct CUstream_st* cudaStream_t;

namespace sc {

struct BnGeom {
  int64_t outer = 0, C = 0, inner = 1;
  int64_t numel() const { return outer * C * inner; }
};

// Host-side helpers shared by the CPU reference and the tests.
double act_forward(Act a, double z);
double act_derivative(Act a, double z);  // relu'(0) = 0

// ---- CPU reference ----
// mask may be null (every row selected). stats: 2C + 1 doubles.
template <class T>
void batch_norm_stats_ref(const BnGeom& g, const T* x, const uint8_t* mask, double* stats);
// stats may be null in eval mode. running_mean / running_var may be null (not tracked: training
// then only uses batch statistics). save: 2C doubles.
template <class T>
void batch_norm_finalize_ref(int64_t C, const double* stats, T* running_mean, T* running_var,
                             bool training, double momentum, double eps, double* save);
// gamma / beta may be null (1 / 0); residual may be null.
template <class T>
void batch_norm_apply_ref(const BnGeom& g, const T* x, const double* save, const T* gamma,
                          const T* beta, const T* residual, Act act, T* y);
// gsum: 2C doubles.
template <class T>
void batch_norm_grad_sums_ref(const BnGeom& g, const T* dy, const T* x, const double* save,
                              const T* gamma, const T* beta, const T* residual, Act act,
                              const uint8_t* mask, double* gsum);
// count = stats[2C] of the forward (ignored in eval mode). dresidual may be null.
template <class T>
void batch_norm_grad_apply_ref(const BnGeom& g, const T* dy, const T* x, const double* save,
                               const T* gamma, const T* beta, const T* residual, Act act,
                               const uint8_t* mask, const double* gsum, double count, bool training,
                               T* dx, T* dresidual);
// dgamma += gsum[C:2C], dbeta += gsum[0:C]; either may be null.
template <class T>
void batch_norm_param_grads_ref(int64_t C, const double* gsum, T* dgamma, T* dbeta);

// ---- CPU fast path (float32; batch_norm_cpu.cpp) ----
// The stats, apply and the two gradient passes with the reference's signatures and double
// arithmetic, vectorised (per-ISA clones): the element-wise results equal the reference's up to a
// fused multiply-add, the sums differ by double round-off (another order inside a row). The same
// results for any thread count. A row mask or GELU falls back to the reference; finalize and
// param_grads are the reference's. Checked against the reference in tests/kernels.
void batch_norm_stats_cpu(const BnGeom& g, const float* x, const uint8_t* mask, double* stats);
void batch_norm_apply_cpu(const BnGeom& g, const float* x, const double* save, const float* gamma,
                          const float* beta, const float* residual, Act act, float* y);
void batch_norm_grad_sums_cpu(const BnGeom& g, const float* dy, const float* x, const double* save,
                              const float* gamma, const float* beta, const float* residual, Act act,
                              const uint8_t* mask, double* gsum);
void batch_norm_grad_apply_cpu(const BnGeom& g, const float* dy, const float* x, const double* save,
                               const float* gamma, const float* beta, const float* residual,
                               Act act, const uint8_t* mask, const double* gsum, double count,
                               bool training, float* dx, float* dresidual);

}  // namespace sc

// CUDA launchers: declared in every build, defined only in builds with CUDA (reach them through
// engine/dispatch.h, which never calls them in a build without).
namespace sc {

// CUDA passes (asynchronous on `stream`, no allocations; the double buffers are device memory).
// x_dtype: F32, F64, BF16, F16; p_dtype (gamma, beta, running stats): F64 for F64 activations,
// F32 otherwise. Pointers that may be null are the same as for the CPU reference.
void batch_norm_stats_cuda(DType x_dtype, const BnGeom& g, const void* x, const uint8_t* mask,
                           double* stats, cudaStream_t stream);
void batch_norm_finalize_cuda(DType p_dtype, int64_t C, const double* stats, void* running_mean,
                              void* running_var, bool training, double momentum, double eps,
                              double* save, cudaStream_t stream);
void batch_norm_apply_cuda(DType x_dtype, DType p_dtype, const BnGeom& g, const void* x,
                           const double* save, const void* gamma, const void* beta,
                           const void* residual, Act act, void* y, cudaStream_t stream);
void batch_norm_grad_sums_cuda(DType x_dtype, DType p_dtype, const BnGeom& g, const void* dy,
                               const void* x, const double* save, const void* gamma,
                               const void* beta, const void* residual, Act act, const uint8_t* mask,
                               double* gsum, cudaStream_t stream);
// count is read from count_dev (device pointer, stats + 2C) so no host synchronisation is needed.
void batch_norm_grad_apply_cuda(DType x_dtype, DType p_dtype, const BnGeom& g, const void* dy,
                                const void* x, const double* save, const void* gamma,
                                const void* beta, const void* residual, Act act,
                                const uint8_t* mask, const double* gsum, const double* count_dev,
                                bool training, void* dx, void* dresidual, cudaStream_t stream);
void batch_norm_param_grads_cuda(DType p_dtype, int64_t C, const double* gsum, void* dgamma,
                                 void* dbeta, cudaStream_t stream);

}  // namespace sc
