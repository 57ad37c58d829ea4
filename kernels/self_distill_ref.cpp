// self_distill_ref.cpp: CPU reference of the self-distillation loss (see self_distill.h).
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/check.h"
#include "kernels/self_distill.h"

namespace sc {
namespace {

void check_args(const SelfDistillShape& s, double tau_s, double tau_t, const char* what) {
  SC_KERNEL_REQUIRE(s.B >= 1 && s.K >= 1 && s.P >= 1, what, "empty shape");
  SC_KERNEL_REQUIRE(tau_s > 0 && tau_t > 0, what, "temperatures must be positive");
}

}  // namespace

template <class T>
void self_distill_forward_ref(const SelfDistillShape& s, const T* student, const T* teacher,
                              const T* center, double tau_s, double tau_t, const T* teacher_raw,
                              T* loss, T* pixel_stats, T* center_mean) {
  check_args(s, tau_s, tau_t, "self_distill_forward_ref");
  const int64_t K = s.K, P = s.P;
  std::vector<double> csum(size_t(K), 0.0);
  double total = 0;
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t p = 0; p < P; ++p) {
      double ma = -INFINITY, mt = -INFINITY;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t i = (b * K + k) * P + p;
        ma = std::max(ma, double(student[i]) / tau_s);
        mt = std::max(mt, (double(teacher[i]) - double(center[k])) / tau_t);
      }
      double sa = 0, st = 0, wa = 0;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t i = (b * K + k) * P + p;
        sa += std::exp(double(student[i]) / tau_s - ma);
        const double e = std::exp((double(teacher[i]) - double(center[k])) / tau_t - mt);
        st += e;
        wa += e * double(student[i]) / tau_s;
        if (teacher_raw) csum[size_t(k)] += double(teacher_raw[i]);
      }
      const double lse_a = ma + std::log(sa), lse_t = mt + std::log(st);
      total += lse_a - wa / st;
      if (pixel_stats) {
        pixel_stats[(b * P + p) * 2] = T(lse_a);
        pixel_stats[(b * P + p) * 2 + 1] = T(lse_t);
      }
    }
  const double n = double(s.B * P);
  loss[0] = T(total / n);
  if (teacher_raw && center_mean)
    for (int64_t k = 0; k < K; ++k) center_mean[k] = T(csum[size_t(k)] / n);
}

template <class T>
void self_distill_backward_ref(const SelfDistillShape& s, const T* student, const T* teacher,
                               const T* center, double tau_s, double tau_t, const T* pixel_stats,
                               const T* dL_dloss, T* dL_dstudent) {
  check_args(s, tau_s, tau_t, "self_distill_backward_ref");
  const int64_t K = s.K, P = s.P;
  const double scale = double(dL_dloss[0]) / (tau_s * double(s.B * P));
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t p = 0; p < P; ++p) {
      const double lse_a = double(pixel_stats[(b * P + p) * 2]);
      const double lse_t = double(pixel_stats[(b * P + p) * 2 + 1]);
      for (int64_t k = 0; k < K; ++k) {
        const int64_t i = (b * K + k) * P + p;
        const double sa = std::exp(double(student[i]) / tau_s - lse_a);
        const double w = std::exp((double(teacher[i]) - double(center[k])) / tau_t - lse_t);
        dL_dstudent[i] = T(scale * (sa - w));
      }
    }
}

#define SC_INSTANTIATE(T)                                                                          \
  template void self_distill_forward_ref<T>(const SelfDistillShape&, const T*, const T*, const T*, \
                                            double, double, const T*, T*, T*, T*);                 \
  template void self_distill_backward_ref<T>(const SelfDistillShape&, const T*, const T*,          \
                                             const T*, double, double, const T*, const T*, T*);
SC_INSTANTIATE(float)
SC_INSTANTIATE(double)
#undef SC_INSTANTIATE

}  // namespace sc
