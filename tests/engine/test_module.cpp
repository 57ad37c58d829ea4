// Modules: hierarchical names in registration order, state dicts through safetensors,
// load_state_dict's errors, train/eval, dtype conversion keeping parameters as leaves,
// Linear, and the statistics of the initialisers.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/safetensors.h"

using namespace sc;
using Catch::Matchers::Contains;

namespace {

// Stand-ins with torchvision's names (the real layers live in model/).
struct Conv : Module {
  Tensor weight;
  Conv(int64_t out, int64_t in) { weight = register_parameter("weight", zeros({out, in, 3, 3})); }
};
struct BN : Module {
  Tensor weight, bias, running_mean, running_var, num_batches_tracked;
  explicit BN(int64_t c) {
    weight = register_parameter("weight", ones({c}));
    bias = register_parameter("bias", zeros({c}));
    running_mean = register_buffer("running_mean", zeros({c}));
    running_var = register_buffer("running_var", ones({c}));
    num_batches_tracked = register_buffer("num_batches_tracked", zeros({}, DType::I64));
  }
};
struct Block : Module {
  std::shared_ptr<Conv> conv1;
  std::shared_ptr<BN> bn1;
  explicit Block(int64_t c) {
    conv1 = register_module("conv1", std::make_shared<Conv>(c, c));
    bn1 = register_module("bn1", std::make_shared<BN>(c));
  }
};
struct Seq : Module {
  void add(std::shared_ptr<Module> m) { add_child(std::to_string(named_children().size()), m); }
};
struct Net : Module {
  std::shared_ptr<Conv> conv1;
  std::shared_ptr<BN> bn1;
  std::shared_ptr<Seq> layer1;
  std::shared_ptr<Linear> fc;
  Net() {
    conv1 = register_module("conv1", std::make_shared<Conv>(4, 3));
    bn1 = register_module("bn1", std::make_shared<BN>(4));
    layer1 = register_module("layer1", std::make_shared<Seq>());
    layer1->add(std::make_shared<Block>(4));
    layer1->add(std::make_shared<Block>(4));
    fc = register_module("fc", std::make_shared<Linear>(4, 2));
  }
};

std::vector<std::string> names_of(const NamedTensors& nt) {
  std::vector<std::string> r;
  for (auto& kv : nt) r.push_back(kv.first);
  return r;
}

TensorMap to_map(const NamedTensors& nt) { return TensorMap(nt.begin(), nt.end()); }

void randomize(Module& m, uint64_t seed) {
  Generator g(seed);
  NoGradGuard ng;
  for (auto& kv : m.state_dict()) {
    Tensor t = kv.second;
    if (is_floating(t.dtype()))
      init_normal_(t, g, 0.0, 1.0);
    else
      fill_(t, double(g.next_u64() % 1000));
  }
}

std::string load_error(Module& m, const TensorMap& s, bool strict = true,
                       const std::vector<std::string>& optional = {}) {
  try {
    m.load_state_dict(s, strict, optional);
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace

TEST_CASE("module: hierarchical names in registration order") {
  Net net;
  const std::vector<std::string> bn = {"weight", "bias", "running_mean", "running_var",
                                       "num_batches_tracked"};
  std::vector<std::string> expect = {"conv1.weight"};
  for (auto& s : bn) expect.push_back("bn1." + s);
  for (const char* blk : {"layer1.0.", "layer1.1."}) {
    expect.push_back(std::string(blk) + "conv1.weight");
    for (auto& s : bn) expect.push_back(std::string(blk) + "bn1." + s);
  }
  expect.push_back("fc.weight");
  expect.push_back("fc.bias");
  CHECK(names_of(net.state_dict()) == expect);

  std::vector<std::string> params = names_of(net.named_parameters());
  CHECK(params == std::vector<std::string>{
                      "conv1.weight", "bn1.weight", "bn1.bias", "layer1.0.conv1.weight",
                      "layer1.0.bn1.weight", "layer1.0.bn1.bias", "layer1.1.conv1.weight",
                      "layer1.1.bn1.weight", "layer1.1.bn1.bias", "fc.weight", "fc.bias"});
  CHECK(names_of(net.named_buffers("encoder_q")).front() == "encoder_q.bn1.running_mean");
  CHECK(names_of(net.state_dict("encoder_k")).back() == "encoder_k.fc.bias");
  for (const Tensor& p : net.parameters()) {
    CHECK(p.requires_grad());
    CHECK(p.is_leaf());
  }
  for (auto& kv : net.named_buffers()) CHECK_FALSE(kv.second.requires_grad());
  CHECK(net.num_parameters() == 4 * 3 * 9 + 8 + 2 * (4 * 4 * 9 + 8) + 2 * 4 + 2);
  // The handles the layers keep are the registered tensors.
  CHECK(net.fc->weight.same(net.state_dict()[expect.size() - 2].second));
}

TEST_CASE("module: registration errors and shared parameters") {
  Module m;
  m.register_parameter("w", zeros({2}));
  CHECK_THROWS_WITH(m.register_parameter("w", zeros({2})), Contains("already used"));
  CHECK_THROWS_WITH(m.register_buffer("w", zeros({2})), Contains("already used"));
  CHECK_THROWS_WITH(m.register_buffer("a.b", zeros({2})), Contains("'.'"));
  CHECK_THROWS_AS(m.register_parameter("", zeros({2})), Error);
  CHECK_THROWS_AS(m.register_parameter("i", zeros({2}, DType::I64)), Error);
  CHECK_THROWS_AS(m.register_buffer("u", Tensor()), Error);
  CHECK_THROWS_AS(m.register_module("w", std::make_shared<Module>()), Error);
  // A non-leaf becomes a leaf parameter.
  Tensor x = from_vector({1, 2}, {2}).set_requires_grad(true);
  Tensor& y = m.register_parameter("y", mul_scalar(x, 2.0));
  CHECK(y.is_leaf());
  CHECK(y.requires_grad());
  // The returned reference stays valid as more tensors are registered.
  for (int i = 0; i < 100; ++i) m.register_buffer("b" + std::to_string(i), zeros({1}));
  CHECK(y.to_vector() == std::vector<double>{2, 4});
  // A tensor shared by two children is one parameter (listed once), but two state-dict entries.
  auto a = std::make_shared<Module>(), b = std::make_shared<Module>();
  Tensor shared = zeros({3});
  a->register_parameter("w", shared);
  b->register_parameter("w", shared);
  Module root;
  root.register_module("a", a);
  root.register_module("b", b);
  CHECK(root.parameters().size() == 1);
  CHECK(root.num_parameters() == 3);
  CHECK(root.state_dict().size() == 2);
}

TEST_CASE("module: state dict round trip through safetensors") {
  Net a, b;
  randomize(a, 1);
  randomize(b, 2);
  char tmpl[] = "/tmp/slotcon_module_XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  const std::string path = std::string(tmpl) + "/net.safetensors";
  write_safetensors(path, to_map(a.state_dict("encoder_k")), {{"epoch", "3"}});
  SafetensorsFile f = read_safetensors(path);
  std::remove(path.c_str());
  rmdir(tmpl);
  CHECK(f.metadata.at("epoch") == "3");
  // Strip the prefix, as a torchvision backbone file would have it.
  TensorMap stripped;
  for (auto& kv : f.tensors)
    stripped[kv.first.substr(std::string("encoder_k.").size())] = kv.second;
  Tensor fc_w = b.fc->weight;  // a handle taken before loading sees the loaded values
  b.load_state_dict(stripped);
  auto sa = a.state_dict(), sb = b.state_dict();
  REQUIRE(sa.size() == sb.size());
  for (size_t i = 0; i < sa.size(); ++i) {
    INFO(sa[i].first);
    CHECK(sb[i].second.dtype() == sa[i].second.dtype());
    CHECK(sb[i].second.to_vector() == sa[i].second.to_vector());
  }
  CHECK(fc_w.to_vector() == a.fc->weight.to_vector());
  CHECK(b.fc->weight.is_leaf());
  CHECK(b.fc->weight.requires_grad());
  CHECK(b.layer1->named_children().size() == 2);
  // F64 values load into an F32 module (converted) and I64 counters stay exact.
  TensorMap f64;
  for (auto& kv : stripped)
    f64[kv.first] = is_floating(kv.second.dtype()) ? kv.second.to(DType::F64) : kv.second;
  Net c;
  c.load_state_dict(f64);
  CHECK(c.fc->weight.dtype() == DType::F32);
  CHECK(c.fc->weight.to_vector() == a.fc->weight.to_vector());
  CHECK(c.bn1->num_batches_tracked.item() == a.bn1->num_batches_tracked.item());
}

TEST_CASE("module: load_state_dict reports missing, unexpected and mismatched names") {
  Net ref;
  randomize(ref, 5);
  const TensorMap good = to_map(ref.state_dict());

  Net n;
  const std::vector<double> before = n.fc->weight.to_vector();
  TensorMap missing = good;
  missing.erase("layer1.1.conv1.weight");
  missing.erase("fc.bias");
  std::string msg = load_error(n, missing);
  CHECK_THAT(msg,
             Contains("2 missing") && Contains("layer1.1.conv1.weight") && Contains("fc.bias"));
  CHECK(n.fc->weight.to_vector() == before);  // nothing loaded on error
  CHECK(load_error(n, missing, /*strict=*/false) == "<no error>");

  TensorMap extra = good;
  extra["layer2.0.conv1.weight"] = zeros({1});
  CHECK_THAT(load_error(n, extra), Contains("1 unexpected") && Contains("layer2.0.conv1.weight"));
  CHECK(load_error(n, extra, false) == "<no error>");

  TensorMap wrong = good;
  wrong["fc.weight"] = zeros({4, 2});
  msg = load_error(n, wrong);
  CHECK_THAT(msg, Contains("shape mismatch") && Contains("fc.weight") && Contains("[2, 4]") &&
                      Contains("[4, 2]"));
  CHECK_THAT(load_error(n, wrong, /*strict=*/false), Contains("fc.weight"));

  // All three at once are all reported.
  TensorMap all = missing;
  all["bogus"] = zeros({1});
  all["fc.weight"] = zeros({3});
  msg = load_error(n, all);
  CHECK_THAT(msg, Contains("missing") && Contains("unexpected") && Contains("bogus") &&
                      Contains("shape mismatch"));
}

TEST_CASE("module: num_batches_tracked may be absent (or extra) when declared optional") {
  Net ref;
  randomize(ref, 6);
  TensorMap without;
  for (auto& kv : ref.state_dict())
    if (kv.first.find("num_batches_tracked") == std::string::npos) without.insert(kv);
  Net n;
  n.bn1->num_batches_tracked.data<int64_t>()[0] = 42;
  std::string msg = load_error(n, without);
  CHECK_THAT(msg, Contains("3 missing") && Contains("layer1.0.bn1.num_batches_tracked"));
  CHECK(load_error(n, without, true, {"num_batches_tracked"}) == "<no error>");
  CHECK(n.bn1->num_batches_tracked.item() == 42);  // absent: left as it was
  CHECK(n.fc->bias.to_vector() == ref.fc->bias.to_vector());
  // The match is on whole name components only.
  CHECK_THAT(load_error(n, without, true, {"tracked"}), Contains("missing"));
  // A file with the counters loads into a module without them when they are optional.
  Module plain;
  plain.register_parameter("weight", zeros({4}));
  TensorMap with{{"weight", ones({4})}, {"num_batches_tracked", zeros({}, DType::I64)}};
  CHECK_THAT(load_error(plain, with), Contains("unexpected"));
  CHECK(load_error(plain, with, true, {"num_batches_tracked"}) == "<no error>");
}

TEST_CASE("module: train/eval reach the whole tree") {
  Net n;
  CHECK(n.is_training());
  n.eval();
  CHECK_FALSE(n.is_training());
  CHECK_FALSE(n.layer1->is_training());
  for (auto& c : n.layer1->named_children()) {
    CHECK_FALSE(c.second->is_training());
    CHECK_FALSE(std::static_pointer_cast<Block>(c.second)->bn1->is_training());
  }
  n.layer1->train();
  CHECK_FALSE(n.is_training());
  CHECK(std::static_pointer_cast<Block>(n.layer1->named_children()[1].second)->bn1->is_training());
  n.train();
  CHECK(n.fc->is_training());
}

TEST_CASE("module: to(dtype) converts in place, parameters stay leaves, zero_grad clears") {
  Net n;
  randomize(n, 8);
  const std::vector<double> w = n.fc->weight.to_vector();
  Tensor handle = n.fc->weight;
  n.to(DType::F64);
  CHECK(n.fc->weight.dtype() == DType::F64);
  CHECK(handle.dtype() == DType::F64);  // the same tensor
  CHECK(handle.to_vector() == w);       // F32 -> F64 is exact
  CHECK(n.bn1->num_batches_tracked.dtype() == DType::I64);
  for (const Tensor& p : n.parameters()) {
    CHECK(p.dtype() == DType::F64);
    CHECK(p.is_leaf());
    CHECK(p.requires_grad());
  }
  CHECK_THROWS_AS(n.to(DType::I64), Error);
  n.to(Device::cpu());  // already there: nothing changes
  CHECK(n.fc->weight.same(handle));

  // Gradients flow to the converted parameters, and zero_grad clears them.
  Tensor x = from_vector({1, 2, 3, 4}, {1, 4}, DType::F64);
  sum(n.fc->forward(x)).backward();
  REQUIRE(n.fc->weight.grad().defined());
  CHECK(n.fc->weight.grad().dtype() == DType::F64);
  CHECK(n.fc->weight.grad().to_vector() == std::vector<double>{1, 2, 3, 4, 1, 2, 3, 4});
  CHECK(n.fc->bias.grad().to_vector() == std::vector<double>{1, 1});
  n.to(DType::F32);  // the gradient is converted with its parameter
  CHECK(n.fc->weight.grad().dtype() == DType::F32);
  n.zero_grad();
  CHECK_FALSE(n.fc->weight.grad().defined());
  CHECK_FALSE(n.fc->bias.grad().defined());
}

TEST_CASE("module: Linear computes x W^T + b") {
  Linear lin(3, 2);
  CHECK(lin.weight.shape() == Shape{2, 3});
  CHECK(lin.bias.shape() == Shape{2});
  CHECK(lin.weight.to_vector() == std::vector<double>(6, 0.0));  // starts at zero
  Tensor w = from_vector({1, 2, 3, -1, 0, 1}, {2, 3});
  Tensor b = from_vector({0.5, -0.5}, {2});
  lin.load_state_dict({{"weight", w}, {"bias", b}});
  Tensor x = from_vector({1, 1, 1, 2, 0, -1}, {2, 3});
  CHECK(lin.forward(x).to_vector() == std::vector<double>{6.5, -0.5, -0.5, -3.5});
  Linear nob(3, 2, /*bias=*/false);
  CHECK(names_of(nob.state_dict()) == std::vector<std::string>{"weight"});
  CHECK_FALSE(nob.bias.defined());
  CHECK_THROWS_AS(Linear(0, 2), Error);
}

TEST_CASE("init: normal, truncated normal (rejection and inverse-CDF paths) and constant") {
  auto moments = [](const Tensor& t, double& mean, double& sd, double& lo, double& hi) {
    std::vector<double> v = t.to_vector();
    double s = 0, s2 = 0;
    lo = 1e300;
    hi = -1e300;
    for (double x : v) {
      s += x;
      lo = std::min(lo, x);
      hi = std::max(hi, x);
    }
    mean = s / double(v.size());
    for (double x : v) s2 += (x - mean) * (x - mean);
    sd = std::sqrt(s2 / double(v.size() - 1));
  };
  auto phi = [](double x) { return std::exp(-0.5 * x * x) / std::sqrt(2 * M_PI); };
  auto Phi = [](double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); };
  // Mean and sd of N(0, s^2) truncated to [a, b], from the closed form.
  auto trunc_moments = [&](double s, double a, double b, double& mean, double& sd) {
    const double al = a / s, be = b / s, Z = Phi(be) - Phi(al);
    const double m = (phi(al) - phi(be)) / Z;
    const double v = 1 + (al * phi(al) - be * phi(be)) / Z - m * m;
    mean = m * s;
    sd = std::sqrt(v) * s;
  };
  Generator g(2024);
  double mean, sd, lo, hi, em, es;

  Tensor n = empty({100000}, DType::F64);
  init_normal_(n, g, 0.5, 2.0);
  moments(n, mean, sd, lo, hi);
  CHECK(std::abs(mean - 0.5) < 0.03);  // 4.7 sigma of the sample mean
  CHECK(std::abs(sd - 2.0) < 0.03);

  struct Case {
    double s, a, b;
  };
  // Wide bounds (the usual std 0.02 case), bounds inside the bulk, and a far tail that only the
  // inverse-CDF path can sample efficiently (also mirrored to the negative side).
  for (Case c : {Case{0.02, -2, 2}, Case{1, -2, 2}, Case{1, -0.5, 1.5}, Case{1, 2, 3},
                 Case{0.5, -3, -1.5}}) {
    INFO("std " << c.s << " on [" << c.a << ", " << c.b << "]");
    Tensor t = empty({60000}, DType::F64);
    init_trunc_normal_(t, g, c.s, c.a, c.b);
    moments(t, mean, sd, lo, hi);
    trunc_moments(c.s, c.a, c.b, em, es);
    CHECK(lo >= c.a);
    CHECK(hi <= c.b);
    CHECK(std::abs(mean - em) < 5 * es / std::sqrt(60000.0) + 1e-12);
    CHECK(std::abs(sd - es) < 0.02 * es);
  }
  Tensor f = empty({1000}, DType::F32);
  init_trunc_normal_(f, g, 1.0, -0.25, 0.25);
  moments(f, mean, sd, lo, hi);
  CHECK(lo >= -0.25);
  CHECK(hi <= 0.25);
  CHECK_THROWS_AS(init_trunc_normal_(f, g, 1.0, 1.0, -1.0), Error);
  Tensor i = zeros({3}, DType::I64);
  CHECK_THROWS_AS(init_trunc_normal_(i, g, 1.0), Error);

  Tensor c = empty({2, 3}, DType::BF16);
  init_constant_(c, 0.25);
  CHECK(c.to_vector() == std::vector<double>(6, 0.25));
  // Parameters can be initialised in place without recording anything.
  Linear lin(4, 4);
  init_trunc_normal_(lin.weight, g, 0.02);
  CHECK(lin.weight.is_leaf());
  CHECK_FALSE(lin.weight.grad().defined());
  moments(lin.weight, mean, sd, lo, hi);
  CHECK(sd > 0.005);
}
