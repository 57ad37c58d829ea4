// slotcon_loss_ops.cpp: SlotCon's head operations, fused (custom ops over kernels/) and unfused
// (plain engine ops). See slotcon_loss_ops.h.
#include "model/slotcon_loss_ops.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/autograd.h"
#include "engine/dispatch.h"
#include "engine/ops.h"
#include "kernels/proto_assign.h"
#include "kernels/self_distill.h"
#include "kernels/slot_contrast.h"
#include "kernels/slot_pool.h"
#include "kernels/slot_presence.h"
#include "kernels/view_align.h"

namespace sc {
namespace {

using Grads = std::vector<Tensor>;

void check_float_same(const char* op, const Tensor& a, const Tensor& b) {
  SC_CHECK(a.defined() && b.defined(), op, ": undefined input");
  SC_CHECK(a.dtype() == b.dtype(), op, ": dtype mismatch ", dtype_name(a.dtype()), " vs ",
           dtype_name(b.dtype()));
  SC_CHECK(a.device() == b.device(), op, ": device mismatch ", a.device().str(), " vs ",
           b.device().str());
}

// x (B, D, H, W) or (B, D, P) -> (B, D, P) sizes.
void map_dims(const char* op, const Tensor& x, int64_t& B, int64_t& D, int64_t& P) {
  SC_CHECK(x.dim() == 3 || x.dim() == 4, op, ": x must be (B, D, H, W) or (B, D, P), got ",
           shape_str(x.shape()));
  B = x.size(0);
  D = x.size(1);
  P = x.dim() == 4 ? x.size(2) * x.size(3) : x.size(2);
}

Tensor u8_mask(const char* op, const Tensor& m, int64_t n, const Device& dev) {
  SC_CHECK(m.defined() && m.dtype() == DType::U8 && m.numel() == n, op, ": mask must be U8 with ",
           n, " elements");
  SC_CHECK(m.device() == dev, op, ": mask on the wrong device");
  return m.contiguous();
}

}  // namespace

// ====================================================================== fused
namespace fused {

GroupingScores proto_assign(const Tensor& x_in, const Tensor& protos_in, double tau, bool tf32) {
  const char* op = "proto_assign";
  check_float_same(op, x_in, protos_in);
  int64_t B, D, P;
  map_dims(op, x_in, B, D, P);
  SC_CHECK(protos_in.dim() == 2 && protos_in.size(1) == D, op, ": protos must be (K, ", D,
           "), got ", shape_str(protos_in.shape()));
  const Tensor x = x_in.contiguous(), protos = protos_in.contiguous();
  const int64_t K = protos.size(0);
  const ProtoAssignShape s{B, K, D, P, tf32};
  const Device dev = x.device();
  Tensor dots = empty({B, K, P}, x.dtype(), dev), attn = empty({B, K, P}, x.dtype(), dev);
  dispatch_typed(
      op, x,
      [&](auto tv) {
        using T = decltype(tv);
        proto_assign_forward_ref<T>(s, x.data<T>(), protos.data<T>(), tau, dots.data<T>(),
                                    attn.data<T>());
      },
      [&](auto tv, auto st) {
        using T = decltype(tv);
        Workspace ws(proto_assign_workspace_bytes(s), x);
        proto_assign_forward_cuda<T>(s, x.data<T>(), protos.data<T>(), tau, dots.data<T>(),
                                     attn.data<T>(), ws.data(), st);
      });
  if (any_requires_grad({x, protos})) {
    const Tensor xs = x.detach(), ps = protos.detach(), ds = dots.detach();
    const bool want_x = x.requires_grad(), want_p = protos.requires_grad();
    record_op(op, {x, protos}, {dots, attn}, [=](const Grads& g) {
      const Tensor gd = g[0].contiguous(), ga = g[1].contiguous();
      Tensor dx = want_x ? empty(xs.shape(), xs.dtype(), xs.device()) : Tensor();
      Tensor dp = want_p ? zeros(ps.shape(), ps.dtype(), ps.device()) : Tensor();
      dispatch_typed(
          op, xs,
          [&](auto tv) {
            using T = decltype(tv);
            proto_assign_backward_ref<T>(s, xs.data<T>(), ps.data<T>(), ds.data<T>(), tau,
                                         gd.data<T>(), ga.data<T>(), data_or_null<T>(dx),
                                         data_or_null<T>(dp));
          },
          [&](auto tv, auto st) {
            using T = decltype(tv);
            Workspace ws(proto_assign_workspace_bytes(s), xs);
            proto_assign_backward_cuda<T>(s, xs.data<T>(), ps.data<T>(), ds.data<T>(), tau,
                                          gd.data<T>(), ga.data<T>(), data_or_null<T>(dx),
                                          data_or_null<T>(dp), ws.data(), st);
          });
      return Grads{dx, dp};
    });
  }
  return {dots, attn};
}

Tensor slot_pool(const Tensor& x_in, const Tensor& attn_in, bool tf32) {
  const char* op = "slot_pool";
  check_float_same(op, x_in, attn_in);
  int64_t B, D, P;
  map_dims(op, x_in, B, D, P);
  SC_CHECK(attn_in.dim() == 3 && attn_in.size(0) == B && attn_in.size(2) == P, op,
           ": attn must be (", B, ", K, ", P, "), got ", shape_str(attn_in.shape()));
  const Tensor x = x_in.contiguous(), attn = attn_in.contiguous();
  const int64_t K = attn.size(1);
  const SlotPoolShape s{B, K, D, P, tf32};
  const Device dev = x.device();
  Tensor slots = empty({B, K, D}, x.dtype(), dev);
  dispatch_typed(
      op, x,
      [&](auto tv) {
        using T = decltype(tv);
        slot_pool_forward_ref<T>(s, x.data<T>(), attn.data<T>(), slots.data<T>());
      },
      [&](auto tv, auto st) {
        using T = decltype(tv);
        Workspace ws(slot_pool_workspace_bytes(s), x);
        slot_pool_forward_cuda<T>(s, x.data<T>(), attn.data<T>(), slots.data<T>(), ws.data(), st);
      });
  if (any_requires_grad({x, attn})) {
    const Tensor xs = x.detach(), as = attn.detach(), ss = slots.detach();
    const bool want_x = x.requires_grad(), want_a = attn.requires_grad();
    record_op(op, {x, attn}, {slots}, [=](const Grads& g) {
      const Tensor gs = g[0].contiguous();
      Tensor dx = want_x ? empty(xs.shape(), xs.dtype(), xs.device()) : Tensor();
      Tensor da = want_a ? empty(as.shape(), as.dtype(), as.device()) : Tensor();
      dispatch_typed(
          op, xs,
          [&](auto tv) {
            using T = decltype(tv);
            slot_pool_backward_ref<T>(s, xs.data<T>(), as.data<T>(), ss.data<T>(), gs.data<T>(),
                                      data_or_null<T>(dx), data_or_null<T>(da));
          },
          [&](auto tv, auto st) {
            using T = decltype(tv);
            Workspace ws(slot_pool_workspace_bytes(s), xs);
            slot_pool_backward_cuda<T>(s, xs.data<T>(), as.data<T>(), ss.data<T>(), gs.data<T>(),
                                       data_or_null<T>(dx), data_or_null<T>(da), ws.data(), st);
          });
      return Grads{dx, da};
    });
  }
  return slots;
}

Tensor view_align(const Tensor& scores_in, const Tensor& boxes_in, const Tensor& flips_in,
                  int64_t H, int64_t W) {
  const char* op = "view_align";
  SC_CHECK(scores_in.defined() && scores_in.dim() == 3 && scores_in.size(2) == H * W, op,
           ": scores must be (B, K, ", H * W, ")");
  const Tensor scores = scores_in.contiguous();
  const int64_t B = scores.size(0), K = scores.size(1);
  const Device dev = scores.device();
  SC_CHECK(boxes_in.defined() && boxes_in.numel() == 4 * B && boxes_in.device() == dev, op,
           ": boxes must be (", B, ", 4) on ", dev.str());
  const Tensor boxes = cast(boxes_in.detach(), scores.dtype()).contiguous();
  const Tensor flips = u8_mask(op, flips_in, B, dev);
  const ViewAlignShape s{B, K, H, W};
  Tensor out = empty({B, K, H * W}, scores.dtype(), dev);
  dispatch_typed(
      op, scores,
      [&](auto tv) {
        using T = decltype(tv);
        view_align_forward_ref<T>(s, scores.data<T>(), boxes.data<T>(), flips.data<uint8_t>(),
                                  out.data<T>());
      },
      [&](auto tv, auto st) {
        using T = decltype(tv);
        view_align_forward_cuda<T>(s, scores.data<T>(), boxes.data<T>(), flips.data<uint8_t>(),
                                   out.data<T>(), st);
      });
  if (any_requires_grad({scores})) {
    record_op(op, {scores}, {out}, [=](const Grads& g) {
      const Tensor go = g[0].contiguous();
      Tensor din = empty({B, K, H * W}, go.dtype(), go.device());
      dispatch_typed(
          op, go,
          [&](auto tv) {
            using T = decltype(tv);
            view_align_backward_ref<T>(s, boxes.data<T>(), flips.data<uint8_t>(), go.data<T>(),
                                       din.data<T>());
          },
          [&](auto tv, auto st) {
            using T = decltype(tv);
            view_align_backward_cuda<T>(s, boxes.data<T>(), flips.data<uint8_t>(), go.data<T>(),
                                        din.data<T>(), st);
          });
      return Grads{din};
    });
  }
  return out;
}

SelfDistillResult self_distill(const Tensor& student_in, const Tensor& teacher_in,
                               const Tensor& center_in, double tau_s, double tau_t,
                               const Tensor& teacher_raw_in) {
  const char* op = "self_distill";
  check_float_same(op, student_in, teacher_in);
  check_float_same(op, student_in, center_in);
  SC_CHECK(student_in.dim() == 3 && teacher_in.shape() == student_in.shape(), op,
           ": student and teacher must both be (B, K, P)");
  const Tensor a = student_in.contiguous(), t = teacher_in.detach().contiguous();
  const Tensor c = center_in.detach().contiguous();
  const int64_t B = a.size(0), K = a.size(1), P = a.size(2);
  SC_CHECK(c.numel() == K, op, ": center must have K = ", K, " elements");
  Tensor raw;
  if (teacher_raw_in.defined()) {
    check_float_same(op, student_in, teacher_raw_in);
    SC_CHECK(teacher_raw_in.numel() == B * K * P, op, ": teacher_raw must be (B, K, P)");
    raw = teacher_raw_in.detach().contiguous();
  }
  const SelfDistillShape s{B, K, P};
  const Device dev = a.device();
  Tensor loss = empty({}, a.dtype(), dev), stats = empty({B, P, 2}, a.dtype(), dev);
  Tensor cm = raw.defined() ? empty({K}, a.dtype(), dev) : Tensor();
  dispatch_typed(
      op, a,
      [&](auto tv) {
        using T = decltype(tv);
        self_distill_forward_ref<T>(s, a.data<T>(), t.data<T>(), c.data<T>(), tau_s, tau_t,
                                    data_or_null<T>(raw), loss.data<T>(), stats.data<T>(),
                                    data_or_null<T>(cm));
      },
      [&](auto tv, auto st) {
        using T = decltype(tv);
        Workspace ws(self_distill_workspace_bytes(s), a);
        self_distill_forward_cuda<T>(s, a.data<T>(), t.data<T>(), c.data<T>(), tau_s, tau_t,
                                     data_or_null<T>(raw), loss.data<T>(), stats.data<T>(),
                                     data_or_null<T>(cm), ws.data(), st);
      });
  if (any_requires_grad({a})) {
    const Tensor as = a.detach();
    record_op(op, {a}, {loss}, [=](const Grads& g) {
      const Tensor gl = g[0].contiguous();
      Tensor da = empty(as.shape(), as.dtype(), as.device());
      dispatch_typed(
          op, as,
          [&](auto tv) {
            using T = decltype(tv);
            self_distill_backward_ref<T>(s, as.data<T>(), t.data<T>(), c.data<T>(), tau_s, tau_t,
                                         stats.data<T>(), gl.data<T>(), da.data<T>());
          },
          [&](auto tv, auto st) {
            using T = decltype(tv);
            self_distill_backward_cuda<T>(s, as.data<T>(), t.data<T>(), c.data<T>(), tau_s, tau_t,
                                          stats.data<T>(), gl.data<T>(), da.data<T>(), st);
          });
      return Grads{da};
    });
  }
  return {loss, cm};
}

Tensor slot_presence(const Tensor& dots_in, const Tensor& and_mask_in) {
  const char* op = "slot_presence";
  SC_CHECK(dots_in.defined() && dots_in.dim() == 3, op, ": dots must be (B, K, P)");
  const Tensor dots = dots_in.detach().contiguous();
  const int64_t B = dots.size(0), K = dots.size(1), P = dots.size(2);
  const Device dev = dots.device();
  const Tensor am = and_mask_in.defined() ? u8_mask(op, and_mask_in, B * K, dev) : Tensor();
  Tensor present = empty({B, K}, DType::U8, dev);
  dispatch_typed(
      op, dots,
      [&](auto tv) {
        using T = decltype(tv);
        slot_presence_ref<T>(B, K, P, dots.data<T>(), data_or_null<uint8_t>(am),
                             present.data<uint8_t>());
      },
      [&](auto tv, auto st) {
        using T = decltype(tv);
        slot_presence_cuda<T>(B, K, P, dots.data<T>(), data_or_null<uint8_t>(am),
                              present.data<uint8_t>(), st);
      });
  return present;
}

Tensor slot_contrast(const Tensor& z_in, const Tensor& keys_in, const Tensor& query_mask,
                     const Tensor& key_mask, int64_t rank, double tau, bool tf32) {
  const char* op = "slot_contrast";
  check_float_same(op, z_in, keys_in);
  SC_CHECK(z_in.dim() == 2 && keys_in.dim() == 2 && z_in.size(1) == keys_in.size(1), op,
           ": z (N, D) and keys (R*N, D) expected, got ", shape_str(z_in.shape()), " and ",
           shape_str(keys_in.shape()));
  const int64_t N = z_in.size(0), D = z_in.size(1), NK = keys_in.size(0);
  SC_CHECK(N > 0 && NK % N == 0, op, ": key rows (", NK, ") must be a multiple of N (", N, ")");
  const Tensor z = z_in.contiguous(), keys = keys_in.contiguous();
  const Device dev = z.device();
  const Tensor qm = u8_mask(op, query_mask, N, dev), km = u8_mask(op, key_mask, NK, dev);
  // The kernels see the rows as B*K with B = 1 (only B*K matters).
  const SlotContrastShape s{1, N, D, NK / N, rank, tf32};
  SC_CHECK(rank >= 0 && rank < s.R, op, ": rank ", rank, " out of range for ", s.R, " ranks");
  Tensor loss = empty({}, z.dtype(), dev), lse = empty({N}, z.dtype(), dev);
  dispatch_typed(
      op, z,
      [&](auto tv) {
        using T = decltype(tv);
        slot_contrast_forward_ref<T>(s, z.data<T>(), keys.data<T>(), qm.data<uint8_t>(),
                                     km.data<uint8_t>(), tau, loss.data<T>(), lse.data<T>());
      },
      [&](auto tv, auto st) {
        using T = decltype(tv);
        Workspace ws(slot_contrast_workspace_bytes(s), z);
        slot_contrast_forward_cuda<T>(s, z.data<T>(), keys.data<T>(), qm.data<uint8_t>(),
                                      km.data<uint8_t>(), tau, loss.data<T>(), lse.data<T>(),
                                      ws.data(), st);
      });
  if (any_requires_grad({z, keys})) {
    const Tensor zs = z.detach(), ks = keys.detach();
    const bool want_z = z.requires_grad(), want_k = keys.requires_grad();
    record_op(op, {z, keys}, {loss}, [=](const Grads& g) {
      const Tensor gl = g[0].contiguous();
      Tensor dz = want_z ? empty(zs.shape(), zs.dtype(), zs.device()) : Tensor();
      Tensor dk = want_k ? empty(ks.shape(), ks.dtype(), ks.device()) : Tensor();
      dispatch_typed(
          op, zs,
          [&](auto tv) {
            using T = decltype(tv);
            slot_contrast_backward_ref<T>(s, zs.data<T>(), ks.data<T>(), qm.data<uint8_t>(),
                                          km.data<uint8_t>(), tau, lse.data<T>(), gl.data<T>(),
                                          data_or_null<T>(dz), data_or_null<T>(dk));
          },
          [&](auto tv, auto st) {
            using T = decltype(tv);
            Workspace ws(slot_contrast_workspace_bytes(s), zs);
            slot_contrast_backward_cuda<T>(s, zs.data<T>(), ks.data<T>(), qm.data<uint8_t>(),
                                           km.data<uint8_t>(), tau, lse.data<T>(), gl.data<T>(),
                                           data_or_null<T>(dz), data_or_null<T>(dk), ws.data(), st);
          });
      return Grads{dz, dk};
    });
  }
  return loss;
}

}  // namespace fused

// ====================================================================== unfused
namespace unfused {
namespace {

// Mt[b] (P, P): aligned[b, k, o] = sum_i scores[b, k, i] Mt[b, i, o] (RoIAlign + flip as a matrix).
template <class T>
Tensor interpolation_matrices(const std::vector<double>& boxes_d, const std::vector<double>& flips,
                              int64_t B, int64_t H, int64_t W) {
  const int64_t P = H * W;
  std::vector<double> m(size_t(B * P * P), 0.0);
  for (int64_t b = 0; b < B; ++b) {
    T box[4];
    for (int j = 0; j < 4; ++j) box[j] = T(boxes_d[size_t(4 * b + j)]);
    const RoiGeom<T> g = roi_geom(box, H, W);
    const bool flip = flips[size_t(b)] != 0;
    for (int64_t oy = 0; oy < H; ++oy)
      for (int64_t ox = 0; ox < W; ++ox) {
        const int64_t o = oy * W + (flip ? W - 1 - ox : ox);
        for (int iy = 0; iy < g.grid_h; ++iy)
          for (int ix = 0; ix < g.grid_w; ++ix) {
            int64_t idx[4];
            T w[4];
            if (!bilinear_taps(roi_sample(g.start_h, oy, g.bin_h, iy, g.grid_h),
                               roi_sample(g.start_w, ox, g.bin_w, ix, g.grid_w), H, W, idx, w))
              continue;
            for (int t = 0; t < 4; ++t)
              m[size_t((b * P + idx[t]) * P + o)] += double(w[t]) / double(g.count);
          }
      }
  }
  return from_vector(m, {B, P, P}, DType::F64);
}

}  // namespace

GroupingScores proto_assign(const Tensor& x, const Tensor& protos, double tau) {
  int64_t B, D, P;
  map_dims("unfused::proto_assign", x, B, D, P);
  const Tensor xn = l2_normalize(reshape(x, {B, D, P}), 1, kProtoNormEps);
  const Tensor pn = l2_normalize(protos, 1, kProtoNormEps);
  // (B, P, D) @ (D, K) -> (B, P, K) -> (B, K, P)
  const Tensor dots = permute(matmul(transpose(xn, 1, 2), transpose(pn, 0, 1)), {0, 2, 1});
  const Tensor attn = add_scalar(softmax(mul_scalar(dots, 1.0 / tau), 1), kAttnEps);
  return {dots, attn};
}

Tensor slot_pool(const Tensor& x, const Tensor& attn) {
  int64_t B, D, P;
  map_dims("unfused::slot_pool", x, B, D, P);
  const Tensor num = matmul(attn, transpose(reshape(x, {B, D, P}), 1, 2));  // (B, K, D)
  return div(num, sum(attn, {2}, true));
}

Tensor view_align(const Tensor& scores, const Tensor& boxes, const Tensor& flips, int64_t H,
                  int64_t W) {
  const int64_t B = scores.size(0);
  const std::vector<double> bx = boxes.to_vector(), fl = flips.to_vector();
  Tensor mt;
  float_dispatch("unfused::view_align", scores.dtype(), [&](auto tv) {
    using T = decltype(tv);
    mt = interpolation_matrices<T>(bx, fl, B, H, W);
  });
  mt = to_device(cast(mt, scores.dtype()), scores.device());
  return matmul(scores, mt);
}

SelfDistillResult self_distill(const Tensor& student, const Tensor& teacher, const Tensor& center,
                               double tau_s, double tau_t, const Tensor& teacher_raw) {
  const int64_t B = student.size(0), K = student.size(1), P = student.size(2);
  const Tensor logq = log_softmax(mul_scalar(student, 1.0 / tau_s), 1);
  const Tensor c = reshape(center.detach(), {1, K, 1});
  const Tensor w = softmax(mul_scalar(sub(teacher.detach(), c), 1.0 / tau_t), 1);
  SelfDistillResult r;
  r.loss = mul_scalar(sum(mul(w, logq)), -1.0 / double(B * P));
  if (teacher_raw.defined()) r.center_mean = mean(teacher_raw.detach(), {0, 2});
  return r;
}

Tensor slot_presence(const Tensor& dots, const Tensor& and_mask) {
  const int64_t B = dots.size(0), K = dots.size(1), P = dots.size(2);
  const Device dev = dots.device();
  const Tensor am = reshape(argmax(dots.detach(), 1), {B, 1, P});  // I64
  std::vector<double> ks(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k) ks[size_t(k)] = double(k);
  const Tensor hit = equal_mask(am, from_vector(ks, {1, K, 1}, DType::I64, dev));  // (B, K, P)
  const Tensor count = sum(cast(hit, DType::F64), {2});                            // (B, K)
  Tensor present = sub(ones({1}, DType::F64, dev),
                       cast(equal_mask(count, zeros({1}, DType::F64, dev)), DType::F64));
  if (and_mask.defined()) present = mul(present, cast(reshape(and_mask, {B, K}), DType::F64));
  return equal_mask(present, ones({1}, DType::F64, dev));
}

Tensor slot_contrast(const Tensor& z, const Tensor& keys, const Tensor& query_mask,
                     const Tensor& key_mask, int64_t rank, double tau) {
  const int64_t N = z.size(0), NK = keys.size(0);
  const DType dt = z.dtype();
  const Tensor zn = l2_normalize(z, 1, 1e-12), kn = l2_normalize(keys, 1, 1e-12);
  const Tensor logits = mul_scalar(matmul(zn, transpose(kn, 0, 1)), 1.0 / tau);  // (N, NK)
  // Invalid keys: a bias of -1e4 (exp underflows to exactly 0 next to logits <= 1/tau).
  const Tensor km = cast(reshape(key_mask, {1, NK}), dt);
  const Tensor masked = add(logits, mul_scalar(add_scalar(km, -1.0), 1e4));
  // The positive of query i is key rank * N + i: its log-probability is its logit less the row's
  // log-sum-exp. Logits lie in [-1/tau, 1/tau], so exp(masked - 1/tau) cannot overflow, and a
  // row's sum is at least exp(-2/tau) when it has a valid key; 1e-30 keeps a row without one
  // finite (its query is not valid: it counts 0). (Picking the positive out of the (N, NK)
  // log_softmax with a one-hot built on the host copied N x NK values to the device each call:
  // 2.1 GB at the authors' shape on the H200, 3.7 s of a 3.8 s step.)
  const Tensor lse = add_scalar(
      log(add_scalar(sum(exp(add_scalar(masked, -1.0 / tau)), {1}), 1e-30)), 1.0 / tau);    // (N)
  const Tensor kpos = cast(slice(reshape(key_mask, {NK}), 0, rank * N, rank * N + N), dt);  // (N)
  const Tensor pos =
      add(mul_scalar(sum(mul(zn, slice(kn, 0, rank * N, rank * N + N)), {1}), 1.0 / tau),
          mul_scalar(add_scalar(kpos, -1.0), 1e4));  // (N)
  const Tensor picked = sub(pos, lse);               // (N)
  const Tensor valid = mul(cast(query_mask, dt), kpos);
  const double n = sum(valid).item();  // host synchronisation (the unfused path may)
  const Tensor total = sum(mul(picked, valid));
  return mul_scalar(total, n > 0 ? -2.0 * tau / n : 0.0);
}

}  // namespace unfused
}  // namespace sc
