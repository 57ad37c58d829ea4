// conv2d_ref.cpp: CPU convolution by im2col + BLAS GEMM (see conv2d.h).
#include <cblas.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/conv2d.h"
#include "kernels/parallel.h"

namespace sc {
namespace {

// Row-major GEMM C = alpha op(A) op(B) + beta C through cblas.
inline void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(m),
              int(n), int(k), alpha, A, int(lda), B, int(ldb), beta, C, int(ldc));
}
inline void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* A,
                 int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(m),
              int(n), int(k), alpha, A, int(lda), B, int(ldb), beta, C, int(ldc));
}

// Two of this thread's scratch buffers, reused across calls and not cleared (a std::vector of the
// size would zero several MB per call): a of na and b of nb elements.
template <class T>
void scratch(size_t na, size_t nb, T** a, T** b) {
  thread_local std::vector<T> buf;
  const size_t pad = (64 + sizeof(T) - 1) / sizeof(T);  // b starts on its own cache line
  if (buf.size() < na + pad + nb) buf.resize(na + pad + nb);
  *a = buf.data();
  *b = buf.data() + na + pad;
}

// Element strides (c, h, w) of one image in the layout.
struct ImageStrides {
  int64_t c, h, w;
};
inline ImageStrides image_strides(Layout layout, int64_t C, int64_t H, int64_t W) {
  if (layout == Layout::NCHW) return {H * W, W, 1};
  return {1, W * C, C};
}

inline bool is_pointwise(const Conv2dGeom& g) {
  return g.R == 1 && g.S == 1 && g.stride_h == 1 && g.stride_w == 1 && g.pad_h == 0 && g.pad_w == 0;
}

// The output columns ow whose input column iw = ow*stride - pad + s lies inside [0, W):
// [lo, hi). Outside it im2col writes zeros and col2im adds nothing.
inline void valid_cols(int64_t OW, int64_t W, int64_t stride, int64_t pad, int64_t s, int64_t* lo,
                       int64_t* hi) {
  const int64_t off = s - pad;  // iw = ow*stride + off
  *lo = off >= 0 ? 0 : (-off + stride - 1) / stride;
  *hi = W - off <= 0 ? 0 : std::min(OW, (W - off + stride - 1) / stride);
  if (*hi < *lo) *hi = *lo;
}

// col[(c*R + r)*S + s, oh*OW + ow] = x[c, oh*sh - ph + r, ow*sw - pw + s] (0 outside); rows of
// col are ld apart (ld >= OH*OW: several images side by side in one column block).
// Channels [c0, c1) only.
template <class T>
void im2col(const Conv2dGeom& g, ImageStrides st, const T* x, T* col, int64_t ld, int64_t c0,
            int64_t c1) {
  const int64_t OH = g.OH(), OW = g.OW();
  for (int64_t c = c0; c < c1; ++c)
    for (int64_t r = 0; r < g.R; ++r)
      for (int64_t s = 0; s < g.S; ++s) {
        T* row = col + ((c * g.R + r) * g.S + s) * ld;
        int64_t lo, hi;
        valid_cols(OW, g.W, g.stride_w, g.pad_w, s, &lo, &hi);
        const int64_t off = s - g.pad_w;
        for (int64_t oh = 0; oh < OH; ++oh) {
          const int64_t ih = oh * g.stride_h - g.pad_h + r;
          T* out = row + oh * OW;
          if (ih < 0 || ih >= g.H) {
            std::fill(out, out + OW, T(0));
            continue;
          }
          const T* xrow = x + c * st.c + ih * st.h;
          std::fill(out, out + lo, T(0));
          if (st.w == 1 && g.stride_w == 1) {
            std::memcpy(out + lo, xrow + lo + off, size_t(hi - lo) * sizeof(T));
          } else {
            const int64_t step = g.stride_w * st.w;
            const T* in = xrow + (lo * g.stride_w + off) * st.w;
            for (int64_t ow = lo; ow < hi; ++ow, in += step) out[ow] = *in;
          }
          std::fill(out + hi, out + OW, T(0));
        }
      }
}

// x[c, ih, iw] += col[...] for every column entry that im2col read from (c, ih, iw).
// Channels [c0, c1) only.
template <class T>
void col2im_add(const Conv2dGeom& g, ImageStrides st, const T* col, int64_t ld, T* x, int64_t c0,
                int64_t c1) {
  const int64_t OH = g.OH(), OW = g.OW();
  for (int64_t c = c0; c < c1; ++c)
    for (int64_t r = 0; r < g.R; ++r)
      for (int64_t s = 0; s < g.S; ++s) {
        const T* row = col + ((c * g.R + r) * g.S + s) * ld;
        int64_t lo, hi;
        valid_cols(OW, g.W, g.stride_w, g.pad_w, s, &lo, &hi);
        const int64_t off = s - g.pad_w, step = g.stride_w * st.w;
        for (int64_t oh = 0; oh < OH; ++oh) {
          const int64_t ih = oh * g.stride_h - g.pad_h + r;
          if (ih < 0 || ih >= g.H) continue;
          T* xo = x + c * st.c + ih * st.h + (lo * g.stride_w + off) * st.w;
          const T* in = row + oh * OW;
          for (int64_t ow = lo; ow < hi; ++ow, xo += step) *xo += in[ow];
        }
      }
}

// NCHW works on chunks of images: their columns side by side, (rows, n*L), so that one GEMM
// covers n images (per-image GEMMs at stride 32 are tiny, e.g. 512 x 9 x 4608, and a threaded
// BLAS spends more time waking its threads than multiplying). A chunk's buffers stay under
// kChunkElems elements.
constexpr int64_t kChunkElems = int64_t(1) << 22;
inline int64_t chunk_images(int64_t N, int64_t per_image) {
  return std::max<int64_t>(1, std::min<int64_t>(N, kChunkElems / std::max<int64_t>(per_image, 1)));
}
// dst (rows, n*L) block <- src images (n, rows, L), or the reverse; split over (image, row).
template <class T>
void gather_images(const T* src, int64_t n, int64_t rows, int64_t L, T* dst) {
  parallel_for(n * rows, grain_for(L), [&](int64_t b, int64_t e) {
    for (int64_t ir = b; ir < e; ++ir) {
      const int64_t i = ir / rows, r = ir % rows;
      std::memcpy(dst + r * n * L + i * L, src + ir * L, size_t(L) * sizeof(T));
    }
  });
}
template <class T>
void scatter_images(const T* src, int64_t n, int64_t rows, int64_t L, T* dst) {
  parallel_for(n * rows, grain_for(L), [&](int64_t b, int64_t e) {
    for (int64_t ir = b; ir < e; ++ir) {
      const int64_t i = ir / rows, r = ir % rows;
      std::memcpy(dst + ir * L, src + r * n * L + i * L, size_t(L) * sizeof(T));
    }
  });
}

// The column block (C*R*S, n*L) of n NCHW images (a pointwise conv's columns are the images);
// split over (image, channel).
template <class T>
void chunk_columns(const Conv2dGeom& g, ImageStrides st, const T* x, int64_t n, T* col) {
  const int64_t L = g.OH() * g.OW(), x_img = g.C * g.H * g.W;
  if (is_pointwise(g)) {
    gather_images(x, n, g.C, L, col);
    return;
  }
  parallel_for(n * g.C, grain_for(g.R * g.S * L), [&](int64_t b, int64_t e) {
    for (int64_t ic = b; ic < e;) {  // image i, channels [c, c_end) of it
      const int64_t i = ic / g.C, c = ic % g.C, c_end = std::min(g.C, c + (e - ic));
      im2col(g, st, x + i * x_img, col + i * L, n * L, c, c_end);
      ic += c_end - c;
    }
  });
}

// Image-wise col2im of a column block (C*R*S, n*L) into n NCHW images: dx = 0, then adds; split
// over (image, channel).
template <class T>
void chunk_col2im(const Conv2dGeom& g, ImageStrides st, const T* dcol, int64_t n, T* dx) {
  const int64_t L = g.OH() * g.OW(), HW = g.H * g.W;
  parallel_for(n * g.C, grain_for(g.R * g.S * L), [&](int64_t b, int64_t e) {
    for (int64_t ic = b; ic < e;) {
      const int64_t i = ic / g.C, c = ic % g.C, c_end = std::min(g.C, c + (e - ic));
      T* dxi = dx + i * g.C * HW;
      std::fill(dxi + c * HW, dxi + c_end * HW, T(0));
      col2im_add(g, st, dcol + i * L, n * L, dxi, c, c_end);
      ic += c_end - c;
    }
  });
}

}  // namespace

template <class T>
void conv2d_forward_ref(const Conv2dGeom& g, Layout layout, const T* x, const T* w, const T* bias,
                        T* y) {
  const int64_t OH = g.OH(), OW = g.OW(), L = OH * OW, CRS = g.C * g.R * g.S;
  const int64_t x_img = g.C * g.H * g.W, y_img = g.K * L;
  const ImageStrides st = image_strides(layout, g.C, g.H, g.W);
  const bool pointwise = is_pointwise(g);
  if (layout == Layout::NCHW) {
    // y chunk (K, n*L) = w (K, CRS) @ col (CRS, n*L), then back to (n, K, L)
    const int64_t nc = chunk_images(g.N, (CRS + g.K) * L);
    T *col, *out;
    scratch(size_t(CRS * nc * L), size_t(g.K * nc * L), &col, &out);
    for (int64_t n0 = 0; n0 < g.N; n0 += nc) {
      const int64_t n = std::min(nc, g.N - n0), ld = n * L;
      chunk_columns(g, st, x + n0 * x_img, n, col);
      gemm(false, false, g.K, ld, CRS, T(1), w, CRS, col, ld, T(0), out, ld);
      scatter_images(out, n, g.K, L, y + n0 * y_img);
    }
    if (bias)
      parallel_for(g.N * g.K, grain_for(L), [&](int64_t b, int64_t e) {
        for (int64_t ik = b; ik < e; ++ik) {
          T* yk = y + ik * L;
          const T bk = bias[ik % g.K];
          for (int64_t l = 0; l < L; ++l) yk[l] += bk;
        }
      });
    return;
  }
  T *col, *unused;
  scratch(pointwise ? 0 : size_t(CRS * L), 0, &col, &unused);
  for (int64_t n = 0; n < g.N; ++n) {
    const T* xn = x + n * x_img;
    T* yn = y + n * y_img;
    // y_n (L, K) = col^T (L, CRS) @ w^T (CRS, K); a pointwise conv reads x_n (L, C) directly.
    if (pointwise) {
      gemm(false, true, L, g.K, CRS, T(1), xn, CRS, w, CRS, T(0), yn, g.K);
    } else {
      im2col(g, st, xn, col, L, 0, g.C);
      gemm(true, true, L, g.K, CRS, T(1), col, L, w, CRS, T(0), yn, g.K);
    }
    if (bias)
      for (int64_t i = 0; i < L; ++i)
        for (int64_t k = 0; k < g.K; ++k) yn[i * g.K + k] += bias[k];
  }
}

template <class T>
void conv2d_backward_data_ref(const Conv2dGeom& g, Layout layout, const T* dy, const T* w, T* dx) {
  const int64_t OH = g.OH(), OW = g.OW(), L = OH * OW, CRS = g.C * g.R * g.S;
  const int64_t x_img = g.C * g.H * g.W, y_img = g.K * L;
  const ImageStrides st = image_strides(layout, g.C, g.H, g.W);
  const bool pointwise = is_pointwise(g);
  if (layout == Layout::NCHW) {
    // dcol chunk (CRS, n*L) = w^T (CRS, K) @ dy chunk (K, n*L), then col2im per image
    const int64_t nc = chunk_images(g.N, (CRS + g.K) * L);
    T *dyc, *dcol;
    scratch(size_t(g.K * nc * L), size_t(CRS * nc * L), &dyc, &dcol);
    for (int64_t n0 = 0; n0 < g.N; n0 += nc) {
      const int64_t n = std::min(nc, g.N - n0), ld = n * L;
      gather_images(dy + n0 * y_img, n, g.K, L, dyc);
      gemm(true, false, CRS, ld, g.K, T(1), w, CRS, dyc, ld, T(0), dcol, ld);
      if (pointwise) {
        scatter_images(dcol, n, g.C, L, dx + n0 * x_img);
        continue;
      }
      chunk_col2im(g, st, dcol, n, dx + n0 * x_img);
    }
    return;
  }
  T *col, *unused;
  scratch(pointwise ? 0 : size_t(CRS * L), 0, &col, &unused);
  for (int64_t n = 0; n < g.N; ++n) {
    const T* dyn = dy + n * y_img;
    T* dxn = dx + n * x_img;
    if (pointwise) {  // dx_n (L, C) = dy_n (L, K) @ w (K, C)
      gemm(false, false, L, g.C, g.K, T(1), dyn, g.K, w, g.C, T(0), dxn, g.C);
      continue;
    }
    // dcol (CRS, L) = w^T (CRS, K) @ dy_n^T (dy_n is (L, K))
    gemm(true, true, CRS, L, g.K, T(1), w, CRS, dyn, g.K, T(0), col, L);
    std::fill(dxn, dxn + x_img, T(0));
    col2im_add(g, st, col, L, dxn, 0, g.C);
  }
}

template <class T>
void conv2d_backward_weight_ref(const Conv2dGeom& g, Layout layout, const T* x, const T* dy, T* dw,
                                T* dbias) {
  const int64_t OH = g.OH(), OW = g.OW(), L = OH * OW, CRS = g.C * g.R * g.S;
  const int64_t x_img = g.C * g.H * g.W, y_img = g.K * L;
  const ImageStrides st = image_strides(layout, g.C, g.H, g.W);
  const bool pointwise = is_pointwise(g);
  if (dw && layout == Layout::NCHW) {
    // dw (K, CRS) += dy chunk (K, n*L) @ col chunk^T (n*L, CRS)
    const int64_t nc = chunk_images(g.N, (CRS + g.K) * L);
    T *col, *dyc;
    scratch(size_t(CRS * nc * L), size_t(g.K * nc * L), &col, &dyc);
    for (int64_t n0 = 0; n0 < g.N; n0 += nc) {
      const int64_t n = std::min(nc, g.N - n0), ld = n * L;
      chunk_columns(g, st, x + n0 * x_img, n, col);
      gather_images(dy + n0 * y_img, n, g.K, L, dyc);
      gemm(false, true, g.K, CRS, ld, T(1), dyc, ld, col, ld, T(1), dw, CRS);
    }
  } else if (dw) {
    T *col, *unused;
    scratch(pointwise ? 0 : size_t(CRS * L), 0, &col, &unused);
    for (int64_t n = 0; n < g.N; ++n) {
      const T* xn = x + n * x_img;
      const T* dyn = dy + n * y_img;
      if (pointwise) {
        // dw (K, C) += dy_n^T (K, L) @ x_n (L, C)
        gemm(true, false, g.K, CRS, L, T(1), dyn, g.K, xn, CRS, T(1), dw, CRS);
      } else {
        im2col(g, st, xn, col, L, 0, g.C);
        gemm(true, true, g.K, CRS, L, T(1), dyn, g.K, col, L, T(1), dw, CRS);
      }
    }
  }
  if (dbias) {
    if (layout == Layout::NCHW)
      channel_sum_ref<T>(g.N, g.K, L, dy, dbias);
    else
      channel_sum_ref<T>(g.N * L, g.K, 1, dy, dbias);
  }
}

template <class T>
void channel_sum_ref(int64_t outer, int64_t C, int64_t inner, const T* v, T* out) {
  std::vector<double> acc(size_t(C), 0.0);
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t c = 0; c < C; ++c) {
      const T* p = v + (o * C + c) * inner;
      double s = 0;
      for (int64_t i = 0; i < inner; ++i) s += double(p[i]);
      acc[size_t(c)] += s;
    }
  for (int64_t c = 0; c < C; ++c) out[c] += T(acc[size_t(c)]);
}

#define SC_INSTANTIATE(T)                                                                        \
  template void conv2d_forward_ref<T>(const Conv2dGeom&, Layout, const T*, const T*, const T*,   \
                                      T*);                                                       \
  template void conv2d_backward_data_ref<T>(const Conv2dGeom&, Layout, const T*, const T*, T*);  \
  template void conv2d_backward_weight_ref<T>(const Conv2dGeom&, Layout, const T*, const T*, T*, \
                                              T*);                                               \
  template void channel_sum_ref<T>(int64_t, int64_t, int64_t, const T*, T*);
SC_INSTANTIATE(float)
SC_INSTANTIATE(double)
#undef SC_INSTANTIATE

}  // namespace sc
