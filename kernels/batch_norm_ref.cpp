// batch_norm_ref.cpp: CPU reference of the batch-norm passes (see batch_norm.h).
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "kernels/batch_norm.h"
#include "kernels/parallel.h"

namespace sc {

namespace {
// The activation as a compile-time choice, so that the per-element loops inline it.
template <Act A>
inline double act_fwd(double z) {
  if constexpr (A == Act::Relu) return z > 0 ? z : 0.0;
  if constexpr (A == Act::Gelu) return 0.5 * z * (1.0 + std::erf(z * M_SQRT1_2));
  return z;
}
template <Act A>
inline double act_grad(double z) {
  if constexpr (A == Act::Relu) return z > 0 ? 1.0 : 0.0;
  if constexpr (A == Act::Gelu) {
    const double cdf = 0.5 * (1.0 + std::erf(z * M_SQRT1_2));
    const double pdf = std::exp(-0.5 * z * z) * 0.3989422804014327;  // 1/sqrt(2 pi)
    return cdf + z * pdf;
  }
  return 1.0;
}
// dL/dz at element j: dy times the activation's derivative at z = xhat gamma + beta (+ residual).
template <Act A, class T>
inline double grad_z(const T* dy, const T* residual, int64_t j, double xhat, double gm,
                     double bt) {
  double dz = double(dy[j]);
  if constexpr (A != Act::None) {
    double z = xhat * gm + bt;
    if (residual) z += double(residual[j]);
    dz *= act_grad<A>(z);
  }
  return dz;
}
// f(std::integral_constant<Act, a>{}).
template <class F>
void with_act(Act a, F&& f) {
  switch (a) {
    case Act::None:
      f(std::integral_constant<Act, Act::None>{});
      return;
    case Act::Relu:
      f(std::integral_constant<Act, Act::Relu>{});
      return;
    case Act::Gelu:
      f(std::integral_constant<Act, Act::Gelu>{});
      return;
  }
}

inline bool selected(const uint8_t* mask, int64_t o) { return mask == nullptr || mask[o] != 0; }
}  // namespace

double act_forward(Act a, double z) {
  double r = z;
  with_act(a, [&](auto A) { r = act_fwd<decltype(A)::value>(z); });
  return r;
}

double act_derivative(Act a, double z) {
  double r = 1.0;
  with_act(a, [&](auto A) { r = act_grad<decltype(A)::value>(z); });
  return r;
}

// The sums are split over channels: each channel's are accumulated over the rows in order, as a
// serial loop would, for any number of threads.
template <class T>
void batch_norm_stats_ref(const BnGeom& g, const T* x, const uint8_t* mask, double* stats) {
  const int64_t C = g.C;
  std::fill(stats, stats + 2 * C + 1, 0.0);
  int64_t rows = 0;
  for (int64_t o = 0; o < g.outer; ++o) rows += selected(mask, o) ? 1 : 0;
  parallel_for(C, grain_for(g.outer * g.inner), [&](int64_t c0, int64_t c1) {
    for (int64_t o = 0; o < g.outer; ++o) {
      if (!selected(mask, o)) continue;
      for (int64_t c = c0; c < c1; ++c) {
        const T* p = x + (o * C + c) * g.inner;
        double s = 0, s2 = 0;
        for (int64_t i = 0; i < g.inner; ++i) {
          const double v = double(p[i]);
          s += v;
          s2 += v * v;
        }
        stats[c] += s;
        stats[C + c] += s2;
      }
    }
  });
  stats[2 * C] = double(rows * g.inner);
}

template <class T>
void batch_norm_finalize_ref(int64_t C, const double* stats, T* running_mean, T* running_var,
                             bool training, double momentum, double eps, double* save) {
  for (int64_t c = 0; c < C; ++c) {
    double mean, var;
    if (training) {
      const double n = stats[2 * C];
      mean = n > 0 ? stats[c] / n : 0.0;
      var = n > 0 ? std::max(stats[C + c] / n - mean * mean, 0.0) : 0.0;
      if (n > 0 && running_mean && running_var) {
        const double unbiased = n > 1 ? var * n / (n - 1) : var;
        running_mean[c] = T((1 - momentum) * double(running_mean[c]) + momentum * mean);
        running_var[c] = T((1 - momentum) * double(running_var[c]) + momentum * unbiased);
      }
    } else {
      mean = double(running_mean[c]);
      var = double(running_var[c]);
    }
    save[c] = mean;
    save[C + c] = 1.0 / std::sqrt(var + eps);
  }
}

template <class T>
void batch_norm_apply_ref(const BnGeom& g, const T* x, const double* save, const T* gamma,
                          const T* beta, const T* residual, Act act, T* y) {
  const int64_t C = g.C;
  with_act(act, [&](auto A) {
    constexpr Act kA = decltype(A)::value;
    parallel_for(g.outer * C, grain_for(g.inner), [&](int64_t b, int64_t e) {
      for (int64_t oc = b; oc < e; ++oc) {
        const int64_t c = oc % C;
        const double scale = (gamma ? double(gamma[c]) : 1.0) * save[C + c];
        const double shift = (beta ? double(beta[c]) : 0.0) - save[c] * scale;
        const int64_t base = oc * g.inner;
        for (int64_t i = 0; i < g.inner; ++i) {
          double z = double(x[base + i]) * scale + shift;
          if (residual) z += double(residual[base + i]);
          y[base + i] = T(act_fwd<kA>(z));
        }
      }
    });
  });
}

template <class T>
void batch_norm_grad_sums_ref(const BnGeom& g, const T* dy, const T* x, const double* save,
                              const T* gamma, const T* beta, const T* residual, Act act,
                              const uint8_t* mask, double* gsum) {
  const int64_t C = g.C;
  std::fill(gsum, gsum + 2 * C, 0.0);
  with_act(act, [&](auto A) {
    constexpr Act kA = decltype(A)::value;
    parallel_for(C, grain_for(g.outer * g.inner * 4), [&](int64_t c0, int64_t c1) {
      for (int64_t o = 0; o < g.outer; ++o) {
        if (!selected(mask, o)) continue;
        for (int64_t c = c0; c < c1; ++c) {
          const double mean = save[c], invstd = save[C + c];
          const double gm = gamma ? double(gamma[c]) : 1.0, bt = beta ? double(beta[c]) : 0.0;
          const int64_t base = (o * C + c) * g.inner;
          double s = 0, sx = 0;
          for (int64_t i = 0; i < g.inner; ++i) {
            const double xhat = (double(x[base + i]) - mean) * invstd;
            const double dz = grad_z<kA>(dy, residual, base + i, xhat, gm, bt);
            s += dz;
            sx += dz * xhat;
          }
          gsum[c] += s;
          gsum[C + c] += sx;
        }
      }
    });
  });
}

template <class T>
void batch_norm_grad_apply_ref(const BnGeom& g, const T* dy, const T* x, const double* save,
                               const T* gamma, const T* beta, const T* residual, Act act,
                               const uint8_t* mask, const double* gsum, double count, bool training,
                               T* dx, T* dresidual) {
  const int64_t C = g.C;
  const double inv_n = count > 0 ? 1.0 / count : 0.0;
  with_act(act, [&](auto A) {
    constexpr Act kA = decltype(A)::value;
    parallel_for(g.outer * C, grain_for(g.inner * 4), [&](int64_t b, int64_t e) {
      for (int64_t oc = b; oc < e; ++oc) {
        const int64_t o = oc / C, c = oc % C;
        const bool sel = selected(mask, o);
        const double mean = save[c], invstd = save[C + c];
        const double gm = gamma ? double(gamma[c]) : 1.0, bt = beta ? double(beta[c]) : 0.0;
        const double mean_dz = gsum[c] * inv_n, mean_dzx = gsum[C + c] * inv_n;
        const int64_t base = oc * g.inner;
        for (int64_t i = 0; i < g.inner; ++i) {
          const double xhat = (double(x[base + i]) - mean) * invstd;
          const double dz = grad_z<kA>(dy, residual, base + i, xhat, gm, bt);
          if (dresidual) dresidual[base + i] = sel ? T(dz) : T(0);
          double d = 0;
          if (sel) d = training ? gm * invstd * (dz - mean_dz - xhat * mean_dzx) : gm * invstd * dz;
          dx[base + i] = T(d);
        }
      }
    });
  });
}

template <class T>
void batch_norm_param_grads_ref(int64_t C, const double* gsum, T* dgamma, T* dbeta) {
  for (int64_t c = 0; c < C; ++c) {
    if (dgamma) dgamma[c] += T(gsum[C + c]);
    if (dbeta) dbeta[c] += T(gsum[c]);
  }
}

#define SC_INSTANTIATE(T)                                                                        \
  template void batch_norm_stats_ref<T>(const BnGeom&, const T*, const uint8_t*, double*);       \
  template void batch_norm_finalize_ref<T>(int64_t, const double*, T*, T*, bool, double, double, \
                                           double*);                                             \
  template void batch_norm_apply_ref<T>(const BnGeom&, const T*, const double*, const T*,        \
                                        const T*, const T*, Act, T*);                            \
  template void batch_norm_grad_sums_ref<T>(const BnGeom&, const T*, const T*, const double*,    \
                                            const T*, const T*, const T*, Act, const uint8_t*,   \
                                            double*);                                            \
  template void batch_norm_grad_apply_ref<T>(const BnGeom&, const T*, const T*, const double*,   \
                                             const T*, const T*, const T*, Act, const uint8_t*,  \
                                             const double*, double, bool, T*, T*);               \
  template void batch_norm_param_grads_ref<T>(int64_t, const double*, T*, T*);
SC_INSTANTIATE(float)
SC_INSTANTIATE(double)
#undef SC_INSTANTIATE

}  // namespace sc
