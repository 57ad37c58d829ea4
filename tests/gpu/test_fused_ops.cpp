// GPU-vs-CPU tests of SlotCon's fused head ops as engine ops (model/slotcon_loss_ops.h,
// sc::fused::*), op by op: each op runs through its front door on CPU tensors (the CPU reference
// kernels) and on Device::cuda() copies of the same fresh random inputs (the CUDA kernels, the
// engine's workspaces and stream), every forward output is compared element by element, then the
// same random cotangent is backpropagated through both with the engine's autograd and every input
// gradient is compared. tests/gpu/test_slotcon_kernels.cpp checks the raw kernels; this file
// checks what the model actually calls: the custom-op plumbing (shapes, .contiguous() of views,
// which tensors the backward closure saves, null gradient pointers, +=/= conventions through the
// leaves' .grad()) on both devices.
//
// Precisions: F32 with the tf32 option off, F32 with it on (proto_assign, slot_pool and
// slot_contrast have one; on the CPU it does nothing, so the CPU side is the exact F32 reference)
// and F64. Sizes: awkward (K = 37, D = 33, P = 49, 148 contrast rows), K = 1, P = 1, slot_contrast
// with keys from 3 ranks (rank 1 and rank 2 of 3) and an all-false query mask, and B = 0, which
// every fused op rejects with a clear sc::Error ("empty shape"; the kernels require B >= 1).
// Allocations are poisoned (NaN) so an element a kernel forgets to write fails.
//
// Tolerances: the derivation of test_slotcon_kernels.cpp, which compares the same kernels, plus
// one term for what differs at the engine level: there each kernel test feeds the CPU's forward
// results (dots, slots, statistics) to both backward passes, here each side's backward reads its
// own forward results, so a gradient carries the forward's error as well as its own.
//   F64: 1e-10 (the GPU sums in another order).
//   F32: the CPU reference sums in double, the GPU in float: ~1e-6 relative, amplified by 1/tau
//     where a softmax over logits / tau follows: tol = max(1e-4, 2e-6 / tau).
//   TF32: operands rounded to 10 mantissa bits (relative 2^-11), float accumulation:
//     kTf32GemmTol = 2e-2 for the products (the kernel test saw up to 2.5e-3), a softmax over
//     logits / tau moves by up to 2e-3 / tau, the contrast's unit-vector logits by 1e-3 / tau.
//   Gradients: the backward's own error plus the error of the forward results it reads, each
//     bounded as above: 2x the forward tolerance (self_distill: 2x the kernel test's 4x, which
//     covers probabilities recomputed from float logits and a float log-sum-exp).
// Every comparison is relative with a floor: |got - want| <= tol (|want| + 0.1 max|want|), so an
// all-zero reference (the empty contrast) must be matched exactly; results that are 0 in exact
// arithmetic but not in rounding (K = 1, P = 1 gradients) get the size of the cancelling terms as
// the floor instead. Seen on the emulator over 170 seeds: at most 0.6 of a tolerance used (TF32
// gradients of a 6-row contrast), F32 at most 0.1, F64 at most 3e-4 (SLOTCON_TOL_REPORT=1 prints
// the fraction used by every comparison).
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "gpu_test_util.h"
#include "model/slotcon_loss_ops.h"
#include "predictor_paths.h"

using namespace sc;
using namespace sc::testing;

namespace {

// One precision of the fused ops.
struct Prec {
  DType dt;
  bool tf32;
  const char* name;
};
const Prec kF32{DType::F32, false, "F32"};
const Prec kTF32{DType::F32, true, "F32 tf32"};
const Prec kF64{DType::F64, false, "F64"};

bool tf32_on(const Prec& p) { return p.tf32 && p.dt == DType::F32; }

// test_slotcon_kernels.cpp's base tolerance (see the file comment).
double base_tol(const Prec& p, double tau = 1.0) {
  if (p.dt == DType::F64) return 1e-10;
  return std::max(1e-4, 2e-6 / tau);
}
constexpr double kTf32GemmTol = 2e-2;

// The worst |got - want| / (tol (|want| + max(0.1 max|want|, floor))) over the elements (infinite
// for a non-finite `got`, NaN included), and that element. `floor` is for results that are exactly
// 0 in exact arithmetic (the gradients of a K = 1 softmax, of a one-pixel pooling): there
// max|want| is rounding noise, and the scale of the error is that of the terms that cancel, which
// the caller knows.
struct Worst {
  double ratio = 0;
  size_t index = 0;
};
Worst worst_rel(const std::vector<double>& g, const std::vector<double>& w, double tol,
                double floor) {
  double mx = 0;
  for (double v : w) mx = std::max(mx, std::fabs(v));
  Worst r;
  for (size_t i = 0; i < g.size(); ++i) {
    const double lim = tol * (std::fabs(w[i]) + std::max(0.1 * mx, floor)) + 1e-300;
    const double e = std::isfinite(g[i]) ? std::fabs(g[i] - w[i]) / lim : INFINITY;
    if (e > r.ratio) r = {e, i};
  }
  return r;
}

// Every element of `got` (CUDA) within the tolerance of `want` (CPU); the message names the
// worst. SLOTCON_TOL_REPORT=1 prints the worst ratio of every comparison (how much of the
// tolerance is used).
void check_rel(const std::string& what, const Tensor& got, const Tensor& want, double tol,
               double floor = 0) {
  INFO(what);
  REQUIRE(got.defined());
  REQUIRE(want.defined());
  REQUIRE(got.shape() == want.shape());
  const std::vector<double> g = got.to_vector(), w = want.to_vector();
  const Worst r = worst_rel(g, w, tol, floor);
  if (std::getenv("SLOTCON_TOL_REPORT"))
    std::printf("tol-report %s: worst error / tolerance %.3g\n", what.c_str(), r.ratio);
  INFO("element " << r.index << " of " << g.size() << " (shape " << shape_str(got.shape())
                  << "): got " << (g.empty() ? 0.0 : g[r.index]) << ", want "
                  << (w.empty() ? 0.0 : w[r.index]) << " (error / tolerance " << r.ratio << ", tol "
                  << tol << ")");
  CHECK(r.ratio <= 1.0);
}

// An input of the op: host values (in the tested dtype) and, when it is differentiated, the
// tolerance of its gradient (and the floor of rel_mismatch, for gradients that are exactly 0).
struct Input {
  const char* name;
  Tensor host;
  bool grad = false;
  double grad_tol = 0;
  double grad_floor = 0;
};
// An output: its tolerance and whether a cotangent flows into it.
struct Output {
  const char* name;
  double tol;
  bool differentiable;
};
using Fn = std::function<std::vector<Tensor>(const std::vector<Tensor>&)>;

// f on CPU tensors and on CUDA copies of the same inputs: every output, then every gradient of
// the sum over differentiable outputs of <output, cotangent>. A single differentiable output is
// differentiated with output.backward(cotangent); several (proto_assign's dots and attn) through
// the scalar sum_o sum(output_o * cotangent_o), whose backward hands the op exactly the
// cotangents (mul's gradient of a ones tensor), in one backward call so the kernel sees both.
void check_fused(const std::string& name, const Prec& p, const std::vector<Input>& ins,
                 const std::vector<Output>& outs, const Fn& f, Generator& gen) {
  INFO(name << " [" << p.name << "]");
  PoisonGuard poison;
  std::vector<Tensor> xc, xg;
  for (const Input& in : ins) {
    REQUIRE(in.host.dtype() == p.dt);
    Twin t = twin(in.host, p.dt);
    if (in.grad) {
      t.cpu.set_requires_grad(true);
      t.gpu.set_requires_grad(true);
    }
    xc.push_back(t.cpu);
    xg.push_back(t.gpu);
  }
  const std::vector<Tensor> yc = f(xc), yg = f(xg);
  REQUIRE(yc.size() == outs.size());
  REQUIRE(yg.size() == outs.size());
  std::vector<size_t> diff;
  for (size_t o = 0; o < outs.size(); ++o) {
    INFO("output " << outs[o].name);
    REQUIRE(yg[o].defined());
    CHECK(yg[o].is_cuda());
    CHECK(yg[o].dtype() == yc[o].dtype());
    check_rel(name + " [" + p.name + "] " + outs[o].name, yg[o], yc[o], outs[o].tol);
    if (outs[o].differentiable) diff.push_back(o);
  }
  if (diff.empty()) return;
  std::vector<Twin> cot;
  for (size_t o : diff) cot.push_back(twin_uniform(yc[o].shape(), gen, p.dt));
  if (diff.size() == 1) {
    yc[diff[0]].backward(cot[0].cpu);
    yg[diff[0]].backward(cot[0].gpu);
  } else {
    Tensor lc, lg;
    for (size_t i = 0; i < diff.size(); ++i) {
      const Tensor tc = sum(mul(yc[diff[i]], cot[i].cpu)), tg = sum(mul(yg[diff[i]], cot[i].gpu));
      lc = i == 0 ? tc : add(lc, tc);
      lg = i == 0 ? tg : add(lg, tg);
    }
    lc.backward();
    lg.backward();
  }
  for (size_t i = 0; i < ins.size(); ++i) {
    if (!ins[i].grad) continue;
    INFO("gradient of " << ins[i].name);
    REQUIRE(xc[i].grad().defined());
    REQUIRE(xg[i].grad().defined());
    CHECK(xg[i].grad().is_cuda());
    CHECK(xg[i].grad().dtype() == p.dt);
    check_rel(name + " [" + p.name + "] d" + ins[i].name, xg[i].grad(), xc[i].grad(),
              ins[i].grad_tol, ins[i].grad_floor);
  }
}

// Constants that are not differentiated (masks, boxes, teacher maps): the same values on the
// device of `like`.
Tensor on(const Tensor& host, const Tensor& like) { return to_device(host, like.device()); }

Tensor uniform(const Shape& s, Generator& gen, const Prec& p, double lo = -1, double hi = 1) {
  return rand_uniform(s, gen, lo, hi, p.dt);
}

Tensor bernoulli_u8(int64_t n, Generator& gen, double p_one) {
  std::vector<double> v(static_cast<size_t>(n));
  for (double& x : v) x = gen.uniform() < p_one ? 1 : 0;
  return from_vector(v, {n}, DType::U8);
}

// An empty batch is refused by both devices with the kernels' clear sc::Error.
void check_rejects_empty(const std::string& name, const std::function<void(Device)>& f,
                         const std::string& message) {
  INFO(name);
  for (Device d : {Device::cpu(), Device::cuda(0)}) {
    INFO("on " << d.str());
    CHECK_THROWS_AS(f(d), Error);
    CHECK_THROWS_WITH(f(d), Catch::Contains(message));
  }
}

Tensor leaf_on(const Shape& s, Device d, Generator& gen) {
  Tensor t = to_device(rand_uniform(s, gen, -1, 1, DType::F32), d).detach();
  t.set_requires_grad(true);
  return t;
}

// ---------------------------------------------------------------- proto_assign
// x (B, D, H, W) (or, with `transposed`, a (B, P, D) tensor passed as its (B, D, P) permuted
// view, so the op's .contiguous() and its gradient are on the path); protos (K, D).
void proto_assign_case(const Prec& p, int64_t B, int64_t K, int64_t D, int64_t H, int64_t W,
                       double tau, Generator& gen, bool transposed = false) {
  const int64_t P = H * W;
  // Pixel 3 of image 0 is prototype 1 scaled (a peaky column: its softmax saturates at small tau).
  std::vector<double> x =
      rand_uniform(transposed ? Shape{B, P, D} : Shape{B, D, H, W}, gen, -2, 2, p.dt).to_vector();
  const Tensor protos = uniform({K, D}, gen, p);
  if (K >= 2 && P >= 4) {
    const std::vector<double> pr = protos.to_vector();
    for (int64_t d = 0; d < D; ++d)
      x[size_t(transposed ? 3 * D + d : d * P + 3)] = 3.0 * pr[size_t(D + d)];
  }
  const double t_fwd = tf32_on(p) ? std::max(kTf32GemmTol, 2e-3 / tau) : base_tol(p, tau);
  const double t_dots = tf32_on(p) ? kTf32GemmTol : base_tol(p);
  const double t_grad = 2 * t_fwd;
  const bool tf = p.tf32;
  check_fused(
      str_cat("proto_assign B=", B, " K=", K, " D=", D, " P=", P, " tau=", tau,
              transposed ? " (x a transposed view)" : ""),
      p,
      {{"x", from_vector(x, transposed ? Shape{B, P, D} : Shape{B, D, H, W}, p.dt), true, t_grad},
       {"protos", protos, true, t_grad}},
      {{"dots", t_dots, true}, {"attn", t_fwd, true}},
      [=](const std::vector<Tensor>& in) {
        const Tensor xv = transposed ? permute(in[0], {0, 2, 1}) : in[0];
        const GroupingScores g = fused::proto_assign(xv, in[1], tau, tf);
        return std::vector<Tensor>{g.dots, g.attn};
      },
      gen);
}

TEST_CASE("fused proto_assign on CUDA matches the CPU op: values and gradients",
          "[gpu][fused][proto_assign]") {
  Generator gen(fresh_seed());
  for (const Prec& p : {kF32, kTF32, kF64}) {
    proto_assign_case(p, 3, 37, 33, 7, 7, 0.07, gen);
    proto_assign_case(p, 2, 5, 3, 13, 10, 0.5, gen, /*transposed=*/true);  // P = 130 > 64
    proto_assign_case(p, 3, 1, 7, 1, 1, 0.07, gen);                        // K = 1, P = 1
  }
  check_rejects_empty(
      "proto_assign B=0",
      [&](Device d) {
        fused::proto_assign(leaf_on({0, 5, 3, 3}, d, gen), leaf_on({4, 5}, d, gen), 0.1);
      },
      "empty shape");
}

// ---------------------------------------------------------------- slot_pool
void slot_pool_case(const Prec& p, int64_t B, int64_t K, int64_t D, int64_t P, Generator& gen) {
  const double t = tf32_on(p) ? kTf32GemmTol : base_tol(p);
  const bool tf = p.tf32;
  // attn as proto_assign makes it: positive. Kept away from 0 (>= 1e-3), so no row's normaliser
  // is tiny (the kernel test's near-empty rows, which need 10x on dL/dattn, are its business).
  // With P = 1, slots = x and dL/dattn = (<g, x> - <g, slots>) / a = 0 exactly: what is left is
  // the rounding of two terms of size |<g, x>| / a <= sum_d |g_d| |x_d| / a <= 2 D / a; attn is
  // drawn in [0.5, 1] there (a >= 0.5) and the floor is that bound, 4 D.
  const double attn_lo = P == 1 ? 0.5 : 1e-3;
  check_fused(
      str_cat("slot_pool B=", B, " K=", K, " D=", D, " P=", P), p,
      {{"x", uniform({B, D, P}, gen, p, -2, 2), true, 2 * t},
       {"attn", uniform({B, K, P}, gen, p, attn_lo, 1), true, 2 * t,
        P == 1 ? 4.0 * double(D) : 0.0}},
      {{"slots", t, true}},
      [=](const std::vector<Tensor>& in) {
        return std::vector<Tensor>{fused::slot_pool(in[0], in[1], tf)};
      },
      gen);
}

TEST_CASE("fused slot_pool on CUDA matches the CPU op: values and gradients",
          "[gpu][fused][slot_pool]") {
  Generator gen(fresh_seed());
  for (const Prec& p : {kF32, kTF32, kF64}) {
    slot_pool_case(p, 3, 37, 33, 49, gen);
    slot_pool_case(p, 1, 70, 65, 130, gen);  // K > 64, P > 64: several tiles
    slot_pool_case(p, 3, 1, 7, 1, gen);      // K = 1, P = 1
  }
  check_rejects_empty(
      "slot_pool B=0",
      [&](Device d) {
        Tensor a = to_device(rand_uniform({0, 4, 9}, gen, 0.1, 1), d);
        fused::slot_pool(leaf_on({0, 5, 9}, d, gen), a);
      },
      "empty shape");
}

// ---------------------------------------------------------------- view_align
// Boxes as in the kernel test, cycling over: the full view, touching the left / top, touching the
// right / bottom, larger than the map (2 x 2 samples per bin), and two random inside boxes;
// flips random with image 0 unflipped and image 1 flipped.
void view_align_case(const Prec& p, int64_t B, int64_t K, int64_t H, int64_t W, Generator& gen) {
  std::vector<double> boxes(static_cast<size_t>(4 * B));
  for (int64_t b = 0; b < B; ++b) {
    double x1 = gen.uniform() * 0.6, y1 = gen.uniform() * 0.6;
    double x2 = x1 + 0.1 + gen.uniform() * (0.9 - x1), y2 = y1 + 0.1 + gen.uniform() * (0.9 - y1);
    if (b % 6 == 0) x1 = y1 = 0, x2 = y2 = 1;
    if (b % 6 == 1) x1 = y1 = 0;
    if (b % 6 == 2) x2 = y2 = 1;
    if (b % 6 == 3) x1 = -0.3, y1 = -0.2, x2 = 1.4, y2 = 1.1;
    for (int j = 0; j < 4; ++j)
      boxes[size_t(4 * b + j)] = j == 0 ? x1 : j == 1 ? y1 : j == 2 ? x2 : y2;
  }
  Tensor bx = from_vector(boxes, {B, 4}, p.dt);
  std::vector<double> fl = bernoulli_u8(B, gen, 0.5).to_vector();
  fl[0] = 0;
  if (B > 1) fl[1] = 1;
  Tensor flips = from_vector(fl, {B}, DType::U8);
  // A linear map with at most 4 taps x 4 samples per output: float rounding only (the kernel
  // test's 0.1 x base), and the backward reads no forward result.
  const double t = 0.1 * base_tol(p);
  check_fused(
      str_cat("view_align B=", B, " K=", K, " H=", H, " W=", W), p,
      {{"scores", uniform({B, K, H * W}, gen, p), true, t}}, {{"aligned", t, true}},
      [=](const std::vector<Tensor>& in) {
        return std::vector<Tensor>{fused::view_align(in[0], on(bx, in[0]), on(flips, in[0]), H, W)};
      },
      gen);
}

TEST_CASE("fused view_align on CUDA matches the CPU op: values and gradients",
          "[gpu][fused][view_align]") {
  Generator gen(fresh_seed());
  for (const Prec& p : {kF32, kF64}) {  // no tf32 option (no products)
    view_align_case(p, 12, 37, 7, 7, gen);
    view_align_case(p, 6, 3, 9, 13, gen);  // H != W
    view_align_case(p, 4, 1, 1, 1, gen);   // K = 1 on a 1 x 1 map (P = 1)
  }
  check_rejects_empty(
      "view_align B=0",
      [&](Device d) {
        fused::view_align(leaf_on({0, 4, 9}, d, gen), to_device(zeros({0, 4}), d),
                          to_device(zeros({0}, DType::U8), d), 3, 3);
      },
      "empty shape");
}

// ---------------------------------------------------------------- self_distill
void self_distill_case(const Prec& p, int64_t B, int64_t K, int64_t P, double ts, double tt,
                       Generator& gen) {
  const Tensor teacher = uniform({B, K, P}, gen, p), raw = uniform({B, K, P}, gen, p);
  std::vector<double> c = uniform({K}, gen, p, -0.3, 0.3).to_vector();
  if (K >= 2) c[1] = -4;  // the centred teacher prefers prototype 1 everywhere (peaky targets)
  const Tensor center = from_vector(c, {K}, p.dt);
  const double t = base_tol(p, std::min(ts, tt));
  // dL/da = g (softmax(a / tau_s) - w) / (tau_s B P), |g| <= 1: with K = 1 both probabilities are
  // 1 and the gradient is 0 exactly; the floor is the size of the terms, 1 / (tau_s B P).
  const double floor = K == 1 ? 1.0 / (ts * double(B * P)) : 0.0;
  check_fused(
      str_cat("self_distill B=", B, " K=", K, " P=", P, " tau_s=", ts, " tau_t=", tt), p,
      {{"student", uniform({B, K, P}, gen, p), true, p.dt == DType::F64 ? 2 * t : 8 * t, floor}},
      {{"loss", t, true}, {"center_mean", base_tol(p), false}},
      [=](const std::vector<Tensor>& in) {
        const SelfDistillResult r = fused::self_distill(in[0], on(teacher, in[0]),
                                                        on(center, in[0]), ts, tt, on(raw, in[0]));
        return std::vector<Tensor>{r.loss, r.center_mean};
      },
      gen);
}

TEST_CASE("fused self_distill on CUDA matches the CPU op: values and gradients",
          "[gpu][fused][self_distill]") {
  Generator gen(fresh_seed());
  for (const Prec& p : {kF32, kF64}) {  // no tf32 option (no products)
    self_distill_case(p, 3, 37, 49, 0.1, 0.07, gen);
    self_distill_case(p, 2, 37, 49, 0.01, 0.01, gen);
    self_distill_case(p, 3, 5, 1, 0.1, 0.07, gen);  // P = 1
    self_distill_case(p, 2, 1, 7, 0.1, 0.07, gen);  // K = 1: loss 0, gradient 0
  }
  check_rejects_empty(
      "self_distill B=0",
      [&](Device d) {
        Tensor t = to_device(zeros({0, 4, 9}), d), c = to_device(zeros({4}), d);
        fused::self_distill(leaf_on({0, 4, 9}, d, gen), t, c, 0.1, 0.07, t);
      },
      "empty shape");
}

// ---------------------------------------------------------------- slot_presence
TEST_CASE("fused slot_presence on CUDA matches the CPU op exactly", "[gpu][fused][slot_contrast]") {
  Generator gen(fresh_seed());
  struct Case {
    int64_t B, K, P;
  };
  for (const Prec& p : {kF32, kF64})
    for (Case c : {Case{4, 37, 49}, Case{3, 10, 70}, Case{2, 1, 5}, Case{3, 6, 1}}) {
      INFO("slot_presence B=" << c.B << " K=" << c.K << " P=" << c.P << " [" << p.name << "]");
      std::vector<double> dots = uniform({c.B, c.K, c.P}, gen, p).to_vector();
      // Image 0 never picks prototype K-1; image 1 picks prototype 0 everywhere.
      for (int64_t q = 0; q < c.P && c.K >= 2; ++q) {
        dots[size_t((c.K - 1) * c.P + q)] = -2;
        dots[size_t(c.B >= 2 ? c.K * c.P + q : q)] = 2;
      }
      const Tensor host = from_vector(dots, {c.B, c.K, c.P}, p.dt);
      const Tensor am = bernoulli_u8(c.B * c.K, gen, 0.5);
      const Tensor dg = to_device(host, Device::cuda(0));
      const Tensor got = fused::slot_presence(dg), want = fused::slot_presence(host);
      CHECK(got.is_cuda());
      CHECK(got.dtype() == DType::U8);
      CHECK(got.to_vector() == want.to_vector());
      const Tensor got_and = fused::slot_presence(dg, to_device(am, Device::cuda(0)));
      CHECK(got_and.to_vector() == fused::slot_presence(host, am).to_vector());
    }
  check_rejects_empty(
      "slot_presence B=0",
      [](Device d) {
        fused::slot_presence(to_device(zeros({0, 4, 9}), d));
      },
      "empty shape");
}

// ---------------------------------------------------------------- slot_contrast
// z (N, D) with N = B*K, keys (R*N, D) from R ranks (this one `rank`), both differentiated; query
// and key masks random with P(valid) = p_valid (0: the all-false query mask).
void slot_contrast_case(const Prec& p, int64_t B, int64_t K, int64_t D, int64_t R, int64_t rank,
                        double tau, double p_valid, Generator& gen) {
  const int64_t N = B * K;
  const Tensor keys = uniform({R * N, D}, gen, p, -2, 2);
  // Query 0 equals its label key (a confident row).
  std::vector<double> z = uniform({N, D}, gen, p, -2, 2).to_vector();
  const std::vector<double> kv = keys.to_vector();
  for (int64_t d = 0; d < D; ++d) z[size_t(d)] = kv[size_t(rank * N * D + d)];
  const Tensor qm = bernoulli_u8(N, gen, p_valid),
               km = bernoulli_u8(R * N, gen, p_valid > 0 ? p_valid : 0.7);
  const double t = tf32_on(p) ? 1e-3 / tau : base_tol(p, tau);
  const bool tf = p.tf32;
  check_fused(
      str_cat("slot_contrast B=", B, " K=", K, " D=", D, " R=", R, " rank=", rank, " tau=", tau,
              " p_valid=", p_valid),
      p, {{"z", from_vector(z, {N, D}, p.dt), true, 2 * t}, {"keys", keys, true, 2 * t}},
      {{"loss", t, true}},
      [=](const std::vector<Tensor>& in) {
        return std::vector<Tensor>{
            fused::slot_contrast(in[0], in[1], on(qm, in[0]), on(km, in[0]), rank, tau, tf)};
      },
      gen);
}

TEST_CASE("fused slot_contrast on CUDA matches the CPU op: values and gradients",
          "[gpu][fused][slot_contrast]") {
  Generator gen(fresh_seed());
  for (const Prec& p : {kF32, kTF32, kF64}) {
    slot_contrast_case(p, 4, 37, 33, 3, 1, 0.2, 0.6, gen);   // keys from 3 ranks, rank 1
    slot_contrast_case(p, 4, 37, 33, 3, 2, 0.05, 0.6, gen);  // the last rank, small tau
    slot_contrast_case(p, 2, 20, 300, 2, 0, 0.2, 0.8, gen);  // D > 256: several D chunks
    slot_contrast_case(p, 2, 37, 16, 3, 1, 0.2, 0.0, gen);   // all-false query mask: 0, 0, 0
    slot_contrast_case(p, 3, 1, 8, 2, 1, 0.2, 1.0, gen);     // K = 1, every row valid
  }
  check_rejects_empty(
      "slot_contrast B=0 (no rows)",
      [&](Device d) {
        Tensor m = to_device(zeros({0}, DType::U8), d);
        fused::slot_contrast(leaf_on({0, 5}, d, gen), leaf_on({0, 5}, d, gen), m, m, 0, 0.2);
      },
      "slot_contrast");
}

}  // namespace

TEST_CASE("slotcon loss on CUDA: the predictor on the compacted present rows equals the masked "
          "path", "[gpu][fused][slotcon_loss]") {
  // tests/predictor_paths.h on the device (compaction, gather and scatter kernels, the BatchNorm
  // row masks on M rows), both paths on CUDA, then the compact path against the CPU's masked path.
  // Same device: the BatchNorm and GEMM reductions over M rows instead of B*K may sum in another
  // order, so a few float / double round-offs. Against the CPU: the fused ops' tolerances at this
  // level (F64 1e-10; F32 max(1e-4, 2e-6 / tau) for the contrast's tau = 0.2, 2x for gradients).
  PoisonGuard poison;
  const testing::PredictorPathCase cases[] = {{3, 37, 33, 2, 3, 40}, {2, 70, 8, 2, 2, 9}};
  for (const auto& c : cases) {
    for (DType dt : {DType::F64, DType::F32}) {
      uint64_t seed = 0;
      const auto compact = testing::run_compact_with_present(c, dt, Device::cuda(0), &seed);
      INFO("B " << c.B << " K " << c.K << " P " << c.H * c.W << " " << dtype_name(dt) << " seed "
                << seed);
      const auto masked = testing::run_slotcon_loss(c, seed, dt, Device::cuda(0), false);
      const auto cpu = testing::run_slotcon_loss(c, seed, dt, Device::cpu(), false);
      std::string worst, worst_cpu;
      const double d = testing::max_rel_diff(compact, masked, &worst);
      const double dc = testing::max_rel_diff(compact, cpu, &worst_cpu);
      INFO("cuda compact vs cuda masked " << d << " (" << worst << "); vs cpu masked " << dc
                                          << " (" << worst_cpu << "); present rows "
                                          << compact.present << " of " << c.B * c.K);
      if (std::getenv("SLOTCON_TOL_REPORT"))
        std::printf("compact vs masked predictor, cuda %s, K %lld P %lld: %.3g (%s); vs cpu %.3g "
                    "(%s)\n",
                    dtype_name(dt), (long long)c.K, (long long)(c.H * c.W), d, worst.c_str(), dc,
                    worst_cpu.c_str());
      CHECK(compact.present > 0);
      CHECK(compact.present < c.B * c.H * c.W + 1);
      CHECK(d <= (dt == DType::F64 ? 1e-12 : 2e-5));
      CHECK(dc <= (dt == DType::F64 ? 1e-10 : 2e-4));
    }
  }
}
