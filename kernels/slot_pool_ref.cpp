// slot_pool_ref.cpp: CPU reference of attentive slot pooling (see slot_pool.h).
#include <algorithm>
#include <vector>

#include "kernels/check.h"
#include "kernels/slot_pool.h"

namespace sc {
namespace {

void check_shape(const SlotPoolShape& s, const char* what) {
  SC_KERNEL_REQUIRE(s.B >= 1 && s.K >= 1 && s.D >= 1 && s.P >= 1, what, "empty shape");
}

}  // namespace

template <class T>
void slot_pool_forward_ref(const SlotPoolShape& s, const T* x, const T* attn, T* slots) {
  check_shape(s, "slot_pool_forward_ref");
  const int64_t K = s.K, D = s.D, P = s.P;
  std::vector<double> acc(static_cast<size_t>(D));
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t k = 0; k < K; ++k) {
      const T* a = attn + (b * K + k) * P;
      double asum = 0;
      for (int64_t p = 0; p < P; ++p) asum += double(a[p]);
      for (int64_t d = 0; d < D; ++d) {
        const T* xd = x + (b * D + d) * P;
        double v = 0;
        for (int64_t p = 0; p < P; ++p) v += double(xd[p]) * double(a[p]);
        slots[(b * K + k) * D + d] = T(v / asum);
      }
    }
}

template <class T>
void slot_pool_backward_ref(const SlotPoolShape& s, const T* x, const T* attn, const T* slots,
                            const T* dL_dslots, T* dL_dx, T* dL_dattn) {
  check_shape(s, "slot_pool_backward_ref");
  const int64_t K = s.K, D = s.D, P = s.P;
  std::vector<double> asum(static_cast<size_t>(K)), gs(static_cast<size_t>(K));
  std::vector<double> dx(static_cast<size_t>(D * P));
  for (int64_t b = 0; b < s.B; ++b) {
    for (int64_t k = 0; k < K; ++k) {
      double a = 0;
      for (int64_t p = 0; p < P; ++p) a += double(attn[(b * K + k) * P + p]);
      asum[size_t(k)] = a;
      double c = 0;
      for (int64_t d = 0; d < D; ++d)
        c += double(dL_dslots[(b * K + k) * D + d]) * double(slots[(b * K + k) * D + d]);
      gs[size_t(k)] = c;
    }
    if (dL_dx) {
      std::fill(dx.begin(), dx.end(), 0.0);
      for (int64_t k = 0; k < K; ++k) {
        const T* a = attn + (b * K + k) * P;
        const T* g = dL_dslots + (b * K + k) * D;
        const double inv = 1.0 / asum[size_t(k)];
        for (int64_t d = 0; d < D; ++d) {
          const double gd = double(g[d]) * inv;
          for (int64_t p = 0; p < P; ++p) dx[size_t(d * P + p)] += gd * double(a[p]);
        }
      }
      for (int64_t i = 0; i < D * P; ++i) dL_dx[b * D * P + i] = T(dx[size_t(i)]);
    }
    if (dL_dattn) {
      for (int64_t k = 0; k < K; ++k) {
        const T* g = dL_dslots + (b * K + k) * D;
        for (int64_t p = 0; p < P; ++p) {
          double v = 0;
          for (int64_t d = 0; d < D; ++d) v += double(g[d]) * double(x[(b * D + d) * P + p]);
          dL_dattn[(b * K + k) * P + p] = T((v - gs[size_t(k)]) / asum[size_t(k)]);
        }
      }
    }
  }
}

#define SC_INSTANTIATE(T)                                                                     \
  template void slot_pool_forward_ref<T>(const SlotPoolShape&, const T*, const T*, T*);       \
  template void slot_pool_backward_ref<T>(const SlotPoolShape&, const T*, const T*, const T*, \
                                          const T*, T*, T*);
SC_INSTANTIATE(float)
SC_INSTANTIATE(double)
#undef SC_INSTANTIATE

}  // namespace sc
