// self_distill.h: SlotCon's group loss term (docs/method.md §4, the authors' SlotCon.self_distill)
// and the teacher's batch mean for the center update, in one pass over the score maps.
//
// Shapes: student a (B, K, P) and teacher t (B, K, P) are the *aligned* score maps (view_align
// outputs), center (K), teacher_raw (B, K, P) the teacher's unaligned dots (may be null).
//
// Forward, per pixel (b, p), over k:
//   q = log_softmax(a[b,:,p] / tau_s),  w = softmax((t[b,:,p] - center) / tau_t)
//   l[b,p] = -sum_k w_k q_k = lse_a - sum_k w_k a_k / tau_s        (sum_k w_k = 1)
//   loss = mean over the B*P pixels of l     (the authors: torch.sum(-k * q, dim=-1).mean())
//   pixel_stats[b,p,:] = (lse_a, lse_t), the log-sum-exps of a/tau_s and (t - center)/tau_t,
//   saved for the backward pass.
//   center_mean[k] = mean over (b, p) of teacher_raw[b,k,p]   (only when teacher_raw is given;
//   the caller combines both teacher views and all ranks, then c <- m c + (1 - m) mean).
// Backward: dL_da[b,k,p] = dL_dloss * (softmax(a/tau_s)_k - w_k) / (tau_s B P).
// The teacher and the center get no gradient (the authors run the teacher under no_grad).
// Gradient convention: dL_da is an activation gradient, written (=).
// dL_dloss is a pointer to one value (host memory for the reference, device memory for CUDA), so
// the backward needs no host synchronisation.
//
// Requires: B, K, P >= 1; tau_s, tau_t > 0. Guarantees: loss, pixel_stats, center_mean and dL_da
// fully written.
// Types: CPU reference for T = float / double, sums in double. CUDA: T = float / double.
#pragma once
#include <cstddef>
#include <cstdint>

typedef struct CUstream_st* cudaStream_t;

namespace sc {

struct SelfDistillShape {
  int64_t B = 0, K = 0, P = 0;
};

// ---- CPU reference ----
// pixel_stats: (B, P, 2). center_mean: (K), ignored when teacher_raw is null.
template <class T>
void self_distill_forward_ref(const SelfDistillShape& s, const T* student, const T* teacher,
                              const T* center, double tau_s, double tau_t, const T* teacher_raw,
                              T* loss, T* pixel_stats, T* center_mean);
template <class T>
void self_distill_backward_ref(const SelfDistillShape& s, const T* student, const T* teacher,
                               const T* center, double tau_s, double tau_t, const T* pixel_stats,
                               const T* dL_dloss, T* dL_dstudent);

}  // namespace sc

// CUDA launchers: declared in every build, defined only in builds with CUDA (reach them through
// engine/dispatch.h, which never calls them in a build without).
namespace sc {

size_t self_distill_workspace_bytes(const SelfDistillShape& s);

template <class T>
void self_distill_forward_cuda(const SelfDistillShape& s, const T* student, const T* teacher,
                               const T* center, double tau_s, double tau_t, const T* teacher_raw,
                               T* loss, T* pixel_stats, T* center_mean, void* workspace,
                               cudaStream_t stream);
template <class T>
void self_distill_backward_cuda(const SelfDistillShape& s, const T* student, const T* teacher,
                                const T* center, double tau_s, double tau_t, const T* pixel_stats,
                                const T* dL_dloss, T* dL_dstudent, cudaStream_t stream);

}  // namespace sc
