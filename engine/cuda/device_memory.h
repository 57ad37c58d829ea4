// device_memory.h: the CUDA side of the allocator (implemented in engine/cuda/, stubbed in
// engine/nocuda/ for CPU-only builds, where every function throws or reports zero).
//
// device_alloc/device_free: a stream-ordered caching allocator per device. Requests are rounded
// up (512 B granularity for small blocks, 2 MiB segments for large ones) and served from blocks
// freed earlier on the engine's stream of that device; cudaMalloc is only called when the cache
// has no fitting block (on failure the cache is emptied and the call retried once, then sc::Error
// reports the size asked for and what is allocated and reserved). Blocks are never returned to
// the driver except by empty_cache(), so a steady-state step makes no cudaMalloc/cudaFree calls.
// pinned_alloc/pinned_free: page-locked host memory (cudaHostAlloc), cached the same way.
#pragma once
#include <cstddef>

#include "engine/allocator.h"

namespace sc {
namespace cuda {

void* device_alloc(size_t nbytes, int device);
void device_free(void* ptr, int device);
void* pinned_alloc(size_t nbytes);
void pinned_free(void* ptr);
AllocatorStats device_stats(int device);
AllocatorStats pinned_stats();
void empty_cache();
// Fill n bytes at ptr with `value` on the engine stream of `device` (used for poisoning).
void memset_async(void* ptr, int value, size_t n, int device);

// Private pools, for CUDA graph capture (engine/step_graph.h). While a pool is active on `device`
// (begin_private_pool .. end_private_pool), every device_alloc there takes its block from the
// pool's own segments, and a block the pool handed out returns to the pool when freed, also after
// end_private_pool, never to the shared cache: a captured graph replays into the same addresses,
// so nothing else may be given them. release_private_pool hands the pool's blocks, free and live,
// to the shared cache: call it once no graph that used the pool can run again. One pool active per
// device at a time; the engine issues its GPU work from one thread.
int begin_private_pool(int device);
void end_private_pool(int device);
void release_private_pool(int device, int id);

}  // namespace cuda
}  // namespace sc
