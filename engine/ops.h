// ops.h: the front door of every engine op.
//
// Each function checks its arguments (shapes, dtypes, devices) and throws sc::Error naming the op
// on misuse, allocates its outputs, dispatches to the CPU or the CUDA backend by the inputs'
// device, and records its backward on the tape. All inputs of one op must share a device and
// (for floating ops) a dtype; nothing is converted implicitly.
//
// CPU backend: F32 and F64 (the reference). CUDA backend: F32, F64, BF16, F16 with float
// accumulation for the 16-bit types. Index/mask tensors are I64 / U8.
#pragma once
#include <vector>

#include "engine/tensor.h"

namespace sc {

// ---- elementwise, with NumPy broadcasting ----
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor add_scalar(const Tensor& a, double s);
Tensor mul_scalar(const Tensor& a, double s);
Tensor pow_scalar(const Tensor& a, double p);  // a^p (a > 0 unless p is an integer)
Tensor clamp_min(const Tensor& a, double lo);  // gradient passes where a > lo
Tensor neg(const Tensor& a);
Tensor exp(const Tensor& a);
Tensor log(const Tensor& a);
Tensor sqrt(const Tensor& a);
Tensor relu(const Tensor& a);
Tensor gelu(const Tensor& a);  // exact: x * Phi(x), Phi the normal CDF (erf form)
Tensor sigmoid(const Tensor& a);
Tensor tanh(const Tensor& a);

inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator-(const Tensor& a) { return neg(a); }
inline Tensor operator+(const Tensor& a, double s) { return add_scalar(a, s); }
inline Tensor operator-(const Tensor& a, double s) { return add_scalar(a, -s); }
inline Tensor operator*(const Tensor& a, double s) { return mul_scalar(a, s); }
inline Tensor operator*(double s, const Tensor& a) { return mul_scalar(a, s); }
inline Tensor operator/(const Tensor& a, double s) { return mul_scalar(a, 1.0 / s); }

// Shape that a and b broadcast to; throws naming `op` when they do not.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);
// Sum `g` down to `shape` (the reverse of broadcasting).
Tensor sum_to_shape(const Tensor& g, const Shape& shape);

// ---- linear algebra ----
// a (M, K) @ b (K, N) -> (M, N); a (B, M, K) @ b (B, K, N) -> (B, M, N); a 3-D with b 2-D
// multiplies every batch by b. cuBLAS on CUDA, BLAS on the CPU.
Tensor matmul(const Tensor& a, const Tensor& b);
// While one lives on this thread, F32 products on CUDA (matmul, linear and their backward) run
// on the TF32 tensor cores (cuBLAS's CUBLAS_COMPUTE_32F_FAST_TF32: operands rounded to 10
// mantissa bits, F32 accumulation), as PyTorch's allow_tf32; off (exact FP32) otherwise. The
// CPU always computes exactly. Scopes nest; `on` false keeps (or makes) it off inside.
class MatmulTF32Scope {
 public:
  explicit MatmulTF32Scope(bool on);
  ~MatmulTF32Scope();
  MatmulTF32Scope(const MatmulTF32Scope&) = delete;
  MatmulTF32Scope& operator=(const MatmulTF32Scope&) = delete;

 private:
  bool prev_;
};
bool matmul_tf32();  // the calling thread's setting
// x (..., in) W (out, in)^T + bias (out) -> (..., out); bias may be undefined.
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias = Tensor());

// ---- reductions ----
Tensor sum(const Tensor& a, const std::vector<int>& dims, bool keepdim = false);
Tensor mean(const Tensor& a, const std::vector<int>& dims, bool keepdim = false);
Tensor sum(const Tensor& a);   // all elements -> scalar (shape [])
Tensor mean(const Tensor& a);  // all elements -> scalar
// Index of the maximum along `dim` (first one on ties), I64, not differentiable.
Tensor argmax(const Tensor& a, int dim, bool keepdim = false);

// ---- normalisation-like ----
Tensor softmax(const Tensor& a, int dim);
Tensor log_softmax(const Tensor& a, int dim);
// x / max(||x||_2, eps) along dim (PyTorch's F.normalize).
Tensor l2_normalize(const Tensor& a, int dim, double eps = 1e-12);

// ---- shape ----
Tensor reshape(const Tensor& a, const Shape& shape);  // one dim may be -1; views when possible
Tensor permute(const Tensor& a, const std::vector<int>& perm);
Tensor transpose(const Tensor& a, int d0, int d1);
Tensor expand(const Tensor& a, const Shape& shape);  // broadcast view
Tensor slice(const Tensor& a, int dim, int64_t start, int64_t end, int64_t step = 1);  // view
Tensor concat(const std::vector<Tensor>& parts, int dim);
Tensor unsqueeze(const Tensor& a, int dim);
Tensor squeeze(const Tensor& a, int dim);
Tensor flatten(const Tensor& a, int start_dim = 0, int end_dim = -1);

// ---- row selection (dim 0) ----
// Rows of `a` whose U8 mask entry is non-zero, in order. On CUDA this reads the mask count back
// to the host (a synchronisation); static-shape code should multiply by the mask instead.
Tensor masked_select_rows(const Tensor& a, const Tensor& mask);
// Rows idx[i] of `a` (idx I64, 1-D, on a's device).
Tensor index_select_rows(const Tensor& a, const Tensor& idx);

// Static-shape row compaction (no host synchronisation): for a U8 mask (N), `index` (M) I64 holds
// the positions of its non-zero entries in ascending order and `valid` (M) U8 is 1 in the first
// count slots; the slots after them hold index -1, valid 0. The caller guarantees count <= M (on
// the CPU a violation throws; on CUDA it is reported at the next synchronisation). Not
// differentiable. With gather_rows / scatter_rows it runs a row-wise computation on the selected
// rows only, in a buffer of M rows whose shape does not depend on the data.
struct CompactRows {
  Tensor index;  // I64 (M)
  Tensor valid;  // U8 (M)
};
CompactRows compact_rows_index(const Tensor& mask, int64_t M);
// out[m] = valid[m] ? a[index[m]] : 0, a (R, ...) -> (M, ...). Differentiable in a; the backward
// is scatter_rows (the valid indices must be distinct, as compact_rows_index's are).
Tensor gather_rows(const Tensor& a, const Tensor& index, const Tensor& valid);
// The adjoint: (M, ...) -> (rows, ...) zeros with out[index[m]] = a[m] where valid[m] (distinct
// valid indices). Differentiable in a; the backward is gather_rows.
Tensor scatter_rows(const Tensor& a, const Tensor& index, const Tensor& valid, int64_t rows);

// ---- comparisons and casts (not differentiable) ----
Tensor cast(const Tensor& a, DType t);  // differentiable between float types
Tensor to_device(const Tensor& a, Device d);  // differentiable
Tensor equal_mask(const Tensor& a, const Tensor& b);  // U8, broadcasting

// ---- in-place (never recorded; for optimizers and buffers) ----
void copy_(Tensor& dst, const Tensor& src);  // same shape; converts dtype, crosses devices
void fill_(Tensor& t, double v);
void add_(Tensor& a, const Tensor& b, double alpha = 1.0);  // a += alpha * b (b broadcasts)
void mul_(Tensor& a, double s);
// a = s * a + alpha * b (a momentum / EMA step)
void axpby_(Tensor& a, double s, const Tensor& b, double alpha);

// ---- comparison helpers for tests ----
// Largest |a-b| and largest |a-b| / (atol + rtol*|b|) over all elements (on the host, F64).
struct CompareResult {
  double max_abs = 0;
  double max_scaled = 0;  // > 1 means out of tolerance
  int64_t worst_index = -1;
  int64_t nonfinite = 0;  // elements that are NaN/Inf in one but not identical in the other
};
CompareResult compare(const Tensor& a, const Tensor& b, double atol, double rtol);

}  // namespace sc
