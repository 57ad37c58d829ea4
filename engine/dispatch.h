// dispatch.h: the one way an op reaches its kernels. Used by every front door (engine/ops.cpp,
// engine/nn_ops.cpp, model/slotcon_loss_ops.cpp); includes no CUDA header, so CPU-only code and
// model/ may include it.
//
// - Device switch for kernel-backed ops (kernels/<op>.h):
//     dispatch(op, t, cpu, cuda)        CPU: cpu(T{}), T = float / double (the reference kernels);
//                                       CUDA: cuda(stream), the launcher takes t's DType itself.
//     dispatch_typed(op, t, cpu, cuda)  CPU: cpu(T{}); CUDA: cuda(T{}, stream), T = float / double
//                                       (launchers templated on T).
//   `cuda` must be a generic lambda ([&](auto stream) {...}): a build without CUDA never
//   instantiates it, so it may name kernels/*_cuda launchers that such a build does not define;
//   there the CUDA branch throws the one "no CUDA backend" error instead.
// - Device switch for backend ops (engine/backend.h): SC_BACKEND(dev, fn, args...) calls cpu::fn
//   or cuda::fn (the CUDA-less build's cuda:: stub throws the same error).
// - stream_of(t): the engine's stream of t's device, with that device made current.
// - Workspace: device scratch bytes from the engine's caching allocator, kept while it lives
//   (stream-ordered reuse: it may be released as soon as the kernels using it are enqueued).
#pragma once
#include <cstddef>
#include <memory>

#include "engine/tensor.h"

typedef struct CUstream_st* cudaStream_t;

namespace sc {

#if defined(SLOTCON_WITH_CUDA)
constexpr bool kCudaBuilt = true;
#else
constexpr bool kCudaBuilt = false;
#endif

// Throws sc::Error "<op>: this build has no CUDA backend ...".
[[noreturn]] void no_cuda(const char* op);

// The engine's stream of t's (CUDA) device, that device made current for the calling thread.
cudaStream_t stream_of(const Tensor& t);

// Scratch device memory for a kernel (null for 0 bytes).
class Workspace {
 public:
  Workspace(size_t bytes, const Tensor& like);
  void* data() const { return storage_ ? storage_->data : nullptr; }

 private:
  std::shared_ptr<Storage> storage_;
};

// f(T{}) with T = float / double for F32 / F64; any other dtype throws naming op.
template <class F>
void float_dispatch(const char* op, DType t, F&& f) {
  if (t == DType::F32)
    f(float{});
  else if (t == DType::F64)
    f(double{});
  else
    throw Error(str_cat(op, ": needs F32 or F64 here, got ", dtype_name(t)));
}

template <class Cpu, class Cuda>
void dispatch(const char* op, const Tensor& t, Cpu&& cpu, Cuda&& cuda) {
  if (t.device().is_cpu()) {
    float_dispatch(op, t.dtype(), cpu);
    return;
  }
  if constexpr (kCudaBuilt)
    cuda(stream_of(t));
  else
    no_cuda(op);
}

template <class Cpu, class Cuda>
void dispatch_typed(const char* op, const Tensor& t, Cpu&& cpu, Cuda&& cuda) {
  if (t.device().is_cpu()) {
    float_dispatch(op, t.dtype(), cpu);
    return;
  }
  if constexpr (kCudaBuilt) {
    cudaStream_t st = stream_of(t);
    float_dispatch(op, t.dtype(), [&](auto tv) { cuda(tv, st); });
  } else {
    no_cuda(op);
  }
}

#define SC_BACKEND(dev, fn, ...) \
  ((dev).is_cuda() ? ::sc::cuda::fn(__VA_ARGS__) : ::sc::cpu::fn(__VA_ARGS__))

// Typed data pointer of an optional tensor (null when undefined).
template <class T>
T* data_or_null(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}
inline void* data_or_null(const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

}  // namespace sc
