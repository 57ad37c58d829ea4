// slotcon_loss.cpp: the SlotCon loss composed from the head operations (see slotcon_loss.h).
#include "model/slotcon_loss.h"

#include <algorithm>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "model/slotcon_loss_ops.h"

namespace sc {
namespace {

// The head operations of one path (fused or unfused), chosen once.
struct HeadOps {
  bool fused;
  bool tf32;  // the fused products on TF32 tensor cores
  GroupingScores proto_assign(const Tensor& x, const Tensor& p, double tau) const {
    return fused ? fused::proto_assign(x, p, tau, tf32) : unfused::proto_assign(x, p, tau);
  }
  Tensor slot_pool(const Tensor& x, const Tensor& attn) const {
    return fused ? fused::slot_pool(x, attn, tf32) : unfused::slot_pool(x, attn);
  }
  Tensor view_align(const Tensor& s, const Tensor& boxes, const Tensor& flips, int64_t H,
                    int64_t W) const {
    return fused ? fused::view_align(s, boxes, flips, H, W)
                 : unfused::view_align(s, boxes, flips, H, W);
  }
  SelfDistillResult self_distill(const Tensor& a, const Tensor& b, const Tensor& c, double ts,
                                 double tt, const Tensor& raw) const {
    return fused ? fused::self_distill(a, b, c, ts, tt, raw)
                 : unfused::self_distill(a, b, c, ts, tt, raw);
  }
  Tensor slot_presence(const Tensor& dots, const Tensor& and_mask) const {
    return fused ? fused::slot_presence(dots, and_mask) : unfused::slot_presence(dots, and_mask);
  }
  Tensor slot_contrast(const Tensor& z, const Tensor& keys, const Tensor& qm, const Tensor& km,
                       int64_t rank, double tau) const {
    return fused ? fused::slot_contrast(z, keys, qm, km, rank, tau, tf32)
                 : unfused::slot_contrast(z, keys, qm, km, rank, tau);
  }
};

}  // namespace

SlotConLossParts slotcon_loss(const SlotConViews& views, const Tensor& protos_q,
                              const Tensor& protos_k, Tensor& center,
                              const SlotPredictorFn& predictor, const SlotConLossConfig& cfg,
                              const SlotConDistributed& dist) {
  const HeadOps ops{cfg.fused, cfg.tf32};
  for (int v = 0; v < 2; ++v)
    SC_CHECK(views.x[v].defined() && views.x[v].dim() == 4 && views.y[v].defined() &&
                 views.y[v].shape() == views.x[v].shape(),
             "slotcon_loss: x and y of view ", v + 1, " must be (B, D, H, W) of one shape");
  SC_CHECK(views.x[1].shape() == views.x[0].shape(), "slotcon_loss: the views differ in shape");
  SC_CHECK(predictor != nullptr, "slotcon_loss: no predictor");
  const int64_t B = views.x[0].size(0), D = views.x[0].size(1);
  const int64_t H = views.x[0].size(2), W = views.x[0].size(3);
  const int64_t K = protos_q.size(0);
  SC_CHECK(center.defined() && center.numel() == K, "slotcon_loss: center must have K = ", K,
           " elements");
  const double tt = cfg.teacher_temp, ts = cfg.student_temp, w = cfg.group_loss_weight;
  const double td = cfg.distill_teacher_temp > 0 ? cfg.distill_teacher_temp : tt;

  // Semantic grouping and alignment, student (with gradients) and teacher (without).
  Tensor dots_q[2], slots_q[2], aligned_q[2], dots_k[2], slots_k[2], aligned_k[2];
  for (int v = 0; v < 2; ++v) {
    const GroupingScores g = ops.proto_assign(views.x[v], protos_q, tt);
    dots_q[v] = g.dots;
    slots_q[v] = ops.slot_pool(views.x[v], g.attn);
    aligned_q[v] = ops.view_align(g.dots, views.boxes[v], views.flips[v], H, W);
  }
  {
    NoGradGuard no_grad;
    for (int v = 0; v < 2; ++v) {
      const GroupingScores g = ops.proto_assign(views.y[v].detach(), protos_k.detach(), tt);
      dots_k[v] = g.dots;
      slots_k[v] = ops.slot_pool(views.y[v].detach(), g.attn);
      aligned_k[v] = ops.view_align(g.dots, views.boxes[v], views.flips[v], H, W);
    }
  }

  // Group loss against the center as it was before this step's update.
  const Tensor c_old = reshape(center.detach().clone(), {K});
  const SelfDistillResult l12 =
      ops.self_distill(aligned_q[0], aligned_k[1], c_old, ts, td, dots_k[1]);
  const SelfDistillResult l21 =
      ops.self_distill(aligned_q[1], aligned_k[0], c_old, ts, td, dots_k[0]);
  SlotConLossParts out;
  out.group_loss = mul_scalar(add(l12.loss, l21.loss), w);

  // Center: mean over both teacher views (equal sizes), then over ranks.
  {
    NoGradGuard no_grad;
    Tensor bc = mul_scalar(add(l12.center_mean, l21.center_mean), 0.5);
    if (dist.world > 1) {
      SC_CHECK(dist.all_reduce_sum != nullptr, "slotcon_loss: world > 1 needs all_reduce_sum");
      dist.all_reduce_sum(bc);
      bc = mul_scalar(bc, 1.0 / double(dist.world));
    }
    out.batch_center = bc;
    axpby_(center, cfg.center_momentum, reshape(bc, center.shape()), 1.0 - cfg.center_momentum);
  }

  // Slot contrast, both directions.
  auto gather = [&](const Tensor& t) {
    if (dist.world <= 1) return t;
    SC_CHECK(dist.all_gather_rows != nullptr, "slotcon_loss: world > 1 needs all_gather_rows");
    return dist.all_gather_rows(t);
  };
  Tensor contrast;
  for (int i = 0; i < 2; ++i) {
    const int j = 1 - i;
    const Tensor present_k = ops.slot_presence(dots_k[j], Tensor());
    const Tensor qmask = reshape(ops.slot_presence(dots_q[i], present_k), {B * K});
    const Tensor slots = reshape(slots_q[i], {B * K, D});
    Tensor z;
    if (cfg.compact_predictor) {
      // At most B*P rows are present (each image's P pixels name at most P arg-max prototypes),
      // so M slots always suffice; the count stays on the device. The predicted rows go back to
      // their B*K positions (zeros elsewhere, masked out of the contrast by qmask): the contrast
      // and its positive-key pairing (query row r against key row rank*B*K + r) stay as they
      // are, for a scatter and a gather of M*D values.
      const CompactRows rows = compact_rows_index(qmask, std::min(B * K, B * H * W));
      z = scatter_rows(predictor(gather_rows(slots, rows.index, rows.valid), rows.valid),
                       rows.index, rows.valid, B * K);
    } else {
      z = predictor(slots, qmask);
    }
    const Tensor keys = gather(reshape(slots_k[j], {B * K, D}));
    const Tensor kmask = gather(reshape(present_k, {B * K}));
    const Tensor c = ops.slot_contrast(z, keys, qmask, kmask, dist.rank, cfg.contrast_temp);
    contrast = contrast.defined() ? add(contrast, c) : c;
  }
  out.contrast_loss = mul_scalar(contrast, 1.0 - w);
  out.loss = add(out.group_loss, out.contrast_loss);
  return out;
}

}  // namespace sc
