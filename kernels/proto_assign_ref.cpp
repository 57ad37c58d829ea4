// proto_assign_ref.cpp: CPU reference of prototype assignment (see proto_assign.h).
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/check.h"
#include "kernels/proto_assign.h"

namespace sc {
namespace {

void check_shape(const ProtoAssignShape& s, double tau, const char* what) {
  SC_KERNEL_REQUIRE(s.B >= 1 && s.K >= 1 && s.D >= 1 && s.P >= 1, what, "empty shape");
  SC_KERNEL_REQUIRE(tau > 0, what, "tau must be positive");
}

// Unit prototypes (K, D) and their norms, in double.
template <class T>
void normalise_protos(const ProtoAssignShape& s, const T* protos, std::vector<double>& pn,
                      std::vector<double>& norm) {
  pn.assign(size_t(s.K * s.D), 0.0);
  norm.assign(size_t(s.K), 0.0);
  for (int64_t k = 0; k < s.K; ++k) {
    double ss = 0;
    for (int64_t d = 0; d < s.D; ++d)
      ss += double(protos[k * s.D + d]) * double(protos[k * s.D + d]);
    norm[size_t(k)] = std::sqrt(ss);
    const double inv = 1.0 / std::max(norm[size_t(k)], kProtoNormEps);
    for (int64_t d = 0; d < s.D; ++d) pn[size_t(k * s.D + d)] = double(protos[k * s.D + d]) * inv;
  }
}

// Unit pixel features of image b as (P, D) and their norms.
template <class T>
void normalise_pixels(const ProtoAssignShape& s, const T* xb, std::vector<double>& xn,
                      std::vector<double>& norm) {
  xn.assign(size_t(s.P * s.D), 0.0);
  norm.assign(size_t(s.P), 0.0);
  for (int64_t p = 0; p < s.P; ++p) {
    double ss = 0;
    for (int64_t d = 0; d < s.D; ++d) ss += double(xb[d * s.P + p]) * double(xb[d * s.P + p]);
    norm[size_t(p)] = std::sqrt(ss);
    const double inv = 1.0 / std::max(norm[size_t(p)], kProtoNormEps);
    for (int64_t d = 0; d < s.D; ++d) xn[size_t(p * s.D + d)] = double(xb[d * s.P + p]) * inv;
  }
}

// dL/dv of y = v / max(||v||, eps) given y, dy and ||v||, in place on dy (n elements).
void normalise_backward(double* dy, const double* y, double norm, int64_t n) {
  if (norm > kProtoNormEps) {
    double dot = 0;
    for (int64_t i = 0; i < n; ++i) dot += y[i] * dy[i];
    for (int64_t i = 0; i < n; ++i) dy[i] = (dy[i] - y[i] * dot) / norm;
  } else {
    for (int64_t i = 0; i < n; ++i) dy[i] /= kProtoNormEps;
  }
}

}  // namespace

template <class T>
void proto_assign_forward_ref(const ProtoAssignShape& s, const T* x, const T* protos, double tau,
                              T* dots, T* attn) {
  check_shape(s, tau, "proto_assign_forward_ref");
  const int64_t K = s.K, D = s.D, P = s.P;
  std::vector<double> pn, pnorm, xn, xnorm, col(static_cast<size_t>(K));
  normalise_protos(s, protos, pn, pnorm);
  for (int64_t b = 0; b < s.B; ++b) {
    normalise_pixels(s, x + b * D * P, xn, xnorm);
    for (int64_t p = 0; p < P; ++p) {
      double m = -INFINITY;
      for (int64_t k = 0; k < K; ++k) {
        double acc = 0;
        for (int64_t d = 0; d < D; ++d) acc += pn[size_t(k * D + d)] * xn[size_t(p * D + d)];
        col[size_t(k)] = acc;
        if (dots) dots[(b * K + k) * P + p] = T(acc);
        m = std::max(m, acc / tau);
      }
      if (!attn) continue;
      double sum = 0;
      for (int64_t k = 0; k < K; ++k) sum += std::exp(col[size_t(k)] / tau - m);
      for (int64_t k = 0; k < K; ++k)
        attn[(b * K + k) * P + p] = T(std::exp(col[size_t(k)] / tau - m) / sum + kAttnEps);
    }
  }
}

template <class T>
void proto_assign_backward_ref(const ProtoAssignShape& s, const T* x, const T* protos,
                               const T* dots, double tau, const T* dL_ddots, const T* dL_dattn,
                               T* dL_dx, T* dL_dprotos) {
  check_shape(s, tau, "proto_assign_backward_ref");
  const int64_t K = s.K, D = s.D, P = s.P;
  std::vector<double> pn, pnorm, xn, xnorm;
  normalise_protos(s, protos, pn, pnorm);
  std::vector<double> dpn(size_t(K * D), 0.0), G(static_cast<size_t>(K)),
      sm(static_cast<size_t>(K)), dxn(static_cast<size_t>(D));
  for (int64_t b = 0; b < s.B; ++b) {
    normalise_pixels(s, x + b * D * P, xn, xnorm);
    for (int64_t p = 0; p < P; ++p) {
      // G = dL/d dots for this pixel.
      double m = -INFINITY;
      for (int64_t k = 0; k < K; ++k) m = std::max(m, double(dots[(b * K + k) * P + p]) / tau);
      double sum = 0;
      for (int64_t k = 0; k < K; ++k) {
        sm[size_t(k)] = std::exp(double(dots[(b * K + k) * P + p]) / tau - m);
        sum += sm[size_t(k)];
      }
      double c = 0;
      for (int64_t k = 0; k < K; ++k) {
        sm[size_t(k)] /= sum;
        if (dL_dattn) c += sm[size_t(k)] * double(dL_dattn[(b * K + k) * P + p]);
      }
      for (int64_t k = 0; k < K; ++k) {
        const int64_t i = (b * K + k) * P + p;
        double g = dL_ddots ? double(dL_ddots[i]) : 0.0;
        if (dL_dattn) g += sm[size_t(k)] * (double(dL_dattn[i]) - c) / tau;
        G[size_t(k)] = g;
      }
      // dL/dxn and dL/dpn
      std::fill(dxn.begin(), dxn.end(), 0.0);
      for (int64_t k = 0; k < K; ++k) {
        const double g = G[size_t(k)];
        if (g == 0) continue;
        for (int64_t d = 0; d < D; ++d) {
          dxn[size_t(d)] += g * pn[size_t(k * D + d)];
          dpn[size_t(k * D + d)] += g * xn[size_t(p * D + d)];
        }
      }
      if (dL_dx) {
        normalise_backward(dxn.data(), &xn[size_t(p * D)], xnorm[size_t(p)], D);
        for (int64_t d = 0; d < D; ++d) dL_dx[(b * D + d) * P + p] = T(dxn[size_t(d)]);
      }
    }
  }
  if (dL_dprotos) {
    for (int64_t k = 0; k < K; ++k) {
      normalise_backward(&dpn[size_t(k * D)], &pn[size_t(k * D)], pnorm[size_t(k)], D);
      for (int64_t d = 0; d < D; ++d)
        dL_dprotos[k * D + d] = T(double(dL_dprotos[k * D + d]) + dpn[size_t(k * D + d)]);
    }
  }
}

#define SC_INSTANTIATE(T)                                                                        \
  template void proto_assign_forward_ref<T>(const ProtoAssignShape&, const T*, const T*, double, \
                                            T*, T*);                                             \
  template void proto_assign_backward_ref<T>(const ProtoAssignShape&, const T*, const T*,        \
                                             const T*, double, const T*, const T*, T*, T*);
SC_INSTANTIATE(float)
SC_INSTANTIATE(double)
#undef SC_INSTANTIATE

}  // namespace sc
