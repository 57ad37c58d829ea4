// proto_assign.h: SlotCon's prototype assignment (docs/method.md §2), the first half of semantic
// grouping.
//
// Shapes: pixel features x (B, D, P) (a projector output (B, D, H, W) with P = H*W, NCHW),
// prototypes (K, D), dots (B, K, P), attn (B, K, P). Row-major, dense.
//
// Forward:
//   xn[b,:,p] = x[b,:,p] / max(||x[b,:,p]||, 1e-12)       (F.normalize over D)
//   pn[k,:]   = protos[k,:] / max(||protos[k,:]||, 1e-12)
//   dots[b,k,p] = <pn[k,:], xn[b,:,p]>                     (raw cosine scores, used by the losses)
//   attn[b,k,p] = softmax_k(dots[b,:,p] / tau)[k] + 1e-6   (tau = teacher temperature)
//
// Backward, from dL_ddots and dL_dattn (either may be null = zero):
//   s = softmax_k(dots / tau) (recomputed from the saved dots, not from attn - 1e-6)
//   G[b,k,p] = dL_ddots + s (dL_dattn - sum_k' s dL_dattn) / tau            (dL/d dots, total)
//   dL_dxn[b,:,p] = sum_k G[b,k,p] pn[k,:],   dL_dpn[k,:] = sum_{b,p} G[b,k,p] xn[b,:,p]
//   through v / max(||v||, eps): dv = (dy - y <y, dy>) / ||v||  when ||v|| > eps, else dy / eps.
// Gradient convention: dL_dx (activation) is written (=); dL_dprotos (parameter) accumulates (+=).
// Either output pointer may be null (not wanted).
//
// Requires: B, K, D, P >= 1; tau > 0. Guarantees: every element of dots / attn / dL_dx written.
//
// Types: CPU reference for T = float / double, every sum in double. CUDA: T = float / double,
// sums in T (float for F32); see docs/kernels/proto_assign.md for the launch configuration.
#pragma once
#include <cstddef>
#include <cstdint>

typedef struct CUstream_st* cudaStream_t;

namespace sc {

struct ProtoAssignShape {
  int64_t B = 0, K = 0, D = 0, P = 0;
  // CUDA, T = float only (ignored for double and by the reference): the GEMMs on the tensor
  // cores in TF32 (operands rounded to 10 mantissa bits, float accumulation), as PyTorch's
  // allow_tf32; norms, softmax and epilogues stay FP32.
  bool tf32 = false;
};

constexpr double kProtoNormEps = 1e-12;  // F.normalize's eps
constexpr double kAttnEps = 1e-6;        // added to the softmax (SemanticGrouping's eps)

// ---- CPU reference ----
template <class T>
void proto_assign_forward_ref(const ProtoAssignShape& s, const T* x, const T* protos, double tau,
                              T* dots, T* attn);
template <class T>
void proto_assign_backward_ref(const ProtoAssignShape& s, const T* x, const T* protos,
                               const T* dots, double tau, const T* dL_ddots, const T* dL_dattn,
                               T* dL_dx, T* dL_dprotos);

}  // namespace sc

// CUDA launchers: declared in every build, defined only in builds with CUDA (reach them through
// engine/dispatch.h, which never calls them in a build without).
namespace sc {

// Device workspace (bytes, 256-aligned) the CUDA passes need; pass at least this much.
size_t proto_assign_workspace_bytes(const ProtoAssignShape& s);

// Asynchronous on `stream`; all pointers are device memory; no allocation.
template <class T>
void proto_assign_forward_cuda(const ProtoAssignShape& s, const T* x, const T* protos, double tau,
                               T* dots, T* attn, void* workspace, cudaStream_t stream);
template <class T>
void proto_assign_backward_cuda(const ProtoAssignShape& s, const T* x, const T* protos,
                                const T* dots, double tau, const T* dL_ddots, const T* dL_dattn,
                                T* dL_dx, T* dL_dprotos, void* workspace, cudaStream_t stream);

}  // namespace sc
