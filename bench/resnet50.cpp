// bench_resnet50: ResNet-50 forward + backward training throughput (images/s) at batch 64,
// 224 px, BF16 NHWC activations with F32 master weights kept channels-last (the autocast-like
// path of model/resnet_layers.h), BatchNorm in training mode. The loss is the mean of the
// stride-32 map. Warm-up steps first (they include cuDNN's algorithm search), then the median
// step time over the timed steps (host clock around a device synchronisation per step).
//
// The PyTorch baseline (bench/resnet50_torch.py: channels_last + autocast bf16, same settings) is
// run afterwards in the same invocation when python3 and the script are found (pass the script's
// path as the first argument, or run from the repository root or a build folder inside it).
// Without a GPU this prints one line and exits 0.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "bench_baseline.h"
#include "engine/autograd.h"
#include "engine/cuda_runtime.h"
#include "engine/nn_ops.h"
#include "engine/ops.h"
#include "model/resnet.h"

using namespace sc;

int main(int argc, char** argv) {
  if (!cuda_available()) {
    std::printf("bench_resnet50: no CUDA device present, nothing to measure\n");
    return 0;
  }
  const int64_t batch = 64, px = 224;
  const int warmup = 5, steps = 20;
  const Device cu = Device::cuda(0);
  Generator gen(0);
  ResNet net(50, gen);
  net.to(cu);
  convert_conv_weights_channels_last(net);
  net.train();
  Tensor x = randn({batch, 3, px, px}, gen, DType::F32, cu)
                 .to(DType::BF16)
                 .contiguous(MemoryFormat::ChannelsLast);
  std::vector<double> ms;
  for (int i = 0; i < warmup + steps; ++i) {
    cuda_synchronize(0);
    auto t0 = std::chrono::steady_clock::now();
    net.zero_grad();
    Tensor y = net.forward(x);
    Tensor loss = mean(cast(y, DType::F32));
    loss.backward();
    cuda_synchronize(0);
    auto t1 = std::chrono::steady_clock::now();
    if (i >= warmup) ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  const double med = ms[ms.size() / 2];
  std::printf(
      "bench_resnet50 (engine) on %s: batch %ld, %ldpx, BF16 NHWC: %.2f ms/step, "
      "%.1f images/s (median of %d, min %.2f ms)\n",
      cuda_device_name(0).c_str(), long(batch), long(px), med, 1000.0 * batch / med, steps,
      ms.front());

  const std::string path = bench::find_script("bench/resnet50_torch.py", argc > 1 ? argv[1] : "");
  std::optional<double> torch_ips;
  if (path.empty())
    std::printf("baseline: bench/resnet50_torch.py not found; pass its path as the argument\n");
  else
    torch_ips = bench::run_baseline(path, "--batch 64 --size 224");
  const double ips = 1000.0 * batch / med;
  if (torch_ips && *torch_ips > 0)
    std::printf("RESULT resnet50 images_per_s=%.1f torch_images_per_s=%.1f ratio=%.2f\n", ips,
                *torch_ips, ips / *torch_ips);
  else
    std::printf("RESULT resnet50 images_per_s=%.1f torch_images_per_s=n/a\n", ips);
  return 0;
}
