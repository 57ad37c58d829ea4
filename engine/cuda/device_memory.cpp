// The CUDA caching allocators (see device_memory.h for the contract).
//
// Device memory: per device, two pools of free blocks ordered by (size, address):
// - small requests (<= 1 MiB) are rounded up to 512 B and carved out of 2 MiB segments;
// - large requests are rounded up to 512 B and carved out of 20 MiB segments (requests under
//   10 MiB) or of a segment of their own rounded up to 2 MiB.
// A request takes the smallest free block that fits (best fit) and splits off the rest when it is
// worth keeping (>= 512 B small, > 1 MiB large). A freed block merges with its free neighbours in
// the same segment. Segments go back to the driver only in empty_cache() (or to retry a failed
// cudaMalloc), so the steady state makes no cudaMalloc/cudaFree calls.
//
// Stream ordering: all engine work on a device runs on one stream (context.h), so a block freed
// by the host can be handed out again at once: any kernel that uses it later is queued after the
// kernels that used it before.
//
// Pinned host memory: freed buffers are cached with a CUDA event recorded on every engine stream
// that exists, and are reused only once those events have completed (an asynchronous host-to-
// device copy may still be reading them). A cached buffer serves requests from half its size up.
#include "engine/cuda/device_memory.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <unordered_map>
#include <vector>

#include "engine/cuda/context.h"
#include "engine/cuda_runtime.h"
#include "kernels/check.h"

namespace sc {
namespace cuda {
namespace {

constexpr size_t kRound = 512;
constexpr size_t kSmallLimit = size_t(1) << 20;     // requests up to 1 MiB are "small"
constexpr size_t kSmallSegment = size_t(2) << 20;   // small blocks come from 2 MiB segments
constexpr size_t kLargeSegment = size_t(20) << 20;  // mid-size requests share 20 MiB segments
constexpr size_t kLargeShareLimit = size_t(10) << 20;
constexpr size_t kLargeRound = size_t(2) << 20;
constexpr size_t kLargeSplitMin = size_t(1) << 20;

size_t round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }

std::string bytes_str(size_t b) {
  char buf[64];
  if (b >= (size_t(1) << 30)) {
    std::snprintf(buf, sizeof buf, "%.2f GiB", double(b) / double(size_t(1) << 30));
  } else if (b >= (size_t(1) << 20)) {
    std::snprintf(buf, sizeof buf, "%.2f MiB", double(b) / double(size_t(1) << 20));
  } else {
    std::snprintf(buf, sizeof buf, "%zu B", b);
  }
  return buf;
}

struct DevicePool;

struct Block {
  char* ptr = nullptr;
  size_t size = 0;
  bool small = false;
  bool allocated = false;
  DevicePool* owner = nullptr;  // the pool whose free lists the block returns to
  Block* prev = nullptr;  // neighbours inside the same segment
  Block* next = nullptr;
};

struct BySizeThenAddress {
  bool operator()(const Block* a, const Block* b) const {
    return a->size != b->size ? a->size < b->size : a->ptr < b->ptr;
  }
};

// Per device: the shared pool (its `live` map holds every live block of the device, the private
// pools' too, and its stats count them all), and private pools (graph capture) with only their
// free lists.
struct DevicePool {
  std::set<Block*, BySizeThenAddress> free_small, free_large;
  std::unordered_map<void*, Block*> live;
  AllocatorStats stats;
  int id = 0;  // 0: the shared pool
  std::set<Block*, BySizeThenAddress>& pool(bool small) { return small ? free_small : free_large; }
};

class DeviceAllocator {
 public:
  void* alloc(size_t nbytes, int device) {
    SC_CHECK(device >= 0 && device < kMaxDevices && device < cuda_device_count(),
             "cannot allocate on cuda:", device, ": ", cuda_device_count(),
             " CUDA device(s) present");
    const size_t size = round_up(nbytes == 0 ? 1 : nbytes, kRound);
    const bool small = size <= kSmallLimit;
    std::lock_guard<std::mutex> lock(mu_);
    DevicePool& p = pools_[device];
    DevicePool& owner = active_[device] ? *active_[device] : p;
    auto& pool = owner.pool(small);
    Block key;
    key.size = size;
    Block* b = nullptr;
    auto it = pool.lower_bound(&key);
    if (it != pool.end()) {
      b = *it;
      pool.erase(it);
    } else {
      const size_t seg = small                     ? kSmallSegment
                         : size < kLargeShareLimit ? kLargeSegment
                                                   : round_up(size, kLargeRound);
      char* ptr = static_cast<char*>(malloc_segment(seg, size, nbytes, device));
      b = new Block;
      b->ptr = ptr;
      b->size = seg;
      b->small = small;
      b->owner = &owner;
    }
    // Split off the tail when it is worth keeping.
    const size_t rest = b->size - size;
    if (small ? rest >= kRound : rest > kLargeSplitMin) {
      Block* t = new Block;
      t->ptr = b->ptr + size;
      t->size = rest;
      t->small = small;
      t->owner = &owner;
      t->prev = b;
      t->next = b->next;
      if (b->next) b->next->prev = t;
      b->next = t;
      b->size = size;
      pool.insert(t);
    }
    b->allocated = true;
    p.live.emplace(b->ptr, b);
    p.stats.allocated_bytes += b->size;
    if (p.stats.allocated_bytes > p.stats.peak_allocated_bytes)
      p.stats.peak_allocated_bytes = p.stats.allocated_bytes;
    return b->ptr;
  }

  // Never throws: called from Storage destructors.
  void free(void* ptr, int device) noexcept {
    if (!ptr || device < 0 || device >= kMaxDevices) return;
    std::lock_guard<std::mutex> lock(mu_);
    DevicePool& p = pools_[device];
    auto it = p.live.find(ptr);
    if (it == p.live.end()) {
      std::fprintf(stderr, "sc::cuda::device_free: %p was not allocated on cuda:%d (ignored)\n",
                   ptr, device);
      return;
    }
    Block* b = it->second;
    p.live.erase(it);
    b->allocated = false;
    p.stats.allocated_bytes -= b->size;
    auto& pool = b->owner->pool(b->small);  // the blocks of a segment share their owner
    if (b->prev && !b->prev->allocated) {  // merge into the previous block
      Block* a = b->prev;
      pool.erase(a);
      a->size += b->size;
      a->next = b->next;
      if (b->next) b->next->prev = a;
      delete b;
      b = a;
    }
    if (b->next && !b->next->allocated) {  // absorb the next block
      Block* c = b->next;
      pool.erase(c);
      b->size += c->size;
      b->next = c->next;
      if (c->next) c->next->prev = b;
      delete c;
    }
    pool.insert(b);
  }

  void empty_cache() {
    std::lock_guard<std::mutex> lock(mu_);
    for (int d = 0; d < kMaxDevices; ++d) release_cached(d);
  }

  int begin_private(int device) {
    std::lock_guard<std::mutex> lock(mu_);
    SC_CHECK(!active_[device],
             "begin_private_pool: a private pool is already active on cuda:", device);
    auto q = std::make_unique<DevicePool>();
    q->id = ++last_private_id_;
    active_[device] = q.get();
    private_[device].push_back(std::move(q));
    return active_[device]->id;
  }
  void end_private(int device) {
    std::lock_guard<std::mutex> lock(mu_);
    active_[device] = nullptr;
  }
  // Every block of pool `id` (free or live) to the shared pool; the pool is gone.
  void release_private(int device, int id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto& v = private_[device];
    auto it = std::find_if(v.begin(), v.end(), [&](const auto& q) { return q->id == id; });
    if (it == v.end()) return;
    DevicePool* q = it->get();
    if (active_[device] == q) active_[device] = nullptr;
    DevicePool& p = pools_[device];
    for (auto& kv : p.live)
      if (kv.second->owner == q) kv.second->owner = &p;
    for (bool small : {true, false})
      for (Block* b : q->pool(small)) {
        b->owner = &p;
        p.pool(small).insert(b);
      }
    v.erase(it);
  }

  AllocatorStats stats(int device) {
    if (device < 0 || device >= kMaxDevices) return {};
    std::lock_guard<std::mutex> lock(mu_);
    return pools_[device].stats;
  }

 private:
  // cudaMalloc a segment; on failure empty this device's cache and retry once. Holds mu_.
  void* malloc_segment(size_t seg, size_t size, size_t asked, int device) {
    set_device(device);
    void* ptr = nullptr;
    cudaError_t e = cudaMalloc(&ptr, seg);
    if (e == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      release_cached(device);
      e = cudaMalloc(&ptr, seg);
    }
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      const AllocatorStats& s = pools_[device].stats;
      size_t free_b = 0, total_b = 0;
      if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) (void)cudaGetLastError();
      throw Error(str_cat("CUDA out of memory on cuda:", device, ": asked for ", bytes_str(asked),
                          " (a ", bytes_str(seg), " segment for a ", bytes_str(size),
                          " block); the engine has ", bytes_str(s.allocated_bytes),
                          " allocated and ", bytes_str(s.reserved_bytes),
                          " reserved; the device has ", bytes_str(free_b), " free of ",
                          bytes_str(total_b), " (cudaMalloc: ", cudaGetErrorString(e), ")"));
    }
    DevicePool& p = pools_[device];
    p.stats.reserved_bytes += seg;
    ++p.stats.device_malloc_calls;
    return ptr;
  }

  // Return every wholly free segment of `device` to the driver. Holds mu_.
  void release_cached(int device) {
    DevicePool& p = pools_[device];
    bool synced = false;
    for (auto* pool : {&p.free_small, &p.free_large}) {
      for (auto it = pool->begin(); it != pool->end();) {
        Block* b = *it;
        if (b->prev || b->next) {  // part of a segment that is still in use
          ++it;
          continue;
        }
        if (!synced) {
          set_device(device);
          // cudaFree synchronises anyway; doing it once up front keeps errors in one place.
          note_host_sync();
          if (cudaDeviceSynchronize() != cudaSuccess) (void)cudaGetLastError();
          synced = true;
        }
        if (cudaFree(b->ptr) != cudaSuccess) (void)cudaGetLastError();
        p.stats.reserved_bytes -= b->size;
        ++p.stats.device_free_calls;
        it = pool->erase(it);
        delete b;
      }
    }
  }

  std::mutex mu_;
  DevicePool pools_[kMaxDevices];
  DevicePool* active_[kMaxDevices] = {};
  std::vector<std::unique_ptr<DevicePool>> private_[kMaxDevices];
  int last_private_id_ = 0;
};

class PinnedAllocator {
 public:
  void* alloc(size_t nbytes) {
    const size_t size = round_up(nbytes == 0 ? 1 : nbytes, kRound);
    std::lock_guard<std::mutex> lock(mu_);
    // Best fit among cached buffers no more than twice the request whose pending copies are done.
    for (auto it = free_.lower_bound(size); it != free_.end() && it->first <= 2 * size; ++it) {
      Cached& c = it->second;
      if (!events_done(c)) continue;
      void* ptr = c.ptr;
      const size_t got = it->first;
      recycle_events(c);
      free_.erase(it);
      live_.emplace(ptr, got);
      add_allocated(got);
      return ptr;
    }
    void* ptr = nullptr;
    cudaError_t e = cudaHostAlloc(&ptr, size, cudaHostAllocDefault);
    if (e != cudaSuccess) {  // release the cache (waiting for its copies) and retry once
      (void)cudaGetLastError();
      release_cached();
      e = cudaHostAlloc(&ptr, size, cudaHostAllocDefault);
    }
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      throw Error(str_cat("pinned host allocation of ", bytes_str(nbytes), " failed (",
                          cudaGetErrorString(e), "); ", bytes_str(stats_.allocated_bytes),
                          " pinned memory in use"));
    }
    ++stats_.device_malloc_calls;
    stats_.reserved_bytes += size;
    live_.emplace(ptr, size);
    add_allocated(size);
    return ptr;
  }

  void free(void* ptr) noexcept {
    if (!ptr) return;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(ptr);
    if (it == live_.end()) {
      std::fprintf(stderr, "sc::cuda::pinned_free: %p was not pinned-allocated (ignored)\n", ptr);
      return;
    }
    Cached c;
    c.ptr = ptr;
    // Order reuse after whatever is queued now on every engine stream (a copy may read ptr).
    // (the engine stream and the copy stream of engine/upload.h)
    for (int d = 0; d < kMaxDevices && d < cuda_device_count(); ++d) {
      for (cudaStream_t s : {existing_stream(d), existing_copy_stream(d)}) {
        if (!s) continue;
        cudaEvent_t ev = take_event(d);
        if (!ev) continue;
        if (cudaEventRecord(ev, s) != cudaSuccess) {
          (void)cudaGetLastError();
          continue;
        }
        c.events.push_back({d, ev});
      }
    }
    stats_.allocated_bytes -= it->second;
    free_.emplace(it->second, std::move(c));
    live_.erase(it);
  }

  void empty_cache() {
    std::lock_guard<std::mutex> lock(mu_);
    release_cached();
  }

  AllocatorStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

 private:
  struct Cached {
    void* ptr = nullptr;
    std::vector<std::pair<int, cudaEvent_t>> events;
  };

  void add_allocated(size_t n) {
    stats_.allocated_bytes += n;
    if (stats_.allocated_bytes > stats_.peak_allocated_bytes)
      stats_.peak_allocated_bytes = stats_.allocated_bytes;
  }
  bool events_done(Cached& c) {
    for (auto& de : c.events) {
      cudaError_t e = cudaEventQuery(de.second);
      if (e == cudaErrorNotReady) {
        (void)cudaGetLastError();
        return false;
      }
      if (e != cudaSuccess) (void)cudaGetLastError();
    }
    return true;
  }
  cudaEvent_t take_event(int device) {
    auto& pool = spare_events_[device];
    if (!pool.empty()) {
      cudaEvent_t ev = pool.back();
      pool.pop_back();
      return ev;
    }
    int cur = -1;
    if (cudaGetDevice(&cur) != cudaSuccess) cur = -1;
    if (cur != device && cudaSetDevice(device) != cudaSuccess) return nullptr;
    cudaEvent_t ev = nullptr;
    if (cudaEventCreateWithFlags(&ev, cudaEventDisableTiming) != cudaSuccess) {
      (void)cudaGetLastError();
      ev = nullptr;
    }
    if (cur >= 0 && cur != device) cudaSetDevice(cur);
    return ev;
  }
  void recycle_events(Cached& c) {
    for (auto& de : c.events) spare_events_[de.first].push_back(de.second);
    c.events.clear();
  }
  void release_cached() {
    for (auto& kv : free_) {
      for (auto& de : kv.second.events) {
        if (cudaEventSynchronize(de.second) != cudaSuccess) (void)cudaGetLastError();
      }
      recycle_events(kv.second);
      if (cudaFreeHost(kv.second.ptr) != cudaSuccess) (void)cudaGetLastError();
      stats_.reserved_bytes -= kv.first;
      ++stats_.device_free_calls;
    }
    free_.clear();
  }

  std::mutex mu_;
  std::multimap<size_t, Cached> free_;
  std::unordered_map<void*, size_t> live_;
  std::vector<cudaEvent_t> spare_events_[kMaxDevices];
  AllocatorStats stats_;
};

// Both live until the process ends (storages may be freed by other static destructors).
DeviceAllocator& device_allocator() {
  static DeviceAllocator* a = new DeviceAllocator;
  return *a;
}
PinnedAllocator& pinned_allocator() {
  static PinnedAllocator* a = new PinnedAllocator;
  return *a;
}

}  // namespace

void* device_alloc(size_t nbytes, int device) { return device_allocator().alloc(nbytes, device); }
void device_free(void* ptr, int device) { device_allocator().free(ptr, device); }
void* pinned_alloc(size_t nbytes) { return pinned_allocator().alloc(nbytes); }
void pinned_free(void* ptr) { pinned_allocator().free(ptr); }
AllocatorStats device_stats(int device) { return device_allocator().stats(device); }
AllocatorStats pinned_stats() { return pinned_allocator().stats(); }

void empty_cache() {
  device_allocator().empty_cache();
  pinned_allocator().empty_cache();
}

int begin_private_pool(int device) {
  SC_CHECK(device >= 0 && device < kMaxDevices, "begin_private_pool: no device ", device);
  return device_allocator().begin_private(device);
}
void end_private_pool(int device) {
  if (device >= 0 && device < kMaxDevices) device_allocator().end_private(device);
}
void release_private_pool(int device, int id) {
  if (device >= 0 && device < kMaxDevices) device_allocator().release_private(device, id);
}

void memset_async(void* ptr, int value, size_t n, int device) {
  if (n == 0) return;
  set_device(device);
  SC_TRACE_WORK(n, 0, Memory);
  kernels::note_memory_op("cudaMemsetAsync");
  SC_CUDA_CHECK(cudaMemsetAsync(ptr, value, n, stream(device)));
}

}  // namespace cuda
}  // namespace sc
