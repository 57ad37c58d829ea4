// CUDA vs CPU for the convolutional-network ops: conv2d (cuDNN), batch norm (train / eval,
// activations, residual, row mask), max pool and add_relu; forward and backward; F32 in NCHW and
// NHWC, F64, and BF16 / F16 against the float32 CPU result on the same (rounded) inputs. Fresh
// random inputs every run, every element compared, device allocations poisoned (NaN) so that an
// element a kernel forgets to write fails.
//
// Tolerances. F32 / F64: flat (tol_for), the float-level checks they always were. BF16 / F16: a
// bound per element from an error model of what the code does (docs/testing.md, "Tolerances of
// the device tests"): with u the 16-bit format's unit roundoff (2^-8 bf16, 2^-11 fp16), eta its
// underflow (fp16: 2^-25, half its subnormal spacing; bf16: 0), u_f = 2^-24 and
// gamma_n(v) = n v / (1 - n v),
//   dot products of n terms (conv forward n = C R S, dx n = K R S, dw n = N OH OW), inputs already
//   16-bit on both sides, summed in float on the GPU (v = 2^-23: tensor cores may truncate) and
//   in float by the CPU's BLAS (v = 2^-24), the GPU result rounded once to 16 bits:
//     |gpu - ref| <= s (u |ref| + (gamma_n(2^-23) + gamma_n(2^-24)) sum |a_i| |b_i| + eta),
//   sum |a_i| |b_i| being the CPU op on |a| and |b| (conv2d of |x| with |w|, its backward with
//   |dy|); a bias adds a second 16-bit rounding (cuDNN writes the convolution in 16 bits, the bias
//   kernel adds in float and rounds again): + u |ref - bias|; batch norm: the normalised output
//   rounded once (u |y|) plus what the float arithmetic and the float per-thread statistics sums
//   move it by (bn_bounds below); max pool's dx: sums of at most 4 dy in float, rounded once;
//   add_relu: the same float sum on both sides, so y = fl16(ref) and the gradients are exact.
// The safety factor s = 2 (kSafety) is the only slack. The model drops second-order terms (u^2,
// u gamma) and linearises 1/sqrt, which 2 covers many times over; on the emulator (cuDNN in
// double, so exact sums rounded once) the tests use at most half of every bound, as they must,
// and the other half is room for what a GPU may add that the model does not count (e.g. an
// algorithm that rounds a partial result of the output's size once more). It is 2 and not more
// because 2u (bf16: 0.8 %) must stay below the errors the test must catch: a 1 % error in a bf16
// weight gradient fails it by a factor of 1.5, where the former flat tolerance,
// 3e-2 sqrt(n) + 3e-2 |ref|, let errors up to ~6 % through.
// SLOTCON_TOL_REPORT=1 prints, for every 16-bit comparison, the worst error / bound and how much
// tighter the bound is than the former flat tolerance (median, 1st percentile and smallest ratio).
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "engine/allocator.h"
#include "engine/autograd.h"
#include "engine/cuda_runtime.h"
#include "engine/nn_ops.h"
#include "engine/ops.h"
#include "kernels/batch_norm.h"  // act_forward, act_derivative (the model of bn_bounds)
#include "kernels/check.h"
#include "kernels/conv2d.h"
#if defined(SLOTCON_WITH_CUDNN)
#include <cudnn.h>

#include "engine/cuda/context.h"
#endif
#include "test_seed.h"

using namespace sc;

namespace {

struct Tol {
  double atol, rtol;
};
// F32 / F64 tolerances; for BF16 / F16 the former flat tolerance, kept only to report how much
// tighter the error model is (expect_within).
Tol tol_for(DType t, double scale = 1.0) {
  switch (t) {
    case DType::F64:
      return {1e-10 * scale, 1e-10};
    case DType::F32:
      return {2e-5 * scale, 2e-5};
    default:
      return {3e-2 * scale, 3e-2};
  }
}

bool is_16bit(DType t) { return t == DType::BF16 || t == DType::F16; }

Tensor on_gpu(const Tensor& cpu, DType t, bool nhwc) {
  Tensor g = cpu.detach().to(t).to(Device::cuda());
  return nhwc ? g.contiguous(MemoryFormat::ChannelsLast) : g;
}
// The CPU reference input: the GPU tensor's values (after rounding to t), in F32 or F64.
Tensor ref_of(const Tensor& gpu) {
  Tensor c = gpu.detach().to(Device::cpu());
  return c.dtype() == DType::F64 ? c.contiguous() : c.to(DType::F32).contiguous();
}
void expect_close(const Tensor& gpu, const Tensor& cpu, Tol tol, const char* what) {
  REQUIRE(gpu.shape() == cpu.shape());
  CompareResult r =
      compare(gpu.detach().to(Device::cpu()).to(cpu.dtype()), cpu, tol.atol, tol.rtol);
  INFO(what << ": max |diff| " << r.max_abs << ", scaled " << r.max_scaled << " at "
            << r.worst_index << ", non-finite " << r.nonfinite);
  REQUIRE(r.nonfinite == 0);
  REQUIRE(r.max_scaled <= 1.0);
}

struct PoisonGuard {
  PoisonGuard() { set_poison_allocations(true); }
  ~PoisonGuard() { set_poison_allocations(false); }
};

// ---------------------------------------------------------------- the 16-bit error model
constexpr double kUFloat = 0x1p-24;   // float's unit roundoff (round to nearest)
constexpr double kUAccGpu = 0x1p-23;  // GPU float accumulation: tensor cores may truncate
constexpr double kSafety = 2.0;       // see the file comment

// Unit roundoff of the 16-bit formats (8 and 11 significant bits).
double unit_roundoff(DType t) { return t == DType::BF16 ? 0x1p-8 : 0x1p-11; }
// Absolute rounding error near zero: fp16 rounds below 2^-14 to multiples of 2^-24; bf16 has
// float's exponent range (its underflow, 2^-134, is far below anything here).
double underflow(DType t) { return t == DType::F16 ? 0x1p-25 : 0.0; }
// The classical bound on a float sum of n terms: |error| <= gamma_n sum |terms|.
double gamma_n(double n, double u) { return n * u / (1.0 - n * u); }
// The longest float sum in the per-channel reductions of kernels/batch_norm.cu and conv2d.cu's
// channel_sum: every channel is split over at least 8 threads (the 8 rows of a (32, 8) block, or
// a 256-thread block), each summing in float, and the threads' partial sums are combined in double
// (whose rounding is negligible here).
double per_thread_terms(double n) { return std::ceil(n / 8.0); }

std::vector<double> host_values(const Tensor& t) {
  return t.detach().to(Device::cpu()).to_vector();
}
// |t| as a fresh CPU tensor of t's (reference) dtype.
Tensor abs_of(const Tensor& t) {
  std::vector<double> v = host_values(t);
  for (double& e : v) e = std::fabs(e);
  return from_vector(v, t.shape(), t.dtype());
}

// Every element of `gpu` within bound[i] of `ref` (NaN never). The message names the worst
// element; with SLOTCON_TOL_REPORT set, one line per call: the worst |error| / bound and the
// former flat tolerance `old` over the bound (median, 1st percentile and smallest over the
// elements).
void expect_within(const Tensor& gpu, const Tensor& ref, const std::vector<double>& bound,
                   const char* what, Tol old) {
  REQUIRE(gpu.shape() == ref.shape());
  const std::vector<double> g = host_values(gpu), r = host_values(ref);
  REQUIRE(bound.size() == g.size());
  double worst = 0;
  size_t wi = 0;
  std::vector<double> ratio;
  for (size_t i = 0; i < g.size(); ++i) {
    const double err = std::fabs(g[i] - r[i]);
    const double e = std::isfinite(g[i]) ? (err == 0 ? 0.0 : err / bound[i]) : INFINITY;
    if (e > worst) worst = e, wi = i;
    if (bound[i] > 0) ratio.push_back((old.atol + old.rtol * std::fabs(r[i])) / bound[i]);
  }
  if (std::getenv("SLOTCON_TOL_REPORT") && !ratio.empty()) {
    std::sort(ratio.begin(), ratio.end());
    std::printf("tol-report %-16s worst error/bound %.3f  old/new median %.1f p01 %.2f min %.2f\n",
                what, worst, ratio[ratio.size() / 2], ratio[ratio.size() / 100], ratio[0]);
  }
  INFO(what << ": worst element " << wi << " of " << g.size() << ": gpu " << g[wi] << ", cpu "
            << (r.empty() ? 0.0 : r[wi]) << ", bound " << (bound.empty() ? 0.0 : bound[wi])
            << ", |error| / bound " << worst);
  REQUIRE(worst <= 1.0);
}

// The error bounds of batch norm with 16-bit activations (x, residual, dy, y, dx, dresidual
// 16-bit; gamma, beta, running statistics and their gradients F32), from what kernels/batch_norm.cu
// does, against the CPU reference (every sum and every element in double, rounded once to float):
//  - statistics: float per-thread sums of at most m = ceil(n / 8) terms (n the channel's element
//    count, per_thread_terms) combined in double: |d sum x| <= gamma_m sum |x|,
//    |d sum x^2| <= gamma_m sum x^2, hence
//    d mean = gamma_m mean|x|, d var = gamma_m mean(x^2) + 2 |mean| d mean and a relative error of
//    invstd rho = d var / (2 (var + eps)); the mean and invstd read as float add u_f each;
//  - apply, in float: xhat = (x - mean) invstd and z = xhat gamma + beta (+ residual) are off by
//    d xhat = invstd d mean + |xhat| rho + 2 u_f invstd (|x| + |mean|) and
//    d z = |gamma| d xhat + 4 u_f M_z, M_z = |gamma| invstd (|x| + |mean|) + |beta| + |residual|;
//    y = act(z) moves by L1 d z (L1 = max |act'|: 1, GELU 1.13) plus GELU's own float error
//    (4 u_f M_z), then one rounding to 16 bits: u |y| + eta; the CPU's float rounding u_f |y|;
//  - backward: dz = dy act'(z) is off by |dy| (L2 d z + 4 u_f) + u_f |dz| (L2 = max |act''|:
//    GELU 0.8) and, for ReLU where |z| <= d z (the sign of z is not decided), by |dy|;
//    S0 = sum dz, S1 = sum dz xhat over the selected elements, float per-thread sums likewise:
//    d S0 = gamma_m sum |dz| + sum d dz, d S1 = (gamma_m + u_f) sum |dz xhat|
//    + sum (d dz |xhat| + |dz| d xhat); dgamma = S1 and dbeta = S0 (F32): + 2 u_f |S|;
//    dx = gamma invstd (dz - S0 / n - xhat S1 / n) (eval: gamma invstd dz): relative rho from
//    invstd, the terms' errors, 6 u_f of their magnitudes, then u |dx| + eta; dresidual = dz:
//    d dz, then u |dz| + eta. Unselected rows (row mask): dx = dresidual = 0 exactly.
// Every bound is multiplied by kSafety.
struct BnBounds {
  std::vector<double> y, dx, dres, dgamma, dbeta;
};

BnBounds bn_bounds(const Shape& shape, DType dt, Act act, bool training, double eps,
                   const std::vector<double>& x, const std::vector<double>& res,
                   const std::vector<double>& dy, const std::vector<double>& gamma,
                   const std::vector<double>& beta, const std::vector<double>& run_mean,
                   const std::vector<double>& run_var, const std::vector<double>& mask) {
  const int64_t N = shape[0], C = shape[1];
  int64_t inner = 1;
  for (size_t d = 2; d < shape.size(); ++d) inner *= shape[d];
  const double u = unit_roundoff(dt), eta = underflow(dt), uf = kUFloat;
  const double L1 = act == Act::Gelu ? 1.13 : 1.0, L2 = act == Act::Gelu ? 0.8 : 0.0;
  const double act_uf = act == Act::None ? 0.0 : 4 * uf;
  BnBounds b;
  b.y.assign(x.size(), 0.0);
  b.dx.assign(x.size(), 0.0);
  b.dres.assign(x.size(), 0.0);
  b.dgamma.assign(size_t(C), 0.0);
  b.dbeta.assign(size_t(C), 0.0);
  auto sel = [&](int64_t o) { return mask.empty() || mask[size_t(o)] != 0; };
  std::vector<double> xhat(x.size()), dz(x.size()), ddz(x.size()), dxh(x.size());
  for (int64_t c = 0; c < C; ++c) {
    auto each = [&](auto&& f) {
      for (int64_t o = 0; o < N; ++o)
        for (int64_t i = 0; i < inner; ++i) f(o, size_t((o * C + c) * inner + i));
    };
    double n = 0, s1 = 0, s2 = 0, sa = 0;
    each([&](int64_t o, size_t j) {
      if (!sel(o)) return;
      n += 1, s1 += x[j], s2 += x[j] * x[j], sa += std::fabs(x[j]);
    });
    double mean, var, dmean = 0, rho = 0;
    if (training) {
      mean = n > 0 ? s1 / n : 0.0;
      var = n > 0 ? std::max(s2 / n - mean * mean, 0.0) : 0.0;
      if (n > 0) {
        const double g = gamma_n(per_thread_terms(n), uf);
        dmean = g * sa / n;
        rho = (g * s2 / n + 2 * std::fabs(mean) * dmean) / (2 * (var + eps));
      }
    } else {
      mean = run_mean[size_t(c)];
      var = run_var[size_t(c)];
    }
    dmean += uf * std::fabs(mean);  // read as float
    rho += 2 * uf;                  // invstd read as float, times gamma
    const double inv = 1.0 / std::sqrt(var + eps), gm = gamma[size_t(c)], bt = beta[size_t(c)];
    double S0 = 0, S1 = 0, A0 = 0, A1 = 0, E0 = 0, E1 = 0, cnt = 0;
    each([&](int64_t o, size_t j) {
      const double r = res.empty() ? 0.0 : res[j];
      xhat[j] = (x[j] - mean) * inv;
      const double z = xhat[j] * gm + bt + r;
      const double Mz =
          std::fabs(gm) * inv * (std::fabs(x[j]) + std::fabs(mean)) + std::fabs(bt) + std::fabs(r);
      dxh[j] = inv * dmean + std::fabs(xhat[j]) * rho +
               2 * uf * inv * (std::fabs(x[j]) + std::fabs(mean));
      const double dz_err = std::fabs(gm) * dxh[j] + 4 * uf * Mz;
      const double y = act_forward(act, z);
      b.y[j] = kSafety * (u * std::fabs(y) + eta + uf * std::fabs(y) + L1 * dz_err + act_uf * Mz);
      dz[j] = dy[j] * act_derivative(act, z);
      const double flip = act == Act::Relu && std::fabs(z) <= dz_err ? std::fabs(dy[j]) : 0.0;
      ddz[j] = std::fabs(dy[j]) * (L2 * dz_err + act_uf) + uf * std::fabs(dz[j]) + flip;
      if (!sel(o)) return;
      cnt += 1;
      S0 += dz[j], S1 += dz[j] * xhat[j];
      A0 += std::fabs(dz[j]), A1 += std::fabs(dz[j] * xhat[j]);
      E0 += ddz[j], E1 += ddz[j] * std::fabs(xhat[j]) + std::fabs(dz[j]) * dxh[j];
    });
    const double g = gamma_n(per_thread_terms(cnt), uf);
    const double dS0 = g * A0 + E0, dS1 = (g + uf) * A1 + E1;
    b.dgamma[size_t(c)] = kSafety * (2 * uf * std::fabs(S1) + dS1);
    b.dbeta[size_t(c)] = kSafety * (2 * uf * std::fabs(S0) + dS0);
    const double gi = std::fabs(gm) * inv;
    each([&](int64_t o, size_t j) {
      if (!sel(o)) return;  // dx = dresidual = 0 exactly
      double dx, err;
      if (training) {
        const double paren = dz[j] - S0 / cnt - xhat[j] * S1 / cnt;
        const double M = gi * (std::fabs(dz[j]) + std::fabs(S0) / cnt +
                               std::fabs(xhat[j]) * std::fabs(S1) / cnt);
        dx = gm * inv * paren;
        err = gi * std::fabs(paren) * rho +
              gi * (ddz[j] + dS0 / cnt + dxh[j] * std::fabs(S1) / cnt +
                    std::fabs(xhat[j]) * dS1 / cnt) +
              6 * uf * M;
      } else {
        dx = gm * inv * dz[j];
        err = gi * std::fabs(dz[j]) * rho + gi * ddz[j] + 3 * uf * gi * std::fabs(dz[j]);
      }
      b.dx[j] = kSafety * (u * std::fabs(dx) + eta + uf * std::fabs(dx) + err);
      b.dres[j] = kSafety * (u * std::fabs(dz[j]) + eta + uf * std::fabs(dz[j]) + ddz[j]);
    });
  }
  return b;
}

}  // namespace

TEST_CASE("gpu conv2d matches the CPU: forward, dx, dw, dbias", "[gpu][conv2d]") {
  PoisonGuard poison;
  Generator gen(sc::testing::next_seed());
  struct Cfg {
    int64_t N, C, H, W, K, R, stride, pad;
  };
  for (Cfg c : {Cfg{2, 3, 31, 29, 16, 7, 2, 3}, Cfg{3, 16, 14, 13, 24, 3, 1, 1},
                Cfg{2, 24, 15, 16, 32, 3, 2, 1}, Cfg{2, 32, 9, 7, 40, 1, 1, 0},
                Cfg{2, 32, 9, 9, 64, 1, 2, 0}})
    for (DType dt : {DType::F32, DType::F64, DType::BF16, DType::F16})
      for (bool nhwc : {false, true})
        for (bool with_bias : {false, true}) {
          if (dt == DType::F64 && nhwc) continue;  // cuDNN has no NHWC double convolutions
          INFO("R " << c.R << " stride " << c.stride << " dtype " << dtype_name(dt) << " nhwc "
                    << nhwc << " bias " << with_bias);
          const double fan_in = double(c.C * c.R * c.R);
          Tensor x0 = rand_uniform({c.N, c.C, c.H, c.W}, gen, -1, 1);
          Tensor w0 = rand_uniform({c.K, c.C, c.R, c.R}, gen, -1, 1) * (1.0 / std::sqrt(fan_in));
          Tensor b0 = rand_uniform({c.K}, gen, -1, 1);
          Tensor xg = on_gpu(x0, dt, nhwc).set_requires_grad(true);
          Tensor wg = on_gpu(w0, dt, nhwc).set_requires_grad(true);
          Tensor bg = with_bias ? on_gpu(b0, dt, false).set_requires_grad(true) : Tensor();
          Tensor xc = ref_of(xg).set_requires_grad(true), wc = ref_of(wg).set_requires_grad(true);
          Tensor bc = with_bias ? ref_of(bg).set_requires_grad(true) : Tensor();
          Tensor yg = conv2d(xg, wg, bg, c.stride, c.pad);
          Tensor yc = conv2d(xc, wc, bc, c.stride, c.pad);
          REQUIRE(yg.is_channels_last() == nhwc);
          Tensor dy0 = rand_uniform(yc.shape(), gen, -1, 1);
          Tensor dyg = on_gpu(dy0, dt, nhwc);
          yg.backward(dyg);
          yc.backward(ref_of(dyg));
          const double L = double(yc.size(2) * yc.size(3) * c.N);
          Tensor yg2 =
              conv2d(xg.detach(), wg.detach(), with_bias ? bg.detach() : Tensor(), c.stride, c.pad);
          if (!is_16bit(dt)) {
            expect_close(yg, yc, tol_for(dt), "y");
            expect_close(xg.grad(), xc.grad(), tol_for(dt, std::sqrt(double(c.K))), "dx");
            expect_close(wg.grad(), wc.grad(), tol_for(dt, std::sqrt(L)), "dw");
            if (with_bias) expect_close(bg.grad(), bc.grad(), tol_for(dt, std::sqrt(L)), "dbias");
            // A second call reuses the cached plan and gives the same forward result.
            expect_close(yg2, yc, tol_for(dt), "y (cached plan)");
            continue;
          }
          // 16-bit: the error model (file comment). The sums of |products| come from the CPU op on
          // absolute values: conv2d(|x|, |w|) and its backward with |dy|.
          Tensor xa = abs_of(xc).set_requires_grad(true), wa = abs_of(wc).set_requires_grad(true);
          Tensor ya = conv2d(xa, wa, Tensor(), c.stride, c.pad);
          ya.backward(abs_of(ref_of(dyg)));
          const double u = unit_roundoff(dt), eta = underflow(dt);
          const int64_t OH = yc.size(2), OW = yc.size(3), RS = c.R * c.R;
          // Lengths of the sums: forward C R S, dx at most K R S, dw N OH OW.
          auto acc = [](double n) { return gamma_n(n, kUAccGpu) + gamma_n(n, kUFloat); };
          const double acc_y = acc(double(c.C * RS)), acc_dx = acc(double(c.K * RS)),
                       acc_dw = acc(L);
          const std::vector<double> yv = host_values(yc), sy = host_values(ya);
          const std::vector<double> bv = with_bias ? host_values(bc) : std::vector<double>();
          std::vector<double> by(yv.size());
          for (size_t i = 0; i < yv.size(); ++i) {
            double e = u * std::fabs(yv[i]) + acc_y * sy[i] + eta;
            if (with_bias) {
              // cuDNN rounds the convolution to 16 bits, the bias kernel adds in float and rounds
              // again; the CPU adds in float.
              const double conv = yv[i] - bv[size_t(int64_t(i) / (OH * OW) % c.K)];
              e += u * std::fabs(conv) + 2 * kUFloat * std::fabs(yv[i]) + eta;
            }
            by[i] = kSafety * e;
          }
          expect_within(yg, yc, by, "conv y", tol_for(dt));
          expect_within(yg2, yc, by, "conv y (cached)", tol_for(dt));
          auto bound = [&](const Tensor& ref, const Tensor& mag, double acc_n) {
            const std::vector<double> r = host_values(ref), m = host_values(mag);
            std::vector<double> b(r.size());
            for (size_t i = 0; i < r.size(); ++i)
              b[i] = kSafety * (u * std::fabs(r[i]) + acc_n * m[i] + eta);
            return b;
          };
          expect_within(xg.grad(), xc.grad(), bound(xc.grad(), xa.grad(), acc_dx), "conv dx",
                        tol_for(dt, std::sqrt(double(c.K))));
          expect_within(wg.grad(), wc.grad(), bound(wc.grad(), wa.grad(), acc_dw), "conv dw",
                        tol_for(dt, std::sqrt(L)));
          if (with_bias) {
            // dbias: per-thread float sums then double (GPU, per_thread_terms), double (CPU); sum
            // |dy| per channel; read back as float and rounded once to 16 bits.
            const std::vector<double> dya = host_values(abs_of(ref_of(dyg)));
            std::vector<double> sdy(static_cast<size_t>(c.K), 0.0);
            for (size_t i = 0; i < dya.size(); ++i)
              sdy[size_t(int64_t(i) / (OH * OW) % c.K)] += dya[i];
            const Tensor sdy_t = from_vector(sdy, {c.K}, DType::F64);
            expect_within(
                bg.grad(), bc.grad(),
                bound(bc.grad(), sdy_t, gamma_n(per_thread_terms(L), kUFloat) + 2 * kUFloat),
                "conv dbias", tol_for(dt, std::sqrt(L)));
          }
        }
}

#if defined(SLOTCON_WITH_CUDNN)
// The algorithm file (kernels/conv2d.h): what a search chose is written there, and a plan of the
// same shape in a later process takes it without searching; so a profiler's process runs the
// algorithms that a plain run chose (its own searches would time launches it intercepts).
TEST_CASE("gpu conv2d algorithm file: choices appended, reused without a search, bad lines refused",
          "[gpu][conv2d]") {
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("slotcon_algos_" + std::to_string(::getpid()) + ".txt"))
                               .string();
  std::remove(path.c_str());
  struct Off {
    std::string path;
    ~Off() {
      sc::set_cudnn_algo_file("");
      std::remove(path.c_str());
    }
  } off{path};
  sc::set_cudnn_algo_file(path);
  Generator gen(sc::testing::next_seed());
  Conv2dGeom g;
  g.N = 2, g.C = 8, g.H = 9, g.W = 7, g.K = 16, g.R = g.S = 3, g.pad_h = g.pad_w = 1;
  Tensor x = on_gpu(rand_uniform({g.N, g.C, g.H, g.W}, gen, -1, 1), DType::F32, false);
  Tensor w = on_gpu(rand_uniform({g.K, g.C, g.R, g.S}, gen, -1, 1), DType::F32, false);
  Tensor dy = on_gpu(rand_uniform({g.N, g.K, g.OH(), g.OW()}, gen, -1, 1), DType::F32, false);
  Tensor ya = empty({g.N, g.K, g.OH(), g.OW()}, DType::F32, Device::cuda(0));
  Tensor yb = empty_like(ya), dx = empty_like(x), dw = empty_like(w);
  const size_t ws_bytes = size_t(64) << 20;
  Tensor ws = empty({int64_t(ws_bytes / 4)}, DType::F32, Device::cuda(0));
  cudnnHandle_t h = nullptr;
  REQUIRE(cudnnCreate(&h) == CUDNN_STATUS_SUCCESS);
  struct Handle {
    cudnnHandle_t h;
    ~Handle() { cudnnDestroy(h); }
  } handle{h};
  REQUIRE(cudnnSetStream(h, cuda::stream(0)) == CUDNN_STATUS_SUCCESS);
  auto select_all = [&](CudnnConvPlan& p) {
    p.select_forward(h, x.data_ptr(), w.data_ptr(), ya.data_ptr(), ws.data_ptr(), ws_bytes);
    p.select_backward_data(h, dy.data_ptr(), w.data_ptr(), dx.data_ptr(), ws.data_ptr(), ws_bytes);
    p.select_backward_weight(h, x.data_ptr(), dy.data_ptr(), dw.data_ptr(), ws.data_ptr(),
                             ws_bytes);
  };
  auto read_lines = [&] {
    std::ifstream in(path);
    std::vector<std::string> lines;
    for (std::string l; std::getline(in, l);) lines.push_back(l);
    return lines;
  };

  // A search per pass, each choice appended.
  CudnnConvPlan a(g, Layout::NCHW, DType::F32, false);
  const uint64_t calls0 = kernels::issue_counts().library_calls;
  select_all(a);
  CHECK(kernels::issue_counts().library_calls - calls0 == 3);
  std::vector<std::string> lines = read_lines();
  REQUIRE(lines.size() == 3);
  CHECK(lines[0].rfind("forward F32 NCHW N2 C8 9x7 K16 R3xS3 stride 1x1 pad 1x1", 0) == 0);
  CHECK(lines[1].rfind("backward-data F32 NCHW", 0) == 0);
  CHECK(lines[2].rfind("backward-weight F32 NCHW", 0) == 0);
  for (const std::string& l : lines) CHECK(l.find(" -> algo ") != std::string::npos);

  // The same shape again: no search, the same algorithms, the same result; nothing appended.
  // Another shape searches.
  CudnnConvPlan b(g, Layout::NCHW, DType::F32, false);
  const uint64_t calls1 = kernels::issue_counts().library_calls;
  select_all(b);
  CHECK(kernels::issue_counts().library_calls == calls1);
  CHECK(b.forward_algorithm() == a.forward_algorithm());
  CHECK(b.backward_data_algorithm() == a.backward_data_algorithm());
  CHECK(b.backward_weight_algorithm() == a.backward_weight_algorithm());
  CHECK(b.forward_workspace() == a.forward_workspace());
  CHECK(read_lines().size() == 3);
  a.forward(h, x.data_ptr(), w.data_ptr(), ya.data_ptr(), ws.data_ptr(), ws_bytes);
  b.forward(h, x.data_ptr(), w.data_ptr(), yb.data_ptr(), ws.data_ptr(), ws_bytes);
  CHECK(ya.to_vector() == yb.to_vector());
  Conv2dGeom g2 = g;
  g2.K = 24;
  CudnnConvPlan c(g2, Layout::NCHW, DType::F32, false);
  Tensor y2 = empty({g2.N, g2.K, g2.OH(), g2.OW()}, DType::F32, Device::cuda(0));
  const uint64_t calls2 = kernels::issue_counts().library_calls;
  c.select_forward(h, x.data_ptr(), w.data_ptr(), y2.data_ptr(), ws.data_ptr(), ws_bytes);
  CHECK(kernels::issue_counts().library_calls - calls2 == 1);
  CHECK(read_lines().size() == 4);

  // What the file says is what a plan takes (here another forward algorithm than the search's).
  const int other = a.forward_algorithm() == 1 ? 0 : 1;
  {
    std::ofstream out(path);
    out << "# edited\n\n"
        << lines[0].substr(0, lines[0].find(" -> ")) << " -> algo " << other << " math 0 ws 0\n";
  }
  sc::set_cudnn_algo_file(path);
  CudnnConvPlan d(g, Layout::NCHW, DType::F32, false);
  const uint64_t calls3 = kernels::issue_counts().library_calls;
  d.select_forward(h, x.data_ptr(), w.data_ptr(), ya.data_ptr(), ws.data_ptr(), ws_bytes);
  CHECK(kernels::issue_counts().library_calls == calls3);
  CHECK(d.forward_algorithm() == other);

  // A file that cannot be written (here: its folder does not exist) loses nothing but the file:
  // the search runs and its choice is taken.
  sc::set_cudnn_algo_file(path + ".missing/algos.txt");
  CudnnConvPlan e(g, Layout::NCHW, DType::F32, false);
  const uint64_t calls4 = kernels::issue_counts().library_calls;
  CHECK_NOTHROW(
      e.select_forward(h, x.data_ptr(), w.data_ptr(), ya.data_ptr(), ws.data_ptr(), ws_bytes));
  CHECK(kernels::issue_counts().library_calls - calls4 == 1);
  CHECK(e.forward_algorithm() == a.forward_algorithm());

  // A malformed line: an error naming the file and the line.
  for (const char* bad : {"forward F32 NCHW -> algo one math 0 ws 0", "no arrow here",
                          "forward F32 NCHW -> algo 1 math 0 ws 0 extra"}) {
    INFO(bad);
    {
      std::ofstream out(path);
      out << lines[1] << "\n" << bad << "\n";
    }
    CHECK_THROWS_WITH(sc::set_cudnn_algo_file(path), Catch::Contains(path + ":2:"));
  }
}
#endif

TEST_CASE(
    "gpu batch_norm matches the CPU (2-D NCHW / NHWC, 1-D with mask, train / eval, every "
    "float type, with and without a residual)",
    "[gpu][batch_norm]") {
  PoisonGuard poison;
  Generator gen(sc::testing::next_seed());
  struct Cfg {
    Shape shape;
    bool nhwc, masked;
  };
  for (Cfg cfg :
       {Cfg{{4, 24, 7, 9}, false, false}, Cfg{{4, 40, 7, 9}, true, false},
        Cfg{{3, 8, 28, 28}, false, false}, Cfg{{37, 70}, false, false}, Cfg{{53, 33}, false, true},
        // the row kernels' cases (C a multiple of 16 bytes' elements): several channel tiles,
        // the last one partial (264 channels: 33 bf16 vectors, 66 float ones), and a row mask
        Cfg{{2, 264, 3, 5}, true, false}, Cfg{{29, 48}, false, true}})
    for (DType dt : {DType::F32, DType::F64, DType::BF16, DType::F16})
      for (bool training : {true, false})
        for (Act act : {Act::None, Act::Relu, Act::Gelu})
          for (bool with_res : {false, true}) {
            INFO("shape " << shape_str(cfg.shape) << " nhwc " << cfg.nhwc << " mask " << cfg.masked
                          << " dtype " << dtype_name(dt) << " training " << training << " act "
                          << int(act) << " res " << with_res);
            const int64_t C = cfg.shape[1], N = cfg.shape[0];
            const DType pd = dt == DType::F64 ? DType::F64 : DType::F32;
            const DType cd = dt == DType::F64 ? DType::F64 : DType::F32;
            Tensor x0 = rand_uniform(cfg.shape, gen, -2, 3);
            Tensor r0 = rand_uniform(cfg.shape, gen, -1, 1);
            Tensor xg = on_gpu(x0, dt, cfg.nhwc).set_requires_grad(true);
            Tensor rg = with_res ? on_gpu(r0, dt, cfg.nhwc).set_requires_grad(true) : Tensor();
            Tensor xc = ref_of(xg).set_requires_grad(true);
            Tensor rc = with_res ? ref_of(rg).set_requires_grad(true) : Tensor();
            Tensor gam = rand_uniform({C}, gen, 0.5, 1.5, pd),
                   bet = rand_uniform({C}, gen, -1, 1, pd);
            Tensor gg = gam.to(Device::cuda()).set_requires_grad(true);
            Tensor bgp = bet.to(Device::cuda()).set_requires_grad(true);
            Tensor gc = gam.to(cd).set_requires_grad(true), bc = bet.to(cd).set_requires_grad(true);
            Tensor rm = rand_uniform({C}, gen, -1, 1, pd), rv = rand_uniform({C}, gen, 0.5, 2, pd);
            Tensor rmg = rm.to(Device::cuda()), rvg = rv.to(Device::cuda());
            Tensor rmc = rm.to(cd).clone(), rvc = rv.to(cd).clone();
            Tensor mask_c, mask_g;
            if (cfg.masked) {
              std::vector<double> m(static_cast<size_t>(N), 0.0);
              for (auto& v : m) v = gen.uniform() < 0.6 ? 1 : 0;
              mask_c = from_vector(m, {N}, DType::U8);
              mask_g = mask_c.to(Device::cuda());
            }
            BatchNormOptions og, oc;
            og.training = oc.training = training;
            og.act = oc.act = act;
            og.residual = rg, oc.residual = rc;
            og.row_mask = mask_g, oc.row_mask = mask_c;
            Tensor yg = batch_norm(xg, gg, bgp, rmg, rvg, og);
            Tensor yc = batch_norm(xc, gc, bc, rmc, rvc, oc);
            REQUIRE(yg.is_channels_last() == cfg.nhwc);
            expect_close(rmg, rmc, tol_for(dt == DType::F64 ? dt : DType::F32), "running_mean");
            expect_close(rvg, rvc, tol_for(dt == DType::F64 ? dt : DType::F32), "running_var");
            Tensor dyg = on_gpu(rand_uniform(cfg.shape, gen, -1, 1), dt, cfg.nhwc);
            yg.backward(dyg);
            yc.backward(ref_of(dyg));
            const double n = double(cfg.shape.size() == 4 ? N * cfg.shape[2] * cfg.shape[3] : N);
            if (!is_16bit(dt)) {
              expect_close(yg, yc, tol_for(dt), "y");
              expect_close(xg.grad(), xc.grad(), tol_for(dt, 4.0), "dx");
              expect_close(gg.grad(), gc.grad(), tol_for(dt, std::sqrt(n)), "dgamma");
              expect_close(bgp.grad(), bc.grad(), tol_for(dt, std::sqrt(n)), "dbeta");
              if (with_res) expect_close(rg.grad(), rc.grad(), tol_for(dt), "dresidual");
              continue;
            }
            // 16-bit: the error model of bn_bounds, on the values both sides saw (the rounded
            // inputs, the running statistics before this call's update).
            const BnBounds bb = bn_bounds(cfg.shape, dt, act, training, og.eps, host_values(xc),
                                          with_res ? host_values(rc) : std::vector<double>(),
                                          host_values(ref_of(dyg)), host_values(gam),
                                          host_values(bet), host_values(rm), host_values(rv),
                                          cfg.masked ? host_values(mask_c) : std::vector<double>());
            expect_within(yg, yc, bb.y, "bn y", tol_for(dt));
            expect_within(xg.grad(), xc.grad(), bb.dx, "bn dx", tol_for(dt, 4.0));
            expect_within(gg.grad(), gc.grad(), bb.dgamma, "bn dgamma", tol_for(dt, std::sqrt(n)));
            expect_within(bgp.grad(), bc.grad(), bb.dbeta, "bn dbeta", tol_for(dt, std::sqrt(n)));
            if (with_res) expect_within(rg.grad(), rc.grad(), bb.dres, "bn dresidual", tol_for(dt));
          }
}

// Which kernels a channels-last BatchNorm runs: the row kernels where C is a multiple of 16
// bytes' elements (the case the test above compares with the CPU), the element kernels elsewhere.
TEST_CASE("gpu batch_norm takes the row kernels on rows of whole 16-byte vectors",
          "[gpu][batch_norm]") {
  Generator gen(sc::testing::next_seed());
  auto launched = [&](int64_t C, DType dt) {
    Tensor x = on_gpu(rand_uniform({2, C, 3, 3}, gen, -1, 1), dt, true).set_requires_grad(true);
    Tensor g = rand_uniform({C}, gen, 0.5, 1.5).to(Device::cuda()).set_requires_grad(true);
    Tensor b = rand_uniform({C}, gen, -1, 1).to(Device::cuda()).set_requires_grad(true);
    Tensor rm = zeros({C}, DType::F32, Device::cuda()), rv = ones({C}, DType::F32, Device::cuda());
    BatchNormOptions o;
    o.training = true;
    o.act = Act::Relu;
    kernels::start_trace();
    Tensor y = batch_norm(x, g, b, rm, rv, o);
    y.backward(on_gpu(rand_uniform({2, C, 3, 3}, gen, -1, 1), dt, true));
    std::vector<std::string> names;
    for (const kernels::IssueRecord& r : kernels::stop_trace())
      if (r.kind == kernels::IssueKind::Kernel) names.push_back(r.name);
    return names;
  };
  auto has = [](const std::vector<std::string>& v, const char* n) {
    return std::find(v.begin(), v.end(), n) != v.end();
  };
  for (DType dt : {DType::BF16, DType::F32}) {
    INFO(dtype_name(dt));
    const std::vector<std::string> rows = launched(16, dt), elems = launched(10, dt);
    CHECK(has(rows, "apply_rows_kernel"));
    CHECK(has(rows, "grad_apply_rows_kernel"));
    CHECK_FALSE(has(rows, "apply_kernel"));
    CHECK(has(elems, "apply_kernel"));
    CHECK(has(elems, "grad_apply_kernel"));
    CHECK_FALSE(has(elems, "apply_rows_kernel"));
  }
}

TEST_CASE("gpu max_pool2d and add_relu match the CPU", "[gpu][max_pool]") {
  PoisonGuard poison;
  Generator gen(sc::testing::next_seed());
  for (Shape s : {Shape{2, 16, 112, 111}, Shape{3, 5, 9, 8}, Shape{1, 64, 2, 1}})
    for (DType dt : {DType::F32, DType::F64, DType::BF16, DType::F16})
      for (bool nhwc : {false, true}) {
        INFO("shape " << shape_str(s) << " dtype " << dtype_name(dt) << " nhwc " << nhwc);
        Tensor xg = on_gpu(randn(s, gen), dt, nhwc).set_requires_grad(true);
        Tensor xc = ref_of(xg).set_requires_grad(true);
        Tensor yg = max_pool2d(xg, 3, 2, 1), yc = max_pool2d(xc, 3, 2, 1);
        if (yc.size(2) * yc.size(3) > 1) REQUIRE(yg.is_channels_last() == nhwc);
        expect_close(yg, yc, {1e-300, 0}, "y");  // the max is exact in every dtype
        Tensor dyg = on_gpu(randn(yc.shape(), gen), dt, nhwc);
        yg.backward(dyg);
        yc.backward(ref_of(dyg));
        if (is_16bit(dt)) {
          // dx: the dy of at most 4 windows (3x3, stride 2) summed in float, rounded once; the
          // routed sum of |dy| is the CPU backward of |dy| (the same arg-max indices).
          Tensor xa = ref_of(xg).set_requires_grad(true);
          max_pool2d(xa, 3, 2, 1).backward(abs_of(ref_of(dyg)));
          const std::vector<double> r = host_values(xc.grad()), m = host_values(xa.grad());
          const double u = unit_roundoff(dt), acc = 2 * gamma_n(4, kUFloat);
          std::vector<double> b(r.size());
          for (size_t i = 0; i < r.size(); ++i)
            b[i] = kSafety * (u * std::fabs(r[i]) + acc * m[i] + underflow(dt));
          expect_within(xg.grad(), xc.grad(), b, "max_pool dx", tol_for(dt));
        } else {
          expect_close(xg.grad(), xc.grad(), tol_for(dt), "dx");
        }

        Tensor ag = on_gpu(randn(s, gen), dt, nhwc).set_requires_grad(true);
        Tensor bg = on_gpu(randn(s, gen), dt, nhwc).set_requires_grad(true);
        Tensor ac = ref_of(ag).set_requires_grad(true), bc = ref_of(bg).set_requires_grad(true);
        Tensor zg = add_relu(ag, bg), zc = add_relu(ac, bc);
        // Both sides add the same two values in float (double for F64), so y is the reference
        // rounded to the tested dtype: exact for F32 / F64, u |y| + eta for 16 bits. The gradient
        // is dy where y > 0, else 0, with the same y > 0 on both sides (a 16-bit sum of two 16-bit
        // values is 0 only if it is 0 exactly): exact in every dtype.
        if (is_16bit(dt)) {
          const std::vector<double> r = host_values(zc);
          std::vector<double> b(r.size());
          for (size_t i = 0; i < r.size(); ++i)
            b[i] = kSafety * (unit_roundoff(dt) * std::fabs(r[i]) + underflow(dt));
          expect_within(zg, zc, b, "add_relu y", tol_for(dt));
        } else {
          expect_close(zg, zc, {1e-300, 0}, "add_relu");
        }
        Tensor dzg = on_gpu(randn(s, gen), dt, nhwc);
        zg.backward(dzg);
        zc.backward(ref_of(dzg));
        expect_close(ag.grad(), ac.grad(), {1e-300, 0}, "add_relu da");
        expect_close(bg.grad(), bc.grad(), {1e-300, 0}, "add_relu db");
      }
}

TEST_CASE("gpu batch_norm on an empty batch matches the CPU, conv2d and max_pool2d refuse one",
          "[gpu][batch_norm]") {
  PoisonGuard poison;
  Generator gen(sc::testing::next_seed());
  // Batch norm accepts N = 0 (kernels/batch_norm.h: count 0 gives mean 0, var 0 and leaves the
  // running statistics alone): empty outputs and dx, zero dgamma / dbeta, unchanged running
  // statistics, on both devices, in training and eval mode, 2-D NCHW / NHWC and 1-D.
  for (Shape shape : {Shape{0, 5, 4, 3}, Shape{0, 7}})
    for (bool nhwc : {false, true})
      for (DType dt : {DType::F32, DType::F64, DType::BF16, DType::F16})
        for (bool training : {true, false}) {
          if (nhwc && shape.size() != 4) continue;
          INFO("shape " << shape_str(shape) << " nhwc " << nhwc << " dtype " << dtype_name(dt)
                        << " training " << training);
          const int64_t C = shape[1];
          const DType pd = dt == DType::F64 ? DType::F64 : DType::F32;
          Tensor xg = on_gpu(zeros(shape), dt, nhwc).set_requires_grad(true);
          Tensor xc = ref_of(xg).set_requires_grad(true);
          Tensor rg = on_gpu(zeros(shape), dt, nhwc).set_requires_grad(true);
          Tensor rc = ref_of(rg).set_requires_grad(true);
          Tensor gam = rand_uniform({C}, gen, 0.5, 1.5, pd),
                 bet = rand_uniform({C}, gen, -1, 1, pd);
          Tensor gg = gam.to(Device::cuda()).set_requires_grad(true);
          Tensor bgp = bet.to(Device::cuda()).set_requires_grad(true);
          Tensor gc = gam.clone().set_requires_grad(true), bc = bet.clone().set_requires_grad(true);
          Tensor rm = rand_uniform({C}, gen, -1, 1, pd), rv = rand_uniform({C}, gen, 0.5, 2, pd);
          Tensor rmg = rm.to(Device::cuda()), rvg = rv.to(Device::cuda());
          Tensor rmc = rm.clone(), rvc = rv.clone();
          BatchNormOptions og, oc;
          og.training = oc.training = training;
          og.act = oc.act = Act::Relu;
          og.residual = rg, oc.residual = rc;
          Tensor yg = batch_norm(xg, gg, bgp, rmg, rvg, og);
          Tensor yc = batch_norm(xc, gc, bc, rmc, rvc, oc);
          CHECK(yg.shape() == shape);
          CHECK(yc.shape() == shape);
          expect_close(rmg, rm, {1e-300, 0}, "running_mean (unchanged)");
          expect_close(rvg, rv, {1e-300, 0}, "running_var (unchanged)");
          expect_close(rmc, rm, {1e-300, 0}, "running_mean (CPU, unchanged)");
          yg.backward(on_gpu(zeros(shape), dt, nhwc));
          yc.backward(zeros(shape, yc.dtype()));
          CHECK(xg.grad().shape() == shape);
          CHECK(rg.grad().shape() == shape);
          expect_close(gg.grad(), zeros({C}, pd), {1e-300, 0}, "dgamma");
          expect_close(bgp.grad(), zeros({C}, pd), {1e-300, 0}, "dbeta");
          expect_close(gc.grad(), zeros({C}, pd), {1e-300, 0}, "dgamma (CPU)");
        }
  // Convolution and pooling refuse an empty batch with an sc::Error that says so.
  for (Device d : {Device::cpu(), Device::cuda(0)}) {
    INFO("on " << d.str());
    Tensor x = zeros({0, 3, 5, 5}, DType::F32, d), w = zeros({4, 3, 3, 3}, DType::F32, d);
    CHECK_THROWS_AS(conv2d(x, w, Tensor(), 1, 1), Error);
    CHECK_THROWS_WITH(conv2d(x, w, Tensor(), 1, 1), Catch::Contains("empty input"));
    CHECK_THROWS_AS(max_pool2d(x, 3, 2, 1), Error);
    CHECK_THROWS_WITH(max_pool2d(x, 3, 2, 1), Catch::Contains("empty input"));
  }
}
