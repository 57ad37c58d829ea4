// gradcheck.h: float64 finite-difference gradient checks for any differentiable computation.
//
// gradcheck(f, inputs): inputs are CPU F64 leaves (marked requires_grad here). The output of f is
// projected on a fixed random cotangent c, L = sum(f(x) * c); the analytic gradient comes from
// backward, the numeric one from central differences (L(x + eps e_i) - L(x - eps e_i)) / 2eps,
// for every element of every input. An element passes when |analytic - numeric| <=
// atol + rtol * |numeric|. Returns a description of the worst element (empty when all pass).
//
// Kinks. ReLU, max pool and arg-max are not differentiable everywhere, and the data decide
// where (a pre-activation that happens to lie within eps of 0, two pooled values within 2 eps).
// When the central difference disagrees with the analytic gradient, the one-sided differences
// (L(x + eps) - L(x)) / eps and (L(x) - L(x - eps)) / eps are taken: if they differ from each
// other by more than ten tolerances, a kink lies within eps of the element, and the element passes
// when the analytic gradient equals one of them (a one-sided derivative, as the backward of ReLU
// and max pool picks one side). A smooth function has equal one-sided differences up to
// eps * |L''|, so a wrong gradient away from kinks fails as before. Elements found at a kink are
// counted in `kinks` when given.
//
// Rounding. Each evaluation of L carries rounding error of order |L| * 1e-16, amplified by what
// the function divides by (a batch norm over a dozen samples with a small spread); the central
// difference divides it by 2 eps, and at eps = 1e-6 that has been measured at up to 3e-7 on a
// gradient that is exactly zero (the projector's pre-BN bias), above atol. Rounding falls as
// 1/eps and the truncation error of a smooth function grows as eps^2, so an element that fails at
// eps (and is not at a kink) is measured once more at 10 eps, and passes when the analytic
// gradient matches that difference. A wrong gradient misses both; a kink within 10 eps of the
// element is the one case this retry cannot help, and it fails as before. Elements that pass
// only at 10 eps are counted in `rounded` when given.
#pragma once
#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"

namespace sc {
namespace testing {

struct GradcheckOptions {
  double eps = 1e-6;
  double atol = 1e-7;
  double rtol = 1e-5;
  uint64_t seed = 1234;
};

inline std::string gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f,
                             std::vector<Tensor> inputs, GradcheckOptions opt = {},
                             int64_t* kinks = nullptr, int64_t* rounded = nullptr) {
  if (kinks) *kinks = 0;
  if (rounded) *rounded = 0;
  for (Tensor& x : inputs) {
    SC_CHECK(x.dtype() == DType::F64 && x.device().is_cpu() && x.is_contiguous(),
             "gradcheck: inputs must be contiguous CPU F64 tensors");
    x.set_grad(Tensor());
    x.set_requires_grad(true);
  }
  Tensor out = f(inputs);
  Generator gen(opt.seed);
  Tensor cot = randn(out.shape(), gen, DType::F64);
  Tensor L = sum(mul(out, cot));
  L.backward();
  auto eval = [&]() {
    NoGradGuard ng;
    return sum(mul(f(inputs), cot)).item();
  };
  std::string worst;
  double worst_excess = 0;
  for (size_t k = 0; k < inputs.size(); ++k) {
    Tensor g = inputs[k].grad();
    std::vector<double> analytic =
        g.defined() ? g.to_vector() : std::vector<double>(size_t(inputs[k].numel()), 0.0);
    double* p = inputs[k].data<double>();
    for (int64_t i = 0; i < inputs[k].numel(); ++i) {
      const double saved = p[i];
      auto eval_at = [&](double h) {  // L with element i moved by h
        p[i] = saved + h;
        const double l = eval();
        p[i] = saved;
        return l;
      };
      const double lp = eval_at(opt.eps), lm = eval_at(-opt.eps);
      const double numeric = (lp - lm) / (2 * opt.eps);
      const double a = analytic[size_t(i)];
      double err = std::fabs(a - numeric);
      const double tol = opt.atol + opt.rtol * std::fabs(numeric);
      if (!(err <= tol)) {
        const double l0 = eval();
        const double right = (lp - l0) / opt.eps, left = (l0 - lm) / opt.eps;
        const double tol_r = opt.atol + opt.rtol * std::fabs(right),
                     tol_l = opt.atol + opt.rtol * std::fabs(left);
        if (std::fabs(right - left) > 10 * std::max(tol_r, tol_l) &&
            (std::fabs(a - right) <= tol_r || std::fabs(a - left) <= tol_l)) {
          err = 0;
          if (kinks) ++*kinks;
        }
      }
      if (!(err <= tol)) {
        const double wide = 10 * opt.eps;
        const double numeric_wide = (eval_at(wide) - eval_at(-wide)) / (2 * wide);
        if (std::fabs(a - numeric_wide) <= opt.atol + opt.rtol * std::fabs(numeric_wide)) {
          err = 0;
          if (rounded) ++*rounded;
        }
      }
      if (!(err <= tol) && (worst.empty() || err / tol > worst_excess)) {
        worst_excess = err / tol;
        worst = str_cat("input ", k, " element ", i, ": analytic ", a, ", numeric ", numeric,
                        " (|diff| ", err, " > tol ", tol, ")");
      }
    }
  }
  return worst;
}

// Random F64 CPU tensor with entries in [lo, hi).
inline Tensor rand64(const Shape& s, Generator& gen, double lo = -1.0, double hi = 1.0) {
  return rand_uniform(s, gen, lo, hi, DType::F64);
}

}  // namespace testing
}  // namespace sc
