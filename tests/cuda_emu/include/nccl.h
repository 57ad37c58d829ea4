// nccl.h for the CUDA emulator: the subset of NCCL's API that engine/nccl/comm_nccl.cpp uses,
// with NCCL's names, enumerator values and argument order, implemented over MPI on the emulated
// device memory (host memory) in cuda_emu_nccl.cpp. Only in a build with MPI (the CMake target
// slotcon_cuda_emu_nccl); MPI must be initialised before ncclCommInitRank.
//
// Emulated semantics: a communicator is MPI_COMM_WORLD split by the unique id (every process of
// MPI_COMM_WORLD must call ncclCommInitRank, as in the engine's use); every stream is the host
// thread, so a collective has completed when it returns (blocking MPI calls). all_reduce gathers
// every rank's buffer and sums in rank order (the same result on every rank; BF16 / F16 add in
// float and round after each addition). Arguments are checked as NCCL documents them: a null
// communicator, a null buffer with a non-zero count, an unknown type or operation, a root outside
// the ranks are ncclInvalidArgument. A collective on a capturing stream is recorded and runs from
// cudaGraphLaunch (every rank must replay its graph, as on GPUs); one the capture refuses returns
// ncclUnhandledCudaError.
#pragma once
#include <cstddef>

#include "cuda_runtime.h"

#define NCCL_MAJOR 2
#define NCCL_MINOR 18
#define NCCL_PATCH 0
#define NCCL_UNIQUE_ID_BYTES 128

typedef struct ncclComm* ncclComm_t;
typedef struct {
  char internal[NCCL_UNIQUE_ID_BYTES];
} ncclUniqueId;

typedef enum {
  ncclSuccess = 0,
  ncclUnhandledCudaError = 1,
  ncclSystemError = 2,
  ncclInternalError = 3,
  ncclInvalidArgument = 4,
  ncclInvalidUsage = 5,
  ncclRemoteError = 6,
  ncclInProgress = 7,
  ncclNumResults = 8
} ncclResult_t;

typedef enum { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4 } ncclRedOp_t;

typedef enum {
  ncclInt8 = 0,
  ncclUint8 = 1,
  ncclInt32 = 2,
  ncclUint32 = 3,
  ncclInt64 = 4,
  ncclUint64 = 5,
  ncclFloat16 = 6,
  ncclFloat32 = 7,
  ncclFloat64 = 8,
  ncclBfloat16 = 9,
  ncclNumTypes = 10
} ncclDataType_t;

ncclResult_t ncclGetUniqueId(ncclUniqueId* id);
ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank);
ncclResult_t ncclCommDestroy(ncclComm_t comm);
ncclResult_t ncclCommAbort(ncclComm_t comm);
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* error);
const char* ncclGetErrorString(ncclResult_t result);
const char* ncclGetLastError(ncclComm_t comm);

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t type,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclAllGather(const void* send, void* recv, size_t send_count, ncclDataType_t type,
                           ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t type,
                           int root, ncclComm_t comm, cudaStream_t stream);
