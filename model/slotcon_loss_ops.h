// slotcon_loss_ops.h: SlotCon's head operations on engine tensors, twice over.
//
// sc::fused:: each op is one custom op of the engine (autograd.h: record_op) running the kernels
// of kernels/<op>.h: the CPU reference on CPU tensors (F32 / F64), the CUDA launchers on CUDA
// tensors (F32 / F64), workspaces from the engine's caching allocator, everything on the engine
// stream, no host synchronisation.
// sc::unfused:: the same maths composed from plain engine ops (l2_normalize, matmul, softmax,
// log_softmax, sum, mean, mul, argmax, equal_mask, ...), for the equivalence test and as the
// benchmark's baseline. The view alignment has no plain-op equivalent (RoIAlign): the unfused path
// builds each image's interpolation matrix on the host (with the shared sampling-geometry helpers
// of kernels/view_align.h) and applies it with a batched matmul, so its gradient is matmul's.
// The unfused contrast reads the number of valid queries back to the host (a synchronisation).
//
// Shapes (B images, K prototypes, D channels, P = H*W pixels):
//   x (B, D, H, W) or (B, D, P); protos (K, D); dots, attn, aligned scores (B, K, P);
//   slots (B, K, D); boxes (B, 4) float; flips (B) U8; center (K); masks U8.
// The semantics of every op are those of its kernel header (kernels/<op>.h).
#pragma once
#include <cstdint>

#include "engine/tensor.h"

namespace sc {

struct GroupingScores {
  Tensor dots;  // (B, K, P) raw cosine scores
  Tensor attn;  // (B, K, P) softmax_k(dots / tau) + 1e-6
};

struct SelfDistillResult {
  Tensor loss;         // scalar
  Tensor center_mean;  // (K): mean of teacher_raw over (B, P); undefined without teacher_raw
};

namespace fused {

// tf32 (proto_assign, slot_pool, slot_contrast): on the GPU in float, the products on the tensor
// cores in TF32 (kernels/*.h: operands rounded to 10 mantissa bits, float accumulation); no
// effect on the CPU or in double.

// Differentiable in x and protos.
GroupingScores proto_assign(const Tensor& x, const Tensor& protos, double tau, bool tf32 = false);
// Differentiable in x and attn.
Tensor slot_pool(const Tensor& x, const Tensor& attn, bool tf32 = false);
// scores (B, K, P) on an H x W map; differentiable in scores.
Tensor view_align(const Tensor& scores, const Tensor& boxes, const Tensor& flips, int64_t H,
                  int64_t W);
// Differentiable in student; teacher and center are constants. teacher_raw may be undefined.
SelfDistillResult self_distill(const Tensor& student, const Tensor& teacher, const Tensor& center,
                               double tau_s, double tau_t, const Tensor& teacher_raw = Tensor());
// U8 (B, K); and_mask (B, K) U8 optional. Not differentiable.
Tensor slot_presence(const Tensor& dots, const Tensor& and_mask = Tensor());
// z (B*K, D), keys (R*B*K, D), query_mask (B*K), key_mask (R*B*K); scalar loss. Differentiable
// in z and (when it requires grad) keys.
Tensor slot_contrast(const Tensor& z, const Tensor& keys, const Tensor& query_mask,
                     const Tensor& key_mask, int64_t rank, double tau, bool tf32 = false);

}  // namespace fused

namespace unfused {

GroupingScores proto_assign(const Tensor& x, const Tensor& protos, double tau);
Tensor slot_pool(const Tensor& x, const Tensor& attn);
Tensor view_align(const Tensor& scores, const Tensor& boxes, const Tensor& flips, int64_t H,
                  int64_t W);
SelfDistillResult self_distill(const Tensor& student, const Tensor& teacher, const Tensor& center,
                               double tau_s, double tau_t, const Tensor& teacher_raw = Tensor());
Tensor slot_presence(const Tensor& dots, const Tensor& and_mask = Tensor());
Tensor slot_contrast(const Tensor& z, const Tensor& keys, const Tensor& query_mask,
                     const Tensor& key_mask, int64_t rank, double tau);

}  // namespace unfused
}  // namespace sc
