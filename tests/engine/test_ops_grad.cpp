// Float64 finite-difference gradient checks: one TEST_CASE per differentiable engine op
// ("gradcheck: <op>"), each on small random shapes, broadcasting and strided views included.
#include <catch2/catch.hpp>

#include "test_seed.h"
#include "gradcheck.h"

using namespace sc;
using sc::testing::gradcheck;
using sc::testing::rand64;
using V = std::vector<Tensor>;

namespace {
Generator& gen() {
  static Generator g(sc::testing::next_seed());
  return g;
}
void check(const std::function<Tensor(const V&)>& f, V inputs,
           sc::testing::GradcheckOptions opt = {}) {
  std::string worst = gradcheck(f, std::move(inputs), opt);
  INFO(worst);
  CHECK(worst.empty());
}
}  // namespace

TEST_CASE("gradcheck: add (broadcast)") {
  check([](const V& x) { return add(x[0], x[1]); }, {rand64({3, 4}, gen()), rand64({4}, gen())});
  check([](const V& x) { return add(x[0], x[1]); },
        {rand64({2, 1, 3}, gen()), rand64({4, 1}, gen())});
}
TEST_CASE("gradcheck: sub (broadcast)") {
  check([](const V& x) { return sub(x[0], x[1]); }, {rand64({3, 1}, gen()), rand64({3, 5}, gen())});
}
TEST_CASE("gradcheck: mul (broadcast)") {
  check([](const V& x) { return mul(x[0], x[1]); }, {rand64({2, 3, 4}, gen()), rand64({3, 1}, gen())});
}
TEST_CASE("gradcheck: div (broadcast)") {
  check([](const V& x) { return div(x[0], x[1]); },
        {rand64({3, 4}, gen()), rand64({1, 4}, gen(), 0.5, 2.0)});
}
TEST_CASE("gradcheck: add_scalar") {
  check([](const V& x) { return add_scalar(x[0], 0.7); }, {rand64({5}, gen())});
}
TEST_CASE("gradcheck: mul_scalar") {
  check([](const V& x) { return mul_scalar(x[0], -1.3); }, {rand64({2, 3}, gen())});
}
TEST_CASE("gradcheck: pow_scalar") {
  check([](const V& x) { return pow_scalar(x[0], 2.5); }, {rand64({7}, gen(), 0.2, 2.0)});
  check([](const V& x) { return pow_scalar(x[0], 3.0); }, {rand64({7}, gen())});
}
TEST_CASE("gradcheck: clamp_min") {
  // keep values away from the kink so that central differences are exact
  Tensor x = rand64({20}, gen(), 0.05, 1.0);
  Tensor s = rand_uniform({20}, gen(), 0, 1, DType::F64);
  std::vector<double> v = x.to_vector(), sv = s.to_vector();
  for (size_t i = 0; i < v.size(); ++i) v[i] = sv[i] < 0.5 ? v[i] : -v[i];
  check([](const V& a) { return clamp_min(a[0], 0.0); }, {from_vector(v, {20}, DType::F64)});
}
TEST_CASE("gradcheck: neg") { check([](const V& x) { return neg(x[0]); }, {rand64({4}, gen())}); }
TEST_CASE("gradcheck: exp") { check([](const V& x) { return exp(x[0]); }, {rand64({4, 2}, gen())}); }
TEST_CASE("gradcheck: log") {
  check([](const V& x) { return log(x[0]); }, {rand64({6}, gen(), 0.3, 3.0)});
}
TEST_CASE("gradcheck: sqrt") {
  check([](const V& x) { return sqrt(x[0]); }, {rand64({6}, gen(), 0.3, 3.0)});
}
TEST_CASE("gradcheck: relu") {
  Tensor x = rand64({30}, gen(), 0.05, 1.0);
  std::vector<double> v = x.to_vector();
  for (size_t i = 0; i < v.size(); i += 2) v[i] = -v[i];
  check([](const V& a) { return relu(a[0]); }, {from_vector(v, {30}, DType::F64)});
}
TEST_CASE("gradcheck: gelu") {
  check([](const V& x) { return gelu(x[0]); }, {rand64({3, 7}, gen(), -4.0, 4.0)});
}
TEST_CASE("gradcheck: sigmoid") {
  check([](const V& x) { return sigmoid(x[0]); }, {rand64({9}, gen(), -4.0, 4.0)});
}
TEST_CASE("gradcheck: tanh") {
  check([](const V& x) { return tanh(x[0]); }, {rand64({9}, gen(), -3.0, 3.0)});
}
TEST_CASE("gradcheck: matmul") {
  check([](const V& x) { return matmul(x[0], x[1]); }, {rand64({3, 4}, gen()), rand64({4, 5}, gen())});
  // batched, batched x shared, shared x batched
  check([](const V& x) { return matmul(x[0], x[1]); },
        {rand64({2, 3, 4}, gen()), rand64({2, 4, 2}, gen())});
  check([](const V& x) { return matmul(x[0], x[1]); }, {rand64({2, 3, 4}, gen()), rand64({4, 3}, gen())});
  check([](const V& x) { return matmul(x[0], x[1]); }, {rand64({3, 4}, gen()), rand64({2, 4, 3}, gen())});
  // transposed views go to GEMM without a copy
  check([](const V& x) { return matmul(transpose(x[0], 0, 1), transpose(x[1], 0, 1)); },
        {rand64({4, 3}, gen()), rand64({5, 4}, gen())});
  // a non-GEMM-able view (stepped slice) is copied first
  check([](const V& x) { return matmul(slice(x[0], 1, 0, 6, 2), x[1]); },
        {rand64({3, 6}, gen()), rand64({3, 2}, gen())});
}
TEST_CASE("gradcheck: linear") {
  check([](const V& x) { return linear(x[0], x[1], x[2]); },
        {rand64({2, 3, 4}, gen()), rand64({5, 4}, gen()), rand64({5}, gen())});
  check([](const V& x) { return linear(x[0], x[1]); }, {rand64({3, 4}, gen()), rand64({2, 4}, gen())});
}
TEST_CASE("gradcheck: sum") {
  check([](const V& x) { return sum(x[0], {1}); }, {rand64({3, 4, 2}, gen())});
  check([](const V& x) { return sum(x[0], {0, 2}, true); }, {rand64({3, 4, 2}, gen())});
  check([](const V& x) { return sum(x[0]); }, {rand64({3, 4}, gen())});
}
TEST_CASE("gradcheck: mean") {
  check([](const V& x) { return mean(x[0], {-1}); }, {rand64({3, 5}, gen())});
  check([](const V& x) { return mean(x[0]); }, {rand64({2, 3, 2}, gen())});
}
TEST_CASE("gradcheck: softmax") {
  check([](const V& x) { return softmax(x[0], -1); }, {rand64({3, 5}, gen(), -3, 3)});
  check([](const V& x) { return softmax(x[0], 1); }, {rand64({2, 4, 3}, gen(), -3, 3)});
}
TEST_CASE("gradcheck: log_softmax") {
  check([](const V& x) { return log_softmax(x[0], -1); }, {rand64({3, 5}, gen(), -3, 3)});
  check([](const V& x) { return log_softmax(x[0], 0); }, {rand64({4, 3}, gen(), -3, 3)});
}
TEST_CASE("gradcheck: l2_normalize") {
  check([](const V& x) { return l2_normalize(x[0], 1); }, {rand64({3, 4, 2}, gen())});
  check([](const V& x) { return l2_normalize(x[0], -1); }, {rand64({5, 3}, gen())});
}
TEST_CASE("gradcheck: reshape") {
  check([](const V& x) { return mul(reshape(x[0], {4, -1}), x[1]); },
        {rand64({2, 6}, gen()), rand64({4, 3}, gen())});
  // reshape of a non-contiguous view copies
  check([](const V& x) { return reshape(transpose(x[0], 0, 1), {-1}); }, {rand64({3, 4}, gen())});
}
TEST_CASE("gradcheck: permute") {
  check([](const V& x) { return mul(permute(x[0], {2, 0, 1}), x[1]); },
        {rand64({2, 3, 4}, gen()), rand64({4, 2, 3}, gen())});
}
TEST_CASE("gradcheck: transpose") {
  check([](const V& x) { return exp(transpose(x[0], 0, 2)); }, {rand64({2, 3, 4}, gen())});
}
TEST_CASE("gradcheck: expand") {
  check([](const V& x) { return mul(expand(x[0], {3, 4}), x[1]); },
        {rand64({1, 4}, gen()), rand64({3, 4}, gen())});
}
TEST_CASE("gradcheck: slice") {
  check([](const V& x) { return slice(x[0], 1, 1, 7, 2); }, {rand64({3, 8}, gen())});
  check([](const V& x) { return slice(x[0], 0, 2, 3); }, {rand64({4, 2}, gen())});
}
TEST_CASE("gradcheck: concat") {
  check([](const V& x) { return concat({x[0], x[1], x[0]}, 1); },
        {rand64({2, 3}, gen()), rand64({2, 1}, gen())});
  check([](const V& x) { return concat({x[0], x[1]}, 0); }, {rand64({1, 3}, gen()), rand64({2, 3}, gen())});
}
TEST_CASE("gradcheck: unsqueeze squeeze flatten") {
  check([](const V& x) { return flatten(squeeze(unsqueeze(x[0], 1), 1), 0, -1); },
        {rand64({2, 3, 2}, gen())});
}
TEST_CASE("gradcheck: masked_select_rows") {
  Tensor mask = from_vector({1, 0, 1, 1, 0}, {5}, DType::U8);
  check([mask](const V& x) { return masked_select_rows(x[0], mask); }, {rand64({5, 3}, gen())});
}
TEST_CASE("gradcheck: index_select_rows") {
  Tensor idx = from_vector({3, 0, 3, 1}, {4}, DType::I64);  // repeats accumulate
  check([idx](const V& x) { return index_select_rows(x[0], idx); }, {rand64({4, 2}, gen())});
}
TEST_CASE("compact_rows_index: ascending positions, then -1 / 0 padding, too few slots throw") {
  // The CPU reference against the definition, on a random mask with every awkward case nearby.
  Generator& g = gen();
  std::vector<double> mv(37);
  for (double& v : mv) v = double(g.next_u64() % 3 == 0);
  const Tensor mask = from_vector(mv, {37}, DType::U8);
  std::vector<double> want;
  for (size_t i = 0; i < mv.size(); ++i)
    if (mv[i] != 0) want.push_back(double(i));
  const int64_t count = int64_t(want.size());
  for (int64_t M : {count, count + 5, int64_t(37)}) {
    INFO("M " << M << ", count " << count);
    const CompactRows r = compact_rows_index(mask, M);
    const std::vector<double> idx = r.index.to_vector(), valid = r.valid.to_vector();
    REQUIRE(int64_t(idx.size()) == M);
    for (int64_t m = 0; m < M; ++m) {
      CHECK(idx[size_t(m)] == (m < count ? want[size_t(m)] : -1.0));
      CHECK(valid[size_t(m)] == (m < count ? 1.0 : 0.0));
    }
  }
  // no row selected, every row selected
  const CompactRows none = compact_rows_index(zeros({9}, DType::U8), 4);
  CHECK(none.index.to_vector() == std::vector<double>(4, -1.0));
  CHECK(none.valid.to_vector() == std::vector<double>(4, 0.0));
  const CompactRows all = compact_rows_index(ones({5}, DType::U8), 5);
  CHECK(all.index.to_vector() == std::vector<double>({0, 1, 2, 3, 4}));
  CHECK(all.valid.to_vector() == std::vector<double>(5, 1.0));
  if (count > 0) {
    CHECK_THROWS_WITH(compact_rows_index(mask, count - 1), Catch::Contains("more than M"));
  }
}
TEST_CASE("gradcheck: gather_rows and scatter_rows (through a compaction)") {
  Generator& g = gen();
  std::vector<double> mv(7);
  for (double& v : mv) v = double(g.next_u64() % 2);
  mv[2] = 1;  // at least one row selected
  mv[5] = 0;  // at most 6, the compaction's M (7 selected rows would be refused)
  const CompactRows r = compact_rows_index(from_vector(mv, {7}, DType::U8), 6);
  check([r](const V& x) { return gather_rows(x[0], r.index, r.valid); }, {rand64({7, 3}, g)});
  check([r](const V& x) { return gather_rows(x[0], r.index, r.valid); }, {rand64({7, 2, 2}, g)});
  check([r](const V& x) { return scatter_rows(x[0], r.index, r.valid, 7); }, {rand64({6, 3}, g)});
  // the round trip the slot predictor takes: compact, a row-wise function, scatter back
  check([r](const V& x) {
    return scatter_rows(mul(gather_rows(x[0], r.index, r.valid), x[1]), r.index, r.valid, 7);
  },
        {rand64({7, 3}, g), rand64({6, 3}, g)});
}
TEST_CASE("gradcheck: cast") {
  // F64 -> F32 -> F64 is linear, so a coarse step is exact up to F32 rounding
  sc::testing::GradcheckOptions opt;
  opt.eps = 1e-2;
  opt.atol = 1e-4;
  opt.rtol = 1e-4;
  check([](const V& x) { return cast(cast(x[0], DType::F32), DType::F64); }, {rand64({6}, gen())},
        opt);
}
TEST_CASE("gradcheck: contiguous and clone") {
  check([](const V& x) { return transpose(x[0], 0, 1).contiguous().clone(); },
        {rand64({3, 2}, gen())});
}
TEST_CASE("gradcheck: a composed expression reuses inputs") {
  // L = softmax(x W) . normalize(x) with x used twice: gradients from both paths accumulate.
  check([](const V& x) {
    return mul(softmax(matmul(x[0], x[1]), -1), l2_normalize(x[0], -1));
  },
        {rand64({4, 3}, gen()), rand64({3, 3}, gen())});
}

// The checker itself: a wrong gradient fails at both steps; rounding noise above atol at eps
// passes on the retry at 10 eps; a kink passes one-sided.
TEST_CASE("gradcheck itself: a wrong gradient fails, rounding noise and a kink pass") {
  Generator g(sc::testing::next_seed());
  // x*x + c*(x - detach(x)): the value is x*x, the analytic gradient 2x + c, the true one 2x
  // (times the cotangent). c = 1e-4 is 5 rtol of a gradient of 2, the largest here.
  for (double c : {1e-4, -1e-4, 1e-2}) {
    INFO("c " << c);
    int64_t kinks = 0, rounded = 0;
    const std::string worst = gradcheck(
        [c](const V& x) { return add(mul(x[0], x[0]), mul_scalar(sub(x[0], x[0].detach()), c)); },
        {rand64({6}, g)}, {}, &kinks, &rounded);
    CHECK_FALSE(worst.empty());
    CHECK(rounded == 0);
  }
  // ((x + 3000) - 3000) - x: zero, with a zero gradient, evaluated with the rounding of x to a
  // multiple of 2^-41 (4.5e-13), which the central difference at eps = 1e-6 turns into up to
  // 2.3e-7 times the cotangent (above atol = 1e-7), at 10 eps into ten times less: the case of a
  // zero gradient behind a batch norm. Fixed values and the fixed cotangent seed, so that the
  // count of retried elements is the same on every run.
  {
    std::vector<double> v(32);
    for (size_t i = 0; i < v.size(); ++i) v[i] = -0.9 + 1.8 * (double(i) + 0.37) / 32.0;
    int64_t kinks = 0, rounded = 0;
    const std::string worst = gradcheck(
        [](const V& x) { return sub(add_scalar(add_scalar(x[0], 3000.0), -3000.0), x[0]); },
        {from_vector(v, {32}, DType::F64)}, {}, &kinks, &rounded);
    INFO(worst);
    CHECK(worst.empty());
    CHECK(rounded > 0);
    CHECK(kinks == 0);
  }
  // relu at exactly 0: the backward picks a side, the central difference averages both.
  {
    int64_t kinks = 0, rounded = 0;
    const std::string worst = gradcheck([](const V& x) { return relu(x[0]); },
                                        {from_vector({0.0, 0.5, -0.5}, {3}, DType::F64)}, {},
                                        &kinks, &rounded);
    INFO(worst);
    CHECK(worst.empty());
    CHECK(kinks == 1);
  }
}
