// normalize_images_ref.cpp: CPU reference of the uint8 image normalisation (see
// normalize_images.h).
#include "kernels/normalize_images.h"
#include "kernels/parallel.h"

namespace sc {

template <class T>
void normalize_images_ref(int64_t B, int64_t H, int64_t W, const uint8_t* in,
                          const ImageNorm& norm, T* out, const int64_t ostride[4]) {
  float lut[3][256];
  for (int c = 0; c < 3; ++c)
    for (int v = 0; v < 256; ++v) lut[c][v] = (float(v) / 255.f - norm.mean[c]) / norm.std_[c];
  parallel_for(B * H, grain_for(3 * W), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / H, y = r % H;
      const uint8_t* p = in + r * W * 3;
      T* o = out + b * ostride[0] + y * ostride[2];
      for (int64_t x = 0; x < W; ++x, p += 3)
        for (int c = 0; c < 3; ++c) o[c * ostride[1] + x * ostride[3]] = T(lut[c][p[c]]);
    }
  });
}

template void normalize_images_ref<float>(int64_t, int64_t, int64_t, const uint8_t*,
                                          const ImageNorm&, float*, const int64_t[4]);
template void normalize_images_ref<double>(int64_t, int64_t, int64_t, const uint8_t*,
                                           const ImageNorm&, double*, const int64_t[4]);

}  // namespace sc
