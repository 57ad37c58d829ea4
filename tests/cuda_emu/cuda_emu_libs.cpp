// cuda_emu_libs.cpp: the emulator's cuBLAS and cuDNN (see include/cublas_v2.h and include/cudnn.h).
// Written from the libraries' documented semantics, independently of the engine's CPU backend:
// cuBLAS is column-major, C = alpha op(A) op(B) + beta C with C not read when beta is 0; cuDNN's
// tensors are NCHW or NHWC by descriptor, filters KCRS or KRSC, cross-correlation. Values are
// converted to double, computed in double (convolutions as im2col and a CPU BLAS dgemm) and
// rounded once to the output type.
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include <cblas.h>

#include "cuda_emu.h"
#include "cublas_v2.h"
#include "cudnn.h"

namespace {

// Element access by type code: 0 F32, 1 F64, 2 F16, 3 BF16.
double load(const void* p, int t, size_t i) {
  switch (t) {
    case 0: return double(static_cast<const float*>(p)[i]);
    case 1: return static_cast<const double*>(p)[i];
    case 2: return double(float(static_cast<const __half*>(p)[i]));
    default: return double(float(static_cast<const __nv_bfloat16*>(p)[i]));
  }
}
void store(void* p, int t, size_t i, double v) {
  switch (t) {
    case 0: static_cast<float*>(p)[i] = float(v); break;
    case 1: static_cast<double*>(p)[i] = v; break;
    case 2: static_cast<__half*>(p)[i] = __half(float(v)); break;
    default: static_cast<__nv_bfloat16*>(p)[i] = __nv_bfloat16(float(v)); break;
  }
}
size_t elem_size(int t) { return t == 1 ? 8 : t == 0 ? 4 : 2; }

int code_of(cudaDataType_t t) {
  switch (t) {
    case CUDA_R_32F: return 0;
    case CUDA_R_64F: return 1;
    case CUDA_R_16F: return 2;
    case CUDA_R_16BF: return 3;
  }
  return -1;
}
int code_of(cudnnDataType_t t) {
  switch (t) {
    case CUDNN_DATA_FLOAT: return 0;
    case CUDNN_DATA_DOUBLE: return 1;
    case CUDNN_DATA_HALF: return 2;
    case CUDNN_DATA_BFLOAT16: return 3;
  }
  return -1;
}

// One strided batched GEMM, its arguments checked and alpha / beta read (a recorded call holds
// them by value).
struct GemmCall {
  bool na, nb;
  int m, n, k;
  double al;
  const void* A;
  int ta, lda;
  long long strideA;
  const void* B;
  int tb, ldb;
  long long strideB;
  double be;
  void* C;
  int tc, ldc;
  long long strideC;
  int batchCount;
  bool tf32;
};

void gemm(const GemmCall& g) {
  if (emu::dry_run()) return;  // checked, not computed
  const bool na = g.na, nb = g.nb, tf32 = g.tf32;
  const int m = g.m, n = g.n, k = g.k, lda = g.lda, ldb = g.ldb, ldc = g.ldc;
  const int ta = g.ta, tb = g.tb, tc = g.tc;
  const double al = g.al, be = g.be;
  const size_t es = elem_size(ta);
  auto operand = [tf32](double v) {
    if (!tf32 || !std::isfinite(v)) return v;
    float f = float(v);
    uint32_t u;
    std::memcpy(&u, &f, 4);
    u = (u + 0xFFFu + ((u >> 13) & 1u)) & ~0x1FFFu;
    std::memcpy(&f, &u, 4);
    return double(f);
  };
  std::vector<double> a(size_t(m) * k), b(size_t(k) * n);
  for (int bi = 0; bi < g.batchCount; ++bi) {
    const char* Ab = static_cast<const char*>(g.A) + es * size_t(g.strideA * bi);
    const char* Bb = static_cast<const char*>(g.B) + es * size_t(g.strideB * bi);
    char* Cb = static_cast<char*>(g.C) + es * size_t(g.strideC * bi);
    for (int i = 0; i < m; ++i)  // a[i*k + l] = op(A)[i, l]
      for (int l = 0; l < k; ++l)
        a[size_t(i) * k + l] = operand(load(Ab, ta, na ? size_t(i) + size_t(l) * lda : size_t(l) + size_t(i) * lda));
    for (int j = 0; j < n; ++j)  // b[j*k + l] = op(B)[l, j]
      for (int l = 0; l < k; ++l)
        b[size_t(j) * k + l] = operand(load(Bb, tb, nb ? size_t(l) + size_t(j) * ldb : size_t(j) + size_t(l) * ldb));
    for (int j = 0; j < n; ++j)
      for (int i = 0; i < m; ++i) {
        double acc = 0;
        const double* ar = &a[size_t(i) * k];
        const double* bc = &b[size_t(j) * k];
        for (int l = 0; l < k; ++l) acc += ar[l] * bc[l];
        const size_t ci = size_t(i) + size_t(j) * ldc;
        const double old = be != 0 ? be * load(Cb, tc, ci) : 0.0;
        store(Cb, tc, ci, al * acc + old);
      }
  }
}

}  // namespace

// ---------------------------------------------------------------- cuBLAS
struct cublasContext {
  cudaStream_t stream = nullptr;
};

cublasStatus_t cublasCreate(cublasHandle_t* h) {
  *h = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h) {
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  h->stream = s;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t) {
  return h ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}
cublasStatus_t cublasSetWorkspace(cublasHandle_t h, void*, size_t) {
  return h ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t transa,
                                          cublasOperation_t transb, int m, int n, int k,
                                          const void* alpha, const void* A, cudaDataType_t Atype,
                                          int lda, long long strideA, const void* B,
                                          cudaDataType_t Btype, int ldb, long long strideB,
                                          const void* beta, void* C, cudaDataType_t Ctype, int ldc,
                                          long long strideC, int batchCount,
                                          cublasComputeType_t computeType, cublasGemmAlgo_t) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  const int ta = code_of(Atype), tb = code_of(Btype), tc = code_of(Ctype);
  if (ta < 0 || ta != tb || ta != tc) return CUBLAS_STATUS_NOT_SUPPORTED;
  const bool f64 = ta == 1;
  if (f64 != (computeType == CUBLAS_COMPUTE_64F)) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (!f64 && computeType != CUBLAS_COMPUTE_32F && computeType != CUBLAS_COMPUTE_32F_FAST_TF32)
    return CUBLAS_STATUS_NOT_SUPPORTED;
  if ((transa != CUBLAS_OP_N && transa != CUBLAS_OP_T) ||
      (transb != CUBLAS_OP_N && transb != CUBLAS_OP_T))
    return CUBLAS_STATUS_INVALID_VALUE;
  const bool na = transa == CUBLAS_OP_N, nb = transb == CUBLAS_OP_N;
  // cuBLAS's checks: sizes >= 0 and leading dimensions at least the stored rows.
  if (m < 0 || n < 0 || k < 0 || batchCount < 0) return CUBLAS_STATUS_INVALID_VALUE;
  if (lda < std::max(1, na ? m : k) || ldb < std::max(1, nb ? k : n) || ldc < std::max(1, m))
    return CUBLAS_STATUS_INVALID_VALUE;
  if (m == 0 || n == 0 || batchCount == 0) return CUBLAS_STATUS_SUCCESS;
  // Host pointer mode: alpha and beta are read now, also when the call is captured into a graph.
  const double al = f64 ? *static_cast<const double*>(alpha) : *static_cast<const float*>(alpha);
  const double be = f64 ? *static_cast<const double*>(beta) : *static_cast<const float*>(beta);
  // CUBLAS_COMPUTE_32F_FAST_TF32: F32 operands rounded to TF32 (10 mantissa bits, to nearest
  // even) before the products, as the tensor cores take them; accumulation stays wide
  const bool tf32 = computeType == CUBLAS_COMPUTE_32F_FAST_TF32 && ta == 0;
  const GemmCall call{na, nb, m, n, k, al, A, ta, lda, strideA, B, tb, ldb, strideB, be, C, tc, ldc,
                      strideC, batchCount, tf32};
  bool run_now = false;
  if (emu::stream_op(h->stream, "cublasGemmStridedBatchedEx", [call]() { gemm(call); },
                     &run_now) != cudaSuccess)
    return CUBLAS_STATUS_EXECUTION_FAILED;
  if (run_now) gemm(call);
  return CUBLAS_STATUS_SUCCESS;
}

// ---------------------------------------------------------------- cuDNN
struct cudnnContext {
  cudaStream_t stream = nullptr;
};
struct cudnnTensorStruct {
  bool set = false;
  cudnnTensorFormat_t fmt = CUDNN_TENSOR_NCHW;
  int t = 0;
  int n = 0, c = 0, h = 0, w = 0;
  size_t at(int in, int ic, int ih, int iw) const {
    return fmt == CUDNN_TENSOR_NCHW
               ? ((size_t(in) * c + ic) * h + ih) * w + iw
               : ((size_t(in) * h + ih) * w + iw) * c + ic;
  }
  size_t count() const { return size_t(n) * c * h * w; }
};
struct cudnnFilterStruct {
  bool set = false;
  cudnnTensorFormat_t fmt = CUDNN_TENSOR_NCHW;
  int t = 0;
  int k = 0, c = 0, r = 0, s = 0;
  size_t at(int ik, int ic, int ir, int is) const {
    return fmt == CUDNN_TENSOR_NCHW
               ? ((size_t(ik) * c + ic) * r + ir) * s + is
               : ((size_t(ik) * r + ir) * s + is) * c + ic;
  }
  size_t count() const { return size_t(k) * c * r * s; }
};
struct cudnnConvolutionStruct {
  bool set = false;
  int ph = 0, pw = 0, sh = 1, sw = 1;
  int compute = 0;
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
};

namespace {

// The checked geometry of one convolution call.
struct Conv {
  const cudnnTensorStruct& x;
  const cudnnFilterStruct& w;
  const cudnnConvolutionStruct& cd;
  const cudnnTensorStruct& y;
};

int out_dim(int in, int pad, int k, int stride) { return (in + 2 * pad - k) / stride + 1; }

cudnnStatus_t check(const cudnnTensorStruct* x, const cudnnFilterStruct* w,
                    const cudnnConvolutionStruct* cd, const cudnnTensorStruct* y) {
  if (!x || !w || !cd || !y || !x->set || !w->set || !cd->set || !y->set)
    return CUDNN_STATUS_BAD_PARAM;
  if (x->t != w->t || x->t != y->t) return CUDNN_STATUS_BAD_PARAM;
  if ((x->t == 1) != (cd->compute == 1)) return CUDNN_STATUS_NOT_SUPPORTED;
  if (x->c != w->c || y->c != w->k || y->n != x->n) return CUDNN_STATUS_BAD_PARAM;
  if (y->h != out_dim(x->h, cd->ph, w->r, cd->sh) || y->w != out_dim(x->w, cd->pw, w->s, cd->sw))
    return CUDNN_STATUS_BAD_PARAM;
  return CUDNN_STATUS_SUCCESS;
}

double scalar(const void* p, int t) {
  return t == 1 ? *static_cast<const double*>(p) : double(*static_cast<const float*>(p));
}

std::vector<double> read_tensor(const cudnnTensorStruct& d, const void* p) {  // canonical NCHW
  std::vector<double> v(d.count());
  size_t i = 0;
  for (int n = 0; n < d.n; ++n)
    for (int c = 0; c < d.c; ++c)
      for (int h = 0; h < d.h; ++h)
        for (int w = 0; w < d.w; ++w) v[i++] = load(p, d.t, d.at(n, c, h, w));
  return v;
}
std::vector<double> read_filter(const cudnnFilterStruct& d, const void* p) {  // canonical KCRS
  std::vector<double> v(d.count());
  size_t i = 0;
  for (int k = 0; k < d.k; ++k)
    for (int c = 0; c < d.c; ++c)
      for (int r = 0; r < d.r; ++r)
        for (int s = 0; s < d.s; ++s) v[i++] = load(p, d.t, d.at(k, c, r, s));
  return v;
}
// out = alpha * v + beta * out (out not read when beta is 0), v canonical.
void write_tensor(const cudnnTensorStruct& d, void* p, const std::vector<double>& v, double alpha,
                  double beta) {
  size_t i = 0;
  for (int n = 0; n < d.n; ++n)
    for (int c = 0; c < d.c; ++c)
      for (int h = 0; h < d.h; ++h)
        for (int w = 0; w < d.w; ++w) {
          const size_t at = d.at(n, c, h, w);
          store(p, d.t, at, alpha * v[i++] + (beta != 0 ? beta * load(p, d.t, at) : 0.0));
        }
}
void write_filter(const cudnnFilterStruct& d, void* p, const std::vector<double>& v, double alpha,
                  double beta) {
  size_t i = 0;
  for (int k = 0; k < d.k; ++k)
    for (int c = 0; c < d.c; ++c)
      for (int r = 0; r < d.r; ++r)
        for (int s = 0; s < d.s; ++s) {
          const size_t at = d.at(k, c, r, s);
          store(p, d.t, at, alpha * v[i++] + (beta != 0 ? beta * load(p, d.t, at) : 0.0));
        }
}

size_t xi(const cudnnTensorStruct& d, int n, int c, int h, int w) {
  return ((size_t(n) * d.c + c) * d.h + h) * d.w + w;
}

// col[(c*R + r)*S + s][oh*OW + ow] = x[n, c, oh*sh - ph + r, ow*sw - pw + s] (0 outside), image n
// of a canonical NCHW array; col2im adds a column matrix back (the adjoint).
void im2col(const Conv& g, const double* x, int n, double* col) {
  const int OH = g.y.h, OW = g.y.w;
  size_t row = 0;
  for (int c = 0; c < g.x.c; ++c)
    for (int r = 0; r < g.w.r; ++r)
      for (int s = 0; s < g.w.s; ++s, ++row)
        for (int oh = 0; oh < OH; ++oh)
          for (int ow = 0; ow < OW; ++ow) {
            const int ih = oh * g.cd.sh - g.cd.ph + r, iw = ow * g.cd.sw - g.cd.pw + s;
            const bool in = ih >= 0 && ih < g.x.h && iw >= 0 && iw < g.x.w;
            col[row * size_t(OH * OW) + size_t(oh * OW + ow)] = in ? x[xi(g.x, n, c, ih, iw)] : 0.0;
          }
}
void col2im(const Conv& g, const double* col, int n, double* x) {
  const int OH = g.y.h, OW = g.y.w;
  size_t row = 0;
  for (int c = 0; c < g.x.c; ++c)
    for (int r = 0; r < g.w.r; ++r)
      for (int s = 0; s < g.w.s; ++s, ++row)
        for (int oh = 0; oh < OH; ++oh)
          for (int ow = 0; ow < OW; ++ow) {
            const int ih = oh * g.cd.sh - g.cd.ph + r, iw = ow * g.cd.sw - g.cd.pw + s;
            if (ih >= 0 && ih < g.x.h && iw >= 0 && iw < g.x.w)
              x[xi(g.x, n, c, ih, iw)] += col[row * size_t(OH * OW) + size_t(oh * OW + ow)];
          }
}

void fill_nan(void* p, int t, size_t n) { std::memset(p, 0xFF, n * elem_size(t)); }

template <class Perf, class Algo>
void one_result(int requested, int* returned, Perf* perf, Algo algo, cudnnMathType_t math) {
  *returned = 0;
  if (requested < 1) return;
  perf[0] = Perf{};
  perf[0].algo = algo;
  perf[0].status = CUDNN_STATUS_SUCCESS;
  perf[0].time = 1.0f;
  perf[0].memory = 0;
  perf[0].determinism = CUDNN_DETERMINISTIC;
  perf[0].mathType = math == CUDNN_TENSOR_OP_MATH ? CUDNN_TENSOR_OP_MATH : CUDNN_DEFAULT_MATH;
  *returned = 1;
}

}  // namespace

namespace {
template <class T>
cudnnStatus_t make(T** p) {
  *p = new T;
  return CUDNN_STATUS_SUCCESS;
}
template <class T>
cudnnStatus_t destroy(T* p) {
  delete p;
  return CUDNN_STATUS_SUCCESS;
}
// The checks shared by the tensor and the filter descriptor.
bool valid4d(const void* d, cudnnDataType_t t, cudnnTensorFormat_t f, int a, int b, int c, int e) {
  return d && a > 0 && b > 0 && c > 0 && e > 0 && code_of(t) >= 0 &&
         (f == CUDNN_TENSOR_NCHW || f == CUDNN_TENSOR_NHWC);
}
}  // namespace

const char* cudnnGetErrorString(cudnnStatus_t s) {
  switch (s) {
    case CUDNN_STATUS_SUCCESS: return "CUDNN_STATUS_SUCCESS";
    case CUDNN_STATUS_NOT_INITIALIZED: return "CUDNN_STATUS_NOT_INITIALIZED";
    case CUDNN_STATUS_BAD_PARAM: return "CUDNN_STATUS_BAD_PARAM";
    case CUDNN_STATUS_EXECUTION_FAILED: return "CUDNN_STATUS_EXECUTION_FAILED";
    case CUDNN_STATUS_NOT_SUPPORTED: return "CUDNN_STATUS_NOT_SUPPORTED";
  }
  return "CUDNN_STATUS_UNKNOWN";
}
cudnnStatus_t cudnnCreate(cudnnHandle_t* h) { return make(h); }
cudnnStatus_t cudnnDestroy(cudnnHandle_t h) { return destroy(h); }
cudnnStatus_t cudnnSetStream(cudnnHandle_t h, cudaStream_t s) {
  if (!h) return CUDNN_STATUS_NOT_INITIALIZED;
  h->stream = s;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t* d) { return make(d); }
cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t d) { return destroy(d); }
cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t d, cudnnTensorFormat_t f,
                                         cudnnDataType_t t, int n, int c, int h, int w) {
  if (!valid4d(d, t, f, n, c, h, w)) return CUDNN_STATUS_BAD_PARAM;
  *d = cudnnTensorStruct{true, f, code_of(t), n, c, h, w};
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t* d) { return make(d); }
cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t d) { return destroy(d); }
cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t d, cudnnDataType_t t,
                                         cudnnTensorFormat_t f, int k, int c, int h, int w) {
  if (!valid4d(d, t, f, k, c, h, w)) return CUDNN_STATUS_BAD_PARAM;
  *d = cudnnFilterStruct{true, f, code_of(t), k, c, h, w};
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t* d) { return make(d); }
cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t d) { return destroy(d); }
cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t d, int pad_h, int pad_w,
                                              int u, int v, int dil_h, int dil_w,
                                              cudnnConvolutionMode_t mode,
                                              cudnnDataType_t compute) {
  if (!d || pad_h < 0 || pad_w < 0 || u <= 0 || v <= 0 || dil_h <= 0 || dil_w <= 0)
    return CUDNN_STATUS_BAD_PARAM;
  // Only what the engine uses is emulated: cross-correlation without dilation.
  if (dil_h != 1 || dil_w != 1 || mode != CUDNN_CROSS_CORRELATION) return CUDNN_STATUS_NOT_SUPPORTED;
  if (compute != CUDNN_DATA_FLOAT && compute != CUDNN_DATA_DOUBLE) return CUDNN_STATUS_BAD_PARAM;
  d->set = true;
  d->ph = pad_h;
  d->pw = pad_w;
  d->sh = u;
  d->sw = v;
  d->compute = code_of(compute);
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t d, cudnnMathType_t m) {
  if (!d) return CUDNN_STATUS_BAD_PARAM;
  d->math = m;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolution2dForwardOutputDim(cudnnConvolutionDescriptor_t cd,
                                                    cudnnTensorDescriptor_t xd,
                                                    cudnnFilterDescriptor_t wd, int* n, int* c,
                                                    int* h, int* w) {
  if (!cd || !xd || !wd || !cd->set || !xd->set || !wd->set || xd->c != wd->c)
    return CUDNN_STATUS_BAD_PARAM;
  *n = xd->n;
  *c = wd->k;
  *h = out_dim(xd->h, cd->ph, wd->r, cd->sh);
  *w = out_dim(xd->w, cd->pw, wd->s, cd->sw);
  return (*h > 0 && *w > 0) ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_BAD_PARAM;
}

namespace {
// Find*Ex: checks the geometry, leaves the output undefined (NaN) as the real one may, and offers
// one algorithm with the requested maths and no workspace.
template <class Perf, class Algo>
cudnnStatus_t find(cudnnHandle_t h, const cudnnTensorStruct* x, const cudnnFilterStruct* w,
                   const cudnnConvolutionStruct* cd, const cudnnTensorStruct* y, void* out,
                   int out_type, size_t out_count, int requested, int* returned, Perf* perf,
                   Algo algo) {
  if (!h) return CUDNN_STATUS_NOT_INITIALIZED;
  const cudnnStatus_t st = check(x, w, cd, y);
  if (st != CUDNN_STATUS_SUCCESS) return st;
  // it times the algorithms, waiting for its stream: not possible while the stream captures
  if (emu::stream_sync(h->stream, "cudnnFind*AlgorithmEx") != cudaSuccess)
    return CUDNN_STATUS_EXECUTION_FAILED;
  if (!emu::dry_run()) fill_nan(out, out_type, out_count);
  one_result(requested, returned, perf, algo, cd->math);
  return CUDNN_STATUS_SUCCESS;
}
}  // namespace

cudnnStatus_t cudnnFindConvolutionForwardAlgorithmEx(
    cudnnHandle_t h, cudnnTensorDescriptor_t xd, const void*, cudnnFilterDescriptor_t wd,
    const void*, cudnnConvolutionDescriptor_t cd, cudnnTensorDescriptor_t yd, void* y,
    int requested, int* returned, cudnnConvolutionFwdAlgoPerf_t* perf, void*, size_t) {
  return find(h, xd, wd, cd, yd, y, yd ? yd->t : 0, yd ? yd->count() : 0, requested, returned,
              perf, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM);
}
cudnnStatus_t cudnnFindConvolutionBackwardDataAlgorithmEx(
    cudnnHandle_t h, cudnnFilterDescriptor_t wd, const void*, cudnnTensorDescriptor_t dyd,
    const void*, cudnnConvolutionDescriptor_t cd, cudnnTensorDescriptor_t dxd, void* dx,
    int requested, int* returned, cudnnConvolutionBwdDataAlgoPerf_t* perf, void*, size_t) {
  return find(h, dxd, wd, cd, dyd, dx, dxd ? dxd->t : 0, dxd ? dxd->count() : 0, requested,
              returned, perf, CUDNN_CONVOLUTION_BWD_DATA_ALGO_0);
}
cudnnStatus_t cudnnFindConvolutionBackwardFilterAlgorithmEx(
    cudnnHandle_t h, cudnnTensorDescriptor_t xd, const void*, cudnnTensorDescriptor_t dyd,
    const void*, cudnnConvolutionDescriptor_t cd, cudnnFilterDescriptor_t dwd, void* dw,
    int requested, int* returned, cudnnConvolutionBwdFilterAlgoPerf_t* perf, void*, size_t) {
  return find(h, xd, dwd, cd, dyd, dw, dwd ? dwd->t : 0, dwd ? dwd->count() : 0, requested,
              returned, perf, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0);
}

namespace {
// A convolution call, checked, with copies of its descriptors and alpha / beta (a recorded call
// holds them by value: changing or destroying a descriptor after the capture changes nothing).
struct ConvCall {
  cudnnTensorStruct x;
  cudnnFilterStruct w;
  cudnnConvolutionStruct cd;
  cudnnTensorStruct y;
  double alpha, beta;
  const void* in1;
  const void* in2;
  void* out;
};

// Runs `f(call)` now, or records it when the handle's stream captures.
template <class F>
cudnnStatus_t issue(cudnnHandle_t h, const char* what, const ConvCall& call, F f) {
  bool run_now = false;
  if (emu::stream_op(h->stream, what, [call, f]() { f(call); }, &run_now) != cudaSuccess)
    return CUDNN_STATUS_EXECUTION_FAILED;
  if (run_now) f(call);
  return CUDNN_STATUS_SUCCESS;
}

void conv_forward(const ConvCall& c) {  // in1 x, in2 w, out y
  if (emu::dry_run()) return;  // checked, not computed
  const Conv g{c.x, c.w, c.cd, c.y};
  const std::vector<double> xv = read_tensor(c.x, c.in1), wv = read_filter(c.w, c.in2);
  const int K = c.w.k, CRS = c.w.c * c.w.r * c.w.s, P = c.y.h * c.y.w;
  std::vector<double> yv(c.y.count(), 0.0), col(size_t(CRS) * P);
  for (int n = 0; n < c.x.n; ++n) {  // y_n (K x P) = w (K x CRS) . col_n (CRS x P)
    im2col(g, xv.data(), n, col.data());
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, K, P, CRS, 1.0, wv.data(), CRS,
                col.data(), P, 0.0, yv.data() + size_t(n) * K * P, P);
  }
  write_tensor(c.y, c.out, yv, c.alpha, c.beta);
}

void conv_backward_data(const ConvCall& c) {  // x is dx: in1 w, in2 dy, out dx
  if (emu::dry_run()) return;
  const Conv g{c.x, c.w, c.cd, c.y};
  const std::vector<double> dyv = read_tensor(c.y, c.in2), wv = read_filter(c.w, c.in1);
  const int K = c.w.k, CRS = c.w.c * c.w.r * c.w.s, P = c.y.h * c.y.w;
  std::vector<double> dxv(c.x.count(), 0.0), col(size_t(CRS) * P);
  for (int n = 0; n < c.x.n; ++n) {  // dcol_n (CRS x P) = w^T . dy_n, then scattered back
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, CRS, P, K, 1.0, wv.data(), CRS,
                dyv.data() + size_t(n) * K * P, P, 0.0, col.data(), P);
    col2im(g, col.data(), n, dxv.data());
  }
  write_tensor(c.x, c.out, dxv, c.alpha, c.beta);
}

void conv_backward_filter(const ConvCall& c) {  // w is dw: in1 x, in2 dy, out dw
  if (emu::dry_run()) return;
  const Conv g{c.x, c.w, c.cd, c.y};
  const std::vector<double> xv = read_tensor(c.x, c.in1), dyv = read_tensor(c.y, c.in2);
  const int K = c.w.k, CRS = c.w.c * c.w.r * c.w.s, P = c.y.h * c.y.w;
  std::vector<double> dwv(c.w.count(), 0.0), col(size_t(CRS) * P);
  for (int n = 0; n < c.x.n; ++n) {  // dw (K x CRS) += dy_n (K x P) . col_n^T
    im2col(g, xv.data(), n, col.data());
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, K, CRS, P, 1.0,
                dyv.data() + size_t(n) * K * P, P, col.data(), P, 1.0, dwv.data(), CRS);
  }
  write_filter(c.w, c.out, dwv, c.alpha, c.beta);
}
}  // namespace

cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t h, const void* alpha,
                                      cudnnTensorDescriptor_t xd, const void* x,
                                      cudnnFilterDescriptor_t wd, const void* w,
                                      cudnnConvolutionDescriptor_t cd, cudnnConvolutionFwdAlgo_t,
                                      void*, size_t, const void* beta,
                                      cudnnTensorDescriptor_t yd, void* y) {
  if (!h) return CUDNN_STATUS_NOT_INITIALIZED;
  const cudnnStatus_t st = check(xd, wd, cd, yd);
  if (st != CUDNN_STATUS_SUCCESS) return st;
  const ConvCall call{*xd, *wd, *cd, *yd, scalar(alpha, xd->t), scalar(beta, xd->t), x, w, y};
  return issue(h, "cudnnConvolutionForward", call, conv_forward);
}

cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t h, const void* alpha,
                                           cudnnFilterDescriptor_t wd, const void* w,
                                           cudnnTensorDescriptor_t dyd, const void* dy,
                                           cudnnConvolutionDescriptor_t cd,
                                           cudnnConvolutionBwdDataAlgo_t, void*, size_t,
                                           const void* beta, cudnnTensorDescriptor_t dxd,
                                           void* dx) {
  if (!h) return CUDNN_STATUS_NOT_INITIALIZED;
  const cudnnStatus_t st = check(dxd, wd, cd, dyd);
  if (st != CUDNN_STATUS_SUCCESS) return st;
  const ConvCall call{*dxd, *wd, *cd, *dyd, scalar(alpha, dxd->t), scalar(beta, dxd->t), w, dy, dx};
  return issue(h, "cudnnConvolutionBackwardData", call, conv_backward_data);
}

cudnnStatus_t cudnnConvolutionBackwardFilter(cudnnHandle_t h, const void* alpha,
                                             cudnnTensorDescriptor_t xd, const void* x,
                                             cudnnTensorDescriptor_t dyd, const void* dy,
                                             cudnnConvolutionDescriptor_t cd,
                                             cudnnConvolutionBwdFilterAlgo_t, void*, size_t,
                                             const void* beta, cudnnFilterDescriptor_t dwd,
                                             void* dw) {
  if (!h) return CUDNN_STATUS_NOT_INITIALIZED;
  const cudnnStatus_t st = check(xd, dwd, cd, dyd);
  if (st != CUDNN_STATUS_SUCCESS) return st;
  const ConvCall call{*xd, *dwd, *cd, *dyd, scalar(alpha, xd->t), scalar(beta, xd->t), x, dy, dw};
  return issue(h, "cudnnConvolutionBackwardFilter", call, conv_backward_filter);
}
