// Tests of the CUDA emulator itself (cuda_emu.h): that it runs kernels as CUDA would, and that it
// exposes the bugs it claims to (a missing barrier, barrier divergence, deadlock, a bad launch
// configuration, a read of unwritten shared memory).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <future>
#include <stdexcept>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include "cuda_emu.h"
#include "cublas_v2.h"
#include "cudnn.h"

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
void affine(const float* factor, float* out, float base, int n, cudaStream_t stream);
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

// ---------------------------------------------------------------- stream capture and graphs
namespace {

// Device buffers for the graph tests, each its own cudaMalloc (freed at the end).
struct Buf {
  void* p = nullptr;
  size_t bytes = 0;
  explicit Buf(size_t n) : bytes(n) { REQUIRE(cudaMalloc(&p, n) == cudaSuccess); }
  ~Buf() { cudaFree(p); }
  float* f() const { return static_cast<float*>(p); }
  unsigned char* b() const { return static_cast<unsigned char*>(p); }
  std::vector<float> floats() const {
    return std::vector<float>(f(), f() + bytes / sizeof(float));
  }
};

constexpr int kN = 100;           // affine kernel outputs (two blocks of 64)
constexpr int kM = 3, kK = 2;     // GEMM: C (kM x kM) = alpha A (kM x kK) B (kK x kM)
constexpr float kSentinel = -7.f;

struct Seq {
  Buf factor{sizeof(float)}, out{kN * sizeof(float)}, src{kN * sizeof(float)},
      dst{kN * sizeof(float)}, ms{kN}, A{kM * kK * sizeof(float)}, B{kK * kM * sizeof(float)},
      C{kM * kM * sizeof(float)};
  cudaStream_t s = nullptr;
  cublasHandle_t blas = nullptr;
  Seq() {
    REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
    REQUIRE(cublasCreate(&blas) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(cublasSetStream(blas, s) == CUBLAS_STATUS_SUCCESS);
    set_inputs(2.f, 0.f);
    reset_outputs();
  }
  ~Seq() {
    cublasDestroy(blas);
    cudaStreamDestroy(s);
  }
  // Device-memory inputs: the kernel's factor, the copy's source, the GEMM's A and B.
  void set_inputs(float f, float shift) {
    factor.f()[0] = f;
    for (int i = 0; i < kN; ++i) src.f()[i] = float(i) * 0.5f + shift;
    for (int i = 0; i < kM * kK; ++i) A.f()[i] = float(i + 1) + shift;
    for (int i = 0; i < kK * kM; ++i) B.f()[i] = float(2 * i - 3);
  }
  void reset_outputs() {
    for (int i = 0; i < kN; ++i) out.f()[i] = dst.f()[i] = kSentinel;
    std::memset(ms.p, 0, kN);
    for (int i = 0; i < kM * kM; ++i) C.f()[i] = kSentinel;
  }
  // The sequence: a kernel, an asynchronous copy, a memset, a GEMM, all on stream s; `base` goes
  // to the kernel by value, `alpha` to cuBLAS by host pointer.
  void issue(const float& base, const float& alpha) {
    emu_selftest::affine(factor.f(), out.f(), base, kN, s);
    CHECK(cudaGetLastError() == cudaSuccess);
    CHECK(cudaMemcpyAsync(dst.p, src.p, kN * sizeof(float), cudaMemcpyDeviceToDevice, s) ==
          cudaSuccess);
    CHECK(cudaMemsetAsync(ms.p, 0x5A, kN, s) == cudaSuccess);
    const float beta = 0.f;
    CHECK(cublasGemmStridedBatchedEx(blas, CUBLAS_OP_N, CUBLAS_OP_N, kM, kM, kK, &alpha, A.p,
                                     CUDA_R_32F, kM, 0, B.p, CUDA_R_32F, kK, 0, &beta, C.p,
                                     CUDA_R_32F, kM, 0, 1, CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS);
  }
  struct Result {
    std::vector<float> out, dst, C;
    std::vector<unsigned char> ms;
    bool operator==(const Result& o) const {
      return out == o.out && dst == o.dst && C == o.C && ms == o.ms;
    }
  };
  Result result() const {
    return Result{out.floats(), dst.floats(), C.floats(),
                  std::vector<unsigned char>(ms.b(), ms.b() + kN)};
  }
  bool untouched() const {
    Result r = result();
    for (float v : r.out) if (v != kSentinel) return false;
    for (float v : r.dst) if (v != kSentinel) return false;
    for (float v : r.C) if (v != kSentinel) return false;
    for (unsigned char v : r.ms) if (v != 0) return false;
    return true;
  }
};

cudaStreamCaptureStatus capture_status(cudaStream_t s) {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  CHECK(cudaStreamIsCapturing(s, &st) == cudaSuccess);
  return st;
}

}  // namespace

TEST_CASE("emulator: a captured sequence runs only when its graph is launched, as it ran eagerly",
          "[cuda_emu][graph]") {
  Seq q;
  // the sequence eagerly, for reference
  q.issue(3.f, 1.5f);
  const Seq::Result eager = q.result();
  CHECK(eager.out[5] == 3.f * 2.f + 5.f);
  CHECK(eager.ms[7] == 0x5A);
  q.reset_outputs();

  float base = 3.f, alpha = 1.5f;  // host values the capture bakes in
  const uint64_t launches = emu::launches();
  REQUIRE(cudaStreamBeginCapture(q.s, cudaStreamCaptureModeGlobal) == cudaSuccess);
  CHECK(capture_status(q.s) == cudaStreamCaptureStatusActive);
  unsigned long long id = 0;
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  cudaGraph_t building = nullptr;
  CHECK(cudaStreamGetCaptureInfo(q.s, &st, &id, &building) == cudaSuccess);
  CHECK(st == cudaStreamCaptureStatusActive);
  CHECK(id != 0);
  CHECK(building != nullptr);
  q.issue(base, alpha);
  CHECK(q.untouched());  // recorded, not run
  CHECK(emu::launches() == launches);
  cudaGraph_t graph = nullptr;
  REQUIRE(cudaStreamEndCapture(q.s, &graph) == cudaSuccess);
  REQUIRE(graph == building);
  CHECK(capture_status(q.s) == cudaStreamCaptureStatusNone);
  size_t nodes = 0;
  CHECK(cudaGraphGetNodes(graph, nullptr, &nodes) == cudaSuccess);
  CHECK(nodes == 4);
  base = 100.f;   // passed by value at the capture: the graph keeps 3
  alpha = -1.f;   // read through its host pointer at the capture: the graph keeps 1.5
  CHECK(q.untouched());

  cudaGraphExec_t exec = nullptr;
  REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
  CHECK(cudaGraphDestroy(graph) == cudaSuccess);  // the executable graph stands on its own
  REQUIRE(cudaGraphLaunch(exec, q.s) == cudaSuccess);
  CHECK(q.result() == eager);
  CHECK(emu::launches() == launches + 1);  // a replay counts its kernel launches
  q.reset_outputs();
  REQUIRE(cudaGraphLaunch(exec, q.s) == cudaSuccess);
  CHECK(q.result() == eager);
  CHECK(emu::launches() == launches + 2);

  // A graph reads device memory when it runs: new inputs, new outputs (as an eager run gives).
  q.set_inputs(5.f, 1.f);
  q.reset_outputs();
  q.issue(3.f, 1.5f);
  const Seq::Result eager2 = q.result();
  CHECK(eager2.out[5] == 3.f * 5.f + 5.f);
  q.reset_outputs();
  REQUIRE(cudaGraphLaunch(exec, q.s) == cudaSuccess);
  CHECK(q.result() == eager2);
  CHECK(!(eager2 == eager));

  // Dry run: a replay is counted, not run.
  q.reset_outputs();
  const uint64_t before = emu::launches();
  emu::set_dry_run(true);
  const cudaError_t dry = cudaGraphLaunch(exec, q.s);
  emu::set_dry_run(false);
  CHECK(dry == cudaSuccess);
  CHECK(emu::launches() == before + 1);
  const Seq::Result r = q.result();
  CHECK(r.out[0] == kSentinel);
  CHECK(r.dst[0] == kSentinel);  // a device-to-device copy is not run in a dry run
  CHECK(r.C[0] == kSentinel);
  CHECK(cudaGraphExecDestroy(exec) == cudaSuccess);
}

TEST_CASE("emulator: capture on one stream while another stream runs eagerly, fork and join",
          "[cuda_emu][graph]") {
  Buf factor(sizeof(float)), a(kN * sizeof(float)), b(kN * sizeof(float));
  factor.f()[0] = 1.f;
  for (int i = 0; i < kN; ++i) a.f()[i] = b.f()[i] = kSentinel;
  cudaStream_t s1 = nullptr, s2 = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking) == cudaSuccess);
  REQUIRE(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking) == cudaSuccess);
  cudaEvent_t fork = nullptr, join = nullptr;
  REQUIRE(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming) == cudaSuccess);
  REQUIRE(cudaEventCreateWithFlags(&join, cudaEventDisableTiming) == cudaSuccess);

  REQUIRE(cudaStreamBeginCapture(s1, cudaStreamCaptureModeGlobal) == cudaSuccess);
  emu_selftest::affine(factor.f(), a.f(), 2.f, kN, s1);  // recorded
  emu_selftest::affine(factor.f(), b.f(), 4.f, kN, s2);  // s2 is not capturing: runs now
  CHECK(cudaGetLastError() == cudaSuccess);
  CHECK(capture_status(s2) == cudaStreamCaptureStatusNone);
  CHECK(a.f()[1] == kSentinel);
  CHECK(b.f()[1] == 4.f + 1.f);
  // fork: s2 waits on an event recorded in the capture, and joins it
  REQUIRE(cudaEventRecord(fork, s1) == cudaSuccess);
  REQUIRE(cudaStreamWaitEvent(s2, fork, 0) == cudaSuccess);
  CHECK(capture_status(s2) == cudaStreamCaptureStatusActive);
  // s2's work is now recorded: a copy of what s1's kernel wrote (so it must replay after it)
  REQUIRE(cudaMemcpyAsync(b.p, a.p, kN * sizeof(float), cudaMemcpyDeviceToDevice, s2) ==
          cudaSuccess);
  CHECK(b.f()[1] == 4.f + 1.f);
  // join, then s1 overwrites a (after the copy, in issue order)
  REQUIRE(cudaEventRecord(join, s2) == cudaSuccess);
  REQUIRE(cudaStreamWaitEvent(s1, join, 0) == cudaSuccess);
  REQUIRE(cudaMemsetAsync(a.p, 0, kN * sizeof(float), s1) == cudaSuccess);
  cudaGraph_t graph = nullptr;
  REQUIRE(cudaStreamEndCapture(s1, &graph) == cudaSuccess);
  CHECK(capture_status(s2) == cudaStreamCaptureStatusNone);
  size_t nodes = 0;
  CHECK(cudaGraphGetNodes(graph, nullptr, &nodes) == cudaSuccess);
  CHECK(nodes == 3);
  cudaGraphExec_t exec = nullptr;
  REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
  REQUIRE(cudaGraphLaunch(exec, s1) == cudaSuccess);
  CHECK(b.f()[1] == 2.f + 1.f);
  CHECK(b.f()[kN - 1] == 2.f + float(kN - 1));
  CHECK(a.f()[1] == 0.f);
  CHECK(cudaGraphExecDestroy(exec) == cudaSuccess);
  CHECK(cudaGraphDestroy(graph) == cudaSuccess);

  // A fork never joined back: no graph, cudaErrorStreamCaptureUnjoined; both streams leave capture.
  REQUIRE(cudaStreamBeginCapture(s1, cudaStreamCaptureModeGlobal) == cudaSuccess);
  REQUIRE(cudaEventRecord(fork, s1) == cudaSuccess);
  REQUIRE(cudaStreamWaitEvent(s2, fork, 0) == cudaSuccess);
  REQUIRE(cudaMemsetAsync(b.p, 0, 4, s2) == cudaSuccess);
  graph = reinterpret_cast<cudaGraph_t>(&nodes);  // must be overwritten
  CHECK(cudaStreamEndCapture(s2, &graph) == cudaErrorStreamCaptureUnmatched);  // not the origin
  CHECK(cudaStreamEndCapture(s1, &graph) == cudaErrorStreamCaptureInvalidated);
  CHECK(graph == nullptr);
  REQUIRE(cudaStreamBeginCapture(s1, cudaStreamCaptureModeGlobal) == cudaSuccess);
  REQUIRE(cudaEventRecord(fork, s1) == cudaSuccess);
  REQUIRE(cudaStreamWaitEvent(s2, fork, 0) == cudaSuccess);
  REQUIRE(cudaMemsetAsync(b.p, 0, 4, s2) == cudaSuccess);
  CHECK(cudaStreamEndCapture(s1, &graph) == cudaErrorStreamCaptureUnjoined);
  CHECK(graph == nullptr);
  CHECK(capture_status(s1) == cudaStreamCaptureStatusNone);
  CHECK(capture_status(s2) == cudaStreamCaptureStatusNone);
  CHECK(b.f()[1] == 2.f + 1.f);  // the unjoined memset never ran
  cudaGetLastError();

  CHECK(cudaEventDestroy(fork) == cudaSuccess);
  CHECK(cudaEventDestroy(join) == cudaSuccess);
  CHECK(cudaStreamDestroy(s1) == cudaSuccess);
  CHECK(cudaStreamDestroy(s2) == cudaSuccess);
}

namespace {
// Begins a global-mode capture on s with one kernel recorded, runs `illegal`, which must return
// `code`, then checks that the capture is invalidated (or not), that further work on s is refused,
// and that cudaStreamEndCapture returns no graph.
template <class F>
void check_illegal(cudaStream_t s, const char* what, cudaError_t code, F illegal,
                   cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal) {
  INFO(what);
  static Buf factor(sizeof(float)), out(kN * sizeof(float));
  factor.f()[0] = 1.f;
  out.f()[0] = kSentinel;
  REQUIRE(cudaStreamBeginCapture(s, mode) == cudaSuccess);
  emu_selftest::affine(factor.f(), out.f(), 1.f, kN, s);
  REQUIRE(cudaGetLastError() == cudaSuccess);
  CHECK(illegal() == code);
  CHECK(cudaGetLastError() == code);
  CHECK(capture_status(s) == cudaStreamCaptureStatusInvalidated);
  emu_selftest::affine(factor.f(), out.f(), 1.f, kN, s);
  CHECK(cudaGetLastError() == cudaErrorStreamCaptureInvalidated);
  cudaGraph_t g = nullptr;
  CHECK(cudaStreamEndCapture(s, &g) == cudaErrorStreamCaptureInvalidated);
  CHECK(g == nullptr);
  CHECK(capture_status(s) == cudaStreamCaptureStatusNone);
  CHECK(out.f()[0] == kSentinel);  // nothing of it ran
  cudaGetLastError();
}
}  // namespace

TEST_CASE("emulator: calls illegal during a stream capture fail with CUDA's error codes",
          "[cuda_emu][graph]") {
  cudaStream_t s = nullptr, blocking = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
  REQUIRE(cudaStreamCreate(&blocking) == cudaSuccess);
  Buf dev(64);
  std::vector<unsigned char> host(64);
  cudaEvent_t ev = nullptr;
  REQUIRE(cudaEventCreate(&ev) == cudaSuccess);
  void* p = nullptr;

  check_illegal(s, "cudaStreamSynchronize", cudaErrorStreamCaptureUnsupported,
                [&] { return cudaStreamSynchronize(s); });
  check_illegal(s, "cudaStreamQuery", cudaErrorStreamCaptureUnsupported,
                [&] { return cudaStreamQuery(s); });
  check_illegal(s, "cudaDeviceSynchronize", cudaErrorStreamCaptureUnsupported,
                [&] { return cudaDeviceSynchronize(); });
  check_illegal(s, "cudaEventSynchronize", cudaErrorCapturedEvent, [&] {
    REQUIRE(cudaEventRecord(ev, s) == cudaSuccess);
    return cudaEventSynchronize(ev);
  });
  check_illegal(s, "cudaEventQuery", cudaErrorCapturedEvent, [&] {
    REQUIRE(cudaEventRecord(ev, s) == cudaSuccess);
    return cudaEventQuery(ev);
  });
  check_illegal(s, "cudaMemcpy", cudaErrorStreamCaptureUnsupported,
                [&] { return cudaMemcpy(host.data(), dev.p, 64, cudaMemcpyDeviceToHost); });
  check_illegal(s, "cudaMemset", cudaErrorStreamCaptureUnsupported,
                [&] { return cudaMemset(dev.p, 0, 64); });
  check_illegal(s, "cudaMalloc", cudaErrorStreamCaptureUnsupported,
                [&] { return cudaMalloc(&p, 64); });
  check_illegal(s, "cudaFree", cudaErrorStreamCaptureUnsupported,
                [&] { return cudaFree(dev.p); });
  check_illegal(s, "cudaMallocHost", cudaErrorStreamCaptureUnsupported,
                [&] { return cudaMallocHost(&p, 64); });
  check_illegal(s, "cudaHostAlloc", cudaErrorStreamCaptureUnsupported,
                [&] { return cudaHostAlloc(&p, 64, cudaHostAllocDefault); });
  check_illegal(s, "cudaFreeHost", cudaErrorStreamCaptureUnsupported,
                [&] { return cudaFreeHost(dev.p); });
  // waiting on work recorded outside the capture
  REQUIRE(cudaEventRecord(ev, blocking) == cudaSuccess);
  check_illegal(s, "cudaStreamWaitEvent on an uncaptured event", cudaErrorStreamCaptureIsolation,
                [&] { return cudaStreamWaitEvent(s, ev, 0); });
  // a blocking stream capturing: the legacy stream (synchronous calls, stream 0) is unusable
  check_illegal(blocking, "cudaMemcpy, blocking stream", cudaErrorStreamCaptureImplicit,
                [&] { return cudaMemcpy(host.data(), dev.p, 64, cudaMemcpyDeviceToHost); });
  check_illegal(blocking, "cudaMemset, blocking stream", cudaErrorStreamCaptureImplicit,
                [&] { return cudaMemset(dev.p, 0, 64); });
  check_illegal(blocking, "a launch on stream 0, blocking stream", cudaErrorStreamCaptureImplicit,
                [&] {
                  emu_selftest::affine(dev.f(), dev.f(), 1.f, 1, nullptr);
                  return cudaPeekAtLastError();
                });
  check_illegal(blocking, "cudaStreamSynchronize(0)", cudaErrorStreamCaptureImplicit,
                [&] { return cudaStreamSynchronize(nullptr); });
  // relaxed mode still forbids what necessarily conflicts with a capture
  check_illegal(s, "cudaStreamSynchronize, relaxed", cudaErrorStreamCaptureUnsupported,
                [&] { return cudaStreamSynchronize(s); }, cudaStreamCaptureModeRelaxed);
  cudaStreamCaptureStatus st;
  CHECK(cudaStreamIsCapturing(nullptr, &st) == cudaSuccess);  // no capture: the legacy stream is fine
  CHECK(st == cudaStreamCaptureStatusNone);

  // Capture set-up errors.
  cudaGraph_t g = nullptr;
  CHECK(cudaStreamBeginCapture(nullptr, cudaStreamCaptureModeGlobal) ==
        cudaErrorStreamCaptureUnsupported);
  CHECK(cudaStreamEndCapture(s, &g) == cudaErrorIllegalState);
  REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal) == cudaSuccess);
  CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal) == cudaErrorIllegalState);
  CHECK(cudaStreamIsCapturing(nullptr, &st) == cudaSuccess);  // s is non-blocking
  REQUIRE(cudaStreamEndCapture(s, &g) == cudaSuccess);  // an empty graph
  size_t nodes = 7;
  CHECK(cudaGraphGetNodes(g, nullptr, &nodes) == cudaSuccess);
  CHECK(nodes == 0);
  cudaGraphExec_t exec = nullptr;
  CHECK(cudaGraphInstantiate(&exec, g, cudaGraphInstantiateFlagDeviceLaunch) ==
        cudaErrorInvalidValue);
  CHECK(cudaGraphDestroy(g) == cudaSuccess);
  REQUIRE(cudaStreamBeginCapture(blocking, cudaStreamCaptureModeGlobal) == cudaSuccess);
  CHECK(cudaStreamIsCapturing(nullptr, &st) == cudaErrorStreamCaptureImplicit);
  CHECK(capture_status(blocking) == cudaStreamCaptureStatusActive);  // not invalidated by that
  REQUIRE(cudaStreamEndCapture(blocking, &g) == cudaSuccess);
  CHECK(cudaGraphDestroy(g) == cudaSuccess);
  cudaGetLastError();

  CHECK(cudaEventDestroy(ev) == cudaSuccess);
  CHECK(cudaStreamDestroy(s) == cudaSuccess);
  CHECK(cudaStreamDestroy(blocking) == cudaSuccess);
}

TEST_CASE("emulator: capture modes decide which threads may make unsafe calls",
          "[cuda_emu][graph]") {
  cudaStream_t s = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
  void* p = nullptr;
  cudaGraph_t g = nullptr;

  // A relaxed capture allows cudaMalloc and cudaFree (outside the graph, at once).
  REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed) == cudaSuccess);
  CHECK(cudaMalloc(&p, 64) == cudaSuccess);
  CHECK(cudaFree(p) == cudaSuccess);
  REQUIRE(cudaStreamEndCapture(s, &g) == cudaSuccess);
  CHECK(cudaGraphDestroy(g) == cudaSuccess);

  // A global capture with this thread's mode exchanged to relaxed allows them too.
  REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal) == cudaSuccess);
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  CHECK(cudaThreadExchangeStreamCaptureMode(&mode) == cudaSuccess);
  CHECK(mode == cudaStreamCaptureModeGlobal);
  CHECK(cudaMalloc(&p, 64) == cudaSuccess);
  CHECK(cudaFree(p) == cudaSuccess);
  CHECK(cudaThreadExchangeStreamCaptureMode(&mode) == cudaSuccess);  // back to global
  CHECK(mode == cudaStreamCaptureModeRelaxed);
  REQUIRE(cudaStreamEndCapture(s, &g) == cudaSuccess);
  CHECK(cudaGraphDestroy(g) == cudaSuccess);

  // Another thread's global capture forbids this thread's cudaMalloc in its global mode, not in
  // thread-local mode; a capture not begun relaxed must end on its own thread.
  for (const bool local : {true, false}) {
    std::promise<void> begun, checked;
    cudaError_t t_begin = cudaErrorInvalidValue, t_end = cudaErrorInvalidValue;
    std::thread t([&] {  // no Catch2 assertions in this thread
      t_begin = cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal);
      begun.set_value();
      checked.get_future().wait();
      cudaGraph_t tg = nullptr;
      t_end = cudaStreamEndCapture(s, &tg);
      if (tg) cudaGraphDestroy(tg);
    });
    begun.get_future().wait();
    cudaStreamCaptureMode m = local ? cudaStreamCaptureModeThreadLocal : cudaStreamCaptureModeGlobal;
    CHECK(cudaThreadExchangeStreamCaptureMode(&m) == cudaSuccess);
    const cudaError_t e = cudaMalloc(&p, 64);
    CHECK(e == (local ? cudaSuccess : cudaErrorStreamCaptureUnsupported));
    if (e == cudaSuccess) CHECK(cudaFree(p) == cudaSuccess);
    CHECK(cudaThreadExchangeStreamCaptureMode(&m) == cudaSuccess);
    CHECK(cudaStreamEndCapture(s, &g) == cudaErrorStreamCaptureWrongThread);
    checked.set_value();
    t.join();
    CHECK(t_begin == cudaSuccess);
    CHECK(t_end == (local ? cudaSuccess : cudaErrorStreamCaptureInvalidated));
  }
  cudaGetLastError();
  CHECK(cudaStreamDestroy(s) == cudaSuccess);
}

TEST_CASE("emulator: a captured convolution keeps its descriptors and alpha, and a graph launch "
          "is itself captured", "[cuda_emu][graph]") {
  cudaStream_t s = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
  cudnnHandle_t h = nullptr;
  REQUIRE(cudnnCreate(&h) == CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnSetStream(h, s) == CUDNN_STATUS_SUCCESS);
  cudnnTensorDescriptor_t xd = nullptr, yd = nullptr;
  cudnnFilterDescriptor_t wd = nullptr;
  cudnnConvolutionDescriptor_t cd = nullptr;
  REQUIRE(cudnnCreateTensorDescriptor(&xd) == CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnCreateTensorDescriptor(&yd) == CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnCreateFilterDescriptor(&wd) == CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnCreateConvolutionDescriptor(&cd) == CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnSetTensor4dDescriptor(xd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, 1, 3, 3) ==
          CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnSetFilter4dDescriptor(wd, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, 1, 1, 2, 2) ==
          CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnSetTensor4dDescriptor(yd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, 1, 2, 2) ==
          CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnSetConvolution2dDescriptor(cd, 0, 0, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION,
                                          CUDNN_DATA_FLOAT) == CUDNN_STATUS_SUCCESS);
  Buf x(9 * sizeof(float)), w(4 * sizeof(float)), y(4 * sizeof(float));
  for (int i = 0; i < 9; ++i) x.f()[i] = float(i);
  for (int i = 0; i < 4; ++i) w.f()[i] = float(i % 2 ? -1 : 2), y.f()[i] = kSentinel;
  float alpha = 2.f, beta = 0.f;
  std::vector<float> eager(4);
  REQUIRE(cudnnConvolutionForward(h, &alpha, xd, x.p, wd, w.p, cd,
                                  CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, nullptr, 0, &beta, yd,
                                  y.p) == CUDNN_STATUS_SUCCESS);
  std::memcpy(eager.data(), y.p, 16);
  CHECK(eager[0] == 2.f * (2 * 0 - 1 + 2 * 3 - 4));
  for (int i = 0; i < 4; ++i) y.f()[i] = kSentinel;

  REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal) == cudaSuccess);
  REQUIRE(cudnnConvolutionForward(h, &alpha, xd, x.p, wd, w.p, cd,
                                  CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, nullptr, 0, &beta, yd,
                                  y.p) == CUDNN_STATUS_SUCCESS);
  cudaGraph_t g = nullptr;
  REQUIRE(cudaStreamEndCapture(s, &g) == cudaSuccess);
  alpha = 1000.f;  // read at the capture
  // the descriptors were copied at the capture: a stride of 2 now, or x's destruction, changes
  // nothing in the graph
  REQUIRE(cudnnSetConvolution2dDescriptor(cd, 0, 0, 2, 2, 1, 1, CUDNN_CROSS_CORRELATION,
                                          CUDNN_DATA_FLOAT) == CUDNN_STATUS_SUCCESS);
  CHECK(cudnnDestroyTensorDescriptor(xd) == CUDNN_STATUS_SUCCESS);
  CHECK(y.f()[0] == kSentinel);
  cudaGraphExec_t exec = nullptr;
  REQUIRE(cudaGraphInstantiate(&exec, g, 0) == cudaSuccess);

  // the graph launched inside another capture: recorded as one node, run with the outer graph
  REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal) == cudaSuccess);
  REQUIRE(cudaGraphLaunch(exec, s) == cudaSuccess);
  CHECK(y.f()[0] == kSentinel);
  cudaGraph_t outer = nullptr;
  REQUIRE(cudaStreamEndCapture(s, &outer) == cudaSuccess);
  cudaGraphExec_t outer_exec = nullptr;
  REQUIRE(cudaGraphInstantiate(&outer_exec, outer, 0) == cudaSuccess);
  CHECK(cudaGraphExecDestroy(exec) == cudaSuccess);  // the outer graph keeps what it needs
  REQUIRE(cudaGraphLaunch(outer_exec, s) == cudaSuccess);
  CHECK(std::vector<float>(y.f(), y.f() + 4) == eager);

  // cudnnFind* synchronises its stream: refused while it captures
  REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal) == cudaSuccess);
  cudnnConvolutionFwdAlgoPerf_t perf[1];
  int returned = 0;
  REQUIRE(cudnnSetConvolution2dDescriptor(cd, 0, 0, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION,
                                          CUDNN_DATA_FLOAT) == CUDNN_STATUS_SUCCESS);
  cudnnTensorDescriptor_t xd2 = nullptr;
  REQUIRE(cudnnCreateTensorDescriptor(&xd2) == CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnSetTensor4dDescriptor(xd2, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, 1, 3, 3) ==
          CUDNN_STATUS_SUCCESS);
  CHECK(cudnnFindConvolutionForwardAlgorithmEx(h, xd2, x.p, wd, w.p, cd, yd, y.p, 1, &returned,
                                               perf, nullptr, 0) ==
        CUDNN_STATUS_EXECUTION_FAILED);
  CHECK(cudaStreamEndCapture(s, &g) == cudaErrorStreamCaptureInvalidated);
  cudaGetLastError();

  CHECK(cudaGraphExecDestroy(outer_exec) == cudaSuccess);
  CHECK(cudaGraphDestroy(outer) == cudaSuccess);
  cudnnDestroyTensorDescriptor(xd2);
  cudnnDestroyTensorDescriptor(yd);
  cudnnDestroyFilterDescriptor(wd);
  cudnnDestroyConvolutionDescriptor(cd);
  cudnnDestroy(h);
  CHECK(cudaStreamDestroy(s) == cudaSuccess);
}
