// bench_slotcon_kernels: SlotCon's fused head kernels against their unfused engine-op paths, at
// the authors' per-GPU scale: B = 64 images, D = 256, 7 x 7 maps (P = 49), K = 256 (COCO) and
// K = 2048 (ImageNet), keys gathered from R = 8 ranks, F32.
//
// Each op is timed through the engine (model/slotcon_loss_ops.h): fused:: = the custom op over
// kernels/<op>.cu, unfused:: = the same maths from plain engine ops (cuBLAS GEMMs plus separate
// elementwise / row kernels), forward and forward + backward (autograd from a sum of the output
// times a fixed random cotangent). The unfused contrast is the authors' compact formulation (rows
// selected on the host, full logits matrix of the selected rows), since the masked static-shape
// logits matrix would not fit in memory at K = 2048.
// Timing: CUDA events on the engine stream, 3 warm-up calls, an L2 flush (memset of 2x the L2
// size) before every repeat, the median of the repeats. Roofline: this card's ceilings measured
// at start (bench_common.h: copy bandwidth, FP32 FMA rate; the launch cost is printed beside
// them, since at this scale a floor can be a few microseconds); these kernels run FP32 FMA.
// "floor" = max(bytes / BW, flops / FP32 rate) for the fused op's compulsory traffic. The last
// line per K, "RESULT K=...", gives each op's fwd+bwd speed-up and time over its floor against
// the goals (at least 3x faster than unfused, within 2x of the floor). *_tf32: the fused kernel
// with its products on the tensor cores (TF32, the `tf32` option), against the same unfused path;
// its floor is still the FP32 one (conservative: those FLOPs run at the tensor-core rate).
//
// Usage: bench_slotcon_kernels [repeats]   (default 20). No GPU: one line, exit 0.
//        bench_slotcon_kernels --smoke       every path once at a tiny scale (B = 2, D = 33,
//                                            K = 37, R = 2; timings meaningless): that the
//                                            benchmark itself runs (the CUDA emulator's ctest).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_common.h"
#include "bench/ceilings.cuh"
#include "engine/autograd.h"
#include "engine/cuda/context.h"
#include "engine/cuda_runtime.h"
#include "engine/ops.h"
#include "model/slotcon_loss_ops.h"

namespace {

using namespace sc;

using namespace bench;  // kPeak*, Bench, Ceilings

// The card's measured ceilings (main) and, per K, each op's fwd+bwd figures for the RESULT line.
Ceilings g_ceil;
struct Row {
  std::string op;
  double fused_ms, unfused_ms, floor_ms;
};
std::vector<Row> g_rows;

void report(const char* what, double fused_ms, double unfused_ms, double bytes, double flops) {
  const double floor_ms =
      std::max(bytes / (g_ceil.copy_gbs * 1e9), flops / (g_ceil.f32_tf * 1e12)) * 1e3;
  std::printf(
      "  %-34s fused %8.3f ms  %7.1f GB/s %6.2f TF/s | floor %7.3f ms (x%.2f) | "
      "unfused %8.3f ms (fused x%.2f faster)\n",
      what, fused_ms, bytes / (fused_ms * 1e-3) / 1e9, flops / (fused_ms * 1e-3) / 1e12, floor_ms,
      fused_ms / floor_ms, unfused_ms, unfused_ms / fused_ms);
  const std::string w = what;
  if (w.size() > 8 && w.compare(w.size() - 8, 8, " fwd+bwd") == 0)
    g_rows.push_back({w.substr(0, w.size() - 8), fused_ms, unfused_ms, floor_ms});
}

// One line per K for scripts/gpu_check.sh's table: each op's fwd+bwd speed-up over its unfused
// path and its time over the roofline floor, against issue 4's goals (>= 3x, <= 2x floor).
void result_line(int64_t K) {
  std::string speed, over;
  int met = 0;
  char buf[96];
  for (const Row& r : g_rows) {
    const double up = r.unfused_ms / r.fused_ms, x = r.fused_ms / r.floor_ms;
    std::snprintf(buf, sizeof buf, " %s=%.2f", r.op.c_str(), up);
    speed += buf;
    std::snprintf(buf, sizeof buf, " %s=%.1f", r.op.c_str(), x);
    over += buf;
    met += (up >= 3.0 && x <= 2.0) ? 1 : 0;
  }
  std::printf(
      "RESULT K=%lld fwd+bwd unfused/fused:%s | fused/floor:%s | both goals met by %d of %zu\n",
      (long long)K, speed.c_str(), over.c_str(), met, g_rows.size());
  g_rows.clear();
}

Tensor dev_rand(const Shape& s, Generator& gen, double lo, double hi, DType t = DType::F32) {
  return rand_uniform(s, gen, lo, hi, t, Device::cuda(0));
}

// Forward only, and forward + backward of sum(out * cot).
template <class F>
double time_fwd(Bench& b, F f) {
  return b.time_ms([&] {
    NoGradGuard ng;
    f();
  });
}
template <class F>
double time_fwd_bwd(Bench& b, const std::vector<Tensor>& leaves, const Tensor& cot, F f) {
  return b.time_ms([&] {
    Tensor out = f();
    sum(mul(out, cot)).backward();
    for (Tensor l : leaves) l.set_grad(Tensor());
  });
}

struct Scale {
  int64_t B = 64, D = 256, H = 7, W = 7, R = 8;
};

void run_scale(Bench& bench, int64_t K, const Scale& sc_) {
  const int64_t B = sc_.B, D = sc_.D, H = sc_.H, W = sc_.W, P = H * W, R = sc_.R;
  const double f4 = 4.0;
  Generator gen(1234 + uint64_t(K));
  std::printf("K = %lld (B = %lld, D = %lld, P = %lld, R = %lld)\n", (long long)K, (long long)B,
              (long long)D, (long long)P, (long long)R);

  // ---- proto_assign
  Tensor x = dev_rand({B, D, H, W}, gen, -1, 1), protos = dev_rand({K, D}, gen, -1, 1);
  x.set_requires_grad(true);
  protos.set_requires_grad(true);
  Tensor cot_bkp2 = dev_rand({2, B, K, P}, gen, -1, 1);
  // fused (optionally with TF32 tensor-core GEMMs) or unfused
  auto pa = [&](bool fz, bool tf32 = false) {
    GroupingScores g =
        fz ? fused::proto_assign(x, protos, 0.07, tf32) : unfused::proto_assign(x, protos, 0.07);
    return concat({unsqueeze(g.dots, 0), unsqueeze(g.attn, 0)}, 0);
  };
  {
    const double bytes = f4 * double(B * D * P + K * D + 2 * B * K * P);
    const double flops = 2.0 * double(B * K * D * P);
    const double unf = time_fwd(bench, [&] { unfused::proto_assign(x, protos, 0.07); });
    report("proto_assign fwd", time_fwd(bench, [&] { fused::proto_assign(x, protos, 0.07); }), unf,
           bytes, flops);
    report("proto_assign_tf32 fwd",
           time_fwd(bench, [&] { fused::proto_assign(x, protos, 0.07, true); }), unf, bytes, flops);
    // fwd+bwd (the concat adds the same copy to both paths)
    const double unf_b = time_fwd_bwd(bench, {x, protos}, cot_bkp2, [&] { return pa(false); });
    const double bytes_b = bytes + f4 * double(2 * B * K * P + B * D * P + K * D);
    report("proto_assign fwd+bwd",
           time_fwd_bwd(bench, {x, protos}, cot_bkp2, [&] { return pa(true); }), unf_b, bytes_b,
           3 * flops);
    report("proto_assign_tf32 fwd+bwd",
           time_fwd_bwd(bench, {x, protos}, cot_bkp2, [&] { return pa(true, true); }), unf_b,
           bytes_b, 3 * flops);
  }
  // ---- slot_pool
  Tensor attn;
  {
    NoGradGuard ng;
    attn = fused::proto_assign(x, protos, 0.07).attn;
  }
  attn.set_requires_grad(true);
  Tensor cot_bkd = dev_rand({B, K, D}, gen, -1, 1);
  {
    const double bytes = f4 * double(B * D * P + B * K * P + B * K * D);
    const double flops = 2.0 * double(B * K * D * P);
    const double unf = time_fwd(bench, [&] { unfused::slot_pool(x, attn); });
    report("slot_pool fwd", time_fwd(bench, [&] { fused::slot_pool(x, attn); }), unf, bytes, flops);
    report("slot_pool_tf32 fwd", time_fwd(bench, [&] { fused::slot_pool(x, attn, true); }), unf,
           bytes, flops);
    const double unf_b =
        time_fwd_bwd(bench, {x, attn}, cot_bkd, [&] { return unfused::slot_pool(x, attn); });
    const double bytes_b = bytes + f4 * double(2 * B * K * P + 2 * B * D * P + B * K * D);
    report("slot_pool fwd+bwd",
           time_fwd_bwd(bench, {x, attn}, cot_bkd, [&] { return fused::slot_pool(x, attn); }),
           unf_b, bytes_b, 3 * flops);
    report("slot_pool_tf32 fwd+bwd",
           time_fwd_bwd(bench, {x, attn}, cot_bkd, [&] { return fused::slot_pool(x, attn, true); }),
           unf_b, bytes_b, 3 * flops);
  }
  // ---- view_align
  Tensor scores = dev_rand({B, K, P}, gen, -1, 1);
  scores.set_requires_grad(true);
  std::vector<double> bx(static_cast<size_t>(4 * B)), fl(static_cast<size_t>(B));
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> u(0, 1);
  for (int64_t b = 0; b < B; ++b) {
    const double x1 = 0.4 * u(rng), y1 = 0.4 * u(rng);
    bx[size_t(4 * b)] = x1;
    bx[size_t(4 * b + 1)] = y1;
    bx[size_t(4 * b + 2)] = x1 + 0.3 + 0.3 * u(rng);
    bx[size_t(4 * b + 3)] = y1 + 0.3 + 0.3 * u(rng);
    fl[size_t(b)] = u(rng) < 0.5 ? 1 : 0;
  }
  Tensor boxes = from_vector(bx, {B, 4}, DType::F32, Device::cuda(0));
  Tensor flips = from_vector(fl, {B}, DType::U8, Device::cuda(0));
  Tensor cot_bkp = dev_rand({B, K, P}, gen, -1, 1);
  {
    const double bytes = f4 * double(2 * B * K * P);
    const double flops = 8.0 * double(B * K * P);
    report("view_align fwd",
           time_fwd(bench, [&] { fused::view_align(scores, boxes, flips, H, W); }),
           time_fwd(bench, [&] { unfused::view_align(scores, boxes, flips, H, W); }), bytes, flops);
    report("view_align fwd+bwd",
           time_fwd_bwd(bench, {scores}, cot_bkp,
                        [&] { return fused::view_align(scores, boxes, flips, H, W); }),
           time_fwd_bwd(bench, {scores}, cot_bkp,
                        [&] { return unfused::view_align(scores, boxes, flips, H, W); }),
           2 * bytes, 2 * flops);
  }
  // ---- self_distill
  Tensor teacher = dev_rand({B, K, P}, gen, -1, 1), raw = dev_rand({B, K, P}, gen, -1, 1);
  Tensor center = dev_rand({K}, gen, -0.1, 0.1);
  Tensor one = full({}, 1.0, DType::F32, Device::cuda(0));
  {
    const double bytes = f4 * double(3 * B * K * P);
    const double flops = 10.0 * double(B * K * P);
    report("self_distill fwd (+center)",
           time_fwd(bench, [&] { fused::self_distill(scores, teacher, center, 0.1, 0.07, raw); }),
           time_fwd(bench, [&] { unfused::self_distill(scores, teacher, center, 0.1, 0.07, raw); }),
           bytes, flops);
    report("self_distill fwd+bwd",
           time_fwd_bwd(
               bench, {scores}, one,
               [&] { return fused::self_distill(scores, teacher, center, 0.1, 0.07, raw).loss; }),
           time_fwd_bwd(
               bench, {scores}, one,
               [&] { return unfused::self_distill(scores, teacher, center, 0.1, 0.07, raw).loss; }),
           bytes + f4 * double(3 * B * K * P), 2 * flops);
  }
  // ---- slot_contrast: correlated student / teacher scores so that ~all present slots overlap
  {
    const int64_t N = B * K, NK = R * N;
    Tensor dq = dev_rand({B, K, P}, gen, -1, 1);
    Tensor dk = add(dq, dev_rand({B, K, P}, gen, -0.01, 0.01));
    Tensor pk = fused::slot_presence(dk);
    Tensor qm = reshape(fused::slot_presence(dq, pk), {N});
    // Keys of the other ranks: this rank's presence pattern shifted, so every rank has ~P slots.
    std::vector<Tensor> kms;
    for (int64_t r = 0; r < R; ++r) kms.push_back(reshape(pk, {N}));
    Tensor km = concat(kms, 0);
    Tensor z = dev_rand({N, D}, gen, -1, 1), keys = dev_rand({NK, D}, gen, -1, 1);
    z.set_requires_grad(true);
    const double nq = sum(cast(qm, DType::F32)).item(), nk = sum(cast(km, DType::F32)).item();
    const double flops = 2.0 * nq * nk * double(D);
    const double bytes = f4 * (nq + nk) * double(D) + double(N + NK);
    // Unfused: the authors' compact formulation (host-side selection).
    auto unfused_fwd = [&]() {
      Tensor zc = masked_select_rows(z, qm), kc = masked_select_rows(keys, km);
      Tensor lab = masked_select_rows(slice(keys, 0, 0, N), qm);  // rank 0's own keys
      Tensor zn = l2_normalize(zc, 1), kn = l2_normalize(kc, 1), ln = l2_normalize(lab, 1);
      Tensor logits = mul_scalar(matmul(zn, transpose(kn, 0, 1)), 5.0);
      Tensor lse = log(sum(exp(logits), {1}));
      Tensor picked = mul_scalar(sum(mul(zn, ln), {1}), 5.0);
      return mul_scalar(mean(sub(lse, picked)), 0.4);
    };
    report("slot_contrast fwd",
           time_fwd(bench, [&] { fused::slot_contrast(z, keys, qm, km, 0, 0.2); }),
           time_fwd(bench, unfused_fwd), bytes, flops);
    report("slot_contrast fwd+bwd",
           time_fwd_bwd(bench, {z}, one,
                        [&] { return fused::slot_contrast(z, keys, qm, km, 0, 0.2); }),
           time_fwd_bwd(bench, {z}, one, unfused_fwd), 2 * bytes, 3 * flops);
    // The same with the logits tiles on the tensor cores (TF32), against the same unfused path.
    report("slot_contrast_tf32 fwd",
           time_fwd(bench, [&] { fused::slot_contrast(z, keys, qm, km, 0, 0.2, true); }),
           time_fwd(bench, unfused_fwd), bytes, flops);
    report("slot_contrast_tf32 fwd+bwd",
           time_fwd_bwd(bench, {z}, one,
                        [&] { return fused::slot_contrast(z, keys, qm, km, 0, 0.2, true); }),
           time_fwd_bwd(bench, {z}, one, unfused_fwd), 2 * bytes, 3 * flops);
    std::printf("  (contrast: %.0f valid queries x %.0f valid keys of %lld x %lld rows)\n", nq, nk,
                (long long)N, (long long)NK);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (!sc::cuda_available()) {
    std::printf("bench_slotcon_kernels: no CUDA device, nothing to measure\n");
    return 0;
  }
  const bool smoke = argc > 1 && std::string(argv[1]) == "--smoke";
  const int repeats = smoke ? 1 : argc > 1 ? std::max(1, std::atoi(argv[1])) : 20;
  g_ceil = measure_ceilings(smoke);
  std::printf(
      "bench_slotcon_kernels on %s; F32 throughout. Roofline from this card, measured now: "
      "copy %.0f GB/s (read + write), FP32 FMA %.1f TFLOP/s; one kernel launch %.2f us "
      "(an H100 SXM's datasheet: %.0f GB/s, %.0f TFLOP/s FP32)\n",
      sc::cuda_device_name(0).c_str(), g_ceil.copy_gbs, g_ceil.f32_tf, g_ceil.launch_us, kPeakGBs,
      kPeakF32TF);
  Bench bench(repeats);
  if (smoke) {
    std::printf("--smoke: tiny scale, timings meaningless\n");
    run_scale(bench, 37, Scale{2, 33, 5, 5, 2});
    result_line(37);
    return 0;
  }
  for (int64_t K : {256, 2048}) {
    run_scale(bench, K, Scale{});
    result_line(K);
  }
  return 0;
}
