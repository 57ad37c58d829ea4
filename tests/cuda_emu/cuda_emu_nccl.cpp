// cuda_emu_nccl.cpp: the emulated NCCL of include/nccl.h, made of MPI (see that header).
#include <mpi.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "nccl.h"

struct ncclComm {
  MPI_Comm mpi = MPI_COMM_NULL;
  int rank = 0, nranks = 1;
  std::string last_error;
};

namespace {

size_t type_size(ncclDataType_t t) {
  switch (t) {
    case ncclInt8:
    case ncclUint8:
      return 1;
    case ncclFloat16:
    case ncclBfloat16:
      return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32:
      return 4;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64:
      return 8;
    default:
      return 0;
  }
}

ncclResult_t invalid(ncclComm_t comm, const std::string& why) {
  if (comm) comm->last_error = why;
  return ncclInvalidArgument;
}

ncclResult_t mpi_failed(ncclComm_t comm, int rc, const char* what) {
  if (rc == MPI_SUCCESS) return ncclSuccess;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  comm->last_error = std::string(what) + ": " + std::string(msg, size_t(len));
  return ncclSystemError;
}

template <class T>
void add_to(void* acc, const void* v, size_t n) {
  T* a = static_cast<T*>(acc);
  const T* b = static_cast<const T*>(v);
  for (size_t i = 0; i < n; ++i) a[i] = T(a[i] + b[i]);
}
// 16-bit floats: add in float, round after each addition.
template <class H>
void add_half_to(void* acc, const void* v, size_t n) {
  H* a = static_cast<H*>(acc);
  const H* b = static_cast<const H*>(v);
  for (size_t i = 0; i < n; ++i) a[i] = H(float(a[i]) + float(b[i]));
}

void add(ncclDataType_t t, void* acc, const void* v, size_t n) {
  switch (t) {
    case ncclInt8:
      return add_to<int8_t>(acc, v, n);
    case ncclUint8:
      return add_to<uint8_t>(acc, v, n);
    case ncclInt32:
      return add_to<int32_t>(acc, v, n);
    case ncclUint32:
      return add_to<uint32_t>(acc, v, n);
    case ncclInt64:
      return add_to<int64_t>(acc, v, n);
    case ncclUint64:
      return add_to<uint64_t>(acc, v, n);
    case ncclFloat32:
      return add_to<float>(acc, v, n);
    case ncclFloat64:
      return add_to<double>(acc, v, n);
    case ncclFloat16:
      return add_half_to<__half>(acc, v, n);
    case ncclBfloat16:
      return add_half_to<__nv_bfloat16>(acc, v, n);
    default:
      return;
  }
}

// Arguments every collective checks.
ncclResult_t check_common(ncclComm_t comm, const void* send, const void* recv, size_t count,
                          ncclDataType_t type) {
  if (!comm) return ncclInvalidArgument;
  if (type_size(type) == 0) return invalid(comm, "unknown data type " + std::to_string(int(type)));
  if (count > 0 && (!send || !recv)) return invalid(comm, "null buffer with a non-zero count");
  if (count * type_size(type) > size_t(INT_MAX))
    return invalid(comm, "the emulated NCCL moves at most 2 GiB per rank and call");
  return ncclSuccess;
}

}  // namespace

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  if (!id) return ncclInvalidArgument;
  std::memset(id->internal, 0, sizeof id->internal);
  const uint64_t stamp = uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
  const uint64_t pid = uint64_t(getpid());
  std::memcpy(id->internal, "emu-nccl", 8);
  std::memcpy(id->internal + 8, &stamp, 8);
  std::memcpy(id->internal + 16, &pid, 8);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  if (!comm || nranks < 1 || rank < 0 || rank >= nranks) return ncclInvalidArgument;
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) return ncclInvalidUsage;  // the emulation needs MPI
  if (std::memcmp(id.internal, "emu-nccl", 8) != 0) return ncclInvalidArgument;
  uint32_t color = 2166136261u;  // FNV-1a of the id: the processes that share it
  for (char c : id.internal) color = (color ^ uint8_t(c)) * 16777619u;
  auto* c = new ncclComm;
  if (MPI_Comm_split(MPI_COMM_WORLD, int(color & 0x7fffffffu), rank, &c->mpi) != MPI_SUCCESS) {
    delete c;
    return ncclSystemError;
  }
  MPI_Comm_set_errhandler(c->mpi, MPI_ERRORS_RETURN);
  int size = 0, r = 0;
  MPI_Comm_size(c->mpi, &size);
  MPI_Comm_rank(c->mpi, &r);
  if (size != nranks || r != rank) {  // ranks missing, or numbered otherwise than MPI splits them
    MPI_Comm_free(&c->mpi);
    delete c;
    return ncclInvalidUsage;
  }
  c->rank = rank;
  c->nranks = nranks;
  *comm = c;
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (!comm) return ncclInvalidArgument;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm->mpi != MPI_COMM_NULL) MPI_Comm_free(&comm->mpi);
  delete comm;
  return ncclSuccess;
}

// Called by the engine's watchdog thread just before the process ends: no MPI call (the
// communicator is funneled through the main thread), nothing freed.
ncclResult_t ncclCommAbort(ncclComm_t comm) { return comm ? ncclSuccess : ncclInvalidArgument; }

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* error) {
  if (!comm || !error) return ncclInvalidArgument;
  *error = ncclSuccess;  // the emulated collectives are synchronous: errors are returned
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t r) {
  switch (r) {
    case ncclSuccess:
      return "no error";
    case ncclUnhandledCudaError:
      return "unhandled cuda error";
    case ncclSystemError:
      return "unhandled system error";
    case ncclInternalError:
      return "internal error";
    case ncclInvalidArgument:
      return "invalid argument";
    case ncclInvalidUsage:
      return "invalid usage";
    case ncclRemoteError:
      return "remote process exited or there was a network error";
    case ncclInProgress:
      return "NCCL operation in progress";
    default:
      return "unknown result code";
  }
}

const char* ncclGetLastError(ncclComm_t comm) { return comm ? comm->last_error.c_str() : ""; }

namespace {

// A collective issued to `stream`: run now (its result returned), or, when the stream captures,
// recorded with its arguments for cudaGraphLaunch (a replayed collective that fails throws, as the
// replay has no result to return it in). `run` returns the collective's result.
template <class F>
ncclResult_t issue(ncclComm_t comm, cudaStream_t stream, const char* what, F run) {
  bool run_now = false;
  const auto replayed = [run, what]() {
    const ncclResult_t r = run();
    if (r != ncclSuccess)
      throw std::runtime_error(std::string("cuda_emu: ") + what + " replayed from a graph failed: " +
                               ncclGetErrorString(r));
  };
  if (emu::stream_op(stream, what, replayed, &run_now) != cudaSuccess) {
    comm->last_error = std::string(what) + ": refused by the stream capture (see stderr)";
    return ncclUnhandledCudaError;
  }
  return run_now ? run() : ncclSuccess;
}

}  // namespace

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t type,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  if (ncclResult_t r = check_common(comm, send, recv, count, type)) return r;
  if (op != ncclSum) return invalid(comm, "the emulated NCCL reduces with ncclSum only");
  if (count == 0) return ncclSuccess;
  return issue(comm, stream, "ncclAllReduce", [=]() {
    const size_t bytes = count * type_size(type);
    std::vector<unsigned char> all(bytes * size_t(comm->nranks));
    if (ncclResult_t r = mpi_failed(
            comm,
            MPI_Allgather(send, int(bytes), MPI_BYTE, all.data(), int(bytes), MPI_BYTE, comm->mpi),
            "MPI_Allgather"))
      return r;
    for (int r = 1; r < comm->nranks; ++r)  // rank order: the same sum on every rank
      add(type, all.data(), all.data() + size_t(r) * bytes, count);
    std::memcpy(recv, all.data(), bytes);
    return ncclSuccess;
  });
}

ncclResult_t ncclAllGather(const void* send, void* recv, size_t send_count, ncclDataType_t type,
                           ncclComm_t comm, cudaStream_t stream) {
  if (ncclResult_t r = check_common(comm, send, recv, send_count, type)) return r;
  if (send_count == 0) return ncclSuccess;
  return issue(comm, stream, "ncclAllGather", [=]() {
    const size_t bytes = send_count * type_size(type);
    const bool in_place =
        send == static_cast<const unsigned char*>(recv) + size_t(comm->rank) * bytes;
    return mpi_failed(comm,
                      MPI_Allgather(in_place ? MPI_IN_PLACE : send, int(bytes), MPI_BYTE, recv,
                                    int(bytes), MPI_BYTE, comm->mpi),
                      "MPI_Allgather");
  });
}

ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t type,
                           int root, ncclComm_t comm, cudaStream_t stream) {
  if (comm && (root < 0 || root >= comm->nranks))
    return invalid(comm, "root " + std::to_string(root) + " is not a rank");
  // only the root reads send
  if (ncclResult_t r =
          check_common(comm, comm && comm->rank == root ? send : recv, recv, count, type))
    return r;
  if (count == 0) return ncclSuccess;
  return issue(comm, stream, "ncclBroadcast", [=]() {
    const size_t bytes = count * type_size(type);
    if (comm->rank == root && send != recv) std::memmove(recv, send, bytes);
    return mpi_failed(comm, MPI_Bcast(recv, int(bytes), MPI_BYTE, root, comm->mpi), "MPI_Bcast");
  });
}
