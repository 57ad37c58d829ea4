// GPU tests of the input path slotcon train takes on a GPU: uint8 crops uploaded on the copy
// stream (engine/upload.h), then normalised on the device (normalize_images) into the compute
// dtype and layout. Against the CPU's normalize_images of the same bytes: F32 and F64 exactly
// (the same float expression, IEEE division, nothing to fuse), BF16 and F16 exactly the CPU's F32
// value rounded once. Odd sizes (B 3, 17 x 13 pixels), NCHW and NHWC. The Uploader: three
// batches through two slots each land intact, the copied bytes are counted, a step's upload
// makes no device allocation once both buffers exist and no host synchronisation.
#include <catch2/catch.hpp>
#include <cstring>
#include <vector>

#include "engine/cuda_runtime.h"
#include "engine/nn_ops.h"
#include "engine/ops.h"
#include "engine/upload.h"
#include "gpu_test_util.h"

using namespace sc;
using namespace sc::testing;

namespace {
const ImageNorm kNorm{{0.485f, 0.456f, 0.406f}, {0.229f, 0.224f, 0.225f}};

Tensor random_u8(const Shape& s, Generator& gen) {
  return cast(rand_uniform(s, gen, 0.0, 255.99, DType::F64), DType::U8);  // truncates
}
}  // namespace

TEST_CASE("gpu normalize_images matches the CPU exactly, every dtype, both layouts",
          "[gpu][upload]") {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  const Tensor u8 = random_u8({3, 17, 13, 3}, gen);
  const Tensor d = to_device(u8, Device::cuda(0));
  PoisonGuard poison;
  for (MemoryFormat fmt : {MemoryFormat::Contiguous, MemoryFormat::ChannelsLast})
    for (DType dt : {DType::F32, DType::F64, DType::BF16, DType::F16}) {
      INFO(dtype_name(dt) << (fmt == MemoryFormat::ChannelsLast ? " NHWC" : " NCHW"));
      const Tensor want = cast(normalize_images(u8, kNorm, ref_dtype(dt), fmt), dt);
      const Tensor got = normalize_images(d, kNorm, dt, fmt).to(Device::cpu());
      CHECK(got.strides() == want.strides());
      SC_CHECK_CLOSE(got, want, (Tol{0.0, 0.0}));
    }
}

TEST_CASE("gpu Uploader: batches through two slots land intact, counted, without allocations",
          "[gpu][upload]") {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  Uploader up(Device::cuda(0), 2);
  std::vector<Tensor> host, norm;
  for (int i = 0; i < 5; ++i) {
    host.push_back(random_u8({2, 9, 7, 3}, gen).pin_memory());
    const DeviceCounters c0 = device_counters();
    const Tensor d = up.upload(host.back(), 0);
    norm.push_back(normalize_images(d, kNorm, DType::F32));
    up.consumed(0);
    const DeviceCounters c = device_counters() - c0;
    CHECK(c.h2d_bytes == uint64_t(2 * 9 * 7 * 3));
    CHECK(c.host_syncs == 0);
    if (i >= 2) CHECK(c.device_mallocs == 0);  // both buffers exist
    // a buffer's contents until `slots` later uploads
    if (i >= 1) {
      const Tensor h = d.to(Device::cpu());
      CHECK(std::memcmp(h.data_ptr(), host.back().data_ptr(), size_t(d.numel())) == 0);
    }
  }
  for (size_t i = 0; i < host.size(); ++i)
    SC_CHECK_CLOSE(norm[i].to(Device::cpu()), normalize_images(host[i], kNorm, DType::F32),
                   (Tol{0.0, 0.0}));
  // a second input has its own buffers; a host tensor is required
  const Tensor other = random_u8({1, 4, 4, 3}, gen);
  CHECK(up.upload(other, 1).to(Device::cpu()).to_vector() == other.to_vector());
  CHECK_THROWS_AS(up.upload(to_device(other, Device::cuda(0)), 0), Error);
  CHECK_THROWS_AS(up.consumed(5), Error);
}
