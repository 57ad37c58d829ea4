#include "engine/allocator.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#include "engine/cuda/device_memory.h"
#include "engine/cuda_runtime.h"
#include "engine/error.h"

namespace sc {
namespace {
std::atomic<bool> g_poison{false};
constexpr size_t kAlign = 256;

// A cache of freed host blocks, so that a training step on the CPU does not pay for mmap, munmap
// and page zeroing on every large temporary. Blocks are reused only for requests of the same
// rounded size; at most kHostCacheLimit bytes are kept.
class HostCache {
 public:
  static constexpr size_t kHostCacheLimit = size_t(2) << 30;
  static size_t round(size_t n) {
    if (n <= 4096) return n == 0 ? kAlign : (n + kAlign - 1) / kAlign * kAlign;
    // 8 size classes per power of two: waste below 12.5%
    size_t p = 4096;
    while (p * 2 < n) p *= 2;
    size_t step = p / 8;
    return (n + step - 1) / step * step;
  }
  void* get(size_t rounded) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(rounded);
    if (it == free_.end()) return nullptr;
    void* p = it->second;
    free_.erase(it);
    cached_ -= rounded;
    return p;
  }
  void put(void* p, size_t rounded) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_ + rounded <= kHostCacheLimit) {
        free_.emplace(rounded, p);
        cached_ += rounded;
        return;
      }
    }
    std::free(p);
  }
  ~HostCache() {
    for (auto& kv : free_) std::free(kv.second);
  }

 private:
  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0;
};

HostCache& host_cache() {
  static HostCache* c = new HostCache();  // never destroyed: storages may outlive statics
  return *c;
}
}  // namespace

void set_poison_allocations(bool on) { g_poison = on; }
bool poison_allocations() { return g_poison; }

Storage::~Storage() {
  if (!data) return;
  if (device.is_cuda()) {
    cuda::device_free(data, device.index);
  } else if (pinned) {
    cuda::pinned_free(data);
  } else {
    host_cache().put(data, HostCache::round(nbytes));
  }
}

std::shared_ptr<Storage> allocate(size_t nbytes, Device device, bool pinned) {
  auto s = std::make_shared<Storage>();
  s->nbytes = nbytes;
  s->device = device;
  size_t rounded = (nbytes + kAlign - 1) / kAlign * kAlign;
  if (rounded == 0) rounded = kAlign;  // zero-sized tensors still get a valid pointer
  if (device.is_cuda()) {
    SC_CHECK(cuda_built(), "cannot allocate on ", device.str(), ": this build has no CUDA backend");
    s->data = cuda::device_alloc(rounded, device.index);
    if (g_poison) cuda::memset_async(s->data, 0xFF, rounded, device.index);
    return s;
  }
  if (pinned && cuda_available()) {
    s->data = cuda::pinned_alloc(rounded);
    s->pinned = true;
  } else {
    rounded = HostCache::round(nbytes);
    s->data = host_cache().get(rounded);
    if (!s->data) s->data = std::aligned_alloc(kAlign, rounded);
    SC_CHECK(s->data != nullptr, "out of host memory allocating ", nbytes, " bytes");
  }
  if (g_poison) std::memset(s->data, 0xFF, rounded);
  return s;
}

AllocatorStats cuda_allocator_stats(int device) { return cuda::device_stats(device); }
AllocatorStats pinned_allocator_stats() { return cuda::pinned_stats(); }
void cuda_empty_cache() { cuda::empty_cache(); }

// IEEE half <-> float, round to nearest even; subnormals, infinities and NaN handled.
uint16_t float_to_f16_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t mant = x & 0x007fffffu;
  int32_t exp = int32_t((x >> 23) & 0xff);
  if (exp == 0xff) return uint16_t(sign | 0x7c00u | (mant ? 0x200u : 0u));  // inf / NaN
  int32_t e = exp - 127 + 15;
  if (e >= 0x1f) return uint16_t(sign | 0x7c00u);  // overflow -> inf
  if (e <= 0) {                                      // subnormal or zero
    if (e < -10) return uint16_t(sign);
    mant |= 0x00800000u;
    uint32_t shift = uint32_t(14 - e);
    uint32_t half_mant = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1u);
    uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (half_mant & 1u))) ++half_mant;
    return uint16_t(sign | half_mant);
  }
  uint32_t half = sign | (uint32_t(e) << 10) | (mant >> 13);
  uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) ++half;  // may carry into the exponent
  return uint16_t(half);
}

float f16_bits_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t x;
  if (exp == 0) {
    if (mant == 0) {
      x = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while (!(mant & 0x400u));
      x = sign | (uint32_t(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    x = sign | 0x7f800000u | (mant << 13);
  } else {
    x = sign | ((exp - 15 + 127) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

}  // namespace sc
