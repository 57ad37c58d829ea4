// slot_presence_ref.cpp: CPU reference of slot presence (see slot_presence.h).
#include <algorithm>

#include "kernels/check.h"
#include "kernels/slot_presence.h"

namespace sc {

template <class T>
void slot_presence_ref(int64_t B, int64_t K, int64_t P, const T* dots, const uint8_t* and_mask,
                       uint8_t* present) {
  SC_KERNEL_REQUIRE(B >= 1 && K >= 1 && P >= 1, "slot_presence_ref", "empty shape");
  std::fill(present, present + B * K, uint8_t(0));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < P; ++p) {
      int64_t best = 0;
      for (int64_t k = 1; k < K; ++k)
        if (dots[(b * K + k) * P + p] > dots[(b * K + best) * P + p]) best = k;
      present[b * K + best] = 1;
    }
  if (and_mask)
    for (int64_t i = 0; i < B * K; ++i) present[i] = uint8_t(present[i] && and_mask[i]);
}

template void slot_presence_ref<float>(int64_t, int64_t, int64_t, const float*, const uint8_t*,
                                       uint8_t*);
template void slot_presence_ref<double>(int64_t, int64_t, int64_t, const double*, const uint8_t*,
                                        uint8_t*);

}  // namespace sc
