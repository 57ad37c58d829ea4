// add_relu_ref.cpp: CPU reference of the fused residual add + ReLU (see add_relu.h).
#include "kernels/add_relu.h"
#include "kernels/parallel.h"

namespace sc {

template <class T>
void add_relu_ref(int64_t n, const T* a, const T* b, T* y) {
  parallel_for(n, grain_for(1), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T z = a[i] + b[i];
      y[i] = z > T(0) ? z : T(0);
    }
  });
}

template <class T>
void add_relu_backward_ref(int64_t n, const T* dy, const T* y, T* dab) {
  parallel_for(n, grain_for(1), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) dab[i] = y[i] > T(0) ? dy[i] : T(0);
  });
}

template void add_relu_ref<float>(int64_t, const float*, const float*, float*);
template void add_relu_ref<double>(int64_t, const double*, const double*, double*);
template void add_relu_backward_ref<float>(int64_t, const float*, const float*, float*);
template void add_relu_backward_ref<double>(int64_t, const double*, const double*, double*);

}  // namespace sc
