// batch_norm_cpu.cpp: the float32 fast path of the CPU batch-norm passes (see batch_norm.h).
//
// The same passes and the same double arithmetic as batch_norm_ref.cpp, arranged for the
// compiler's vectoriser: the per-element work sits in small row kernels with an AVX-512 and an
// AVX2 clone beside the baseline one (picked at load time), the sums over a contiguous row run in
// 8 double lanes, and the channel-contiguous case (NHWC, BN1d: inner == 1) works along whole rows
// of channels with per-channel arrays. What differs from the reference:
//   - the order of the additions inside one row of a channel-major map (NCHW: 8 lanes, then the
//     lanes in order), so stats and grad sums differ from the reference's by double round-off;
//   - the vector clones may fuse a multiply and an add (FMA), which changes a double result by at
//     most one rounding before it is rounded to float.
// The split over threads is the reference's (whole channels for the sums), so the results are
// the same for any number of threads. Row masks and GELU take the reference.
#include <algorithm>
#include <type_traits>
#include <vector>

#include "kernels/batch_norm.h"
#include "kernels/cpu_clones.h"
#include "kernels/parallel.h"

namespace sc {
namespace {

constexpr int kLanes = 8;

// ---- rows of one channel (channel-major maps: NCHW, inner > 1) ----

// dL/dz at one element and its xhat: dy through the activation at z = xhat gamma + beta
// (+ residual res; pass 0 when kRes is false), as the reference's grad_z.
template <bool kRelu, bool kRes>
inline double grad_z(float dy, float x, float res, double mean, double invstd, double gm, double bt,
                     double& xhat) {
  xhat = (double(x) - mean) * invstd;
  double dz = double(dy);
  if (kRelu) {
    double z = xhat * gm + bt;
    if (kRes) z += double(res);
    dz = z > 0 ? dz : 0.0;
  }
  return dz;
}

// out[0] += sum x, out[1] += sum x^2 over p[0, n).
SC_CPU_CLONES void row_stats(const float* p, int64_t n, double* out) {
  double s[kLanes] = {}, q[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const double v = double(p[i + l]);
      s[l] += v;
      q[l] += v * v;
    }
  double ts = 0, tq = 0;
  for (int l = 0; l < kLanes; ++l) ts += s[l], tq += q[l];
  for (; i < n; ++i) {
    const double v = double(p[i]);
    ts += v;
    tq += v * v;
  }
  out[0] += ts;
  out[1] += tq;
}

template <bool kRelu, bool kRes>
SC_CPU_CLONES void row_apply(const float* x, const float* res, int64_t n, double scale,
                             double shift, float* y) {
  for (int64_t i = 0; i < n; ++i) {
    double z = double(x[i]) * scale + shift;
    if (kRes) z += double(res[i]);
    if (kRelu) z = z > 0 ? z : 0.0;
    y[i] = float(z);
  }
}

// out[0] += sum dz, out[1] += sum dz * xhat over one row.
template <bool kRelu, bool kRes>
SC_CPU_CLONES void row_grad_sums(const float* dy, const float* x, const float* res, int64_t n,
                                 double mean, double invstd, double gm, double bt, double* out) {
  double s[kLanes] = {}, q[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      double xhat;
      const double dz = grad_z<kRelu, kRes>(dy[i + l], x[i + l], kRes ? res[i + l] : 0.f, mean,
                                            invstd, gm, bt, xhat);
      s[l] += dz;
      q[l] += dz * xhat;
    }
  double ts = 0, tq = 0;
  for (int l = 0; l < kLanes; ++l) ts += s[l], tq += q[l];
  for (; i < n; ++i) {
    double xhat;
    const double dz =
        grad_z<kRelu, kRes>(dy[i], x[i], kRes ? res[i] : 0.f, mean, invstd, gm, bt, xhat);
    ts += dz;
    tq += dz * xhat;
  }
  out[0] += ts;
  out[1] += tq;
}

// training: dx = k (dz - mean_dz - xhat mean_dzx), k = gamma invstd; eval: dx = k dz.
template <bool kRelu, bool kRes>
SC_CPU_CLONES void row_grad_apply(const float* dy, const float* x, const float* res, int64_t n,
                                  double mean, double invstd, double gm, double bt, double mean_dz,
                                  double mean_dzx, bool training, float* dx, float* dres) {
  const double k = gm * invstd;
  for (int64_t i = 0; i < n; ++i) {
    double xhat;
    const double dz =
        grad_z<kRelu, kRes>(dy[i], x[i], kRes ? res[i] : 0.f, mean, invstd, gm, bt, xhat);
    if (dres) dres[i] = float(dz);
    dx[i] = float(training ? k * (dz - mean_dz - xhat * mean_dzx) : k * dz);
  }
}

// ---- rows of channels (channel-contiguous: NHWC and BN1d, inner == 1), channels [0, n) of one
// row; the per-channel arrays are offset to the first channel ----

SC_CPU_CLONES void chan_stats(const float* x, int64_t n, double* s, double* q) {
  for (int64_t c = 0; c < n; ++c) {
    const double v = double(x[c]);
    s[c] += v;
    q[c] += v * v;
  }
}

template <bool kRelu, bool kRes>
SC_CPU_CLONES void chan_apply(const float* x, const float* res, int64_t n, const double* scale,
                              const double* shift, float* y) {
  for (int64_t c = 0; c < n; ++c) {
    double z = double(x[c]) * scale[c] + shift[c];
    if (kRes) z += double(res[c]);
    if (kRelu) z = z > 0 ? z : 0.0;
    y[c] = float(z);
  }
}

template <bool kRelu, bool kRes>
SC_CPU_CLONES void chan_grad_sums(const float* dy, const float* x, const float* res, int64_t n,
                                  const double* mean, const double* invstd, const double* gm,
                                  const double* bt, double* s, double* q) {
  for (int64_t c = 0; c < n; ++c) {
    double xhat;
    const double dz = grad_z<kRelu, kRes>(dy[c], x[c], kRes ? res[c] : 0.f, mean[c], invstd[c],
                                          gm[c], bt[c], xhat);
    s[c] += dz;
    q[c] += dz * xhat;
  }
}

template <bool kRelu, bool kRes>
SC_CPU_CLONES void chan_grad_apply(const float* dy, const float* x, const float* res, int64_t n,
                                   const double* mean, const double* invstd, const double* gm,
                                   const double* bt, const double* k, const double* mean_dz,
                                   const double* mean_dzx, bool training, float* dx, float* dres) {
  for (int64_t c = 0; c < n; ++c) {
    double xhat;
    const double dz = grad_z<kRelu, kRes>(dy[c], x[c], kRes ? res[c] : 0.f, mean[c], invstd[c],
                                          gm[c], bt[c], xhat);
    if (dres) dres[c] = float(dz);
    dx[c] = float(training ? k[c] * (dz - mean_dz[c] - xhat * mean_dzx[c]) : k[c] * dz);
  }
}

// f(relu, res) with both as std::bool_constant: the activation (None / Relu) and whether a
// residual is added.
template <class F>
void with_flags(Act a, const float* residual, F&& f) {
  auto with_res = [&](auto relu) {
    if (residual)
      f(relu, std::true_type{});
    else
      f(relu, std::false_type{});
  };
  if (a == Act::Relu)
    with_res(std::true_type{});
  else
    with_res(std::false_type{});
}

bool fast_path(Act act, const uint8_t* mask) { return mask == nullptr && act != Act::Gelu; }

// Per-channel gamma, beta (1, 0 when absent), mean and invstd as double arrays.
struct ChanParams {
  std::vector<double> gm, bt, mean, invstd;
  ChanParams(int64_t C, const double* save, const float* gamma, const float* beta)
      : gm(size_t(C)), bt(size_t(C)), mean(save, save + C), invstd(save + C, save + 2 * C) {
    for (int64_t c = 0; c < C; ++c) {
      gm[size_t(c)] = gamma ? double(gamma[c]) : 1.0;
      bt[size_t(c)] = beta ? double(beta[c]) : 0.0;
    }
  }
};

}  // namespace

void batch_norm_stats_cpu(const BnGeom& g, const float* x, const uint8_t* mask, double* stats) {
  if (mask) return batch_norm_stats_ref<float>(g, x, mask, stats);
  const int64_t C = g.C;
  std::fill(stats, stats + 2 * C + 1, 0.0);
  parallel_for(C, grain_for(g.outer * g.inner), [&](int64_t c0, int64_t c1) {
    if (g.inner == 1) {
      for (int64_t o = 0; o < g.outer; ++o)
        chan_stats(x + o * C + c0, c1 - c0, stats + c0, stats + C + c0);
      return;
    }
    for (int64_t o = 0; o < g.outer; ++o)
      for (int64_t c = c0; c < c1; ++c) {
        double sq[2] = {0, 0};
        row_stats(x + (o * C + c) * g.inner, g.inner, sq);
        stats[c] += sq[0];
        stats[C + c] += sq[1];
      }
  });
  stats[2 * C] = double(g.outer * g.inner);
}

void batch_norm_apply_cpu(const BnGeom& g, const float* x, const double* save, const float* gamma,
                          const float* beta, const float* residual, Act act, float* y) {
  if (!fast_path(act, nullptr))
    return batch_norm_apply_ref<float>(g, x, save, gamma, beta, residual, act, y);
  const int64_t C = g.C;
  const size_t Cs = static_cast<size_t>(C);
  std::vector<double> scale(Cs), shift(Cs);
  for (int64_t c = 0; c < C; ++c) {
    scale[size_t(c)] = (gamma ? double(gamma[c]) : 1.0) * save[C + c];
    shift[size_t(c)] = (beta ? double(beta[c]) : 0.0) - save[c] * scale[size_t(c)];
  }
  with_flags(act, residual, [&](auto relu, auto res) {
    constexpr bool kRelu = decltype(relu)::value, kRes = decltype(res)::value;
    if (g.inner == 1) {
      parallel_for(g.outer, grain_for(C), [&](int64_t o0, int64_t o1) {
        for (int64_t o = o0; o < o1; ++o)
          chan_apply<kRelu, kRes>(x + o * C, residual ? residual + o * C : nullptr, C, scale.data(),
                                  shift.data(), y + o * C);
      });
      return;
    }
    parallel_for(g.outer * C, grain_for(g.inner), [&](int64_t b, int64_t e) {
      for (int64_t oc = b; oc < e; ++oc) {
        const int64_t c = oc % C, base = oc * g.inner;
        row_apply<kRelu, kRes>(x + base, residual ? residual + base : nullptr, g.inner,
                               scale[size_t(c)], shift[size_t(c)], y + base);
      }
    });
  });
}

void batch_norm_grad_sums_cpu(const BnGeom& g, const float* dy, const float* x, const double* save,
                              const float* gamma, const float* beta, const float* residual, Act act,
                              const uint8_t* mask, double* gsum) {
  if (!fast_path(act, mask))
    return batch_norm_grad_sums_ref<float>(g, dy, x, save, gamma, beta, residual, act, mask, gsum);
  const int64_t C = g.C;
  std::fill(gsum, gsum + 2 * C, 0.0);
  const ChanParams p(C, save, gamma, beta);
  with_flags(act, residual, [&](auto relu, auto res) {
    constexpr bool kRelu = decltype(relu)::value, kRes = decltype(res)::value;
    parallel_for(C, grain_for(g.outer * g.inner * 4), [&](int64_t c0, int64_t c1) {
      if (g.inner == 1) {
        for (int64_t o = 0; o < g.outer; ++o) {
          const int64_t base = o * C + c0;
          chan_grad_sums<kRelu, kRes>(dy + base, x + base, residual ? residual + base : nullptr,
                                      c1 - c0, p.mean.data() + c0, p.invstd.data() + c0,
                                      p.gm.data() + c0, p.bt.data() + c0, gsum + c0, gsum + C + c0);
        }
        return;
      }
      for (int64_t o = 0; o < g.outer; ++o)
        for (int64_t c = c0; c < c1; ++c) {
          const size_t cs = size_t(c);
          const int64_t base = (o * C + c) * g.inner;
          double sq[2] = {0, 0};
          row_grad_sums<kRelu, kRes>(dy + base, x + base, residual ? residual + base : nullptr,
                                     g.inner, p.mean[cs], p.invstd[cs], p.gm[cs], p.bt[cs], sq);
          gsum[c] += sq[0];
          gsum[C + c] += sq[1];
        }
    });
  });
}

void batch_norm_grad_apply_cpu(const BnGeom& g, const float* dy, const float* x, const double* save,
                               const float* gamma, const float* beta, const float* residual,
                               Act act, const uint8_t* mask, const double* gsum, double count,
                               bool training, float* dx, float* dresidual) {
  if (!fast_path(act, mask))
    return batch_norm_grad_apply_ref<float>(g, dy, x, save, gamma, beta, residual, act, mask, gsum,
                                            count, training, dx, dresidual);
  const int64_t C = g.C;
  const double inv_n = count > 0 ? 1.0 / count : 0.0;
  const ChanParams p(C, save, gamma, beta);
  const size_t Cs = static_cast<size_t>(C);
  std::vector<double> k(Cs), mean_dz(Cs), mean_dzx(Cs);
  for (int64_t c = 0; c < C; ++c) {
    const size_t cs = size_t(c);
    k[cs] = p.gm[cs] * p.invstd[cs];
    mean_dz[cs] = gsum[c] * inv_n;
    mean_dzx[cs] = gsum[C + c] * inv_n;
  }
  with_flags(act, residual, [&](auto relu, auto res) {
    constexpr bool kRelu = decltype(relu)::value, kRes = decltype(res)::value;
    if (g.inner == 1) {
      parallel_for(g.outer, grain_for(C * 4), [&](int64_t o0, int64_t o1) {
        for (int64_t o = o0; o < o1; ++o) {
          const int64_t base = o * C;
          chan_grad_apply<kRelu, kRes>(dy + base, x + base, residual ? residual + base : nullptr, C,
                                       p.mean.data(), p.invstd.data(), p.gm.data(), p.bt.data(),
                                       k.data(), mean_dz.data(), mean_dzx.data(), training,
                                       dx + base, dresidual ? dresidual + base : nullptr);
        }
      });
      return;
    }
    parallel_for(g.outer * C, grain_for(g.inner * 4), [&](int64_t b, int64_t e) {
      for (int64_t oc = b; oc < e; ++oc) {
        const size_t cs = size_t(oc % C);
        const int64_t base = oc * g.inner;
        row_grad_apply<kRelu, kRes>(dy + base, x + base, residual ? residual + base : nullptr,
                                    g.inner, p.mean[cs], p.invstd[cs], p.gm[cs], p.bt[cs],
                                    mean_dz[cs], mean_dzx[cs], training, dx + base,
                                    dresidual ? dresidual + base : nullptr);
      }
    });
  });
}

}  // namespace sc
