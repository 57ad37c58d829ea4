// The CPU backend: the reference implementation of every engine op (F32 and F64 compute,
// double accumulation), and the fallback when no GPU is present.
#include <cblas.h>

#include <algorithm>
#include <array>
#include <type_traits>
#include <vector>
#include <cmath>
#include <cstring>
#include <limits>

#include "engine/backend.h"
#include "kernels/parallel.h"

namespace sc {
namespace cpu {
namespace {

struct bf16_t {
  uint16_t v;
};
struct f16_t {
  uint16_t v;
};

template <class T>
inline double to_d(T x) { return double(x); }
template <>
inline double to_d(bf16_t x) { return bf16_bits_to_float(x.v); }
template <>
inline double to_d(f16_t x) { return f16_bits_to_float(x.v); }
template <class T>
inline T from_d(double x) { return T(x); }
template <>
inline bf16_t from_d(double x) { return bf16_t{float_to_bf16_bits(float(x))}; }
template <>
inline f16_t from_d(double x) { return f16_t{float_to_f16_bits(float(x))}; }
template <>
inline int64_t from_d(double x) { return int64_t(x); }
template <>
inline uint8_t from_d(double x) { return uint8_t(x); }

// Visit every element of `shape` in row-major order, handing `f` the element offset of each of
// the N operands (strides in elements).
template <size_t N, class F>
void strided_loop(const Shape& shape, const std::array<const Shape*, N>& strides, F&& f) {
  const int nd = int(shape.size());
  const int64_t numel = shape_numel(shape);
  if (numel == 0) return;
  std::array<int64_t, N> off{};
  if (nd == 0) {
    f(off);
    return;
  }
  const int64_t inner = shape[nd - 1];
  std::array<int64_t, N> inner_stride;
  for (size_t k = 0; k < N; ++k) inner_stride[k] = (*strides[k])[nd - 1];
  std::vector<int64_t> idx(size_t(nd), 0);
  for (int64_t base = 0; base < numel; base += inner) {
    std::array<int64_t, N> o = off;
    for (int64_t i = 0; i < inner; ++i) {
      f(o);
      for (size_t k = 0; k < N; ++k) o[k] += inner_stride[k];
    }
    for (int d = nd - 2; d >= 0; --d) {
      ++idx[size_t(d)];
      for (size_t k = 0; k < N; ++k) off[k] += (*strides[k])[d];
      if (idx[size_t(d)] < shape[d]) break;
      for (size_t k = 0; k < N; ++k) off[k] -= (*strides[k])[d] * shape[d];
      idx[size_t(d)] = 0;
    }
  }
}

template <class F>
void dispatch_any(DType t, F&& f) {
  switch (t) {
    case DType::F32: f(float()); return;
    case DType::F64: f(double()); return;
    case DType::BF16: f(bf16_t()); return;
    case DType::F16: f(f16_t()); return;
    case DType::I64: f(int64_t()); return;
    case DType::U8: f(uint8_t()); return;
  }
}

template <class F>
void dispatch_float(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::F32: f(float()); return;
    case DType::F64: f(double()); return;
    default:
      throw Error(str_cat(op, ": the CPU backend computes in F32 and F64, not ", dtype_name(t),
                          " (cast first)"));
  }
}

inline double gelu_d(double x) { return 0.5 * x * (1.0 + std::erf(x * M_SQRT1_2)); }
inline double gelu_grad_d(double x) {
  return 0.5 * (1.0 + std::erf(x * M_SQRT1_2)) + x * std::exp(-0.5 * x * x) * 0.3989422804014327;
}

template <class T, class F>
void map1(const Tensor& out, const Tensor& a, F&& f) {
  T* po = out.data<T>();
  const T* pa = a.data<T>();
  if (out.is_contiguous() && a.is_contiguous()) {
    parallel_for(out.numel(), grain_for(1), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) po[i] = T(f(double(pa[i])));
    });
    return;
  }
  strided_loop<2>(out.shape(), {&out.strides(), &a.strides()},
                  [&](const std::array<int64_t, 2>& o) { po[o[0]] = T(f(double(pa[o[1]]))); });
}

template <class T, class F>
void map2(const Tensor& out, const Tensor& a, const Tensor& b, F&& f) {
  T* po = out.data<T>();
  const T* pa = a.data<T>();
  const T* pb = b.data<T>();
  if (out.is_contiguous() && a.is_contiguous() && b.is_contiguous() &&
      a.shape() == out.shape() && b.shape() == out.shape()) {
    parallel_for(out.numel(), grain_for(1), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) po[i] = T(f(double(pa[i]), double(pb[i])));
    });
    return;
  }
  strided_loop<3>(out.shape(), {&out.strides(), &a.strides(), &b.strides()},
                  [&](const std::array<int64_t, 3>& o) {
                    po[o[0]] = T(f(double(pa[o[1]]), double(pb[o[2]])));
                  });
}

}  // namespace

void copy(const Tensor& dst, const Tensor& src) {
  SC_CHECK(dst.shape() == src.shape(), "copy: shape ", shape_str(src.shape()), " into ",
           shape_str(dst.shape()));
  dispatch_any(dst.dtype(), [&](auto dt) {
    using D = decltype(dt);
    dispatch_any(src.dtype(), [&](auto st) {
      using S = decltype(st);
      D* pd = dst.data<D>();
      const S* ps = src.data<S>();
      if (std::is_same<D, S>::value && dst.is_contiguous() && src.is_contiguous()) {
        parallel_for(dst.numel(), grain_for(1), [&](int64_t b, int64_t e) {
          std::memcpy(pd + b, ps + b, size_t(e - b) * sizeof(D));
        });
        return;
      }
      strided_loop<2>(dst.shape(), {&dst.strides(), &src.strides()},
                      [&](const std::array<int64_t, 2>& o) {
                        if constexpr (std::is_same<D, S>::value) {
                          pd[o[0]] = ps[o[1]];
                        } else {
                          pd[o[0]] = from_d<D>(to_d(ps[o[1]]));
                        }
                      });
    });
  });
}

void fill(const Tensor& dst, double value) {
  dispatch_any(dst.dtype(), [&](auto dt) {
    using D = decltype(dt);
    D v = from_d<D>(value);
    D* pd = dst.data<D>();
    if (dst.is_contiguous()) {
      parallel_for(dst.numel(), grain_for(1),
                   [&](int64_t b, int64_t e) { std::fill(pd + b, pd + e, v); });
      return;
    }
    strided_loop<1>(dst.shape(), {&dst.strides()},
                    [&](const std::array<int64_t, 1>& o) { pd[o[0]] = v; });
  });
}

void unary(UnaryOp op, const Tensor& out, const Tensor& a, double alpha) {
  dispatch_float(out.dtype(), "unary op", [&](auto t) {
    using T = decltype(t);
    switch (op) {
      case UnaryOp::Neg: map1<T>(out, a, [](double x) { return -x; }); break;
      case UnaryOp::Exp: map1<T>(out, a, [](double x) { return std::exp(x); }); break;
      case UnaryOp::Log: map1<T>(out, a, [](double x) { return std::log(x); }); break;
      case UnaryOp::Sqrt: map1<T>(out, a, [](double x) { return std::sqrt(x); }); break;
      case UnaryOp::Relu: map1<T>(out, a, [](double x) { return x > 0 ? x : 0.0; }); break;
      case UnaryOp::Gelu: map1<T>(out, a, gelu_d); break;
      case UnaryOp::Sigmoid:
        map1<T>(out, a, [](double x) { return 1.0 / (1.0 + std::exp(-x)); });
        break;
      case UnaryOp::Tanh: map1<T>(out, a, [](double x) { return std::tanh(x); }); break;
      case UnaryOp::AddScalar: map1<T>(out, a, [=](double x) { return x + alpha; }); break;
      case UnaryOp::MulScalar: map1<T>(out, a, [=](double x) { return x * alpha; }); break;
      case UnaryOp::PowScalar: map1<T>(out, a, [=](double x) { return std::pow(x, alpha); }); break;
      case UnaryOp::ClampMin: map1<T>(out, a, [=](double x) { return x > alpha ? x : alpha; }); break;
    }
  });
}

void binary(BinaryOp op, const Tensor& out, const Tensor& a, const Tensor& b, double alpha,
            double beta) {
  dispatch_float(out.dtype(), "binary op", [&](auto t) {
    using T = decltype(t);
    switch (op) {
      case BinaryOp::Add: map2<T>(out, a, b, [](double x, double y) { return x + y; }); break;
      case BinaryOp::Sub: map2<T>(out, a, b, [](double x, double y) { return x - y; }); break;
      case BinaryOp::Mul: map2<T>(out, a, b, [](double x, double y) { return x * y; }); break;
      case BinaryOp::Div: map2<T>(out, a, b, [](double x, double y) { return x / y; }); break;
      case BinaryOp::Axpby:
        map2<T>(out, a, b, [=](double x, double y) { return alpha * x + beta * y; });
        break;
      case BinaryOp::ReluBackward:
        map2<T>(out, a, b, [](double g, double x) { return x > 0 ? g : 0.0; });
        break;
      case BinaryOp::GeluBackward:
        map2<T>(out, a, b, [](double g, double x) { return g * gelu_grad_d(x); });
        break;
      case BinaryOp::ClampMinBackward:
        map2<T>(out, a, b, [=](double g, double x) { return x > alpha ? g : 0.0; });
        break;
      case BinaryOp::PowScalarBackward:
        map2<T>(out, a, b, [=](double g, double x) { return g * alpha * std::pow(x, alpha - 1); });
        break;
    }
  });
}

void equal(const Tensor& out, const Tensor& a, const Tensor& b) {
  SC_CHECK(out.dtype() == DType::U8, "equal: output must be U8");
  dispatch_any(a.dtype(), [&](auto t) {
    using T = decltype(t);
    uint8_t* po = out.data<uint8_t>();
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    strided_loop<3>(out.shape(), {&out.strides(), &a.strides(), &b.strides()},
                    [&](const std::array<int64_t, 3>& o) {
                      po[o[0]] = to_d(pa[o[1]]) == to_d(pb[o[2]]) ? 1 : 0;
                    });
  });
}

void sum_rows(const Tensor& out, const Tensor& in, int64_t rows, int64_t cols) {
  dispatch_float(in.dtype(), "sum", [&](auto t) {
    using T = decltype(t);
    const T* p = in.data<T>();
    T* o = out.data<T>();
    parallel_for(rows, grain_for(cols), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        double s = 0;
        const T* row = p + r * cols;
        for (int64_t c = 0; c < cols; ++c) s += row[c];
        o[r] = T(s);
      }
    });
  });
}

void argmax_rows(const Tensor& out, const Tensor& in, int64_t rows, int64_t cols) {
  SC_CHECK(cols > 0, "argmax over an empty dimension");
  dispatch_float(in.dtype(), "argmax", [&](auto t) {
    using T = decltype(t);
    const T* p = in.data<T>();
    int64_t* o = out.data<int64_t>();
    for (int64_t r = 0; r < rows; ++r) {
      const T* row = p + r * cols;
      int64_t best = 0;
      for (int64_t c = 1; c < cols; ++c)
        if (row[c] > row[best] || (std::isnan(double(row[c])) && !std::isnan(double(row[best]))))
          best = c;
      o[r] = best;
    }
  });
}

void softmax_rows(const Tensor& out, const Tensor& in, int64_t rows, int64_t cols, bool log) {
  dispatch_float(in.dtype(), "softmax", [&](auto t) {
    using T = decltype(t);
    const T* p = in.data<T>();
    T* o = out.data<T>();
    for (int64_t r = 0; r < rows; ++r) {
      const T* x = p + r * cols;
      T* y = o + r * cols;
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t c = 0; c < cols; ++c) m = std::max(m, double(x[c]));
      double s = 0;
      for (int64_t c = 0; c < cols; ++c) s += std::exp(double(x[c]) - m);
      if (log) {
        double ls = std::log(s) + m;
        for (int64_t c = 0; c < cols; ++c) y[c] = T(double(x[c]) - ls);
      } else {
        for (int64_t c = 0; c < cols; ++c) y[c] = T(std::exp(double(x[c]) - m) / s);
      }
    }
  });
}

void softmax_backward_rows(const Tensor& dx, const Tensor& g, const Tensor& y, int64_t rows,
                           int64_t cols, bool log) {
  dispatch_float(y.dtype(), "softmax backward", [&](auto t) {
    using T = decltype(t);
    for (int64_t r = 0; r < rows; ++r) {
      const T* gr = g.data<T>() + r * cols;
      const T* yr = y.data<T>() + r * cols;
      T* dr = dx.data<T>() + r * cols;
      double s = 0;
      if (log) {
        for (int64_t c = 0; c < cols; ++c) s += gr[c];
        for (int64_t c = 0; c < cols; ++c) dr[c] = T(gr[c] - std::exp(double(yr[c])) * s);
      } else {
        for (int64_t c = 0; c < cols; ++c) s += double(gr[c]) * yr[c];
        for (int64_t c = 0; c < cols; ++c) dr[c] = T(double(yr[c]) * (gr[c] - s));
      }
    }
  });
}

void l2norm_rows(const Tensor& out, const Tensor& x, int64_t rows, int64_t cols, double eps) {
  dispatch_float(x.dtype(), "l2_normalize", [&](auto t) {
    using T = decltype(t);
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x.data<T>() + r * cols;
      T* yr = out.data<T>() + r * cols;
      double s = 0;
      for (int64_t c = 0; c < cols; ++c) s += double(xr[c]) * xr[c];
      double n = std::max(std::sqrt(s), eps);
      for (int64_t c = 0; c < cols; ++c) yr[c] = T(xr[c] / n);
    }
  });
}

void l2norm_backward_rows(const Tensor& dx, const Tensor& g, const Tensor& x, int64_t rows,
                          int64_t cols, double eps) {
  dispatch_float(x.dtype(), "l2_normalize backward", [&](auto t) {
    using T = decltype(t);
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x.data<T>() + r * cols;
      const T* gr = g.data<T>() + r * cols;
      T* dr = dx.data<T>() + r * cols;
      double s = 0, gx = 0;
      for (int64_t c = 0; c < cols; ++c) {
        s += double(xr[c]) * xr[c];
        gx += double(gr[c]) * xr[c];
      }
      double n = std::sqrt(s);
      if (n > eps) {
        // y = x/n: dx = (g - y <g, y>) / n = (g - x <g, x> / n^2) / n
        for (int64_t c = 0; c < cols; ++c) dr[c] = T((gr[c] - xr[c] * gx / (n * n)) / n);
      } else {
        for (int64_t c = 0; c < cols; ++c) dr[c] = T(gr[c] / eps);
      }
    }
  });
}

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
          const Tensor& A, int64_t lda, int64_t sA, const Tensor& B, int64_t ldb, int64_t sB,
          double beta, const Tensor& C, int64_t ldc, int64_t sC, int64_t batch) {
  if (m == 0 || n == 0) return;
  auto ta = trans_a ? CblasTrans : CblasNoTrans;
  auto tb = trans_b ? CblasTrans : CblasNoTrans;
  dispatch_float(C.dtype(), "matmul", [&](auto t) {
    using T = decltype(t);
    const T* pa = A.data<T>();
    const T* pb = B.data<T>();
    T* pc = C.data<T>();
    for (int64_t i = 0; i < batch; ++i) {
      if (k == 0) {  // C = beta * C
        for (int64_t r = 0; r < m; ++r)
          for (int64_t c = 0; c < n; ++c) {
            T& v = pc[i * sC + r * ldc + c];
            v = beta == 0 ? T(0) : T(beta * v);
          }
        continue;
      }
      if constexpr (std::is_same<T, float>::value) {
        cblas_sgemm(CblasRowMajor, ta, tb, int(m), int(n), int(k), float(alpha), pa + i * sA,
                    int(lda), pb + i * sB, int(ldb), float(beta), pc + i * sC, int(ldc));
      } else {
        cblas_dgemm(CblasRowMajor, ta, tb, int(m), int(n), int(k), alpha, pa + i * sA, int(lda),
                    pb + i * sB, int(ldb), beta, pc + i * sC, int(ldc));
      }
    }
  });
}

void index_select_rows(const Tensor& out, const Tensor& in, const Tensor& idx) {
  const int64_t n = idx.numel(), R = in.size(0);
  const int64_t cols = R ? in.numel() / R : 0;
  const int64_t* ip = idx.data<int64_t>();
  const size_t row_bytes = size_t(cols) * dtype_size(in.dtype());
  const char* src = static_cast<const char*>(in.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  for (int64_t i = 0; i < n; ++i) {
    SC_CHECK(ip[i] >= 0 && ip[i] < R, "index_select_rows: index ", ip[i], " out of range [0, ", R,
             ")");
    std::memcpy(dst + i * row_bytes, src + ip[i] * row_bytes, row_bytes);
  }
}

void index_add_rows(const Tensor& out, const Tensor& idx, const Tensor& src) {
  const int64_t n = idx.numel(), R = out.size(0);
  const int64_t cols = n ? src.numel() / n : 0;
  const int64_t* ip = idx.data<int64_t>();
  dispatch_float(out.dtype(), "index_add_rows", [&](auto t) {
    using T = decltype(t);
    T* po = out.data<T>();
    const T* ps = src.data<T>();
    for (int64_t i = 0; i < n; ++i) {
      SC_CHECK(ip[i] >= 0 && ip[i] < R, "index_add_rows: index ", ip[i], " out of range [0, ", R,
               ")");
      for (int64_t c = 0; c < cols; ++c) po[ip[i] * cols + c] += ps[i * cols + c];
    }
  });
}

void compact_rows_index(const Tensor& idx, const Tensor& valid, const Tensor& mask) {
  const int64_t n = mask.numel(), M = idx.numel();
  const uint8_t* pm = mask.data<uint8_t>();
  int64_t* pi = idx.data<int64_t>();
  uint8_t* pv = valid.data<uint8_t>();
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (!pm[i]) continue;
    SC_CHECK(count < M, "compact_rows_index: more than M = ", M, " selected rows (row ", i,
             " would be slot ", count, ")");
    pi[count] = i;
    pv[count] = 1;
    ++count;
  }
  for (int64_t m = count; m < M; ++m) {
    pi[m] = -1;
    pv[m] = 0;
  }
}

void gather_rows(const Tensor& out, const Tensor& in, const Tensor& idx, const Tensor& valid) {
  const int64_t M = idx.numel(), R = in.size(0);
  const int64_t cols = M ? out.numel() / M : 0;
  const int64_t* ip = idx.data<int64_t>();
  const uint8_t* vp = valid.data<uint8_t>();
  const size_t row_bytes = size_t(cols) * dtype_size(in.dtype());
  const char* src = static_cast<const char*>(in.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  for (int64_t m = 0; m < M; ++m) {
    if (!vp[m]) {
      std::memset(dst + m * row_bytes, 0, row_bytes);  // all-zero bytes: 0.0 in every float type
      continue;
    }
    SC_CHECK(ip[m] >= 0 && ip[m] < R, "gather_rows: index ", ip[m], " out of range [0, ", R, ")");
    std::memcpy(dst + m * row_bytes, src + ip[m] * row_bytes, row_bytes);
  }
}

void scatter_rows(const Tensor& out, const Tensor& idx, const Tensor& valid, const Tensor& src) {
  const int64_t M = idx.numel(), R = out.size(0);
  const int64_t cols = M ? src.numel() / M : 0;
  const int64_t* ip = idx.data<int64_t>();
  const uint8_t* vp = valid.data<uint8_t>();
  const size_t row_bytes = size_t(cols) * dtype_size(src.dtype());
  const char* ps = static_cast<const char*>(src.data_ptr());
  char* po = static_cast<char*>(out.data_ptr());
  for (int64_t m = 0; m < M; ++m) {
    if (!vp[m]) continue;
    SC_CHECK(ip[m] >= 0 && ip[m] < R, "scatter_rows: index ", ip[m], " out of range [0, ", R,
             ")");
    std::memcpy(po + ip[m] * row_bytes, ps + m * row_bytes, row_bytes);
  }
}

}  // namespace cpu
}  // namespace sc
