// slot_contrast.h: SlotCon's slot contrast (docs/method.md §5, the authors' ctr_loss_filtered): the
// InfoNCE loss between predicted student slots and the teacher slots gathered from every rank,
// with static shapes (every (b, k) row kept, invalid ones masked) and a streaming softmax, so the
// queries x keys logits matrix is never stored. The masks come from slot_presence.h.
//
// Contrast, on one rank `rank` of R, with N = B*K rows per rank:
//   z (N, D): the predictor's output for the student slots q_i (row i = b*K + k); rows that are
//     not valid are ignored (their values may be anything finite).
//   keys (R*N, D): the teacher slots k_j of every rank in rank order (all-gathered), row
//     r*N + b*K + k; key_mask (R*N) U8: the teacher view's presence gathered the same way.
//   query_mask (N) U8: the student view's presence (optionally already and-ed with the local
//     key mask). Query i is valid iff query_mask[i] && key_mask[rank*N + i]; its label is key
//     rank*N + i (the authors' cumsum position among the gathered valid keys).
//   zn = z / max(||z||, 1e-12), kn likewise; l_ij = <zn_i, kn_j> / tau over valid keys j;
//   loss = 2 tau / n * sum over the n valid queries of (logsumexp_j l_ij - l_{i,label(i)})
//   (F.cross_entropy(logits, labels) * 2 tau). n == 0 gives loss 0 and zero gradients (the
//   authors' code would give NaN). row_lse[i] = logsumexp_j l_ij for valid rows, 0 otherwise.
// Backward, with p_ij = exp(l_ij - row_lse_i) and c = 2 dL_dloss / n:
//   dL_dzn_i = c (sum_j p_ij kn_j - kn_{label(i)}),  dL_dkn_j = c (sum_i p_ij zn_i - [j = label(i)]
//   zn_i) then through the normalisation (see proto_assign.h). Invalid rows get 0.
// Gradient convention: dL_dz and dL_dkeys are activation gradients, written (=); either may be null
// (the teacher's keys need none in training; dL_dkeys is for the tests).
// dL_dloss is a pointer to one value (host memory for the reference, device memory for CUDA).
//
// Requires: B, K, D, R >= 1, 0 <= rank < R, tau > 0.
// Types: CPU reference for T = float / double, sums in double. CUDA: T = float / double; no host
// synchronisation anywhere (the valid rows are compacted on the device, counts stay on the device).
#pragma once
#include <cstddef>
#include <cstdint>

typedef struct CUstream_st* cudaStream_t;

namespace sc {

struct SlotContrastShape {
  int64_t B = 0, K = 0, D = 0;
  int64_t R = 1;     // ranks whose keys are gathered
  int64_t rank = 0;  // this rank
  // CUDA, T = float only (ignored for double and by the reference): the two products on the
  // tensor cores in TF32 (operands rounded to 10 mantissa bits, float accumulation), as
  // PyTorch's allow_tf32 matmuls: the logits tiles (forward and backward) and the backward's
  // P . k accumulation; the norms, the softmax statistics and the loss stay FP32.
  bool tf32 = false;
  int64_t rows() const { return B * K; }
  int64_t key_rows() const { return R * B * K; }
};

// ---- CPU reference ----
template <class T>
void slot_contrast_forward_ref(const SlotContrastShape& s, const T* z, const T* keys,
                               const uint8_t* query_mask, const uint8_t* key_mask, double tau,
                               T* loss, T* row_lse);
template <class T>
void slot_contrast_backward_ref(const SlotContrastShape& s, const T* z, const T* keys,
                                const uint8_t* query_mask, const uint8_t* key_mask, double tau,
                                const T* row_lse, const T* dL_dloss, T* dL_dz, T* dL_dkeys);

}  // namespace sc

// CUDA launchers: declared in every build, defined only in builds with CUDA (reach them through
// engine/dispatch.h, which never calls them in a build without).
namespace sc {

size_t slot_contrast_workspace_bytes(const SlotContrastShape& s);

template <class T>
void slot_contrast_forward_cuda(const SlotContrastShape& s, const T* z, const T* keys,
                                const uint8_t* query_mask, const uint8_t* key_mask, double tau,
                                T* loss, T* row_lse, void* workspace, cudaStream_t stream);
template <class T>
void slot_contrast_backward_cuda(const SlotContrastShape& s, const T* z, const T* keys,
                                 const uint8_t* query_mask, const uint8_t* key_mask, double tau,
                                 const T* row_lse, const T* dL_dloss, T* dL_dz, T* dL_dkeys,
                                 void* workspace, cudaStream_t stream);

}  // namespace sc
