// multi_tensor.cu: CUDA multi-tensor updates (see multi_tensor.h). The list travels in the
// kernel's parameters, kGroupTensors tensors per launch (their pointers, lengths, flags and the
// first chunk of each); block b handles chunk b of the group. No host synchronisation, no
// allocation: the same launches every step, so a captured CUDA graph replays them.
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/check.h"
#include "kernels/common.cuh"
#include "kernels/multi_tensor.h"

namespace sc {
namespace {

using namespace kernels;  // Acc, warp_sum

constexpr int kThreads = 256;

template <class T>
struct Group {
  T* a[kGroupTensors];
  T* b[kGroupTensors];
  T* c[kGroupTensors];
  int64_t n[kGroupTensors];
  int chunk0[kGroupTensors + 1];  // the group's first chunk of each tensor; chunk0[count] = all
  uint8_t flag[kGroupTensors];
  int count;
  int part0;  // LARS: this group's first chunk in the whole list's partial-norm array
  double elems() const {  // host side, for the trace
    double e = 0;
    for (int i = 0; i < count; ++i) e += double(n[i]);
    return e;
  }
};

__device__ __forceinline__ int64_t chunk_end(int64_t n, int64_t i0) {
  return n < i0 + kChunkElems ? n : i0 + kChunkElems;
}

// The tensor of chunk c (the groups are small: a scan).
template <class T>
__device__ int tensor_of(const Group<T>& g, int c) {
  int t = 0;
  while (t + 1 < g.count && g.chunk0[t + 1] <= c) ++t;
  return t;
}

// Sum of v over the block (kThreads threads); every thread gets it.
__device__ double block_sum(double v, double* shared /* kThreads / 32 + 1 */) {
  v = warp_sum(v);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    double s = 0;
    for (int w = 0; w < kThreads / 32; ++w) s += shared[w];
    shared[kThreads / 32] = s;
  }
  __syncthreads();
  const double s = shared[kThreads / 32];
  __syncthreads();  // shared may be reused by the caller
  return s;
}

template <class T>
__global__ void lars_norms_kernel(Group<T> g, double wd, double* parts) {
  __shared__ double red[kThreads / 32 + 1];
  const int c = blockIdx.x, t = tensor_of(g, c);
  if (!g.flag[t]) return;  // the whole block leaves: no barrier is reached
  const int64_t i0 = int64_t(c - g.chunk0[t]) * kChunkElems;
  const int64_t i1 = chunk_end(g.n[t], i0);
  const T* p = g.a[t];
  const T* gr = g.b[t];
  double sp = 0, sg = 0;
  for (int64_t i = i0 + threadIdx.x; i < i1; i += kThreads) {
    const double pv = double(p[i]);
    const double gv = double(T(gr[i] + T(wd) * p[i]));
    sp += pv * pv;
    sg += gv * gv;
  }
  sp = block_sum(sp, red);
  sg = block_sum(sg, red);
  if (threadIdx.x == 0) {
    parts[2 * (g.part0 + c)] = sp;
    parts[2 * (g.part0 + c) + 1] = sg;
  }
}

template <class T>
__global__ void lars_update_kernel(Group<T> g, const double* parts, double lr, double momentum,
                                   double wd, double trust, const uint8_t* skip,
                                   const double* lr_dev) {
  __shared__ double red[kThreads / 32 + 1];
  const int c = blockIdx.x, t = tensor_of(g, c);
  const bool matrix = g.flag[t] != 0;
  double ratio = 1.0;
  if (matrix) {  // the tensor's norms: its chunks' partial sums, in chunk order per thread
    double sp = 0, sg = 0;
    for (int k = g.chunk0[t] + int(threadIdx.x); k < g.chunk0[t + 1]; k += kThreads) {
      sp += parts[2 * (g.part0 + k)];
      sg += parts[2 * (g.part0 + k) + 1];
    }
    sp = block_sum(sp, red);
    sg = block_sum(sg, red);
    const double pn = sqrt(sp), gn = sqrt(sg);
    if (pn > 0 && gn > 0) ratio = trust * pn / gn;
  }
  // The skip flag is read after the norms, so that every launch takes the same barriers whatever
  // the flag (the CUDA emulator runs a launch site without fibers once its first launch took no
  // barrier: an fp16 run whose first steps overflow would otherwise meet one later).
  if (skip && *skip) return;
  const int64_t i0 = int64_t(c - g.chunk0[t]) * kChunkElems;
  const int64_t i1 = chunk_end(g.n[t], i0);
  T* p = g.a[t];
  const T* gr = g.b[t];
  T* v = g.c[t];
  const T r = T(ratio), w = T(wd), m = T(momentum), a = T(lr_dev ? *lr_dev : lr);
  for (int64_t i = i0 + threadIdx.x; i < i1; i += kThreads) {
    const T gi = matrix ? T(gr[i] + w * p[i]) * r : gr[i];
    const T vi = m * v[i] + gi;
    v[i] = vi;
    p[i] = p[i] - a * vi;
  }
}

template <class T>
__global__ void sgd_kernel(Group<T> g, double lr, double momentum, double wd, const uint8_t* skip,
                           const double* lr_dev) {
  if (skip && *skip) return;
  const int c = blockIdx.x, t = tensor_of(g, c);
  const int64_t i0 = int64_t(c - g.chunk0[t]) * kChunkElems;
  const int64_t i1 = chunk_end(g.n[t], i0);
  T* p = g.a[t];
  const T* gr = g.b[t];
  T* v = g.c[t];
  const T w = T(wd), m = T(momentum), a = T(lr_dev ? *lr_dev : lr);
  for (int64_t i = i0 + threadIdx.x; i < i1; i += kThreads) {
    const T vi = m * v[i] + (gr[i] + w * p[i]);
    v[i] = vi;
    p[i] = p[i] - a * vi;
  }
}

template <class T>
__global__ void ema_kernel(Group<T> g, double m_host, const double* m_dev) {
  const double m = m_dev ? *m_dev : m_host;
  const int c = blockIdx.x, t = tensor_of(g, c);
  const int64_t i0 = int64_t(c - g.chunk0[t]) * kChunkElems;
  const int64_t i1 = chunk_end(g.n[t], i0);
  T* k = g.a[t];
  const T* q = g.b[t];
  const T mk = T(m), mq = T(1.0 - m);
  for (int64_t i = i0 + threadIdx.x; i < i1; i += kThreads) k[i] = mk * k[i] + mq * q[i];
}

template <class T>
__global__ void unscale_kernel(Group<T> g, const double* scale, uint8_t* found) {
  const int c = blockIdx.x, t = tensor_of(g, c);
  const int64_t i0 = int64_t(c - g.chunk0[t]) * kChunkElems;
  const int64_t i1 = chunk_end(g.n[t], i0);
  T* gr = g.a[t];
  const T inv = T(1.0 / scale[0]);
  bool bad = false;
  for (int64_t i = i0 + threadIdx.x; i < i1; i += kThreads) {
    const T x = gr[i] * inv;
    gr[i] = x;
    bad |= !isfinite(x);
  }
  if (bad) *found = 1;  // every writer writes the same byte
}

__global__ void nonfinite_flag_kernel(int64_t n, const double* x, uint8_t* found) {
  if (threadIdx.x != 0) return;
  uint8_t f = 0;
  for (int64_t i = 0; i < n; ++i)
    if (!isfinite(x[i])) f = 1;
  *found = f;
}

__global__ void scaler_update_kernel(double* state, const uint8_t* found, double growth,
                                     double backoff, int64_t interval) {
  if (*found) {
    state[0] *= backoff;
    state[1] = 0;
  } else if (++state[1] >= double(interval)) {
    state[0] *= growth;
    state[1] = 0;
  }
}

int64_t chunks_of(int64_t n) { return (n + kChunkElems - 1) / kChunkElems; }

// Calls launch(group, blocks) for each group of the list (roles: how many of a, b, c it has).
template <class T, class F>
void for_each_group(const TensorList& l, int roles, const char* op, F&& launch) {
  SC_KERNEL_REQUIRE(l.a.size() == l.size() && (roles < 2 || l.b.size() == l.size()) &&
                        (roles < 3 || l.c.size() == l.size()) &&
                        (l.flag.empty() || l.flag.size() == l.size()),
                    op, "the list's arrays differ in length");
  int part0 = 0;
  for (size_t t0 = 0; t0 < l.size(); t0 += kGroupTensors) {
    Group<T> g{};
    g.count = int(std::min<size_t>(kGroupTensors, l.size() - t0));
    g.part0 = part0;
    int chunks = 0;
    for (int i = 0; i < g.count; ++i) {
      const size_t t = t0 + size_t(i);
      g.a[i] = static_cast<T*>(l.a[t]);
      g.b[i] = roles >= 2 ? static_cast<T*>(l.b[t]) : nullptr;
      g.c[i] = roles >= 3 ? static_cast<T*>(l.c[t]) : nullptr;
      g.n[i] = l.n[t];
      g.flag[i] = l.flag.empty() ? 0 : l.flag[t];
      g.chunk0[i] = chunks;
      SC_KERNEL_REQUIRE(l.n[t] > 0, op, "a tensor of the list is empty");
      const int64_t total = chunks + chunks_of(l.n[t]);
      SC_KERNEL_REQUIRE(total < (int64_t(1) << 31), op, "too many chunks in one group");
      chunks = int(total);
    }
    g.chunk0[g.count] = chunks;
    launch(g, chunks);
    part0 += chunks;
  }
}

template <class F>
void float_or_double(DType dtype, const char* op, F&& f) {
  if (dtype == DType::F32)
    f(float{});
  else if (dtype == DType::F64)
    f(double{});
  else
    fail(op, std::string("the multi-tensor updates take F32 or F64 tensors, not ") +
                 dtype_name(dtype));
}

}  // namespace

void multi_lars_cuda(DType dtype, const TensorList& l, double lr, double momentum, double wd,
                     double trust, const uint8_t* skip, void* workspace, cudaStream_t stream,
                     const double* lr_dev) {
  if (l.size() == 0) return;
  double* parts = static_cast<double*>(workspace);
  float_or_double(dtype, "multi_lars_cuda", [&](auto tv) {
    using T = decltype(tv);
    for_each_group<T>(l, 3, "multi_lars_cuda", [&](const Group<T>& g, int blocks) {
      lars_norms_kernel<T><<<blocks, kThreads, 0, stream>>>(g, wd, parts);
      SC_TRACE_WORK(2 * g.elems() * sizeof(T), 6 * g.elems(), FP64);
      SC_KERNEL_LAUNCHED("lars_norms_kernel");
      lars_update_kernel<T>
          <<<blocks, kThreads, 0, stream>>>(g, parts, lr, momentum, wd, trust, skip, lr_dev);
      SC_TRACE_WORK(5 * g.elems() * sizeof(T), 6 * g.elems(), FP32);
      SC_KERNEL_LAUNCHED("lars_update_kernel");
    });
  });
}

void multi_sgd_cuda(DType dtype, const TensorList& l, double lr, double momentum, double wd,
                    const uint8_t* skip, cudaStream_t stream, const double* lr_dev) {
  if (l.size() == 0) return;
  float_or_double(dtype, "multi_sgd_cuda", [&](auto tv) {
    using T = decltype(tv);
    for_each_group<T>(l, 3, "multi_sgd_cuda", [&](const Group<T>& g, int blocks) {
      sgd_kernel<T><<<blocks, kThreads, 0, stream>>>(g, lr, momentum, wd, skip, lr_dev);
      SC_TRACE_WORK(5 * g.elems() * sizeof(T), 5 * g.elems(), FP32);
      SC_KERNEL_LAUNCHED("sgd_kernel");
    });
  });
}

void multi_ema_cuda(DType dtype, const TensorList& l, double m, cudaStream_t stream,
                    const double* m_dev) {
  if (l.size() == 0) return;
  float_or_double(dtype, "multi_ema_cuda", [&](auto tv) {
    using T = decltype(tv);
    for_each_group<T>(l, 2, "multi_ema_cuda", [&](const Group<T>& g, int blocks) {
      ema_kernel<T><<<blocks, kThreads, 0, stream>>>(g, m, m_dev);
      SC_TRACE_WORK(3 * g.elems() * sizeof(T), 3 * g.elems(), FP32);
      SC_KERNEL_LAUNCHED("ema_kernel");
    });
  });
}

void multi_unscale_cuda(DType dtype, const TensorList& l, const double* scale, uint8_t* found,
                        cudaStream_t stream) {
  if (l.size() == 0) return;
  float_or_double(dtype, "multi_unscale_cuda", [&](auto tv) {
    using T = decltype(tv);
    for_each_group<T>(l, 1, "multi_unscale_cuda", [&](const Group<T>& g, int blocks) {
      unscale_kernel<T><<<blocks, kThreads, 0, stream>>>(g, scale, found);
      SC_TRACE_WORK(2 * g.elems() * sizeof(T), g.elems(), FP32);
      SC_KERNEL_LAUNCHED("unscale_kernel");
    });
  });
}

void nonfinite_flag_cuda(int64_t n, const double* x, uint8_t* found, cudaStream_t stream) {
  nonfinite_flag_kernel<<<1, 32, 0, stream>>>(n, x, found);
  SC_TRACE_WORK(8 * n + 1, n, FP64);
  SC_KERNEL_LAUNCHED("nonfinite_flag_kernel");
}

void scaler_update_cuda(double* state, const uint8_t* found, double growth, double backoff,
                        int64_t interval, cudaStream_t stream) {
  scaler_update_kernel<<<1, 1, 0, stream>>>(state, found, growth, backoff, interval);
  SC_TRACE_WORK(33, 2, FP64);
  SC_KERNEL_LAUNCHED("scaler_update_kernel");
}

}  // namespace sc
