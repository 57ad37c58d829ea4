// backend.h: what each device backend implements. The front door (ops.h) checks arguments,
// allocates outputs and calls these; the backends only compute.
//
// sc::cpu:: lives in engine/cpu/, sc::cuda:: in engine/cuda/ (a stub that throws when the build
// has no CUDA). Both namespaces declare exactly the same functions.
//
// Conventions for every function here:
// - all tensors are on the backend's device and already allocated; outputs are written (=),
//   except index_add_rows which adds;
// - "strided" arguments may have any strides (including 0 for broadcast dims) and any offset;
// - "rows" functions take dense row-major (rows, cols) tensors;
// - floating dtypes: CPU F32/F64; CUDA F32/F64/BF16/F16 (float accumulation for 16-bit).
//   CUDA calls are asynchronous on the engine's stream.
#pragma once
#include <cstdint>
#include <memory>

#include "engine/tensor.h"

namespace sc {

enum class UnaryOp : uint8_t {
  Neg, Exp, Log, Sqrt, Relu, Gelu, Sigmoid, Tanh,
  AddScalar,  // a + alpha
  MulScalar,  // a * alpha
  PowScalar,  // a ^ alpha
  ClampMin,   // max(a, alpha)
};

enum class BinaryOp : uint8_t {
  Add,                // a + b
  Sub,                // a - b
  Mul,                // a * b
  Div,                // a / b
  Axpby,              // alpha * a + beta * b
  ReluBackward,       // a * (b > 0)             (a = dL/dy, b = x)
  GeluBackward,       // a * gelu'(b)
  ClampMinBackward,   // a * (b > alpha)
  PowScalarBackward,  // a * alpha * b^(alpha-1)
};

#define SC_BACKEND_DECLS                                                                     \
  /* dst = src elementwise (same shape, strided, dtype converted). */                        \
  void copy(const Tensor& dst, const Tensor& src);                                           \
  void fill(const Tensor& dst, double value);                                                \
  void unary(UnaryOp op, const Tensor& out, const Tensor& a, double alpha);                  \
  void binary(BinaryOp op, const Tensor& out, const Tensor& a, const Tensor& b, double alpha, \
              double beta);                                                                  \
  /* out (U8, strided) = (a == b) */                                                         \
  void equal(const Tensor& out, const Tensor& a, const Tensor& b);                           \
  /* out[r] = sum_c in[r, c] */                                                              \
  void sum_rows(const Tensor& out, const Tensor& in, int64_t rows, int64_t cols);            \
  /* out[r] (I64) = first argmax_c in[r, c] */                                               \
  void argmax_rows(const Tensor& out, const Tensor& in, int64_t rows, int64_t cols);         \
  /* out = softmax or log_softmax of each row */                                             \
  void softmax_rows(const Tensor& out, const Tensor& in, int64_t rows, int64_t cols,         \
                    bool log);                                                               \
  /* dx from g = dL/dy and y = the forward output */                                         \
  void softmax_backward_rows(const Tensor& dx, const Tensor& g, const Tensor& y, int64_t rows, \
                             int64_t cols, bool log);                                        \
  /* out = x / max(||x||, eps) per row */                                                    \
  void l2norm_rows(const Tensor& out, const Tensor& x, int64_t rows, int64_t cols,           \
                   double eps);                                                              \
  void l2norm_backward_rows(const Tensor& dx, const Tensor& g, const Tensor& x, int64_t rows, \
                            int64_t cols, double eps);                                       \
  /* Row-major batched GEMM: C[i] = alpha * op(A[i]) op(B[i]) + beta * C[i], i < batch;      \
     op(A) is m x k, op(B) is k x n; lda/ldb/ldc are row strides of the stored matrices,     \
     sA/sB/sC the batch strides (0 to reuse one matrix). Pointers are the tensors' data. */  \
  void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,        \
            const Tensor& A, int64_t lda, int64_t sA, const Tensor& B, int64_t ldb,          \
            int64_t sB, double beta, const Tensor& C, int64_t ldc, int64_t sC, int64_t batch); \
  /* out[i, :] = in[idx[i], :]; in (R, C) dense, idx I64 (N), out (N, C) dense */           \
  void index_select_rows(const Tensor& out, const Tensor& in, const Tensor& idx);            \
  /* out[idx[i], :] += src[i, :] */                                                          \
  void index_add_rows(const Tensor& out, const Tensor& idx, const Tensor& src);              \
  /* Stream compaction of a U8 mask (N) into M slots: idx (M) I64 = the positions of the     \
     non-zero entries in ascending order, valid (M) U8 = 1, for the first count slots; idx = \
     -1, valid = 0 after them. count > M is an error (CPU: thrown; CUDA: deferred like a bad  \
     index, reported at the next synchronisation). */                                       \
  void compact_rows_index(const Tensor& idx, const Tensor& valid, const Tensor& mask);       \
  /* out[m, :] = valid[m] ? in[idx[m], :] : 0; in (R, C), idx I64 (M), valid U8 (M) */       \
  void gather_rows(const Tensor& out, const Tensor& in, const Tensor& idx, const Tensor& valid); \
  /* out[idx[m], :] = src[m, :] where valid[m]; other rows untouched. The valid indices must \
     be distinct (compact_rows_index's are). */                                              \
  void scatter_rows(const Tensor& out, const Tensor& idx, const Tensor& valid, const Tensor& src);

namespace cpu {
SC_BACKEND_DECLS
}  // namespace cpu
namespace cuda {
SC_BACKEND_DECLS
// Copy between host and device (either direction; both dense, same dtype and nbytes).
void copy_across(const Tensor& dst, const Tensor& src);
// engine/upload.h's device side: buffers and events per input, copies on the copy stream.
struct UploadSlots;
std::shared_ptr<UploadSlots> make_upload_slots(int device, int slots);
Tensor upload_into_slot(UploadSlots& u, const Tensor& host, int input);
void upload_consumed(UploadSlots& u, int input);
}  // namespace cuda

// The calling thread's MatmulTF32Scope setting (engine/ops.h), read by the CUDA gemm.
bool matmul_tf32();

// Most dims a strided backend argument may have.
constexpr int kMaxDims = 8;

}  // namespace sc
