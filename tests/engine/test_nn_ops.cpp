// Engine-level convolution, batch norm, max pool and add_relu: float64 finite-difference gradient
// checks through autograd, forward values against the kernels' references, layouts, the running
// statistics and the distributed hooks.
#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

#include "test_seed.h"
#include "engine/autograd.h"
#include "engine/nn_ops.h"
#include "engine/ops.h"
#include "gradcheck.h"
#include "kernels/batch_norm.h"
#include "kernels/conv2d.h"

using namespace sc;
using sc::testing::gradcheck;
using sc::testing::GradcheckOptions;
using sc::testing::rand64;

namespace {
GradcheckOptions tight() {
  GradcheckOptions o;
  o.seed = sc::testing::next_seed();
  o.atol = 1e-7;
  o.rtol = 1e-5;
  return o;
}
Tensor channels_last(const Tensor& t) { return t.contiguous(MemoryFormat::ChannelsLast); }
}  // namespace

TEST_CASE("conv2d: float64 gradcheck for every ResNet kernel / stride / padding, both layouts",
          "[nn_ops][conv2d]") {
  Generator gen(sc::testing::next_seed());
  struct Cfg {
    int64_t N, C, H, W, K, R, stride, pad;
  };
  for (Cfg c :
       {Cfg{1, 2, 9, 8, 3, 7, 2, 3}, Cfg{2, 3, 5, 4, 2, 3, 1, 1}, Cfg{1, 2, 7, 6, 3, 3, 2, 1},
        Cfg{2, 3, 4, 3, 4, 1, 1, 0}, Cfg{2, 3, 5, 5, 2, 1, 2, 0}})
    for (bool nhwc : {false, true})
      for (bool with_bias : {false, true}) {
        INFO("R " << c.R << " stride " << c.stride << " nhwc " << nhwc << " bias " << with_bias);
        std::vector<Tensor> in = {rand64({c.N, c.C, c.H, c.W}, gen),
                                  rand64({c.K, c.C, c.R, c.R}, gen)};
        if (with_bias) in.push_back(rand64({c.K}, gen));
        auto f = [&](const std::vector<Tensor>& t) {
          Tensor x = nhwc ? channels_last(t[0]) : t[0];
          Tensor y = conv2d(x, t[1], with_bias ? t[2] : Tensor(), c.stride, c.pad);
          REQUIRE(y.shape() == Shape{c.N, c.K, (c.H + 2 * c.pad - c.R) / c.stride + 1,
                                     (c.W + 2 * c.pad - c.R) / c.stride + 1});
          if (nhwc) REQUIRE(y.is_channels_last());
          return y;
        };
        REQUIRE(gradcheck(f, in, tight()) == "");
      }
}

TEST_CASE("conv2d: forward equals the kernel reference, float32 path, argument errors",
          "[nn_ops][conv2d]") {
  // the im2col reference, bit for bit (oneDNN, when built, is checked in test_conv_cpu_impl.cpp)
  const CpuConvImpl saved = cpu_conv_impl();
  set_cpu_conv_impl(CpuConvImpl::Reference);
  struct Restore {
    CpuConvImpl impl;
    ~Restore() { set_cpu_conv_impl(impl); }
  } restore{saved};
  Generator gen(sc::testing::next_seed());
  Tensor x = randn({2, 3, 9, 7}, gen), w = randn({4, 3, 3, 3}, gen), b = randn({4}, gen);
  Tensor y = conv2d(x, w, b, 2, 1);
  Conv2dGeom g;
  g.N = 2, g.C = 3, g.H = 9, g.W = 7, g.K = 4, g.R = 3, g.S = 3;
  g.stride_h = g.stride_w = 2, g.pad_h = g.pad_w = 1;
  std::vector<float> ref(size_t(2 * 4 * g.OH() * g.OW()));
  conv2d_forward_ref<float>(g, Layout::NCHW, x.data<float>(), w.data<float>(), b.data<float>(),
                            ref.data());
  REQUIRE(y.to_vector() == std::vector<double>(ref.begin(), ref.end()));
  // Channels-last input: same values, channels-last output.
  Tensor y2 = conv2d(channels_last(x), w, b, 2, 1);
  REQUIRE(y2.is_channels_last());
  REQUIRE(compare(y2, y, 1e-5, 1e-5).max_scaled <= 1.0);
  // Errors name the op.
  REQUIRE_THROWS_WITH(conv2d(x, randn({4, 2, 3, 3}, gen)), Catch::Contains("conv2d"));
  REQUIRE_THROWS_WITH(conv2d(x, w.to(DType::F64)), Catch::Contains("dtype"));
  REQUIRE_THROWS_WITH(conv2d(x, w, randn({3}, gen)), Catch::Contains("bias"));
  REQUIRE_THROWS_AS(conv2d(randn({1, 3, 2, 2}, gen), randn({1, 3, 5, 5}, gen)), Error);
}

TEST_CASE("batch_norm: float64 gradcheck (train / eval, activations, residual, layouts)",
          "[nn_ops][batch_norm]") {
  Generator gen(sc::testing::next_seed());
  for (int shape_kind = 0; shape_kind < 4; ++shape_kind)  // (N,C), (N,C,L), NCHW, NHWC
    for (bool training : {true, false})
      for (Act act : {Act::None, Act::Relu, Act::Gelu})
        for (bool with_res : {false, true}) {
          INFO("shape kind " << shape_kind << " training " << training << " act " << int(act)
                             << " residual " << with_res);
          Shape s = shape_kind == 0   ? Shape{6, 3}
                    : shape_kind == 1 ? Shape{3, 2, 4}
                                      : Shape{2, 3, 3, 2};
          const int64_t C = s[1];
          Tensor rm = rand64({C}, gen), rv = rand64({C}, gen, 0.5, 2.0);
          std::vector<Tensor> in = {rand64(s, gen, -2, 2), rand64({C}, gen, 0.5, 1.5),
                                    rand64({C}, gen)};
          if (with_res) in.push_back(rand64(s, gen));
          auto f = [&](const std::vector<Tensor>& t) {
            BatchNormOptions o;
            o.training = training;
            o.act = act;
            Tensor x = shape_kind == 3 ? channels_last(t[0]) : t[0];
            if (with_res) o.residual = shape_kind == 3 ? channels_last(t[3]) : t[3];
            // Running stats are cloned so that finite differences see the same eval statistics.
            return batch_norm(x, t[1], t[2], rm.clone(), rv.clone(), o);
          };
          REQUIRE(gradcheck(f, in, tight()) == "");
        }
}

TEST_CASE("batch_norm 1-D with a row mask: gradcheck on the selected rows, equals BN of them",
          "[nn_ops][batch_norm]") {
  Generator gen(sc::testing::next_seed());
  const int64_t N = 9, C = 4;
  std::vector<double> m = {1, 0, 1, 1, 0, 1, 0, 1, 1};
  Tensor mask = from_vector(m, {N}, DType::U8);
  Tensor maskf = from_vector(m, {N, 1}, DType::F64);
  std::vector<Tensor> in = {rand64({N, C}, gen, -2, 2), rand64({C}, gen, 0.5, 1.5),
                            rand64({C}, gen)};
  auto f = [&](const std::vector<Tensor>& t) {
    BatchNormOptions o;
    o.row_mask = mask;
    o.act = Act::Gelu;
    // Unselected rows are "don't care": the loss does not look at them.
    return mul(batch_norm(t[0], t[1], t[2], Tensor(), Tensor(), o), maskf);
  };
  REQUIRE(gradcheck(f, in, tight()) == "");

  // Against BN of the selected rows (masked_select first), with running statistics.
  Tensor x = rand64({N, C}, gen).set_requires_grad(true);
  Tensor gamma = rand64({C}, gen).set_requires_grad(true);
  Tensor beta = rand64({C}, gen).set_requires_grad(true);
  Tensor rm1 = zeros({C}, DType::F64), rv1 = ones({C}, DType::F64);
  Tensor rm2 = zeros({C}, DType::F64), rv2 = ones({C}, DType::F64);
  BatchNormOptions o;
  o.row_mask = mask;
  o.act = Act::Relu;
  Tensor y1 = batch_norm(x, gamma, beta, rm1, rv1, o);
  Tensor dy = rand64({N, C}, gen);
  y1.backward(dy);
  Tensor gx1 = x.grad(), gg1 = gamma.grad(), gb1 = beta.grad();
  x.set_grad(Tensor()), gamma.set_grad(Tensor()), beta.set_grad(Tensor());
  BatchNormOptions o2;
  o2.act = Act::Relu;
  Tensor y2 = batch_norm(masked_select_rows(x, mask), gamma, beta, rm2, rv2, o2);
  y2.backward(masked_select_rows(dy, mask));
  REQUIRE(compare(masked_select_rows(y1.detach(), mask), y2.detach(), 1e-12, 1e-12).max_scaled <=
          1);
  REQUIRE(compare(masked_select_rows(gx1, mask), masked_select_rows(x.grad(), mask), 1e-12, 1e-12)
              .max_scaled <= 1);
  REQUIRE(compare(gg1, gamma.grad(), 1e-12, 1e-12).max_scaled <= 1);
  REQUIRE(compare(gb1, beta.grad(), 1e-12, 1e-12).max_scaled <= 1);
  REQUIRE(compare(rm1, rm2, 1e-14, 1e-12).max_scaled <= 1);
  REQUIRE(compare(rv1, rv2, 1e-14, 1e-12).max_scaled <= 1);
  // Unselected rows: zero input gradient, finite outputs.
  auto gx = gx1.to_vector(), yv = y1.to_vector();
  for (int64_t r = 0; r < N; ++r)
    if (m[size_t(r)] == 0)
      for (int64_t c = 0; c < C; ++c) {
        REQUIRE(gx[size_t(r * C + c)] == 0.0);
        REQUIRE(std::isfinite(yv[size_t(r * C + c)]));
      }
}

TEST_CASE("batch_norm: running statistics after two training steps equal the formula",
          "[nn_ops][batch_norm]") {
  Generator gen(sc::testing::next_seed());
  const int64_t N = 4, C = 3, H = 2, W = 3;
  Tensor rm = zeros({C}), rv = ones({C});
  std::vector<double> em(size_t(C), 0.0), ev(size_t(C), 1.0);
  for (int step = 0; step < 2; ++step) {
    Tensor x = randn({N, C, H, W}, gen, DType::F32);
    x = step == 1 ? channels_last(x) : x;
    batch_norm(x, Tensor(), Tensor(), rm, rv, BatchNormOptions{});
    auto v = x.to_vector();  // logical NCHW order
    for (int64_t c = 0; c < C; ++c) {
      double s = 0, n = double(N * H * W);
      for (int64_t i = 0; i < N; ++i)
        for (int64_t k = 0; k < H * W; ++k) s += v[size_t((i * C + c) * H * W + k)];
      const double mean = s / n;
      double ss = 0;
      for (int64_t i = 0; i < N; ++i)
        for (int64_t k = 0; k < H * W; ++k) {
          const double d = v[size_t((i * C + c) * H * W + k)] - mean;
          ss += d * d;
        }
      em[size_t(c)] = 0.9 * em[size_t(c)] + 0.1 * mean;
      ev[size_t(c)] = 0.9 * ev[size_t(c)] + 0.1 * ss / (n - 1);
    }
  }
  auto m = rm.to_vector(), v = rv.to_vector();
  for (int64_t c = 0; c < C; ++c) {
    REQUIRE(m[size_t(c)] == Approx(em[size_t(c)]).margin(1e-6));
    REQUIRE(v[size_t(c)] == Approx(ev[size_t(c)]).margin(1e-6));
  }
}

TEST_CASE("batch_norm: stats API and distributed hooks", "[nn_ops][batch_norm]") {
  Generator gen(sc::testing::next_seed());
  const int64_t N = 5, C = 3;
  Tensor x = rand64({N, C, 2, 2}, gen);
  Tensor st = batch_norm_stats(x);
  REQUIRE(st.shape() == Shape{2 * C + 1});
  auto sv = st.to_vector(), xv = x.to_vector();
  REQUIRE(sv[size_t(2 * C)] == double(N * 4));
  for (int64_t c = 0; c < C; ++c) {
    double s = 0, s2 = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < 4; ++k) {
        const double v = xv[size_t((n * C + c) * 4 + k)];
        s += v, s2 += v * v;
      }
    REQUIRE(sv[size_t(c)] == Approx(s).margin(1e-12));
    REQUIRE(sv[size_t(C + c)] == Approx(s2).margin(1e-12));
  }
  // Two "ranks" holding identical data: summing the statistics and gradient sums over them must
  // give the same outputs and input gradients, and the unbiased running variance of 2n values.
  Tensor xa = x.clone().set_requires_grad(true), xb = x.clone().set_requires_grad(true);
  Tensor gamma = rand64({C}, gen).set_requires_grad(true), beta = rand64({C}, gen);
  Tensor rma = zeros({C}, DType::F64), rva = ones({C}, DType::F64);
  Tensor rmb = zeros({C}, DType::F64), rvb = ones({C}, DType::F64);
  int stats_calls = 0, grad_calls = 0;
  BatchNormOptions o;
  o.act = Act::Relu;
  o.reduce_stats = [&](Tensor& s) {
    ++stats_calls;
    mul_(s, 2.0);
  };
  o.reduce_grad_sums = [&](Tensor& g) {
    ++grad_calls;
    mul_(g, 2.0);
  };
  Tensor ya = batch_norm(xa, gamma, beta, rma, rva, o);
  Tensor yb =
      batch_norm(xb, gamma.detach(), beta, rmb, rvb, BatchNormOptions{true, 0.1, 1e-5, Act::Relu});
  Tensor dy = rand64(ya.shape(), gen);
  ya.backward(dy);
  yb.backward(dy);
  REQUIRE(stats_calls == 1);
  REQUIRE(grad_calls == 1);
  REQUIRE(compare(ya, yb, 1e-12, 1e-12).max_scaled <= 1);
  REQUIRE(compare(xa.grad(), xb.grad(), 1e-12, 1e-10).max_scaled <= 1);
  REQUIRE(compare(rma, rmb, 1e-14, 1e-12).max_scaled <= 1);
  auto va = rva.to_vector(), vb = rvb.to_vector();
  const double n = double(N * 4);
  for (int64_t c = 0; c < C; ++c) {
    const double biased_b = (vb[size_t(c)] - 0.9) / 0.1 * (n - 1) / n;
    REQUIRE(va[size_t(c)] == Approx(0.9 + 0.1 * biased_b * 2 * n / (2 * n - 1)).margin(1e-12));
  }
}

TEST_CASE("batch_norm: argument errors", "[nn_ops][batch_norm]") {
  Tensor x = zeros({4, 3});
  REQUIRE_THROWS_WITH(batch_norm(x, zeros({2}), Tensor(), Tensor(), Tensor()),
                      Catch::Contains("weight"));
  BatchNormOptions eval;
  eval.training = false;
  REQUIRE_THROWS_WITH(batch_norm(x, Tensor(), Tensor(), Tensor(), Tensor(), eval),
                      Catch::Contains("running"));
  BatchNormOptions bad_mask;
  bad_mask.row_mask = zeros({3}, DType::U8);
  REQUIRE_THROWS_WITH(batch_norm(x, Tensor(), Tensor(), Tensor(), Tensor(), bad_mask),
                      Catch::Contains("mask"));
  REQUIRE_THROWS_WITH(batch_norm(x, zeros({3}, DType::F64), Tensor(), Tensor(), Tensor()),
                      Catch::Contains("F32"));
}

TEST_CASE("max_pool2d and add_relu: float64 gradchecks, layouts", "[nn_ops][max_pool]") {
  Generator gen(sc::testing::next_seed());
  for (bool nhwc : {false, true}) {
    INFO("nhwc " << nhwc);
    auto pool = [&](const std::vector<Tensor>& t) {
      Tensor y = max_pool2d(nhwc ? channels_last(t[0]) : t[0], 3, 2, 1);
      REQUIRE(y.shape() == Shape{2, 3, 4, 3});
      REQUIRE(y.is_channels_last() == nhwc);
      return y;
    };
    REQUIRE(gradcheck(pool, {rand64({2, 3, 7, 6}, gen)}, tight()) == "");
    auto ar = [&](const std::vector<Tensor>& t) {
      return add_relu(nhwc ? channels_last(t[0]) : t[0], t[1]);
    };
    REQUIRE(gradcheck(ar, {rand64({2, 3, 4, 3}, gen), rand64({2, 3, 4, 3}, gen)}, tight()) == "");
  }
  // Values: add_relu equals relu(a + b); pooling of an NHWC tensor equals pooling of NCHW.
  Tensor a = randn({2, 4, 5, 5}, gen), b = randn({2, 4, 5, 5}, gen);
  REQUIRE(compare(add_relu(a, b), relu(add(a, b)), 0, 0).max_abs == 0);
  REQUIRE(compare(max_pool2d(channels_last(a)), max_pool2d(a), 0, 0).max_abs == 0);
}
