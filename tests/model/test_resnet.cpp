// ResNet backbones: torchvision parameter counts and names, initialisation, output shapes at
// 224 px, a residual block's float64 gradient check, BN running statistics, NHWC = NCHW, and a
// state dict round trip through safetensors.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <set>
#include <string>

#include "test_seed.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/safetensors.h"
#include "gradcheck.h"
#include "model/resnet.h"

using namespace sc;

namespace {
std::set<std::string> names_of(const NamedTensors& nt) {
  std::set<std::string> s;
  for (auto& kv : nt) s.insert(kv.first);
  return s;
}
}  // namespace

TEST_CASE("ResNet parameter counts and state-dict names equal torchvision's (no fc)", "[resnet]") {
  Generator gen(1);
  ResNet r18(18, gen), r34(34, gen), r50(50, gen);
  REQUIRE(r18.num_parameters() == 11176512);
  REQUIRE(r34.num_parameters() == 21284672);
  REQUIRE(r50.num_parameters() == 23508032);
  REQUIRE(r18.out_channels() == 512);
  REQUIRE(r50.out_channels() == 2048);
  // torchvision's state_dict() minus fc.weight / fc.bias.
  REQUIRE(r18.state_dict().size() == 120);
  REQUIRE(r50.state_dict().size() == 318);
  auto n50 = names_of(r50.state_dict());
  for (const char* name :
       {"conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
        "bn1.num_batches_tracked", "layer1.0.conv1.weight", "layer1.0.conv3.weight",
        "layer1.0.bn3.running_var", "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.running_var", "layer2.3.bn2.bias", "layer3.5.conv2.weight",
        "layer4.0.downsample.1.weight", "layer4.2.bn3.num_batches_tracked"})
    REQUIRE(n50.count(name) == 1);
  REQUIRE(n50.count("layer1.1.downsample.0.weight") == 0);
  REQUIRE(n50.count("fc.weight") == 0);
  auto n18 = names_of(r18.state_dict());
  REQUIRE(n18.count("layer1.0.downsample.0.weight") == 0);  // 64 -> 64, stride 1
  REQUIRE(n18.count("layer2.0.downsample.0.weight") == 1);
  REQUIRE(n18.count("layer4.1.bn2.running_mean") == 1);
  // Shapes of a few tensors.
  TensorMap sd;
  for (auto& kv : r50.state_dict()) sd[kv.first] = kv.second;
  REQUIRE(sd["conv1.weight"].shape() == Shape{64, 3, 7, 7});
  REQUIRE(sd["layer2.0.conv2.weight"].shape() == Shape{128, 128, 3, 3});
  REQUIRE(sd["layer2.0.downsample.0.weight"].shape() == Shape{512, 256, 1, 1});
  REQUIRE(sd["layer4.2.bn3.weight"].shape() == Shape{2048});
  REQUIRE(sd["bn1.num_batches_tracked"].dtype() == DType::I64);
  REQUIRE(sd["bn1.num_batches_tracked"].dim() == 0);
}

TEST_CASE("ResNet initialisation follows docs/method.md section 1", "[resnet]") {
  Generator gen(sc::testing::next_seed());
  ResNet r(50, gen);
  for (auto& kv : r.named_parameters()) {
    const std::string& n = kv.first;
    auto v = kv.second.to_vector();
    if (kv.second.dim() == 4) {  // conv: N(0, sqrt(2 / (k k out)))
      const double k = double(kv.second.size(2)), out = double(kv.second.size(0));
      const double expect = std::sqrt(2.0 / (k * k * out));
      double s = 0, s2 = 0;
      for (double x : v) s += x, s2 += x * x;
      const double mean = s / double(v.size()), sd = std::sqrt(s2 / double(v.size()) - mean * mean);
      INFO(n << " std " << sd << " expected " << expect);
      REQUIRE(std::fabs(mean) < 6 * expect / std::sqrt(double(v.size())));
      REQUIRE(std::fabs(sd / expect - 1) < 0.1);
    } else {
      const bool is_weight = n.size() > 7 && n.substr(n.size() - 7) == ".weight";
      const bool last_bn = n.find(".bn3.weight") != std::string::npos;
      double expect = is_weight ? (last_bn ? 0.0 : 1.0) : 0.0;
      INFO(n);
      for (double x : v) REQUIRE(x == expect);
    }
  }
  Generator g2(3);
  ResNet r18(18, g2);
  for (auto& kv : r18.named_parameters()) {
    if (kv.first.find(".bn2.weight") != std::string::npos)
      for (double x : kv.second.to_vector()) REQUIRE(x == 0.0);
    if (kv.first.find("downsample.1.weight") != std::string::npos ||
        kv.first.find(".bn1.weight") != std::string::npos)
      for (double x : kv.second.to_vector()) REQUIRE(x == 1.0);
  }
}

TEST_CASE("ResNet-18 and ResNet-50 return the stride-32 map: 512x7x7 and 2048x7x7 at 224 px",
          "[resnet]") {
  Generator gen(sc::testing::next_seed());
  REQUIRE(resnet_output_size(224) == 7);
  REQUIRE(resnet_output_size(64) == 2);
  REQUIRE(resnet_output_size(96) == 3);
  ResNet r18(18, gen);
  Tensor x = randn({1, 3, 224, 224}, gen);
  Tensor y = r18.forward(x);
  REQUIRE(y.shape() == Shape{1, 512, 7, 7});
  ResNet r50(50, gen);
  NoGradGuard ng;
  Tensor y50 = r50.forward(x);
  REQUIRE(y50.shape() == Shape{1, 2048, 7, 7});
  // Every block ends in a ReLU: outputs are finite and non-negative.
  for (double v : y50.to_vector()) REQUIRE((std::isfinite(v) && v >= 0));
  REQUIRE(r50.forward(randn({2, 3, 96, 64}, gen)).shape() == Shape{2, 2048, 3, 2});
}

TEST_CASE("residual blocks: float64 gradient check of input and every parameter", "[resnet]") {
  Generator gen(sc::testing::next_seed());
  auto check = [&](Module& block, const std::function<Tensor(const Tensor&)>& fwd, Shape xs) {
    NamedTensors params = block.named_parameters();
    {
      NoGradGuard ng;
      for (auto& kv : params) {  // non-zero gammas so that every branch carries gradient
        Tensor r = rand_uniform(kv.second.shape(), gen, 0.5, 1.5, DType::F64);
        copy_(kv.second, r);
      }
    }
    std::vector<Tensor> in = {sc::testing::rand64(xs, gen)};
    for (auto& kv : params) in.push_back(kv.second);
    sc::testing::GradcheckOptions o;
    o.seed = gen.next_u64();
    return sc::testing::gradcheck([&](const std::vector<Tensor>& t) { return fwd(t[0]); }, in, o);
  };
  BasicBlock basic(2, 3, 2, DType::F64, Device::cpu());  // with a downsample branch
  REQUIRE(basic.down_conv != nullptr);
  REQUIRE(check(basic, [&](const Tensor& x) { return basic.forward(x); }, {2, 2, 5, 4}) == "");
  Bottleneck bottle(4, 2, 2, DType::F64, Device::cpu());
  REQUIRE(bottle.down_conv != nullptr);
  REQUIRE(check(bottle, [&](const Tensor& x) { return bottle.forward(x); }, {2, 4, 5, 5}) == "");
  Bottleneck identity_block(8, 2, 1, DType::F64, Device::cpu());  // identity shortcut
  REQUIRE(identity_block.down_conv == nullptr);
  REQUIRE(check(identity_block, [&](const Tensor& x) { return identity_block.forward(x); },
                {2, 8, 3, 4}) == "");
}

TEST_CASE("BatchNorm module: running statistics after two training steps", "[resnet]") {
  Generator gen(sc::testing::next_seed());
  BatchNorm bn(3);
  std::vector<double> em(3, 0.0), ev(3, 1.0);
  for (int step = 0; step < 2; ++step) {
    Tensor x = randn({4, 3, 2, 2}, gen);
    bn.forward(x);
    auto v = x.to_vector();
    for (int c = 0; c < 3; ++c) {
      double s = 0, s2 = 0;
      for (int n = 0; n < 4; ++n)
        for (int k = 0; k < 4; ++k) s += v[size_t((n * 3 + c) * 4 + k)];
      const double mean = s / 16;
      for (int n = 0; n < 4; ++n)
        for (int k = 0; k < 4; ++k) {
          const double d = v[size_t((n * 3 + c) * 4 + k)] - mean;
          s2 += d * d;
        }
      em[size_t(c)] = 0.9 * em[size_t(c)] + 0.1 * mean;
      ev[size_t(c)] = 0.9 * ev[size_t(c)] + 0.1 * s2 / 15;
    }
  }
  REQUIRE(bn.num_batches_tracked.item() == 2);
  auto m = bn.running_mean.to_vector(), v = bn.running_var.to_vector();
  for (int c = 0; c < 3; ++c) {
    REQUIRE(m[size_t(c)] == Approx(em[size_t(c)]).margin(1e-6));
    REQUIRE(v[size_t(c)] == Approx(ev[size_t(c)]).margin(1e-6));
  }
  // Eval mode: running statistics used and left alone.
  bn.eval();
  Tensor x = randn({2, 3, 2, 2}, gen);
  Tensor y = bn.forward(x);
  REQUIRE(bn.num_batches_tracked.item() == 2);
  auto xv = x.to_vector(), yv = y.to_vector();
  for (size_t i = 0; i < xv.size(); ++i) {
    const size_t c = (i / 4) % 3;
    REQUIRE(yv[i] == Approx((xv[i] - m[c]) / std::sqrt(v[c] + 1e-5)).margin(1e-5));
  }
}

TEST_CASE("ResNet: channels-last weights and NHWC input give the NCHW result", "[resnet]") {
  Generator gen(sc::testing::next_seed());
  const uint64_t seed = gen.next_u64();
  Generator ga(seed), gb(seed);
  ResNet a(18, ga), b(18, gb);
  convert_conv_weights_channels_last(b);
  TensorMap sa;
  for (auto& kv : a.state_dict()) sa[kv.first] = kv.second;
  for (auto& kv : b.named_parameters()) {
    if (kv.second.dim() == 4 && kv.second.size(2) > 1) REQUIRE(!kv.second.is_contiguous());
    REQUIRE(compare(kv.second, sa[kv.first], 0, 0).max_abs == 0);
    REQUIRE(kv.second.requires_grad());
  }
  Tensor x = randn({2, 3, 64, 64}, gen);
  NoGradGuard ng;
  Tensor ya = a.forward(x);
  Tensor yb = b.forward(x.contiguous(MemoryFormat::ChannelsLast));
  REQUIRE(yb.shape() == Shape{2, 512, 2, 2});
  REQUIRE(compare(yb, ya, 1e-4, 1e-4).max_scaled <= 1);
}

TEST_CASE("ResNet state dict round-trips through safetensors", "[resnet]") {
  Generator gen(sc::testing::next_seed());
  ResNet a(18, gen);
  // Make the buffers non-trivial: two training steps.
  a.forward(randn({2, 3, 32, 32}, gen));
  a.forward(randn({2, 3, 32, 32}, gen));
  TensorMap sd;
  for (auto& kv : a.state_dict()) sd[kv.first] = kv.second;
  const std::string path = std::string(SLOTCON_BINARY_DIR) + "/test_resnet_state.safetensors";
  write_safetensors(path, sd);
  SafetensorsFile f = read_safetensors(path);
  std::remove(path.c_str());
  REQUIRE(f.tensors.size() == sd.size());
  Generator g2(12345);
  ResNet b(18, g2);
  b.load_state_dict(f.tensors);
  auto sb = b.state_dict();
  REQUIRE(sb.size() == sd.size());
  for (auto& kv : sb) {
    INFO(kv.first);
    REQUIRE(sd.count(kv.first) == 1);
    REQUIRE(kv.second.dtype() == sd[kv.first].dtype());
    REQUIRE(kv.second.shape() == sd[kv.first].shape());
    REQUIRE(kv.second.to_vector() == sd[kv.first].to_vector());
  }
  REQUIRE(sd["layer1.0.bn1.num_batches_tracked"].item() == 2);
}
