// slot_pool.h: SlotCon's attentive slot pooling (docs/method.md §2), the second half of semantic
// grouping.
//
// Shapes: pixel features x (B, D, P) (not normalised), attention attn (B, K, P) (positive: the
// output of proto_assign), slots (B, K, D). Row-major, dense.
//
// Forward:  a[b,k] = sum_p attn[b,k,p]
//           slots[b,k,:] = sum_p x[b,:,p] attn[b,k,p] / a[b,k]
// Backward, from dL_dslots (B, K, D):
//   dL_dx[b,:,p]     = sum_k dL_dslots[b,k,:] attn[b,k,p] / a[b,k]
//   dL_dattn[b,k,p]  = (<dL_dslots[b,k,:], x[b,:,p]> - <dL_dslots[b,k,:], slots[b,k,:]>) / a[b,k]
// (the second term is the derivative of the normaliser a).
// Gradient convention: both are activation gradients, written (=); either pointer may be null.
//
// Requires: B, K, D, P >= 1; a[b,k] > 0 (true for proto_assign's attn, which is >= 1e-6).
// Types: CPU reference for T = float / double, sums in double. CUDA: T = float / double.
#pragma once
#include <cstddef>
#include <cstdint>

typedef struct CUstream_st* cudaStream_t;

namespace sc {

struct SlotPoolShape {
  int64_t B = 0, K = 0, D = 0, P = 0;
  // CUDA, T = float only (ignored for double and by the reference): the GEMMs on the tensor
  // cores in TF32 (operands rounded to 10 mantissa bits, float accumulation), as PyTorch's
  // allow_tf32; norms, softmax and epilogues stay FP32.
  bool tf32 = false;
};

// ---- CPU reference ----
template <class T>
void slot_pool_forward_ref(const SlotPoolShape& s, const T* x, const T* attn, T* slots);
// slots: the forward output.
template <class T>
void slot_pool_backward_ref(const SlotPoolShape& s, const T* x, const T* attn, const T* slots,
                            const T* dL_dslots, T* dL_dx, T* dL_dattn);

}  // namespace sc

// CUDA launchers: declared in every build, defined only in builds with CUDA (reach them through
// engine/dispatch.h, which never calls them in a build without).
namespace sc {

size_t slot_pool_workspace_bytes(const SlotPoolShape& s);

template <class T>
void slot_pool_forward_cuda(const SlotPoolShape& s, const T* x, const T* attn, T* slots,
                            void* workspace, cudaStream_t stream);
template <class T>
void slot_pool_backward_cuda(const SlotPoolShape& s, const T* x, const T* attn, const T* slots,
                             const T* dL_dslots, T* dL_dx, T* dL_dattn, void* workspace,
                             cudaStream_t stream);

}  // namespace sc
