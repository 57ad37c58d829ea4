// mma.h for the CUDA emulator: the warp matrix functions (nvcuda::wmma) that the kernels use,
// written from CUDA's documented semantics, not from any kernel's code:
//   shapes m16n16k8 (precision::tf32 inputs, float accumulators; used by the kernels and checked
//   by test_emulator.cpp) and m16n16k16 (__half and __nv_bfloat16 inputs, float accumulators; not
//   exercised yet); fill_fragment, load_matrix_sync, store_matrix_sync, mma_sync, __float_to_tf32.
// A fragment's elements are distributed over the warp's lanes in an unspecified way on the GPU;
// here every lane holds the whole tile (so code that touches fragment.x[] element-wise, the same
// way in every lane, behaves as on the GPU; code that depends on which lane holds what is wrong on
// the GPU anyway). The warp-collective functions check what the GPU requires and would otherwise
// leave undefined: every lane of the warp calls them (a warp barrier, which reports exited
// lanes), a 256-bit aligned pointer, and a leading dimension of a multiple of 16 bytes.
// mma_sync on tf32 operands uses their TF32 bits only (the low 13 mantissa bits are ignored, as on
// the GPU), and accumulates in float.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "cuda_emu.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}  // namespace precision

namespace detail {
template <class Use, int M, int N, int K>
struct dims;
template <int M, int N, int K>
struct dims<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct dims<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct dims<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};
// The element type a fragment stores (tf32 fragments hold floats).
template <class T>
struct storage {
  using type = T;
};
template <>
struct storage<precision::tf32> {
  using type = float;
};
template <class T>
inline float to_float(T v) {
  return float(v);
}
inline float tf32_bits(float f) {  // what the matrix unit reads of a tf32 operand
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u &= 0xffffe000u;
  std::memcpy(&f, &u, 4);
  return f;
}
inline void check_ptr(const void* p, unsigned ldm, size_t elem_bytes, const char* fn) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0)
    emu::device_error(std::string("wmma::") + fn + ": pointer not 256-bit aligned");
  if ((size_t(ldm) * elem_bytes) % 16 != 0)
    emu::device_error(std::string("wmma::") + fn + ": ldm " + std::to_string(ldm) +
                      " is not a multiple of 16 bytes");
}
}  // namespace detail

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  using element_type = typename detail::storage<T>::type;
  static constexpr int rows = detail::dims<Use, M, N, K>::rows;
  static constexpr int cols = detail::dims<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols;
  element_type x[num_elements];  // row-major, the whole tile in every lane (see above)
};

inline float __float_to_tf32(float f) {  // round to nearest (ties away), 10 mantissa bits
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
  std::memcpy(&f, &u, 4);
  return f;
}

template <class Use, int M, int N, int K, class T, class Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f,
                          typename fragment<Use, M, N, K, T, Layout>::element_type v) {
  for (int i = 0; i < f.num_elements; ++i) f.x[i] = v;
}

// matrix_a / matrix_b: the layout is the fragment's.
template <class Use, int M, int N, int K, class T, class Layout, class P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const P* p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, Layout>;
  detail::check_ptr(p, ldm, sizeof(P), "load_matrix_sync");
  constexpr bool rm = std::is_same<Layout, row_major>::value;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      f.x[r * F::cols + c] = typename F::element_type(rm ? p[size_t(r) * ldm + c]
                                                          : p[size_t(c) * ldm + r]);
  emu::sync_warp();  // every lane takes part (after its reads: the call orders no memory)
}
// accumulator: the layout is given.
template <int M, int N, int K, class T>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const T* p, unsigned ldm,
                             layout_t layout) {
  detail::check_ptr(p, ldm, sizeof(T), "load_matrix_sync");
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c)
      f.x[r * N + c] = layout == mem_row_major ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r];
  emu::sync_warp();
}
template <int M, int N, int K, class T>
inline void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm,
                              layout_t layout) {
  detail::check_ptr(p, ldm, sizeof(T), "store_matrix_sync");
  emu::sync_warp();  // every lane takes part
  // Each lane writes its share only (element e by lane e % 32), as the lanes of the GPU each hold
  // part of the tile: reading another lane's elements needs a __syncwarp / __syncthreads first.
  for (int e = emu::lane_id(); e < M * N; e += 32) {
    const int r = e / N, c = e % N;
    (layout == mem_row_major ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r]) = f.x[e];
  }
}

template <int M, int N, int K, class TA, class LA, class TB, class LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d,
                     const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b,
                     const fragment<accumulator, M, N, K, float>& c) {
  emu::sync_warp();
  constexpr bool tf = std::is_same<TA, precision::tf32>::value;
  static_assert(tf == std::is_same<TB, precision::tf32>::value, "mixed operand precisions");
  float out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float s = c.x[i * N + j];
      for (int k = 0; k < K; ++k) {
        float av = detail::to_float(a.x[i * K + k]), bv = detail::to_float(b.x[k * N + j]);
        if (tf) {
          av = detail::tf32_bits(av);
          bv = detail::tf32_bits(bv);
        }
        s += av * bv;
      }
      out[i * N + j] = s;
    }
  for (int i = 0; i < M * N; ++i) d.x[i] = out[i];
}

}  // namespace wmma
}  // namespace nvcuda
