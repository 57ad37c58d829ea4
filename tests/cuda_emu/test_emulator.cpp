// Tests of the CUDA emulator itself (cuda_emu.h): that it runs kernels as CUDA would, and that it
// exposes the bugs it claims to (a missing barrier, barrier divergence, deadlock, a bad launch
// configuration, a read of unwritten shared memory).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include "cuda_emu.h"

namespace emu_selftest {
void block_sum(const float* in, float* out, int blocks, bool barrier);
void divergent(float* out);
void deadlock(float* out);
void warp(const double* in, double* out, double* out2, int blocks);
void coords(int64_t* out, dim3 grid, dim3 block);
void count(unsigned long long* c, float* fsum, int blocks, int threads);
cudaError_t dyn_smem(float* before, float* after, int threads, size_t smem, int raise_to);
void write_at(float* p, int i);
void static_smem(float* out, int* flags, int blocks);
void wmma_tf32(const float* a, const float* b, float* d, int a_off, bool sync);
}  // namespace emu_selftest

namespace es = emu_selftest;

TEST_CASE("emulator: a shared-memory reduction with barriers is exact, without one it is not",
          "[cuda_emu]") {
  const int blocks = 3;
  std::vector<float> in(size_t(blocks) * 256), out(blocks);
  for (size_t i = 0; i < in.size(); ++i) in[i] = float(i % 97);
  const uint64_t launched = emu::launches();
  es::block_sum(in.data(), out.data(), blocks, true);
  CHECK(emu::launches() == launched + 1);
  for (int b = 0; b < blocks; ++b) {
    double want = 0;
    for (int t = 0; t < 256; ++t) want += in[size_t(b * 256 + t)];
    CHECK(out[size_t(b)] == float(want));
  }
  std::vector<float> racy(blocks);
  es::block_sum(in.data(), racy.data(), blocks, false);
  bool any_wrong = false;
  for (int b = 0; b < blocks; ++b) any_wrong = any_wrong || racy[size_t(b)] != out[size_t(b)];
  CHECK(any_wrong);
}

TEST_CASE("emulator: barrier divergence and deadlock are reported", "[cuda_emu]") {
  std::vector<float> out(64, 0.f);
  REQUIRE_THROWS_WITH(es::divergent(out.data()),
                      Catch::Contains("barrier divergence") && Catch::Contains("divergent_kernel"));
  REQUIRE_THROWS_WITH(es::deadlock(out.data()), Catch::Contains("deadlock"));
  // The emulator is usable again after a failed launch.
  std::vector<float> in(256, 1.f), sum(1);
  es::block_sum(in.data(), sum.data(), 1, true);
  CHECK(sum[0] == 256.f);
}

TEST_CASE("emulator: warp shuffles", "[cuda_emu]") {
  const int blocks = 2, n = blocks * 64;
  const size_t nn = size_t(n);
  std::vector<double> in(nn), out(nn / 32), down(nn);
  for (int i = 0; i < n; ++i) in[size_t(i)] = 1.0 + i * 0.25;
  es::warp(in.data(), out.data(), down.data(), blocks);
  for (int w = 0; w < n / 32; ++w) {
    double want = 0;
    for (int l = 0; l < 32; ++l) want += in[size_t(w * 32 + l)];
    CHECK(out[size_t(w)] == want);
  }
  for (int i = 0; i < n; ++i) {
    const bool last_lane = i % 32 == 31;  // shfl_down past the warp returns the lane's own value
    CHECK(down[size_t(i)] == in[size_t(last_lane ? i : i + 1)]);
  }
}

TEST_CASE("emulator: 3-D grids and blocks", "[cuda_emu]") {
  const dim3 grid(3, 2, 2), block(4, 3, 2);
  const size_t n = 3 * 2 * 2 * 4 * 3 * 2;
  std::vector<int64_t> out(n, -1);
  es::coords(out.data(), grid, block);
  size_t i = 0;
  for (unsigned bz = 0; bz < 2; ++bz)
    for (unsigned by = 0; by < 2; ++by)
      for (unsigned bx = 0; bx < 3; ++bx)
        for (unsigned tz = 0; tz < 2; ++tz)
          for (unsigned ty = 0; ty < 3; ++ty)
            for (unsigned tx = 0; tx < 4; ++tx, ++i)
              CHECK(out[i] == ((((int64_t(bz) * 8 + by) * 8 + bx) * 8 + tz) * 8 + ty) * 8 + tx);
}

TEST_CASE("emulator: atomics from every thread of every block", "[cuda_emu]") {
  // The second launch from the same site runs without fibers (no barrier in the first): same sums.
  for (int rep = 0; rep < 2; ++rep) {
    unsigned long long c = 0;
    float f = 0.f;
    const uint64_t threads = emu::threads_run();
    es::count(&c, &f, 5, 96);
    CHECK(emu::threads_run() == threads + 5 * 96);
    CHECK(c == 5ull * 96ull);
    CHECK(f == 0.5f * 5 * 96);
  }
}

TEST_CASE("emulator: dynamic shared memory is poisoned and its limit enforced", "[cuda_emu]") {
  std::vector<float> before(128), after(128);
  REQUIRE(es::dyn_smem(before.data(), after.data(), 128, 128 * sizeof(float), 0) == cudaSuccess);
  for (int t = 0; t < 128; ++t) {
    CHECK(std::isnan(before[size_t(t)]));
    CHECK(after[size_t(t)] == float(127 - t));
  }
  // 64 KiB needs cudaFuncSetAttribute first; more than 227 KiB is refused outright.
  CHECK(es::dyn_smem(before.data(), after.data(), 128, 64 * 1024, 0) ==
        cudaErrorInvalidConfiguration);
  CHECK(es::dyn_smem(before.data(), after.data(), 128, 64 * 1024, 64 * 1024) == cudaSuccess);
  CHECK(es::dyn_smem(before.data(), after.data(), 128, 64 * 1024, 300 * 1024) ==
        cudaErrorInvalidValue);
  // A block of more than 1024 threads is an invalid configuration.
  std::vector<float> big(2048);
  CHECK(es::dyn_smem(big.data(), big.data(), 2048, 0, 0) == cudaErrorInvalidConfiguration);
}

TEST_CASE("emulator: static shared memory is poisoned at every block start", "[cuda_emu]") {
  // block 0 would read zeros (a static's initial value) and later blocks the previous block's 7s
  std::vector<float> out(3 * 32);
  std::vector<int> flags(3, 0);
  es::static_smem(out.data(), flags.data(), 3);
  for (int b = 0; b < 3; ++b) {
    INFO("block " << b);
    CHECK(out[size_t(b * 32)] == float(b + 1));
    for (int t = 1; t < 32; ++t) CHECK(std::isnan(out[size_t(b * 32 + t)]));
    CHECK(flags[size_t(b)] == -1);  // 0xFF bytes
  }
}

TEST_CASE("emulator: half and bfloat16 conversions round to nearest even", "[cuda_emu]") {
  CHECK(__half(1.0f).x == 0x3c00);
  CHECK(__half(-2.0f).x == 0xc000);
  CHECK(__half(65504.0f).x == 0x7bff);
  CHECK(__half(65519.0f).x == 0x7bff);
  CHECK(__half(65520.0f).x == 0x7c00);  // rounds to Inf
  CHECK(__half(5.9604645e-8f).x == 0x0001);  // smallest subnormal
  CHECK(__half(2.9802322e-8f).x == 0x0000);  // half of it: tie to even (0)
  CHECK(__half(1.0f + 1.0f / 2048).x == 0x3c00);  // tie: to even
  CHECK(__half(1.0f + 3.0f / 2048).x == 0x3c02);  // tie: to even (up)
  CHECK(std::isnan(float(__half(NAN))));
  for (unsigned short h : {0x0001, 0x03ff, 0x0400, 0x3555, 0x7bff, 0x8001, 0xfbff}) {
    __half v;
    v.x = h;
    CHECK(__half(float(v)).x == h);
  }
  CHECK(__nv_bfloat16(1.0f).x == 0x3f80);
  CHECK(__nv_bfloat16(1.0f + 1.0f / 256).x == 0x3f80);  // tie: to even
  CHECK(__nv_bfloat16(1.0f + 3.0f / 256).x == 0x3f82);
  CHECK(float(__nv_bfloat16(-3.5f)) == -3.5f);
  CHECK(std::isinf(float(__nv_bfloat16(3.4e38f))));
}

namespace {
// Runs f in a child process; returns its stderr and how it ended.
struct ChildEnd {
  std::string err;
  bool signaled = false;
  int sig = 0;
};
template <class F>
ChildEnd in_child(F&& f) {
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    dup2(fds[1], 2);
    close(fds[0]);
    f();
    _exit(0);
  }
  close(fds[1]);
  ChildEnd e;
  char buf[512];
  for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;) e.err.append(buf, size_t(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  e.signaled = WIFSIGNALED(status);
  e.sig = e.signaled ? WTERMSIG(status) : 0;
  return e;
}
}  // namespace

TEST_CASE("emulator: out-of-bounds writes to device memory are caught", "[cuda_emu]") {
  // 100 floats: bytes 400..511 are canary, the guard page starts at byte 512.
  const ChildEnd far = in_child([] {
    float* p = nullptr;
    cudaMalloc(&p, 100 * sizeof(float));
    es::write_at(p, 130);
  });
  CHECK(far.signaled);
  CHECK(far.sig == SIGSEGV);
  CHECK_THAT(far.err, Catch::Contains("past the end of a cudaMalloc allocation of 400 bytes") &&
                          Catch::Contains("write_at_kernel") && Catch::Contains("thread (0,0,0)"));
  const ChildEnd near = in_child([] {
    float* p = nullptr;
    cudaMalloc(&p, 100 * sizeof(float));
    es::write_at(p, 100);
    cudaFree(p);
  });
  CHECK(near.signaled);
  CHECK(near.sig == SIGABRT);
  CHECK_THAT(near.err, Catch::Contains("kernel write_at_kernel wrote outside a cudaMalloc "
                                       "allocation of 400 bytes"));
  // In bounds: nothing to report.
  float* p = nullptr;
  REQUIRE(cudaMalloc(&p, 100 * sizeof(float)) == cudaSuccess);
  es::write_at(p, 99);
  CHECK(p[99] == 1.f);
  CHECK(reinterpret_cast<uintptr_t>(p) % 256 == 0);
  CHECK(cudaFree(p) == cudaSuccess);
  CHECK(cudaFree(p) == cudaErrorInvalidValue);  // twice
  CHECK(cudaGetLastError() == cudaErrorInvalidValue);
  // More than the emulated card's 80 GiB is out of memory.
  void* huge = nullptr;
  CHECK(cudaMalloc(&huge, size_t(81) << 30) == cudaErrorMemoryAllocation);
  CHECK(cudaGetLastError() == cudaErrorMemoryAllocation);
}

TEST_CASE("emulator: wmma TF32 products, their alignment rule and the missing __syncwarp",
          "[cuda_emu]") {
  // 32-byte aligned operands; a has one spare float in front for the misaligned case.
  alignas(32) float abuf[8 + 16 * 8];
  alignas(32) float b[8 * 16];
  alignas(32) float d[16 * 16];
  float* a = abuf + 8;
  uint32_t x = 12345;
  auto next = [&] {
    x = x * 1664525u + 1013904223u;
    return float(int(x >> 9) - (1 << 22)) / float(1 << 21);  // [-2, 2), all mantissa bits used
  };
  for (float& v : abuf) v = next();
  for (float& v : b) v = next();
  auto tf32 = [](float f) {  // cvt.rna.tf32.f32
    uint32_t u;
    std::memcpy(&u, &f, 4);
    u = (u + 0x1000u) & 0xffffe000u;
    std::memcpy(&f, &u, 4);
    return f;
  };
  es::wmma_tf32(a, b, d, 0, true);
  int exact = 0, off_by_tf32 = 0;
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float want = 1.0f, full = 1.0f;
      for (int k = 0; k < 8; ++k) {
        want += tf32(a[i * 8 + k]) * tf32(b[j * 8 + k]);
        full += a[i * 8 + k] * b[j * 8 + k];
      }
      exact += d[i * 16 + j] == want ? 1 : 0;
      off_by_tf32 += d[i * 16 + j] != full ? 1 : 0;
    }
  CHECK(exact == 256);        // TF32 operands, float accumulation in k order
  CHECK(off_by_tf32 > 200);   // and not the FP32 product
  // Without the __syncwarp after the store, a lane reads elements other lanes have not stored yet.
  es::wmma_tf32(a, b, d, 0, false);
  int stale = 0;
  for (float v : d) stale += v == -1.0f ? 1 : 0;
  CHECK(stale > 0);
  REQUIRE_THROWS_WITH(es::wmma_tf32(a - 1, b, d, 0, true), Catch::Contains("256-bit aligned"));
}
