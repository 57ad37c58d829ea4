// slotcon_loss.h: the SlotCon loss of one training step on one rank (docs/method.md §2-§5, the
// authors' SlotCon.forward after the projectors), composed from the head operations of
// slotcon_loss_ops.h, fused (custom ops over kernels/) or unfused (plain engine ops).
//
// For views v = 1, 2 (index 0, 1 here):
//   student: (dots_q_v, attn_q_v) = proto_assign(x_v, protos_q, tau_t); q_v = slot_pool(x_v, attn)
//            a_v = view_align(dots_q_v, box_v, flip_v)
//   teacher (no gradients): the same with y_v and protos_k -> dots_k_v, k_v, b_v
//   group    = w L(a_1, b_2) + w L(a_2, b_1), L = self_distill(., ., center, tau_s, tau_t)
//   center  <- m_c center + (1 - m_c) mean of dots_k_1, dots_k_2 over every pixel, image and rank
//   contrast = (1 - w) (C(q_1, k_2) + C(q_2, k_1)), where for C(q_i, k_j):
//              present_k = presence(dots_k_j), query mask = presence(dots_q_i) & present_k,
//              z = predictor(q_i rows, query mask)   (its BatchNorm sees the selected rows only;
//                  by default it runs on the selected rows alone: compact_predictor below),
//              keys = all_gather(k_j rows), key mask = all_gather(present_k),
//              C = slot_contrast(z, keys, query mask, key mask, rank, tau_c)
//   loss     = group + contrast
// The center is read before it is updated (the authors update it after the group loss).
#pragma once
#include <functional>

#include "engine/tensor.h"

namespace sc {

struct SlotConLossConfig {
  double distill_teacher_temp = 0;  // the teacher's sharpening in the group loss; 0: teacher_temp
  double teacher_temp = 0.07;      // tau_t: grouping softmax (student and teacher) and teacher
  double student_temp = 0.1;       // tau_s
  double contrast_temp = 0.2;      // tau_c
  double group_loss_weight = 0.5;  // w
  double center_momentum = 0.9;    // m_c
  bool fused = true;               // fused kernels vs plain engine ops
  bool tf32 = false;  // fused, GPU, float: the products of proto_assign, slot_pool, slot_contrast
                      // on TF32 tensor cores
  // The predictor on the query rows only (the authors' formulation): a query row is present in
  // both views' sense, so there are at most B*P of them (P = H*W; each pixel's arg-max names one
  // row per image). They are compacted on the device, in order, into a buffer of
  // M = min(B*K, B*P) rows (static shape, no host read; the unused slots are zero rows masked
  // out of the predictor's BatchNorms), and the predictions are scattered back to their B*K
  // positions for the contrast. Off: the predictor runs on all B*K rows with the absent ones
  // masked out of its BatchNorms. Same numbers either way up to round-off.
  bool compact_predictor = true;
};

// One rank's view of the collectives (identity on a single rank).
struct SlotConDistributed {
  int64_t rank = 0, world = 1;
  // Rows of every rank concatenated in rank order (keys (N, D) -> (R*N, D); masks (N) U8).
  std::function<Tensor(const Tensor&)> all_gather_rows;
  // In-place sum over ranks (used for the center's batch mean).
  std::function<void(Tensor&)> all_reduce_sum;
};

// The projector outputs and augmentation parameters of one step.
struct SlotConViews {
  Tensor x[2];      // student projector outputs (B, D, H, W), differentiable
  Tensor y[2];      // teacher projector outputs (B, D, H, W), no gradient
  Tensor boxes[2];  // (B, 4) overlap boxes in each view's normalised coordinates
  Tensor flips[2];  // (B) U8 horizontal-flip flags
};

// The slot predictor: slots (N, D) and a U8 row mask (N) -> (N, D), N = B*K or the compacted M.
// Its BatchNorms must take their statistics over the masked rows only
// (SlotPredictor::forward(x, row_mask) does), and its rows must not interact otherwise.
using SlotPredictorFn = std::function<Tensor(const Tensor& slots, const Tensor& row_mask)>;

struct SlotConLossParts {
  Tensor loss;           // scalar: group + contrast
  Tensor group_loss;     // scalar, weighted
  Tensor contrast_loss;  // scalar, weighted
  Tensor batch_center;   // (K): the teacher's batch mean that updated the center
};

// protos_q (K, D) differentiable, protos_k (K, D) constant; center (K) or (1, K) is updated in
// place (no gradient). Requires all views on one device with one float dtype (F32 / F64).
SlotConLossParts slotcon_loss(const SlotConViews& views, const Tensor& protos_q,
                              const Tensor& protos_k, Tensor& center,
                              const SlotPredictorFn& predictor, const SlotConLossConfig& cfg,
                              const SlotConDistributed& dist = {});

}  // namespace sc
