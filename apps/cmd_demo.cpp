// slotcon demo: the smallest end-to-end run of the engine. A two-layer GELU MLP learns to
// separate three interleaved spirals with autograd, softmax cross-entropy and SGD with momentum,
// on the GPU when one is present (else the CPU). It prints the loss as it falls and ends with
// the training accuracy. (The SlotCon training command replaces this as the main job once the
// model, data and training pieces land.)
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>

#include "apps/commands.h"
#include "engine/autograd.h"
#include "engine/cuda_runtime.h"
#include "engine/ops.h"
#include "engine/optim.h"

namespace sc {
namespace app {
namespace {

void demo_usage() {
  std::printf(
      "usage: slotcon demo [--steps N] [--device cpu|cuda] [--seed S] [--hidden H]\n\n"
      "Train a 2-layer MLP on 3 synthetic spirals (1536 points) with the engine's autograd and\n"
      "SGD (lr 0.2, momentum 0.9). Defaults: --steps 300, the GPU if present, --seed 0,\n"
      "--hidden 64. Prints the loss every 25 steps and the final accuracy; exits 1 if the\n"
      "model did not learn (accuracy below 90%%).\n");
}

}  // namespace

int cmd_demo(const Args& args) {
  int steps = 300, hidden = 64;
  uint64_t seed = 0;
  Device dev = cuda_available() ? Device::cuda(0) : Device::cpu();
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> std::string { return option_value(args, &i); };
    if (a == "--help" || a == "-h") {
      demo_usage();
      return 0;
    } else if (a == "--steps") {
      steps = int(parse_count(a, value()));
    } else if (a == "--hidden") {
      hidden = int(parse_count(a, value()));
    } else if (a == "--seed") {
      seed = uint64_t(parse_count(a, value()));
    } else if (a == "--device") {
      std::string d = value();
      SC_CHECK(d == "cpu" || d == "cuda", "--device must be cpu or cuda, got '", d, "'");
      dev = d == "cpu" ? Device::cpu() : Device::cuda(0);
      SC_CHECK(dev.is_cpu() || cuda_available(), "--device cuda: no CUDA device is available");
    } else {
      std::fprintf(stderr, "slotcon demo: unknown option '%s'\n", a.c_str());
      demo_usage();
      return 2;
    }
  }
  SC_CHECK(steps > 0 && hidden > 0, "--steps and --hidden must be positive");
  std::printf("demo: device %s%s\n", dev.str().c_str(),
              dev.is_cuda() ? (" (" + cuda_device_name(0) + ")").c_str() : "");

  // Three spirals, 512 points each, with a little noise.
  const int per_class = 512, classes = 3, n = per_class * classes;
  Generator gen(seed);
  std::vector<double> xs(size_t(n) * 2), onehot(size_t(n) * classes, 0.0), labels(static_cast<size_t>(n));
  for (int c = 0; c < classes; ++c)
    for (int i = 0; i < per_class; ++i) {
      const int j = c * per_class + i;
      const double r = double(i) / per_class;
      const double t = c * 2.0944 + r * 4.0 + 0.2 * gen.normal();
      xs[size_t(2 * j)] = r * std::sin(t);
      xs[size_t(2 * j + 1)] = r * std::cos(t);
      onehot[size_t(j * classes + c)] = 1.0;
      labels[size_t(j)] = c;
    }
  Tensor X = from_vector(xs, {n, 2}, DType::F32, dev);
  Tensor Y = from_vector(onehot, {n, classes}, DType::F32, dev);

  auto param = [&](const Shape& s, double std) {
    Tensor p = mul_scalar(randn(s, gen, DType::F32, dev), std);
    p = p.detach();
    p.set_requires_grad(true);
    return p;
  };
  Tensor w1 = param({hidden, 2}, std::sqrt(2.0 / 2)), b1 = param({hidden}, 0.0);
  Tensor w2 = param({hidden, hidden}, std::sqrt(2.0 / hidden)), b2 = param({hidden}, 0.0);
  Tensor w3 = param({classes, hidden}, std::sqrt(1.0 / hidden)), b3 = param({classes}, 0.0);
  SGD opt({w1, b1, w2, b2, w3, b3}, SGDOptions{0.2, 0.9, 0.0});

  auto forward = [&]() {
    Tensor h = gelu(linear(X, w1, b1));
    h = gelu(linear(h, w2, b2));
    return linear(h, w3, b3);
  };
  auto t0 = std::chrono::steady_clock::now();
  double first = 0, last = 0;
  for (int s = 0; s < steps; ++s) {
    Tensor logits = forward();
    Tensor loss = neg(mean(sum(mul(log_softmax(logits, 1), Y), {1})));
    opt.zero_grad();
    loss.backward();
    opt.step();
    if (s == 0 || (s + 1) % 25 == 0 || s + 1 == steps) {
      last = loss.item();
      if (s == 0) first = last;
      double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      double eta = el / (s + 1) * (steps - s - 1);
      std::printf("step %4d/%d  loss %.4f  elapsed %.1fs  eta %.1fs\n", s + 1, steps, last, el, eta);
      std::fflush(stdout);
    }
  }
  Tensor pred;
  {
    NoGradGuard ng;
    pred = argmax(forward(), 1);
  }
  std::vector<double> p = pred.to_vector();
  int correct = 0;
  for (int j = 0; j < n; ++j) correct += p[size_t(j)] == labels[size_t(j)];
  const double acc = double(correct) / n;
  std::printf("demo: loss %.4f -> %.4f, training accuracy %.1f%% on %s\n", first, last,
              100.0 * acc, dev.str().c_str());
  return acc >= 0.9 ? 0 : 1;
}

}  // namespace app
}  // namespace sc
