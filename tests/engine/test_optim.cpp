// Optimizers against their formulas, computed here in double on plain vectors: SGD with momentum
// and weight decay, LARS (trust ratio and weight decay only for tensors with more than one
// dimension, the zero-norm cases), parameters without a gradient; and the fp16 loss scaler
// (scaling, unscaling, overflow detection, backoff, growth, state).
#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/optim.h"

using namespace sc;

namespace {
Tensor leaf(const std::vector<double>& v, const Shape& s) {
  Tensor t = from_vector(v, s, DType::F32);
  t.set_requires_grad(true);
  return t;
}
void set_grad(Tensor& p, const std::vector<double>& g) {
  p.set_grad(from_vector(g, p.shape(), p.dtype()));
}
double norm(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x * x;
  return std::sqrt(s);
}
// One LARS step on vectors (the authors' utils/lars.py)
void lars_ref(std::vector<double>& p, std::vector<double> g, std::vector<double>& mu, bool matrix,
              double lr, double mom, double wd, double eta) {
  if (matrix) {
    for (size_t i = 0; i < p.size(); ++i) g[i] += wd * p[i];
    const double pn = norm(p), gn = norm(g);
    const double q = (pn > 0 && gn > 0) ? eta * pn / gn : 1.0;
    for (double& x : g) x *= q;
  }
  for (size_t i = 0; i < p.size(); ++i) {
    mu[i] = mom * mu[i] + g[i];
    p[i] -= lr * mu[i];
  }
}
void check_close(const std::vector<double>& a, const std::vector<double>& b, double tol) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) CHECK(a[i] == Approx(b[i]).epsilon(tol).margin(1e-7));
}
}  // namespace

TEST_CASE("optim: SGD with momentum and weight decay follows its formula over steps") {
  Tensor p = leaf({1.0, -2.0, 0.5}, {3});
  SGD opt({p}, SGDOptions{0.1, 0.9, 0.01});
  std::vector<double> pr = {1.0, -2.0, 0.5}, v(3, 0.0);
  const std::vector<std::vector<double>> grads = {{0.3, -0.1, 0.2}, {-0.5, 0.4, 0.0}, {1, 1, 1}};
  for (const auto& g : grads) {
    set_grad(p, g);
    opt.step();
    for (size_t i = 0; i < 3; ++i) {
      v[i] = 0.9 * v[i] + g[i] + 0.01 * pr[i];
      pr[i] -= 0.1 * v[i];
    }
    check_close(p.to_vector(), pr, 1e-6);
  }
  check_close(opt.state()[0].to_vector(), v, 1e-6);
}

TEST_CASE("optim: LARS scales matrices by the trust ratio, leaves vectors alone") {
  Tensor w = leaf({0.5, -1.0, 2.0, 0.25, 1.5, -0.75}, {2, 3});
  Tensor b = leaf({0.1, -0.2}, {2});
  Tensor unused = leaf({1.0, 1.0}, {2, 1});  // no gradient: untouched, no state
  const double lr = 0.7, mom = 0.9, wd = 1e-2, eta = 0.001;
  LARS opt({w, b, unused}, LARSOptions{lr, mom, wd, eta});
  std::vector<double> wr = w.to_vector(), br = b.to_vector(), mw(6, 0.0), mb(2, 0.0);
  const std::vector<std::vector<double>> gw = {{1, 2, 3, 4, 5, 6}, {-0.1, 0.2, 0.0, 0.3, 0.1, -0.2}};
  const std::vector<std::vector<double>> gb = {{0.5, -0.25}, {0.125, 1.0}};
  for (size_t s = 0; s < gw.size(); ++s) {
    set_grad(w, gw[s]);
    set_grad(b, gb[s]);
    opt.step();
    lars_ref(wr, gw[s], mw, true, lr, mom, wd, eta);
    lars_ref(br, gb[s], mb, false, lr, mom, wd, eta);
    check_close(w.to_vector(), wr, 1e-5);
    check_close(b.to_vector(), br, 1e-6);
  }
  CHECK(unused.to_vector() == std::vector<double>{1.0, 1.0});
  CHECK_FALSE(opt.state()[2].defined());
}

TEST_CASE("optim: LARS trust ratio is 1 when the parameter or the update has zero norm") {
  // ||p|| = 0: the scaled update would be 0 forever; the ratio falls back to 1
  Tensor z = leaf({0, 0, 0, 0}, {2, 2});
  LARS opt({z}, LARSOptions{0.5, 0.0, 0.0, 0.001});
  set_grad(z, {1, -1, 2, 0});
  opt.step();
  check_close(z.to_vector(), {-0.5, 0.5, -1.0, 0.0}, 1e-6);
  // ||g'|| = 0 (no gradient, no weight decay): nothing moves, nothing becomes NaN
  Tensor q = leaf({1, 2, 3, 4}, {2, 2});
  LARS opt2({q}, LARSOptions{0.5, 0.9, 0.0, 0.001});
  set_grad(q, {0, 0, 0, 0});
  opt2.step();
  check_close(q.to_vector(), {1, 2, 3, 4}, 0);
}

TEST_CASE("optim: zero_grad clears every gradient") {
  Tensor p = leaf({1, 2}, {2});
  SGD opt({p}, SGDOptions{});
  set_grad(p, {1, 1});
  opt.zero_grad();
  CHECK_FALSE(p.grad().defined());
}

TEST_CASE("grad scaler: scales the loss, unscales the gradients, finds overflow") {
  GradScaler s(GradScalerOptions{1024.0, 2.0, 0.5, 3});
  Tensor p = leaf({1.0, -1.0, 0.5}, {3});
  Tensor loss = sum(mul(p, p));
  Tensor scaled = s.scale(loss);
  CHECK(scaled.item() == Approx(loss.item() * 1024.0));
  scaled.backward();
  CHECK(p.grad().to_vector()[0] == Approx(2.0 * 1024.0));
  CHECK(s.unscale_({p}));
  check_close(p.grad().to_vector(), {2.0, -2.0, 1.0}, 1e-7);
  // parameters without a gradient are fine
  Tensor nog = leaf({1.0}, {1});
  CHECK(s.unscale_({nog}));
  // an Inf or a NaN anywhere is found
  for (double bad : {std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity(),
                     std::numeric_limits<double>::quiet_NaN()}) {
    set_grad(p, {1.0, bad, 2.0});
    Tensor q = leaf({3.0}, {1});
    set_grad(q, {1.0});
    CHECK_FALSE(s.unscale_({q, p}));
  }
  // large but finite gradients (a sum near the F32 limit) are not overflow
  set_grad(p, {3e38, 3e38, 3e38});
  CHECK(s.unscale_({p}));
}

TEST_CASE("grad scaler: backoff on overflow, growth after the interval, state round trip") {
  GradScaler s(GradScalerOptions{1024.0, 2.0, 0.5, 3});
  s.update(true);
  s.update(true);
  CHECK(s.current_scale() == 1024.0);
  CHECK(s.growth_tracker() == 2);
  s.update(false);  // overflow: halve, restart the count
  CHECK(s.current_scale() == 512.0);
  CHECK(s.growth_tracker() == 0);
  for (int i = 0; i < 3; ++i) s.update(true);
  CHECK(s.current_scale() == 1024.0);
  CHECK(s.growth_tracker() == 0);
  GradScaler r;
  CHECK(r.current_scale() == 65536.0);
  r.load_state(s.current_scale(), 2);
  r.update(true);
  CHECK(r.growth_tracker() == 3);
  CHECK_THROWS_AS(r.load_state(0.0, 0), Error);
  CHECK_THROWS_AS(r.load_state(std::numeric_limits<double>::infinity(), 0), Error);
  CHECK_THROWS_AS(GradScaler(GradScalerOptions{1.0, 0.5, 0.5, 1}), Error);
}

TEST_CASE("grad scaler: an overflowing backward is skipped and the scale backs off") {
  // (the CPU computes in F32 / F64; an F32 gradient of 1e34 x 65536 > 3.4e38 overflows the
  // same way an F16 one does at 65504)
  Tensor p = leaf({1.0, 2.0}, {2});
  GradScaler s(GradScalerOptions{65536.0, 2.0, 0.5, 2000});
  SGD opt({p}, SGDOptions{0.1, 0.0, 0.0});
  for (int attempt = 0; attempt < 2; ++attempt) {
    opt.zero_grad();
    Tensor loss = sum(mul_scalar(p, attempt == 0 ? 1e34 : 1.0));
    s.scale(loss).backward();
    const bool finite = s.unscale_({p});
    CHECK(finite == (attempt == 1));
    if (finite) opt.step();
    s.update(finite);
  }
  // the first step was skipped (scale halved), the second applied with the true gradient 1
  CHECK(s.current_scale() == 32768.0);
  check_close(p.to_vector(), {0.9, 1.9}, 1e-6);
}

TEST_CASE("optim: LARS and SGD over many tensors (the multi-tensor update's groups and chunks) "
          "follow the formula per tensor, and a set skip flag changes nothing") {
  // 41 F64 tensors (groups of 32 on a GPU), lengths crossing the 16,384-element chunks, an
  // all-zero matrix, a channels-last matrix whose gradient comes row-major
  const std::vector<Shape> shapes = {{3}, {5, 7}, {16383}, {128, 128}, {16385}, {4, 3, 3, 3},
                                     {40001}, {1}, {2, 20001}, {6, 3, 5, 5}, {7}};
  const bool lars = GENERATE(true, false);
  INFO((lars ? "LARS" : "SGD"));
  Generator gen(41);
  std::vector<Tensor> ps;
  std::vector<std::vector<double>> ref, mom;
  for (int i = 0; i < 41; ++i) {
    const Shape& s = shapes[size_t(i) % shapes.size()];
    Tensor p = i == 4 ? zeros(s, DType::F64)  // 16385: not a matrix; i == 12: {5, 7} below
                      : rand_uniform(s, gen, -1.0, 1.0, DType::F64);
    if (i == 12) p = zeros(s, DType::F64);  // an all-zero matrix: ratio 1
    if (i == 9) p = p.contiguous(MemoryFormat::ChannelsLast);
    p.set_requires_grad(true);
    ps.push_back(p);
    ref.push_back(p.contiguous().to_vector());
    mom.emplace_back(size_t(p.numel()), 0.0);
  }
  const double lr = 0.3, m = 0.9, wd = 1e-2, eta = 0.001;
  std::optional<LARS> ol;
  std::optional<SGD> os;
  if (lars)
    ol.emplace(ps, LARSOptions{lr, m, wd, eta});
  else
    os.emplace(ps, SGDOptions{lr, m, wd});
  Tensor skip = zeros({1}, DType::U8);
  for (int step = 0; step < 3; ++step) {
    if (step == 2) fill_(skip, 1.0);  // the third: skipped
    std::vector<std::vector<double>> gs;
    for (Tensor& p : ps) {
      Tensor g = rand_uniform(p.shape(), gen, -1.0, 1.0, DType::F64);  // row-major
      p.set_grad(g);
      gs.push_back(g.to_vector());
    }
    lars ? ol->step(skip) : os->step(skip);
    if (step == 2) break;
    for (size_t i = 0; i < ps.size(); ++i) {
      if (lars) {
        lars_ref(ref[i], gs[i], mom[i], ps[i].dim() > 1, lr, m, wd, eta);
      } else {
        for (size_t k = 0; k < ref[i].size(); ++k) {
          mom[i][k] = m * mom[i][k] + gs[i][k] + wd * ref[i][k];
          ref[i][k] -= lr * mom[i][k];
        }
      }
    }
  }
  for (size_t i = 0; i < ps.size(); ++i) {
    INFO("tensor " << i << " " << shape_str(ps[i].shape()));
    check_close(ps[i].contiguous().to_vector(), ref[i], 1e-12);
    const std::vector<Tensor>& st = lars ? ol->state() : os->state();
    check_close(st[i].contiguous().to_vector(), mom[i], 1e-12);
  }
}

TEST_CASE("optim: ema_update and nonfinite_flag follow their formulas") {
  Tensor k1 = from_vector({1, 2, 3}, {3}, DType::F32), k2 = from_vector({-4, 8}, {1, 2}, DType::F32);
  Tensor q1 = from_vector({3, 2, 1}, {3}, DType::F32), q2 = from_vector({4, 0}, {1, 2}, DType::F32);
  ema_update({k1, k2}, {q1, q2}, 0.75);
  check_close(k1.to_vector(), {1.5, 2.0, 2.5}, 1e-7);
  check_close(k2.to_vector(), {-2.0, 6.0}, 1e-7);
  CHECK_THROWS_AS(ema_update({k1}, {q2}, 0.5), Error);
  Tensor found = full({1}, 1.0, DType::U8);
  nonfinite_flag(from_vector({1.0, -2.0, 1e308}, {3}, DType::F64), found);
  CHECK(found.to_vector()[0] == 0);  // = not OR: a finite loss clears the flag
  for (double bad : {std::numeric_limits<double>::infinity(), std::numeric_limits<double>::quiet_NaN()}) {
    nonfinite_flag(from_vector({1.0, bad, 3.0}, {3}, DType::F64), found);
    CHECK(found.to_vector()[0] == 1);
  }
  CHECK_THROWS_AS(nonfinite_flag(from_vector({1.0}, {1}, DType::F32), found), Error);
}
