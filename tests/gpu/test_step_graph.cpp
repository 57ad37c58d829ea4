// engine/step_graph.h: engine work captured as a CUDA graph and replayed. Nothing runs during the
// capture; a replay runs it on the device memory of that moment (a new input changes the result,
// a host value given at the capture does not); allocations during the capture come from the
// graph's private pool (a tensor made afterwards never gets a captured address); a capture that
// meets an operation it cannot hold (a host synchronisation) fails, says why, and runs nothing.
// On the CUDA emulator in CI (its capture: docs/cuda_emu.md); on a card, the real thing.
#include <catch2/catch.hpp>
#include <set>

#include "engine/cuda_runtime.h"
#include "engine/ops.h"
#include "engine/step_graph.h"
#include "gpu_test_util.h"

using namespace sc;
using namespace sc::testing;

TEST_CASE("gpu step graph: capture runs nothing, replays read the inputs of their time",
          "[gpu][graph]") {
  const Device dev = Device::cuda(0);
  Tensor x = to_device(from_vector({1, 2, 3}, {3}), dev);
  Tensor y;  // made inside the capture: the graph's output
  std::set<const void*> captured_addresses;
  StepGraph g(dev);
  double scale = 2.0;
  REQUIRE(g.capture([&] {
    Tensor t = mul_scalar(x, scale);  // a temporary of the graph
    y = add_scalar(t, 1.0);
    captured_addresses.insert(t.data_ptr());
    captured_addresses.insert(y.data_ptr());
  }));
  INFO(g.why());
  CHECK(g.captured());
  CHECK(g.why().empty());
  // recorded, not run: y holds whatever its block held (the capture queued no work)
  scale = 100.0;  // a host value after the capture changes nothing
  g.replay();
  CHECK(y.to(Device::cpu()).to_vector() == std::vector<double>{3, 5, 7});
  copy_(x, to_device(from_vector({10, 20, 30}, {3}), dev));  // a new input, same address
  g.replay();
  CHECK(y.to(Device::cpu()).to_vector() == std::vector<double>{21, 41, 61});
  CHECK(g.replays() == 2);
  // tensors made now, of the same sizes, never take the graph's blocks (its private pool)
  for (int i = 0; i < 8; ++i) {
    Tensor t = empty({3}, DType::F32, dev);
    CHECK(captured_addresses.count(t.data_ptr()) == 0);
  }
}

TEST_CASE("gpu step graph: a host synchronisation ends the capture, which says so and runs nothing",
          "[gpu][graph]") {
  const Device dev = Device::cuda(0);
  Tensor x = to_device(from_vector({1, 2, 3}, {3}), dev);
  StepGraph g(dev);
  const bool ok = g.capture([&] {
    fill_(x, 9.0);
    cuda_synchronize(0);  // cannot be captured
  });
  CHECK_FALSE(ok);
  CHECK_FALSE(g.captured());
  INFO(g.why());
  CHECK_FALSE(g.why().empty());
  CHECK(x.to(Device::cpu()).to_vector() == std::vector<double>{1, 2, 3});  // the fill never ran
  REQUIRE_THROWS_WITH(g.replay(), Catch::Contains("nothing captured"));
  // the engine goes on as before: the stream works, a new capture succeeds
  fill_(x, 4.0);
  CHECK(x.to(Device::cpu()).to_vector() == std::vector<double>{4, 4, 4});
  StepGraph h(dev);
  CHECK(h.capture([&] { fill_(x, 5.0); }));
  h.replay();
  CHECK(x.to(Device::cpu()).to_vector() == std::vector<double>{5, 5, 5});
}
