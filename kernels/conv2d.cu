// conv2d.cu: cuDNN convolution plans and the bias kernels (see conv2d.h).
//
// The convolutions use cuDNN's legacy convolution API (cudnnConvolutionForward and friends), which
// cuDNN 9 marks deprecated but still ships; the deprecation warnings are silenced in this file.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <string>
#include <type_traits>

#include "kernels/check.h"
#include "kernels/common.cuh"
#include "kernels/conv2d.h"

#if defined(SLOTCON_WITH_CUDNN)
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#pragma nv_diag_suppress 1444  // "declared deprecated"
#include <cudnn.h>
#endif

namespace sc {
namespace {

using namespace kernels;  // AccOf, load_acc, store, grid_for

template <class T>
__global__ void bias_add_kernel(int64_t n, int64_t C, int64_t inner, T* y, const T* bias) {
  using A = typename AccOf<T>::type;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = (i / inner) % C;
    store(y + i, A(load_acc(y + i)) + A(load_acc(bias + c)));
  }
}

// Per-channel sums, two shapes of the same reduction:
// rows:   inner == 1, v (outer, C) row-major; block (32, 8): x over 32 channels, y over rows.
// planar: inner  > 1; block handles one channel c = blockIdx.x over a slice of (outer, inner).
// Each block reduces in double and adds its partial to ws[c] with a double atomic.
template <class T>
__global__ void channel_sum_rows_kernel(int64_t rows, int64_t C, const T* v, double* ws) {
  using A = typename AccOf<T>::type;
  __shared__ double part[8][33];
  const int64_t c = blockIdx.x * 32 + threadIdx.x;
  A acc = 0;
  if (c < C)
    for (int64_t r = blockIdx.y * 8 + threadIdx.y; r < rows; r += int64_t(gridDim.y) * 8)
      acc += load_acc(v + r * C + c);
  part[threadIdx.y][threadIdx.x] = double(acc);
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    double s = 0;
    for (int k = 0; k < 8; ++k) s += part[k][threadIdx.x];
    atomicAdd(ws + c, s);
  }
}

template <class T>
__global__ void channel_sum_planar_kernel(int64_t outer, int64_t C, int64_t inner, const T* v,
                                          double* ws) {
  using A = typename AccOf<T>::type;
  __shared__ double part[256];
  const int64_t c = blockIdx.x;
  const int64_t total = outer * inner;
  A acc = 0;
  for (int64_t j = blockIdx.y * int64_t(blockDim.x) + threadIdx.x; j < total;
       j += int64_t(gridDim.y) * blockDim.x) {
    const int64_t o = j / inner, i = j - o * inner;
    acc += load_acc(v + (o * C + c) * inner + i);
  }
  part[threadIdx.x] = double(acc);
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) part[threadIdx.x] += part[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) atomicAdd(ws + c, part[0]);
}

template <class T>
__global__ void add_partials_kernel(int64_t C, const double* ws, T* out) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c < C) store(out + c, typename AccOf<T>::type(load_acc(out + c) + ws[c]));
}

template <class T>
void channel_sum_typed(int64_t outer, int64_t C, int64_t inner, const T* v, T* out, double* ws,
                       cudaStream_t stream) {
  if (cudaMemsetAsync(ws, 0, size_t(C) * sizeof(double), stream) != cudaSuccess)
    kernels::fail("channel_sum_cuda", "cudaMemsetAsync failed");
  SC_TRACE_WORK(C * sizeof(double), 0, Memory);
  kernels::note_memory_op("cudaMemsetAsync (channel sum)");
  const double sum_bytes = double(outer * C * inner) * sizeof(T) + double(C) * sizeof(double);
  if (inner == 1) {
    const int64_t cx = (C + 31) / 32;
    const int64_t ry = std::max<int64_t>(1, std::min<int64_t>((outer + 7) / 8, 1024 / cx + 1));
    channel_sum_rows_kernel<T>
        <<<dim3(unsigned(cx), unsigned(ry)), dim3(32, 8), 0, stream>>>(outer, C, v, ws);
    SC_TRACE_WORK(sum_bytes, outer * C * inner, FP32);
    SC_KERNEL_LAUNCHED("channel_sum_rows_kernel");
  } else {
    const int64_t per = outer * inner;
    const int64_t sy = std::max<int64_t>(1, std::min<int64_t>((per + 255) / 256, 2048 / C + 1));
    channel_sum_planar_kernel<T>
        <<<dim3(unsigned(C), unsigned(sy)), 256, 0, stream>>>(outer, C, inner, v, ws);
    SC_TRACE_WORK(sum_bytes, outer * C * inner, FP32);
    SC_KERNEL_LAUNCHED("channel_sum_planar_kernel");
  }
  SC_KERNEL_LAUNCH_CHECK("channel_sum_cuda");
  add_partials_kernel<T><<<grid_for(C, 256), 256, 0, stream>>>(C, ws, out);
  SC_TRACE_WORK(C * (sizeof(double) + 2 * sizeof(T)), C, FP64);
  SC_KERNEL_LAUNCHED("channel_sum_cuda (add)");
}

}  // namespace

void conv2d_bias_add_cuda(DType dtype, int64_t outer, int64_t C, int64_t inner, void* y,
                          const void* bias, cudaStream_t stream) {
  const int64_t n = outer * C * inner;
  const int g = grid_for(n, 256);
  dispatch_float(dtype, "conv2d_bias_add_cuda", [&](auto tv) {
    using T = decltype(tv);
    bias_add_kernel<<<g, 256, 0, stream>>>(n, C, inner, static_cast<T*>(y),
                                           static_cast<const T*>(bias));
    SC_TRACE_WORK(2.0 * n * sizeof(T) + C * sizeof(T), n, FP32);
    SC_KERNEL_LAUNCHED("bias_add_kernel");
  });
  SC_KERNEL_LAUNCH_CHECK("conv2d_bias_add_cuda");
}

size_t channel_sum_workspace_bytes(int64_t C) { return size_t(C) * sizeof(double); }

void channel_sum_cuda(DType dtype, int64_t outer, int64_t C, int64_t inner, const void* dy,
                      void* dbias, void* ws, cudaStream_t stream) {
  double* w = static_cast<double*>(ws);
  dispatch_float(dtype, "channel_sum_cuda", [&](auto tv) {
    using T = decltype(tv);
    channel_sum_typed(outer, C, inner, static_cast<const T*>(dy), static_cast<T*>(dbias), w,
                      stream);
  });
}

// ---------------------------------------------------------------------------------------------
// cuDNN plans
#if defined(SLOTCON_WITH_CUDNN)
namespace {
void cudnn_check(cudnnStatus_t st, const char* what) {
  if (st != CUDNN_STATUS_SUCCESS) kernels::fail(what, cudnnGetErrorString(st));
}
#define SC_CUDNN(expr) cudnn_check((expr), #expr)

cudnnDataType_t cudnn_dtype(DType t) {
  switch (t) {
    case DType::F32:
      return CUDNN_DATA_FLOAT;
    case DType::F64:
      return CUDNN_DATA_DOUBLE;
    case DType::BF16:
      return CUDNN_DATA_BFLOAT16;
    case DType::F16:
      return CUDNN_DATA_HALF;
    default:
      kernels::fail("CudnnConvPlan", "unsupported dtype");
  }
}
}  // namespace

struct CudnnConvPlan::Impl {
  Conv2dGeom g;
  Layout layout;
  DType dtype;
  cudnnMathType_t request_math;
  cudnnTensorDescriptor_t xd = nullptr, yd = nullptr;
  cudnnFilterDescriptor_t wd = nullptr;
  cudnnConvolutionDescriptor_t cd = nullptr;
  bool fwd_ok = false, bwd_data_ok = false, bwd_w_ok = false;
  cudnnConvolutionFwdAlgo_t fwd_algo{};
  cudnnConvolutionBwdDataAlgo_t bwd_data_algo{};
  cudnnConvolutionBwdFilterAlgo_t bwd_w_algo{};
  cudnnMathType_t fwd_math{}, bwd_data_math{}, bwd_w_math{};
  size_t fwd_ws = 0, bwd_data_ws = 0, bwd_w_ws = 0;

  // alpha / beta as cuDNN wants them: double for double data, float otherwise.
  const void* scalar(double v, double* dstore, float* fstore) const {
    if (dtype == DType::F64) {
      *dstore = v;
      return dstore;
    }
    *fstore = float(v);
    return fstore;
  }
};

CudnnConvPlan::CudnnConvPlan(const Conv2dGeom& g, Layout layout, DType dtype, bool allow_tf32)
    : impl_(new Impl) {
  SC_KERNEL_REQUIRE(g.valid(), "CudnnConvPlan", "invalid convolution geometry");
  Impl& p = *impl_;
  p.g = g;
  p.layout = layout;
  p.dtype = dtype;
  const cudnnDataType_t dt = cudnn_dtype(dtype);
  const cudnnDataType_t compute = dtype == DType::F64 ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT;
  const cudnnTensorFormat_t fmt = layout == Layout::NCHW ? CUDNN_TENSOR_NCHW : CUDNN_TENSOR_NHWC;
  if (dtype == DType::BF16 || dtype == DType::F16)
    p.request_math = CUDNN_TENSOR_OP_MATH;
  else if (dtype == DType::F32 && !allow_tf32)
    p.request_math = CUDNN_FMA_MATH;
  else
    p.request_math = CUDNN_DEFAULT_MATH;
  SC_CUDNN(cudnnCreateTensorDescriptor(&p.xd));
  SC_CUDNN(cudnnCreateTensorDescriptor(&p.yd));
  SC_CUDNN(cudnnCreateFilterDescriptor(&p.wd));
  SC_CUDNN(cudnnCreateConvolutionDescriptor(&p.cd));
  SC_CUDNN(cudnnSetTensor4dDescriptor(p.xd, fmt, dt, int(g.N), int(g.C), int(g.H), int(g.W)));
  SC_CUDNN(cudnnSetTensor4dDescriptor(p.yd, fmt, dt, int(g.N), int(g.K), int(g.OH()), int(g.OW())));
  SC_CUDNN(cudnnSetFilter4dDescriptor(p.wd, dt, fmt, int(g.K), int(g.C), int(g.R), int(g.S)));
  SC_CUDNN(cudnnSetConvolution2dDescriptor(p.cd, int(g.pad_h), int(g.pad_w), int(g.stride_h),
                                           int(g.stride_w), 1, 1, CUDNN_CROSS_CORRELATION,
                                           compute));
  SC_CUDNN(cudnnSetConvolutionMathType(p.cd, p.request_math));
  int n, c, h, w;
  SC_CUDNN(cudnnGetConvolution2dForwardOutputDim(p.cd, p.xd, p.wd, &n, &c, &h, &w));
  SC_KERNEL_REQUIRE(n == g.N && c == g.K && h == g.OH() && w == g.OW(), "CudnnConvPlan",
                    "cuDNN output shape differs from the geometry's");
}

CudnnConvPlan::~CudnnConvPlan() {
  if (!impl_) return;
  cudnnDestroyTensorDescriptor(impl_->xd);
  cudnnDestroyTensorDescriptor(impl_->yd);
  cudnnDestroyFilterDescriptor(impl_->wd);
  cudnnDestroyConvolutionDescriptor(impl_->cd);
}

bool CudnnConvPlan::forward_ready() const { return impl_->fwd_ok; }
bool CudnnConvPlan::backward_data_ready() const { return impl_->bwd_data_ok; }
bool CudnnConvPlan::backward_weight_ready() const { return impl_->bwd_w_ok; }
int CudnnConvPlan::forward_algorithm() const { return int(impl_->fwd_algo); }
int CudnnConvPlan::backward_data_algorithm() const { return int(impl_->bwd_data_algo); }
int CudnnConvPlan::backward_weight_algorithm() const { return int(impl_->bwd_w_algo); }
size_t CudnnConvPlan::forward_workspace() const { return impl_->fwd_ws; }
size_t CudnnConvPlan::backward_data_workspace() const { return impl_->bwd_data_ws; }
size_t CudnnConvPlan::backward_weight_workspace() const { return impl_->bwd_w_ws; }

// ---- algorithm choices kept in a file (set_cudnn_algo_file)
namespace {
struct AlgoChoice {
  int algo = 0, math = 0;
  size_t ws = 0;
};
struct AlgoFile {
  std::mutex mu;
  bool configured = false;  // path taken (from set_cudnn_algo_file or the environment)
  std::string path;         // "" = off
  std::map<std::string, AlgoChoice> choices;
};
AlgoFile& algo_file() {
  static AlgoFile f;
  return f;
}

// Reads f.path into f.choices ("<key> -> algo A math M ws W" per line; '#' lines and blank lines
// skipped; a missing file is empty). Requires f.mu held.
void load_algo_file(AlgoFile& f) {
  f.choices.clear();
  if (f.path.empty()) return;
  std::ifstream in(f.path);
  if (!in) return;  // created by the first choice appended
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.empty() || line[0] == '#') continue;
    const size_t arrow = line.find(" -> ");
    AlgoChoice c;
    unsigned long long ws = 0;
    char tail = 0;
    if (arrow == std::string::npos || arrow == 0 ||
        std::sscanf(line.c_str() + arrow + 4, "algo %d math %d ws %llu %c", &c.algo, &c.math, &ws,
                    &tail) != 3 ||
        c.algo < 0 || c.math < 0)
      kernels::fail("SLOTCON_CUDNN_ALGOS",
                    f.path + ":" + std::to_string(n) +
                        ": expected '<pass and shape> -> algo A math M ws BYTES', got '" + line +
                        "'");
    c.ws = size_t(ws);
    f.choices[line.substr(0, arrow)] = c;
  }
}

void configure_locked(AlgoFile& f) {
  if (f.configured) return;
  f.configured = true;
  const char* e = std::getenv("SLOTCON_CUDNN_ALGOS");
  f.path = e ? e : "";
  load_algo_file(f);
}

std::string algo_key(const char* pass, const Conv2dGeom& g, Layout l, DType dt,
                     cudnnMathType_t request) {
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "%s %s %s N%lld C%lld %lldx%lld K%lld R%lldxS%lld stride %lldx%lld pad %lldx%lld "
                "request %d",
                pass, dtype_name(dt), l == Layout::NCHW ? "NCHW" : "NHWC", (long long)g.N,
                (long long)g.C, (long long)g.H, (long long)g.W, (long long)g.K, (long long)g.R,
                (long long)g.S, (long long)g.stride_h, (long long)g.stride_w, (long long)g.pad_h,
                (long long)g.pad_w, int(request));
  return buf;
}

// The stored choice for key, if the file has one.
bool stored_choice(const std::string& key, AlgoChoice* out) {
  AlgoFile& f = algo_file();
  std::lock_guard<std::mutex> lock(f.mu);
  configure_locked(f);
  auto it = f.choices.find(key);
  if (it == f.choices.end()) return false;
  *out = it->second;
  return true;
}

// Appends a search's choice (one write of one line, so that processes sharing the file do not
// interleave within a line). A file that cannot be written (a full disk, a missing folder) is
// said once on stderr and no longer used: the choices are a cache, and the run goes on.
void store_choice(const std::string& key, const AlgoChoice& c) {
  AlgoFile& f = algo_file();
  std::lock_guard<std::mutex> lock(f.mu);
  configure_locked(f);
  if (f.path.empty()) return;
  f.choices[key] = c;
  const std::string line = key + " -> algo " + std::to_string(c.algo) + " math " +
                           std::to_string(c.math) + " ws " + std::to_string(c.ws) + "\n";
  std::FILE* out = std::fopen(f.path.c_str(), "a");
  bool ok = out != nullptr && std::fwrite(line.data(), 1, line.size(), out) == line.size();
  if (out != nullptr && std::fclose(out) != 0) ok = false;
  if (!ok) {
    std::fprintf(stderr,
                 "SLOTCON_CUDNN_ALGOS: cannot append to %s: cuDNN's choices are not kept there "
                 "from now on\n",
                 f.path.c_str());
    f.path.clear();
  }
}
}  // namespace

void set_cudnn_algo_file(const std::string& path) {
  AlgoFile& f = algo_file();
  std::lock_guard<std::mutex> lock(f.mu);
  f.configured = true;
  f.path = path;
  load_algo_file(f);
}

// Pick the fastest successful result that is allowed by the requested maths and deterministic
// (Find returns them sorted by time). Deterministic, for two reasons seen on the first H200 runs
// (2026-12-04, docs/gpu.md): (1) with the fastest algorithm taken, a BF16 1x1 weight gradient
// (N2 C32 9x7 K40) came back 5 % off, 3.5x the error model's bound (tests/gpu/test_nn_ops.cpp);
// for that shape the fastest is algorithm 0, non-deterministic (it adds partial sums into the
// output with atomics, so in BF16 each add rounds to 8 bits), and with deterministic algorithm 1
// the test passes; (2) two plain runs of the same training step differed by ~1e-7 of the loss,
// and with deterministic algorithms they are equal bit for bit. The price there: the ResNet-50
// step replayed as a CUDA graph took 71.1 ms instead of 69.0. Only when no deterministic algorithm
// succeeds is the fastest other one taken.
template <class Perf>
static const Perf* pick(const Perf* perf, int count, cudnnMathType_t request, const char* what) {
  const Perf* fallback = nullptr;
  for (int i = 0; i < count; ++i) {
    if (perf[i].status != CUDNN_STATUS_SUCCESS) continue;
    if (request == CUDNN_FMA_MATH && perf[i].mathType != CUDNN_FMA_MATH &&
        perf[i].mathType != CUDNN_DEFAULT_MATH)
      continue;
    if (perf[i].determinism == CUDNN_DETERMINISTIC) return &perf[i];
    if (!fallback) fallback = &perf[i];
  }
  if (fallback) return fallback;
  kernels::fail(what, "cuDNN found no usable algorithm for this shape");
}

// SLOTCON_CUDNN_LOG set: one line per algorithm search on stderr (the pass, the shape, the
// algorithm taken, its maths, determinism, time and workspace, and the fastest candidate), so a
// card's run says which algorithm produced a result.
static bool cudnn_log_on() {
  static const bool on = std::getenv("SLOTCON_CUDNN_LOG") != nullptr;
  return on;
}
template <class Perf>
static void log_pick(const char* pass, const Conv2dGeom& g, DType dt, const Perf* perf, int count,
                     const Perf* best) {
  if (!cudnn_log_on()) return;
  const Perf* fastest = nullptr;
  for (int i = 0; i < count && !fastest; ++i)
    if (perf[i].status == CUDNN_STATUS_SUCCESS) fastest = &perf[i];
  std::fprintf(stderr,
               "cudnn %s %s N%lld C%lld %lldx%lld K%lld R%lldxS%lld /%lld: algo %d (math %d, %s, "
               "%.3f ms, %zu B ws); fastest algo %d (%s, %.3f ms) of %d\n",
               pass, dtype_name(dt), (long long)g.N, (long long)g.C, (long long)g.H, (long long)g.W,
               (long long)g.K, (long long)g.R, (long long)g.S, (long long)g.stride_h,
               int(best->algo), int(best->mathType),
               best->determinism == CUDNN_DETERMINISTIC ? "deterministic" : "non-deterministic",
               double(best->time), best->memory, fastest ? int(fastest->algo) : -1,
               fastest && fastest->determinism == CUDNN_DETERMINISTIC ? "deterministic"
                                                                      : "non-deterministic",
               fastest ? double(fastest->time) : 0.0, count);
  // every candidate: algorithm/math:ms (n: non-deterministic, x: failed)
  std::string all;
  char buf[64];
  for (int i = 0; i < count; ++i) {
    if (perf[i].status != CUDNN_STATUS_SUCCESS)
      std::snprintf(buf, sizeof buf, " %d:x", int(perf[i].algo));
    else
      std::snprintf(buf, sizeof buf, " %d/m%d:%.3f%s", int(perf[i].algo), int(perf[i].mathType),
                    double(perf[i].time), perf[i].determinism == CUDNN_DETERMINISTIC ? "" : "n");
    all += buf;
  }
  std::fprintf(stderr, "  candidates%s\n", all.c_str());
}

// SLOTCON_CUDNN_LOG set: a choice taken from the algorithm file says so.
static void log_stored(const std::string& key, const AlgoChoice& c) {
  if (cudnn_log_on())
    std::fprintf(stderr, "cudnn %s: algo %d (math %d, %zu B ws) from the algorithm file\n",
                 key.c_str(), c.algo, c.math, c.ws);
}

// The trace's work of one convolution pass (kernels/check.h): its three tensors once each, the
// output also read when accumulated; 2*N*K*C*R*S*OH*OW FLOPs on the unit its maths selects.
static void trace_conv_work(const Conv2dGeom& g, DType dtype, cudnnMathType_t math,
                            bool accumulate) {
  if (!kernels::tracing()) return;
  const double es = double(dtype_size(dtype));
  const double x = double(g.N * g.C * g.H * g.W), w = double(g.K * g.C * g.R * g.S),
               y = double(g.N * g.K * g.OH() * g.OW());
  const double flops = 2.0 * double(g.N * g.K * g.C * g.R * g.S) * double(g.OH() * g.OW());
  kernels::Unit unit = kernels::Unit::FP32;
  if (dtype == DType::F64)
    unit = kernels::Unit::FP64;
  else if (dtype == DType::BF16 || dtype == DType::F16)
    unit = kernels::Unit::Tensor16;
  else if (math != CUDNN_FMA_MATH)
    unit = kernels::Unit::TF32;
  kernels::note_work(es * (x + w + y + (accumulate ? y : 0.0)), flops, unit);
}

// One pass's algorithm: the algorithm file's line for its shape, else cuDNN's search (`find`
// fills up to N results and their count), the pick among them, logged and appended to the file.
template <class Perf, int N, class Algo, class Find>
static void select_pass(const char* pass, const char* what, const char* find_name,
                        const Conv2dGeom& g, Layout layout, DType dtype, cudnnMathType_t request,
                        cudnnConvolutionDescriptor_t cd, Find&& find, Algo* algo,
                        cudnnMathType_t* math, size_t* ws, bool* ok) {
  const std::string key = algo_key(pass, g, layout, dtype, request);
  AlgoChoice stored;
  if (stored_choice(key, &stored)) {
    *algo = Algo(stored.algo);
    *math = cudnnMathType_t(stored.math);
    *ws = stored.ws;
    *ok = true;
    log_stored(key, stored);
    return;
  }
  Perf perf[N];
  int count = 0;
  SC_CUDNN(cudnnSetConvolutionMathType(cd, request));
  trace_conv_work(g, dtype, request, false);
  kernels::note_library_call(find_name);
  find(N, &count, perf);
  const Perf* best = pick(perf, count, request, what);
  log_pick(pass, g, dtype, perf, count, best);
  *algo = best->algo;
  *math = best->mathType;
  *ws = best->memory;
  *ok = true;
  store_choice(key, {int(best->algo), int(best->mathType), best->memory});
}

void CudnnConvPlan::select_forward(cudnnHandle_t h, const void* x, const void* w, void* y, void* ws,
                                   size_t ws_bytes) {
  Impl& p = *impl_;
  select_pass<cudnnConvolutionFwdAlgoPerf_t, CUDNN_CONVOLUTION_FWD_ALGO_COUNT>(
      "forward", "conv2d forward", "cudnnFindConvolutionForwardAlgorithmEx", p.g, p.layout,
      p.dtype, p.request_math, p.cd,
      [&](int n, int* count, cudnnConvolutionFwdAlgoPerf_t* perf) {
        SC_CUDNN(cudnnFindConvolutionForwardAlgorithmEx(h, p.xd, x, p.wd, w, p.cd, p.yd, y, n,
                                                        count, perf, ws, ws_bytes));
      },
      &p.fwd_algo, &p.fwd_math, &p.fwd_ws, &p.fwd_ok);
}

void CudnnConvPlan::select_backward_data(cudnnHandle_t h, const void* dy, const void* w, void* dx,
                                         void* ws, size_t ws_bytes) {
  Impl& p = *impl_;
  select_pass<cudnnConvolutionBwdDataAlgoPerf_t, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT>(
      "backward-data", "conv2d backward data", "cudnnFindConvolutionBackwardDataAlgorithmEx", p.g,
      p.layout, p.dtype, p.request_math, p.cd,
      [&](int n, int* count, cudnnConvolutionBwdDataAlgoPerf_t* perf) {
        SC_CUDNN(cudnnFindConvolutionBackwardDataAlgorithmEx(h, p.wd, w, p.yd, dy, p.cd, p.xd, dx,
                                                             n, count, perf, ws, ws_bytes));
      },
      &p.bwd_data_algo, &p.bwd_data_math, &p.bwd_data_ws, &p.bwd_data_ok);
}

void CudnnConvPlan::select_backward_weight(cudnnHandle_t h, const void* x, const void* dy, void* dw,
                                           void* ws, size_t ws_bytes) {
  Impl& p = *impl_;
  select_pass<cudnnConvolutionBwdFilterAlgoPerf_t, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT>(
      "backward-weight", "conv2d backward weight", "cudnnFindConvolutionBackwardFilterAlgorithmEx",
      p.g, p.layout, p.dtype, p.request_math, p.cd,
      [&](int n, int* count, cudnnConvolutionBwdFilterAlgoPerf_t* perf) {
        SC_CUDNN(cudnnFindConvolutionBackwardFilterAlgorithmEx(h, p.xd, x, p.yd, dy, p.cd, p.wd,
                                                               dw, n, count, perf, ws, ws_bytes));
      },
      &p.bwd_w_algo, &p.bwd_w_math, &p.bwd_w_ws, &p.bwd_w_ok);
}

void CudnnConvPlan::forward(cudnnHandle_t h, const void* x, const void* w, void* y, void* ws,
                            size_t ws_bytes) {
  Impl& p = *impl_;
  SC_KERNEL_REQUIRE(p.fwd_ok && ws_bytes >= p.fwd_ws, "conv2d forward",
                    "algorithm not selected or workspace too small");
  double d1, d0;
  float f1, f0;
  SC_CUDNN(cudnnSetConvolutionMathType(p.cd, p.fwd_math));
  trace_conv_work(p.g, p.dtype, p.fwd_math, false);
  kernels::note_library_call("cudnnConvolutionForward");
  SC_CUDNN(cudnnConvolutionForward(h, p.scalar(1.0, &d1, &f1), p.xd, x, p.wd, w, p.cd, p.fwd_algo,
                                   ws, ws_bytes, p.scalar(0.0, &d0, &f0), p.yd, y));
}

void CudnnConvPlan::backward_data(cudnnHandle_t h, const void* dy, const void* w, void* dx,
                                  void* ws, size_t ws_bytes) {
  Impl& p = *impl_;
  SC_KERNEL_REQUIRE(p.bwd_data_ok && ws_bytes >= p.bwd_data_ws, "conv2d backward data",
                    "algorithm not selected or workspace too small");
  double d1, d0;
  float f1, f0;
  SC_CUDNN(cudnnSetConvolutionMathType(p.cd, p.bwd_data_math));
  trace_conv_work(p.g, p.dtype, p.bwd_data_math, false);
  kernels::note_library_call("cudnnConvolutionBackwardData");
  SC_CUDNN(cudnnConvolutionBackwardData(h, p.scalar(1.0, &d1, &f1), p.wd, w, p.yd, dy, p.cd,
                                        p.bwd_data_algo, ws, ws_bytes, p.scalar(0.0, &d0, &f0),
                                        p.xd, dx));
}

void CudnnConvPlan::backward_weight(cudnnHandle_t h, const void* x, const void* dy, void* dw,
                                    bool accumulate, void* ws, size_t ws_bytes) {
  Impl& p = *impl_;
  SC_KERNEL_REQUIRE(p.bwd_w_ok && ws_bytes >= p.bwd_w_ws, "conv2d backward weight",
                    "algorithm not selected or workspace too small");
  double d1, db;
  float f1, fb;
  SC_CUDNN(cudnnSetConvolutionMathType(p.cd, p.bwd_w_math));
  trace_conv_work(p.g, p.dtype, p.bwd_w_math, accumulate);
  kernels::note_library_call("cudnnConvolutionBackwardFilter");
  SC_CUDNN(cudnnConvolutionBackwardFilter(h, p.scalar(1.0, &d1, &f1), p.xd, x, p.yd, dy, p.cd,
                                          p.bwd_w_algo, ws, ws_bytes,
                                          p.scalar(accumulate ? 1.0 : 0.0, &db, &fb), p.wd, dw));
}

#else  // no cuDNN: plans cannot be built.

struct CudnnConvPlan::Impl {};
CudnnConvPlan::CudnnConvPlan(const Conv2dGeom&, Layout, DType, bool) {
  kernels::fail("CudnnConvPlan", "this build has no cuDNN");
}
CudnnConvPlan::~CudnnConvPlan() = default;
bool CudnnConvPlan::forward_ready() const { return false; }
bool CudnnConvPlan::backward_data_ready() const { return false; }
bool CudnnConvPlan::backward_weight_ready() const { return false; }
int CudnnConvPlan::forward_algorithm() const { return -1; }
int CudnnConvPlan::backward_data_algorithm() const { return -1; }
int CudnnConvPlan::backward_weight_algorithm() const { return -1; }
void set_cudnn_algo_file(const std::string&) {}
size_t CudnnConvPlan::forward_workspace() const { return 0; }
size_t CudnnConvPlan::backward_data_workspace() const { return 0; }
size_t CudnnConvPlan::backward_weight_workspace() const { return 0; }
void CudnnConvPlan::select_forward(cudnnHandle_t, const void*, const void*, void*, void*, size_t) {}
void CudnnConvPlan::select_backward_data(cudnnHandle_t, const void*, const void*, void*, void*,
                                         size_t) {}
void CudnnConvPlan::select_backward_weight(cudnnHandle_t, const void*, const void*, void*, void*,
                                           size_t) {}
void CudnnConvPlan::forward(cudnnHandle_t, const void*, const void*, void*, void*, size_t) {}
void CudnnConvPlan::backward_data(cudnnHandle_t, const void*, const void*, void*, void*, size_t) {}
void CudnnConvPlan::backward_weight(cudnnHandle_t, const void*, const void*, void*, bool, void*,
                                    size_t) {}
#endif

}  // namespace sc
