// The communicator's NCCL backend (engine/comm.h, engine/nccl) on two processes under mpirun: the
// collectives on CUDA tensors of every dtype, at odd sizes and on non-contiguous views, give the
// same bytes on both ranks and the same as the MPI backend computes on the CPU (the 16-bit types,
// which the CPU backend lacks, against sums of their float values rounded once per addition), and
// the collectives return without a host synchronisation; a rank that stops answering ends the
// other through the watchdog within the timeout. Under the CUDA emulator this runs the
// backend on the emulated NCCL (tests/cuda_emu/cuda_emu_nccl.cpp). Skipped (exit 77, saying why)
// without the NCCL backend, without mpirun, or on a real machine with fewer than 2 GPUs.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "app_test_util.h"
#include "engine/comm.h"
#include "engine/cuda_runtime.h"
#include "engine/ops.h"

using namespace sc;

namespace {

const char* const kWorker = "nccl worker: collectives on CUDA tensors";
const char* const kStuckWorker = "nccl worker: rank 1 stops answering";

// Bytes of a CPU tensor (made contiguous).
std::string bytes_of(const Tensor& t) {
  const Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()),
                     size_t(c.numel()) * dtype_size(c.dtype()));
}

// n values of dtype d, different on each rank (16-bit floats from float values they represent).
Tensor values(int64_t n, DType d, int rank, Generator& gen) {
  if (d == DType::I64) {
    Tensor t = empty({n}, d);
    for (int64_t i = 0; i < n; ++i)
      t.data<int64_t>()[i] = int64_t(gen.next_u64() >> 20) - (int64_t(1) << 43) + rank;
    return t;
  }
  if (d == DType::U8) {
    Tensor t = empty({n}, d);
    // below 128: two ranks' sum fits. NCCL wraps an overflowing U8 sum, but Open MPI's AVX
    // reductions saturate it (at 255) on long buffers (open-mpi/ompi#8045, "wontfix"), so the
    // MPI backend is no reference there.
    for (int64_t i = 0; i < n; ++i) t.data<uint8_t>()[i] = uint8_t(gen.next_u64() >> 57);
    return t;
  }
  return rand_uniform({n}, gen, -4.0, 4.0, DType::F64).to(d);
}

// "" when a and b (CPU tensors) hold the same bytes, else where they first differ.
std::string differ(const Tensor& a, const Tensor& b) {
  const std::string x = bytes_of(a), y = bytes_of(b);
  if (x == y) return "";
  if (x.size() != y.size()) return str_cat(x.size(), " bytes against ", y.size());
  size_t i = 0;
  while (x[i] == y[i]) ++i;
  const size_t e = dtype_size(a.dtype());
  return str_cat("element ", i / e, " of ", a.numel(), ": ", a.contiguous().to_vector()[i / e],
                 " against ", b.contiguous().to_vector()[i / e]);
}

bool is_half(DType d) { return d == DType::BF16 || d == DType::F16; }

// What all_reduce_sum must give: the MPI backend on the CPU; for 16-bit floats the ranks' float
// values gathered and added in rank order, rounded after each addition.
Tensor want_sum(Communicator& c, const Tensor& x) {
  if (!is_half(x.dtype())) {
    Tensor w = x.clone();
    c.all_reduce_sum(w);
    return w;
  }
  const int64_t n = x.numel();
  const Tensor all = c.all_gather_rows(x.to(DType::F32));
  Tensor acc = slice(all, 0, 0, n).contiguous().to(x.dtype());
  for (int r = 1; r < c.world(); ++r)
    acc = add(acc.to(DType::F32), slice(all, 0, r * n, (r + 1) * n).contiguous()).to(x.dtype());
  return acc;
}

// The rows of every rank / root's tensor, by the MPI backend (16-bit floats through F32, exact).
Tensor want_gather(Communicator& c, const Tensor& x) {
  if (!is_half(x.dtype())) return c.all_gather_rows(x);
  return c.all_gather_rows(x.to(DType::F32)).to(x.dtype());
}
Tensor want_broadcast(Communicator& c, const Tensor& x, int root) {
  Tensor w = is_half(x.dtype()) ? x.to(DType::F32) : x.clone();
  c.broadcast(w, root);
  return w.to(x.dtype());
}

// The same bytes on every rank.
bool same_on_ranks(Communicator& c, const Tensor& t) {
  const std::string b = bytes_of(t);
  Tensor mine = empty({int64_t(b.size())}, DType::U8);
  if (!b.empty()) std::memcpy(mine.data_ptr(), b.data(), b.size());
  const Tensor all = c.all_gather_rows(mine);
  for (int r = 1; r < c.world(); ++r)
    if (bytes_of(slice(all, 0, int64_t(r * b.size()), int64_t((r + 1) * b.size()))) != b)
      return false;
  return true;
}

std::string mpirun(int np, const std::string& command) {
  return std::string("mpirun ") + (geteuid() == 0 ? "--allow-run-as-root " : "") +
         "--oversubscribe --bind-to none --mca btl_vader_single_copy_mechanism none -np " +
         std::to_string(np) + " -x SLOTCON_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1 " + command;
}

}  // namespace

TEST_CASE(
    "gpu comm: NCCL collectives of 2 ranks under mpirun on CUDA tensors equal MPI's on the CPU",
    "[gpu][nccl]") {
  if (!comm_has_nccl()) {
    std::printf(
        "SKIP: NCCL test: this build has no NCCL backend (no nccl.h + libnccl, or no "
        "MPI)\n");
    std::exit(77);
  }
  if (app_test::run_command("command -v mpirun").code() != 0) {
    std::printf("SKIP: NCCL test: mpirun not found (install openmpi-bin)\n");
    std::exit(77);
  }
#ifndef SLOTCON_CUDA_EMU
  if (cuda_device_count() < 2) {
    std::printf("SKIP: NCCL test: needs 2 GPUs on this machine (NCCL refuses two ranks on one)\n");
    std::exit(77);
  }
#endif
  const app_test::Run r = app_test::run_command(
      mpirun(2, std::string(SLOTCON_BINARY_DIR) + "/tests/test_gpu \"" + kWorker + "\""));
  INFO(r.out);
  REQUIRE(r.code() == 0);
  size_t passed = 0;
  for (size_t at = 0; (at = r.out.find("All tests passed", at)) != std::string::npos; ++at)
    ++passed;
  CHECK(passed == 2);
}

TEST_CASE("gpu comm: NCCL: a rank that stops answering ends the other through the watchdog",
          "[gpu][nccl]") {
  if (!comm_has_nccl() || app_test::run_command("command -v mpirun").code() != 0) {
    std::printf("SKIP: NCCL test: no NCCL backend or no mpirun\n");
    std::exit(77);
  }
#ifndef SLOTCON_CUDA_EMU
  if (cuda_device_count() < 2) {
    std::printf("SKIP: NCCL test: needs 2 GPUs on this machine (NCCL refuses two ranks on one)\n");
    std::exit(77);
  }
#endif
  const auto start = std::chrono::steady_clock::now();
  const app_test::Run r = app_test::run_command(
      mpirun(2, std::string(SLOTCON_BINARY_DIR) + "/tests/test_gpu \"" + kStuckWorker + "\""));
  const double took =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  INFO(r.out);
  CHECK(r.code() != 0);
  CHECK(r.out.find("slotcon: NCCL on rank 0 of 2: all_reduce_sum has not completed") !=
        std::string::npos);
  CHECK(r.out.find("(timeout 2 s, SLOTCON_COMM_TIMEOUT)") != std::string::npos);
  CHECK(took < 30);  // not rank 1's minute of sleep
}

// Run by each rank of the test above: one collective together (which makes the NCCL
// communicator), then rank 1 stops answering while rank 0 calls the next one.
TEST_CASE("nccl worker: rank 1 stops answering", "[.][nccl_worker]") {
  std::unique_ptr<Communicator> comm = make_communicator_from_env();
  Communicator& c = *comm;
  c.set_timeout(60);  // the ranks may start far apart on a busy machine
  Tensor t = full({3}, 1.0, DType::F32, comm_cuda_device(c));
  c.all_reduce_sum(t);
  REQUIRE(t.to_vector() == std::vector<double>(3, 2.0));
  c.set_timeout(2);  // from the next collective on
  if (c.rank() == 1) std::this_thread::sleep_for(std::chrono::seconds(60));
  c.all_reduce_sum(t);
  FAIL("rank " << c.rank() << " got past a collective that rank 1 never joined");
}

// Run by each rank of the first test (hidden: not listed, not run by ctest itself).
TEST_CASE("nccl worker: collectives on CUDA tensors", "[.][nccl_worker]") {
  std::unique_ptr<Communicator> comm = make_communicator_from_env();
  Communicator& c = *comm;
  c.set_timeout(60);
  REQUIRE(c.world() == 2);
  REQUIRE(c.has_cuda_collectives());
  REQUIRE(std::string(c.backend()) == "mpi");
  const Device dev = comm_cuda_device(c);
  Generator gen(1234 + uint64_t(c.rank()));
  for (DType d : {DType::F32, DType::F64, DType::I64, DType::U8, DType::BF16, DType::F16}) {
    for (int64_t n : {1, 7, 1025}) {
      INFO("rank " << c.rank() << ", " << dtype_name(d) << ", n " << n);
      const Tensor x = values(n, d, c.rank(), gen);

      // all_reduce_sum, in place, no host synchronisation
      Tensor xc = x.to(dev);
      const DeviceCounters before = device_counters();
      c.all_reduce_sum(xc);
      CHECK((device_counters() - before).host_syncs == 0);
      const Tensor sum = xc.to(Device::cpu());
      CHECK(differ(sum, want_sum(c, x)) == "");
      CHECK(same_on_ranks(c, sum));

      // started all-reduces (the data-parallel gradient buckets' path: NCCL's own stream, the
      // engine stream waiting on an event): two in a row, then the wait, no host
      // synchronisation, the blocking one's results
      Tensor s1 = x.to(dev), s2 = x.to(dev);
      const DeviceCounters before_start = device_counters();
      c.start_all_reduce_sum(s1);
      c.start_all_reduce_sum(s2);
      c.wait_all_reduces(dev);
      CHECK((device_counters() - before_start).host_syncs == 0);
      CHECK(differ(s1.to(Device::cpu()), want_sum(c, x)) == "");
      CHECK(differ(s2.to(Device::cpu()), want_sum(c, x)) == "");

      // on a non-contiguous view (a column of an (n, 3) tensor): written back, the rest unchanged
      const Tensor m = reshape(values(3 * n, d, c.rank(), gen), {n, 3});
      Tensor mc = m.to(dev);
      Tensor col = slice(mc, 1, 1, 2);
      c.all_reduce_sum(col);
      const Tensor mh = mc.to(Device::cpu());
      CHECK(differ(slice(mh, 1, 1, 2), want_sum(c, slice(m, 1, 1, 2).contiguous())) == "");
      CHECK(differ(slice(mh, 1, 0, 1), slice(m, 1, 0, 1)) == "");
      CHECK(differ(slice(mh, 1, 2, 3), slice(m, 1, 2, 3)) == "");

      // all_gather_rows of an (n, 3) transposed view: (2n, 3) on the device, rank order
      const Tensor y = reshape(values(3 * n, d, c.rank(), gen), {3, n});
      const Tensor yt = transpose(y.to(dev), 0, 1);
      const DeviceCounters before_gather = device_counters();
      const Tensor g = c.all_gather_rows(yt);
      CHECK((device_counters() - before_gather).host_syncs == 0);
      CHECK(g.device() == dev);
      REQUIRE(g.shape() == Shape{2 * n, 3});
      const Tensor gh = g.to(Device::cpu());
      CHECK(differ(gh, want_gather(c, transpose(y, 0, 1).contiguous())) == "");
      CHECK(same_on_ranks(c, gh));

      // broadcast from each root
      for (int root = 0; root < 2; ++root) {
        INFO("root " << root);
        Tensor bc = x.to(dev);
        c.broadcast(bc, root);
        const Tensor bh = bc.to(Device::cpu());
        CHECK(differ(bh, want_broadcast(c, x, root)) == "");
        CHECK(same_on_ranks(c, bh));
      }
    }
  }
  // a started all-reduce writes its result into the tensor later: a view that is not contiguous
  // is refused (the blocking one copies and writes back)
  Tensor view = transpose(zeros({3, 4}, DType::F32, dev), 0, 1);
  CHECK_THROWS_WITH(c.start_all_reduce_sum(view), Catch::Contains("contiguous"));
  // a CPU tensor still goes through MPI, between CUDA collectives
  Tensor cpu = full({5}, double(c.rank() + 1), DType::F64);
  c.all_reduce_sum(cpu);
  CHECK(cpu.to_vector() == std::vector<double>(5, 3.0));
  c.barrier();
}
