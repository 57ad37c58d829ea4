// allocator.h: where tensor memory comes from.
//
// CPU: 64-byte aligned host memory. CUDA: a stream-ordered caching allocator: blocks freed on a
// stream go back to a per-device pool and are reused for later requests on the same stream, so
// that a steady-state training step makes no cudaMalloc/cudaFree calls (a requirement for CUDA
// graph capture). Pinned host memory (cudaHostAlloc) is cached the same way; without a CUDA
// device it degrades to ordinary aligned host memory.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "engine/dtype.h"

namespace sc {

struct AllocatorStats {
  size_t allocated_bytes = 0;   // live blocks handed out
  size_t reserved_bytes = 0;    // allocated + cached
  size_t peak_allocated_bytes = 0;
  uint64_t device_malloc_calls = 0;  // cudaMalloc / cudaHostAlloc calls made so far
  uint64_t device_free_calls = 0;
};

// A block of raw memory that frees itself back to its allocator.
struct Storage {
  void* data = nullptr;
  size_t nbytes = 0;
  Device device;
  bool pinned = false;
  Storage() = default;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage();
};

// Allocate nbytes on `device` (pinned host memory when pinned && device is CPU).
// Ensures: the returned storage is at least 256-byte aligned. When poisoning is on, new memory is
// filled with 0xFF bytes (NaN for every float type) so that an element an op forgot to write shows.
std::shared_ptr<Storage> allocate(size_t nbytes, Device device, bool pinned = false);

void set_poison_allocations(bool on);
bool poison_allocations();

AllocatorStats cuda_allocator_stats(int device = 0);
AllocatorStats pinned_allocator_stats();
// Return every cached (free) CUDA block to the driver.
void cuda_empty_cache();

}  // namespace sc
