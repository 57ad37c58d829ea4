// kernel_test_util.h: small host helpers shared by the kernel tests (random vectors, dot
// products, and the float64 central-difference check of a CPU backward reference).
#pragma once
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace kernel_test {

using Vec = std::vector<double>;

inline Vec random_vec(size_t n, std::mt19937_64& rng, double lo = -1, double hi = 1) {
  std::uniform_real_distribution<double> u(lo, hi);
  Vec v(n);
  for (double& x : v) x = u(rng);
  return v;
}

inline double dotv(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Sum of |a_i b_i|: the scale of dotv's rounding when its terms cancel.
inline double dotv_abs(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += std::fabs(a[i] * b[i]);
  return s;
}

// Worst |analytic - numeric| / (atol + rtol |numeric|) over every element of x, where numeric is
// the central difference of L at x.
inline double fd_excess(Vec& x, const std::function<double()>& L, const Vec& analytic, double eps,
                 double atol, double rtol, std::string* where) {
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + eps;
    const double lp = L();
    x[i] = saved - eps;
    const double lm = L();
    x[i] = saved;
    const double num = (lp - lm) / (2 * eps);
    const double e = std::fabs(analytic[i] - num) / (atol + rtol * std::fabs(num));
    if (!(e <= worst)) {
      worst = e;
      *where = "element " + std::to_string(i) + ": analytic " + std::to_string(analytic[i]) +
               ", numeric " + std::to_string(num);
    }
  }
  return worst;
}

}  // namespace kernel_test
