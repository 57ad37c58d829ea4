// The CPU convolution's two float32 implementations through the engine (nn_ops.h's
// set_cpu_conv_impl): conv2d forward and its autograd backward (dx, dw, dbias) with oneDNN equal
// the im2col + BLAS reference's within float32 round-off, in both layouts; float64 always takes
// the reference; the switch does what it says. In a build without oneDNN the switch keeps the
// reference (checked too).
#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

#include "test_seed.h"
#include "engine/autograd.h"
#include "engine/nn_ops.h"
#include "engine/ops.h"
#include "kernels/conv2d.h"

using namespace sc;

namespace {
// Restores the process's choice when a test ends (tests share the process).
struct ImplGuard {
  CpuConvImpl saved = cpu_conv_impl();
  ~ImplGuard() { set_cpu_conv_impl(saved); }
};

struct Out {
  Tensor y, dx, dw, db;
};
Out run(const Tensor& x0, const Tensor& w0, const Tensor& b0, const Tensor& cot, bool nhwc,
        int64_t stride, int64_t pad) {
  Tensor x = (nhwc ? x0.contiguous(MemoryFormat::ChannelsLast) : x0.clone()).detach();
  Tensor w = w0.clone().detach(), b = b0.clone().detach();
  x.set_requires_grad(true), w.set_requires_grad(true), b.set_requires_grad(true);
  Tensor y = conv2d(x, w, b, stride, pad);
  REQUIRE(y.is_channels_last() == nhwc);
  sum(mul(y, cot)).backward();
  return {y.detach(), x.grad(), w.grad(), b.grad()};
}
}  // namespace

TEST_CASE("conv2d CPU: oneDNN and the reference agree through autograd, both layouts",
          "[nn_ops][conv2d][dnnl]") {
  ImplGuard guard;
  Generator gen(sc::testing::next_seed());
  struct Cfg {
    int64_t N, C, H, W, K, R, stride, pad;
  };
  for (Cfg c : {Cfg{2, 3, 17, 15, 16, 7, 2, 3}, Cfg{2, 20, 9, 11, 24, 3, 2, 1},
                Cfg{3, 16, 7, 7, 32, 1, 2, 0}, Cfg{1, 5, 6, 9, 7, 3, 1, 1}})
    for (bool nhwc : {false, true}) {
      INFO("R " << c.R << " stride " << c.stride << " C " << c.C << " nhwc " << nhwc);
      Tensor x = randn({c.N, c.C, c.H, c.W}, gen), w = randn({c.K, c.C, c.R, c.R}, gen);
      Tensor b = randn({c.K}, gen);
      const int64_t OH = (c.H + 2 * c.pad - c.R) / c.stride + 1;
      const int64_t OW = (c.W + 2 * c.pad - c.R) / c.stride + 1;
      Tensor cot = randn({c.N, c.K, OH, OW}, gen);
      set_cpu_conv_impl(CpuConvImpl::Reference);
      REQUIRE(cpu_conv_impl() == CpuConvImpl::Reference);
      const Out ref = run(x, w, b, cot, nhwc, c.stride, c.pad);
      set_cpu_conv_impl(CpuConvImpl::OneDnn);
      REQUIRE(cpu_conv_impl() ==
              (cpu_conv_onednn_built() ? CpuConvImpl::OneDnn : CpuConvImpl::Reference));
      const Out dn = run(x, w, b, cot, nhwc, c.stride, c.pad);
      // randn values: sums of at most a few thousand unit-size products, relative round-off
      // ~1e-6 of the sums' magnitude (tests/kernels/test_conv2d_dnnl.cpp bounds it per element)
      REQUIRE(compare(dn.y, ref.y, 1e-4, 1e-4).max_scaled <= 1.0);
      REQUIRE(compare(dn.dx, ref.dx, 1e-4, 1e-4).max_scaled <= 1.0);
      REQUIRE(compare(dn.dw, ref.dw, 1e-3, 1e-4).max_scaled <= 1.0);
      REQUIRE(compare(dn.db, ref.db, 1e-3, 1e-5).max_scaled <= 1.0);
    }
}

TEST_CASE("conv2d CPU: float64 takes the reference whatever the switch says",
          "[nn_ops][conv2d][dnnl]") {
  ImplGuard guard;
  Generator gen(sc::testing::next_seed());
  set_cpu_conv_impl(CpuConvImpl::OneDnn);
  Tensor x = randn({2, 3, 9, 7}, gen, DType::F64), w = randn({4, 3, 3, 3}, gen, DType::F64);
  Tensor y = conv2d(x, w, Tensor(), 2, 1);
  Conv2dGeom g;
  g.N = 2, g.C = 3, g.H = 9, g.W = 7, g.K = 4, g.R = 3, g.S = 3;
  g.stride_h = g.stride_w = 2, g.pad_h = g.pad_w = 1;
  std::vector<double> ref(size_t(2 * 4 * g.OH() * g.OW()));
  conv2d_forward_ref<double>(g, Layout::NCHW, x.data<double>(), w.data<double>(), nullptr,
                             ref.data());
  REQUIRE(y.to_vector() == ref);
}
