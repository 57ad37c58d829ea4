// GPU-vs-CPU tests of SlotCon's head kernels (kernels/proto_assign, slot_pool, view_align,
// self_distill, slot_contrast): every forward and backward output, every element, against the CPU
// reference run on the same (rounded) inputs. Inputs are fresh random values each run (the seed is
// printed on failure); device outputs are poisoned with 0xFF bytes (NaN) before each launch so an
// element a kernel forgot to write fails; sizes are awkward (K = 37, D = 33, P = 49, row counts
// that are not multiples of the 64-row tiles, D > 256 for the contrast chunk loop); the stress
// inputs are peaky scores, temperature 0.01, a prototype no pixel picks, boxes touching the border
// and larger than the map, flipped and unflipped views, an empty contrast selection.
//
// Tolerances. F64: 1e-10 relative to the largest reference magnitude (the GPU sums in a different
// order). F32: the CPU reference sums in double, the GPU in float, so the error is float
// accumulation (~1e-6 relative) amplified by 1/tau where a softmax follows: tol = max(1e-4,
// 2e-6 / tau), per element relative with a floor of tol * 0.1 * max|want| (see mismatch()).
// Uses the CUDA runtime directly (test code only; the kernels take raw pointers).
#include <catch2/catch.hpp>

#if defined(SLOTCON_WITH_CUDA)
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "test_seed.h"
#include "kernels/proto_assign.h"
#include "kernels/self_distill.h"
#include "kernels/slot_contrast.h"
#include "kernels/slot_presence.h"
#include "kernels/slot_pool.h"
#include "kernels/view_align.h"

namespace {

#define CUDA_OK(expr) REQUIRE((expr) == cudaSuccess)

uint64_t fresh_seed() {
  return sc::testing::next_seed();
}

// A device buffer filled with 0xFF bytes (NaN for float / double) until written.
template <class T>
class Dev {
 public:
  explicit Dev(size_t n) : n_(std::max<size_t>(n, 1)) {
    CUDA_OK(cudaMalloc(&p_, n_ * sizeof(T)));
    poison();
  }
  explicit Dev(const std::vector<T>& h) : Dev(h.size()) { put(h); }
  ~Dev() { cudaFree(p_); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  void poison() { CUDA_OK(cudaMemset(p_, 0xFF, n_ * sizeof(T))); }
  void put(const std::vector<T>& h) {
    CUDA_OK(cudaMemcpy(p_, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> get(size_t n) const {
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<T> h(n);
    CUDA_OK(cudaMemcpy(h.data(), p_, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
  T* p() const { return p_; }

 private:
  T* p_ = nullptr;
  size_t n_;
};

// A device workspace of `bytes`, poisoned.
struct Workspace {
  explicit Workspace(size_t bytes) : buf(bytes / 8 + 1) {}
  void* p() const { return buf.p(); }
  Dev<double> buf;
};

template <class T>
std::vector<T> rand_vec(size_t n, std::mt19937_64& rng, double lo = -1, double hi = 1) {
  std::uniform_real_distribution<double> u(lo, hi);
  std::vector<T> v(n);
  for (T& x : v) x = T(u(rng));
  return v;
}

std::vector<uint8_t> rand_mask(size_t n, std::mt19937_64& rng, double p) {
  std::bernoulli_distribution bd(p);
  std::vector<uint8_t> m(n);
  for (auto& v : m) v = bd(rng) ? 1 : 0;
  return m;
}

template <class T>
double base_tol(double tau = 1.0) {
  if (sizeof(T) == 8) return 1e-10;
  return std::max(1e-4, 2e-6 / tau);
}

// "" when every element is close: |got - want| <= tol * (|want| + 0.1 max|want|) (a relative
// tolerance with a floor at a tenth of the output's scale), NaN never passing; else the worst.
template <class T>
std::string mismatch(const char* name, const std::vector<T>& got, const std::vector<T>& want,
                     double tol) {
  if (got.size() != want.size()) return std::string(name) + ": size mismatch";
  double mx = 0;
  for (T w : want) mx = std::max(mx, std::fabs(double(w)));
  double worst = 0;
  size_t wi = 0;
  bool bad = false;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = double(got[i]), w = double(want[i]);
    const double lim = tol * (std::fabs(w) + 0.1 * mx) + 1e-30;
    const double e = std::isfinite(g) ? std::fabs(g - w) / lim : INFINITY;
    if (!(e <= 1.0) && (!bad || e > worst)) {
      bad = true;
      worst = e;
      wi = i;
    }
  }
  if (!bad) return "";
  std::ostringstream os;
  os << name << ": element " << wi << " of " << got.size() << " got " << double(got[wi]) << " want "
     << double(want[wi]) << " (error / tolerance " << worst << ", tol " << tol << ", max|want| "
     << mx << ")";
  return os.str();
}

#define EXPECT_CLOSE(name, got, want, tol)                 \
  do {                                                     \
    const std::string m_ = mismatch(name, got, want, tol); \
    INFO(m_);                                              \
    CHECK(m_.empty());                                     \
  } while (0)

// TF32 tensor-core products (the kernels' tf32 option): each operand is rounded to 10 mantissa
// bits (relative error <= 2^-11), accumulation is float. For a contraction of n terms of random
// sign the error grows like the result itself (sqrt(n)), so the relative error stays near 2^-11
// ~ 5e-4, more where the terms nearly cancel (proto_assign's softmax-Jacobian rows sum to ~0):
// seen on the emulator, which rounds as the GPU does, up to 2.5e-3 (dL_dx). 2e-2 keeps a margin
// of 8 and still fails any indexing or staging error (those are O(1)); the floor at a tenth of the
// output's scale covers elements near zero. A softmax over logits/tau moves by up to ~2e-3/tau.
constexpr double kTf32GemmTol = 2e-2;

using PA = sc::ProtoAssignShape;
using SP = sc::SlotPoolShape;
using SC = sc::SlotContrastShape;

// A kernel shape with the tf32 option on.
template <class S>
S tf(S s) {
  s.tf32 = true;
  return s;
}

// How many elements differ (that a TF32 path ran: it changes the low bits of most results).
inline size_t count_differ(const std::vector<float>& a, const std::vector<float>& b) {
  size_t n = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) n += a[i] != b[i] ? 1 : 0;
  return n;
}

// ---------------------------------------------------------------- proto_assign
template <class T>
void check_proto_assign(const sc::ProtoAssignShape& s, double tau, uint64_t seed) {
  INFO("proto_assign B=" << s.B << " K=" << s.K << " D=" << s.D << " P=" << s.P << " tau=" << tau
                         << " T=" << (sizeof(T) == 8 ? "F64" : "F32") << (s.tf32 ? " tf32" : "")
                         << " seed " << seed);
  std::mt19937_64 rng(seed);
  const size_t nx = size_t(s.B * s.D * s.P), np = size_t(s.K * s.D), nd = size_t(s.B * s.K * s.P);
  auto x = rand_vec<T>(nx, rng, -2, 2);
  auto pr = rand_vec<T>(np, rng, -1, 1);
  // Peaky (shapes with K >= 2, P >= 4): pixel 3 of image 0 is prototype 1 scaled; prototype 0
  // points away from every pixel component-wise (a prototype no pixel picks, at least for
  // positive pixels).
  if (s.K >= 2 && s.P >= 4)
    for (int64_t d = 0; d < s.D; ++d) x[size_t(d * s.P + 3)] = T(3.0 * double(pr[size_t(s.D + d)]));
  auto gd = rand_vec<T>(nd, rng), ga = rand_vec<T>(nd, rng);
  auto dp0 = rand_vec<T>(np, rng);  // dL_dprotos accumulates onto this
  // CPU reference
  std::vector<T> dots(nd), attn(nd), dx(nx), dp = dp0;
  sc::proto_assign_forward_ref<T>(s, x.data(), pr.data(), tau, dots.data(), attn.data());
  sc::proto_assign_backward_ref<T>(s, x.data(), pr.data(), dots.data(), tau, gd.data(), ga.data(),
                                   dx.data(), dp.data());
  // GPU
  Dev<T> X(x), PR(pr), GD(gd), GA(ga), DOTS(nd), ATTN(nd), DX(nx), DP(dp0);
  Workspace ws(sc::proto_assign_workspace_bytes(s));
  sc::proto_assign_forward_cuda<T>(s, X.p(), PR.p(), tau, DOTS.p(), ATTN.p(), ws.p(), nullptr);
  // TF32 (see tf32_tols): the GEMM outputs at tf32_gemm_tol, the softmax at its 1/tau bound.
  const bool tf = s.tf32 && sizeof(T) == 4;
  const double tol = tf ? kTf32GemmTol : base_tol<T>(tau);
  EXPECT_CLOSE("dots", DOTS.get(nd), dots, tf ? kTf32GemmTol : base_tol<T>());
  EXPECT_CLOSE("attn", ATTN.get(nd), attn, tf ? std::max(kTf32GemmTol, 2e-3 / tau) : tol);
  // The backward reads the reference dots so that both sides differentiate the same point.
  DOTS.put(dots);
  sc::proto_assign_backward_cuda<T>(s, X.p(), PR.p(), DOTS.p(), tau, GD.p(), GA.p(), DX.p(), DP.p(),
                                    ws.p(), nullptr);
  EXPECT_CLOSE("dL_dx", DX.get(nx), dx, tol);
  EXPECT_CLOSE("dL_dprotos (+=)", DP.get(np), dp, tol);
  // Only one cotangent, and null outputs.
  std::vector<T> dx2(nx);
  sc::proto_assign_backward_ref<T>(s, x.data(), pr.data(), dots.data(), tau, nullptr, ga.data(),
                                   dx2.data(), nullptr);
  DX.poison();
  sc::proto_assign_backward_cuda<T>(s, X.p(), PR.p(), DOTS.p(), tau, nullptr, GA.p(), DX.p(),
                                    nullptr, ws.p(), nullptr);
  EXPECT_CLOSE("dL_dx (attn cotangent only)", DX.get(nx), dx2, tol);
}

TEST_CASE("proto_assign CUDA matches the CPU reference", "[gpu][proto_assign]") {
  const uint64_t seed = fresh_seed();
  for (double tau : {0.07, 0.01}) {
    check_proto_assign<float>({3, 37, 33, 49}, tau, seed);
    check_proto_assign<float>({4, 300, 256, 49}, tau, seed + 1);
    check_proto_assign<double>({2, 37, 33, 49}, tau, seed + 2);
  }
  check_proto_assign<float>({2, 5, 3, 130}, 0.5, seed + 3);  // P > 64: several pixel tiles
  check_proto_assign<float>({3, 1, 7, 1}, 0.07, seed + 4);   // K = 1, P = 1
}

TEST_CASE("proto_assign CUDA with TF32 tensor-core GEMMs matches the CPU reference",
          "[gpu][proto_assign]") {
  const uint64_t seed = fresh_seed();
  check_proto_assign<float>(tf(PA{3, 37, 33, 49}), 0.07, seed);
  check_proto_assign<float>(tf(PA{4, 300, 256, 49}), 0.07, seed + 1);
  check_proto_assign<float>(tf(PA{2, 5, 3, 130}), 0.5, seed + 2);
  check_proto_assign<double>(tf(PA{2, 37, 33, 49}), 0.07, seed + 3);  // double: no TF32
  // The TF32 path is the one that ran: its dots differ from the FP32 kernel's somewhere.
  const sc::ProtoAssignShape s{2, 40, 64, 49};
  std::mt19937_64 rng(seed + 4);
  const size_t nd = size_t(s.B * s.K * s.P);
  Dev<float> X(rand_vec<float>(size_t(s.B * s.D * s.P), rng, -2, 2)),
      PR(rand_vec<float>(size_t(s.K * s.D), rng, -1, 1)), DOTS(nd), ATTN(nd);
  Workspace ws(sc::proto_assign_workspace_bytes(s));
  std::vector<float> d32, dtf;
  for (bool t : {false, true}) {
    sc::ProtoAssignShape st = s;
    st.tf32 = t;
    sc::proto_assign_forward_cuda<float>(st, X.p(), PR.p(), 0.07, DOTS.p(), ATTN.p(), ws.p(),
                                         nullptr);
    (t ? dtf : d32) = DOTS.get(nd);
  }
  const size_t differ = count_differ(dtf, d32);
  INFO(differ << " of " << nd << " dots differ between the TF32 and FP32 kernels");
  CHECK(differ > nd / 10);
}

// ---------------------------------------------------------------- slot_pool
template <class T>
void check_slot_pool(const sc::SlotPoolShape& s, uint64_t seed) {
  INFO("slot_pool B=" << s.B << " K=" << s.K << " D=" << s.D << " P=" << s.P
                      << " T=" << (sizeof(T) == 8 ? "F64" : "F32") << (s.tf32 ? " tf32" : "")
                      << " seed " << seed);
  std::mt19937_64 rng(seed);
  const size_t nx = size_t(s.B * s.D * s.P), na = size_t(s.B * s.K * s.P),
               ns = size_t(s.B * s.K * s.D);
  auto x = rand_vec<T>(nx, rng, -2, 2);
  auto attn = rand_vec<T>(na, rng, 1e-6, 1);
  // Peaky rows of image 0 (shapes with K >= 2, P >= 3): all mass on one pixel (the 1e-6 floor
  // elsewhere), and a row no pixel picks.
  for (int64_t p = 0; s.K >= 2 && s.P >= 3 && p < s.P; ++p) {
    attn[size_t(p)] = T(p == 2 ? 1.0 : 1e-6);
    attn[size_t(s.P + p)] = T(1e-6);
  }
  auto g = rand_vec<T>(ns, rng);
  std::vector<T> slots(ns), dx(nx), da(na);
  sc::slot_pool_forward_ref<T>(s, x.data(), attn.data(), slots.data());
  sc::slot_pool_backward_ref<T>(s, x.data(), attn.data(), slots.data(), g.data(), dx.data(),
                                da.data());
  Dev<T> X(x), AT(attn), G(g), SL(ns), DX(nx), DA(na);
  Workspace ws(sc::slot_pool_workspace_bytes(s));
  sc::slot_pool_forward_cuda<T>(s, X.p(), AT.p(), SL.p(), ws.p(), nullptr);
  const double tol = s.tf32 && sizeof(T) == 4 ? kTf32GemmTol : base_tol<T>();
  EXPECT_CLOSE("slots", SL.get(ns), slots, tol);
  SL.put(slots);
  sc::slot_pool_backward_cuda<T>(s, X.p(), AT.p(), SL.p(), G.p(), DX.p(), DA.p(), ws.p(), nullptr);
  EXPECT_CLOSE("dL_dx", DX.get(nx), dx, tol);
  // dL_dattn of the near-empty row divides by a ~ P e-6: relative accuracy of the difference of
  // two O(1) terms, so compare at a tolerance scaled by 1e-6-free rows' magnitude (0.01 max|want|).
  EXPECT_CLOSE("dL_dattn", DA.get(na), da, tol * 10);
}

TEST_CASE("slot_pool CUDA matches the CPU reference", "[gpu][slot_pool]") {
  const uint64_t seed = fresh_seed();
  check_slot_pool<float>({3, 37, 33, 49}, seed);
  check_slot_pool<float>({2, 300, 256, 49}, seed + 1);
  check_slot_pool<double>({2, 37, 33, 49}, seed + 2);
  check_slot_pool<float>({1, 70, 65, 130}, seed + 3);
  check_slot_pool<float>({3, 1, 7, 2}, seed + 4);  // K = 1 (P = 1 makes dL/dattn 0 exactly)
}

TEST_CASE("slot_pool CUDA with TF32 tensor-core GEMMs matches the CPU reference",
          "[gpu][slot_pool]") {
  const uint64_t seed = fresh_seed();
  check_slot_pool<float>(tf(SP{3, 37, 33, 49}), seed);
  check_slot_pool<float>(tf(SP{2, 300, 256, 49}), seed + 1);
  check_slot_pool<float>(tf(SP{1, 70, 65, 130}), seed + 2);
  check_slot_pool<double>(tf(SP{2, 37, 33, 49}), seed + 3);
  // The TF32 path is the one that ran: its slots differ from the FP32 kernel's somewhere.
  const sc::SlotPoolShape s{2, 40, 64, 49};
  std::mt19937_64 rng(seed + 4);
  const size_t ns = size_t(s.B * s.K * s.D);
  Dev<float> X(rand_vec<float>(size_t(s.B * s.D * s.P), rng, -2, 2)),
      AT(rand_vec<float>(size_t(s.B * s.K * s.P), rng, 1e-6, 1)), SL(ns);
  Workspace ws(sc::slot_pool_workspace_bytes(s));
  std::vector<float> s32, stf;
  for (bool t : {false, true}) {
    sc::SlotPoolShape st = s;
    st.tf32 = t;
    sc::slot_pool_forward_cuda<float>(st, X.p(), AT.p(), SL.p(), ws.p(), nullptr);
    (t ? stf : s32) = SL.get(ns);
  }
  const size_t differ = count_differ(stf, s32);
  INFO(differ << " of " << ns << " slot values differ between the TF32 and FP32 kernels");
  CHECK(differ > ns / 10);
}

// ---------------------------------------------------------------- view_align
template <class T>
void check_view_align(const sc::ViewAlignShape& s, uint64_t seed) {
  INFO("view_align B=" << s.B << " K=" << s.K << " H=" << s.H << " W=" << s.W
                       << " T=" << (sizeof(T) == 8 ? "F64" : "F32") << " seed " << seed);
  std::mt19937_64 rng(seed);
  const size_t n = size_t(s.B * s.K * s.H * s.W);
  auto in = rand_vec<T>(n, rng);
  std::vector<T> boxes(size_t(4 * s.B));
  std::vector<uint8_t> flips = rand_mask(size_t(s.B), rng, 0.5);
  std::uniform_real_distribution<double> u(0, 1);
  for (int64_t b = 0; b < s.B; ++b) {
    double x1 = u(rng) * 0.6, y1 = u(rng) * 0.6, x2 = x1 + 0.1 + u(rng) * (0.9 - x1),
           y2 = y1 + 0.1 + u(rng) * (0.9 - y1);
    switch (b % 6) {
      case 0:
        x1 = 0;
        y1 = 0;
        x2 = 1;
        y2 = 1;
        break;  // full view (identity)
      case 1:
        x1 = 0;
        y1 = 0;
        break;  // touching left / top
      case 2:
        x2 = 1;
        y2 = 1;
        break;  // touching right / bottom
      case 3:
        x1 = -0.3;
        y1 = -0.2;
        x2 = 1.4;
        y2 = 1.1;
        break;  // larger: 2x2 samples
      default:
        break;
    }
    boxes[size_t(4 * b)] = T(x1);
    boxes[size_t(4 * b + 1)] = T(y1);
    boxes[size_t(4 * b + 2)] = T(x2);
    boxes[size_t(4 * b + 3)] = T(y2);
  }
  flips[0] = 0;
  if (s.B > 1) flips[1] = 1;
  auto g = rand_vec<T>(n, rng);
  std::vector<T> out(n), din(n);
  sc::view_align_forward_ref<T>(s, in.data(), boxes.data(), flips.data(), out.data());
  sc::view_align_backward_ref<T>(s, boxes.data(), flips.data(), g.data(), din.data());
  Dev<T> IN(in), BX(boxes), G(g), OUT(n), DIN(n);
  Dev<uint8_t> FL(flips);
  sc::view_align_forward_cuda<T>(s, IN.p(), BX.p(), FL.p(), OUT.p(), nullptr);
  EXPECT_CLOSE("aligned", OUT.get(n), out, base_tol<T>() * 0.1);
  sc::view_align_backward_cuda<T>(s, BX.p(), FL.p(), G.p(), DIN.p(), nullptr);
  EXPECT_CLOSE("dL_din", DIN.get(n), din, base_tol<T>() * 0.1);
}

TEST_CASE("view_align CUDA matches the CPU reference", "[gpu][view_align]") {
  const uint64_t seed = fresh_seed();
  check_view_align<float>({12, 37, 7, 7}, seed);
  check_view_align<double>({6, 5, 7, 6}, seed + 1);
  check_view_align<float>({6, 3, 40, 90}, seed + 2);  // large planes: the global-atomics path
  check_view_align<float>({4, 1, 1, 1}, seed + 3);    // K = 1 on a 1 x 1 map
}

// ---------------------------------------------------------------- self_distill
template <class T>
void check_self_distill(const sc::SelfDistillShape& s, double ts, double tt, uint64_t seed) {
  INFO("self_distill B=" << s.B << " K=" << s.K << " P=" << s.P << " tau_s=" << ts << " tau_t="
                         << tt << " T=" << (sizeof(T) == 8 ? "F64" : "F32") << " seed " << seed);
  std::mt19937_64 rng(seed);
  const size_t n = size_t(s.B * s.K * s.P), npix = size_t(s.B * s.P);
  auto a = rand_vec<T>(n, rng), t = rand_vec<T>(n, rng), raw = rand_vec<T>(n, rng);
  auto c = rand_vec<T>(size_t(s.K), rng, -0.3, 0.3);
  a[3] = T(1);  // peaky
  t[5] = T(1);
  c[1] = T(-4);  // the centered teacher prefers prototype 1 everywhere
  const std::vector<T> g = {T(0.75)};
  std::vector<T> loss(1), stats(2 * npix), cm(size_t(s.K)), da(n);
  sc::self_distill_forward_ref<T>(s, a.data(), t.data(), c.data(), ts, tt, raw.data(), loss.data(),
                                  stats.data(), cm.data());
  sc::self_distill_backward_ref<T>(s, a.data(), t.data(), c.data(), ts, tt, stats.data(), g.data(),
                                   da.data());
  Dev<T> A(a), TT(t), RAW(raw), C(c), G(g), LOSS(1), ST(2 * npix), CM(size_t(s.K)), DA(n);
  Workspace ws(sc::self_distill_workspace_bytes(s));
  sc::self_distill_forward_cuda<T>(s, A.p(), TT.p(), C.p(), ts, tt, RAW.p(), LOSS.p(), ST.p(),
                                   CM.p(), ws.p(), nullptr);
  const double tol = base_tol<T>(std::min(ts, tt));
  EXPECT_CLOSE("loss", LOSS.get(1), loss, tol);
  EXPECT_CLOSE("pixel_stats", ST.get(2 * npix), stats, tol);
  EXPECT_CLOSE("center_mean", CM.get(size_t(s.K)), cm, base_tol<T>());
  ST.put(stats);
  sc::self_distill_backward_cuda<T>(s, A.p(), TT.p(), C.p(), ts, tt, ST.p(), G.p(), DA.p(),
                                    nullptr);
  // The backward recomputes both probabilities as exp(z - lse) from logits of T precision and the
  // stored (T-rounded) lse; with |z| up to |t - c| / tau_t = 500 here, each carries float's
  // ulp(500) / 2 = 3e-5, and their difference (the gradient) cancels: 4x the base tolerance (as
  // PyTorch's float log_softmax would need); found flaky at 1x under the CUDA emulator.
  EXPECT_CLOSE("dL_dstudent", DA.get(n), da, sizeof(T) == 8 ? tol : 4 * tol);
}

TEST_CASE("self_distill CUDA matches the CPU reference", "[gpu][self_distill]") {
  const uint64_t seed = fresh_seed();
  check_self_distill<float>({3, 37, 49}, 0.1, 0.07, seed);
  check_self_distill<float>({3, 37, 49}, 0.01, 0.01, seed + 1);
  check_self_distill<float>({8, 300, 49}, 0.1, 0.07, seed + 2);
  check_self_distill<double>({2, 37, 49}, 0.1, 0.01, seed + 3);
  check_self_distill<float>({2, 5, 3}, 0.1, 0.07, seed + 4);  // K < 8: idle slices
  check_self_distill<float>({3, 5, 1}, 0.1, 0.07, seed + 5);  // P = 1
}

// ---------------------------------------------------------------- slot_contrast
template <class T>
void check_presence(int64_t B, int64_t K, int64_t P, uint64_t seed) {
  INFO("slot_presence B=" << B << " K=" << K << " P=" << P << " seed " << seed);
  std::mt19937_64 rng(seed);
  auto dots = rand_vec<T>(size_t(B * K * P), rng);
  // Requires B >= 3, K >= 10, P >= 2 (checked): prototype 4 of image 0 is never picked, image 1
  // picks prototype 6 everywhere, and image 2 has a tie at the maximum (first index wins).
  REQUIRE((B >= 3 && K >= 10 && P >= 2));
  for (int64_t p = 0; p < P; ++p) {
    dots[size_t(0 * K * P + 4 * P + p)] = T(-2);
    dots[size_t(1 * K * P + 6 * P + p)] = T(2);
  }
  dots[size_t(2 * K * P + 0 * P + 1)] = T(3);
  dots[size_t(2 * K * P + 9 * P + 1)] = T(3);
  auto and_mask = rand_mask(size_t(B * K), rng, 0.5);
  std::vector<uint8_t> want(size_t(B * K)), want_and(size_t(B * K));
  sc::slot_presence_ref<T>(B, K, P, dots.data(), nullptr, want.data());
  sc::slot_presence_ref<T>(B, K, P, dots.data(), and_mask.data(), want_and.data());
  Dev<T> DOTS(dots);
  Dev<uint8_t> AM(and_mask), PR(size_t(B * K));
  sc::slot_presence_cuda<T>(B, K, P, DOTS.p(), nullptr, PR.p(), nullptr);
  CHECK(PR.get(size_t(B * K)) == want);
  PR.poison();
  sc::slot_presence_cuda<T>(B, K, P, DOTS.p(), AM.p(), PR.p(), nullptr);
  CHECK(PR.get(size_t(B * K)) == want_and);
}

template <class T>
void check_contrast(const sc::SlotContrastShape& s, double tau, double p_valid, uint64_t seed) {
  INFO("slot_contrast B=" << s.B << " K=" << s.K << " D=" << s.D << " R=" << s.R
                          << " rank=" << s.rank << " tau=" << tau << " p_valid=" << p_valid
                          << " T=" << (sizeof(T) == 8 ? "F64" : "F32") << (s.tf32 ? " tf32" : "")
                          << " seed " << seed);
  std::mt19937_64 rng(seed);
  const size_t N = size_t(s.rows()), NK = size_t(s.key_rows()), D = size_t(s.D);
  auto z = rand_vec<T>(N * D, rng, -2, 2), keys = rand_vec<T>(NK * D, rng, -2, 2);
  // Peaky: query 0 equals its label key (a very confident row).
  for (size_t d = 0; d < D; ++d) z[d] = keys[size_t(s.rank) * N * D + d];
  auto qm = rand_mask(N, rng, p_valid), km = rand_mask(NK, rng, p_valid);
  const std::vector<T> g = {T(1.3)};
  std::vector<T> loss(1), lse(N), dz(N * D), dk(NK * D);
  sc::slot_contrast_forward_ref<T>(s, z.data(), keys.data(), qm.data(), km.data(), tau, loss.data(),
                                   lse.data());
  sc::slot_contrast_backward_ref<T>(s, z.data(), keys.data(), qm.data(), km.data(), tau, lse.data(),
                                    g.data(), dz.data(), dk.data());
  Dev<T> Z(z), KEYS(keys), G(g), LOSS(1), LSE(N), DZ(N * D), DK(NK * D);
  Dev<uint8_t> QM(qm), KM(km);
  Workspace ws(sc::slot_contrast_workspace_bytes(s));
  sc::slot_contrast_forward_cuda<T>(s, Z.p(), KEYS.p(), QM.p(), KM.p(), tau, LOSS.p(), LSE.p(),
                                    ws.p(), nullptr);
  // TF32 tiles: each operand carries a relative error up to 2^-11, so a logit of unit vectors is
  // off by at most ~2 * 2^-11 / tau ~ 1e-3 / tau (Cauchy-Schwarz); lse moves by no more than its
  // largest logit; the backward's P . k products (TF32 too) add an error of the same order. Seen
  // on the emulator (which rounds as the GPU does): gradients up to ~7e-4 of the bound's 5e-3 at
  // tau = 0.2 and ~3e-3 of 1e-2 at tau = 0.1 (D = 300); row_lse ~3e-5.
  const double tol = s.tf32 && sizeof(T) == 4 ? 1e-3 / tau : base_tol<T>(tau);
  EXPECT_CLOSE("loss", LOSS.get(1), loss, tol);
  EXPECT_CLOSE("row_lse", LSE.get(N), lse, tol);
  LSE.put(lse);
  ws.buf.poison();
  sc::slot_contrast_backward_cuda<T>(s, Z.p(), KEYS.p(), QM.p(), KM.p(), tau, LSE.p(), G.p(),
                                     DZ.p(), DK.p(), ws.p(), nullptr);
  EXPECT_CLOSE("dL_dz", DZ.get(N * D), dz, tol);
  EXPECT_CLOSE("dL_dkeys", DK.get(NK * D), dk, tol);
}

TEST_CASE("slot_presence CUDA matches the CPU reference", "[gpu][slot_contrast]") {
  const uint64_t seed = fresh_seed();
  check_presence<float>(4, 37, 49, seed);
  check_presence<double>(3, 300, 49, seed + 1);
  check_presence<float>(3, 10, 70, seed + 2);  // K < 32, P > 32
}

TEST_CASE("slot_contrast CUDA matches the CPU reference", "[gpu][slot_contrast]") {
  const uint64_t seed = fresh_seed();
  check_contrast<float>({4, 37, 33, 3, 1}, 0.2, 0.6, seed);
  check_contrast<float>({4, 37, 33, 3, 2}, 0.01, 0.6, seed + 1);
  check_contrast<float>({2, 40, 300, 2, 0}, 0.2, 0.8, seed + 2);  // D > 256: two D chunks
  check_contrast<double>({3, 37, 33, 2, 1}, 0.2, 0.6, seed + 3);
  check_contrast<double>({2, 20, 140, 2, 0}, 0.05, 0.7, seed + 4);  // D > 128 (double chunk)
  check_contrast<float>({2, 37, 16, 2, 1}, 0.2, 0.0, seed + 5);     // empty selection
  check_contrast<float>({8, 64, 64, 2, 1}, 0.2, 1.0, seed + 6);     // everything valid
}

TEST_CASE("slot_contrast CUDA with TF32 tensor-core tiles matches the CPU reference",
          "[gpu][slot_contrast]") {
  const uint64_t seed = fresh_seed();
  check_contrast<float>(tf(SC{4, 37, 33, 3, 1}), 0.2, 0.6, seed);   // D not a multiple of 8
  check_contrast<float>(tf(SC{2, 40, 300, 2, 0}), 0.1, 0.8, seed + 1);  // two D chunks
  check_contrast<float>(tf(SC{8, 64, 64, 2, 1}), 0.2, 1.0, seed + 2);   // everything valid
  check_contrast<float>(tf(SC{2, 37, 16, 2, 1}), 0.2, 0.0, seed + 3);   // empty selection
  check_contrast<double>(tf(SC{3, 37, 33, 2, 1}), 0.2, 0.6, seed + 4);  // double: no TF32

  // The TF32 path is the one that ran: its row log-sum-exps differ from the FP32 kernel's (the
  // operands' low mantissa bits are dropped; ~140 valid rows here), by no more than the bound.
  const sc::SlotContrastShape s{4, 50, 64, 2, 1};
  std::mt19937_64 rng(seed + 5);
  const size_t N = size_t(s.rows()), NK = size_t(s.key_rows()), D = size_t(s.D);
  auto z = rand_vec<float>(N * D, rng, -2, 2), keys = rand_vec<float>(NK * D, rng, -2, 2);
  auto qm = rand_mask(N, rng, 0.7), km = rand_mask(NK, rng, 0.7);
  Dev<float> Z(z), KEYS(keys), LOSS(1), LSE(N);
  Dev<uint8_t> QM(qm), KM(km);
  Workspace ws(sc::slot_contrast_workspace_bytes(s));
  std::vector<float> lse32, lsetf;
  for (bool t : {false, true}) {
    sc::SlotContrastShape st = s;
    st.tf32 = t;
    sc::slot_contrast_forward_cuda<float>(st, Z.p(), KEYS.p(), QM.p(), KM.p(), 0.2, LOSS.p(),
                                          LSE.p(), ws.p(), nullptr);
    (t ? lsetf : lse32) = LSE.get(N);
  }
  const size_t differ = count_differ(lsetf, lse32);
  INFO(differ << " of " << N << " row log-sum-exps differ between the TF32 and FP32 kernels");
  CHECK(differ > 0);
  EXPECT_CLOSE("tf32 vs fp32 row_lse", lsetf, lse32, 1e-3 / 0.2);
}

}  // namespace

#endif  // SLOTCON_WITH_CUDA
