// Tensors: shapes, strides, layouts, dtypes, views, and forward values of the ops against
// direct computations on the host.
#include <catch2/catch.hpp>
#include <cmath>

#include "engine/autograd.h"
#include "engine/ops.h"

using namespace sc;

TEST_CASE("tensor: shape, strides and contiguity") {
  Tensor t = empty({2, 3, 4}, DType::F32);
  CHECK(t.numel() == 24);
  CHECK(t.strides() == Shape{12, 4, 1});
  CHECK(t.is_contiguous());
  Tensor tt = transpose(t, 0, 2);
  CHECK(tt.shape() == Shape{4, 3, 2});
  CHECK_FALSE(tt.is_contiguous());
  CHECK(tt.is_non_overlapping_and_dense());
  CHECK(tt.storage() == t.storage());
  Tensor s = slice(t, 2, 0, 4, 2);
  CHECK(s.shape() == Shape{2, 3, 2});
  CHECK_FALSE(s.is_non_overlapping_and_dense());
  CHECK_THROWS_AS(slice(t, 2, 3, 5), Error);
  CHECK_THROWS_AS(empty({2, -1}), Error);
}

TEST_CASE("tensor: an empty tensor is contiguous in any view (as in PyTorch)") {
  // Found by the CUDA emulator: the CUDA backend's dense-operand checks refused a transposed
  // empty tensor (sum over an empty dim, matmul with k = 0).
  Tensor t = empty({0, 5}, DType::F32);
  Tensor tt = transpose(t, 0, 1);
  CHECK(tt.shape() == Shape{5, 0});
  CHECK(tt.is_contiguous());
  CHECK(empty({2, 0, 3, 3}).is_channels_last());
  CHECK(empty({2, 0, 3, 3}).suggest_memory_format() == MemoryFormat::Contiguous);
  CHECK_FALSE(transpose(empty({2, 3}), 0, 1).is_contiguous());  // non-empty: unchanged
  Tensor s = sum(tt, {1});
  CHECK(s.shape() == Shape{5});
  for (double v : s.to_vector()) CHECK(v == 0.0);
}

TEST_CASE("tensor: channels-last layout is carried by strides and kept by ops") {
  Generator g(1);
  Tensor x = randn({2, 3, 4, 5}, g);
  Tensor nhwc = x.contiguous(MemoryFormat::ChannelsLast);
  CHECK(nhwc.strides() == Shape{60, 1, 15, 3});
  CHECK(nhwc.is_channels_last());
  CHECK(nhwc.suggest_memory_format() == MemoryFormat::ChannelsLast);
  CHECK(compare(nhwc, x, 0, 0).max_abs == 0);  // same logical values
  Tensor y = relu(nhwc);
  CHECK(y.is_channels_last());
  Tensor z = add(nhwc, nhwc);
  CHECK(z.is_channels_last());
  CHECK(compare(z, mul_scalar(x, 2.0), 1e-6, 0).max_scaled <= 1);
  CHECK_THROWS_AS(empty({2, 3}, DType::F32, Device::cpu(), MemoryFormat::ChannelsLast), Error);
}

TEST_CASE("tensor: dtype conversions round trip") {
  std::vector<double> v = {0.0, 1.0, -2.5, 3.140625, 65504.0, 1e-3, -7.0e-5, 1e30};
  Tensor d = from_vector(v, {8}, DType::F64);
  Tensor bf = cast(d, DType::BF16);
  Tensor h = cast(d, DType::F16);
  std::vector<double> b = bf.to_vector(), hv = h.to_vector();
  for (size_t i = 0; i < v.size(); ++i) {
    CHECK(b[i] == Approx(v[i]).epsilon(1.0 / 128));
    if (std::fabs(v[i]) <= 65504.0) {
      CHECK(hv[i] == Approx(v[i]).epsilon(1.0 / 1024).margin(6e-8));
    } else {
      CHECK(std::isinf(hv[i]));
    }
  }
  // exactly representable values survive exactly
  CHECK(b[1] == 1.0);
  CHECK(hv[3] == 3.140625);
  // f16 subnormals and round-to-nearest-even
  CHECK(f16_bits_to_float(0x0001) == Approx(5.960464477539063e-8));
  CHECK(float_to_f16_bits(5.960464477539063e-8f) == 0x0001);
  CHECK(float_to_f16_bits(1.0f + 1.0f / 2048) == 0x3c00);  // tie -> even
  CHECK(float_to_bf16_bits(1.0f) == 0x3f80);
  CHECK(std::isnan(bf16_bits_to_float(float_to_bf16_bits(NAN))));
  Tensor i = cast(from_vector({3, 7, 255}, {3}, DType::F64), DType::U8);
  CHECK(i.to_vector() == std::vector<double>{3, 7, 255});
  Tensor l = cast(from_vector({-5, 1e15}, {2}, DType::F64), DType::I64);
  CHECK(l.to_vector() == std::vector<double>{-5, 1e15});
}

TEST_CASE("tensor: factories and item") {
  CHECK(zeros({3}).to_vector() == std::vector<double>{0, 0, 0});
  CHECK(full({2}, 2.5, DType::F64).to_vector() == std::vector<double>{2.5, 2.5});
  CHECK(scalar_tensor(4.0).item() == 4.0);
  CHECK_THROWS_AS(ones({2}).item(), Error);
  CHECK_THROWS_AS(from_vector({1, 2, 3}, {2}), Error);
  Generator a(7), b(7);
  CHECK(randn({5}, a).to_vector() == randn({5}, b).to_vector());
  Tensor p = ones({4}).pin_memory();
  CHECK(p.to_vector() == std::vector<double>{1, 1, 1, 1});
}

TEST_CASE("ops: forward values match direct computation") {
  Generator g(3);
  Tensor a = randn({3, 4}, g, DType::F64), b = randn({4, 2}, g, DType::F64);
  std::vector<double> av = a.to_vector(), bv = b.to_vector();
  std::vector<double> c = matmul(a, b).to_vector();
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 2; ++j) {
      double s = 0;
      for (int k = 0; k < 4; ++k) s += av[size_t(i * 4 + k)] * bv[size_t(k * 2 + j)];
      CHECK(c[size_t(i * 2 + j)] == Approx(s).epsilon(1e-12));
    }
  std::vector<double> sm = softmax(a, 1).to_vector();
  std::vector<double> ls = log_softmax(a, 1).to_vector();
  std::vector<double> nz = l2_normalize(a, 1).to_vector();
  std::vector<double> rs = sum(a, {1}).to_vector();
  std::vector<double> cs = mean(a, {0}).to_vector();
  for (int i = 0; i < 3; ++i) {
    double z = 0, n2 = 0, s = 0;
    for (int k = 0; k < 4; ++k) {
      z += std::exp(av[size_t(i * 4 + k)]);
      n2 += av[size_t(i * 4 + k)] * av[size_t(i * 4 + k)];
      s += av[size_t(i * 4 + k)];
    }
    CHECK(rs[size_t(i)] == Approx(s).epsilon(1e-12));
    for (int k = 0; k < 4; ++k) {
      double x = av[size_t(i * 4 + k)];
      CHECK(sm[size_t(i * 4 + k)] == Approx(std::exp(x) / z).epsilon(1e-12));
      CHECK(ls[size_t(i * 4 + k)] == Approx(x - std::log(z)).epsilon(1e-12));
      CHECK(nz[size_t(i * 4 + k)] == Approx(x / std::sqrt(n2)).epsilon(1e-12));
    }
  }
  for (int k = 0; k < 4; ++k)
    CHECK(cs[size_t(k)] ==
          Approx((av[size_t(k)] + av[size_t(4 + k)] + av[size_t(8 + k)]) / 3).epsilon(1e-12));
  // GELU exact (erf) and argmax
  Tensor x = from_vector({-1.0, 0.0, 2.0}, {3}, DType::F64);
  std::vector<double> ge = gelu(x).to_vector();
  CHECK(ge[0] == Approx(-0.15865525393145707).epsilon(1e-12));
  CHECK(ge[2] == Approx(1.9544997361036416).epsilon(1e-12));
  Tensor m = from_vector({1, 5, 5, 2, 9, 0}, {2, 3}, DType::F32);
  CHECK(argmax(m, 1).to_vector() == std::vector<double>{1, 1});  // first maximum wins
  CHECK(argmax(m, 0).to_vector() == std::vector<double>{1, 1, 0});
  // l2_normalize of a zero row is zero (eps guards the division)
  CHECK(l2_normalize(zeros({1, 3}, DType::F64), 1).to_vector() == std::vector<double>{0, 0, 0});
  // softmax is stable for huge logits
  std::vector<double> big = softmax(from_vector({1000, 1000}, {2}, DType::F32), 0).to_vector();
  CHECK(big[0] == Approx(0.5));
}

TEST_CASE("ops: shape errors name the op") {
  Tensor a = ones({2, 3}), b = ones({4, 3});
  try {
    add(a, b);
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("add") != std::string::npos);
  }
  CHECK_THROWS_AS(matmul(a, a), Error);
  CHECK_THROWS_AS(reshape(a, {4, 2}), Error);
  CHECK_THROWS_AS(concat({a, ones({2, 3, 1})}, 0), Error);
  CHECK_THROWS_AS(add(a, ones({2, 3}, DType::F64)), Error);
  CHECK_THROWS_AS(permute(a, {0, 0}), Error);
  CHECK_THROWS_AS(softmax(a, 2), Error);
  CHECK_THROWS_AS(index_select_rows(a, from_vector({5}, {1}, DType::I64)), Error);
  CHECK_THROWS_AS(add(ones({2}, DType::BF16), ones({2}, DType::BF16)), Error);  // CPU: F32/F64
}

TEST_CASE("ops: broadcasting, concat, slices and row selection values") {
  Tensor a = from_vector({1, 2, 3, 4, 5, 6}, {2, 3}, DType::F64);
  Tensor r = from_vector({10, 20, 30}, {3}, DType::F64);
  CHECK(add(a, r).to_vector() == std::vector<double>{11, 22, 33, 14, 25, 36});
  CHECK(sub(r, a).to_vector() == std::vector<double>{9, 18, 27, 6, 15, 24});
  CHECK(concat({a, a}, 1).to_vector() ==
        std::vector<double>{1, 2, 3, 1, 2, 3, 4, 5, 6, 4, 5, 6});
  CHECK(slice(a, 1, 0, 3, 2).to_vector() == std::vector<double>{1, 3, 4, 6});
  CHECK(masked_select_rows(a, from_vector({0, 1}, {2}, DType::U8)).to_vector() ==
        std::vector<double>{4, 5, 6});
  CHECK(masked_select_rows(a, from_vector({0, 0}, {2}, DType::U8)).shape() == Shape{0, 3});
  CHECK(equal_mask(a, from_vector({2}, {1}, DType::F64)).to_vector() ==
        std::vector<double>{0, 1, 0, 0, 0, 0});
  Tensor acc = zeros({2, 3}, DType::F64);
  add_(acc, r, 2.0);
  CHECK(acc.to_vector() == std::vector<double>{20, 40, 60, 20, 40, 60});
  axpby_(acc, 0.5, a, 1.0);
  CHECK(acc.to_vector() == std::vector<double>{11, 22, 33, 14, 25, 36});
  mul_(acc, 0.0);
  CHECK(sum(acc).item() == 0.0);
}

TEST_CASE("allocator: poisoned allocations expose unwritten elements") {
  set_poison_allocations(true);
  Tensor t = empty({4}, DType::F32);
  std::vector<double> v = t.to_vector();
  set_poison_allocations(false);
  for (double x : v) CHECK(std::isnan(x));
}
