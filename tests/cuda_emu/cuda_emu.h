// cuda_emu.h: a CPU emulator for the hand-written CUDA kernels of kernels/, for machines (and CI)
// without a GPU. The kernels' own source is compiled by the host compiler after a mechanical
// rewrite (cuda_emu_rewrite.cpp: `k<<<grid, block, smem, stream>>>(args)` becomes a call of
// emu::launch, `extern __shared__ T name[]` a pointer to the launch's dynamic shared memory), and
// each CUDA thread runs as a fiber:
//
//   - blocks run one after another; the threads of a block are fibers on one OS thread, each run
//     until it reaches a barrier or returns, in alternating forward / reverse order from one
//     barrier interval to the next, so a missing __syncthreads shows up as a wrong result;
//   - __syncthreads() releases when every thread of the block waits at it; a thread that exits
//     while others wait (barrier divergence, undefined in CUDA) and a deadlock (threads waiting
//     at different barriers) are reported as errors naming the kernel;
//   - warp shuffles and __syncwarp synchronise the 32 lanes of a warp (every lane of the warp
//     must take part: the kernels use full masks);
//   - __shared__ variables are function-local statics (one block at a time makes that exact),
//     filled with 0xFF bytes (NaN for floats, -1 for integers) when the block's first thread
//     reaches the declaration; dynamic shared memory is filled with 0xFF bytes at every block
//     start; so a read before a write shows, in block 0 as in later ones; launch configurations are checked against the CUDA limits (block
//     size, grid size, 48 KiB of dynamic shared memory unless raised with cudaFuncSetAttribute,
//     at most 227 KiB);
//   - device memory is host memory (cudaMalloc is an aligned malloc) and every stream is the
//     host thread: a launch has finished when it returns (unless its stream is capturing: then it
//     is recorded, and runs from cudaGraphLaunch; docs/cuda_emu.md).
//
// What it cannot see: timing and memory-model races between blocks or warps (the emulation is
// sequentially consistent), performance, fast-math differences of the intrinsics (__expf is exp
// here), and everything of cuDNN and cuBLAS. It checks the indexing, the tiling, the reductions,
// the barrier placement within a block and the launch arithmetic of the kernels, on every CI run.
#pragma once

#include <math.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#define SLOTCON_CUDA_EMU 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __shared__ static
#define __constant__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

// ---------------------------------------------------------------- runtime types
typedef struct CUstream_st* cudaStream_t;

enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorIllegalState = 401,
  cudaErrorNotReady = 600,
  cudaErrorLaunchFailure = 719,
  // stream capture (CUDA's values and meanings, driver_types.h)
  cudaErrorStreamCaptureUnsupported = 900,  // not permitted when the stream is capturing
  cudaErrorStreamCaptureInvalidated = 901,  // the capture was invalidated by a previous error
  cudaErrorStreamCaptureMerge = 902,        // would merge two independent captures
  cudaErrorStreamCaptureUnmatched = 903,    // the capture was not initiated in this stream
  cudaErrorStreamCaptureUnjoined = 904,     // a fork not joined to the origin stream
  cudaErrorStreamCaptureIsolation = 905,    // a dependency on work outside the capture
  cudaErrorStreamCaptureImplicit = 906,     // the legacy stream would depend on a capture
  cudaErrorCapturedEvent = 907,             // an event last recorded in a capturing stream
  cudaErrorStreamCaptureWrongThread = 908,  // ended from another thread (mode not relaxed)
};
typedef enum cudaError cudaError_t;

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};

enum cudaDataType_t {
  CUDA_R_32F = 0,
  CUDA_R_64F = 1,
  CUDA_R_16F = 2,
  CUDA_R_16BF = 14,
};

enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrL2CacheSize = 38,
};

typedef struct CUevent_st* cudaEvent_t;
constexpr unsigned cudaStreamDefault = 0, cudaStreamNonBlocking = 1;
constexpr unsigned cudaEventDefault = 0, cudaEventDisableTiming = 2;
constexpr unsigned cudaHostAllocDefault = 0;

// Stream capture and graphs (the CUDA 12/13 runtime's names, values and signatures).
typedef struct CUgraph_st* cudaGraph_t;
typedef struct CUgraphNode_st* cudaGraphNode_t;
typedef struct CUgraphExec_st* cudaGraphExec_t;
typedef struct cudaGraphEdgeData_st {
  unsigned char from_port;
  unsigned char to_port;
  unsigned char type;
  unsigned char reserved[5];
} cudaGraphEdgeData;
enum cudaStreamCaptureStatus {
  cudaStreamCaptureStatusNone = 0,
  cudaStreamCaptureStatusActive = 1,
  cudaStreamCaptureStatusInvalidated = 2,
};
enum cudaStreamCaptureMode {
  cudaStreamCaptureModeGlobal = 0,
  cudaStreamCaptureModeThreadLocal = 1,
  cudaStreamCaptureModeRelaxed = 2,
};
enum cudaGraphInstantiateFlags {
  cudaGraphInstantiateFlagAutoFreeOnLaunch = 1,
  cudaGraphInstantiateFlagUpload = 2,
  cudaGraphInstantiateFlagDeviceLaunch = 4,
  cudaGraphInstantiateFlagUseNodePriority = 8,
};

// The emulated device: one H100-like card (what launch sizing and names read from it).
struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  size_t sharedMemPerBlock;
  size_t sharedMemPerBlockOptin;
  int major, minor;
  int multiProcessorCount;
  int maxThreadsPerBlock;
  int warpSize;
  int l2CacheSize;
};

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

// The emulated built-in variables: set by the scheduler before it resumes a thread.
extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;
constexpr int warpSize = 32;

// ---------------------------------------------------------------- the emulator
namespace emu {

struct LaunchCfg {
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  LaunchCfg(dim3 g, dim3 b, size_t s = 0, cudaStream_t st = nullptr)
      : grid(g), block(b), smem(s), stream(st) {}
};

// What the emulator learned of one launch site (one per lambda type: per site and instantiation).
struct SiteInfo {
  bool launched = false;  // ran once already
  bool barriers = false;  // some thread waited at a barrier or warp operation in a run
};

// Runs `body` once per thread of the launch (see the file comment), or, when cfg.stream is
// capturing (cudaStreamBeginCapture), records it for cudaGraphLaunch: `body` must then own what it
// uses (cuda_emu_rewrite makes it hold the launch's arguments by value, evaluated once at the
// launch as CUDA does). `name` is the kernel expression as written at the launch site. A site whose first launch used no barrier and no warp
// operation runs its later launches thread after thread on the host stack (no fibers: ~10x
// faster); should such a launch reach a barrier after all, the emulator stops with a message.
void launch_site(const LaunchCfg& cfg, const char* name, const std::function<void()>& body,
                 SiteInfo& site);
template <class F>
void launch(const LaunchCfg& cfg, const char* name, F&& body) {
  static SiteInfo site;
  launch_site(cfg, name, std::function<void()>(std::forward<F>(body)), site);
}

// The current block's dynamic shared memory.
unsigned char* dynamic_shared();
// A static __shared__ variable's declaration (inserted by cuda_emu_rewrite): the first call for
// `p` in a block fills its `bytes` with 0xFF; later calls in the same block do nothing.
void poison_shared_once(void* p, size_t bytes);

// Barriers (called from kernel code).
void sync_block();
void sync_warp();
// Warp exchange: every lane of the warp posts `bytes` (<= 16) of `v`, then reads lane `src`'s.
void warp_exchange(const void* v, void* out, size_t bytes, int src_lane);
int lane_id();
// Stops the launch with `what` and the kernel, block and thread (for checks in device functions).
[[noreturn]] void device_error(const std::string& what);

// The last launch's kernel expression and grid (read by kernels/check.h's trace).
struct LastLaunch {
  const char* name = nullptr;
  uint64_t blocks = 0, threads = 0;
};
LastLaunch last_launch();

// An asynchronous operation issued to stream `s` (a copy, a memset, a library call, a collective):
// returns cudaSuccess with *run_now true when the caller is to run it now (s is not capturing),
// cudaSuccess with *run_now false when a copy of `op` (which must own its arguments) was recorded
// into s's capture for cudaGraphLaunch, or the capture error (reported on stderr; nothing to run).
cudaError_t stream_op(cudaStream_t s, const char* what, const std::function<void()>& op,
                      bool* run_now);
// A call that waits for stream `s` on the host (cudaStreamSynchronize's rules under capture):
// cudaSuccess, or the capture error (reported; the capture is invalidated).
cudaError_t stream_sync(cudaStream_t s, const char* what);

// Dry run (cuda_emu_control.h).
bool dry_run();
void set_dry_run(bool on);

// Number of launches and of threads run so far (for tests of the emulator itself).
uint64_t launches();
uint64_t threads_run();

// cudaFuncSetAttribute keyed by the kernel expression's text (see cuda_emu_rewrite.cpp).
cudaError_t func_set_attribute(const char* name, cudaFuncAttribute attr, int value);

}  // namespace emu

// ---------------------------------------------------------------- runtime API
cudaError_t cudaMalloc(void** p, size_t bytes);
template <class T>
inline cudaError_t cudaMalloc(T** p, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(p), bytes);
}
cudaError_t cudaFree(void* p);
cudaError_t cudaMemset(void* p, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s = nullptr);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t s = nullptr);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaGetDevice(int* d);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d);
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int d);
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes);
cudaError_t cudaStreamCreate(cudaStream_t* s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaEventCreate(cudaEvent_t* e);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr);
// Every stream is the host thread: the event has happened; only the arguments are checked.
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags = 0);
cudaError_t cudaEventQuery(cudaEvent_t e);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);
cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned flags);
template <class T>
inline cudaError_t cudaHostAlloc(T** p, size_t bytes, unsigned flags) {
  return cudaHostAlloc(reinterpret_cast<void**>(p), bytes, flags);
}
cudaError_t cudaMallocHost(void** p, size_t bytes);
cudaError_t cudaFreeHost(void* p);
// __device__ variables are host variables here.
template <class T>
inline cudaError_t cudaMemcpyFromSymbol(void* dst, const T& symbol, size_t bytes, size_t offset = 0,
                                        cudaMemcpyKind = cudaMemcpyDeviceToHost) {
  std::memcpy(dst, reinterpret_cast<const char*>(&symbol) + offset, bytes);
  return cudaSuccess;
}
template <class T>
inline cudaError_t cudaMemcpyToSymbol(T& symbol, const void* src, size_t bytes, size_t offset = 0,
                                      cudaMemcpyKind = cudaMemcpyHostToDevice) {
  std::memcpy(reinterpret_cast<char*>(&symbol) + offset, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamQuery(cudaStream_t s);

// Stream capture and graph replay (see docs/cuda_emu.md, "Stream capture and CUDA graphs"): while
// a stream captures, the operations issued to it (and to the streams it forks to through events)
// are recorded, not run; cudaGraphLaunch runs them, in the order they were issued.
cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode);
cudaError_t cudaThreadExchangeStreamCaptureMode(cudaStreamCaptureMode* mode);
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* pGraph);
cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* pCaptureStatus);
// The CUDA 13 form (CUDA 12's lacks edgeData_out); the dependency outputs are empty: the emulator
// keeps no node dependencies (a graph replays in issue order).
cudaError_t cudaStreamGetCaptureInfo(cudaStream_t stream,
                                     cudaStreamCaptureStatus* captureStatus_out,
                                     unsigned long long* id_out = nullptr,
                                     cudaGraph_t* graph_out = nullptr,
                                     const cudaGraphNode_t** dependencies_out = nullptr,
                                     const cudaGraphEdgeData** edgeData_out = nullptr,
                                     size_t* numDependencies_out = nullptr);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* pGraphExec, cudaGraph_t graph,
                                 unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t graphExec, cudaStream_t stream);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t graphExec);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);
cudaError_t cudaGraphGetNodes(cudaGraph_t graph, cudaGraphNode_t* nodes, size_t* numNodes);

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t e);

// ---------------------------------------------------------------- device functions
inline void __syncthreads() { emu::sync_block(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::sync_warp(); }
inline void __threadfence() {}
inline void __threadfence_block() {}

namespace emu {
// Lane `src`'s value of v (the lane's own where src is outside its group of `width`).
template <class T>
inline T shfl_from(T v, int src, int width) {
  const int lane = lane_id();
  T r;
  warp_exchange(&v, &r, sizeof(T), (src >= 0 && src / width == lane / width) ? src : lane);
  return r;
}
}  // namespace emu
template <class T>
inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
  return emu::shfl_from(v, (emu::lane_id() & ~(width - 1)) + (src & (width - 1)), width);
}
template <class T>
inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
  return emu::shfl_from(v, emu::lane_id() ^ mask, width);
}
template <class T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
  return emu::shfl_from(v, emu::lane_id() + int(delta), width);
}
template <class T>
inline T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
  return emu::shfl_from(v, emu::lane_id() - int(delta), width);
}

// Atomics: the fibers of the emulation never interleave inside an expression, so a plain
// read-modify-write is atomic here.
namespace emu {
template <class T, class F>
inline T atomic_rmw(T* p, F f) {
  const T old = *p;
  *p = f(old);
  return old;
}
}  // namespace emu
template <class T>
inline T atomicAdd(T* p, T v) {
  return emu::atomic_rmw(p, [&](T o) { return T(o + v); });
}
template <class T>
inline T atomicMax(T* p, T v) {
  return emu::atomic_rmw(p, [&](T o) { return std::max(o, v); });
}
template <class T>
inline T atomicMin(T* p, T v) {
  return emu::atomic_rmw(p, [&](T o) { return std::min(o, v); });
}
template <class T>
inline T atomicCAS(T* p, T cmp, T v) {
  return emu::atomic_rmw(p, [&](T o) { return o == cmp ? v : o; });
}
template <class T>
inline T atomicExch(T* p, T v) {
  return emu::atomic_rmw(p, [&](T) { return v; });
}

template <class T>
inline T __ldg(const T* p) {
  return *p;
}

// CUDA's max / min accept mixed argument types.
template <class A, class B>
inline typename std::common_type<A, B>::type max(A a, B b) {
  using C = typename std::common_type<A, B>::type;
  return C(a) < C(b) ? C(b) : C(a);
}
template <class A, class B>
inline typename std::common_type<A, B>::type min(A a, B b) {
  using C = typename std::common_type<A, B>::type;
  return C(b) < C(a) ? C(b) : C(a);
}

inline float rsqrtf(float v) { return 1.0f / std::sqrt(v); }
inline double rsqrt(double v) { return 1.0 / std::sqrt(v); }
inline float __expf(float v) { return std::exp(v); }
inline float __logf(float v) { return std::log(v); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float v) { return v < 0.f ? 0.f : (v > 1.f ? 1.f : v); }
inline int __popc(unsigned v) { return __builtin_popcount(v); }

// ---------------------------------------------------------------- 16-bit floats
// Storage plus round-to-nearest-even conversions, as cuda_fp16.h / cuda_bf16.h provide on host.
namespace emu {
inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
unsigned short float_to_half_bits(float f);
float half_bits_to_float(unsigned short h);
inline unsigned short float_to_bf16_bits(float f) {
  const uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<unsigned short>((u >> 16) | 0x40u);
  return static_cast<unsigned short>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline float bf16_bits_to_float(unsigned short b) { return bits_f32(uint32_t(b) << 16); }
}  // namespace emu

struct __half {
  unsigned short x;
  __half() = default;
  __half(float f) : x(emu::float_to_half_bits(f)) {}
  __half(double f) : x(emu::float_to_half_bits(float(f))) {}
  operator float() const { return emu::half_bits_to_float(x); }
};
struct __nv_bfloat16 {
  unsigned short x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : x(emu::float_to_bf16_bits(f)) {}
  __nv_bfloat16(double f) : x(emu::float_to_bf16_bits(float(f))) {}
  operator float() const { return emu::bf16_bits_to_float(x); }
};
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return float(h); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return float(b); }
