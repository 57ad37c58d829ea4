// GPU-vs-CPU tests of every engine op (engine/ops.h) and of the CUDA caching allocators.
//
// Each op runs through the front door on CPU reference copies (F64 for F64, F32 for the other
// float types) and on CUDA copies of the same fresh random inputs (drawn in the tested dtype, so
// both sides see the same rounded values; the seed is printed on failure). Every output element
// and every input gradient (from a random cotangent) is compared at the tested dtype's tolerance
// (gpu_test_util.h: F32 1e-5, F64 1e-12, BF16 1e-2, F16 1e-3); allocations are poisoned with NaN
// so an unwritten element fails. Tolerances are widened only where the GPU side rounds more than
// once: reductions over n elements (float accumulation, x sqrt(n)/16 at least 1), and gradients of
// 16-bit types (x4: the backward reuses rounded forward values and rounds each op again).
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <functional>
#include <limits>

#include "engine/autograd.h"
#include "engine/cuda_runtime.h"
#include "engine/ops.h"
#include "gpu_test_util.h"
#include "kernels/check.h"

using namespace sc;
using namespace sc::testing;

namespace {

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

const DType kFloatTypes[] = {DType::F32, DType::F64, DType::BF16, DType::F16};
const DType kAllTypes[] = {DType::F32, DType::F64, DType::BF16, DType::F16, DType::I64, DType::U8};

struct In {
  Shape shape;
  double lo = -1.0, hi = 1.0;
  bool grad = true;
  MemoryFormat fmt = MemoryFormat::Contiguous;
};

// Extra tolerance factors (see the file comment).
struct Opt {
  double tol_scale = 1.0;
  double grad_scale = 1.0;
};

double reduction_scale(int64_t n) { return std::max(1.0, std::sqrt(double(n)) / 16.0); }

// f on CPU reference copies and on CUDA copies of the same inputs; compares the output and the
// gradient of every input marked `grad`.
void check_op(const std::string& name, const std::vector<In>& ins, const Fn& f, DType dt,
              Opt opt = {}) {
  const uint64_t seed = fresh_seed();
  INFO(name << ", dtype " << dtype_name(dt) << ", seed " << seed);
  PoisonGuard poison;
  Generator gen(seed);
  std::vector<Tensor> xc, xg;
  for (const In& in : ins) {
    Twin t = twin_uniform(in.shape, gen, dt, in.lo, in.hi, in.fmt);
    if (in.grad) {
      t.cpu.set_requires_grad(true);
      t.gpu.set_requires_grad(true);
    }
    xc.push_back(t.cpu);
    xg.push_back(t.gpu);
  }
  Tensor yc = f(xc);
  Tensor yg = f(xg);
  REQUIRE(yg.is_cuda());
  const bool float_out = is_floating(yc.dtype());
  CHECK(yg.dtype() == (float_out ? dt : yc.dtype()));
  const Tol tol = (float_out ? dtype_tol(dt) : dtype_tol(yc.dtype())).scaled(opt.tol_scale);
  {
    INFO("forward output");
    SC_CHECK_CLOSE(yg, yc, tol);
  }
  if (!float_out || !yc.requires_grad()) return;
  Twin cot = twin_uniform(yc.shape(), gen, dt);
  yc.backward(cot.cpu);
  yg.backward(cot.gpu);
  const Tol gtol = tol.scaled(opt.grad_scale * (is_16bit(dt) ? 4.0 : 1.0));
  for (size_t i = 0; i < ins.size(); ++i) {
    if (!ins[i].grad) continue;
    INFO("gradient of input " << i);
    REQUIRE(xc[i].grad().defined() == xg[i].grad().defined());
    if (!xg[i].grad().defined()) continue;
    CHECK(xg[i].grad().is_cuda());
    CHECK(xg[i].grad().dtype() == dt);
    SC_CHECK_CLOSE(xg[i].grad(), xc[i].grad(), gtol);
  }
}

void check_all_types(const std::string& name, const std::vector<In>& ins, const Fn& f,
                     Opt opt = {}) {
  for (DType dt : kFloatTypes) check_op(name, ins, f, dt, opt);
}

// Same values on both devices for tensors that are not random floats (indices, masks).
Tensor on(const Tensor& host, const Tensor& like) { return to_device(host, like.device()); }

}  // namespace

// ------------------------------------------------------------------ elementwise
TEST_CASE("gpu ops: binary elementwise ops with broadcasting") {
  struct Case {
    Shape a, b;
  };
  const std::vector<Case> cases = {{{37, 33}, {37, 33}}, {{37, 33}, {33}}, {{5, 1, 7}, {1, 6, 7}},
                                   {{1}, {13}},          {{}, {4, 3}},     {{0, 5}, {5}},
                                   {{1}, {1}},           {{3, 1}, {1, 70}}};
  for (const Case& c : cases) {
    const std::string s = shape_str(c.a) + " with " + shape_str(c.b);
    // The gradient of a broadcast operand sums the rounded terms of every row it was broadcast
    // over (up to 37 here); in 16 bits their rounding adds up like sqrt(37) ~ 6 of one term's,
    // beyond the flat tolerance (fp16 div's gradient was seen 1.27x over it at
    // SLOTCON_TEST_SEED=6935577534449301803). Scale the gradient tolerance by that count.
    Opt o;
    o.grad_scale = std::max(1.0, std::sqrt(double(std::max(c.a.empty() ? 1 : c.a[0],
                                                          c.b.empty() ? 1 : c.b[0]))) / 2.0);
    check_all_types("add " + s, {{c.a}, {c.b}},
                    [](const std::vector<Tensor>& x) { return add(x[0], x[1]); }, o);
    check_all_types("sub " + s, {{c.a}, {c.b}},
                    [](const std::vector<Tensor>& x) { return sub(x[0], x[1]); }, o);
    check_all_types("mul " + s, {{c.a}, {c.b}},
                    [](const std::vector<Tensor>& x) { return mul(x[0], x[1]); }, o);
    check_all_types("div " + s, {{c.a}, {c.b, 0.5, 2.0}},
                    [](const std::vector<Tensor>& x) { return div(x[0], x[1]); }, o);
  }
}

TEST_CASE("gpu ops: elementwise ops on NHWC (channels-last) inputs") {
  const MemoryFormat cl = MemoryFormat::ChannelsLast;
  const Shape s = {2, 5, 3, 7};
  check_all_types("add NHWC + NHWC", {{s, -1, 1, true, cl}, {s, -1, 1, true, cl}},
                  [](const std::vector<Tensor>& x) { return add(x[0], x[1]); });
  check_all_types("mul NHWC * NCHW", {{s, -1, 1, true, cl}, {s}},
                  [](const std::vector<Tensor>& x) { return mul(x[0], x[1]); });
  check_all_types("add NHWC + per-channel bias", {{s, -1, 1, true, cl}, {{5, 1, 1}}},
                  [](const std::vector<Tensor>& x) { return add(x[0], x[1]); });
  check_all_types("gelu NHWC", {{s, -3, 3, true, cl}},
                  [](const std::vector<Tensor>& x) { return gelu(x[0]); });
  check_all_types("relu NHWC", {{s, -1, 1, true, cl}},
                  [](const std::vector<Tensor>& x) { return relu(x[0]); });
  // Outputs keep the input's layout.
  for (DType dt : kFloatTypes) {
    Generator gen(fresh_seed());
    Twin x = twin_uniform(s, gen, dt, -1, 1, cl);
    REQUIRE(x.gpu.is_channels_last());
    CHECK(gelu(x.gpu).is_channels_last());
    CHECK(add(x.gpu, x.gpu).is_channels_last());
  }
}

TEST_CASE("gpu ops: unary and scalar ops") {
  struct Case {
    const char* name;
    double lo, hi;
    std::function<Tensor(const Tensor&)> op;
  };
  // Scalars are exactly representable in every float type so both sides compare the same number.
  const std::vector<Case> cases = {
      {"neg", -1, 1, [](const Tensor& x) { return neg(x); }},
      {"exp", -2, 2, [](const Tensor& x) { return exp(x); }},
      {"log", 0.2, 3, [](const Tensor& x) { return log(x); }},
      {"sqrt", 0.2, 3, [](const Tensor& x) { return sqrt(x); }},
      {"relu", -1, 1, [](const Tensor& x) { return relu(x); }},
      {"gelu", -4, 4, [](const Tensor& x) { return gelu(x); }},
      {"sigmoid", -5, 5, [](const Tensor& x) { return sigmoid(x); }},
      {"tanh", -3, 3, [](const Tensor& x) { return tanh(x); }},
      {"add_scalar", -1, 1, [](const Tensor& x) { return add_scalar(x, 0.75); }},
      {"mul_scalar", -1, 1, [](const Tensor& x) { return mul_scalar(x, -1.5); }},
      {"pow_scalar 2.5", 0.2, 2, [](const Tensor& x) { return pow_scalar(x, 2.5); }},
      {"pow_scalar 3", -1, 1, [](const Tensor& x) { return pow_scalar(x, 3.0); }},
      {"clamp_min", -1, 1, [](const Tensor& x) { return clamp_min(x, -0.25); }},
  };
  for (const Case& c : cases) {
    auto op = c.op;
    for (const Shape& s : {Shape{67, 19}, Shape{1}, Shape{}, Shape{0, 3}}) {
      check_all_types(std::string(c.name) + " " + shape_str(s), {{s, c.lo, c.hi}},
                      [op](const std::vector<Tensor>& x) { return op(x[0]); });
    }
    // A transposed (strided) input.
    check_all_types(std::string(c.name) + " of a transposed view", {{{19, 67}, c.lo, c.hi}},
                    [op](const std::vector<Tensor>& x) { return op(transpose(x[0], 0, 1)); });
  }
}

// ------------------------------------------------------------------ linear algebra
TEST_CASE("gpu ops: matmul (2-D, batched, transposed views, empty)") {
  using V = std::vector<Tensor>;
  auto mm = [](const V& x) { return matmul(x[0], x[1]); };
  check_all_types("matmul 2-D", {{{37, 45}}, {{45, 29}}}, mm, {reduction_scale(45)});
  check_all_types("matmul 2-D long k", {{{64, 256}}, {{256, 48}}}, mm, {reduction_scale(256)});
  check_all_types("matmul 1x1", {{{1, 1}}, {{1, 1}}}, mm);
  check_all_types("matmul 3-D", {{{3, 17, 33}}, {{3, 33, 20}}}, mm, {reduction_scale(33)});
  check_all_types("matmul 3-D @ 2-D", {{{4, 9, 16}}, {{16, 11}}}, mm, {reduction_scale(16)});
  check_all_types("matmul 2-D @ 3-D", {{{9, 16}}, {{4, 16, 11}}}, mm, {reduction_scale(16)});
  check_all_types("matmul A^T B", {{{45, 37}}, {{45, 29}}},
                  [](const V& x) { return matmul(transpose(x[0], 0, 1), x[1]); },
                  {reduction_scale(45)});
  check_all_types("matmul A B^T", {{{37, 45}}, {{29, 45}}},
                  [](const V& x) { return matmul(x[0], transpose(x[1], 0, 1)); },
                  {reduction_scale(45)});
  check_all_types("matmul A^T B^T", {{{45, 37}}, {{29, 45}}},
                  [](const V& x) { return matmul(transpose(x[0], 0, 1), transpose(x[1], 0, 1)); },
                  {reduction_scale(45)});
  check_all_types("matmul with a permuted batch", {{{17, 3, 33}}, {{3, 33, 20}}},
                  [](const V& x) {
                    return matmul(permute(x[0], {1, 0, 2}), x[1]);
                  },
                  {reduction_scale(33)});
  check_all_types("matmul of a column slice", {{{12, 40}}, {{20, 7}}},
                  [](const V& x) { return matmul(slice(x[0], 1, 10, 30), x[1]); },
                  {reduction_scale(20)});
  check_all_types("matmul 0 rows", {{{0, 8}}, {{8, 5}}}, mm);
  check_all_types("matmul k = 0", {{{3, 0}}, {{0, 4}}}, mm);
}

TEST_CASE("gpu ops: linear") {
  using V = std::vector<Tensor>;
  check_all_types("linear 3-D input with bias", {{{5, 7, 24}}, {{13, 24}}, {{13}}},
                  [](const V& x) { return linear(x[0], x[1], x[2]); }, {reduction_scale(35)});
  check_all_types("linear 2-D input without bias", {{{9, 24}}, {{13, 24}}},
                  [](const V& x) { return linear(x[0], x[1]); }, {reduction_scale(24)});
}

// ------------------------------------------------------------------ reductions
TEST_CASE("gpu ops: sum and mean over axes") {
  using V = std::vector<Tensor>;
  const Shape s = {6, 7, 5};
  check_all_types("sum dim 0", {{s}}, [](const V& x) { return sum(x[0], {0}); });
  check_all_types("sum dim 1 keepdim", {{s}}, [](const V& x) { return sum(x[0], {1}, true); });
  check_all_types("sum dims 0,2", {{s}}, [](const V& x) { return sum(x[0], {0, 2}); });
  check_all_types("sum all", {{s}}, [](const V& x) { return sum(x[0]); }, {reduction_scale(210)});
  check_all_types("mean dim -1", {{s}}, [](const V& x) { return mean(x[0], {-1}); });
  check_all_types("mean all", {{s}}, [](const V& x) { return mean(x[0]); }, {reduction_scale(210)});
  // Long rows take the block-per-row kernel.
  check_all_types("sum of long rows", {{{3, 5000}}}, [](const V& x) { return sum(x[0], {1}); },
                  {reduction_scale(5000)});
  check_all_types("sum of a long column", {{{3001, 2}}}, [](const V& x) { return sum(x[0], {0}); },
                  {reduction_scale(3001)});
  // Few rows of >= 16384 take the split kernels (partial sums per chunk, then per row), whatever
  // the length's remainder: 3 rows of 40,003 (4 chunks of 10,001) and the whole of 100,003
  // elements as one row (12 chunks, the last one short).
  check_all_types("sum of few very long rows (split)", {{{3, 40003}}},
                  [](const V& x) { return sum(x[0], {1}); }, {reduction_scale(40003)});
  check_all_types("sum of everything (split)", {{{100003}}}, [](const V& x) { return sum(x[0]); },
                  {reduction_scale(100003)});
  check_all_types("sum of a transposed view", {{{33, 40}}},
                  [](const V& x) { return sum(transpose(x[0], 0, 1), {1}); });
  check_all_types("sum one element", {{{1}}}, [](const V& x) { return sum(x[0]); });
  check_all_types("sum over an empty dim", {{{0, 5}}}, [](const V& x) { return sum(x[0], {0}); });
  check_all_types("sum of zero rows", {{{0, 5}}}, [](const V& x) { return sum(x[0], {1}); });
  check_all_types("sum of NHWC", {{{2, 5, 3, 4}, -1, 1, true, MemoryFormat::ChannelsLast}},
                  [](const V& x) {
                    return sum(x[0], {0, 2, 3});
                  });
}

TEST_CASE("gpu ops: argmax") {
  using V = std::vector<Tensor>;
  check_all_types("argmax dim 1", {{{33, 70}, -1, 1, false}},
                  [](const V& x) { return argmax(x[0], 1); });
  check_all_types("argmax dim 0 keepdim", {{{33, 70}, -1, 1, false}},
                  [](const V& x) { return argmax(x[0], 0, true); });
  check_all_types("argmax of long rows", {{{4, 3000}, -1, 1, false}},
                  [](const V& x) { return argmax(x[0], -1); });
  check_all_types("argmax single column", {{{5, 1}, -1, 1, false}},
                  [](const V& x) { return argmax(x[0], 1); });
  // Ties go to the first maximum; a NaN wins over every number (the first NaN).
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = HUGE_VAL;
  const std::vector<double> v = {1, 3, 3, 2, nan, 5, nan, 1, -inf, -inf, -inf, -inf, 0, 0, 7, nan};
  for (DType dt : kFloatTypes) {
    INFO(dtype_name(dt));
    Tensor h = from_vector(v, {4, 4}, dt);
    Tensor got = argmax(h.to(Device::cuda(0)), 1);
    CHECK(got.to_vector() == std::vector<double>({1, 0, 0, 3}));
    CHECK(argmax(cast(h, ref_dtype(dt)), 1).to_vector() == got.to_vector());
  }
}

// ------------------------------------------------------------------ softmax / normalise
TEST_CASE("gpu ops: softmax and log_softmax") {
  using V = std::vector<Tensor>;
  struct Case {
    Shape s;
    int dim;
    double range;
  };
  const std::vector<Case> cases = {{{37, 50}, 1, 3},   {{37, 50}, 0, 3},   {{4, 9, 6}, 1, 3},
                                   {{4, 3000}, -1, 3}, {{13, 100}, 1, 30},  // peaky logits
                                   {{1, 1}, 1, 3},     {{0, 7}, 1, 3},     {{5, 2000}, 1, 30}};
  for (const Case& c : cases) {
    const int dim = c.dim;
    const std::string s =
        shape_str(c.s) + " dim " + std::to_string(dim) + " range " + std::to_string(c.range);
    const Opt opt{1.0, reduction_scale(c.s[size_t(dim < 0 ? dim + int(c.s.size()) : dim)])};
    check_all_types(
        "softmax " + s, {{c.s, -c.range, c.range}},
        [dim](const V& x) { return softmax(x[0], dim); }, opt);
    check_all_types(
        "log_softmax " + s, {{c.s, -c.range, c.range}},
        [dim](const V& x) { return log_softmax(x[0], dim); }, opt);
  }
}

TEST_CASE("gpu ops: l2_normalize") {
  using V = std::vector<Tensor>;
  check_all_types("l2_normalize dim 1", {{{37, 64}}},
                  [](const V& x) { return l2_normalize(x[0], 1); });
  check_all_types("l2_normalize dim 0", {{{64, 37}}},
                  [](const V& x) { return l2_normalize(x[0], 0); });
  check_all_types("l2_normalize long rows", {{{3, 2000}}},
                  [](const V& x) { return l2_normalize(x[0], -1); }, {1.0, reduction_scale(2000)});
  check_all_types("l2_normalize NHWC channels",
                  {{{2, 8, 3, 5}, -1, 1, true, MemoryFormat::ChannelsLast}},
                  [](const V& x) { return l2_normalize(x[0], 1); });
  // Every row's norm is below eps (at most sqrt(8) * 0.1 < 0.5): y = x / eps, dx = g / eps.
  check_all_types("l2_normalize below eps", {{{6, 8}, -0.1, 0.1}},
                  [](const V& x) { return l2_normalize(x[0], 1, 0.5); });
  // A zero row normalises to zeros.
  check_all_types("l2_normalize with a zero row", {{{4, 8}}}, [](const V& x) {
    return l2_normalize(concat({x[0], zeros({1, 8}, x[0].dtype(), x[0].device())}, 0), 1);
  });
}

// ------------------------------------------------------------------ shape ops
TEST_CASE("gpu ops: reshape, permute, transpose, expand, slice, concat") {
  using V = std::vector<Tensor>;
  check_all_types("reshape of a transposed view", {{{6, 10}}}, [](const V& x) {
    return reshape(transpose(x[0], 0, 1), {5, 12});
  });
  check_all_types("permute 4-D then contiguous", {{{3, 4, 5, 6}}}, [](const V& x) {
    return permute(x[0], {2, 0, 3, 1}).contiguous();
  });
  check_all_types("NHWC to contiguous", {{{2, 5, 3, 7}, -1, 1, true, MemoryFormat::ChannelsLast}},
                  [](const V& x) { return x[0].contiguous(); });
  check_all_types("contiguous to NHWC", {{{2, 5, 3, 7}}},
                  [](const V& x) { return x[0].contiguous(MemoryFormat::ChannelsLast); });
  check_all_types("expand then mul", {{{1, 7}}, {{9, 7}}}, [](const V& x) {
    return mul(expand(x[0], {9, 7}), x[1]);
  });
  check_all_types("slice with a step", {{{20, 9}}},
                  [](const V& x) { return slice(x[0], 0, 3, 17, 3).contiguous(); });
  check_all_types("slice of columns times a tensor", {{{8, 30}}, {{8, 11}}},
                  [](const V& x) { return mul(slice(x[0], 1, 4, 15), x[1]); });
  check_all_types("concat dim 0", {{{3, 5}}, {{4, 5}}}, [](const V& x) {
    return concat({x[0], x[1]}, 0);
  });
  check_all_types("concat dim 1", {{{3, 2}}, {{3, 5}}, {{3, 1}}}, [](const V& x) {
    return concat({x[0], x[1], x[2]}, 1);
  });
  check_all_types("concat NHWC channels",
                  {{{2, 3, 4, 5}, -1, 1, true, MemoryFormat::ChannelsLast}, {{2, 6, 4, 5}}},
                  [](const V& x) {
                    return concat({x[0], x[1]}, 1);
                  });
  check_all_types("unsqueeze, squeeze, flatten of a transposed view", {{{4, 6}}}, [](const V& x) {
    return flatten(squeeze(unsqueeze(transpose(x[0], 0, 1), 1), 1));
  });
}

// ------------------------------------------------------------------ row selection
TEST_CASE("gpu ops: index_select_rows and masked_select_rows") {
  using V = std::vector<Tensor>;
  const uint64_t seed = fresh_seed();
  INFO("index seed " << seed);
  Generator gen(seed);
  // Repeated indices exercise the atomic accumulation of the backward (index_add_rows).
  std::vector<double> iv(40);
  for (double& v : iv) v = double(gen.next_u64() % 13);
  Tensor idx = from_vector(iv, {40}, DType::I64);
  check_all_types("index_select_rows with repeats", {{{13, 6}}},
                  [idx](const V& x) { return index_select_rows(x[0], on(idx, x[0])); });
  check_all_types("index_select_rows 3-D rows", {{{13, 3, 4}}},
                  [idx](const V& x) { return index_select_rows(x[0], on(idx, x[0])); });
  Tensor none = from_vector({}, {0}, DType::I64);
  check_all_types("index_select_rows no index", {{{13, 6}}},
                  [none](const V& x) { return index_select_rows(x[0], on(none, x[0])); });

  std::vector<double> mv(17);
  for (double& v : mv) v = double(gen.next_u64() % 2);
  Tensor mask = from_vector(mv, {17}, DType::U8);
  check_all_types("masked_select_rows", {{{17, 5}}},
                  [mask](const V& x) { return masked_select_rows(x[0], on(mask, x[0])); });
  Tensor empty_mask = zeros({17}, DType::U8);
  check_all_types("masked_select_rows all false", {{{17, 5}}}, [empty_mask](const V& x) {
    return masked_select_rows(x[0], on(empty_mask, x[0]));
  });

  // An index out of range is found on the device and reported at the next synchronisation.
  {
    Tensor x = randn({5, 3}, gen, DType::F32, Device::cuda(0));
    Tensor bad = from_vector({1, 7, 2}, {3}, DType::I64, Device::cuda(0));
    CHECK_THROWS_WITH(index_select_rows(x, bad).to_vector(), Catch::Contains("out of range"));
    // The error is reported once; the device keeps working.
    Tensor good = from_vector({4, 0}, {2}, DType::I64, Device::cuda(0));
    CHECK(index_select_rows(x, good).to_vector().size() == 6);
  }
}

TEST_CASE("gpu ops: compact_rows_index, gather_rows and scatter_rows") {
  using V = std::vector<Tensor>;
  const uint64_t seed = fresh_seed();
  INFO("mask seed " << seed);
  Generator gen(seed);
  PoisonGuard poison;
  // Sizes around the 1024-thread block (not multiples of it, one chunk per thread and more),
  // densities 0 (no row), 1 (every row) and in between; M exactly the count, and more.
  for (int64_t n : {int64_t(1), int64_t(1000), int64_t(1025), int64_t(3001)}) {
    for (int density : {0, 1, 2, 4}) {  // selected with probability 0, 1, 1/2, 1/4
      std::vector<double> mv(static_cast<size_t>(n));
      for (double& v : mv)
        v = density == 0 ? 0.0 : density == 1 ? 1.0 : double(gen.next_u64() % density == 0);
      const Tensor mask = from_vector(mv, {n}, DType::U8);
      int64_t count = 0;
      for (double v : mv) count += v != 0;
      for (int64_t M : {count, std::min(n, count + 7), n}) {
        INFO("n " << n << ", density " << density << ", count " << count << ", M " << M);
        const CompactRows rc = compact_rows_index(mask, M);
        const CompactRows rg = compact_rows_index(to_device(mask, Device::cuda(0)), M);
        REQUIRE(rg.index.is_cuda());
        CHECK(rg.index.to_vector() == rc.index.to_vector());
        CHECK(rg.valid.to_vector() == rc.valid.to_vector());
      }
    }
  }
  // The gather / scatter pair through a compaction, every float type, gradients included.
  std::vector<double> mv(131);
  for (double& v : mv) v = double(gen.next_u64() % 3 == 0);
  const CompactRows r = compact_rows_index(from_vector(mv, {131}, DType::U8), 70);
  check_all_types("gather_rows", {{{131, 6}}}, [r](const V& x) {
    return gather_rows(x[0], on(r.index, x[0]), on(r.valid, x[0]));
  });
  check_all_types("scatter_rows 3-D rows", {{{70, 3, 2}}}, [r](const V& x) {
    return scatter_rows(x[0], on(r.index, x[0]), on(r.valid, x[0]), 131);
  });
  const CompactRows none = compact_rows_index(zeros({131}, DType::U8), 70);
  check_all_types("scatter_rows no valid row", {{{70, 4}}}, [none](const V& x) {
    return scatter_rows(x[0], on(none.index, x[0]), on(none.valid, x[0]), 131);
  });
  // More selected rows than slots cannot happen by construction where the op is used; if it does,
  // the device reports it at the next synchronisation, and keeps working.
  {
    const Tensor full = ones({2000}, DType::U8, Device::cuda(0));
    CHECK_THROWS_WITH(compact_rows_index(full, 1500).index.to_vector(),
                      Catch::Contains("out of range [0, 1500)"));
    CHECK(compact_rows_index(full, 2000).valid.to_vector() == std::vector<double>(2000, 1.0));
  }
}

// ------------------------------------------------------------------ casts, comparisons
TEST_CASE("gpu ops: cast between all dtypes") {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  PoisonGuard poison;
  Generator gen(seed);
  for (DType from : kAllTypes) {
    for (DType to : kAllTypes) {
      INFO(dtype_name(from) << " -> " << dtype_name(to));
      // Non-negative values that every type holds (truncation to integers included), and for
      // float-to-float casts values of both signs.
      for (double lo : {0.0, -3.0}) {
        if (lo < 0 && (!is_floating(from) || !is_floating(to))) continue;
        Tensor h = rand_uniform({7, 9}, gen, lo, lo < 0 ? 3.0 : 250.0, from);
        Tensor ref = cast(h, to);
        Tensor hg = h.to(Device::cuda(0));
        SC_CHECK_CLOSE(cast(hg, to), ref, dtype_tol(DType::I64));  // bit-exact conversions
        // From a strided view.
        SC_CHECK_CLOSE(cast(transpose(hg, 0, 1), to), cast(transpose(h, 0, 1), to),
                       dtype_tol(DType::I64));
        if (is_floating(from) && is_floating(to) && from != to) {
          Tensor x = hg.detach();
          x.set_requires_grad(true);
          Tensor cot = rand_uniform({7, 9}, gen, -1, 1, to);
          cast(x, to).backward(cot.to(Device::cuda(0)));
          REQUIRE(x.grad().defined());
          CHECK(x.grad().dtype() == from);
          SC_CHECK_CLOSE(x.grad(), cast(cot, from), dtype_tol(DType::I64));
        }
      }
    }
  }
}

TEST_CASE("gpu ops: equal_mask") {
  using V = std::vector<Tensor>;
  check_all_types("equal_mask of x and clamp_min(x, 0)", {{{9, 13}, -1, 1, false}},
                  [](const V& x) { return equal_mask(x[0], clamp_min(x[0], 0.0)); });
  check_all_types("equal_mask broadcast against a row", {{{9, 13}, -1, 1, false}},
                  [](const V& x) { return equal_mask(x[0], slice(x[0], 0, 2, 3)); });
  check_all_types("equal_mask of I64", {{{9, 13}, -1, 1, false}, {{9, 13}, -1, 1, false}},
                  [](const V& x) { return equal_mask(argmax(x[0], 1), argmax(x[1], 1)); });
}

// ------------------------------------------------------------------ in-place
TEST_CASE("gpu ops: copy_, fill_, add_, axpby_, mul_") {
  for (DType dt : kFloatTypes) {
    const uint64_t seed = fresh_seed();
    INFO(dtype_name(dt) << ", seed " << seed);
    PoisonGuard poison;
    Generator gen(seed);
    Twin d = twin_uniform({7, 9}, gen, dt);
    Tensor dc = d.cpu, dg = d.gpu;
    // fill_ on a strided view (every other row).
    Tensor vc = slice(dc, 0, 1, 7, 2), vg = slice(dg, 0, 1, 7, 2);
    fill_(vc, 0.625);
    fill_(vg, 0.625);
    // copy_ from F64 into a transposed view (strided destination, dtype conversion).
    Tensor src = rand_uniform({9, 7}, gen, -2, 2, DType::F64);
    Tensor tc = transpose(dc, 0, 1), tg = transpose(dg, 0, 1);
    Tensor sub_c = slice(tc, 1, 0, 3), sub_g = slice(tg, 1, 0, 3);
    copy_(sub_c, slice(src, 1, 0, 3));
    copy_(sub_g, slice(src.to(Device::cuda(0)), 1, 0, 3));
    // copy_ from the host straight into a strided device view.
    Tensor col_c = slice(dc, 1, 8, 9), col_g = slice(dg, 1, 8, 9);
    Tensor col_src = rand_uniform({7, 1}, gen, -1, 1, DType::F32);
    copy_(col_c, col_src);
    copy_(col_g, col_src);
    // add_ with a broadcast row, axpby_, mul_.
    Twin b = twin_uniform({9}, gen, dt);
    add_(dc, b.cpu, 0.5);
    add_(dg, b.gpu, 0.5);
    Twin o = twin_uniform({7, 9}, gen, dt);
    axpby_(dc, 0.875, o.cpu, 0.125);
    axpby_(dg, 0.875, o.gpu, 0.125);
    mul_(dc, -2.0);
    mul_(dg, -2.0);
    SC_CHECK_CLOSE(dg, dc, dtype_tol(dt).scaled(is_16bit(dt) ? 4.0 : 2.0));
    // Device -> host into a strided host view.
    Tensor host = zeros({9, 7}, ref_dtype(dt));
    Tensor host_t = transpose(host, 0, 1);
    copy_(host_t, dg);
    SC_CHECK_CLOSE(host_t, dg, dtype_tol(dt));
    // fill_ of the whole tensor (the memset path for 0).
    fill_(dg, 0.0);
    SC_CHECK_CLOSE(dg, zeros({7, 9}, ref_dtype(dt)), dtype_tol(DType::I64));
  }
}

// ------------------------------------------------------------------ a small network
TEST_CASE("gpu ops: gradients through a small network") {
  using V = std::vector<Tensor>;
  // x (6, 5, 16) -> linear 16->24 -> gelu -> linear 24->10 -> log_softmax -> l2-normalised
  // features mixed in; every parameter's gradient is compared. Several roundings per value on
  // the 16-bit side, hence the wider tolerance.
  check_all_types("mlp", {{{6, 5, 16}}, {{24, 16}}, {{24}}, {{10, 24}}, {{10}}},
                  [](const V& x) {
                    Tensor h = gelu(linear(x[0], x[1], x[2]));
                    Tensor z = linear(h, x[3], x[4]);
                    Tensor p = log_softmax(z, -1);
                    Tensor q = l2_normalize(z, -1);
                    return mean(mul(p, q), {1});
                  },
                  {4.0, 2.0});
}

// ------------------------------------------------------------------ allocators
TEST_CASE("gpu allocator: a repeated step makes no new cudaMalloc calls") {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  const Device dev = Device::cuda(0);
  Tensor w = randn({48, 40}, gen, DType::F32, dev);
  w.set_requires_grad(true);
  auto step = [&]() {
    Tensor x = randn({100, 48}, gen, DType::F32, dev);
    Tensor y = log_softmax(matmul(x, w), 1);
    Tensor loss = mean(mul(y, y));
    loss.backward();
    add_(w, w.grad(), -1e-3);  // an SGD-like in-place update
    w.set_grad(Tensor());
    return loss.item();
  };
  step();
  step();
  const AllocatorStats s0 = cuda_allocator_stats(0);
  for (int i = 0; i < 3; ++i) step();
  const AllocatorStats s1 = cuda_allocator_stats(0);
  CHECK(s1.device_malloc_calls == s0.device_malloc_calls);
  CHECK(s1.device_free_calls == s0.device_free_calls);
  CHECK(s1.allocated_bytes == s0.allocated_bytes);
  CHECK(s1.reserved_bytes >= s1.allocated_bytes);
  CHECK(s1.peak_allocated_bytes >= s1.allocated_bytes);
}

TEST_CASE("gpu allocator: freed blocks are reused, empty_cache releases them") {
  const Device dev = Device::cuda(0);
  const AllocatorStats base = cuda_allocator_stats(0);
  {
    Tensor a = empty({1000}, DType::F32, dev);
    Tensor b = empty({3, 1 << 20}, DType::F32, dev);  // a large (12 MiB) block
    const AllocatorStats s = cuda_allocator_stats(0);
    CHECK(s.allocated_bytes >= base.allocated_bytes + 4000 + (size_t(12) << 20));
    CHECK(s.peak_allocated_bytes >= s.allocated_bytes);
  }
  const AllocatorStats after_free = cuda_allocator_stats(0);
  CHECK(after_free.allocated_bytes == base.allocated_bytes);
  {
    Tensor a = empty({1000}, DType::F32, dev);
    Tensor b = empty({3, 1 << 20}, DType::F32, dev);
    CHECK(cuda_allocator_stats(0).device_malloc_calls == after_free.device_malloc_calls);
  }
  cuda_synchronize(0);
  cuda_empty_cache();
  const AllocatorStats emptied = cuda_allocator_stats(0);
  CHECK(emptied.device_free_calls > after_free.device_free_calls);
  CHECK(emptied.reserved_bytes + (size_t(12) << 20) <= after_free.reserved_bytes);
  CHECK(emptied.allocated_bytes == base.allocated_bytes);
  // Still usable afterwards.
  Tensor c = full({5}, 2.0, DType::F32, dev);
  CHECK(sum(c).item() == 10.0);
}

TEST_CASE("gpu allocator: out of memory is a clear sc::Error and leaves the allocator usable") {
  const Device dev = Device::cuda(0);
  // 2^50 bytes (1 PiB): no device has that much.
  CHECK_THROWS_WITH(empty({int64_t(1) << 50}, DType::U8, dev), Catch::Contains("out of memory"));
  Tensor ok = full({7}, 1.5, DType::F32, dev);
  CHECK(sum(ok).item() == 10.5);
}

TEST_CASE("gpu allocator: pinned host memory") {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  const AllocatorStats p0 = pinned_allocator_stats();
  Tensor h = randn({257, 33}, gen, DType::F32);
  {
    Tensor p = h.pin_memory();
    CHECK(p.is_pinned());
    CHECK(p.device().is_cpu());
    CHECK(pinned_allocator_stats().allocated_bytes >= p0.allocated_bytes + 257 * 33 * 4);
    Tensor g = p.to(Device::cuda(0));
    Tensor back = g.to(Device::cpu());
    SC_CHECK_CLOSE(back, h, dtype_tol(DType::I64));  // bit-exact round trip
    // Device -> pinned host.
    Tensor p2 = zeros({257, 33}).pin_memory();
    copy_(p2, g);
    SC_CHECK_CLOSE(p2, h, dtype_tol(DType::I64));
  }
  const AllocatorStats p1 = pinned_allocator_stats();
  CHECK(p1.allocated_bytes == p0.allocated_bytes);
  CHECK(p1.device_malloc_calls > p0.device_malloc_calls);
  // Once the copies are done, the same request reuses the cached buffer.
  cuda_synchronize(0);
  {
    Tensor p = h.pin_memory();
    CHECK(pinned_allocator_stats().device_malloc_calls == p1.device_malloc_calls);
  }
}

TEST_CASE("gpu ops: matmul under a MatmulTF32Scope runs F32 products in TF32, nothing else") {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  const Tensor a = rand_uniform({33, 64}, gen, -1.0, 1.0), b = rand_uniform({64, 17}, gen, -1.0, 1.0);
  const Tensor want = matmul(a, b);  // the CPU: exact F32 products
  const Tensor da = to_device(a, Device::cuda(0)), db = to_device(b, Device::cuda(0));
  auto rel_err = [&](const Tensor& got) {
    const std::vector<double> g = got.to(Device::cpu()).to_vector(), w = want.to_vector();
    double e = 0;
    for (size_t i = 0; i < g.size(); ++i) e = std::max(e, std::fabs(g[i] - w[i]));
    return e / 8.0;  // |products| <= 1, 64 terms: sums of order 8
  };
  CHECK(!matmul_tf32());
  kernels::start_trace();
  double exact = 0, tf32 = 0;
  {
    MatmulTF32Scope on(true);
    CHECK(matmul_tf32());
    tf32 = rel_err(matmul(da, db));
    {
      MatmulTF32Scope off(false);
      CHECK(!matmul_tf32());
    }
    CHECK(matmul_tf32());
    (void)matmul(cast(da, DType::F64), cast(db, DType::F64));  // F64: never TF32
  }
  CHECK(!matmul_tf32());
  exact = rel_err(matmul(da, db));
  const std::vector<kernels::IssueRecord> recs = kernels::stop_trace();
  std::vector<kernels::Unit> units;
  for (const auto& r : recs)
    if (r.kind == kernels::IssueKind::Library) units.push_back(r.unit);
  CHECK(units == std::vector<kernels::Unit>{kernels::Unit::TF32, kernels::Unit::FP64,
                                            kernels::Unit::FP32});
  // TF32 rounds each operand to 10 mantissa bits (relative 2^-11): visibly coarser than F32,
  // within the TF32 bound
  INFO("exact " << exact << ", tf32 " << tf32);
  CHECK(exact < 1e-6);
  CHECK(tf32 > 1e-5);
  CHECK(tf32 < 4e-3);
}

// The measured phase timing (engine/cuda_runtime.h) that bench_train_step prints beside the cost
// model's phases: one entry per label in first-seen order, one interval per entry into it, "" for
// the time outside any label, and the time where the work is (on the card the device's; on the
// emulator, which runs each launch as it is issued, the host's).
TEST_CASE("gpu phase timing: one entry per label, its intervals, the time where the work is",
          "[gpu]") {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  Tensor a = randn({384, 384}, gen, DType::F32).to(Device::cuda(0));
  Tensor s = randn({8}, gen, DType::F32).to(Device::cuda(0));
  cuda_synchronize(0);
  start_phase_timing();
  Tensor b;
  {
    DevicePhase p("heavy");
    b = a;
    for (int i = 0; i < 6; ++i) b = matmul(b, a);
  }
  {
    DevicePhase p("light");
    Tensor t = add(s, s);
    {
      DevicePhase q("heavy");
      b = matmul(b, a);
    }
  }
  const std::vector<PhaseTime> t = stop_phase_timing();
  REQUIRE(t.size() == 3);
  CHECK(t[0].phase == "");
  CHECK(t[1].phase == "heavy");
  CHECK(t[2].phase == "light");
  CHECK(t[0].intervals == 3);  // to heavy, from heavy to light, from light to the stop
  CHECK(t[1].intervals == 2);
  CHECK(t[2].intervals == 2);
  for (const PhaseTime& p : t) CHECK((std::isfinite(p.ms) && p.ms >= 0));
  CHECK(t[1].ms > t[2].ms);  // seven 384^3 products against one 8-element add
  // stopped: labels no longer record; a new timing starts empty
  { DevicePhase p("after"); }
  start_phase_timing();
  const std::vector<PhaseTime> u = stop_phase_timing();
  REQUIRE(u.size() == 1);
  CHECK(u[0].intervals == 1);
}
