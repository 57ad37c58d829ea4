// Autograd: tape semantics, accumulation, no-grad, custom ops, and the errors on misuse.
#include <algorithm>
#include <catch2/catch.hpp>

#include "engine/autograd.h"
#include "engine/grad_ready.h"
#include "engine/nn_ops.h"
#include "engine/ops.h"
#include "gradcheck.h"

using namespace sc;

TEST_CASE("autograd: gradients accumulate into leaves across backward calls") {
  Tensor w = from_vector({1, 2, 3}, {3}, DType::F64);
  w.set_requires_grad(true);
  sum(mul(w, w)).backward();
  CHECK(w.grad().to_vector() == std::vector<double>{2, 4, 6});
  sum(mul_scalar(w, 3.0)).backward();
  CHECK(w.grad().to_vector() == std::vector<double>{5, 7, 9});
  w.set_grad(Tensor());
  CHECK_FALSE(w.grad().defined());
}

// A leaf's first gradient is copied in its own memory format: a channels-last gradient (a
// channels-last convolution weight's) stays channels-last, so that neither the copy nor the
// optimizer, which works in the weight's layout, transposes it. The values are the same.
TEST_CASE("autograd: a leaf's first gradient keeps the gradient's memory format") {
  Tensor x0 = from_vector({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, {1, 3, 2, 2}, DType::F32);
  Tensor w = x0.contiguous(MemoryFormat::ChannelsLast).detach().set_requires_grad(true);
  Tensor y = mul_scalar(w, 3.0);
  REQUIRE(y.is_channels_last());
  y.backward(mul(y, y).detach());  // a channels-last gradient: 9 w^2 * 3
  REQUIRE(w.grad().defined());
  CHECK(w.grad().is_channels_last());
  CHECK_FALSE(w.grad().is_contiguous());
  std::vector<double> want;
  for (double v : x0.to_vector()) want.push_back(27 * v * v);
  CHECK(w.grad().to_vector() == want);
  // a contiguous gradient stays contiguous
  Tensor v = x0.clone().set_requires_grad(true);
  sum(mul(v, v)).backward();
  CHECK(v.grad().is_contiguous());
}

TEST_CASE("autograd: no-grad scope records nothing") {
  Tensor w = ones({2}, DType::F64);
  w.set_requires_grad(true);
  Tensor y;
  {
    NoGradGuard ng;
    CHECK_FALSE(grad_enabled());
    y = mul(w, w);
  }
  CHECK(grad_enabled());
  CHECK_FALSE(y.requires_grad());
  CHECK(y.grad_fn() == nullptr);
  CHECK_THROWS_AS(sum(y).backward(), Error);
  CHECK_FALSE(w.detach().requires_grad());
}

TEST_CASE("autograd: backward through a freed graph is an error, retain_graph allows it") {
  Tensor w = ones({2}, DType::F64);
  w.set_requires_grad(true);
  Tensor l = sum(exp(w));
  l.backward();
  try {
    l.backward();
    FAIL("second backward did not throw");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("freed") != std::string::npos);
  }
  Tensor l2 = sum(exp(w));
  w.set_grad(Tensor());
  l2.backward(Tensor(), /*retain_graph=*/true);
  l2.backward();
  CHECK(w.grad().to_vector()[0] == Approx(2 * std::exp(1.0)));
}

TEST_CASE("autograd: misuse gives clear errors") {
  Tensor w = ones({2, 2}, DType::F64);
  w.set_requires_grad(true);
  Tensor y = mul(w, w);
  // non-scalar without a gradient
  CHECK_THROWS_WITH(y.backward(), Catch::Contains("non-scalar"));
  // gradient of the wrong shape / dtype
  CHECK_THROWS_WITH(y.backward(ones({3})), Catch::Contains("shape"));
  CHECK_THROWS_WITH(y.backward(ones({2, 2}, DType::F32)), Catch::Contains("F32"));
  // marking a non-leaf
  CHECK_THROWS_AS(y.set_requires_grad(false), Error);
  // integer tensors cannot require grad
  Tensor i = zeros({2}, DType::I64);
  CHECK_THROWS_AS(i.set_requires_grad(true), Error);
  // a custom op whose backward returns a wrong-shaped gradient is caught
  Tensor out = empty({2, 2}, DType::F64);
  fill_(out, 1.0);
  record_op("bad_op", {w}, {out}, [](const std::vector<Tensor>&) {
    return std::vector<Tensor>{ones({3}, DType::F64)};
  });
  CHECK_THROWS_WITH(sum(out).backward(), Catch::Contains("bad_op"));
  // a backward returning the wrong number of gradients
  Tensor out2 = ones({1}, DType::F64);
  record_op("short_op", {w, w}, {out2}, [](const std::vector<Tensor>&) {
    return std::vector<Tensor>{Tensor()};
  });
  CHECK_THROWS_WITH(sum(out2).backward(), Catch::Contains("short_op"));
}

TEST_CASE("autograd: a custom op (the model's fused-kernel mechanism) is differentiable") {
  // cube(x) with a hand-written forward and backward, composed with engine ops.
  auto cube = [](const Tensor& x) {
    Tensor y = empty_like(x);
    {
      NoGradGuard ng;
      copy_(y, mul(mul(x, x), x));
    }
    Tensor xs = x.detach();
    record_op("cube", {x}, {y}, [xs](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{mul(g[0], mul_scalar(mul(xs, xs), 3.0))};
    });
    return y;
  };
  Generator gen(5);
  std::string worst = sc::testing::gradcheck(
      [&](const std::vector<Tensor>& x) { return softmax(cube(x[0]), -1); },
      {sc::testing::rand64({3, 4}, gen)});
  INFO(worst);
  CHECK(worst.empty());
}

TEST_CASE("gradcheck: inputs at a kink pass with a one-sided derivative, wrong gradients still fail") {
  // ReLU at 0 and within eps of 0 on both sides, and max pool with ties: kinks inside the
  // finite-difference step
  Tensor x = from_vector({0.0, 4e-7, -3e-7, 0.5, -0.5, 1e-9}, {6}, DType::F64);
  int64_t kinks = 0;
  std::string worst = sc::testing::gradcheck(
      [](const std::vector<Tensor>& t) { return relu(t[0]); }, {x.clone()}, {}, &kinks);
  INFO(worst);
  CHECK(worst.empty());
  CHECK(kinks == 4);
  Tensor tied = from_vector({1, 1, 0.3, 1 + 5e-7, 0.2, 0.1, -1, -1, -1}, {1, 1, 3, 3}, DType::F64);
  worst = sc::testing::gradcheck(
      [](const std::vector<Tensor>& t) { return max_pool2d(t[0], 3, 1, 0); }, {tied}, {}, &kinks);
  INFO(worst);
  CHECK(worst.empty());
  CHECK(kinks >= 2);
  // a gradient 1 % off fails away from the kinks and at them
  auto bad_relu = [](const Tensor& in) {
    Tensor y;
    {
      NoGradGuard ng;
      y = relu(in);
    }
    Tensor xs = in.detach();
    record_op("bad_relu", {in}, {y}, [xs](const std::vector<Tensor>& g) {
      std::vector<double> d = xs.to_vector();
      for (double& e : d) e = e > 0 ? 1.01 : 0.0;
      return std::vector<Tensor>{mul(g[0], from_vector(d, xs.shape(), DType::F64))};
    });
    return y;
  };
  CHECK_FALSE(sc::testing::gradcheck([&](const std::vector<Tensor>& t) { return bad_relu(t[0]); },
                                     {x.clone()})
                  .empty());
  Tensor at_kinks = from_vector({4e-7, -3e-7, 2e-7}, {3}, DType::F64);
  CHECK_FALSE(sc::testing::gradcheck([&](const std::vector<Tensor>& t) { return bad_relu(t[0]); },
                                     {at_kinks})
                  .empty());
}

TEST_CASE("autograd: multi-output op gets zeros for unused outputs") {
  Tensor w = from_vector({1, 2}, {2}, DType::F64);
  w.set_requires_grad(true);
  Tensor a = empty({2}, DType::F64), b = empty({2}, DType::F64);
  fill_(a, 0);
  fill_(b, 0);
  bool saw_zero = false;
  record_op("two_out", {w}, {a, b}, [&saw_zero](const std::vector<Tensor>& g) {
    saw_zero = g[1].defined() && sum(g[1]).item() == 0.0;
    return std::vector<Tensor>{add(g[0], g[1])};
  });
  sum(a).backward();
  CHECK(saw_zero);
  CHECK(w.grad().to_vector() == std::vector<double>{1, 1});
}

TEST_CASE("autograd: diamond graph accumulates both paths") {
  Tensor x = from_vector({0.5, -1.0}, {2}, DType::F64);
  x.set_requires_grad(true);
  Tensor y = exp(x);
  Tensor l = sum(add(mul(y, y), y));  // d/dx = 2 e^{2x} + e^x
  l.backward();
  std::vector<double> g = x.grad().to_vector();
  CHECK(g[0] == Approx(2 * std::exp(1.0) + std::exp(0.5)));
  CHECK(g[1] == Approx(2 * std::exp(-2.0) + std::exp(-1.0)));
}

// engine/grad_ready.h: the call comes once per leaf, after the leaf's last contribution of the
// pass (its .grad() already final then), in the order the walk finishes them; a leaf the pass
// does not reach is not reported, and without a scope nothing is called.
TEST_CASE("autograd: GradReadyScope reports each leaf once, when its gradient is final") {
  Tensor a = from_vector({1, 2}, {2}, DType::F64);  // used twice: by y1 and by the last op
  Tensor b = from_vector({3, 4}, {2}, DType::F64);  // only near the input end of the graph
  Tensor c = from_vector({5, 6}, {2}, DType::F64);  // only in the last op
  Tensor unused = from_vector({7}, {1}, DType::F64);
  for (Tensor* t : {&a, &b, &c, &unused}) t->set_requires_grad(true);
  // loss = sum((a * b) * a + c * a)
  Tensor y1 = mul(a, b);
  Tensor loss = sum(add(mul(y1, a), mul(c, a)));
  std::vector<TensorImpl*> order;
  std::vector<std::vector<double>> grad_at_call;
  {
    GradReadyScope scope([&](TensorImpl& leaf) {
      order.push_back(&leaf);
      grad_at_call.push_back(leaf.grad.to_vector());
    });
    loss.backward(Tensor(), /*retain_graph=*/true);
  }
  REQUIRE(order.size() == 3);
  // each reported once, unused never
  for (Tensor* t : {&a, &b, &c}) CHECK(std::count(order.begin(), order.end(), t->impl()) == 1);
  // c is finished before b (the walk meets the last op first); a not with c, where it also
  // gets a part, but only at y1's node, its last use (with b, in y1's input order)
  const auto pos = [&](const Tensor& t) {
    return std::find(order.begin(), order.end(), t.impl()) - order.begin();
  };
  CHECK(pos(c) < pos(b));
  CHECK(pos(a) > pos(c));
  CHECK(pos(a) == pos(b) - 1);
  // at the call, the gradient is the final one: d/da = 2ab + c, d/db = a^2, d/dc = a
  for (size_t i = 0; i < order.size(); ++i) {
    INFO("leaf " << i);
    CHECK(grad_at_call[i] == order[i]->grad.to_vector());
  }
  CHECK(a.grad().to_vector() == std::vector<double>{2 * 1 * 3 + 5, 2 * 2 * 4 + 6});
  // no scope: nothing is called (the old scope's call would push again)
  loss.backward();
  CHECK(order.size() == 3);
  // a leaf as the root is reported too
  Tensor s = from_vector({2}, {1}, DType::F64);
  s.set_requires_grad(true);
  int calls = 0;
  {
    GradReadyScope scope([&](TensorImpl& leaf) { calls += &leaf == s.impl(); });
    s.backward(ones({1}, DType::F64));
  }
  CHECK(calls == 1);
}
