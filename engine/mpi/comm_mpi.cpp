// comm_mpi.cpp: the MPI backend of engine/comm.h (built when CMake finds MPI).
//
// Only the thread that created the communicator calls MPI (MPI_THREAD_FUNNELED). Every collective
// is the non-blocking MPI-3 call (MPI_Iallreduce, MPI_Iallgather, MPI_Ibcast, MPI_Ibarrier)
// polled with MPI_Test against a deadline: a blocking call cannot be given up on, and a rank that
// died without the launcher noticing (or that is stopped) would hang the others forever. Polling
// spins for the first ~100 us (a step's small collectives answer that fast on one machine), then
// sleeps with a growing pause up to 1 ms so that a rank waiting for a slow one (e.g. rank 0 writing
// a checkpoint) leaves its core to the others.
//
// With SLOTCON_WITH_NCCL, CUDA tensors go through NCCL instead (engine/nccl/comm_nccl.h): the NCCL
// communicator is made at the first collective on a CUDA tensor, bootstrapped over this one.
#include <mpi.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>

#include "engine/comm.h"
#ifdef SLOTCON_WITH_NCCL
#include "engine/nccl/comm_nccl.h"
#endif

namespace sc {
namespace {

std::string mpi_error(int code) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, msg, &len);
  return std::string(msg, size_t(len));
}

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::F32:
      return MPI_FLOAT;
    case DType::F64:
      return MPI_DOUBLE;
    case DType::I64:
      return MPI_INT64_T;
    case DType::U8:
      return MPI_UINT8_T;
    default:
      break;
  }
  throw Error(str_cat("MPI: unsupported dtype ", dtype_name(t)));
}

int env_int(const char* name, int fallback) {
  const char* s = std::getenv(name);
  return s ? std::atoi(s) : fallback;
}

class MpiComm final : public Communicator {
 public:
  MpiComm() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      int provided = 0;
      const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
      SC_CHECK(rc == MPI_SUCCESS, "MPI_Init_thread failed: ", mpi_error(rc));
      owns_init_ = true;
    }
    MPI_Comm_dup(MPI_COMM_WORLD, &comm_);
    // errors come back as codes (thrown as sc::Error) instead of aborting inside MPI
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &world_);
    // the rank among the processes that share this machine's memory
    MPI_Comm node;
    if (MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node) ==
        MPI_SUCCESS) {
      MPI_Comm_rank(node, &local_rank_);
      MPI_Comm_free(&node);
    } else {
      local_rank_ = env_int("OMPI_COMM_WORLD_LOCAL_RANK", env_int("SLURM_LOCALID", 0));
    }
    timeout_s_ = comm_timeout_from_env();
  }
  ~MpiComm() override {
    // After a timeout the others may never reach MPI_Finalize (it can wait for them): leave it.
    if (failed_) return;
#ifdef SLOTCON_WITH_NCCL
    nccl_.reset();  // before MPI goes (the emulated NCCL is made of MPI)
#endif
    if (!owns_init_) return;
    MPI_Comm_free(&comm_);
    MPI_Finalize();
  }
  int rank() const override { return rank_; }
  int world() const override { return world_; }
  int local_rank() const override { return local_rank_; }
  const char* backend() const override { return "mpi"; }
#ifdef SLOTCON_WITH_NCCL
  bool has_cuda_collectives() const override { return true; }
#endif
  void abort(int code) override {
    std::fflush(stdout);
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);  // MPI_Abort does not return; in case it does
  }

 protected:
  void do_all_reduce_sum(void* data, int64_t count, DType t) override {
    const MPI_Datatype type = mpi_type(t);
    const int64_t elem = int64_t(dtype_size(t));
    for (int64_t done = 0; done < count;) {  // MPI counts are int
      const int n = int(std::min<int64_t>(count - done, INT_MAX / 2));
      MPI_Request req;
      check(MPI_Iallreduce(MPI_IN_PLACE, static_cast<char*>(data) + done * elem, n, type, MPI_SUM,
                           comm_, &req),
            "all_reduce_sum");
      wait(req, "all_reduce_sum");
      done += n;
    }
  }
  void do_all_gather(const void* send, int64_t bytes, void* recv) override {
    SC_CHECK(bytes <= INT_MAX, "MPI all_gather_rows: ", bytes, " bytes per rank is over 2 GiB");
    MPI_Request req;
    check(MPI_Iallgather(send, int(bytes), MPI_BYTE, recv, int(bytes), MPI_BYTE, comm_, &req),
          "all_gather_rows");
    wait(req, "all_gather_rows");
  }
  void do_broadcast(void* data, int64_t bytes, int root) override {
    for (int64_t done = 0; done < bytes;) {
      const int n = int(std::min<int64_t>(bytes - done, INT_MAX / 2));
      MPI_Request req;
      check(MPI_Ibcast(static_cast<char*>(data) + done, n, MPI_BYTE, root, comm_, &req),
            "broadcast");
      wait(req, "broadcast");
      done += n;
    }
  }
  void do_barrier() override {
    MPI_Request req;
    check(MPI_Ibarrier(comm_, &req), "barrier");
    wait(req, "barrier");
  }
#ifdef SLOTCON_WITH_NCCL
  void do_cuda_all_reduce_sum(Tensor& t) override { nccl(t).all_reduce_sum(t); }
  void do_cuda_all_gather(const Tensor& send, Tensor& recv) override {
    nccl(send).all_gather(send, recv);
  }
  void do_cuda_broadcast(Tensor& t, int root) override { nccl(t).broadcast(t, root); }
  void do_cuda_start_all_reduce_sum(Tensor& t) override { nccl(t).start_all_reduce_sum(t); }
  void do_cuda_wait_all_reduces(Device d) override {
    if (nccl_ && nccl_->device() == d.index) nccl_->wait_started();
  }
#endif

 private:
  void check(int rc, const char* what) {
    if (rc == MPI_SUCCESS) return;
    failed_ = true;
    throw Error(str_cat("MPI ", what, " on rank ", rank_, ": ", mpi_error(rc)));
  }
  void wait(MPI_Request& req, const char* what) {
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    const auto deadline = start + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(timeout_s_));
    long pause_ns = 0;
    for (int polls = 0;; ++polls) {
      int done = 0;
      check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), what);
      if (done) return;
      if (Clock::now() > deadline) {
        failed_ = true;
        throw Error(str_cat("MPI ", what, " on rank ", rank_, " of ", world_,
                            ": no answer from the other ranks within ", timeout_s_,
                            " s (SLOTCON_COMM_TIMEOUT); a rank has died, is stuck, or "
                            "took another path through the program"));
      }
      if (polls < 1000) continue;  // ~100 us of spinning first
      pause_ns = std::min<long>(pause_ns ? pause_ns * 2 : 10000, 1000000);
      timespec ts{0, pause_ns};
      nanosleep(&ts, nullptr);
    }
  }

#ifdef SLOTCON_WITH_NCCL
  // The NCCL communicator, made on t's device at the first collective on a CUDA tensor.
  NcclGroup& nccl(const Tensor& t) {
    if (!nccl_) {
      nccl_ = std::make_unique<NcclGroup>(
          rank_, world_, t.device().index, timeout_s_,
          [this](void* p, size_t bytes) { do_broadcast(p, int64_t(bytes), 0); });
    }
    SC_CHECK(t.device().index == nccl_->device(), "comm: ", t.str(), " on rank ", rank_,
             ": this process's NCCL communicator is on cuda:", nccl_->device(),
             " (one device per process)");
    nccl_->set_timeout(timeout_s_);
    return *nccl_;
  }
  std::unique_ptr<NcclGroup> nccl_;
#endif
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, world_ = 1, local_rank_ = 0;
  bool owns_init_ = false;
  bool failed_ = false;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator() { return std::make_unique<MpiComm>(); }

}  // namespace sc
