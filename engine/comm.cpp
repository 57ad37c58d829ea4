// comm.cpp: the communicator's front door, the single and loopback backends, and the choice of
// backend from the environment (see comm.h). The MPI backend is engine/mpi/comm_mpi.cpp, its
// NCCL half engine/nccl/comm_nccl.cpp.
#include "engine/comm.h"

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "engine/cuda_runtime.h"
#include "engine/ops.h"

namespace sc {

#ifdef SLOTCON_WITH_MPI
std::unique_ptr<Communicator> make_mpi_communicator();  // comm_mpi.cpp
bool comm_has_mpi() { return true; }
#else
bool comm_has_mpi() { return false; }
#endif
#ifdef SLOTCON_WITH_NCCL
bool comm_has_nccl() { return true; }
#else
bool comm_has_nccl() { return false; }
#endif

double comm_timeout_from_env() {
  if (const char* s = std::getenv("SLOTCON_COMM_TIMEOUT")) {
    char* end = nullptr;
    const double v = std::strtod(s, &end);
    SC_CHECK(end != s && *end == '\0' && v > 0,
             "SLOTCON_COMM_TIMEOUT must be a positive number "
             "of seconds, not '",
             s, "'");
    return v;
  }
  return kDefaultCommTimeout;
}

namespace {

// On one rank every collective is the identity, whatever the tensor's device. Returns whether t
// goes through the backend's CUDA collectives.
bool check_tensor(const char* op, const Tensor& t, const Communicator& c) {
  SC_CHECK(t.defined(), "comm ", op, ": the tensor is undefined");
  const bool cuda = t.device().is_cuda();
  if (cuda && c.world() > 1 && !c.has_cuda_collectives())
    throw Error(str_cat("comm ", op, ": ", t.str(), ": collectives on CUDA tensors need the NCCL ",
                        "backend, which ",
                        comm_has_nccl() ? str_cat("the ", c.backend(), " backend does not have")
                                        : std::string("this build does not have (CMake found no "
                                                      "nccl.h and libnccl, or no MPI)"),
                        "; train data-parallel on the CPU"));
  const DType d = t.dtype();
  const bool half = d == DType::BF16 || d == DType::F16;
  SC_CHECK(
      d == DType::F32 || d == DType::F64 || d == DType::I64 || d == DType::U8 || (half && cuda),
      "comm ", op, ": ", dtype_name(d), " is not supported ",
      cuda ? "(F32, F64, I64, U8, BF16, F16)" : "on the CPU (F32, F64, I64, U8)");
  return cuda && c.world() > 1;
}

}  // namespace

void Communicator::set_timeout(double seconds) {
  SC_CHECK(seconds > 0, "comm: the timeout must be positive, not ", seconds);
  timeout_s_ = seconds;
}

void Communicator::do_cuda_all_reduce_sum(Tensor&) {
  throw Error(str_cat("comm: the ", backend(), " backend has no CUDA collectives"));
}
void Communicator::do_cuda_all_gather(const Tensor&, Tensor&) {
  throw Error(str_cat("comm: the ", backend(), " backend has no CUDA collectives"));
}
void Communicator::do_cuda_broadcast(Tensor&, int) {
  throw Error(str_cat("comm: the ", backend(), " backend has no CUDA collectives"));
}

Device comm_cuda_device(const Communicator& c) {
  const int n = cuda_device_count();
  SC_CHECK(n > 0, "rank ", c.rank(), ": no CUDA device is available");
  if (n == 1) return Device::cuda(0);
  SC_CHECK(c.local_rank() < n, "rank ", c.rank(), " is process ", c.local_rank(),
           " on its machine, which has only ", n,
           " CUDA devices: start at most one process per device");
  return Device::cuda(c.local_rank());
}

void Communicator::all_reduce_sum(Tensor& t) {
  const bool cuda = check_tensor("all_reduce_sum", t, *this);
  if (world() == 1) return;
  Tensor d = t.is_contiguous() ? t : t.contiguous();
  if (cuda)
    do_cuda_all_reduce_sum(d);
  else
    do_all_reduce_sum(d.data_ptr(), d.numel(), d.dtype());
  ++calls_;
  bytes_ += d.numel() * int64_t(dtype_size(d.dtype()));
  if (!d.same(t)) copy_(t, d);
}

void Communicator::start_all_reduce_sum(Tensor& t) {
  const bool cuda = check_tensor("start_all_reduce_sum", t, *this);
  SC_CHECK(t.is_contiguous(),
           "comm start_all_reduce_sum: the tensor must be contiguous (the "
           "result lands in it after the call returns)");
  if (world() == 1) return;
  if (cuda)
    do_cuda_start_all_reduce_sum(t);
  else
    do_all_reduce_sum(t.data_ptr(), t.numel(), t.dtype());
  ++calls_;
  bytes_ += t.numel() * int64_t(dtype_size(t.dtype()));
}

void Communicator::wait_all_reduces(Device device) {
  if (world() == 1 || !device.is_cuda()) return;
  do_cuda_wait_all_reduces(device);
}

Tensor Communicator::all_gather_rows(const Tensor& t) {
  const bool cuda = check_tensor("all_gather_rows", t, *this);
  SC_CHECK(t.dim() >= 1, "comm all_gather_rows: needs at least one dimension, got a scalar");
  if (world() == 1) return t;
  Tensor d = t.is_contiguous() ? t : t.contiguous();
  Shape shape = d.shape();
  shape[0] *= world();
  Tensor out = empty(shape, d.dtype(), d.device());
  const int64_t bytes = d.numel() * int64_t(dtype_size(d.dtype()));
  if (cuda)
    do_cuda_all_gather(d, out);
  else
    do_all_gather(d.data_ptr(), bytes, out.data_ptr());
  ++calls_;
  bytes_ += bytes;
  return out;
}

void Communicator::broadcast(Tensor& t, int root) {
  const bool cuda = check_tensor("broadcast", t, *this);
  SC_CHECK(root >= 0 && root < world(), "comm broadcast: root ", root, " is not a rank of ",
           world());
  if (world() == 1) return;
  Tensor d = t.is_contiguous() ? t : t.contiguous();
  const int64_t bytes = d.numel() * int64_t(dtype_size(d.dtype()));
  if (cuda)
    do_cuda_broadcast(d, root);
  else
    do_broadcast(d.data_ptr(), bytes, root);
  ++calls_;
  if (rank() == root) bytes_ += bytes;
  if (!d.same(t)) copy_(t, d);
}

void Communicator::barrier() {
  if (world() == 1) return;
  do_barrier();
  ++calls_;
}

std::string Communicator::broadcast_string(const std::string& s, int root) {
  if (world() == 1) return s;
  Tensor n = full({1}, double(s.size()), DType::I64);
  broadcast(n, root);
  const int64_t len = n.data<int64_t>()[0];
  Tensor bytes = zeros({len}, DType::U8);
  if (rank() == root && len > 0) std::memcpy(bytes.data_ptr(), s.data(), size_t(len));
  if (len > 0) broadcast(bytes, root);
  return std::string(bytes.data<char>(), size_t(len));
}

std::vector<int64_t> Communicator::all_gather_i64(int64_t v) {
  Tensor t = full({1}, 0.0, DType::I64);
  t.data<int64_t>()[0] = v;  // exact (a double would round values above 2^53)
  Tensor all = all_gather_rows(t);
  const int64_t* p = all.data<int64_t>();
  return std::vector<int64_t>(p, p + all.numel());
}

// ---------------------------------------------------------------- single
namespace {

class SingleComm final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world() const override { return 1; }
  int local_rank() const override { return 0; }
  const char* backend() const override { return "single"; }
  void abort(int code) override { std::exit(code); }

 protected:
  // never reached: the front door returns first when world() == 1
  void do_all_reduce_sum(void*, int64_t, DType) override {}
  void do_all_gather(const void* send, int64_t bytes, void* recv) override {
    std::memcpy(recv, send, size_t(bytes));
  }
  void do_broadcast(void*, int64_t, int) override {}
  void do_barrier() override {}
};

}  // namespace

std::unique_ptr<Communicator> make_single_communicator() { return std::make_unique<SingleComm>(); }

std::string detect_launcher() {
  if (const char* d = std::getenv("SLOTCON_DIST")) {
    const std::string v = d;
    SC_CHECK(v == "single" || v == "mpi", "SLOTCON_DIST must be 'single' or 'mpi', not '", v, "'");
    return v;
  }
  // Open MPI's mpirun / mpiexec; srun with PMIx or PMI-2 (Slurm's MPI plugins). SLURM_NTASKS
  // alone is not used: it is also set in the batch script itself, outside any srun step.
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"})
    if (std::getenv(var)) return "mpi";
  // srun without an MPI plugin (--mpi=none, or a cluster whose default is none) starts N tasks
  // that see none of the above: each would train alone, on the same data, into the same
  // output_dir. SLURM_STEP_NUM_TASKS is set inside an srun step only, not in the batch script.
  if (const char* n = std::getenv("SLURM_STEP_NUM_TASKS"); n && std::atoi(n) > 1)
    throw Error(str_cat("slotcon was started by srun as one of ", n,
                        " tasks without an MPI plugin (no PMIX_RANK, PMI_RANK or PMI_SIZE), so "
                        "each task would train alone: use srun --mpi=pmix "
                        "(scripts/slurm_train.sbatch does), or set SLOTCON_DIST=single to run "
                        "independent single-process trainings on purpose"));
  return "single";
}

std::unique_ptr<Communicator> make_communicator_from_env() {
  const std::string how = detect_launcher();
  if (how == "single") return make_single_communicator();
#ifdef SLOTCON_WITH_MPI
  return make_mpi_communicator();
#else
  throw Error(
      "this process was started by an MPI launcher (or SLOTCON_DIST=mpi), but slotcon "
      "was built without MPI: install libopenmpi-dev (scripts/setup.sh) and rebuild, or "
      "set SLOTCON_DIST=single to train on one process");
#endif
}

// ---------------------------------------------------------------- loopback
struct LoopbackGroup::Shared {
  int world = 1;
  double timeout_s = kDefaultCommTimeout;
  std::mutex m;
  std::condition_variable cv;
  uint64_t generation = 0;  // completed meetings
  int arrived = 0;
  bool failed = false;  // a rank aborted or timed out: every later meeting fails at once
  std::string why;
  std::vector<const void*> slots;  // what each rank offers in the current collective

  // Returns when all ranks have arrived at this meeting; throws on timeout or failure.
  void meet(int rank, const char* what, double timeout_s) {
    std::unique_lock<std::mutex> lk(m);
    SC_CHECK(!failed, "loopback ", what, " on rank ", rank, ": the group has failed (", why, ")");
    const uint64_t gen = generation;
    if (++arrived == world) {
      arrived = 0;
      ++generation;
      cv.notify_all();
      return;
    }
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                              std::chrono::duration<double>(timeout_s));
    while (generation == gen) {
      if (failed) throw Error(str_cat("loopback ", what, " on rank ", rank, ": ", why));
      if (cv.wait_until(lk, deadline) == std::cv_status::timeout && generation == gen) {
        failed = true;
        why = str_cat("rank ", rank, " waited ", timeout_s, " s in ", what,
                      " for the other ranks (a rank has died or is stuck)");
        cv.notify_all();
        throw Error(str_cat("loopback ", what, " on rank ", rank,
                            ": no answer from the other "
                            "ranks within ",
                            timeout_s, " s (a rank has died or is stuck)"));
      }
    }
  }
  void fail(const std::string& reason) {
    std::lock_guard<std::mutex> lk(m);
    failed = true;
    why = reason;
    cv.notify_all();
  }
};

namespace {

template <class T>
void sum_slots(const std::vector<const void*>& slots, int64_t count, void* out) {
  T* o = static_cast<T*>(out);
  const T* first = static_cast<const T*>(slots[0]);
  for (int64_t i = 0; i < count; ++i) o[i] = first[i];
  for (size_t r = 1; r < slots.size(); ++r) {  // rank order: the same sum on every rank
    const T* s = static_cast<const T*>(slots[r]);
    for (int64_t i = 0; i < count; ++i) o[i] += s[i];
  }
}

class LoopbackComm final : public Communicator {
 public:
  LoopbackComm(std::shared_ptr<LoopbackGroup::Shared> s, int rank) : s_(std::move(s)), rank_(rank) {
    timeout_s_ = s_->timeout_s;
  }
  int rank() const override { return rank_; }
  int world() const override { return s_->world; }
  int local_rank() const override { return rank_; }
  const char* backend() const override { return "loopback"; }
  void abort(int code) override { s_->fail(str_cat("rank ", rank_, " aborted (code ", code, ")")); }

 protected:
  // Each collective: offer a pointer, meet, read the others' buffers, meet again (so nobody
  // changes or frees a buffer another rank is still reading), then write the own result.
  void do_all_reduce_sum(void* data, int64_t count, DType t) override {
    s_->slots[size_t(rank_)] = data;
    s_->meet(rank_, "all_reduce_sum", timeout_s_);
    const size_t bytes = size_t(count) * dtype_size(t);
    std::vector<unsigned char> out(bytes);
    switch (t) {
      case DType::F32:
        sum_slots<float>(s_->slots, count, out.data());
        break;
      case DType::F64:
        sum_slots<double>(s_->slots, count, out.data());
        break;
      case DType::I64:
        sum_slots<int64_t>(s_->slots, count, out.data());
        break;
      case DType::U8:
        sum_slots<uint8_t>(s_->slots, count, out.data());
        break;
      default:
        throw Error("loopback all_reduce_sum: unsupported dtype");
    }
    s_->meet(rank_, "all_reduce_sum", timeout_s_);
    std::memcpy(data, out.data(), bytes);
  }
  void do_all_gather(const void* send, int64_t bytes, void* recv) override {
    s_->slots[size_t(rank_)] = send;
    s_->meet(rank_, "all_gather_rows", timeout_s_);
    for (int r = 0; r < s_->world; ++r)
      std::memcpy(static_cast<char*>(recv) + r * bytes, s_->slots[size_t(r)], size_t(bytes));
    s_->meet(rank_, "all_gather_rows", timeout_s_);
  }
  void do_broadcast(void* data, int64_t bytes, int root) override {
    s_->slots[size_t(rank_)] = data;
    s_->meet(rank_, "broadcast", timeout_s_);
    std::vector<unsigned char> copy;
    if (rank_ != root) {
      const auto* src = static_cast<const unsigned char*>(s_->slots[size_t(root)]);
      copy.assign(src, src + bytes);
    }
    s_->meet(rank_, "broadcast", timeout_s_);
    if (rank_ != root) std::memcpy(data, copy.data(), size_t(bytes));
  }
  void do_barrier() override { s_->meet(rank_, "barrier", timeout_s_); }

 private:
  std::shared_ptr<LoopbackGroup::Shared> s_;
  int rank_;
};

}  // namespace

LoopbackGroup::LoopbackGroup(int world, double timeout_s) : shared_(std::make_shared<Shared>()) {
  SC_CHECK(world >= 1, "LoopbackGroup: world must be at least 1, not ", world);
  SC_CHECK(timeout_s > 0, "LoopbackGroup: the timeout must be positive");
  shared_->world = world;
  shared_->timeout_s = timeout_s;
  shared_->slots.assign(size_t(world), nullptr);
  for (int r = 0; r < world; ++r) comms_.push_back(std::make_unique<LoopbackComm>(shared_, r));
}

LoopbackGroup::~LoopbackGroup() = default;

Communicator& LoopbackGroup::comm(int rank) {
  SC_CHECK(rank >= 0 && rank < world(), "LoopbackGroup: no rank ", rank);
  return *comms_[size_t(rank)];
}

int LoopbackGroup::world() const { return shared_->world; }

}  // namespace sc
