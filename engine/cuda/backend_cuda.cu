// The CUDA backend, elementwise half: copy (with dtype conversion), fill, unary and binary maps,
// equal, and host<->device transfers. Row reductions, softmax, l2-normalisation, GEMM and row
// gathers are in backend_cuda_rows.cu. Contracts: engine/backend.h.
//
// One kernel per dtype for the unary and binary families, with a runtime switch on the op (the
// switch is uniform across a warp, so it costs a few instructions per element and keeps the
// number of instantiations, and the compile time, small). 16-bit types compute in float.
// Every function enqueues on the engine stream of the tensors' device and returns at once,
// except copy_across into host memory, which waits for the copy.
#include <cmath>

#include "engine/cuda/device_utils.cuh"

namespace sc {
namespace cuda {

using namespace detail;

namespace {

// ------------------------------------------------------------------ copy / fill
template <class D, class S>
__global__ void convert_kernel(Strided<2> ix, int64_t n, D* __restrict__ dst,
                               const S* __restrict__ src) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[2];
    ix.offsets(i, off);
    dst[off[0]] = convert<D>(src[off[1]]);
  }
}

// Same-dtype copies move raw bits (W = an unsigned integer of the element's size).
template <class W>
__global__ void copy_bits_kernel(Strided<2> ix, int64_t n, W* __restrict__ dst,
                                 const W* __restrict__ src) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[2];
    ix.offsets(i, off);
    dst[off[0]] = src[off[1]];
  }
}

template <class W>
__global__ void fill_bits_kernel(Strided<1> ix, int64_t n, W* __restrict__ dst, W value) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[1];
    ix.offsets(i, off);
    dst[off[0]] = value;
  }
}

// The bits of `value` stored as dtype t, converted exactly as the CPU backend converts.
uint64_t value_bits(DType t, double value) {
  uint64_t bits = 0;
  switch (t) {
    case DType::F32: {
      float f = float(value);
      std::memcpy(&bits, &f, 4);
      break;
    }
    case DType::F64:
      std::memcpy(&bits, &value, 8);
      break;
    case DType::BF16:
      bits = float_to_bf16_bits(float(value));
      break;
    case DType::F16:
      bits = float_to_f16_bits(float(value));
      break;
    case DType::I64: {
      int64_t i = int64_t(value);
      std::memcpy(&bits, &i, 8);
      break;
    }
    case DType::U8:
      bits = uint8_t(value);
      break;
  }
  return bits;
}

// ------------------------------------------------------------------ unary / binary maps
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

__device__ __forceinline__ float d_exp(float x) { return expf(x); }
__device__ __forceinline__ double d_exp(double x) { return exp(x); }
__device__ __forceinline__ float d_log(float x) { return logf(x); }
__device__ __forceinline__ double d_log(double x) { return log(x); }
__device__ __forceinline__ float d_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double d_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float d_erf(float x) { return erff(x); }
__device__ __forceinline__ double d_erf(double x) { return erf(x); }
__device__ __forceinline__ float d_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double d_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float d_pow(float x, float y) { return powf(x, y); }
__device__ __forceinline__ double d_pow(double x, double y) { return pow(x, y); }

template <class A>
__device__ __forceinline__ A gelu_fwd(A x) {
  return A(0.5) * x * (A(1) + d_erf(x * A(kInvSqrt2)));
}
// gelu'(x) = Phi(x) + x phi(x)
template <class A>
__device__ __forceinline__ A gelu_grad(A x) {
  return A(0.5) * (A(1) + d_erf(x * A(kInvSqrt2))) + x * d_exp(A(-0.5) * x * x) * A(kInvSqrt2Pi);
}

template <class A>
__device__ __forceinline__ A apply_unary(UnaryOp op, A x, A alpha) {
  switch (op) {
    case UnaryOp::Neg:
      return -x;
    case UnaryOp::Exp:
      return d_exp(x);
    case UnaryOp::Log:
      return d_log(x);
    case UnaryOp::Sqrt:
      return d_sqrt(x);
    case UnaryOp::Relu:
      return x > A(0) ? x : A(0);
    case UnaryOp::Gelu:
      return gelu_fwd(x);
    case UnaryOp::Sigmoid:
      return A(1) / (A(1) + d_exp(-x));
    case UnaryOp::Tanh:
      return d_tanh(x);
    case UnaryOp::AddScalar:
      return x + alpha;
    case UnaryOp::MulScalar:
      return x * alpha;
    case UnaryOp::PowScalar:
      return d_pow(x, alpha);
    case UnaryOp::ClampMin:
      return x > alpha ? x : alpha;
  }
  return x;
}

template <class A>
__device__ __forceinline__ A apply_binary(BinaryOp op, A a, A b, A alpha, A beta) {
  switch (op) {
    case BinaryOp::Add:
      return a + b;
    case BinaryOp::Sub:
      return a - b;
    case BinaryOp::Mul:
      return a * b;
    case BinaryOp::Div:
      return a / b;
    case BinaryOp::Axpby:
      return alpha * a + beta * b;
    case BinaryOp::ReluBackward:
      return b > A(0) ? a : A(0);
    case BinaryOp::GeluBackward:
      return a * gelu_grad(b);
    case BinaryOp::ClampMinBackward:
      return b > alpha ? a : A(0);
    case BinaryOp::PowScalarBackward:
      return a * alpha * d_pow(b, alpha - A(1));
  }
  return a;
}

template <class T>
__global__ void unary_kernel(UnaryOp op, Strided<2> ix, int64_t n, T* out, const T* a,
                             Acc<T> alpha) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[2];
    ix.offsets(i, off);
    out[off[0]] = store_acc<T>(apply_unary<Acc<T>>(op, load_acc(a[off[1]]), alpha));
  }
}

// `out` may alias `a` (in-place updates), so no __restrict__ here.
template <class T>
__global__ void binary_kernel(BinaryOp op, Strided<3> ix, int64_t n, T* out, const T* a, const T* b,
                              Acc<T> alpha, Acc<T> beta) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[3];
    ix.offsets(i, off);
    out[off[0]] = store_acc<T>(
        apply_binary<Acc<T>>(op, load_acc(a[off[1]]), load_acc(b[off[2]]), alpha, beta));
  }
}

__device__ __forceinline__ double equal_key(int64_t x) { return double(x); }
__device__ __forceinline__ double equal_key(uint8_t x) { return double(x); }
__device__ __forceinline__ double equal_key(double x) { return x; }
__device__ __forceinline__ float equal_key(float x) { return x; }
__device__ __forceinline__ float equal_key(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float equal_key(f16 x) { return __half2float(x); }

template <class T>
__global__ void equal_kernel(Strided<3> ix, int64_t n, uint8_t* out, const T* a, const T* b) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[3];
    ix.offsets(i, off);
    out[off[0]] = equal_key(a[off[1]]) == equal_key(b[off[2]]) ? 1 : 0;
  }
}

// Same strides on every dim that has more than one element (the strides of size-1 dims do not
// matter to the memory layout).
bool same_layout(const Tensor& a, const Tensor& b) {
  for (int d = 0; d < a.dim(); ++d)
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  return true;
}

void check_cuda_operand(const char* op, const Tensor& t, int device) {
  SC_CHECK(t.device().is_cuda() && t.device().index == device, op, ": operand ", t.str(),
           " is not on cuda:", device);
}

}  // namespace

// ------------------------------------------------------------------ backend entry points
void copy(const Tensor& dst, const Tensor& src) {
  SC_CHECK(dst.shape() == src.shape(), "copy: shape ", shape_str(src.shape()), " into ",
           shape_str(dst.shape()));
  const int dev = device_of(dst);
  check_cuda_operand("copy", src, dev);
  const int64_t n = dst.numel();
  if (n == 0) return;
  const Tensor* ts[2] = {&dst, &src};
  Strided<2> ix = make_strided<2>(ts, "copy");
  cudaStream_t s = stream(dev);
  if (dst.dtype() == src.dtype()) {
    const size_t es = dtype_size(dst.dtype());
    if (ix.flat) {
      SC_TRACE_WORK(2.0 * double(n) * es, 0, Memory);
      kernels::note_memory_op("cudaMemcpyAsync (device to device)");
      SC_CUDA_CHECK(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), size_t(n) * es,
                                    cudaMemcpyDeviceToDevice, s));
      return;
    }
    dispatch_width(es, [&](auto w) {
      using W = decltype(w);
      copy_bits_kernel<W><<<grid_for(n, dev), kThreads, 0, s>>>(
          ix, n, static_cast<W*>(dst.data_ptr()), static_cast<const W*>(src.data_ptr()));
    });
    SC_TRACE_WORK(2.0 * double(n) * es, 0, Memory);
    check_launch("copy");
    return;
  }
  dispatch_any(dst.dtype(), [&](auto dt) {
    using D = decltype(dt);
    dispatch_any(src.dtype(), [&](auto st) {
      using S = decltype(st);
      if constexpr (!std::is_same<D, S>::value) {
        convert_kernel<D, S><<<grid_for(n, dev), kThreads, 0, s>>>(
            ix, n, static_cast<D*>(dst.data_ptr()), static_cast<const S*>(src.data_ptr()));
      }
    });
  });
  SC_TRACE_WORK(double(n) * double(dtype_size(dst.dtype()) + dtype_size(src.dtype())), n, FP32);
  check_launch("copy (dtype conversion)");
}

void fill(const Tensor& dst, double value) {
  const int dev = device_of(dst);
  const int64_t n = dst.numel();
  if (n == 0) return;
  const Tensor* ts[1] = {&dst};
  Strided<1> ix = make_strided<1>(ts, "fill");
  const uint64_t bits = value_bits(dst.dtype(), value);
  cudaStream_t s = stream(dev);
  if (ix.flat && (bits == 0 || dst.dtype() == DType::U8)) {  // one byte pattern: a memset
    SC_TRACE_WORK(double(n) * double(dtype_size(dst.dtype())), 0, Memory);
    kernels::note_memory_op("cudaMemsetAsync (fill)");
    SC_CUDA_CHECK(
        cudaMemsetAsync(dst.data_ptr(), int(bits & 0xff), size_t(n) * dtype_size(dst.dtype()), s));
    return;
  }
  dispatch_width(dtype_size(dst.dtype()), [&](auto w) {
    using W = decltype(w);
    fill_bits_kernel<W>
        <<<grid_for(n, dev), kThreads, 0, s>>>(ix, n, static_cast<W*>(dst.data_ptr()), W(bits));
  });
  SC_TRACE_WORK(double(n) * double(dtype_size(dst.dtype())), 0, Memory);
  check_launch("fill");
}

void unary(UnaryOp op, const Tensor& out, const Tensor& a, double alpha) {
  const int dev = device_of(out);
  check_cuda_operand("unary op", a, dev);
  SC_CHECK(out.dtype() == a.dtype(), "unary op: dtypes differ");
  const int64_t n = out.numel();
  if (n == 0) return;
  const Tensor* ts[2] = {&out, &a};
  Strided<2> ix = make_strided<2>(ts, "unary op");
  dispatch_float(out.dtype(), "unary op", [&](auto t) {
    using T = decltype(t);
    unary_kernel<T><<<grid_for(n, dev), kThreads, 0, stream(dev)>>>(op, ix, n, out.data<T>(),
                                                                    a.data<T>(), Acc<T>(alpha));
  });
  SC_TRACE_WORK_AS(2.0 * double(n) * double(dtype_size(out.dtype())), n, simt_unit(out.dtype()));
  check_launch("unary op");
}

void binary(BinaryOp op, const Tensor& out, const Tensor& a, const Tensor& b, double alpha,
            double beta) {
  const int dev = device_of(out);
  check_cuda_operand("binary op", a, dev);
  check_cuda_operand("binary op", b, dev);
  SC_CHECK(out.dtype() == a.dtype() && out.dtype() == b.dtype(), "binary op: dtypes differ");
  const int64_t n = out.numel();
  if (n == 0) return;
  const Tensor* ts[3] = {&out, &a, &b};
  Strided<3> ix = make_strided<3>(ts, "binary op");
  dispatch_float(out.dtype(), "binary op", [&](auto t) {
    using T = decltype(t);
    binary_kernel<T><<<grid_for(n, dev), kThreads, 0, stream(dev)>>>(
        op, ix, n, out.data<T>(), a.data<T>(), b.data<T>(), Acc<T>(alpha), Acc<T>(beta));
  });
  SC_TRACE_WORK_AS(3.0 * double(n) * double(dtype_size(out.dtype())), 2 * n,
                   simt_unit(out.dtype()));
  check_launch("binary op");
}

void equal(const Tensor& out, const Tensor& a, const Tensor& b) {
  SC_CHECK(out.dtype() == DType::U8, "equal: output must be U8");
  SC_CHECK(a.dtype() == b.dtype(), "equal: dtypes differ");
  const int dev = device_of(out);
  check_cuda_operand("equal", a, dev);
  check_cuda_operand("equal", b, dev);
  const int64_t n = out.numel();
  if (n == 0) return;
  const Tensor* ts[3] = {&out, &a, &b};
  Strided<3> ix = make_strided<3>(ts, "equal");
  dispatch_any(a.dtype(), [&](auto t) {
    using T = decltype(t);
    equal_kernel<T><<<grid_for(n, dev), kThreads, 0, stream(dev)>>>(ix, n, out.data<uint8_t>(),
                                                                    a.data<T>(), b.data<T>());
  });
  SC_TRACE_WORK(double(n) * double(2 * dtype_size(a.dtype()) + 1), n, FP32);
  check_launch("equal");
}

void copy_across(const Tensor& dst, const Tensor& src) {
  SC_CHECK(dst.dtype() == src.dtype() && dst.numel() == src.numel(), "copy_across: ", src.str(),
           " into ", dst.str(), " (same dtype and size required)");
  SC_CHECK(dst.shape() == src.shape() && dst.is_non_overlapping_and_dense() &&
               src.is_non_overlapping_and_dense() && same_layout(dst, src),
           "copy_across: both tensors must be dense with the same shape and layout, got ",
           src.str(), " -> ", dst.str());
  const bool to_host = dst.device().is_cpu();
  const Tensor& gpu = to_host ? src : dst;
  SC_CHECK(gpu.device().is_cuda() && (to_host || src.device().is_cpu()),
           "copy_across: needs one host and one CUDA tensor, got ", src.str(), " -> ", dst.str());
  const int dev = device_of(gpu);
  const size_t nbytes = size_t(dst.numel()) * dtype_size(dst.dtype());
  if (nbytes == 0) return;
  cudaStream_t s = stream(dev);
  // Host-to-device from pageable memory returns once the source has been staged; from pinned
  // memory it is truly asynchronous, and the pinned allocator keeps the buffer until it is done.
  SC_CUDA_CHECK(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), nbytes,
                                to_host ? cudaMemcpyDeviceToHost : cudaMemcpyHostToDevice, s));
  to_host ? note_device_to_host(nbytes) : note_host_to_device(nbytes);
  if (to_host) {
    note_host_sync();
    SC_CUDA_CHECK(cudaStreamSynchronize(s));
    check_deferred_errors(dev);
  }
}

}  // namespace cuda
}  // namespace sc
