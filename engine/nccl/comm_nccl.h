// comm_nccl.h: the NCCL half of the MPI backend (engine/comm.h, "NCCL"): collectives on CUDA
// tensors of one device per process, enqueued on the tensor's engine stream, and the watchdog
// that enforces the communicator's timeout on them. Built with SLOTCON_WITH_NCCL (CMake found
// nccl.h and libnccl beside MPI, or the emulator's build with MPI); includes no CUDA or MPI header.
#pragma once
#include <cstddef>
#include <functional>
#include <memory>

#include "engine/tensor.h"

namespace sc {

class NcclGroup {
 public:
  // Collective over the ranks: rank 0 makes the NCCL unique id and `bcast_from_root` (an MPI
  // broadcast of bytes from rank 0) hands it to the others; then every rank joins the NCCL
  // communicator on `device` (watched by the timeout like a collective).
  NcclGroup(int rank, int world, int device, double timeout_s,
            const std::function<void(void*, size_t)>& bcast_from_root);
  ~NcclGroup();
  NcclGroup(const NcclGroup&) = delete;
  NcclGroup& operator=(const NcclGroup&) = delete;

  int device() const;
  void set_timeout(double seconds);
  // On contiguous tensors of device(); enqueued on stream_of(t), no host synchronisation.
  void all_reduce_sum(Tensor& t);
  void all_gather(const Tensor& send, Tensor& recv);  // recv: world x send's elements
  void broadcast(Tensor& t, int root);
  // The overlapped all-reduce (engine/comm.h, start_all_reduce_sum): on this group's own
  // communication stream, after an event recorded on stream_of(t); wait_started makes the engine
  // stream of device() wait for everything started so far (an event on the communication stream).
  void start_all_reduce_sum(Tensor& t);
  void wait_started();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace sc
