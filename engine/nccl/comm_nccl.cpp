// comm_nccl.cpp: NCCL collectives on CUDA tensors for the MPI backend (see comm_nccl.h and the
// "NCCL" paragraph of engine/comm.h).
//
// The watchdog: every collective (and the communicator's creation) is put on a queue before NCCL
// is called, with the time of the call; after the call an event is recorded on the stream behind
// it. One thread per communicator takes the oldest entry and polls, about every millisecond,
// cudaEventQuery on its event and ncclCommGetAsyncError; an entry whose event has completed
// leaves the queue (its event is reused). An entry still pending timeout_s after its call, or an
// asynchronous NCCL error, ends the process: message on stderr, ncclCommAbort, exit code 1. The
// destructor waits for the queue to drain before it destroys the NCCL communicator.
#include "engine/nccl/comm_nccl.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/cuda/context.h"
#include "engine/dispatch.h"

namespace sc {
namespace {

using Clock = std::chrono::steady_clock;

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::F32:
      return ncclFloat32;
    case DType::F64:
      return ncclFloat64;
    case DType::I64:
      return ncclInt64;
    case DType::U8:
      return ncclUint8;
    case DType::F16:
      return ncclFloat16;
    case DType::BF16:
      return ncclBfloat16;
  }
  throw Error(str_cat("NCCL: unsupported dtype ", dtype_name(t)));
}

}  // namespace

struct NcclGroup::Impl {
  struct Pending {
    uint64_t id = 0;
    const char* what = "";
    Clock::time_point called;
    cudaEvent_t event = nullptr;  // null until recorded (or for the communicator's creation)
    bool done_without_event = false;
  };

  int rank = 0, world = 1, device = 0;
  double timeout_s = 600;
  ncclComm_t comm = nullptr;

  std::mutex m;
  std::condition_variable cv;
  std::deque<Pending> pending;  // oldest first
  std::vector<cudaEvent_t> spare;
  uint64_t next_id = 0;
  bool stop = false;
  std::thread watchdog;
  // The overlapped all-reduces: their stream and its two events, made at the first start (an
  // event may be recorded again once a stream has been told to wait for it: the wait takes the
  // record current at the call).
  cudaStream_t side = nullptr;
  cudaEvent_t side_ready = nullptr, side_done = nullptr;
  bool side_pending = false;

  void check(ncclResult_t r, const char* what) {
    if (r == ncclSuccess) return;
    throw Error(str_cat("NCCL ", what, " on rank ", rank, " of ", world, ": ",
                        ncclGetErrorString(r),
                        comm ? str_cat(" (", ncclGetLastError(comm), ")") : std::string()));
  }

  // Queues a collective as called now; returns its id.
  uint64_t begin(const char* what) {
    std::lock_guard<std::mutex> lk(m);
    Pending p;
    p.id = next_id++;
    p.what = what;
    p.called = Clock::now();
    pending.push_back(p);
    cv.notify_all();
    return p.id;
  }
  // Records the event that completes entry `id` on `stream`.
  void end(uint64_t id, cudaStream_t stream) {
    cudaEvent_t ev = nullptr;
    {
      std::lock_guard<std::mutex> lk(m);
      if (!spare.empty()) ev = spare.back(), spare.pop_back();
    }
    if (!ev) {
      const cudaError_t e = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
      SC_CHECK(e == cudaSuccess, "NCCL: cudaEventCreate: ", cudaGetErrorString(e));
    }
    const cudaError_t e = cudaEventRecord(ev, stream);
    SC_CHECK(e == cudaSuccess, "NCCL: cudaEventRecord: ", cudaGetErrorString(e));
    std::lock_guard<std::mutex> lk(m);
    for (Pending& p : pending)
      if (p.id == id) p.event = ev;
  }
  // After the NCCL call of entry `id`: its event on `stream`, or on an error the entry ends and
  // the error is thrown.
  void finish(uint64_t id, ncclResult_t r, const char* what, cudaStream_t stream) {
    if (r != ncclSuccess) {
      end_now(id);
      check(r, what);
    }
    end(id, stream);
  }
  // Marks entry `id` complete without an event (a host-blocking call that has returned).
  void end_now(uint64_t id) {
    std::lock_guard<std::mutex> lk(m);
    for (Pending& p : pending)
      if (p.id == id) p.done_without_event = true;
  }

  [[noreturn]] void fail(const std::string& why) {
    std::fprintf(stderr,
                 "slotcon: NCCL on rank %d of %d: %s; aborting the NCCL communicator and "
                 "ending this process (exit code 1)\n",
                 rank, world, why.c_str());
    std::fflush(stderr);
    if (comm) ncclCommAbort(comm);
    std::_Exit(1);
  }

  void watch() {
    cudaSetDevice(device);
    std::unique_lock<std::mutex> lk(m);
    while (true) {
      cv.wait(lk, [&] { return stop || !pending.empty(); });
      if (stop) return;
      const Pending p = pending.front();
      ncclComm_t c = comm;
      lk.unlock();
      bool done = p.done_without_event;
      if (!done && p.event) {
        const cudaError_t e = cudaEventQuery(p.event);
        if (e == cudaSuccess)
          done = true;
        else if (e != cudaErrorNotReady)
          fail(str_cat(p.what, ": the stream failed: ", cudaGetErrorString(e)));
      }
      ncclResult_t async = ncclSuccess;
      if (!done && c && ncclCommGetAsyncError(c, &async) == ncclSuccess && async != ncclSuccess &&
          async != ncclInProgress)
        fail(str_cat(p.what, ": asynchronous NCCL error: ", ncclGetErrorString(async)));
      const double waited = std::chrono::duration<double>(Clock::now() - p.called).count();
      lk.lock();
      if (done) {
        if (!pending.empty() && pending.front().id == p.id) {
          if (p.event) spare.push_back(p.event);
          pending.pop_front();
          if (pending.empty()) cv.notify_all();  // a destructor may wait for that
        }
        continue;
      }
      if (waited > timeout_s)
        fail(str_cat(p.what, " has not completed ", waited, " s after it was called (timeout ",
                     timeout_s,
                     " s, SLOTCON_COMM_TIMEOUT): a rank has died, is stuck, or took "
                     "another path through the program"));
      cv.wait_for(lk, std::chrono::milliseconds(1));
    }
  }
};

NcclGroup::NcclGroup(int rank, int world, int device, double timeout_s,
                     const std::function<void(void*, size_t)>& bcast_from_root)
    : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  s.rank = rank;
  s.world = world;
  s.device = device;
  s.timeout_s = timeout_s;
  ncclUniqueId id;
  if (rank == 0) s.check(ncclGetUniqueId(&id), "ncclGetUniqueId");
  bcast_from_root(&id, sizeof id);
  const cudaError_t e = cudaSetDevice(device);
  SC_CHECK(e == cudaSuccess, "NCCL on rank ", rank, ": cudaSetDevice(", device,
           "): ", cudaGetErrorString(e));
  s.watchdog = std::thread([&s] { s.watch(); });
  const uint64_t init = s.begin("ncclCommInitRank");
  ncclComm_t comm = nullptr;
  const ncclResult_t r = ncclCommInitRank(&comm, world, id, rank);
  if (r != ncclSuccess) {
    {
      std::lock_guard<std::mutex> lk(s.m);
      s.stop = true;
    }
    s.cv.notify_all();
    s.watchdog.join();
    s.check(r, "ncclCommInitRank");
  }
  {
    std::lock_guard<std::mutex> lk(s.m);
    s.comm = comm;
  }
  s.end_now(init);
}

NcclGroup::~NcclGroup() {
  Impl& s = *impl_;
  {
    // NCCL wants no collective in flight when its communicator goes: wait for the queued ones
    // (the watchdog still ends the process if one never completes)
    std::unique_lock<std::mutex> lk(s.m);
    s.cv.wait(lk, [&] { return s.pending.empty(); });
    s.stop = true;
  }
  s.cv.notify_all();
  if (s.watchdog.joinable()) s.watchdog.join();
  if (s.comm) ncclCommDestroy(s.comm);
  if (s.side) cudaStreamDestroy(s.side);
  if (s.side_ready) cudaEventDestroy(s.side_ready);
  if (s.side_done) cudaEventDestroy(s.side_done);
  for (const Impl::Pending& p : s.pending)
    if (p.event) cudaEventDestroy(p.event);
  for (cudaEvent_t ev : s.spare) cudaEventDestroy(ev);
}

int NcclGroup::device() const { return impl_->device; }

void NcclGroup::set_timeout(double seconds) {
  std::lock_guard<std::mutex> lk(impl_->m);
  impl_->timeout_s = seconds;
}

namespace {
void check_device(const char* op, const Tensor& t, int device) {
  SC_CHECK(t.device().is_cuda() && t.device().index == device, "NCCL ", op, ": ", t.str(),
           " is not on cuda:", device, ", the device of this process's NCCL communicator");
  SC_CHECK(t.is_contiguous(), "NCCL ", op, ": the tensor must be contiguous");
}
}  // namespace

void NcclGroup::all_reduce_sum(Tensor& t) {
  Impl& s = *impl_;
  check_device("all_reduce_sum", t, s.device);
  cudaStream_t st = stream_of(t);
  const uint64_t id = s.begin("all_reduce_sum");
  void* p = t.numel() ? t.data_ptr() : nullptr;
  s.finish(id, ncclAllReduce(p, p, size_t(t.numel()), nccl_type(t.dtype()), ncclSum, s.comm, st),
           "all_reduce_sum", st);
}

void NcclGroup::start_all_reduce_sum(Tensor& t) {
  Impl& s = *impl_;
  check_device("start_all_reduce_sum", t, s.device);
  auto cuda_check = [](cudaError_t e, const char* what) {
    SC_CHECK(e == cudaSuccess, "NCCL start_all_reduce_sum: ", what, ": ", cudaGetErrorString(e));
  };
  if (!s.side) {
    cuda_check(cudaStreamCreateWithFlags(&s.side, cudaStreamNonBlocking), "cudaStreamCreate");
    cuda_check(cudaEventCreateWithFlags(&s.side_ready, cudaEventDisableTiming), "cudaEventCreate");
    cuda_check(cudaEventCreateWithFlags(&s.side_done, cudaEventDisableTiming), "cudaEventCreate");
  }
  // the communication stream starts when what the engine stream queued so far (t's values) is done
  cudaStream_t st = stream_of(t);
  cuda_check(cudaEventRecord(s.side_ready, st), "cudaEventRecord");
  cuda_check(cudaStreamWaitEvent(s.side, s.side_ready, 0), "cudaStreamWaitEvent");
  const uint64_t id = s.begin("all_reduce_sum (overlapped)");
  void* p = t.numel() ? t.data_ptr() : nullptr;
  s.finish(id,
           ncclAllReduce(p, p, size_t(t.numel()), nccl_type(t.dtype()), ncclSum, s.comm, s.side),
           "all_reduce_sum (overlapped)", s.side);
  s.side_pending = true;
}

void NcclGroup::wait_started() {
  Impl& s = *impl_;
  if (!s.side_pending) return;
  cuda::set_device(s.device);
  cudaStream_t st = cuda::stream(s.device);
  cudaError_t e = cudaEventRecord(s.side_done, s.side);
  if (e == cudaSuccess) e = cudaStreamWaitEvent(st, s.side_done, 0);
  SC_CHECK(e == cudaSuccess, "NCCL wait for the overlapped all-reduces: ", cudaGetErrorString(e));
  s.side_pending = false;
}

void NcclGroup::all_gather(const Tensor& send, Tensor& recv) {
  Impl& s = *impl_;
  check_device("all_gather_rows", send, s.device);
  check_device("all_gather_rows", recv, s.device);
  SC_CHECK(recv.numel() == send.numel() * s.world && recv.dtype() == send.dtype(),
           "NCCL all_gather_rows: the result has ", recv.numel(), " elements for ", send.numel(),
           " per rank");
  cudaStream_t st = stream_of(send);
  const uint64_t id = s.begin("all_gather_rows");
  const size_t bytes = size_t(send.numel()) * dtype_size(send.dtype());
  s.finish(id,
           ncclAllGather(send.numel() ? send.data_ptr() : nullptr,
                         recv.numel() ? recv.data_ptr() : nullptr, bytes, ncclUint8, s.comm, st),
           "all_gather_rows", st);
}

void NcclGroup::broadcast(Tensor& t, int root) {
  Impl& s = *impl_;
  check_device("broadcast", t, s.device);
  cudaStream_t st = stream_of(t);
  const uint64_t id = s.begin("broadcast");
  void* p = t.numel() ? t.data_ptr() : nullptr;
  const size_t bytes = size_t(t.numel()) * dtype_size(t.dtype());
  s.finish(id, ncclBroadcast(p, p, bytes, ncclUint8, root, s.comm, st), "broadcast", st);
}

}  // namespace sc
