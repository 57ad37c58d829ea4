// The front door of every engine op: argument checks, output allocation, device dispatch and
// the gradient rule of each op (recorded with record_op). Backward closures save detached
// tensors only, so that a node never keeps its own outputs alive through the graph.
#include "engine/ops.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/dispatch.h"

namespace sc {

namespace {

using Grads = std::vector<Tensor>;

void check_defined(const char* op, const Tensor& a) {
  SC_CHECK(a.defined(), op, ": input is an undefined tensor");
}

void check_float(const char* op, const Tensor& a) {
  check_defined(op, a);
  SC_CHECK(is_floating(a.dtype()), op, ": needs a floating tensor, got ", dtype_name(a.dtype()));
}

void check_same(const char* op, const Tensor& a, const Tensor& b) {
  check_defined(op, a);
  check_defined(op, b);
  SC_CHECK(a.device() == b.device(), op, ": inputs are on different devices (", a.device().str(),
           " and ", b.device().str(), ")");
  SC_CHECK(a.dtype() == b.dtype(), op, ": inputs have different dtypes (", dtype_name(a.dtype()),
           " and ", dtype_name(b.dtype()), "); cast one of them first");
}

int norm_dim(const char* op, int d, int nd) {
  int r = d < 0 ? d + nd : d;
  SC_CHECK(r >= 0 && r < std::max(nd, 1), op, ": dim ", d, " out of range for a ", nd,
           "-D tensor");
  return r;
}

// A broadcast view of `a` with shape `s` (stride 0 on broadcast dims), not recorded.
Tensor broadcast_view(const Tensor& a, const Shape& s) {
  if (a.shape() == s) return a;
  const int lead = int(s.size()) - a.dim();
  Shape st(s.size(), 0);
  for (int i = 0; i < a.dim(); ++i) st[size_t(lead + i)] = a.size(i) == 1 ? 0 : a.stride(i);
  return make_view(a, s, st, a.offset());
}

std::vector<int> inverse_perm(const std::vector<int>& p) {
  std::vector<int> inv(p.size());
  for (size_t i = 0; i < p.size(); ++i) inv[size_t(p[i])] = int(i);
  return inv;
}

Tensor binary_raw(BinaryOp op, const char* name, const Tensor& a, const Tensor& b,
                  double alpha = 0, double beta = 0) {
  check_same(name, a, b);
  check_float(name, a);
  Shape s = broadcast_shapes(a.shape(), b.shape(), name);
  Tensor out = a.shape() == s ? empty_like(a)
               : b.shape() == s ? empty_like(b)
                                : empty(s, a.dtype(), a.device());
  SC_BACKEND(a.device(), binary, op, out, broadcast_view(a, s), broadcast_view(b, s), alpha, beta);
  return out;
}

Tensor unary_raw(UnaryOp op, const char* name, const Tensor& a, double alpha = 0) {
  check_float(name, a);
  Tensor out = empty_like(a);
  SC_BACKEND(a.device(), unary, op, out, a, alpha);
  return out;
}

// The unary op `op` with gradient rule dx = rule(g, x_saved, y_saved).
template <class Rule>
Tensor unary_with_grad(UnaryOp op, const char* name, const Tensor& a, double alpha, Rule rule) {
  Tensor out = unary_raw(op, name, a, alpha);
  if (any_requires_grad({a})) {
    Tensor x = a.detach(), y = out.detach();
    record_op(name, {a}, {out}, [x, y, rule](const Grads& g) { return Grads{rule(g[0], x, y)}; });
  }
  return out;
}

// Move `dim` last and make the result dense: (rows, cols) with cols = size(dim).
struct RowView {
  Tensor dense;              // permuted, contiguous
  std::vector<int> perm;     // permutation applied to the input
  int64_t rows = 0, cols = 0;
};
RowView to_rows(const Tensor& a, int dim) {
  RowView r;
  const int nd = a.dim();
  r.perm.resize(size_t(nd));
  std::iota(r.perm.begin(), r.perm.end(), 0);
  if (nd > 0) {
    r.perm.erase(r.perm.begin() + dim);
    r.perm.push_back(dim);
  }
  Tensor p = a.detach();
  if (dim != nd - 1 && nd > 0) p = permute(p, r.perm);
  r.dense = p.contiguous();
  r.cols = nd > 0 ? a.size(dim) : 1;
  r.rows = r.cols ? a.numel() / r.cols : 0;
  return r;
}
// A dense (rows, cols) result back into the input's dim order (a view).
Tensor from_rows(const Tensor& dense, const std::vector<int>& perm) {
  bool identity = true;
  for (size_t i = 0; i < perm.size(); ++i) identity &= perm[i] == int(i);
  if (identity) return dense;
  Tensor d = dense.detach();
  return permute(d, inverse_perm(perm));
}

}  // namespace

// ---------------------------------------------------------------- broadcasting
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  const size_t n = std::max(a.size(), b.size());
  Shape s(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    SC_CHECK(da == db || da == 1 || db == 1, op, ": shapes ", shape_str(a), " and ", shape_str(b),
             " cannot be broadcast together");
    s[i] = da == 1 ? db : da;
  }
  return s;
}

Tensor sum_to_shape(const Tensor& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  const int lead = g.dim() - int(shape.size());
  SC_CHECK(lead >= 0, "sum_to_shape: cannot reduce ", shape_str(g.shape()), " to ",
           shape_str(shape));
  std::vector<int> dims;
  for (int i = 0; i < g.dim(); ++i) {
    if (i < lead) {
      dims.push_back(i);
    } else if (shape[size_t(i - lead)] == 1 && g.size(i) != 1) {
      dims.push_back(i);
    }
  }
  Tensor s = dims.empty() ? g : sum(g, dims, /*keepdim=*/true);
  return reshape(s, shape);
}

// ---------------------------------------------------------------- elementwise
Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = binary_raw(BinaryOp::Add, "add", a, b);
  record_op("add", {a, b}, {out}, [sa = a.shape(), sb = b.shape()](const Grads& g) {
    return Grads{sum_to_shape(g[0], sa), sum_to_shape(g[0], sb)};
  });
  return out;
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = binary_raw(BinaryOp::Sub, "sub", a, b);
  record_op("sub", {a, b}, {out}, [sa = a.shape(), sb = b.shape()](const Grads& g) {
    return Grads{sum_to_shape(g[0], sa), sum_to_shape(neg(g[0]), sb)};
  });
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_raw(BinaryOp::Mul, "mul", a, b);
  if (any_requires_grad({a, b})) {
    Tensor x = a.detach(), y = b.detach();
    bool ga = a.requires_grad(), gb = b.requires_grad();
    record_op("mul", {a, b}, {out}, [x, y, ga, gb](const Grads& g) {
      return Grads{ga ? sum_to_shape(mul(g[0], y), x.shape()) : Tensor(),
                   gb ? sum_to_shape(mul(g[0], x), y.shape()) : Tensor()};
    });
  }
  return out;
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = binary_raw(BinaryOp::Div, "div", a, b);
  if (any_requires_grad({a, b})) {
    Tensor x = a.detach(), y = b.detach(), q = out.detach();
    bool ga = a.requires_grad(), gb = b.requires_grad();
    record_op("div", {a, b}, {out}, [x, y, q, ga, gb](const Grads& g) {
      Tensor gx = div(g[0], y);  // d/da = g / b ; d/db = -g a / b^2 = -(g/b) * q
      return Grads{ga ? sum_to_shape(gx, x.shape()) : Tensor(),
                   gb ? sum_to_shape(neg(mul(gx, q)), y.shape()) : Tensor()};
    });
  }
  return out;
}

Tensor add_scalar(const Tensor& a, double s) {
  return unary_with_grad(UnaryOp::AddScalar, "add_scalar", a, s,
                         [](const Tensor& g, const Tensor&, const Tensor&) { return g; });
}
Tensor mul_scalar(const Tensor& a, double s) {
  return unary_with_grad(UnaryOp::MulScalar, "mul_scalar", a, s,
                         [s](const Tensor& g, const Tensor&, const Tensor&) {
                           return mul_scalar(g, s);
                         });
}
Tensor pow_scalar(const Tensor& a, double p) {
  return unary_with_grad(UnaryOp::PowScalar, "pow_scalar", a, p,
                         [p](const Tensor& g, const Tensor& x, const Tensor&) {
                           Tensor d = empty_like(g);
                           SC_BACKEND(g.device(), binary, BinaryOp::PowScalarBackward, d, g, x,
                                       p, 0.0);
                           return d;
                         });
}
Tensor clamp_min(const Tensor& a, double lo) {
  return unary_with_grad(UnaryOp::ClampMin, "clamp_min", a, lo,
                         [lo](const Tensor& g, const Tensor& x, const Tensor&) {
                           Tensor d = empty_like(g);
                           SC_BACKEND(g.device(), binary, BinaryOp::ClampMinBackward, d, g, x,
                                       lo, 0.0);
                           return d;
                         });
}
Tensor neg(const Tensor& a) {
  return unary_with_grad(UnaryOp::Neg, "neg", a, 0,
                         [](const Tensor& g, const Tensor&, const Tensor&) { return neg(g); });
}
Tensor exp(const Tensor& a) {
  return unary_with_grad(UnaryOp::Exp, "exp", a, 0,
                         [](const Tensor& g, const Tensor&, const Tensor& y) { return mul(g, y); });
}
Tensor log(const Tensor& a) {
  return unary_with_grad(UnaryOp::Log, "log", a, 0,
                         [](const Tensor& g, const Tensor& x, const Tensor&) { return div(g, x); });
}
Tensor sqrt(const Tensor& a) {
  return unary_with_grad(UnaryOp::Sqrt, "sqrt", a, 0,
                         [](const Tensor& g, const Tensor&, const Tensor& y) {
                           return mul_scalar(div(g, y), 0.5);
                         });
}
Tensor relu(const Tensor& a) {
  return unary_with_grad(UnaryOp::Relu, "relu", a, 0,
                         [](const Tensor& g, const Tensor& x, const Tensor&) {
                           Tensor d = empty_like(g);
                           SC_BACKEND(g.device(), binary, BinaryOp::ReluBackward, d, g, x, 0.0,
                                       0.0);
                           return d;
                         });
}
Tensor gelu(const Tensor& a) {
  return unary_with_grad(UnaryOp::Gelu, "gelu", a, 0,
                         [](const Tensor& g, const Tensor& x, const Tensor&) {
                           Tensor d = empty_like(g);
                           SC_BACKEND(g.device(), binary, BinaryOp::GeluBackward, d, g, x, 0.0,
                                       0.0);
                           return d;
                         });
}
Tensor sigmoid(const Tensor& a) {
  return unary_with_grad(UnaryOp::Sigmoid, "sigmoid", a, 0,
                         [](const Tensor& g, const Tensor&, const Tensor& y) {
                           // g * y * (1 - y)
                           return mul(g, mul(y, add_scalar(neg(y), 1.0)));
                         });
}
Tensor tanh(const Tensor& a) {
  return unary_with_grad(UnaryOp::Tanh, "tanh", a, 0,
                         [](const Tensor& g, const Tensor&, const Tensor& y) {
                           return mul(g, add_scalar(neg(mul(y, y)), 1.0));
                         });
}

// ---------------------------------------------------------------- matmul
namespace {
// How a 2-D matrix view (rows, cols) can be handed to GEMM without a copy.
struct MatArg {
  Tensor t;
  bool trans = false;
  int64_t ld = 0;
};
MatArg mat_arg(const Tensor& t, int r_dim, int c_dim) {
  const int64_t R = t.size(r_dim), C = t.size(c_dim);
  const int64_t sr = t.stride(r_dim), sc = t.stride(c_dim);
  if ((sc == 1 || C <= 1) && (sr >= std::max<int64_t>(C, 1) || R <= 1))
    return {t, false, std::max<int64_t>(sr, std::max<int64_t>(C, 1))};
  if ((sr == 1 || R <= 1) && (sc >= std::max<int64_t>(R, 1) || C <= 1))
    return {t, true, std::max<int64_t>(sc, std::max<int64_t>(R, 1))};
  return {};
}
}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  check_same("matmul", a, b);
  check_float("matmul", a);
  SC_CHECK((a.dim() == 2 || a.dim() == 3) && (b.dim() == 2 || b.dim() == 3), "matmul: needs 2-D "
           "or 3-D inputs, got ", shape_str(a.shape()), " and ", shape_str(b.shape()));
  const int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
  SC_CHECK(b.size(-2) == k, "matmul: inner dimensions differ: ", shape_str(a.shape()), " @ ",
           shape_str(b.shape()));
  int64_t batch = 1;
  if (a.dim() == 3 && b.dim() == 3) {
    SC_CHECK(a.size(0) == b.size(0), "matmul: batch sizes differ: ", shape_str(a.shape()), " @ ",
             shape_str(b.shape()));
    batch = a.size(0);
  } else if (a.dim() == 3) {
    batch = a.size(0);
  } else if (b.dim() == 3) {
    batch = b.size(0);
  }
  const bool batched = a.dim() == 3 || b.dim() == 3;
  Shape out_shape = batched ? Shape{batch, m, n} : Shape{m, n};
  Tensor out = empty(out_shape, a.dtype(), a.device());
  MatArg A = mat_arg(a, a.dim() - 2, a.dim() - 1);
  if (!A.t.defined()) A = mat_arg(a.detach().contiguous(), a.dim() - 2, a.dim() - 1);
  MatArg B = mat_arg(b, b.dim() - 2, b.dim() - 1);
  if (!B.t.defined()) B = mat_arg(b.detach().contiguous(), b.dim() - 2, b.dim() - 1);
  const int64_t sA = a.dim() == 3 ? A.t.stride(0) : 0;
  const int64_t sB = b.dim() == 3 ? B.t.stride(0) : 0;
  SC_BACKEND(a.device(), gemm, A.trans, B.trans, m, n, k, 1.0, A.t, A.ld, sA, B.t, B.ld, sB, 0.0,
              out, std::max<int64_t>(n, 1), m * n, batch);
  if (any_requires_grad({a, b})) {
    Tensor x = a.detach(), y = b.detach();
    bool ga = a.requires_grad(), gb = b.requires_grad();
    record_op("matmul", {a, b}, {out}, [x, y, ga, gb](const Grads& g) {
      Tensor dA, dB;
      const int xd = x.dim(), yd = y.dim();
      if (ga) {
        dA = matmul(g[0], transpose(y, yd - 2, yd - 1));  // (.., m, n) @ (.., n, k)
        if (xd == 2 && dA.dim() == 3) dA = sum(dA, {0});
      }
      if (gb) {
        dB = matmul(transpose(x, xd - 2, xd - 1), g[0]);  // (.., k, m) @ (.., m, n)
        if (yd == 2 && dB.dim() == 3) dB = sum(dB, {0});
      }
      return Grads{dA, dB};
    });
  }
  return out;
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias) {
  check_same("linear", x, w);
  SC_CHECK(w.dim() == 2, "linear: weight must be (out, in), got ", shape_str(w.shape()));
  SC_CHECK(x.dim() >= 1 && x.size(-1) == w.size(1), "linear: input ", shape_str(x.shape()),
           " does not end in in_features = ", w.size(1));
  Shape out_shape = x.shape();
  out_shape.back() = w.size(0);
  Tensor x2 = x.dim() == 2 ? x : reshape(x, {-1, w.size(1)});
  Tensor y = matmul(x2, transpose(w, 0, 1));
  if (bias.defined()) {
    check_same("linear", x, bias);
    SC_CHECK(bias.dim() == 1 && bias.size(0) == w.size(0), "linear: bias must be (",
             w.size(0), "), got ", shape_str(bias.shape()));
    y = add(y, bias);
  }
  return x.dim() == 2 ? y : reshape(y, out_shape);
}

// ---------------------------------------------------------------- reductions
Tensor sum(const Tensor& a, const std::vector<int>& dims_in, bool keepdim) {
  check_float("sum", a);
  const int nd = a.dim();
  std::vector<bool> red(size_t(nd), false);
  for (int d : dims_in) red[size_t(norm_dim("sum", d, nd))] = true;
  std::vector<int> perm, kept;
  Shape out_shape;
  int64_t rows = 1, cols = 1;
  for (int i = 0; i < nd; ++i)
    if (!red[size_t(i)]) {
      perm.push_back(i);
      rows *= a.size(i);
      out_shape.push_back(a.size(i));
    } else if (keepdim) {
      out_shape.push_back(1);
    }
  for (int i = 0; i < nd; ++i)
    if (red[size_t(i)]) {
      perm.push_back(i);
      cols *= a.size(i);
    }
  Tensor p = a.detach();
  if (nd > 0) p = permute(p, perm);
  p = p.contiguous();
  Tensor out = empty(out_shape, a.dtype(), a.device());
  SC_BACKEND(a.device(), sum_rows, out, p, rows, cols);
  if (any_requires_grad({a})) {
    Shape keep_shape = a.shape();
    for (int i = 0; i < nd; ++i)
      if (red[size_t(i)]) keep_shape[size_t(i)] = 1;
    record_op("sum", {a}, {out}, [keep_shape, full = a.shape()](const Grads& g) {
      return Grads{expand(reshape(g[0], keep_shape), full)};
    });
  }
  return out;
}

Tensor mean(const Tensor& a, const std::vector<int>& dims, bool keepdim) {
  int64_t count = 1;
  std::vector<bool> seen(size_t(a.dim()), false);
  for (int d : dims) {
    int n = norm_dim("mean", d, a.dim());
    if (!seen[size_t(n)]) count *= a.size(n);
    seen[size_t(n)] = true;
  }
  return mul_scalar(sum(a, dims, keepdim), count ? 1.0 / double(count) : NAN);
}

Tensor sum(const Tensor& a) {
  std::vector<int> all(size_t(a.dim()));
  std::iota(all.begin(), all.end(), 0);
  return sum(a, all, false);
}
Tensor mean(const Tensor& a) {
  std::vector<int> all(size_t(a.dim()));
  std::iota(all.begin(), all.end(), 0);
  return mean(a, all, false);
}

Tensor argmax(const Tensor& a, int dim, bool keepdim) {
  check_float("argmax", a);
  dim = norm_dim("argmax", dim, a.dim());
  RowView r = to_rows(a, dim);
  Shape out_shape = a.shape();
  if (keepdim) {
    out_shape[size_t(dim)] = 1;
  } else {
    out_shape.erase(out_shape.begin() + dim);
  }
  Tensor out = empty(out_shape, DType::I64, a.device());
  SC_BACKEND(a.device(), argmax_rows, out, r.dense, r.rows, r.cols);
  return out;
}

// ---------------------------------------------------------------- softmax / normalise
namespace {
Tensor softmax_impl(const Tensor& a, int dim, bool log) {
  const char* name = log ? "log_softmax" : "softmax";
  check_float(name, a);
  dim = norm_dim(name, dim, a.dim());
  RowView r = to_rows(a, dim);
  Tensor y = empty_like(r.dense);
  SC_BACKEND(a.device(), softmax_rows, y, r.dense, r.rows, r.cols, log);
  Tensor out = from_rows(y, r.perm);
  if (any_requires_grad({a})) {
    Tensor ys = y.detach();
    record_op(name, {a}, {out}, [ys, dim, log, rows = r.rows, cols = r.cols](const Grads& g) {
      RowView gr = to_rows(g[0], dim);
      Tensor dx = empty_like(gr.dense);
      SC_BACKEND(ys.device(), softmax_backward_rows, dx, gr.dense, ys, rows, cols, log);
      Tensor d = from_rows(dx, gr.perm);
      return Grads{d};
    });
  }
  return out;
}
}  // namespace

Tensor softmax(const Tensor& a, int dim) { return softmax_impl(a, dim, false); }
Tensor log_softmax(const Tensor& a, int dim) { return softmax_impl(a, dim, true); }

Tensor l2_normalize(const Tensor& a, int dim, double eps) {
  check_float("l2_normalize", a);
  dim = norm_dim("l2_normalize", dim, a.dim());
  RowView r = to_rows(a, dim);
  Tensor y = empty_like(r.dense);
  SC_BACKEND(a.device(), l2norm_rows, y, r.dense, r.rows, r.cols, eps);
  Tensor out = from_rows(y, r.perm);
  if (any_requires_grad({a})) {
    Tensor xs = r.dense;
    record_op("l2_normalize", {a}, {out},
              [xs, dim, eps, rows = r.rows, cols = r.cols](const Grads& g) {
                RowView gr = to_rows(g[0], dim);
                Tensor dx = empty_like(gr.dense);
                SC_BACKEND(xs.device(), l2norm_backward_rows, dx, gr.dense, xs, rows, cols, eps);
                return Grads{from_rows(dx, gr.perm)};
              });
  }
  return out;
}

// ---------------------------------------------------------------- shape
Tensor reshape(const Tensor& a, const Shape& shape_in) {
  check_defined("reshape", a);
  Shape shape = shape_in;
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      SC_CHECK(infer < 0, "reshape: more than one -1 in ", shape_str(shape_in));
      infer = int(i);
    } else {
      SC_CHECK(shape[i] >= 0, "reshape: bad dimension in ", shape_str(shape_in));
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    SC_CHECK(known > 0 && a.numel() % known == 0, "reshape: cannot infer -1 in ",
             shape_str(shape_in), " for ", a.numel(), " elements");
    shape[size_t(infer)] = a.numel() / known;
  }
  SC_CHECK(shape_numel(shape) == a.numel(), "reshape: cannot view ", shape_str(a.shape()), " (",
           a.numel(), " elements) as ", shape_str(shape_in));
  Tensor base = a.is_contiguous() ? a : a.contiguous();
  Tensor out = make_view(base, shape, contiguous_strides(shape), base.offset());
  record_op("reshape", {base}, {out}, [s = base.shape()](const Grads& g) {
    return Grads{reshape(g[0], s)};
  });
  return out;
}

Tensor permute(const Tensor& a, const std::vector<int>& perm) {
  check_defined("permute", a);
  const int nd = a.dim();
  SC_CHECK(int(perm.size()) == nd, "permute: ", perm.size(), " dims given for a ", nd,
           "-D tensor");
  std::vector<bool> seen(size_t(nd), false);
  Shape shape(static_cast<size_t>(nd)), strides(static_cast<size_t>(nd));
  std::vector<int> p(static_cast<size_t>(nd));
  for (int i = 0; i < nd; ++i) {
    int d = norm_dim("permute", perm[size_t(i)], nd);
    SC_CHECK(!seen[size_t(d)], "permute: dim ", d, " repeated");
    seen[size_t(d)] = true;
    p[size_t(i)] = d;
    shape[size_t(i)] = a.size(d);
    strides[size_t(i)] = a.stride(d);
  }
  Tensor out = make_view(a, shape, strides, a.offset());
  record_op("permute", {a}, {out}, [inv = inverse_perm(p)](const Grads& g) {
    return Grads{permute(g[0], inv)};
  });
  return out;
}

Tensor transpose(const Tensor& a, int d0, int d1) {
  check_defined("transpose", a);
  std::vector<int> p(size_t(a.dim()));
  std::iota(p.begin(), p.end(), 0);
  std::swap(p[size_t(norm_dim("transpose", d0, a.dim()))],
            p[size_t(norm_dim("transpose", d1, a.dim()))]);
  return permute(a, p);
}

Tensor expand(const Tensor& a, const Shape& shape) {
  check_defined("expand", a);
  Shape s = broadcast_shapes(a.shape(), shape, "expand");
  SC_CHECK(s == shape, "expand: cannot expand ", shape_str(a.shape()), " to ", shape_str(shape));
  if (a.shape() == shape) return a;
  Tensor v = broadcast_view(a, shape);
  Tensor out = make_view(v, v.shape(), v.strides(), v.offset());
  record_op("expand", {a}, {out}, [s0 = a.shape()](const Grads& g) {
    return Grads{sum_to_shape(g[0], s0)};
  });
  return out;
}

Tensor slice(const Tensor& a, int dim, int64_t start, int64_t end, int64_t step) {
  check_defined("slice", a);
  dim = norm_dim("slice", dim, a.dim());
  const int64_t n = a.size(dim);
  SC_CHECK(step > 0, "slice: step must be positive, got ", step);
  SC_CHECK(0 <= start && start <= end && end <= n, "slice: range [", start, ", ", end,
           ") is outside [0, ", n, "] on dim ", dim, " of ", shape_str(a.shape()));
  Shape shape = a.shape(), strides = a.strides();
  shape[size_t(dim)] = (end - start + step - 1) / step;
  strides[size_t(dim)] *= step;
  Tensor out = make_view(a, shape, strides, a.offset() + start * a.stride(dim));
  record_op("slice", {a}, {out}, [s0 = a.shape(), dim, start, end, step](const Grads& g) {
    Tensor z = zeros(s0, g[0].dtype(), g[0].device());
    Tensor part = slice(z, dim, start, end, step);
    copy_(part, g[0]);
    return Grads{z};
  });
  return out;
}

Tensor concat(const std::vector<Tensor>& parts, int dim) {
  SC_CHECK(!parts.empty(), "concat: no tensors given");
  const Tensor& f = parts[0];
  check_defined("concat", f);
  dim = norm_dim("concat", dim, f.dim());
  Shape shape = f.shape();
  int64_t total = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    check_same("concat", f, parts[i]);
    SC_CHECK(parts[i].dim() == f.dim(), "concat: tensor ", i, " has ", parts[i].dim(),
             " dims, tensor 0 has ", f.dim());
    for (int d = 0; d < f.dim(); ++d)
      SC_CHECK(d == dim || parts[i].size(d) == f.size(d), "concat: tensor ", i, " has shape ",
               shape_str(parts[i].shape()), ", incompatible with ", shape_str(f.shape()),
               " along dim ", dim);
    total += parts[i].size(dim);
  }
  shape[size_t(dim)] = total;
  Tensor out = empty(shape, f.dtype(), f.device());
  std::vector<int64_t> sizes;
  {
    NoGradGuard ng;
    int64_t at = 0;
    for (const Tensor& p : parts) {
      Tensor dst = slice(out, dim, at, at + p.size(dim));
      copy_(dst, p);
      at += p.size(dim);
      sizes.push_back(p.size(dim));
    }
  }
  record_op("concat", parts, {out}, [sizes, dim](const Grads& g) {
    Grads r;
    int64_t at = 0;
    for (int64_t s : sizes) {
      r.push_back(slice(g[0], dim, at, at + s));
      at += s;
    }
    return r;
  });
  return out;
}

Tensor unsqueeze(const Tensor& a, int dim) {
  check_defined("unsqueeze", a);
  int d = dim < 0 ? dim + a.dim() + 1 : dim;
  SC_CHECK(d >= 0 && d <= a.dim(), "unsqueeze: dim ", dim, " out of range for a ", a.dim(),
           "-D tensor");
  Shape s = a.shape();
  s.insert(s.begin() + d, 1);
  return reshape(a, s);
}

Tensor squeeze(const Tensor& a, int dim) {
  check_defined("squeeze", a);
  int d = norm_dim("squeeze", dim, a.dim());
  SC_CHECK(a.size(d) == 1, "squeeze: dim ", dim, " has size ", a.size(d), ", not 1");
  Shape s = a.shape();
  s.erase(s.begin() + d);
  return reshape(a, s);
}

Tensor flatten(const Tensor& a, int start_dim, int end_dim) {
  check_defined("flatten", a);
  if (a.dim() == 0) return reshape(a, {1});
  int s = norm_dim("flatten", start_dim, a.dim()), e = norm_dim("flatten", end_dim, a.dim());
  SC_CHECK(s <= e, "flatten: start_dim after end_dim");
  Shape shape;
  for (int i = 0; i < s; ++i) shape.push_back(a.size(i));
  int64_t m = 1;
  for (int i = s; i <= e; ++i) m *= a.size(i);
  shape.push_back(m);
  for (int i = e + 1; i < a.dim(); ++i) shape.push_back(a.size(i));
  return reshape(a, shape);
}

// ---------------------------------------------------------------- row selection
Tensor index_select_rows(const Tensor& a, const Tensor& idx) {
  check_defined("index_select_rows", a);
  check_defined("index_select_rows", idx);
  SC_CHECK(a.dim() >= 1, "index_select_rows: input must have at least one dim");
  SC_CHECK(idx.dtype() == DType::I64 && idx.dim() == 1, "index_select_rows: indices must be a "
           "1-D I64 tensor, got ", idx.str());
  SC_CHECK(idx.device() == a.device(), "index_select_rows: indices on ", idx.device().str(),
           ", input on ", a.device().str());
  Tensor src = a.detach().contiguous();
  Tensor ix = idx.contiguous();
  Shape shape = a.shape();
  shape[0] = idx.numel();
  Tensor out = empty(shape, a.dtype(), a.device());
  SC_BACKEND(a.device(), index_select_rows, out, src, ix);
  if (any_requires_grad({a})) {
    record_op("index_select_rows", {a}, {out}, [ix, s0 = a.shape()](const Grads& g) {
      Tensor z = zeros(s0, g[0].dtype(), g[0].device());
      SC_BACKEND(z.device(), index_add_rows, z, ix, g[0].contiguous());
      return Grads{z};
    });
  }
  return out;
}

namespace {
void check_index_valid(const char* op, const Tensor& a, const Tensor& index, const Tensor& valid) {
  check_defined(op, a);
  check_defined(op, index);
  check_defined(op, valid);
  SC_CHECK(a.dim() >= 1, op, ": input must have at least one dim");
  SC_CHECK(index.dtype() == DType::I64 && index.dim() == 1, op,
           ": index must be a 1-D I64 tensor, got ", index.str());
  SC_CHECK(valid.dtype() == DType::U8 && valid.shape() == index.shape(), op,
           ": valid must be U8 of the index's shape ", shape_str(index.shape()), ", got ",
           valid.str());
  SC_CHECK(index.device() == a.device() && valid.device() == a.device(), op, ": index on ",
           index.device().str(), ", valid on ", valid.device().str(), ", input on ",
           a.device().str());
}
}  // namespace

CompactRows compact_rows_index(const Tensor& mask, int64_t M) {
  check_defined("compact_rows_index", mask);
  SC_CHECK(mask.dtype() == DType::U8 && mask.dim() == 1, "compact_rows_index: mask must be a 1-D "
           "U8 tensor, got ", mask.str());
  SC_CHECK(M >= 0, "compact_rows_index: M = ", M, " must be >= 0");
  CompactRows r{empty({M}, DType::I64, mask.device()), empty({M}, DType::U8, mask.device())};
  SC_BACKEND(mask.device(), compact_rows_index, r.index, r.valid, mask.contiguous());
  return r;
}

Tensor gather_rows(const Tensor& a, const Tensor& index, const Tensor& valid) {
  check_index_valid("gather_rows", a, index, valid);
  const Tensor src = a.detach().contiguous(), ix = index.contiguous(), vm = valid.contiguous();
  Shape shape = a.shape();
  shape[0] = index.numel();
  Tensor out = empty(shape, a.dtype(), a.device());
  SC_BACKEND(a.device(), gather_rows, out, src, ix, vm);
  if (any_requires_grad({a})) {
    record_op("gather_rows", {a}, {out}, [ix, vm, rows = a.size(0)](const Grads& g) {
      return Grads{scatter_rows(g[0], ix, vm, rows)};
    });
  }
  return out;
}

Tensor scatter_rows(const Tensor& a, const Tensor& index, const Tensor& valid, int64_t rows) {
  check_index_valid("scatter_rows", a, index, valid);
  SC_CHECK(a.size(0) == index.numel(), "scatter_rows: input ", a.str(), " must have one row per "
           "index (", index.numel(), ")");
  SC_CHECK(rows >= 0, "scatter_rows: rows = ", rows, " must be >= 0");
  const Tensor src = a.detach().contiguous(), ix = index.contiguous(), vm = valid.contiguous();
  Shape shape = a.shape();
  shape[0] = rows;
  Tensor out = zeros(shape, a.dtype(), a.device());
  SC_BACKEND(a.device(), scatter_rows, out, ix, vm, src);
  if (any_requires_grad({a})) {
    record_op("scatter_rows", {a}, {out},
              [ix, vm](const Grads& g) { return Grads{gather_rows(g[0], ix, vm)}; });
  }
  return out;
}

Tensor masked_select_rows(const Tensor& a, const Tensor& mask) {
  check_defined("masked_select_rows", a);
  check_defined("masked_select_rows", mask);
  SC_CHECK(mask.dtype() == DType::U8 && mask.dim() == 1 && a.dim() >= 1 &&
               mask.size(0) == a.size(0),
           "masked_select_rows: mask must be U8 of shape [", a.dim() ? a.size(0) : 0, "], got ",
           mask.str());
  std::vector<double> m = mask.to_vector();  // host read: a sync on CUDA
  std::vector<double> idx;
  for (size_t i = 0; i < m.size(); ++i)
    if (m[i] != 0) idx.push_back(double(i));
  Tensor ix = from_vector(idx, {int64_t(idx.size())}, DType::I64, a.device());
  return index_select_rows(a, ix);
}

// ---------------------------------------------------------------- casts and devices
Tensor cast(const Tensor& a, DType t) {
  check_defined("cast", a);
  if (a.dtype() == t) return a;
  Tensor out = empty(a.shape(), t, a.device(), a.suggest_memory_format());
  SC_BACKEND(a.device(), copy, out, a);
  if (is_floating(a.dtype()) && is_floating(t)) {
    record_op("cast", {a}, {out}, [from = a.dtype()](const Grads& g) {
      return Grads{cast(g[0], from)};
    });
  }
  return out;
}

Tensor to_device(const Tensor& a, Device d) {
  check_defined("to_device", a);
  if (a.device() == d) return a;
  Tensor out = empty(a.shape(), a.dtype(), d, a.suggest_memory_format());
  {
    NoGradGuard ng;
    copy_(out, a);
  }
  record_op("to_device", {a}, {out}, [from = a.device()](const Grads& g) {
    return Grads{to_device(g[0], from)};
  });
  return out;
}

Tensor equal_mask(const Tensor& a, const Tensor& b) {
  check_same("equal_mask", a, b);
  Shape s = broadcast_shapes(a.shape(), b.shape(), "equal_mask");
  Tensor out = empty(s, DType::U8, a.device());
  SC_BACKEND(a.device(), equal, out, broadcast_view(a, s), broadcast_view(b, s));
  return out;
}

// ---------------------------------------------------------------- in-place
void copy_(Tensor& dst, const Tensor& src_in) {
  check_defined("copy_", dst);
  check_defined("copy_", src_in);
  Shape s = broadcast_shapes(dst.shape(), src_in.shape(), "copy_");
  SC_CHECK(s == dst.shape(), "copy_: cannot copy ", shape_str(src_in.shape()), " into ",
           shape_str(dst.shape()));
  Tensor src = broadcast_view(src_in, s);
  if (dst.device() == src.device()) {
    SC_BACKEND(dst.device(), copy, dst, src);
    return;
  }
  if (dst.device().is_cuda() && src.device().is_cuda()) {  // between two GPUs: via the host
    Tensor h = to_device(src.detach(), Device::cpu());
    copy_(dst, h);
    return;
  }
  if (dst.device().is_cuda()) {  // host -> device: convert on the host, one dense transfer
    if (src_in.shape() == s && src.dtype() == dst.dtype() && dst.is_non_overlapping_and_dense() &&
        src.strides() == dst.strides()) {
      cuda::copy_across(dst, src);  // already in the right form (e.g. a pinned batch)
      return;
    }
    Tensor h = empty(s, dst.dtype(), Device::cpu(), dst.suggest_memory_format());
    cpu::copy(h, src);
    if (dst.is_non_overlapping_and_dense() && dst.strides() == h.strides()) {
      cuda::copy_across(dst, h);
    } else {
      Tensor d = empty(s, dst.dtype(), dst.device(), dst.suggest_memory_format());
      cuda::copy_across(d, h);
      cuda::copy(dst, d);
    }
    return;
  }
  // device -> host
  Tensor d = src;
  if (!(src.is_contiguous() || src.is_channels_last())) {
    d = empty(s, src.dtype(), src.device(), src.suggest_memory_format());
    cuda::copy(d, src);
  }
  Tensor h = empty(s, src.dtype(), Device::cpu(), d.suggest_memory_format());
  cuda::copy_across(h, d);
  cpu::copy(dst, h);
}

void fill_(Tensor& t, double v) {
  check_defined("fill_", t);
  SC_BACKEND(t.device(), fill, t, v);
}

void axpby_(Tensor& a, double s, const Tensor& b, double alpha) {
  check_same("axpby_", a, b);
  check_float("axpby_", a);
  SC_CHECK(a.is_non_overlapping_and_dense(), "in-place update of a tensor whose elements overlap");
  Shape sh = broadcast_shapes(a.shape(), b.shape(), "axpby_");
  SC_CHECK(sh == a.shape(), "in-place update: cannot broadcast ", shape_str(b.shape()), " to ",
           shape_str(a.shape()));
  SC_BACKEND(a.device(), binary, BinaryOp::Axpby, a, a, broadcast_view(b, sh), s, alpha);
}

void add_(Tensor& a, const Tensor& b, double alpha) { axpby_(a, 1.0, b, alpha); }

void mul_(Tensor& a, double s) {
  check_float("mul_", a);
  SC_BACKEND(a.device(), unary, UnaryOp::MulScalar, a, a, s);
}

// ---------------------------------------------------------------- comparison
CompareResult compare(const Tensor& a, const Tensor& b, double atol, double rtol) {
  SC_CHECK(a.shape() == b.shape(), "compare: shapes differ: ", shape_str(a.shape()), " vs ",
           shape_str(b.shape()));
  std::vector<double> x = a.to_vector(), y = b.to_vector();
  CompareResult r;
  for (size_t i = 0; i < x.size(); ++i) {
    const bool fx = std::isfinite(x[i]), fy = std::isfinite(y[i]);
    if (!fx || !fy) {
      const bool same = (std::isnan(x[i]) && std::isnan(y[i])) || x[i] == y[i];
      if (!same) {
        ++r.nonfinite;
        r.max_scaled = INFINITY;
        r.worst_index = int64_t(i);
      }
      continue;
    }
    const double d = std::fabs(x[i] - y[i]);
    const double sc = d / (atol + rtol * std::fabs(y[i]));
    r.max_abs = std::max(r.max_abs, d);
    if (sc > r.max_scaled) {
      r.max_scaled = sc;
      r.worst_index = int64_t(i);
    }
  }
  return r;
}

namespace {
thread_local bool t_matmul_tf32 = false;
}
MatmulTF32Scope::MatmulTF32Scope(bool on) : prev_(t_matmul_tf32) { t_matmul_tf32 = on; }
MatmulTF32Scope::~MatmulTF32Scope() { t_matmul_tf32 = prev_; }
bool matmul_tf32() { return t_matmul_tf32; }

}  // namespace sc
