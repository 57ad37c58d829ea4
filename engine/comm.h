// comm.h: collectives over the ranks of a data-parallel job (the engine knows nothing of what is
// reduced). One process per device; rank r of world W; local_rank = the rank among the processes
// of one machine (which GPU to use).
//
// Backends:
//   single    world 1: every collective is the identity (no MPI call, no thread).
//   mpi       Open MPI (or any MPI-3) across processes and machines, for CPU tensors. Built when
//             CMake finds MPI (SLOTCON_WITH_MPI); MPI_Init is called only when the process was
//             launched by an MPI launcher (see make_communicator_from_env), so a plain
//             `slotcon train` needs no MPI at run time beyond the shared library.
//             Its NCCL half takes the CUDA tensors (engine/nccl/comm_nccl.h; "NCCL" below): built
//             when CMake also finds NCCL (nccl.h + libnccl; SLOTCON_WITH_NCCL), and in the CUDA
//             emulator's build with MPI (an emulated NCCL made of MPI,
//             tests/cuda_emu/cuda_emu_nccl.cpp). CPU tensors still go through MPI.
//   loopback  N ranks inside one process, one thread per rank, sharing buffers: the tests'
//             reference for the data-parallel semantics (LoopbackGroup).
//
// Semantics (every rank must call the same collectives in the same order, with tensors of the
// same shape and dtype, except where noted):
//   all_reduce_sum(t)    t <- sum over ranks of t, in place; the same result on every rank. The
//                        loopback backend sums in rank order (deterministic); MPI and NCCL in their
//                        own order (float round-off may differ between backends, never between
//                        ranks). A U8 sum must stay below 256: NCCL and loopback wrap, but Open
//                        MPI's AVX reductions saturate at 255 on long buffers (open-mpi/ompi#8045).
//   all_gather_rows(t)   (n, ...) on each rank -> (W * n, ...): rank 0's rows, then rank 1's...
//                        The result is on t's device.
//   broadcast(t, root)   t <- root's t, in place.
//   barrier()            returns when every rank has entered it (a host-side MPI barrier: it does
//                        not wait for CUDA collectives still queued on a stream).
//   start_all_reduce_sum(t), then wait_all_reduces(device)
//                        the all-reduce of t that may run beside the caller's later work (the
//                        data-parallel gradient buckets, engine/grad_buckets.h): t must be
//                        contiguous, and neither read nor written until wait_all_reduces on its
//                        device, after which every op queued there sees every started result.
//                        NCCL runs it on a communication stream of its own (made once per
//                        communicator), after an event recorded on t's engine stream, and
//                        wait_all_reduces makes the engine stream wait for an event recorded
//                        behind it: the copy into t, the collective and the backward's next
//                        kernels overlap on the GPU, and the host never waits. The other
//                        backends finish the all-reduce inside start_all_reduce_sum (MPI's
//                        progress happens inside MPI calls; the CPU step is compute-bound) and
//                        wait_all_reduces does nothing. Started all-reduces are collectives like
//                        the rest: every rank starts the same ones, in the same order relative
//                        to its other collectives.
// Tensors: CPU, F32 / F64 / I64 / U8, any shape; non-contiguous inputs are copied (the in-place
// ones are written back). CUDA tensors (F32 / F64 / I64 / U8 / BF16 / F16) when world > 1 need
// the NCCL backend (has_cuda_collectives(); else an sc::Error); on one rank every collective is
// the identity on any device.
//
// Timeouts: every collective waits at most timeout_s seconds for the other ranks, then throws
// sc::Error naming the collective, the rank and the time waited, so that a dead or stuck rank
// ends the others with a message instead of a hang. The default comes from SLOTCON_COMM_TIMEOUT
// (seconds, > 0), else kDefaultCommTimeout. A collective is not restartable after a timeout: the
// job is over (the app then calls abort(), which ends every rank through the launcher).
//
// NCCL (CUDA tensors): all_reduce_sum / all_gather_rows / broadcast enqueue ncclAllReduce /
// ncclAllGather / ncclBroadcast on the tensor's engine stream (stream_of(t)) and return without a
// host synchronisation (stream-ordered, like every other op): the result is there for the next op
// on that stream, and the host sees it at its next read-back. The NCCL communicator is made at the
// first collective on a CUDA tensor (collective over the ranks: rank 0's ncclUniqueId is broadcast
// over MPI), on that tensor's device, one per process; a later tensor on another device is an
// error. Since the host does not wait, the timeout cannot be checked where the collective is
// called: a watchdog thread follows every NCCL collective from the moment it is called (an event
// recorded after it on the stream) and polls cudaEventQuery and ncclCommGetAsyncError about every
// millisecond; when one has not completed timeout_s seconds after it was called, or NCCL reports
// an asynchronous error, the watchdog prints the collective, the rank and the time waited to
// stderr, calls ncclCommAbort (which ends the NCCL kernels, so that nothing waits on them) and
// ends the process with exit code 1 (the launcher then ends the other ranks; an exception cannot
// be thrown into a thread that may be blocked in a CUDA synchronisation). The time counts from
// the call, so it includes the work queued before the collective on the stream. An NCCL call that
// fails at once (a bad argument) throws sc::Error there. Destroying the communicator waits for the
// queued NCCL collectives (still under the watchdog) before the NCCL communicator goes.
#pragma once
#include <memory>
#include <string>

#include "engine/tensor.h"

namespace sc {

// Seconds a collective waits for the other ranks by default (a rank that is merely slow, e.g.
// rank 0 writing a checkpoint or scoring, must not be mistaken for a dead one).
constexpr double kDefaultCommTimeout = 600.0;
// SLOTCON_COMM_TIMEOUT when set to a positive number of seconds, else kDefaultCommTimeout.
double comm_timeout_from_env();

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  virtual int local_rank() const = 0;
  virtual const char* backend() const = 0;  // "single", "mpi", "loopback"
  // Whether collectives on CUDA tensors work when world > 1 (the NCCL backend).
  virtual bool has_cuda_collectives() const { return false; }

  // The collectives of the header comment (checks, then the backend's primitive).
  void all_reduce_sum(Tensor& t);
  Tensor all_gather_rows(const Tensor& t);
  void broadcast(Tensor& t, int root = 0);
  void barrier();
  void start_all_reduce_sum(Tensor& t);
  void wait_all_reduces(Device device);
  // Helpers over the collectives: root's string on every rank; every rank's 64-bit value.
  std::string broadcast_string(const std::string& s, int root = 0);
  std::vector<int64_t> all_gather_i64(int64_t v);

  // Ends the whole job now (MPI_Abort on mpi; the other ranks of a loopback group fail at their
  // next collective). Does not return on mpi.
  virtual void abort(int code) = 0;

  double timeout_s() const { return timeout_s_; }
  void set_timeout(double seconds);
  // Bytes this rank has put into collectives so far (the payload, not the algorithm's traffic;
  // a broadcast counts on its root), and how many collectives it has joined (world > 1 only).
  int64_t bytes_moved() const { return bytes_; }
  int64_t calls() const { return calls_; }

 protected:
  // Byte-level primitives on dense CPU buffers (count elements of dtype t).
  virtual void do_all_reduce_sum(void* data, int64_t count, DType t) = 0;
  virtual void do_all_gather(const void* send, int64_t bytes, void* recv) = 0;
  virtual void do_broadcast(void* data, int64_t bytes, int root) = 0;
  virtual void do_barrier() = 0;
  // The same on contiguous CUDA tensors (only called when has_cuda_collectives()): enqueued on
  // the tensor's stream, no host synchronisation. recv is (world * send rows, ...), allocated.
  virtual void do_cuda_all_reduce_sum(Tensor& t);
  virtual void do_cuda_all_gather(const Tensor& send, Tensor& recv);
  virtual void do_cuda_broadcast(Tensor& t, int root);
  // The overlapped all-reduce on a CUDA tensor; by default the stream-ordered one, no wait.
  virtual void do_cuda_start_all_reduce_sum(Tensor& t) { do_cuda_all_reduce_sum(t); }
  virtual void do_cuda_wait_all_reduces(Device) {}
  double timeout_s_ = kDefaultCommTimeout;
  int64_t bytes_ = 0;
  int64_t calls_ = 0;
};

// World 1, every collective the identity.
std::unique_ptr<Communicator> make_single_communicator();

// How the process was started: "mpi" when an MPI launcher started it (mpirun / mpiexec of Open
// MPI: OMPI_COMM_WORLD_SIZE; srun with PMIx or PMI-2: PMIX_RANK / PMI_RANK / PMI_SIZE), else
// "single". An sc::Error for one of several srun tasks without an MPI plugin
// (SLURM_STEP_NUM_TASKS > 1 and none of those): each would train alone. SLOTCON_DIST=single
// forces world 1 (also there); SLOTCON_DIST=mpi requires MPI.
std::string detect_launcher();
// The communicator for this process: MPI (MPI_Init_thread, funneled) when detect_launcher() says
// "mpi" (an sc::Error when this build has no MPI), else the single one. Call once per process.
std::unique_ptr<Communicator> make_communicator_from_env();
// Whether this build has the MPI backend, and its NCCL half for CUDA tensors.
bool comm_has_mpi();
bool comm_has_nccl();
// The CUDA device of this rank: cuda:local_rank, or cuda:0 where the process sees only one
// device (a launcher that gives each process its own GPU through CUDA_VISIBLE_DEVICES, or the
// emulator); an sc::Error when local_rank has no device (more processes than GPUs on a machine).
Device comm_cuda_device(const Communicator& c);

// A group of N ranks played by N threads of one process. Each thread uses comm(r); collectives
// meet in shared memory. A rank that throws or stops calling leaves the others to time out (or
// fail at once after abort()).
class LoopbackGroup {
 public:
  explicit LoopbackGroup(int world, double timeout_s = kDefaultCommTimeout);
  ~LoopbackGroup();
  Communicator& comm(int rank);
  int world() const;

  struct Shared;  // the meeting point (comm.cpp)

 private:
  std::shared_ptr<Shared> shared_;
  std::vector<std::unique_ptr<Communicator>> comms_;
};

}  // namespace sc
