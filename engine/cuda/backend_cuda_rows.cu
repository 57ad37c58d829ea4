// The CUDA backend, row half: sum_rows, argmax_rows, softmax / log_softmax and their backward,
// l2norm and its backward, GEMM (cuBLAS), index_select_rows / index_add_rows, compact_rows_index,
// gather_rows / scatter_rows. Contracts:
// engine/backend.h.
//
// Row kernels take dense row-major (rows, cols) tensors. Short rows (cols <= 1024) get one warp
// each, long rows one 512-thread block each; a thread walks its row with the team's stride,
// accumulating serially (float for F32/BF16/F16, double for F64), then the team combines the
// partial values with a shuffle tree (and shared memory across warps). rows = 0 launches nothing;
// cols = 0 gives empty sums (0) and writes nothing else.
#include <cmath>
#include <limits>

#include "engine/cuda/device_memory.h"
#include "engine/cuda/device_utils.cuh"

namespace sc {
namespace cuda {

using namespace detail;

namespace {

// First out-of-range row index seen by a gather/scatter kernel, plus one (0: none). One per
// device (a __device__ variable lives in each device's copy of the module).
__device__ unsigned long long g_bad_index = 0;
__device__ long long g_bad_index_value = 0;
__device__ long long g_bad_index_limit = 0;

__device__ void report_bad_index(int64_t i, int64_t value, int64_t limit) {
  if (atomicCAS(&g_bad_index, 0ull, (unsigned long long)(i + 1)) == 0ull) {
    g_bad_index_value = value;
    g_bad_index_limit = limit;
  }
}

template <class A>
struct SumOp {
  __device__ __forceinline__ A operator()(A x, A y) const { return x + y; }
};

// ------------------------------------------------------------------ sum, argmax
template <class T, bool kBlock>
__global__ void sum_rows_kernel(T* __restrict__ out, const T* __restrict__ in, int64_t rows,
                                int64_t cols) {
  using A = Acc<T>;
  __shared__ A smem[32];
  RowMap<kBlock> rm;
  if (rm.row >= rows) return;  // uniform over the team
  const T* x = in + rm.row * cols;
  A s = A(0);
  for (int64_t c = rm.lane; c < cols; c += rm.threads) s += load_acc(x[c]);
  s = row_allreduce<kBlock>(s, SumOp<A>(), smem);
  if (rm.lane == 0) out[rm.row] = store_acc<T>(s);
}

// Few long rows (a whole-tensor sum is one row): a block per row would leave most of the card
// idle, and one block streams only a few GB/s (5.6 GB/s measured on the H200, 2026-12-04, for a
// one-row sum: docs/gpu.md). So each row is cut into `splits` equal chunks, a block per chunk
// writes its partial sum (in the accumulator type) to a workspace, and a second launch adds each
// row's partials in chunk order: the same fixed tree every time, so deterministic.
template <class T>
__global__ void sum_rows_partial_kernel(Acc<T>* __restrict__ part, const T* __restrict__ in,
                                        int64_t cols, int64_t chunk, int splits) {
  using A = Acc<T>;
  __shared__ A smem[32];
  const int64_t row = blockIdx.y;
  const int split = int(blockIdx.x);
  const int64_t c0 = int64_t(split) * chunk;
  const int64_t c1 = c0 + chunk < cols ? c0 + chunk : cols;
  const T* x = in + row * cols;
  A s = A(0);
  for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x) s += load_acc(x[c]);
  s = block_allreduce(s, SumOp<A>(), smem);
  if (threadIdx.x == 0) part[row * splits + split] = s;
}

// One warp per row: lane l adds partials l, l + 32, ... in order, then the warp's fixed tree.
template <class T>
__global__ void sum_partials_kernel(T* __restrict__ out, const Acc<T>* __restrict__ part,
                                    int64_t rows, int splits) {
  using A = Acc<T>;
  const int64_t row = blockIdx.x;
  if (row >= rows) return;
  A s = A(0);
  for (int i = int(threadIdx.x); i < splits; i += 32) s += part[row * splits + i];
  s = warp_allreduce(s, SumOp<A>());
  if (threadIdx.x == 0) out[row] = store_acc<T>(s);
}

// Candidate for the first maximum; NaN wins over any number (the CPU backend's rule), ties and
// NaN-vs-NaN go to the lower index. The order is total, so the tree result is deterministic.
struct ArgMax {
  float v;
  int nan;
  int64_t i;  // INT64_MAX: no element
};
struct ArgMaxD {
  double v;
  int nan;
  int pad;
  int64_t i;
};
template <class M>
struct ArgMaxOp {
  __device__ __forceinline__ M operator()(const M& a, const M& b) const {
    if (a.i == INT64_MAX) return b;
    if (b.i == INT64_MAX) return a;
    if (a.nan != b.nan) return a.nan ? a : b;
    if (!a.nan && a.v != b.v) return a.v > b.v ? a : b;
    return a.i < b.i ? a : b;
  }
};

template <class T, bool kBlock>
__global__ void argmax_rows_kernel(int64_t* __restrict__ out, const T* __restrict__ in,
                                   int64_t rows, int64_t cols) {
  using M = typename std::conditional<std::is_same<T, double>::value, ArgMaxD, ArgMax>::type;
  __shared__ M smem[32];
  RowMap<kBlock> rm;
  if (rm.row >= rows) return;
  const T* x = in + rm.row * cols;
  M best{};
  best.i = INT64_MAX;
  ArgMaxOp<M> op;
  for (int64_t c = rm.lane; c < cols; c += rm.threads) {
    M cand{};
    cand.v = load_acc(x[c]);
    cand.nan = isnan(cand.v) ? 1 : 0;
    cand.i = c;
    best = op(best, cand);
  }
  best = row_allreduce<kBlock>(best, op, smem);
  if (rm.lane == 0) out[rm.row] = best.i;
}

// ------------------------------------------------------------------ softmax
// Online max-and-sum: s = sum exp(x - m) over the elements seen so far.
template <class A>
struct MaxSum {
  A m, s;
};
template <class A>
struct MaxSumOp {
  __device__ __forceinline__ MaxSum<A> operator()(const MaxSum<A>& a, const MaxSum<A>& b) const {
    if (a.s == A(0) && a.m == -INFINITY) return b;  // empty partial
    if (b.s == A(0) && b.m == -INFINITY) return a;
    const A m = a.m > b.m ? a.m : b.m;
    return {m, a.s * exp_(a.m - m) + b.s * exp_(b.m - m)};
  }
  __device__ __forceinline__ static A exp_(A x) { return exp(x); }
};
template <>
__device__ __forceinline__ float MaxSumOp<float>::exp_(float x) {
  return expf(x);
}

template <class T, bool kBlock>
__global__ void softmax_rows_kernel(T* __restrict__ out, const T* __restrict__ in, int64_t rows,
                                    int64_t cols, bool log_out) {
  using A = Acc<T>;
  using MS = MaxSum<A>;
  __shared__ MS smem[32];
  RowMap<kBlock> rm;
  if (rm.row >= rows) return;
  const T* x = in + rm.row * cols;
  T* y = out + rm.row * cols;
  MaxSumOp<A> op;
  MS acc{A(-INFINITY), A(0)};
  for (int64_t c = rm.lane; c < cols; c += rm.threads) {
    const A v = load_acc(x[c]);
    if (v == A(-INFINITY)) continue;  // contributes exp(-inf) = 0
    if (v > acc.m) {
      acc.s = acc.s * MaxSumOp<A>::exp_(acc.m - v) + A(1);
      acc.m = v;
    } else {
      acc.s += MaxSumOp<A>::exp_(v - acc.m);  // NaN input makes the sum NaN, as on the CPU
    }
  }
  acc = row_allreduce<kBlock>(acc, op, smem);
  const A m = acc.m;
  if (log_out) {
    const A lse = (sizeof(A) == 8 ? A(::log(double(acc.s))) : A(logf(float(acc.s))));
    for (int64_t c = rm.lane; c < cols; c += rm.threads)
      y[c] = store_acc<T>(load_acc(x[c]) - m - lse);
  } else {
    const A inv = A(1) / acc.s;
    for (int64_t c = rm.lane; c < cols; c += rm.threads)
      y[c] = store_acc<T>(MaxSumOp<A>::exp_(load_acc(x[c]) - m) * inv);
  }
}

// softmax:      dx = y * (g - sum(g * y))
// log_softmax:  dx = g - exp(y) * sum(g)
template <class T, bool kBlock>
__global__ void softmax_backward_kernel(T* __restrict__ dx, const T* __restrict__ g,
                                        const T* __restrict__ y, int64_t rows, int64_t cols,
                                        bool log_out) {
  using A = Acc<T>;
  __shared__ A smem[32];
  RowMap<kBlock> rm;
  if (rm.row >= rows) return;
  const int64_t base = rm.row * cols;
  A s = A(0);
  for (int64_t c = rm.lane; c < cols; c += rm.threads) {
    const A gv = load_acc(g[base + c]);
    s += log_out ? gv : gv * load_acc(y[base + c]);
  }
  s = row_allreduce<kBlock>(s, SumOp<A>(), smem);
  for (int64_t c = rm.lane; c < cols; c += rm.threads) {
    const A gv = load_acc(g[base + c]), yv = load_acc(y[base + c]);
    dx[base + c] = store_acc<T>(log_out ? gv - MaxSumOp<A>::exp_(yv) * s : yv * (gv - s));
  }
}

// ------------------------------------------------------------------ l2 normalisation
template <class T, bool kBlock>
__global__ void l2norm_rows_kernel(T* __restrict__ out, const T* __restrict__ x, int64_t rows,
                                   int64_t cols, double eps) {
  using A = Acc<T>;
  __shared__ A smem[32];
  RowMap<kBlock> rm;
  if (rm.row >= rows) return;
  const int64_t base = rm.row * cols;
  A s = A(0);
  for (int64_t c = rm.lane; c < cols; c += rm.threads) {
    const A v = load_acc(x[base + c]);
    s += v * v;
  }
  s = row_allreduce<kBlock>(s, SumOp<A>(), smem);
  A n = sqrt(s);
  if (!(n > A(eps)) && !isnan(n)) n = A(eps);  // max(||x||, eps)
  for (int64_t c = rm.lane; c < cols; c += rm.threads)
    out[base + c] = store_acc<T>(load_acc(x[base + c]) / n);
}

template <class A>
struct Pair {
  A a, b;
};
template <class A>
struct PairSumOp {
  __device__ __forceinline__ Pair<A> operator()(const Pair<A>& x, const Pair<A>& y) const {
    return {x.a + y.a, x.b + y.b};
  }
};

// ||x|| > eps: dx = (g - x <g, x> / ||x||^2) / ||x||;  otherwise dx = g / eps.
template <class T, bool kBlock>
__global__ void l2norm_backward_kernel(T* __restrict__ dx, const T* __restrict__ g,
                                       const T* __restrict__ x, int64_t rows, int64_t cols,
                                       double eps) {
  using A = Acc<T>;
  __shared__ Pair<A> smem[32];
  RowMap<kBlock> rm;
  if (rm.row >= rows) return;
  const int64_t base = rm.row * cols;
  Pair<A> p{A(0), A(0)};
  for (int64_t c = rm.lane; c < cols; c += rm.threads) {
    const A xv = load_acc(x[base + c]), gv = load_acc(g[base + c]);
    p.a += xv * xv;
    p.b += gv * xv;
  }
  p = row_allreduce<kBlock>(p, PairSumOp<A>(), smem);
  const A n = sqrt(p.a);
  if (n > A(eps)) {
    const A k = p.b / (n * n);
    for (int64_t c = rm.lane; c < cols; c += rm.threads)
      dx[base + c] = store_acc<T>((load_acc(g[base + c]) - load_acc(x[base + c]) * k) / n);
  } else {
    const A inv = A(1) / A(eps);
    for (int64_t c = rm.lane; c < cols; c += rm.threads)
      dx[base + c] = store_acc<T>(load_acc(g[base + c]) * inv);
  }
}

// ------------------------------------------------------------------ gemm helpers
// C[i] = beta * C[i] for the k = 0 case (no product to add); beta = 0 writes zeros.
template <class T>
__global__ void scale_matrices_kernel(T* c, int64_t m, int64_t n, int64_t ldc, int64_t sc,
                                      int64_t batch, double beta) {
  const int64_t total = batch * m * n;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / (m * n), r = (i / n) % m, col = i % n;
    T& v = c[b * sc + r * ldc + col];
    v = beta == 0.0 ? store_acc<T>(Acc<T>(0)) : store_acc<T>(Acc<T>(beta) * load_acc(v));
  }
}

// ------------------------------------------------------------------ gathers
template <class W>
__global__ void index_select_kernel(W* __restrict__ out, const W* __restrict__ in,
                                    const int64_t* __restrict__ idx, int64_t n, int64_t R,
                                    int64_t cols) {
  const int64_t total = n * cols;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i - r * cols;
    const int64_t src = idx[r];
    if (src < 0 || src >= R) {
      if (c == 0) report_bad_index(r, src, R);
      continue;  // left unwritten (NaN when allocations are poisoned)
    }
    out[i] = in[src * cols + c];
  }
}

__device__ __forceinline__ void atomic_add(float* p, float v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(double* p, double v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(bf16* p, float v) {
  atomicAdd(p, __float2bfloat16_rn(v));
}
__device__ __forceinline__ void atomic_add(f16* p, float v) { atomicAdd(p, __float2half_rn(v)); }

template <class T>
__global__ void index_add_kernel(T* out, const T* __restrict__ src, const int64_t* __restrict__ idx,
                                 int64_t n, int64_t R, int64_t cols) {
  const int64_t total = n * cols;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i - r * cols;
    const int64_t dst = idx[r];
    if (dst < 0 || dst >= R) {
      if (c == 0) report_bad_index(r, dst, R);
      continue;
    }
    atomic_add(out + dst * cols + c, load_acc(src[i]));
  }
}

// Stream compaction in one block (static shapes, nothing read back): each thread counts a
// contiguous chunk of the mask, a Hillis-Steele scan over the 1024 counts in shared memory gives
// each chunk its first slot, and the chunks write their positions in ascending order (the same
// scheme as slot_contrast's query compaction). One block suffices: the masks are a batch's
// (image, prototype) rows, and a thread walks n / 1024 bytes.
constexpr int kCompactThreads = 1024;
__global__ void __launch_bounds__(kCompactThreads)
    compact_rows_kernel(const uint8_t* __restrict__ mask, int64_t n, int64_t* __restrict__ idx,
                        uint8_t* __restrict__ valid, int64_t M) {
  __shared__ int64_t scan[kCompactThreads];
  const int t = threadIdx.x;
  const int64_t chunk = (n + kCompactThreads - 1) / kCompactThreads;
  const int64_t begin = t * chunk < n ? t * chunk : n;
  const int64_t end = begin + chunk < n ? begin + chunk : n;
  int64_t c = 0;
  for (int64_t i = begin; i < end; ++i) c += mask[i] ? 1 : 0;
  scan[t] = c;
  __syncthreads();
  for (int o = 1; o < kCompactThreads; o <<= 1) {
    const int64_t v = t >= o ? scan[t - o] : 0;
    __syncthreads();
    scan[t] += v;
    __syncthreads();
  }
  int64_t pos = scan[t] - c;
  for (int64_t i = begin; i < end; ++i) {
    if (!mask[i]) continue;
    if (pos < M) {
      idx[pos] = i;
      valid[pos] = 1;
    } else if (pos == M) {
      report_bad_index(i, pos, M);  // the first selected row without a slot
    }
    ++pos;
  }
  const int64_t count = scan[kCompactThreads - 1];
  for (int64_t m = count + t; m < M; m += kCompactThreads) {
    idx[m] = -1;
    valid[m] = 0;
  }
}

// Row gather / scatter through a validity mask, moving raw words of the element width.
template <class W>
__global__ void gather_rows_kernel(W* __restrict__ out, const W* __restrict__ in,
                                   const int64_t* __restrict__ idx,
                                   const uint8_t* __restrict__ valid, int64_t M, int64_t R,
                                   int64_t cols) {
  const int64_t total = M * cols;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i - r * cols;
    if (!valid[r]) {
      out[i] = W(0);  // all-zero bits: 0.0 in every float type
      continue;
    }
    const int64_t src = idx[r];
    if (src < 0 || src >= R) {
      if (c == 0) report_bad_index(r, src, R);
      continue;
    }
    out[i] = in[src * cols + c];
  }
}

template <class W>
__global__ void scatter_rows_kernel(W* __restrict__ out, const W* __restrict__ src,
                                    const int64_t* __restrict__ idx,
                                    const uint8_t* __restrict__ valid, int64_t M, int64_t R,
                                    int64_t cols) {
  const int64_t total = M * cols;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i - r * cols;
    if (!valid[r]) continue;
    const int64_t dst = idx[r];
    if (dst < 0 || dst >= R) {
      if (c == 0) report_bad_index(r, dst, R);
      continue;
    }
    out[dst * cols + c] = src[i];
  }
}

// ------------------------------------------------------------------ launch helpers
void check_rows(const char* op, const Tensor& t, int64_t rows, int64_t cols, int device) {
  SC_CHECK(t.device().is_cuda() && t.device().index == device, op, ": operand ", t.str(),
           " is not on cuda:", device);
  SC_CHECK(t.is_contiguous() && t.numel() == rows * cols, op, ": operand ", t.str(),
           " must be a dense (", rows, ", ", cols, ") tensor");
}

// Launch kern<T, true> (block per row) or kern<T, false> (warp per row).
#define SC_LAUNCH_ROWS(kern, T, rows, cols, dev, ...)                                             \
  do {                                                                                            \
    const bool br_ = block_per_row(cols);                                                         \
    if (br_) {                                                                                    \
      kern<T, true><<<row_grid(rows, true), row_threads(true), 0, stream(dev)>>>(__VA_ARGS__);    \
    } else {                                                                                      \
      kern<T, false><<<row_grid(rows, false), row_threads(false), 0, stream(dev)>>>(__VA_ARGS__); \
    }                                                                                             \
  } while (0)

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::F32:
      return CUDA_R_32F;
    case DType::F64:
      return CUDA_R_64F;
    case DType::BF16:
      return CUDA_R_16BF;
    case DType::F16:
      return CUDA_R_16F;
    default:
      break;
  }
  throw Error(
      str_cat("matmul: the CUDA backend multiplies F32, F64, BF16 and F16, not ", dtype_name(t)));
}

int to_int(int64_t v, const char* what) {
  SC_CHECK(v >= 0 && v <= int64_t(0x7fffffff), "matmul: ", what, " = ", v,
           " does not fit cuBLAS's 32-bit int");
  return int(v);
}

}  // namespace

void check_deferred_errors(int device) {
  set_device(device);
  unsigned long long bad = 0;
  SC_CUDA_CHECK(cudaMemcpyFromSymbol(&bad, g_bad_index, sizeof bad));
  if (bad == 0) return;
  long long value = 0, limit = 0;
  SC_CUDA_CHECK(cudaMemcpyFromSymbol(&value, g_bad_index_value, sizeof value));
  SC_CUDA_CHECK(cudaMemcpyFromSymbol(&limit, g_bad_index_limit, sizeof limit));
  const unsigned long long zero = 0;
  SC_CUDA_CHECK(cudaMemcpyToSymbol(g_bad_index, &zero, sizeof zero));
  throw Error(str_cat("index_select_rows / index_add_rows / gather_rows / scatter_rows / "
                      "compact_rows_index on cuda:", device, ": index[", bad - 1,
                      "] = ", value, " is out of range [0, ", limit,
                      ") (found by the device, reported at the next synchronisation)"));
}

// The split is worth it when a block per row leaves the card mostly idle and every chunk still
// has a block's worth of work: rows < the multiprocessors, chunks of >= kSplitMinChunk elements,
// about two blocks per multiprocessor in all.
constexpr int64_t kSplitMinChunk = 8192;
int sum_splits(int64_t rows, int64_t cols, int dev) {
  const int64_t sms = sm_count(dev);
  if (rows >= sms || cols < 2 * kSplitMinChunk) return 1;
  const int64_t want = (2 * sms + rows - 1) / rows, most = cols / kSplitMinChunk;
  return int(want < most ? want : most);
}

void sum_rows(const Tensor& out, const Tensor& in, int64_t rows, int64_t cols) {
  const int dev = device_of(in);
  check_rows("sum", in, rows, cols, dev);
  check_rows("sum", out, rows, 1, dev);
  if (rows == 0) return;
  const int splits = sum_splits(rows, cols, dev);
  if (splits > 1) {
    dispatch_float(in.dtype(), "sum", [&](auto t) {
      using T = decltype(t);
      using A = Acc<T>;
      const int64_t chunk = (cols + splits - 1) / splits;
      A* part = static_cast<A*>(device_alloc(sizeof(A) * size_t(rows * splits), dev));
      sum_rows_partial_kernel<T><<<dim3(unsigned(splits), unsigned(rows)), kRowBlockThreads, 0,
                                   stream(dev)>>>(part, in.data<T>(), cols, chunk, splits);
      SC_TRACE_WORK_AS(double(rows) * double(cols) * double(dtype_size(in.dtype())) +
                           double(rows * splits) * double(sizeof(A)),
                       rows * cols, simt_unit(in.dtype()));
      check_launch("sum_rows (split)");
      sum_partials_kernel<T><<<unsigned(rows), 32, 0, stream(dev)>>>(out.data<T>(), part, rows,
                                                                        splits);
      SC_TRACE_WORK_AS(double(rows * splits) * double(sizeof(A)) +
                           double(rows) * double(dtype_size(in.dtype())),
                       rows * splits, simt_unit(in.dtype()));
      check_launch("sum_rows (partials)");
      device_free(part, dev);  // stream-ordered: reused only by later work on this stream
    });
    return;
  }
  dispatch_float(in.dtype(), "sum", [&](auto t) {
    using T = decltype(t);
    SC_LAUNCH_ROWS(sum_rows_kernel, T, rows, cols, dev, out.data<T>(), in.data<T>(), rows, cols);
  });
  SC_TRACE_WORK_AS(double(rows) * double(cols + 1) * double(dtype_size(in.dtype())),
                   rows * cols, simt_unit(in.dtype()));
  check_launch("sum_rows");
}

void argmax_rows(const Tensor& out, const Tensor& in, int64_t rows, int64_t cols) {
  SC_CHECK(cols > 0, "argmax over an empty dimension");
  SC_CHECK(out.dtype() == DType::I64, "argmax: output must be I64");
  const int dev = device_of(in);
  check_rows("argmax", in, rows, cols, dev);
  check_rows("argmax", out, rows, 1, dev);
  if (rows == 0) return;
  dispatch_float(in.dtype(), "argmax", [&](auto t) {
    using T = decltype(t);
    SC_LAUNCH_ROWS(argmax_rows_kernel, T, rows, cols, dev, out.data<int64_t>(), in.data<T>(), rows,
                   cols);
  });
  SC_TRACE_WORK_AS(double(rows) * (double(cols) * double(dtype_size(in.dtype())) + 8.0),
                   rows * cols, simt_unit(in.dtype()));
  check_launch("argmax_rows");
}

void softmax_rows(const Tensor& out, const Tensor& in, int64_t rows, int64_t cols, bool log) {
  const int dev = device_of(in);
  check_rows("softmax", in, rows, cols, dev);
  check_rows("softmax", out, rows, cols, dev);
  if (rows == 0 || cols == 0) return;
  dispatch_float(in.dtype(), "softmax", [&](auto t) {
    using T = decltype(t);
    SC_LAUNCH_ROWS(softmax_rows_kernel, T, rows, cols, dev, out.data<T>(), in.data<T>(), rows, cols,
                   log);
  });
  SC_TRACE_WORK_AS(2.0 * double(rows) * double(cols) * double(dtype_size(in.dtype())),
                   4 * rows * cols, simt_unit(in.dtype()));
  check_launch("softmax_rows");
}

void softmax_backward_rows(const Tensor& dx, const Tensor& g, const Tensor& y, int64_t rows,
                           int64_t cols, bool log) {
  const int dev = device_of(y);
  check_rows("softmax backward", dx, rows, cols, dev);
  check_rows("softmax backward", g, rows, cols, dev);
  check_rows("softmax backward", y, rows, cols, dev);
  if (rows == 0 || cols == 0) return;
  dispatch_float(y.dtype(), "softmax backward", [&](auto t) {
    using T = decltype(t);
    SC_LAUNCH_ROWS(softmax_backward_kernel, T, rows, cols, dev, dx.data<T>(), g.data<T>(),
                   y.data<T>(), rows, cols, log);
  });
  SC_TRACE_WORK_AS(3.0 * double(rows) * double(cols) * double(dtype_size(y.dtype())),
                   3 * rows * cols, simt_unit(y.dtype()));
  check_launch("softmax_backward_rows");
}

void l2norm_rows(const Tensor& out, const Tensor& x, int64_t rows, int64_t cols, double eps) {
  const int dev = device_of(x);
  check_rows("l2_normalize", x, rows, cols, dev);
  check_rows("l2_normalize", out, rows, cols, dev);
  if (rows == 0 || cols == 0) return;
  dispatch_float(x.dtype(), "l2_normalize", [&](auto t) {
    using T = decltype(t);
    SC_LAUNCH_ROWS(l2norm_rows_kernel, T, rows, cols, dev, out.data<T>(), x.data<T>(), rows, cols,
                   eps);
  });
  SC_TRACE_WORK_AS(2.0 * double(rows) * double(cols) * double(dtype_size(x.dtype())),
                   3 * rows * cols, simt_unit(x.dtype()));
  check_launch("l2norm_rows");
}

void l2norm_backward_rows(const Tensor& dx, const Tensor& g, const Tensor& x, int64_t rows,
                          int64_t cols, double eps) {
  const int dev = device_of(x);
  check_rows("l2_normalize backward", dx, rows, cols, dev);
  check_rows("l2_normalize backward", g, rows, cols, dev);
  check_rows("l2_normalize backward", x, rows, cols, dev);
  if (rows == 0 || cols == 0) return;
  dispatch_float(x.dtype(), "l2_normalize backward", [&](auto t) {
    using T = decltype(t);
    SC_LAUNCH_ROWS(l2norm_backward_kernel, T, rows, cols, dev, dx.data<T>(), g.data<T>(),
                   x.data<T>(), rows, cols, eps);
  });
  SC_TRACE_WORK_AS(3.0 * double(rows) * double(cols) * double(dtype_size(x.dtype())),
                   5 * rows * cols, simt_unit(x.dtype()));
  check_launch("l2norm_backward_rows");
}

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: hand cuBLAS B as its first
// operand and A as its second, with the same transpose flags and m and n swapped.
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
          const Tensor& A, int64_t lda, int64_t sA, const Tensor& B, int64_t ldb, int64_t sB,
          double beta, const Tensor& C, int64_t ldc, int64_t sC, int64_t batch) {
  const int dev = device_of(C);
  SC_CHECK(A.device() == C.device() && B.device() == C.device(), "matmul: operands on ",
           A.device().str(), ", ", B.device().str(), " and ", C.device().str());
  SC_CHECK(A.dtype() == C.dtype() && B.dtype() == C.dtype(), "matmul: dtypes differ");
  if (m == 0 || n == 0 || batch == 0) return;
  if (k == 0) {
    dispatch_float(C.dtype(), "matmul", [&](auto t) {
      using T = decltype(t);
      const int64_t total = batch * m * n;
      scale_matrices_kernel<T><<<grid_for(total, dev), kThreads, 0, stream(dev)>>>(
          C.data<T>(), m, n, ldc, sC, batch, beta);
    });
    SC_TRACE_WORK(2.0 * double(batch * m * n) * double(dtype_size(C.dtype())), batch * m * n,
                  FP32);
    check_launch("matmul (k = 0)");
    return;
  }
  const cudaDataType_t type = cuda_type(C.dtype());
  const cublasOperation_t opA = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t opB = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasHandle_t h = cublas(dev);
  const int im = to_int(m, "m"), in = to_int(n, "n"), ik = to_int(k, "k"),
            ib = to_int(batch, "batch");
  const int ilda = to_int(lda, "lda"), ildb = to_int(ldb, "ldb"), ildc = to_int(ldc, "ldc");
  if (kernels::tracing()) {  // A, B and C once each (C read too when beta != 0); 2mnk FLOPs
    const double es = double(dtype_size(C.dtype()));
    const double mats = double(m * k + k * n + m * n) + (beta != 0.0 ? double(m * n) : 0.0);
    const DType t = C.dtype();
    kernels::note_work(es * mats * double(batch), 2.0 * double(m) * double(n) * double(k) * double(batch),
                       t == DType::F64   ? kernels::Unit::FP64
                       : t == DType::F32 ? (matmul_tf32() ? kernels::Unit::TF32 : kernels::Unit::FP32)
                                         : kernels::Unit::Tensor16);
  }
  kernels::note_library_call("cublasGemmStridedBatchedEx");
  if (C.dtype() == DType::F64) {
    const double a = alpha, b = beta;
    SC_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        h, opB, opA, in, im, ik, &a, B.data_ptr(), type, ildb, sB, A.data_ptr(), type, ilda, sA, &b,
        C.data_ptr(), type, ildc, sC, ib, CUBLAS_COMPUTE_64F, CUBLAS_GEMM_DEFAULT));
  } else {
    const float a = float(alpha), b = float(beta);
    SC_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        h, opB, opA, in, im, ik, &a, B.data_ptr(), type, ildb, sB, A.data_ptr(), type, ilda, sA, &b,
        C.data_ptr(), type, ildc, sC, ib,
        // F32 under a MatmulTF32Scope: the tensor cores in TF32 (16-bit types: F32 accumulation)
        C.dtype() == DType::F32 && matmul_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F,
        CUBLAS_GEMM_DEFAULT));
  }
}

void index_select_rows(const Tensor& out, const Tensor& in, const Tensor& idx) {
  const int dev = device_of(out);
  SC_CHECK(in.device() == out.device() && idx.device() == out.device(),
           "index_select_rows: operands on different devices");
  SC_CHECK(idx.dtype() == DType::I64 && idx.is_contiguous(),
           "index_select_rows: indices must be dense I64");
  SC_CHECK(in.dim() >= 1 && in.is_contiguous() && out.is_contiguous() && in.dtype() == out.dtype(),
           "index_select_rows: input and output must be dense and of one dtype");
  const int64_t n = idx.numel(), R = in.size(0);
  const int64_t cols = R ? in.numel() / R : (n ? out.numel() / n : 0);
  SC_CHECK(out.numel() == n * cols, "index_select_rows: output ", out.str(), " is not (", n, ", ",
           cols, ")");
  if (n == 0 || cols == 0) return;
  const int64_t total = n * cols;
  dispatch_width(dtype_size(in.dtype()), [&](auto w) {
    using W = decltype(w);
    index_select_kernel<W><<<grid_for(total, dev), kThreads, 0, stream(dev)>>>(
        static_cast<W*>(out.data_ptr()), static_cast<const W*>(in.data_ptr()), idx.data<int64_t>(),
        n, R, cols);
  });
  SC_TRACE_WORK(2.0 * double(total) * double(dtype_size(in.dtype())) + 8.0 * double(n), 0, Memory);
  check_launch("index_select_rows");
}

void index_add_rows(const Tensor& out, const Tensor& idx, const Tensor& src) {
  const int dev = device_of(out);
  SC_CHECK(src.device() == out.device() && idx.device() == out.device(),
           "index_add_rows: operands on different devices");
  SC_CHECK(idx.dtype() == DType::I64 && idx.is_contiguous(),
           "index_add_rows: indices must be dense I64");
  SC_CHECK(
      out.dim() >= 1 && out.is_contiguous() && src.is_contiguous() && src.dtype() == out.dtype(),
      "index_add_rows: output and source must be dense and of one dtype");
  const int64_t n = idx.numel(), R = out.size(0);
  const int64_t cols = n ? src.numel() / n : 0;
  SC_CHECK(R == 0 || out.numel() == R * cols || n == 0, "index_add_rows: output ", out.str(),
           " rows are not ", cols, " wide");
  if (n == 0 || cols == 0) return;
  const int64_t total = n * cols;
  dispatch_float(out.dtype(), "index_add_rows", [&](auto t) {
    using T = decltype(t);
    index_add_kernel<T><<<grid_for(total, dev), kThreads, 0, stream(dev)>>>(
        out.data<T>(), src.data<T>(), idx.data<int64_t>(), n, R, cols);
  });
  SC_TRACE_WORK_AS(3.0 * double(total) * double(dtype_size(out.dtype())) + 8.0 * double(n), total,
                   simt_unit(out.dtype()));
  check_launch("index_add_rows");
}

void compact_rows_index(const Tensor& idx, const Tensor& valid, const Tensor& mask) {
  const int dev = device_of(mask);
  SC_CHECK(idx.device() == mask.device() && valid.device() == mask.device(),
           "compact_rows_index: operands on different devices");
  SC_CHECK(mask.dtype() == DType::U8 && mask.is_contiguous() && valid.dtype() == DType::U8 &&
               valid.is_contiguous() && idx.dtype() == DType::I64 && idx.is_contiguous() &&
               valid.numel() == idx.numel(),
           "compact_rows_index: dense U8 mask, I64 index and U8 valid of one length expected");
  const int64_t n = mask.numel(), M = idx.numel();
  if (M == 0 && n == 0) return;
  compact_rows_kernel<<<1, kCompactThreads, 0, stream(dev)>>>(
      mask.data<uint8_t>(), n, idx.data<int64_t>(), valid.data<uint8_t>(), M);
  SC_TRACE_WORK(double(n) + 9.0 * double(M), n, FP32);
  check_launch("compact_rows_index");
}

namespace {
// gather_rows / scatter_rows move M rows between `slots` (M rows: one per index) and `table` (R
// rows); both ops check their operands the same way. Returns the row width (0 when M is 0).
int64_t row_map_width(const char* op, const Tensor& slots, const Tensor& table, const Tensor& idx,
                      const Tensor& valid) {
  SC_CHECK(table.device() == slots.device() && idx.device() == slots.device() &&
               valid.device() == slots.device(),
           op, ": operands on different devices");
  SC_CHECK(idx.dtype() == DType::I64 && idx.is_contiguous() && valid.dtype() == DType::U8 &&
               valid.is_contiguous() && valid.numel() == idx.numel(),
           op, ": dense I64 indices and U8 valid flags of one length expected");
  SC_CHECK(table.dim() >= 1 && table.is_contiguous() && slots.is_contiguous() &&
               table.dtype() == slots.dtype(),
           op, ": operands must be dense and of one dtype");
  const int64_t M = idx.numel(), R = table.size(0);
  const int64_t cols = M ? slots.numel() / M : 0;
  SC_CHECK(slots.numel() == M * cols && (R == 0 || table.numel() == R * cols), op, ": ",
           slots.str(), " and ", table.str(), " are not rows of one width");
  return cols;
}
}  // namespace

void gather_rows(const Tensor& out, const Tensor& in, const Tensor& idx, const Tensor& valid) {
  const int dev = device_of(out);
  const int64_t cols = row_map_width("gather_rows", out, in, idx, valid);
  const int64_t M = idx.numel(), R = in.size(0);
  if (M == 0 || cols == 0) return;
  const int64_t total = M * cols;
  dispatch_width(dtype_size(in.dtype()), [&](auto w) {
    using W = decltype(w);
    gather_rows_kernel<W><<<grid_for(total, dev), kThreads, 0, stream(dev)>>>(
        static_cast<W*>(out.data_ptr()), static_cast<const W*>(in.data_ptr()), idx.data<int64_t>(),
        valid.data<uint8_t>(), M, R, cols);
  });
  SC_TRACE_WORK(2.0 * double(total) * double(dtype_size(in.dtype())) + 9.0 * double(M), 0, Memory);
  check_launch("gather_rows");
}

void scatter_rows(const Tensor& out, const Tensor& idx, const Tensor& valid, const Tensor& src) {
  const int dev = device_of(out);
  const int64_t cols = row_map_width("scatter_rows", src, out, idx, valid);
  const int64_t M = idx.numel(), R = out.size(0);
  if (M == 0 || cols == 0) return;
  const int64_t total = M * cols;
  dispatch_width(dtype_size(src.dtype()), [&](auto w) {
    using W = decltype(w);
    scatter_rows_kernel<W><<<grid_for(total, dev), kThreads, 0, stream(dev)>>>(
        static_cast<W*>(out.data_ptr()), static_cast<const W*>(src.data_ptr()), idx.data<int64_t>(),
        valid.data<uint8_t>(), M, R, cols);
  });
  SC_TRACE_WORK(2.0 * double(total) * double(dtype_size(src.dtype())) + 9.0 * double(M), 0,
                Memory);
  check_launch("scatter_rows");
}

}  // namespace cuda
}  // namespace sc
