// Projector and slot predictor: names, shapes, initialisation, float64 gradient checks, and the
// predictor's row mask (= the predictor applied to the selected rows only).
#include <catch2/catch.hpp>
#include <cmath>
#include <set>

#include "test_seed.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "gradcheck.h"
#include "model/heads.h"

using namespace sc;

TEST_CASE("projector and predictor: names, shapes and initialisation", "[heads]") {
  Generator gen(sc::testing::next_seed());
  Projector proj(64, 128, 32, gen);
  SlotPredictor pred(32, 128, 32, gen);
  std::set<std::string> pn, qn;
  for (auto& kv : proj.state_dict()) pn.insert(kv.first);
  for (auto& kv : pred.state_dict()) qn.insert(kv.first);
  const std::set<std::string> expect = {"mlp.0.weight",
                                        "mlp.0.bias",
                                        "mlp.1.weight",
                                        "mlp.1.bias",
                                        "mlp.1.running_mean",
                                        "mlp.1.running_var",
                                        "mlp.1.num_batches_tracked",
                                        "mlp.3.weight",
                                        "mlp.3.bias",
                                        "mlp.4.weight",
                                        "mlp.4.bias",
                                        "mlp.4.running_mean",
                                        "mlp.4.running_var",
                                        "mlp.4.num_batches_tracked",
                                        "mlp.6.weight",
                                        "mlp.6.bias"};
  REQUIRE(pn == expect);
  REQUIRE(qn == expect);
  TensorMap p, q;
  for (auto& kv : proj.state_dict()) p[kv.first] = kv.second;
  for (auto& kv : pred.state_dict()) q[kv.first] = kv.second;
  REQUIRE(p["mlp.0.weight"].shape() == Shape{128, 64, 1, 1});
  REQUIRE(p["mlp.6.weight"].shape() == Shape{32, 128, 1, 1});
  REQUIRE(q["mlp.0.weight"].shape() == Shape{128, 32});
  REQUIRE(q["mlp.6.weight"].shape() == Shape{32, 128});
  for (TensorMap* m : {&p, &q})
    for (const char* w : {"mlp.0.weight", "mlp.3.weight", "mlp.6.weight"}) {
      auto v = (*m)[w].to_vector();
      double s2 = 0;
      for (double x : v) {
        REQUIRE(std::fabs(x) <= 2.0);
        s2 += x * x;
      }
      REQUIRE(std::sqrt(s2 / double(v.size())) == Approx(0.02).epsilon(0.1));
      for (const char* b : {"mlp.0.bias", "mlp.3.bias", "mlp.6.bias", "mlp.1.bias"})
        for (double x : (*m)[b].to_vector()) REQUIRE(x == 0.0);
      for (double x : (*m)["mlp.4.weight"].to_vector()) REQUIRE(x == 1.0);
    }
  Tensor x = randn({2, 64, 3, 3}, gen);
  REQUIRE(proj.forward(x).shape() == Shape{2, 32, 3, 3});
  Tensor y = proj.forward(x.contiguous(MemoryFormat::ChannelsLast));
  REQUIRE(y.is_channels_last());
  REQUIRE(pred.forward(randn({10, 32}, gen)).shape() == Shape{10, 32});
}

TEST_CASE("projector and predictor: float64 gradient checks with parameters", "[heads]") {
  Generator gen(sc::testing::next_seed());
  Projector proj(3, 4, 2, gen, DType::F64);
  SlotPredictor pred(3, 5, 3, gen, DType::F64);
  Tensor mask = from_vector({1, 1, 0, 1, 0, 1, 1}, {7}, DType::U8);
  Tensor maskf = from_vector({1, 1, 0, 1, 0, 1, 1}, {7, 1}, DType::F64);
  for (int which = 0; which < 2; ++which) {
    Module& m = which == 0 ? static_cast<Module&>(proj) : static_cast<Module&>(pred);
    {
      NoGradGuard ng;  // larger weights than 0.02 so that the check is not dominated by eps
      for (auto& kv : m.named_parameters())
        copy_(kv.second, rand_uniform(kv.second.shape(), gen, -1, 1, DType::F64));
    }
    std::vector<Tensor> in = {which == 0 ? sc::testing::rand64({2, 3, 2, 3}, gen)
                                         : sc::testing::rand64({7, 3}, gen)};
    for (auto& kv : m.named_parameters()) in.push_back(kv.second);
    sc::testing::GradcheckOptions o;
    o.seed = gen.next_u64();
    auto f = [&](const std::vector<Tensor>& t) {
      if (which == 0) return proj.forward(t[0]);
      return mul(pred.forward(t[0], mask), maskf);  // unselected rows are "don't care"
    };
    INFO("which " << which);
    REQUIRE(sc::testing::gradcheck(f, in, o) == "");
  }
}

TEST_CASE("predictor with a row mask equals the predictor on the selected rows", "[heads]") {
  Generator gen(sc::testing::next_seed());
  const uint64_t seed = gen.next_u64();
  Generator ga(seed), gb(seed);
  SlotPredictor a(6, 16, 6, ga, DType::F64), b(6, 16, 6, gb, DType::F64);
  std::vector<double> m = {1, 0, 1, 1, 0, 0, 1, 1, 1, 0};
  Tensor mask = from_vector(m, {10}, DType::U8);
  Tensor x = randn({10, 6}, gen, DType::F64);
  Tensor dy = randn({10, 6}, gen, DType::F64);
  Tensor ya = a.forward(x, mask);
  Tensor yb = b.forward(masked_select_rows(x, mask));
  REQUIRE(compare(masked_select_rows(ya, mask), yb, 1e-12, 1e-10).max_scaled <= 1);
  mul(ya, from_vector(m, {10, 1}, DType::F64)).backward(dy);
  yb.backward(masked_select_rows(dy, mask));
  TensorMap gbm;
  for (auto& kv : b.named_parameters()) gbm[kv.first] = kv.second.grad();
  for (auto& kv : a.named_parameters()) {
    INFO(kv.first);
    REQUIRE(compare(kv.second.grad(), gbm[kv.first], 1e-12, 1e-9).max_scaled <= 1);
  }
  auto sa = a.state_dict(), sb = b.state_dict();
  for (size_t i = 0; i < sa.size(); ++i)
    REQUIRE(compare(sa[i].second, sb[i].second, 1e-14, 1e-12).max_scaled <= 1);
}
