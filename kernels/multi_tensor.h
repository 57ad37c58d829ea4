// multi_tensor.h: updates of many tensors in a few launches (the optimizers', the teacher EMA's
// and loss scaling's "foreach" steps), and the device-side flag that skips an optimizer step.
//
// A TensorList names up to any number of tensors of one element type, each by up to three dense
// arrays of n[t] elements in the same layout (a, b, c: the roles are the op's) and a per-tensor
// flag. The CUDA launchers cut the list into groups of kGroupTensors tensors, one launch (LARS:
// two) per group, each block one chunk of kChunkElems elements of one tensor.
//
//   multi_lars:    a = p, b = g, c = v; flag[t] = the tensor is a matrix (dim > 1): then
//                  g' = (g + wd p) * r, r = trust ||p|| / ||g + wd p|| (1 when either norm is
//                  0, norms summed in double), else g' = g; v = momentum v + g'; p = p - lr v.
//   multi_sgd:     a = p, b = g, c = v: g' = g + wd p; v = momentum v + g'; p = p - lr v.
//   multi_ema:     a = k, b = q: k = m k + (1 - m) q.
//   multi_unscale: a = g: g = g * (1 / scale[0]); *found = 1 when any result is not finite
//                  (found is only ever set, never cleared: it ORs into the step's flag).
//   nonfinite_flag: *found = 1 when any of x[0..n) is not finite, else 0 (= not OR: it starts
//                  the step's flag).
//   scaler_update: state = {scale, growth tracker} (doubles), GradScaler's rule: found ->
//                  scale *= backoff, tracker = 0; else ++tracker, and when it reaches interval
//                  scale *= growth, tracker = 0.
// skip (multi_lars, multi_sgd): null, or a flag in the tensors' memory; when it is non-zero the
// update changes nothing (an overflowed or non-finite step, decided on the device).
// lr_dev / m_dev (CUDA only): null, or the learning rate / EMA momentum as one double in device
// memory, read by the kernels instead of the lr / m argument: what a CUDA graph replays must not
// hold per-step values in its kernels' arguments (they are fixed at capture).
// Types: the CPU reference for T = float / double (the flags and scales in host memory); CUDA for
// F32 and F64, asynchronous on `stream`, the flags and scales in device memory.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/dtype.h"

typedef struct CUstream_st* cudaStream_t;

namespace sc {

struct TensorList {
  std::vector<void*> a, b, c;  // per tensor; b and c empty when the op has no such role
  std::vector<int64_t> n;
  std::vector<uint8_t> flag;  // per tensor (empty: all 0)
  size_t size() const { return n.size(); }
};

constexpr int kGroupTensors = 32;
constexpr int64_t kChunkElems = 16384;

template <class T>
void multi_lars_ref(const TensorList& l, double lr, double momentum, double wd, double trust,
                    const uint8_t* skip);
template <class T>
void multi_sgd_ref(const TensorList& l, double lr, double momentum, double wd,
                   const uint8_t* skip);
template <class T>
void multi_ema_ref(const TensorList& l, double m);
template <class T>
void multi_unscale_ref(const TensorList& l, const double* scale, uint8_t* found);
void nonfinite_flag_ref(int64_t n, const double* x, uint8_t* found);
void scaler_update_ref(double* state, const uint8_t* found, double growth, double backoff,
                       int64_t interval);

// CUDA launchers: declared in every build, defined only in builds with CUDA. multi_lars_cuda
// needs multi_lars_workspace_bytes(l) bytes of device scratch (the per-chunk partial norms).
size_t multi_lars_workspace_bytes(const TensorList& l);
void multi_lars_cuda(DType dtype, const TensorList& l, double lr, double momentum, double wd,
                     double trust, const uint8_t* skip, void* workspace, cudaStream_t stream,
                     const double* lr_dev = nullptr);
void multi_sgd_cuda(DType dtype, const TensorList& l, double lr, double momentum, double wd,
                    const uint8_t* skip, cudaStream_t stream, const double* lr_dev = nullptr);
void multi_ema_cuda(DType dtype, const TensorList& l, double m, cudaStream_t stream,
                    const double* m_dev = nullptr);
void multi_unscale_cuda(DType dtype, const TensorList& l, const double* scale, uint8_t* found,
                        cudaStream_t stream);
void nonfinite_flag_cuda(int64_t n, const double* x, uint8_t* found, cudaStream_t stream);
void scaler_update_cuda(double* state, const uint8_t* found, double growth, double backoff,
                        int64_t interval, cudaStream_t stream);

}  // namespace sc
