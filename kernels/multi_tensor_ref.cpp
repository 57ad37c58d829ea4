// multi_tensor_ref.cpp: CPU reference of the multi-tensor updates (see multi_tensor.h). The LARS
// norms are summed in double per chunk of kChunkElems elements and the chunks in order, as the
// CUDA kernels do, so that the result does not depend on the number of threads.
#include <cmath>
#include <string>

#include "kernels/check.h"
#include "kernels/multi_tensor.h"
#include "kernels/parallel.h"

namespace sc {
namespace {

void check_list(const TensorList& l, const char* op, int roles) {
  const size_t n = l.n.size();
  SC_KERNEL_REQUIRE(l.a.size() == n && (roles < 2 || l.b.size() == n) &&
                        (roles < 3 || l.c.size() == n) && (l.flag.empty() || l.flag.size() == n),
                    op, "the list's arrays differ in length");
}

int64_t chunks_of(int64_t n) { return (n + kChunkElems - 1) / kChunkElems; }

// Calls f(t, i0, i1, c) for every chunk c of every tensor t of the list, in parallel over the
// chunks; returns the number of chunks.
template <class F>
int64_t for_each_chunk(const TensorList& l, F&& f) {
  std::vector<std::pair<int64_t, int64_t>> chunks;  // (tensor, first element)
  for (size_t t = 0; t < l.size(); ++t)
    for (int64_t c = 0; c < chunks_of(l.n[t]); ++c) chunks.emplace_back(int64_t(t), c * kChunkElems);
  parallel_for(int64_t(chunks.size()), 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const auto [t, i0] = chunks[size_t(c)];
      f(size_t(t), i0, std::min(l.n[size_t(t)], i0 + kChunkElems), c);
    }
  });
  return int64_t(chunks.size());
}

}  // namespace

size_t multi_lars_workspace_bytes(const TensorList& l) {
  int64_t chunks = 0;
  for (int64_t n : l.n) chunks += chunks_of(n);
  return size_t(chunks) * 2 * sizeof(double);
}

template <class T>
void multi_lars_ref(const TensorList& l, double lr, double momentum, double wd, double trust,
                    const uint8_t* skip) {
  check_list(l, "multi_lars_ref", 3);
  if (skip && *skip) return;
  // per tensor: the trust ratio, from per-chunk partial norms summed in chunk order
  std::vector<double> ratio(l.size(), 1.0);
  std::vector<std::vector<double>> pp(l.size()), gg(l.size());
  for (size_t t = 0; t < l.size(); ++t)
    if (!l.flag.empty() && l.flag[t]) {
      pp[t].assign(size_t(chunks_of(l.n[t])), 0.0);
      gg[t].assign(size_t(chunks_of(l.n[t])), 0.0);
    }
  for_each_chunk(l, [&](size_t t, int64_t i0, int64_t i1, int64_t) {
    if (l.flag.empty() || !l.flag[t]) return;
    const T* p = static_cast<const T*>(l.a[t]);
    const T* g = static_cast<const T*>(l.b[t]);
    double sp = 0, sg = 0;
    for (int64_t i = i0; i < i1; ++i) {
      const double pv = double(p[i]);
      const double gv = double(T(g[i] + T(wd) * p[i]));
      sp += pv * pv;
      sg += gv * gv;
    }
    pp[t][size_t(i0 / kChunkElems)] = sp;
    gg[t][size_t(i0 / kChunkElems)] = sg;
  });
  for (size_t t = 0; t < l.size(); ++t) {
    if (l.flag.empty() || !l.flag[t]) continue;
    double sp = 0, sg = 0;
    for (size_t c = 0; c < pp[t].size(); ++c) {
      sp += pp[t][c];
      sg += gg[t][c];
    }
    const double pn = std::sqrt(sp), gn = std::sqrt(sg);
    ratio[t] = pn > 0 && gn > 0 ? trust * pn / gn : 1.0;
  }
  for_each_chunk(l, [&](size_t t, int64_t i0, int64_t i1, int64_t) {
    T* p = static_cast<T*>(l.a[t]);
    const T* g = static_cast<const T*>(l.b[t]);
    T* v = static_cast<T*>(l.c[t]);
    const bool matrix = !l.flag.empty() && l.flag[t];
    const T r = T(ratio[t]), w = T(wd), m = T(momentum), a = T(lr);
    for (int64_t i = i0; i < i1; ++i) {
      const T gi = matrix ? T(g[i] + w * p[i]) * r : g[i];
      v[i] = m * v[i] + gi;
      p[i] = p[i] - a * v[i];
    }
  });
}

template <class T>
void multi_sgd_ref(const TensorList& l, double lr, double momentum, double wd,
                   const uint8_t* skip) {
  check_list(l, "multi_sgd_ref", 3);
  if (skip && *skip) return;
  for_each_chunk(l, [&](size_t t, int64_t i0, int64_t i1, int64_t) {
    T* p = static_cast<T*>(l.a[t]);
    const T* g = static_cast<const T*>(l.b[t]);
    T* v = static_cast<T*>(l.c[t]);
    const T w = T(wd), m = T(momentum), a = T(lr);
    for (int64_t i = i0; i < i1; ++i) {
      v[i] = m * v[i] + (g[i] + w * p[i]);
      p[i] = p[i] - a * v[i];
    }
  });
}

template <class T>
void multi_ema_ref(const TensorList& l, double m) {
  check_list(l, "multi_ema_ref", 2);
  for_each_chunk(l, [&](size_t t, int64_t i0, int64_t i1, int64_t) {
    T* k = static_cast<T*>(l.a[t]);
    const T* q = static_cast<const T*>(l.b[t]);
    const T mk = T(m), mq = T(1.0 - m);
    for (int64_t i = i0; i < i1; ++i) k[i] = mk * k[i] + mq * q[i];
  });
}

template <class T>
void multi_unscale_ref(const TensorList& l, const double* scale, uint8_t* found) {
  check_list(l, "multi_unscale_ref", 1);
  const T inv = T(1.0 / scale[0]);
  int64_t chunks = 0;
  for (int64_t n : l.n) chunks += chunks_of(n);
  std::vector<uint8_t> bad(size_t(chunks), 0);  // per chunk: no two threads write one flag
  for_each_chunk(l, [&](size_t t, int64_t i0, int64_t i1, int64_t c) {
    T* g = static_cast<T*>(l.a[t]);
    bool any = false;
    for (int64_t i = i0; i < i1; ++i) {
      g[i] = g[i] * inv;
      any |= !std::isfinite(g[i]);
    }
    bad[size_t(c)] = any;
  });
  for (uint8_t b : bad)
    if (b) *found = 1;
}

void nonfinite_flag_ref(int64_t n, const double* x, uint8_t* found) {
  uint8_t f = 0;
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) f = 1;
  *found = f;
}

void scaler_update_ref(double* state, const uint8_t* found, double growth, double backoff,
                       int64_t interval) {
  if (*found) {
    state[0] *= backoff;
    state[1] = 0;
  } else if (++state[1] >= double(interval)) {
    state[0] *= growth;
    state[1] = 0;
  }
}

#define SC_MULTI_TENSOR_REF(T)                                                                  \
  template void multi_lars_ref<T>(const TensorList&, double, double, double, double,           \
                                  const uint8_t*);                                             \
  template void multi_sgd_ref<T>(const TensorList&, double, double, double, const uint8_t*);   \
  template void multi_ema_ref<T>(const TensorList&, double);                                   \
  template void multi_unscale_ref<T>(const TensorList&, const double*, uint8_t*);
SC_MULTI_TENSOR_REF(float)
SC_MULTI_TENSOR_REF(double)
#undef SC_MULTI_TENSOR_REF

}  // namespace sc
