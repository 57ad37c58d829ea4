// CUDA vs CPU for the convolutional-network ops: conv2d (cuDNN), batch norm (train / eval,
// activations, residual, row mask), max pool and add_relu; forward and backward; F32 in NCHW and
// NHWC, F64, and BF16 / F16 against the float32 CPU result on the same (rounded) inputs. Fresh
// random inputs every run, every element compared, device allocations poisoned (NaN) so that an
// element a kernel forgets to write fails.
#include <catch2/catch.hpp>
#include <cmath>
#include <random>

#include "test_seed.h"
#include "engine/allocator.h"
#include "engine/autograd.h"
#include "engine/cuda_runtime.h"
#include "engine/nn_ops.h"
#include "engine/ops.h"

using namespace sc;

namespace {

struct Tol {
  double atol, rtol;
};
Tol tol_for(DType t, double scale = 1.0) {
  switch (t) {
    case DType::F64:
      return {1e-10 * scale, 1e-10};
    case DType::F32:
      return {2e-5 * scale, 2e-5};
    default:
      return {3e-2 * scale, 3e-2};  // BF16 / F16: inputs, outputs and gradients rounded
  }
}

Tensor on_gpu(const Tensor& cpu, DType t, bool nhwc) {
  Tensor g = cpu.detach().to(t).to(Device::cuda());
  return nhwc ? g.contiguous(MemoryFormat::ChannelsLast) : g;
}
// The CPU reference input: the GPU tensor's values (after rounding to t), in F32 or F64.
Tensor ref_of(const Tensor& gpu) {
  Tensor c = gpu.detach().to(Device::cpu());
  return c.dtype() == DType::F64 ? c.contiguous() : c.to(DType::F32).contiguous();
}
void expect_close(const Tensor& gpu, const Tensor& cpu, Tol tol, const char* what) {
  REQUIRE(gpu.shape() == cpu.shape());
  CompareResult r =
      compare(gpu.detach().to(Device::cpu()).to(cpu.dtype()), cpu, tol.atol, tol.rtol);
  INFO(what << ": max |diff| " << r.max_abs << ", scaled " << r.max_scaled << " at "
            << r.worst_index << ", non-finite " << r.nonfinite);
  REQUIRE(r.nonfinite == 0);
  REQUIRE(r.max_scaled <= 1.0);
}

struct PoisonGuard {
  PoisonGuard() { set_poison_allocations(true); }
  ~PoisonGuard() { set_poison_allocations(false); }
};

}  // namespace

TEST_CASE("gpu conv2d matches the CPU: forward, dx, dw, dbias", "[gpu][conv2d]") {
  PoisonGuard poison;
  Generator gen(sc::testing::next_seed());
  struct Cfg {
    int64_t N, C, H, W, K, R, stride, pad;
  };
  for (Cfg c : {Cfg{2, 3, 31, 29, 16, 7, 2, 3}, Cfg{3, 16, 14, 13, 24, 3, 1, 1},
                Cfg{2, 24, 15, 16, 32, 3, 2, 1}, Cfg{2, 32, 9, 7, 40, 1, 1, 0},
                Cfg{2, 32, 9, 9, 64, 1, 2, 0}})
    for (DType dt : {DType::F32, DType::F64, DType::BF16, DType::F16})
      for (bool nhwc : {false, true})
        for (bool with_bias : {false, true}) {
          if (dt == DType::F64 && nhwc) continue;  // cuDNN has no NHWC double convolutions
          INFO("R " << c.R << " stride " << c.stride << " dtype " << dtype_name(dt) << " nhwc "
                    << nhwc << " bias " << with_bias);
          const double fan_in = double(c.C * c.R * c.R);
          Tensor x0 = rand_uniform({c.N, c.C, c.H, c.W}, gen, -1, 1);
          Tensor w0 = rand_uniform({c.K, c.C, c.R, c.R}, gen, -1, 1) * (1.0 / std::sqrt(fan_in));
          Tensor b0 = rand_uniform({c.K}, gen, -1, 1);
          Tensor xg = on_gpu(x0, dt, nhwc).set_requires_grad(true);
          Tensor wg = on_gpu(w0, dt, nhwc).set_requires_grad(true);
          Tensor bg = with_bias ? on_gpu(b0, dt, false).set_requires_grad(true) : Tensor();
          Tensor xc = ref_of(xg).set_requires_grad(true), wc = ref_of(wg).set_requires_grad(true);
          Tensor bc = with_bias ? ref_of(bg).set_requires_grad(true) : Tensor();
          Tensor yg = conv2d(xg, wg, bg, c.stride, c.pad);
          Tensor yc = conv2d(xc, wc, bc, c.stride, c.pad);
          REQUIRE(yg.is_channels_last() == nhwc);
          expect_close(yg, yc, tol_for(dt), "y");
          Tensor dy0 = rand_uniform(yc.shape(), gen, -1, 1);
          Tensor dyg = on_gpu(dy0, dt, nhwc);
          yg.backward(dyg);
          yc.backward(ref_of(dyg));
          const double L = double(yc.size(2) * yc.size(3) * c.N);
          expect_close(xg.grad(), xc.grad(), tol_for(dt, std::sqrt(double(c.K))), "dx");
          expect_close(wg.grad(), wc.grad(), tol_for(dt, std::sqrt(L)), "dw");
          if (with_bias) expect_close(bg.grad(), bc.grad(), tol_for(dt, std::sqrt(L)), "dbias");
          // A second call reuses the cached plan and gives the same forward result.
          Tensor yg2 =
              conv2d(xg.detach(), wg.detach(), with_bias ? bg.detach() : Tensor(), c.stride, c.pad);
          expect_close(yg2, yc, tol_for(dt), "y (cached plan)");
        }
}

TEST_CASE("gpu batch_norm matches the CPU (2-D NCHW / NHWC, 1-D with mask, train / eval, every "
          "float type, with and without a residual)",
          "[gpu][batch_norm]") {
  PoisonGuard poison;
  Generator gen(sc::testing::next_seed());
  struct Cfg {
    Shape shape;
    bool nhwc, masked;
  };
  for (Cfg cfg :
       {Cfg{{4, 24, 7, 9}, false, false}, Cfg{{4, 40, 7, 9}, true, false},
        Cfg{{3, 8, 28, 28}, false, false}, Cfg{{37, 70}, false, false}, Cfg{{53, 33}, false, true}})
    for (DType dt : {DType::F32, DType::F64, DType::BF16, DType::F16})
      for (bool training : {true, false})
        for (Act act : {Act::None, Act::Relu, Act::Gelu})
          for (bool with_res : {false, true}) {
            INFO("shape " << shape_str(cfg.shape) << " nhwc " << cfg.nhwc << " mask " << cfg.masked
                          << " dtype " << dtype_name(dt) << " training " << training << " act "
                          << int(act) << " res " << with_res);
            const int64_t C = cfg.shape[1], N = cfg.shape[0];
            const DType pd = dt == DType::F64 ? DType::F64 : DType::F32;
            const DType cd = dt == DType::F64 ? DType::F64 : DType::F32;
            Tensor x0 = rand_uniform(cfg.shape, gen, -2, 3);
            Tensor r0 = rand_uniform(cfg.shape, gen, -1, 1);
            Tensor xg = on_gpu(x0, dt, cfg.nhwc).set_requires_grad(true);
            Tensor rg = with_res ? on_gpu(r0, dt, cfg.nhwc).set_requires_grad(true) : Tensor();
            Tensor xc = ref_of(xg).set_requires_grad(true);
            Tensor rc = with_res ? ref_of(rg).set_requires_grad(true) : Tensor();
            Tensor gam = rand_uniform({C}, gen, 0.5, 1.5, pd),
                   bet = rand_uniform({C}, gen, -1, 1, pd);
            Tensor gg = gam.to(Device::cuda()).set_requires_grad(true);
            Tensor bgp = bet.to(Device::cuda()).set_requires_grad(true);
            Tensor gc = gam.to(cd).set_requires_grad(true), bc = bet.to(cd).set_requires_grad(true);
            Tensor rm = rand_uniform({C}, gen, -1, 1, pd), rv = rand_uniform({C}, gen, 0.5, 2, pd);
            Tensor rmg = rm.to(Device::cuda()), rvg = rv.to(Device::cuda());
            Tensor rmc = rm.to(cd).clone(), rvc = rv.to(cd).clone();
            Tensor mask_c, mask_g;
            if (cfg.masked) {
              std::vector<double> m(static_cast<size_t>(N), 0.0);
              for (auto& v : m) v = gen.uniform() < 0.6 ? 1 : 0;
              mask_c = from_vector(m, {N}, DType::U8);
              mask_g = mask_c.to(Device::cuda());
            }
            BatchNormOptions og, oc;
            og.training = oc.training = training;
            og.act = oc.act = act;
            og.residual = rg, oc.residual = rc;
            og.row_mask = mask_g, oc.row_mask = mask_c;
            Tensor yg = batch_norm(xg, gg, bgp, rmg, rvg, og);
            Tensor yc = batch_norm(xc, gc, bc, rmc, rvc, oc);
            REQUIRE(yg.is_channels_last() == cfg.nhwc);
            expect_close(yg, yc, tol_for(dt), "y");
            expect_close(rmg, rmc, tol_for(dt == DType::F64 ? dt : DType::F32), "running_mean");
            expect_close(rvg, rvc, tol_for(dt == DType::F64 ? dt : DType::F32), "running_var");
            Tensor dyg = on_gpu(rand_uniform(cfg.shape, gen, -1, 1), dt, cfg.nhwc);
            yg.backward(dyg);
            yc.backward(ref_of(dyg));
            const double n = double(cfg.shape.size() == 4 ? N * cfg.shape[2] * cfg.shape[3] : N);
            expect_close(xg.grad(), xc.grad(), tol_for(dt, 4.0), "dx");
            expect_close(gg.grad(), gc.grad(), tol_for(dt, std::sqrt(n)), "dgamma");
            expect_close(bgp.grad(), bc.grad(), tol_for(dt, std::sqrt(n)), "dbeta");
            if (with_res) expect_close(rg.grad(), rc.grad(), tol_for(dt), "dresidual");
          }
}

TEST_CASE("gpu max_pool2d and add_relu match the CPU", "[gpu][max_pool]") {
  PoisonGuard poison;
  Generator gen(sc::testing::next_seed());
  for (Shape s : {Shape{2, 16, 112, 111}, Shape{3, 5, 9, 8}, Shape{1, 64, 2, 1}})
    for (DType dt : {DType::F32, DType::F64, DType::BF16, DType::F16})
      for (bool nhwc : {false, true}) {
        INFO("shape " << shape_str(s) << " dtype " << dtype_name(dt) << " nhwc " << nhwc);
        Tensor xg = on_gpu(randn(s, gen), dt, nhwc).set_requires_grad(true);
        Tensor xc = ref_of(xg).set_requires_grad(true);
        Tensor yg = max_pool2d(xg, 3, 2, 1), yc = max_pool2d(xc, 3, 2, 1);
        if (yc.size(2) * yc.size(3) > 1) REQUIRE(yg.is_channels_last() == nhwc);
        expect_close(yg, yc, {1e-300, 0}, "y");  // the max is exact in every dtype
        Tensor dyg = on_gpu(randn(yc.shape(), gen), dt, nhwc);
        yg.backward(dyg);
        yc.backward(ref_of(dyg));
        expect_close(xg.grad(), xc.grad(), tol_for(dt), "dx");

        Tensor ag = on_gpu(randn(s, gen), dt, nhwc).set_requires_grad(true);
        Tensor bg = on_gpu(randn(s, gen), dt, nhwc).set_requires_grad(true);
        Tensor ac = ref_of(ag).set_requires_grad(true), bc = ref_of(bg).set_requires_grad(true);
        Tensor zg = add_relu(ag, bg), zc = add_relu(ac, bc);
        expect_close(zg, zc, tol_for(dt), "add_relu");
        Tensor dzg = on_gpu(randn(s, gen), dt, nhwc);
        zg.backward(dzg);
        zc.backward(ref_of(dzg));
        expect_close(ag.grad(), ac.grad(), tol_for(dt), "add_relu da");
        expect_close(bg.grad(), bc.grad(), tol_for(dt), "add_relu db");
      }
}
