// GPU-vs-CPU tests of the multi-tensor updates (kernels/multi_tensor.h through engine/optim.h):
// LARS, SGD, the teacher EMA, loss-scale unscaling with its overflow flag and the scaler's update,
// on lists that cross the kernels' group (32 tensors) and chunk (16,384 elements) boundaries:
// 41 tensors of awkward lengths (1, 7, 16383, 16384, 16385, 50001, ...), matrices and vectors
// mixed, an all-zero matrix (LARS's ratio falls back to 1), a channels-last weight whose gradient
// arrives in the row-major layout. F32 and F64.
//
// Updates are compared by how far they moved each tensor, not by the tensors' values: per
// tensor, max |move_gpu - move_cpu| <= tol * max |move_cpu| + 4 ulp(max |p|). tol: F64 1e-10
// (the norms are summed in another order inside a chunk), F32 1e-4 (a move of ~1 % of |p|
// computed as a difference of floats near |p| keeps ~1e-5 of its own size; the GPU fuses
// multiply-adds, the CPU rounds each product).
#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "gpu_test_util.h"

using namespace sc;
using namespace sc::testing;

namespace {

Shape shape_of(int i) {
  static const std::vector<Shape> shapes = {{3},       {5, 7},        {16383}, {128, 128},
                                            {16385},   {4, 3, 3, 3},  {50001}, {1},
                                            {2, 25001}, {64, 3, 7, 7}, {7},    {257, 65}};
  return shapes[size_t(i) % shapes.size()];
}

struct Lists {
  std::vector<Tensor> cpu, gpu;
};

// n parameters with gradients, the same values on both sides; tensor 5 all zeros (a matrix);
// tensor 9 (64x3x7x7) channels-last with a row-major gradient.
Lists params(int n, DType dt, Generator& gen) {
  Lists l;
  for (int i = 0; i < n; ++i) {
    Tensor h = rand_uniform(shape_of(i), gen, -1.0, 1.0, dt);
    if (i == 5) h = zeros(shape_of(i), dt);
    const MemoryFormat fmt = i == 9 ? MemoryFormat::ChannelsLast : MemoryFormat::Contiguous;
    Tensor c = h.clone().contiguous(fmt), g = to_device(h, Device::cuda(0)).contiguous(fmt);
    c.set_requires_grad(true);
    g.set_requires_grad(true);
    l.cpu.push_back(c);
    l.gpu.push_back(g);
  }
  return l;
}

void set_grads(Lists& l, Generator& gen, double scale) {
  for (size_t i = 0; i < l.cpu.size(); ++i) {
    Tensor g = mul_scalar(rand_uniform(l.cpu[i].shape(), gen, -1.0, 1.0, l.cpu[i].dtype()), scale);
    l.cpu[i].set_grad(g.clone());
    l.gpu[i].set_grad(to_device(g, Device::cuda(0)));
  }
}

std::vector<Tensor> snapshot(const std::vector<Tensor>& ts) {
  std::vector<Tensor> out;
  for (const Tensor& t : ts) out.push_back(t.to(Device::cpu()).contiguous().clone());
  return out;
}

// Each tensor's move on the GPU against its move on the CPU (see the header).
void check_moves(const std::vector<Tensor>& before, const std::vector<Tensor>& cpu_after,
                 const std::vector<Tensor>& gpu_after, DType dt, const char* what) {
  const double tol = dt == DType::F64 ? 1e-10 : 1e-4;
  const double ulp = dt == DType::F64 ? std::ldexp(1.0, -52) : std::ldexp(1.0, -23);
  for (size_t i = 0; i < before.size(); ++i) {
    const std::vector<double> b = before[i].to_vector(), c = cpu_after[i].to_vector(),
                              g = gpu_after[i].to_vector();
    double move = 0, err = 0, mag = 0;
    for (size_t k = 0; k < b.size(); ++k) {
      move = std::max(move, std::fabs(c[k] - b[k]));
      err = std::max(err, std::fabs((g[k] - b[k]) - (c[k] - b[k])));
      mag = std::max(mag, std::fabs(b[k]));
    }
    INFO(what << ": tensor " << i << " " << shape_str(before[i].shape()) << " moved " << move
              << ", GPU differs by " << err);
    CHECK(err <= tol * move + 4 * ulp * mag);
  }
}

}  // namespace

TEST_CASE("gpu multi-tensor: LARS and SGD over 41 tensors match the CPU, and a set skip flag "
          "changes nothing",
          "[gpu][optim]") {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  const DType dt = GENERATE(DType::F32, DType::F64);
  const bool lars = GENERATE(true, false);
  INFO(dtype_name(dt) << (lars ? " LARS" : " SGD"));
  Generator gen(seed);
  Lists p = params(41, dt, gen);
  // lr 5 with the trust ratio's 1e-3: LARS moves each matrix by ~0.5 % of its size per step
  const double lr = lars ? 5.0 : 0.05;
  std::optional<LARS> lc, lg;
  std::optional<SGD> sc_, sg;
  if (lars) {
    lc.emplace(p.cpu, LARSOptions{lr, 0.9, 1e-2, 0.001});
    lg.emplace(p.gpu, LARSOptions{lr, 0.9, 1e-2, 0.001});
  } else {
    sc_.emplace(p.cpu, SGDOptions{lr, 0.9, 1e-2});
    sg.emplace(p.gpu, SGDOptions{lr, 0.9, 1e-2});
  }
  Tensor skip_c = zeros({1}, DType::U8), skip_g = zeros({1}, DType::U8, Device::cuda(0));
  for (int step = 0; step < 2; ++step) {  // the second step carries momentum
    set_grads(p, gen, step == 0 ? 1.0 : 0.3);
    const std::vector<Tensor> before = snapshot(p.cpu);
    lars ? lc->step(skip_c) : sc_->step(skip_c);
    lars ? lg->step(skip_g) : sg->step(skip_g);
    check_moves(before, snapshot(p.cpu), snapshot(p.gpu), dt, "parameters");
  }
  const std::vector<Tensor>& mom_c = lars ? lc->state() : sc_->state();
  const std::vector<Tensor>& mom_g = lars ? lg->state() : sg->state();
  std::vector<Tensor> zero;  // the momentum started at zero: its move is its value
  for (const Tensor& m : mom_c) zero.push_back(zeros(m.shape(), m.dtype()));
  check_moves(zero, snapshot(mom_c), snapshot(mom_g), dt, "momentum");
  // a set flag: the same call changes neither parameters nor momentum, on either side
  fill_(skip_c, 1.0);
  fill_(skip_g, 1.0);
  set_grads(p, gen, 1.0);
  const std::vector<Tensor> pc0 = snapshot(p.cpu), pg0 = snapshot(p.gpu), mc0 = snapshot(mom_c),
                            mg0 = snapshot(mom_g);
  lars ? lc->step(skip_c) : sc_->step(skip_c);
  lars ? lg->step(skip_g) : sg->step(skip_g);
  const std::vector<Tensor> pc1 = snapshot(p.cpu), pg1 = snapshot(p.gpu), mc1 = snapshot(mom_c),
                            mg1 = snapshot(mom_g);
  for (size_t i = 0; i < pc0.size(); ++i) {
    CHECK(pc1[i].to_vector() == pc0[i].to_vector());
    CHECK(pg1[i].to_vector() == pg0[i].to_vector());
    CHECK(mc1[i].to_vector() == mc0[i].to_vector());
    CHECK(mg1[i].to_vector() == mg0[i].to_vector());
  }
}

TEST_CASE("gpu multi-tensor: the teacher EMA over 41 tensors matches the CPU", "[gpu][optim]") {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  const DType dt = GENERATE(DType::F32, DType::F64);
  INFO(dtype_name(dt));
  Generator gen(seed);
  Lists k = params(41, dt, gen), q = params(41, dt, gen);
  const std::vector<Tensor> before = snapshot(k.cpu);
  ema_update(k.cpu, q.cpu, 0.75);
  ema_update(k.gpu, q.gpu, 0.75);
  check_moves(before, snapshot(k.cpu), snapshot(k.gpu), dt, "teacher");
  // and against the formula on one element of the last tensor
  const double kb = before[40].to_vector()[3], qv = q.cpu[40].to_vector()[3];
  CHECK(k.cpu[40].to_vector()[3] == Approx(0.75 * kb + 0.25 * qv).epsilon(1e-6));
}

TEST_CASE("gpu multi-tensor: loss-scale unscaling finds an Inf or NaN in any group, and the "
          "scaler's update runs on the device",
          "[gpu][optim]") {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  Lists p = params(41, DType::F32, gen);
  set_grads(p, gen, 1024.0);
  GradScaler sc(GradScalerOptions{1024.0, 2.0, 0.5, 2}, Device::cpu()),
      sg(GradScalerOptions{1024.0, 2.0, 0.5, 2}, Device::cuda(0));
  Tensor fc = zeros({1}, DType::U8), fg = zeros({1}, DType::U8, Device::cuda(0));
  sc.unscale_(p.cpu, fc);
  sg.unscale_(p.gpu, fg);
  CHECK(fc.to_vector()[0] == 0);
  CHECK(fg.to_vector()[0] == 0);
  for (size_t i = 0; i < p.cpu.size(); ++i)
    SC_CHECK_CLOSE(p.gpu[i].grad().to(Device::cpu()).contiguous(), p.cpu[i].grad().contiguous(),
                   (Tol{0.0, 0.0}));  // division by a power of two: exact
  sg.update(fg);
  CHECK(sg.growth_tracker() == 1);
  CHECK(sg.current_scale() == 1024.0);
  sg.update(fg);  // the second good step in a row: growth
  CHECK(sg.current_scale() == 2048.0);
  CHECK(sg.growth_tracker() == 0);
  // one bad element, in the first, the second or the last group, is found
  for (size_t bad : {size_t(0), size_t(33), size_t(40)}) {
    for (double v : {std::numeric_limits<double>::infinity(), std::numeric_limits<double>::quiet_NaN()}) {
      INFO("tensor " << bad << " holds " << v);
      set_grads(p, gen, 1.0);
      Tensor g = p.gpu[bad].grad().to(Device::cpu()).contiguous().clone();
      g.data<float>()[g.numel() - 1] = float(v);
      p.gpu[bad].set_grad(to_device(g, Device::cuda(0)).contiguous(p.gpu[bad].suggest_memory_format()));
      fill_(fg, 0.0);
      sg.unscale_(p.gpu, fg);
      CHECK(fg.to_vector()[0] == 1);
    }
  }
  sg.update(fg);  // overflow: backoff
  CHECK(sg.current_scale() == 1024.0);
  CHECK(sg.growth_tracker() == 0);
  // the flag ORs: a set flag stays set after finite gradients
  set_grads(p, gen, 1.0);
  sg.unscale_(p.gpu, fg);
  CHECK(fg.to_vector()[0] == 1);
  // nonfinite_flag starts it afresh from the loss parts
  Tensor parts = from_vector({1.0, 2.0, 3.0}, {3}, DType::F64, Device::cuda(0));
  nonfinite_flag(parts, fg);
  CHECK(fg.to_vector()[0] == 0);
  parts = from_vector({1.0, std::numeric_limits<double>::quiet_NaN(), 3.0}, {3}, DType::F64,
                      Device::cuda(0));
  nonfinite_flag(parts, fg);
  CHECK(fg.to_vector()[0] == 1);
}
