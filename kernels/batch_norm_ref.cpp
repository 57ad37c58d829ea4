// batch_norm_ref.cpp: CPU reference of the batch-norm passes (see batch_norm.h).
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/batch_norm.h"

namespace sc {

double act_forward(Act a, double z) {
  switch (a) {
    case Act::None:
      return z;
    case Act::Relu:
      return z > 0 ? z : 0.0;
    case Act::Gelu:
      return 0.5 * z * (1.0 + std::erf(z * M_SQRT1_2));
  }
  return z;
}

double act_derivative(Act a, double z) {
  switch (a) {
    case Act::None:
      return 1.0;
    case Act::Relu:
      return z > 0 ? 1.0 : 0.0;
    case Act::Gelu: {
      const double cdf = 0.5 * (1.0 + std::erf(z * M_SQRT1_2));
      const double pdf = std::exp(-0.5 * z * z) * 0.3989422804014327;  // 1/sqrt(2 pi)
      return cdf + z * pdf;
    }
  }
  return 1.0;
}

namespace {
inline bool selected(const uint8_t* mask, int64_t o) { return mask == nullptr || mask[o] != 0; }
}  // namespace

template <class T>
void batch_norm_stats_ref(const BnGeom& g, const T* x, const uint8_t* mask, double* stats) {
  const int64_t C = g.C;
  std::fill(stats, stats + 2 * C + 1, 0.0);
  int64_t rows = 0;
  for (int64_t o = 0; o < g.outer; ++o) {
    if (!selected(mask, o)) continue;
    ++rows;
    for (int64_t c = 0; c < C; ++c) {
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
  for (int64_t o = 0; o < g.outer; ++o)
    for (int64_t c = 0; c < C; ++c) {
      const double scale = (gamma ? double(gamma[c]) : 1.0) * save[C + c];
      const double shift = (beta ? double(beta[c]) : 0.0) - save[c] * scale;
      const int64_t base = (o * C + c) * g.inner;
      for (int64_t i = 0; i < g.inner; ++i) {
        double z = double(x[base + i]) * scale + shift;
        if (residual) z += double(residual[base + i]);
        y[base + i] = T(act_forward(act, z));
      }
    }
}

template <class T>
void batch_norm_grad_sums_ref(const BnGeom& g, const T* dy, const T* x, const double* save,
                              const T* gamma, const T* beta, const T* residual, Act act,
                              const uint8_t* mask, double* gsum) {
  const int64_t C = g.C;
  std::fill(gsum, gsum + 2 * C, 0.0);
  for (int64_t o = 0; o < g.outer; ++o) {
    if (!selected(mask, o)) continue;
    for (int64_t c = 0; c < C; ++c) {
      const double mean = save[c], invstd = save[C + c];
      const double gm = gamma ? double(gamma[c]) : 1.0, bt = beta ? double(beta[c]) : 0.0;
      const int64_t base = (o * C + c) * g.inner;
      double s = 0, sx = 0;
      for (int64_t i = 0; i < g.inner; ++i) {
        const double xhat = (double(x[base + i]) - mean) * invstd;
        double dz = double(dy[base + i]);
        if (act != Act::None) {
          double z = xhat * gm + bt;
          if (residual) z += double(residual[base + i]);
          dz *= act_derivative(act, z);
        }
        s += dz;
        sx += dz * xhat;
      }
      gsum[c] += s;
      gsum[C + c] += sx;
    }
  }
}

template <class T>
void batch_norm_grad_apply_ref(const BnGeom& g, const T* dy, const T* x, const double* save,
                               const T* gamma, const T* beta, const T* residual, Act act,
                               const uint8_t* mask, const double* gsum, double count, bool training,
                               T* dx, T* dresidual) {
  const int64_t C = g.C;
  const double inv_n = count > 0 ? 1.0 / count : 0.0;
  for (int64_t o = 0; o < g.outer; ++o) {
    const bool sel = selected(mask, o);
    for (int64_t c = 0; c < C; ++c) {
      const double mean = save[c], invstd = save[C + c];
      const double gm = gamma ? double(gamma[c]) : 1.0, bt = beta ? double(beta[c]) : 0.0;
      const double mean_dz = gsum[c] * inv_n, mean_dzx = gsum[C + c] * inv_n;
      const int64_t base = (o * C + c) * g.inner;
      for (int64_t i = 0; i < g.inner; ++i) {
        const double xhat = (double(x[base + i]) - mean) * invstd;
        double dz = double(dy[base + i]);
        if (act != Act::None) {
          double z = xhat * gm + bt;
          if (residual) z += double(residual[base + i]);
          dz *= act_derivative(act, z);
        }
        if (dresidual) dresidual[base + i] = sel ? T(dz) : T(0);
        double d = 0;
        if (sel) d = training ? gm * invstd * (dz - mean_dz - xhat * mean_dzx) : gm * invstd * dz;
        dx[base + i] = T(d);
      }
    }
  }
}

template <class T>
void batch_norm_param_grads_ref(int64_t C, const double* gsum, T* dgamma, T* dbeta) {
  for (int64_t c = 0; c < C; ++c) {
    if (dgamma) dgamma[c] += T(gsum[C + c]);
    if (dbeta) dbeta[c] += T(gsum[c]);
  }
}

template <class T>
void add_relu_ref(int64_t n, const T* a, const T* b, T* y) {
  for (int64_t i = 0; i < n; ++i) {
    const T z = a[i] + b[i];
    y[i] = z > T(0) ? z : T(0);
  }
}

template <class T>
void add_relu_backward_ref(int64_t n, const T* dy, const T* y, T* dab) {
  for (int64_t i = 0; i < n; ++i) dab[i] = y[i] > T(0) ? dy[i] : T(0);
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
  template void batch_norm_param_grads_ref<T>(int64_t, const double*, T*, T*);                   \
  template void add_relu_ref<T>(int64_t, const T*, const T*, T*);                                \
  template void add_relu_backward_ref<T>(int64_t, const T*, const T*, T*);
SC_INSTANTIATE(float)
SC_INSTANTIATE(double)
#undef SC_INSTANTIATE

}  // namespace sc
