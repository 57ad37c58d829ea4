// schedule.h: the per-step schedules of SlotCon training (docs/method.md §6).
#pragma once
#include <cmath>
#include <cstdint>

namespace sc {

// Learning rate at step s (0-based) of S total, with W warm-up steps:
// warm-up: linear from peak/multiplier to peak over W steps; then cosine from peak to final_lr.
inline double lr_at(int64_t s, int64_t S, int64_t W, double peak, double multiplier,
                    double final_lr = 1e-6) {
  if (s < W) {
    const double start = peak / multiplier;
    return start + (peak - start) * double(s) / double(W);
  }
  const int64_t span = S - W;
  if (span <= 0) return peak;
  const double t = double(s - W) / double(span);
  return final_lr + 0.5 * (peak - final_lr) * (1.0 + std::cos(M_PI * t));
}

// Teacher EMA momentum at step s of S: 1 - (1 - m0) * (cos(pi s / S) + 1) / 2.
inline double teacher_momentum_at(int64_t s, int64_t S, double m0) {
  return 1.0 - (1.0 - m0) * (std::cos(M_PI * double(s) / double(S)) + 1.0) / 2.0;
}

// The group loss's teacher temperature at step s with a warm-up of W steps: linear from t0 to t1,
// then t1 (W = 0: t1 throughout).
inline double teacher_temp_at(int64_t s, int64_t W, double t0, double t1) {
  if (s >= W) return t1;
  return t0 + (t1 - t0) * double(s) / double(W);
}

}  // namespace sc
