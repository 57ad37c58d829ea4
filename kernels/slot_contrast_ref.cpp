// slot_contrast_ref.cpp: CPU reference of the slot contrast loss (see slot_contrast.h).
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/check.h"
#include "kernels/slot_contrast.h"

namespace sc {
namespace {

constexpr double kEps = 1e-12;

void check_args(const SlotContrastShape& s, double tau, const char* what) {
  SC_KERNEL_REQUIRE(s.B >= 1 && s.K >= 1 && s.D >= 1 && s.R >= 1, what, "empty shape");
  SC_KERNEL_REQUIRE(s.rank >= 0 && s.rank < s.R, what, "rank out of range");
  SC_KERNEL_REQUIRE(tau > 0, what, "tau must be positive");
}

// Unit rows of a (n, D) matrix and their norms, in double.
template <class T>
void unit_rows(const T* a, int64_t n, int64_t D, std::vector<double>& u,
               std::vector<double>& norm) {
  u.assign(size_t(n * D), 0.0);
  norm.assign(size_t(n), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0;
    for (int64_t d = 0; d < D; ++d) ss += double(a[i * D + d]) * double(a[i * D + d]);
    norm[size_t(i)] = std::sqrt(ss);
    const double inv = 1.0 / std::max(norm[size_t(i)], kEps);
    for (int64_t d = 0; d < D; ++d) u[size_t(i * D + d)] = double(a[i * D + d]) * inv;
  }
}

// Valid queries (indices into the N local rows) and valid keys (indices into R*N).
void valid_rows(const SlotContrastShape& s, const uint8_t* qm, const uint8_t* km,
                std::vector<int64_t>& qs, std::vector<int64_t>& ks) {
  const int64_t N = s.rows();
  qs.clear();
  ks.clear();
  for (int64_t i = 0; i < N; ++i)
    if (qm[i] && km[s.rank * N + i]) qs.push_back(i);
  for (int64_t j = 0; j < s.key_rows(); ++j)
    if (km[j]) ks.push_back(j);
}

double dot(const double* a, const double* b, int64_t D) {
  double v = 0;
  for (int64_t d = 0; d < D; ++d) v += a[d] * b[d];
  return v;
}

}  // namespace

template <class T>
void slot_contrast_forward_ref(const SlotContrastShape& s, const T* z, const T* keys,
                               const uint8_t* query_mask, const uint8_t* key_mask, double tau,
                               T* loss, T* row_lse) {
  check_args(s, tau, "slot_contrast_forward_ref");
  const int64_t N = s.rows(), D = s.D;
  std::vector<int64_t> qs, ks;
  valid_rows(s, query_mask, key_mask, qs, ks);
  std::vector<double> zn, zq, kn, kq;
  unit_rows(z, N, D, zn, zq);
  unit_rows(keys, s.key_rows(), D, kn, kq);
  if (row_lse) std::fill(row_lse, row_lse + N, T(0));
  double total = 0;
  std::vector<double> l(ks.size());
  for (int64_t i : qs) {
    double m = -INFINITY;
    for (size_t j = 0; j < ks.size(); ++j) {
      l[j] = dot(&zn[size_t(i * D)], &kn[size_t(ks[j] * D)], D) / tau;
      m = std::max(m, l[j]);
    }
    double se = 0;
    for (double v : l) se += std::exp(v - m);
    const double lse = m + std::log(se);
    const double label = dot(&zn[size_t(i * D)], &kn[size_t((s.rank * N + i) * D)], D) / tau;
    total += lse - label;
    if (row_lse) row_lse[i] = T(lse);
  }
  loss[0] = T(qs.empty() ? 0.0 : 2.0 * tau * total / double(qs.size()));
}

template <class T>
void slot_contrast_backward_ref(const SlotContrastShape& s, const T* z, const T* keys,
                                const uint8_t* query_mask, const uint8_t* key_mask, double tau,
                                const T* row_lse, const T* dL_dloss, T* dL_dz, T* dL_dkeys) {
  check_args(s, tau, "slot_contrast_backward_ref");
  const int64_t N = s.rows(), NK = s.key_rows(), D = s.D;
  std::vector<int64_t> qs, ks;
  valid_rows(s, query_mask, key_mask, qs, ks);
  std::vector<double> zn, zq, kn, kq;
  unit_rows(z, N, D, zn, zq);
  unit_rows(keys, NK, D, kn, kq);
  std::vector<double> dzn(size_t(N * D), 0.0), dkn(size_t(NK * D), 0.0);
  const double c = qs.empty() ? 0.0 : 2.0 * double(dL_dloss[0]) / double(qs.size());
  for (int64_t i : qs) {
    const double lse = double(row_lse[i]);
    const double* zi = &zn[size_t(i * D)];
    for (int64_t j : ks) {
      const double* kj = &kn[size_t(j * D)];
      const double p = c * std::exp(dot(zi, kj, D) / tau - lse);
      for (int64_t d = 0; d < D; ++d) {
        dzn[size_t(i * D + d)] += p * kj[d];
        dkn[size_t(j * D + d)] += p * zi[d];
      }
    }
    const int64_t lab = s.rank * N + i;
    for (int64_t d = 0; d < D; ++d) {
      dzn[size_t(i * D + d)] -= c * kn[size_t(lab * D + d)];
      dkn[size_t(lab * D + d)] -= c * zi[d];
    }
  }
  // Through the normalisations (rows that got no gradient stay 0).
  auto finish = [D](const std::vector<double>& u, const std::vector<double>& norm,
                    std::vector<double>& g, int64_t n, T* out) {
    for (int64_t i = 0; i < n; ++i) {
      double* gi = &g[size_t(i * D)];
      const double* ui = &u[size_t(i * D)];
      const double nr = norm[size_t(i)];
      if (nr > kEps) {
        const double d0 = dot(ui, gi, D);
        for (int64_t d = 0; d < D; ++d) gi[d] = (gi[d] - ui[d] * d0) / nr;
      } else {
        for (int64_t d = 0; d < D; ++d) gi[d] /= kEps;
      }
      for (int64_t d = 0; d < D; ++d) out[i * D + d] = T(gi[d]);
    }
  };
  if (dL_dz) finish(zn, zq, dzn, N, dL_dz);
  if (dL_dkeys) finish(kn, kq, dkn, NK, dL_dkeys);
}

#define SC_INSTANTIATE(T)                                                                       \
  template void slot_contrast_forward_ref<T>(const SlotContrastShape&, const T*, const T*,      \
                                             const uint8_t*, const uint8_t*, double, T*, T*);   \
  template void slot_contrast_backward_ref<T>(const SlotContrastShape&, const T*, const T*,     \
                                              const uint8_t*, const uint8_t*, double, const T*, \
                                              const T*, T*, T*);
SC_INSTANTIATE(float)
SC_INSTANTIATE(double)
#undef SC_INSTANTIATE

}  // namespace sc
