// cuda_emu.cpp: the fiber scheduler and runtime API of the CUDA emulator (see cuda_emu.h).
#include "cuda_emu.h"

#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <vector>

uint3 threadIdx{0, 0, 0};
uint3 blockIdx{0, 0, 0};
dim3 blockDim;
dim3 gridDim;

namespace emu {
namespace {

enum class St : uint8_t { Ready, BlockWait, WarpWait, Done };

// Context switching. On x86-64 a fiber switch is a few instructions (emu_switch below: the
// callee-saved registers, MXCSR and the x87 control word, then the stack pointer), which makes the
// emulation ~10x faster than glibc's swapcontext (a sigprocmask system call per switch). Elsewhere
// it falls back to ucontext.
#if defined(__x86_64__)
#define SLOTCON_EMU_ASM_SWITCH 1
extern "C" void emu_switch(void** save_sp, void* to_sp);
asm(R"(
  .text
  .globl emu_switch
  .type emu_switch, @function
emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_switch, .-emu_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");
#endif

struct Fiber {
#if defined(SLOTCON_EMU_ASM_SWITCH)
  void* sp = nullptr;
#else
  ucontext_t ctx;
#endif
  St st = St::Done;
  uint3 tid{0, 0, 0};
};

constexpr size_t kStackBytes = 256 * 1024;  // per emulated thread (kernels keep small frames)
constexpr size_t kSlotBytes = 16;           // warp exchange slot per thread
constexpr size_t kDefaultDynSmem = 48 * 1024;
constexpr size_t kMaxDynSmem = 227 * 1024;  // sm_90 opt-in limit per block

struct Stack {
  void* base = nullptr;  // guard page first, then the stack
  size_t bytes = 0;
};

// Device memory: each cudaMalloc is its own mapping, the allocation (256-byte aligned) placed so
// that its end is at most 255 bytes before a PROT_NONE guard page. An access past the end faults
// at once (the SIGSEGV handler names the allocation and the kernel thread); the bytes between the
// end and the guard, and before the start, hold a canary checked after every launch and by
// cudaFree (host code may write there too).
struct Allocation {
  char* base;    // the mapping
  size_t total;  // mapping bytes, guard page included
  size_t bytes;  // asked for
};
constexpr unsigned char kCanary = 0xA5;
constexpr size_t kDeviceBytes = size_t(80) << 30;  // what the emulated card has

constexpr size_t kDynAlign = 128;

struct Runtime {
  std::vector<Fiber> fibers;
  std::vector<Stack> stacks;
#if defined(SLOTCON_EMU_ASM_SWITCH)
  void* sched_sp = nullptr;
#else
  ucontext_t sched;
#endif
  int cur = -1;  // running thread (linear index in the block), -1 on the host
  int nthreads = 0;
  const std::function<void()>* body = nullptr;
  std::vector<unsigned char> dyn;  // the block's dynamic shared memory, + kDynAlign of slack
  std::vector<void*> shared_poisoned;  // static __shared__ variables poisoned in this block
  std::vector<unsigned char> slots;
  std::map<std::string, int> max_dyn;
  std::map<char*, Allocation> allocations;  // by the pointer handed out
  size_t allocated = 0;
  std::mutex launch_mu;  // one launch at a time (the scheduler state is global)
  std::mutex alloc_mu;
  int device = 0;
  bool shuffle = false;      // SLOTCON_EMU_SHUFFLE set: random thread order
  std::mt19937_64 rng;
  std::vector<int> order;
  bool direct = false;       // running a barrier-free site without fibers
  bool saw_barrier = false;  // a thread of the current launch waited at a barrier
  cudaError_t last = cudaSuccess;
  uint64_t nlaunch = 0, nrun = 0;
  LastLaunch last_launch;
  std::string kernel;
  std::string fiber_error;  // set by a thread that stopped at an error, thrown by the scheduler
};

Runtime& rt() {
  static Runtime* r = [] {
    Runtime* p = new Runtime;  // never freed: kernels may launch during static destruction
    if (const char* seed = std::getenv("SLOTCON_EMU_SHUFFLE")) {
      p->shuffle = true;
      p->rng.seed(std::strtoull(seed, nullptr, 10));
    }
    return p;
  }();
  return *r;
}

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "cuda_emu: %s\n", msg.c_str());
  std::abort();
}

#if defined(SLOTCON_EMU_ASM_SWITCH)
extern "C" void emu_fiber_entry() {
  Runtime& r = rt();
  (*r.body)();
  Fiber& f = r.fibers[size_t(r.cur)];
  f.st = St::Done;
  emu_switch(&f.sp, r.sched_sp);
  __builtin_unreachable();
}

// A fresh fiber's stack, as emu_switch would have left it: control state, six zeroed registers,
// then the "return address" emu_fiber_entry in a 16-byte aligned slot (so that the entry sees the
// stack as a called function does).
void* initial_sp(void* stack_top) {
  uint64_t* ret = reinterpret_cast<uint64_t*>((reinterpret_cast<uintptr_t>(stack_top) - 16) &
                                              ~uintptr_t(15));
  *ret = reinterpret_cast<uint64_t>(&emu_fiber_entry);
  uint64_t* p = ret - 6;
  for (int i = 0; i < 6; ++i) p[i] = 0;
  --p;
  const uint32_t mxcsr = 0x1F80;
  const uint16_t fpucw = 0x037F;
  std::memcpy(reinterpret_cast<char*>(p), &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(p) + 4, &fpucw, 2);
  return p;
}
#else
void entry() {
  Runtime& r = rt();
  (*r.body)();
  r.fibers[size_t(r.cur)].st = St::Done;
  // returning resumes uc_link (the scheduler)
}
#endif

void ensure_stacks(int n) {
  Runtime& r = rt();
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  while (int(r.stacks.size()) < n) {
    Stack s;
    s.bytes = kStackBytes + page;
    s.base = mmap(nullptr, s.bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (s.base == MAP_FAILED) die("cannot map a fiber stack");
    mprotect(s.base, page, PROT_NONE);  // overflow faults instead of corrupting a neighbour
    r.stacks.push_back(s);
  }
  if (int(r.fibers.size()) < n) r.fibers.resize(size_t(n));
}

// Switches from the running fiber to the scheduler, leaving it in state `st`.
void yield_fiber(St st) {
  Runtime& r = rt();
  Fiber& f = r.fibers[size_t(r.cur)];
  f.st = st;
#if defined(SLOTCON_EMU_ASM_SWITCH)
  emu_switch(&f.sp, r.sched_sp);
#else
  swapcontext(&f.ctx, &r.sched);
#endif
}

// Yields the running fiber back to the scheduler in state `st`.
void block_on(St st, const char* what) {
  Runtime& r = rt();
  if (r.cur < 0) die(std::string(what) + " called outside a kernel");
  if (r.direct)
    die(std::string(what) + " reached in kernel " + r.kernel +
        ", whose first launch from this site used no barrier, so this launch runs without fibers "
        "(see cuda_emu.h)");
  r.saw_barrier = true;
  yield_fiber(st);
}

std::string where() {
  Runtime& r = rt();
  std::ostringstream os;
  os << "kernel " << r.kernel << ", block (" << blockIdx.x << "," << blockIdx.y << ","
     << blockIdx.z << ") of (" << gridDim.x << "," << gridDim.y << "," << gridDim.z
     << "), block size (" << blockDim.x << "," << blockDim.y << "," << blockDim.z << ")";
  return os.str();
}

[[noreturn]] void kernel_error(const std::string& what) {
  Runtime& r = rt();
  if (r.cur >= 0 && !r.direct) {
    // Inside a thread's fiber: an exception cannot unwind across the fiber switch, so the thread
    // ends here and the scheduler throws (run_block, after the switch back).
    std::ostringstream os;
    os << "cuda_emu: " << what << " in " << where() << ", thread (" << threadIdx.x << ","
       << threadIdx.y << "," << threadIdx.z << ")";
    r.fiber_error = os.str();
    yield_fiber(St::Done);
    std::abort();  // never resumed
  }
  r.cur = -1;
  throw std::runtime_error("cuda_emu: " + what + " in " + where());
}

// Every block starts with its shared memory poisoned: the dynamic part now, each static
// __shared__ variable when the block first reaches its declaration (poison_shared_once).
void start_block_memory(Runtime& r) {
  if (!r.dyn.empty()) std::memset(r.dyn.data(), 0xFF, r.dyn.size());
  r.shared_poisoned.clear();
}

void run_block(uint64_t block_no) {
  Runtime& r = rt();
  const int n = r.nthreads;
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  for (int t = 0; t < n; ++t) {
    Fiber& f = r.fibers[size_t(t)];
    f.st = St::Ready;
    f.tid = uint3{unsigned(t) % blockDim.x, (unsigned(t) / blockDim.x) % blockDim.y,
                  unsigned(t) / (blockDim.x * blockDim.y)};
#if defined(SLOTCON_EMU_ASM_SWITCH)
    f.sp = initial_sp(static_cast<char*>(r.stacks[size_t(t)].base) + page + kStackBytes);
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = static_cast<char*>(r.stacks[size_t(t)].base) + page;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = &r.sched;
    makecontext(&f.ctx, entry, 0);
#endif
  }
  start_block_memory(r);
  // Alternate the order of the threads from one barrier interval to the next (and start each
  // block the other way round from the previous one); SLOTCON_EMU_SHUFFLE=<seed> runs them in a
  // fresh random order every interval instead (a slower search for ordering bugs).
  bool reverse = (block_no & 1) != 0;
  std::vector<int>& order = r.order;
  order.resize(size_t(n));
  for (int i = 0; i < n; ++i) order[size_t(i)] = i;
  for (;;) {
    if (r.shuffle) std::shuffle(order.begin(), order.end(), r.rng);
    for (int i = 0; i < n; ++i) {
      const int t = r.shuffle ? order[size_t(i)] : reverse ? n - 1 - i : i;
      Fiber& f = r.fibers[size_t(t)];
      if (f.st != St::Ready) continue;
      r.cur = t;
      threadIdx = f.tid;
#if defined(SLOTCON_EMU_ASM_SWITCH)
      emu_switch(&r.sched_sp, f.sp);
#else
      swapcontext(&r.sched, &f.ctx);
#endif
      if (!r.fiber_error.empty()) {  // the thread stopped at an error (kernel_error)
        std::string m;
        m.swap(r.fiber_error);
        r.cur = -1;
        throw std::runtime_error(m);
      }
    }
    r.cur = -1;
    reverse = !reverse;
    // Every thread now waits at a barrier or has returned.
    bool released = false;
    for (int lo = 0; lo < n; lo += 32) {
      const int hi = std::min(n, lo + 32);
      int waiting = 0, done = 0;
      for (int t = lo; t < hi; ++t) {
        waiting += r.fibers[size_t(t)].st == St::WarpWait;
        done += r.fibers[size_t(t)].st == St::Done;
      }
      if (waiting > 0 && waiting + done == hi - lo) {
        if (done > 0) {
          std::ostringstream os;
          os << "a warp shuffle or __syncwarp in warp " << lo / 32 << " reached by " << waiting
             << " lanes while " << done << " lanes of the warp had returned";
          kernel_error(os.str());
        }
        for (int t = lo; t < hi; ++t) r.fibers[size_t(t)].st = St::Ready;
        released = true;
      }
    }
    if (released) continue;
    int at_block = 0, done = 0;
    for (int t = 0; t < n; ++t) {
      at_block += r.fibers[size_t(t)].st == St::BlockWait;
      done += r.fibers[size_t(t)].st == St::Done;
    }
    if (done == n) return;
    if (at_block > 0 && at_block + done == n) {
      if (done > 0) {
        std::ostringstream os;
        os << "__syncthreads reached by " << at_block << " threads while " << done
           << " threads of the block had returned (barrier divergence)";
        kernel_error(os.str());
      }
      for (int t = 0; t < n; ++t) r.fibers[size_t(t)].st = St::Ready;
      continue;
    }
    int at_warp = 0;
    for (int t = 0; t < n; ++t) at_warp += r.fibers[size_t(t)].st == St::WarpWait;
    std::ostringstream os;
    os << "deadlock: " << at_block << " threads wait at __syncthreads, " << at_warp
       << " at a warp barrier whose warp is split, " << done << " returned";
    kernel_error(os.str());
  }
}

void check_canaries_after(const char* kernel);

void run_block_direct() {
  Runtime& r = rt();
  const int n = r.nthreads;
  start_block_memory(r);
  r.direct = true;
  for (int t = 0; t < n; ++t) {
    r.cur = t;
    threadIdx = uint3{unsigned(t) % blockDim.x, (unsigned(t) / blockDim.x) % blockDim.y,
                      unsigned(t) / (blockDim.x * blockDim.y)};
    (*r.body)();
  }
  r.cur = -1;
  r.direct = false;
}

}  // namespace

namespace {

// Runs a launch whose configuration launch_site checked (now, or from a graph replay).
void run_launch(const LaunchCfg& cfg, const char* name, const std::function<void()>& body,
                SiteInfo& site) {
  Runtime& r = rt();
  if (r.cur >= 0) die("a kernel launch from inside a kernel");
  std::lock_guard<std::mutex> lock(r.launch_mu);
  const dim3 g = cfg.grid, b = cfg.block;
  const uint64_t threads = uint64_t(b.x) * b.y * b.z;
  r.last_launch = LastLaunch{name, uint64_t(g.x) * g.y * g.z, threads};
  if (dry_run()) {  // checked and counted, not run
    ++r.nlaunch;
    return;
  }
  r.kernel = name;
  r.nthreads = int(threads);
  r.body = &body;
  gridDim = g;
  blockDim = b;
  ensure_stacks(r.nthreads);
  r.dyn.assign(cfg.smem ? cfg.smem + kDynAlign : 0, 0xFF);
  r.slots.assign(size_t(r.nthreads) * kSlotBytes, 0);
  ++r.nlaunch;
  const bool direct = site.launched && !site.barriers;
  r.saw_barrier = false;
  uint64_t block_no = 0;
  for (unsigned z = 0; z < g.z; ++z)
    for (unsigned y = 0; y < g.y; ++y)
      for (unsigned x = 0; x < g.x; ++x) {
        blockIdx = uint3{x, y, z};
        if (direct)
          run_block_direct();
        else
          run_block(block_no++);
        r.nrun += threads;
      }
  site.launched = true;
  site.barriers = site.barriers || r.saw_barrier;
  r.body = nullptr;
  check_canaries_after(name);
}

}  // namespace

void launch_site(const LaunchCfg& cfg, const char* name, const std::function<void()>& body,
                 SiteInfo& site) {
  Runtime& r = rt();
  if (r.cur >= 0) die("a kernel launch from inside a kernel");
  {
    std::lock_guard<std::mutex> lock(r.launch_mu);
    const dim3 g = cfg.grid, b = cfg.block;
    const uint64_t threads = uint64_t(b.x) * b.y * b.z;
    const auto it = r.max_dyn.find(name);
    const size_t dyn_limit = it == r.max_dyn.end() ? kDefaultDynSmem : size_t(it->second);
    if (g.x == 0 || g.y == 0 || g.z == 0 || b.x == 0 || b.y == 0 || b.z == 0 || threads > 1024 ||
        b.x > 1024 || b.y > 1024 || b.z > 64 || g.x > 2147483647u || g.y > 65535 || g.z > 65535 ||
        cfg.smem > dyn_limit) {
      std::fprintf(stderr,
                   "cuda_emu: invalid launch of %s: grid (%u,%u,%u), block (%u,%u,%u), dynamic "
                   "shared memory %zu bytes (limit %zu)\n",
                   name, g.x, g.y, g.z, b.x, b.y, b.z, cfg.smem, dyn_limit);
      r.last = cudaErrorInvalidConfiguration;
      return;
    }
    // what was issued last (the trace reads it right after the launch, captured or not)
    r.last_launch = LastLaunch{name, uint64_t(g.x) * g.y * g.z, threads};
  }
  bool run_now = false;
  SiteInfo* sp = &site;
  const cudaError_t e = stream_op(
      cfg.stream, name, [cfg, name, body, sp]() { run_launch(cfg, name, body, *sp); }, &run_now);
  if (e != cudaSuccess || !run_now) return;
  run_launch(cfg, name, body, site);
}

void poison_shared_once(void* p, size_t bytes) {
  Runtime& r = rt();
  if (std::find(r.shared_poisoned.begin(), r.shared_poisoned.end(), p) != r.shared_poisoned.end())
    return;
  r.shared_poisoned.push_back(p);
  std::memset(p, 0xFF, bytes);
}

unsigned char* dynamic_shared() {
  Runtime& r = rt();
  if (r.dyn.empty()) return nullptr;
  // aligned as the GPU's shared window is (wmma, for one, needs 256-bit aligned tiles)
  const uintptr_t p = reinterpret_cast<uintptr_t>(r.dyn.data());
  return r.dyn.data() + ((kDynAlign - p % kDynAlign) % kDynAlign);
}

void sync_block() { block_on(St::BlockWait, "__syncthreads"); }
void sync_warp() { block_on(St::WarpWait, "a warp barrier"); }

void device_error(const std::string& what) { kernel_error(what); }

int lane_id() {
  Runtime& r = rt();
  if (r.cur < 0) die("a warp function called outside a kernel");
  return r.cur % 32;
}

void warp_exchange(const void* v, void* out, size_t bytes, int src_lane) {
  Runtime& r = rt();
  if (bytes > kSlotBytes) die("warp shuffle of more than 16 bytes");
  const int me = r.cur;
  std::memcpy(&r.slots[size_t(me) * kSlotBytes], v, bytes);
  sync_warp();
  const int src = (me / 32) * 32 + src_lane;
  if (src < 0 || src >= r.nthreads)
    kernel_error("a warp shuffle reads lane " + std::to_string(src_lane) +
                 ", which does not exist in this block");
  std::memcpy(out, &r.slots[size_t(src) * kSlotBytes], bytes);
  sync_warp();
}

LastLaunch last_launch() { return rt().last_launch; }

namespace {
std::atomic<int> g_dry_run{-1};  // -1: not yet read from the environment
}
bool dry_run() {
  int v = g_dry_run.load(std::memory_order_relaxed);
  if (v < 0) {
    const char* e = std::getenv("SLOTCON_EMU_DRY_RUN");
    v = e && *e && std::string(e) != "0" ? 1 : 0;
    g_dry_run.store(v, std::memory_order_relaxed);
  }
  return v == 1;
}
void set_dry_run(bool on) { g_dry_run.store(on ? 1 : 0, std::memory_order_relaxed); }

uint64_t launches() { return rt().nlaunch; }
uint64_t threads_run() { return rt().nrun; }

cudaError_t func_set_attribute(const char* name, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || size_t(value) > kMaxDynSmem) return cudaErrorInvalidValue;
    rt().max_dyn[name] = value;
  }
  return cudaSuccess;
}

unsigned short float_to_half_bits(float f) {
  const uint32_t u = f32_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<unsigned short>(sign | 0x7e00u);  // NaN
  if (a >= 0x477ff000u) return static_cast<unsigned short>(sign | 0x7c00u);  // >= 65520: Inf
  if (a < 0x38800000u) {  // below 2^-14: subnormal, in units of 2^-24, round to nearest even
    const float q = bits_f32(a) * 16777216.0f;
    return static_cast<unsigned short>(sign | uint32_t(std::nearbyint(q)));
  }
  uint32_t h = ((((a >> 23) - 127u + 15u)) << 10) | ((a & 0x7fffffu) >> 13);
  const uint32_t rest = a & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return static_cast<unsigned short>(sign | h);
}

float half_bits_to_float(unsigned short h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {
    const float v = float(m) / 16777216.0f;
    return sign ? -v : v;
  }
  if (e == 31) return bits_f32(sign | 0x7f800000u | (m << 13));
  return bits_f32(sign | ((e - 15u + 127u) << 23) | (m << 13));
}

}  // namespace emu

// ---------------------------------------------------------------- runtime API
namespace emu {
namespace {

size_t page_bytes() { return size_t(sysconf(_SC_PAGESIZE)); }

void write_str(const char* s) {
  if (write(2, s, std::strlen(s)) < 0) return;
}

// Fatal-signal report: a fault in a guard page is an out-of-bounds access (or a fiber stack
// overflow); say which, and in which kernel thread, then die as the signal would have.
void on_fault(int sig, siginfo_t* info, void*) {
  Runtime& r = rt();
  const char* addr = static_cast<const char*>(info->si_addr);
  const size_t page = page_bytes();
  char msg[1024];
  std::string what = "a fault outside any emulated allocation";
  for (const auto& kv : r.allocations) {
    const Allocation& a = kv.second;
    const char* guard = a.base + a.total - page;
    if (addr >= guard && addr < guard + page) {
      std::snprintf(msg, sizeof msg,
                    "an access %zu bytes past the end of a cudaMalloc allocation of %zu bytes",
                    size_t(addr - (kv.first + a.bytes)), a.bytes);
      what = msg;
    }
  }
  for (const Stack& st : r.stacks)
    if (addr >= static_cast<const char*>(st.base) && addr < static_cast<const char*>(st.base) + page)
      what = "a fiber stack overflow (a kernel thread used more than 256 KiB of stack)";
  if (r.cur >= 0)
    std::snprintf(msg, sizeof msg,
                  "\ncuda_emu: %s, in kernel %s, block (%u,%u,%u), thread (%u,%u,%u)\n",
                  what.c_str(), r.kernel.c_str(), blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x,
                  threadIdx.y, threadIdx.z);
  else
    std::snprintf(msg, sizeof msg, "\ncuda_emu: %s, in host code\n", what.c_str());
  write_str(msg);
  signal(sig, SIG_DFL);
  raise(sig);
}

void install_fault_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);
  });
  // A stack overflow needs a stack of its own to report on (per thread).
  thread_local bool alt = false;
  if (!alt) {
    static thread_local std::vector<char> buf(64 * 1024);
    stack_t ss;
    ss.ss_sp = buf.data();
    ss.ss_size = buf.size();
    ss.ss_flags = 0;
    sigaltstack(&ss, nullptr);
    alt = true;
  }
}

bool canary_intact(const char* p, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (static_cast<unsigned char>(p[i]) != kCanary) return false;
  return true;
}

// The canaries around allocation q, intact?
bool canaries_intact(char* q, const Allocation& a) {
  const size_t body = size_t(a.base + a.total - page_bytes() - q);
  return canary_intact(a.base, size_t(q - a.base)) && canary_intact(q + a.bytes, body - a.bytes);
}

// After every launch: a write just outside an allocation (inside its canary bytes, short of the
// guard page) is reported with the kernel that made it.
void check_canaries_after(const char* kernel) {
  Runtime& r = rt();
  std::lock_guard<std::mutex> lock(r.alloc_mu);
  for (auto& kv : r.allocations)
    if (!canaries_intact(kv.first, kv.second)) {
      std::fprintf(stderr,
                   "cuda_emu: kernel %s wrote outside a cudaMalloc allocation of %zu bytes (its "
                   "canary bytes changed)\n",
                   kernel, kv.second.bytes);
      std::abort();
    }
}

}  // namespace
}  // namespace emu

// ---------------------------------------------------------------- stream capture and graphs
// A capture sequence (cudaStreamBeginCapture .. cudaStreamEndCapture): the operations issued to its
// streams, in issue order, and enough of CUDA's dependency rules to tell a fork that was never
// joined back (a vector clock per stream: how many of each stream's operations it depends on).
struct CUgraphNode_st {
  std::string what;            // the call (or kernel) that issued it
  std::function<void()> run;   // owns its arguments
};
struct CUgraph_st {
  std::vector<std::shared_ptr<CUgraphNode_st>> nodes;
};
struct CUgraphExec_st {
  std::vector<std::shared_ptr<CUgraphNode_st>> nodes;
};

namespace emu {
namespace {
using Clock = std::map<cudaStream_t, uint64_t>;
struct Capture {
  unsigned long long id = 0;
  cudaStream_t origin = nullptr;
  cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  std::thread::id thread;
  bool active = true;     // until cudaStreamEndCapture
  bool invalid = false;   // an illegal call invalidated it
  std::string why;        // the first such call
  CUgraph_st* graph = nullptr;  // owned until cudaStreamEndCapture hands it out
  std::vector<cudaStream_t> streams;  // the origin, then the streams joined by event waits
  std::map<cudaStream_t, Clock> clock;
  Clock ops;  // operations recorded per stream
};
}  // namespace
}  // namespace emu

struct CUstream_st {
  unsigned flags = 0;
  std::shared_ptr<emu::Capture> cap;  // the active capture the stream takes part in
};

namespace {
// An event keeps the host time of its eager record (cudaEventElapsedTime), or the capture and the
// dependencies of its record in a capturing stream.
struct EmuEvent {
  std::chrono::steady_clock::time_point t;
  bool recorded = false;
  std::shared_ptr<emu::Capture> cap;  // recorded in this capture (while it is active)
  emu::Clock clock;
};
}  // namespace

namespace emu {
namespace {

struct CaptureState {
  std::mutex mu;
  std::vector<std::shared_ptr<Capture>> active;
  unsigned long long next_id = 1;
};
CaptureState& caps() {
  static CaptureState* c = new CaptureState;  // never freed, like the runtime
  return *c;
}
thread_local cudaStreamCaptureMode t_mode = cudaStreamCaptureModeGlobal;

const char* mode_name(cudaStreamCaptureMode m) {
  switch (m) {
    case cudaStreamCaptureModeGlobal: return "cudaStreamCaptureModeGlobal";
    case cudaStreamCaptureModeThreadLocal: return "cudaStreamCaptureModeThreadLocal";
    case cudaStreamCaptureModeRelaxed: return "cudaStreamCaptureModeRelaxed";
  }
  return "an unknown mode";
}

const char* error_name(cudaError_t e) {
  switch (e) {
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureMerge: return "cudaErrorStreamCaptureMerge";
    case cudaErrorStreamCaptureUnmatched: return "cudaErrorStreamCaptureUnmatched";
    case cudaErrorStreamCaptureUnjoined: return "cudaErrorStreamCaptureUnjoined";
    case cudaErrorStreamCaptureIsolation: return "cudaErrorStreamCaptureIsolation";
    case cudaErrorStreamCaptureImplicit: return "cudaErrorStreamCaptureImplicit";
    case cudaErrorCapturedEvent: return "cudaErrorCapturedEvent";
    case cudaErrorStreamCaptureWrongThread: return "cudaErrorStreamCaptureWrongThread";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    default: return "an error";
  }
}

// Reports a call refused because of stream capture (stderr, and cudaGetLastError), invalidating
// `victims` (CUDA invalidates the captures an illegal call touches: cudaStreamEndCapture then
// returns cudaErrorStreamCaptureInvalidated and no graph). Called with caps().mu held.
cudaError_t refuse(const std::vector<Capture*>& victims, cudaError_t code, const char* what,
                   const std::string& why) {
  std::ostringstream os;
  os << "cuda_emu: " << what << " refused (" << error_name(code) << "): " << why;
  bool invalidated = false;
  for (Capture* c : victims) {
    if (!c->invalid) {
      c->invalid = true;
      c->why = std::string(what) + ": " + why;
      invalidated = true;
    }
    os << (victims.size() > 1 ? "; capture " : "; the capture ") << c->id << " (begun with "
       << mode_name(c->mode) << ") is invalidated";
  }
  if (invalidated) os << ": its cudaStreamEndCapture will return cudaErrorStreamCaptureInvalidated";
  std::fprintf(stderr, "%s\n", os.str().c_str());
  rt().last = code;
  return code;
}

// The active captures that make the legacy stream unusable: those with a blocking stream (not
// cudaStreamNonBlocking) in them, on which the legacy stream implicitly waits.
std::vector<Capture*> blocking_captures() {
  std::vector<Capture*> v;
  for (const auto& c : caps().active)
    for (cudaStream_t s : c->streams)
      if (!(s->flags & cudaStreamNonBlocking)) {
        v.push_back(c.get());
        break;
      }
  return v;
}

// The captures that forbid this thread a "potentially unsafe" call (cudaMalloc, ...), by CUDA's
// rule (cudaThreadExchangeStreamCaptureMode): in the thread's mode global, any capture of this
// thread not begun relaxed and any other thread's capture begun global; in thread-local mode, only
// this thread's captures not begun relaxed; in relaxed mode, none.
std::vector<Capture*> prohibiting_captures() {
  std::vector<Capture*> v;
  if (t_mode == cudaStreamCaptureModeRelaxed) return v;
  const std::thread::id me = std::this_thread::get_id();
  for (const auto& c : caps().active) {
    const bool mine = c->thread == me && c->mode != cudaStreamCaptureModeRelaxed;
    const bool others = t_mode == cudaStreamCaptureModeGlobal && c->thread != me &&
                        c->mode == cudaStreamCaptureModeGlobal;
    if (mine || others) v.push_back(c.get());
  }
  return v;
}

// A potentially unsafe call (not asynchronous, so a graph could not replay it).
cudaError_t unsafe_call(const char* what) {
  CaptureState& cs = caps();
  std::lock_guard<std::mutex> lock(cs.mu);
  if (cs.active.empty()) return cudaSuccess;
  const std::vector<Capture*> v = prohibiting_captures();
  if (v.empty()) return cudaSuccess;
  return refuse(v, cudaErrorStreamCaptureUnsupported, what,
                "a potentially unsafe call while a stream capture is active (allowed only in "
                "cudaStreamCaptureModeRelaxed; see cudaThreadExchangeStreamCaptureMode)");
}

// A synchronous copy or memset: work on the legacy stream that the host waits for. Illegal while a
// blocking stream captures (the legacy stream would depend on it), and a potentially unsafe call
// otherwise.
cudaError_t synchronous_call(const char* what) {
  CaptureState& cs = caps();
  std::lock_guard<std::mutex> lock(cs.mu);
  if (cs.active.empty()) return cudaSuccess;
  const std::vector<Capture*> b = blocking_captures();
  if (!b.empty())
    return refuse(b, cudaErrorStreamCaptureImplicit, what,
                  "a synchronous call runs on the legacy stream, which would depend on a "
                  "capturing blocking stream");
  const std::vector<Capture*> v = prohibiting_captures();
  if (v.empty()) return cudaSuccess;
  return refuse(v, cudaErrorStreamCaptureUnsupported, what,
                "a synchronous call (it waits on the host) while a stream capture is active");
}

void record_node(Capture& c, cudaStream_t s, const char* what, const std::function<void()>& op) {
  auto n = std::make_shared<CUgraphNode_st>();
  n->what = what;
  n->run = op;
  c.graph->nodes.push_back(std::move(n));
  const uint64_t k = ++c.ops[s];
  c.clock[s][s] = k;
}

// Leaves capture c (with cs.mu held): its streams stop capturing, its events stop being captured.
void end_capture(CaptureState& cs, const std::shared_ptr<Capture>& c) {
  c->active = false;
  for (cudaStream_t t : c->streams)
    if (t->cap == c) t->cap.reset();
  cs.active.erase(std::remove(cs.active.begin(), cs.active.end(), c), cs.active.end());
}

}  // namespace

cudaError_t stream_op(cudaStream_t s, const char* what, const std::function<void()>& op,
                      bool* run_now) {
  *run_now = false;
  CaptureState& cs = caps();
  std::lock_guard<std::mutex> lock(cs.mu);
  if (!s) {
    if (!cs.active.empty()) {
      const std::vector<Capture*> b = blocking_captures();
      if (!b.empty())
        return refuse(b, cudaErrorStreamCaptureImplicit, what,
                      "work issued to the legacy stream (stream 0) would depend on a capturing "
                      "blocking stream");
    }
    *run_now = true;
    return cudaSuccess;
  }
  const std::shared_ptr<Capture> c = s->cap;
  if (!c) {
    *run_now = true;
    return cudaSuccess;
  }
  if (c->invalid) {
    std::fprintf(stderr,
                 "cuda_emu: %s dropped (cudaErrorStreamCaptureInvalidated): its stream's capture "
                 "%llu was invalidated by %s\n",
                 what, c->id, c->why.c_str());
    return rt().last = cudaErrorStreamCaptureInvalidated;
  }
  record_node(*c, s, what, op);
  return cudaSuccess;
}

cudaError_t stream_sync(cudaStream_t s, const char* what) {
  CaptureState& cs = caps();
  std::lock_guard<std::mutex> lock(cs.mu);
  if (cs.active.empty()) return cudaSuccess;
  if (!s) {
    const std::vector<Capture*> b = blocking_captures();
    if (b.empty()) return cudaSuccess;
    return refuse(b, cudaErrorStreamCaptureImplicit, what,
                  "waiting for the legacy stream waits for a capturing blocking stream");
  }
  const std::shared_ptr<Capture> c = s->cap;
  if (!c) return cudaSuccess;
  if (c->invalid) return rt().last = cudaErrorStreamCaptureInvalidated;
  return refuse({c.get()}, cudaErrorStreamCaptureUnsupported, what,
                "the stream is capturing: its work is recorded, not run, so there is nothing to "
                "wait for");
}

}  // namespace emu

cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode) {
  emu::CaptureState& cs = emu::caps();
  std::lock_guard<std::mutex> lock(cs.mu);
  if (mode != cudaStreamCaptureModeGlobal && mode != cudaStreamCaptureModeThreadLocal &&
      mode != cudaStreamCaptureModeRelaxed)
    return emu::rt().last = cudaErrorInvalidValue;
  if (!s)
    return emu::refuse({}, cudaErrorStreamCaptureUnsupported, "cudaStreamBeginCapture",
                       "capture may not be initiated on the legacy stream (stream 0)");
  if (s->cap)
    return emu::refuse({}, cudaErrorIllegalState, "cudaStreamBeginCapture",
                       "the stream is already capturing");
  auto c = std::make_shared<emu::Capture>();
  c->id = cs.next_id++;
  c->origin = s;
  c->mode = mode;
  c->thread = std::this_thread::get_id();
  c->graph = new CUgraph_st;
  c->streams.push_back(s);
  c->clock[s][s] = 0;
  s->cap = c;
  cs.active.push_back(c);
  return cudaSuccess;
}

cudaError_t cudaThreadExchangeStreamCaptureMode(cudaStreamCaptureMode* mode) {
  if (!mode || (*mode != cudaStreamCaptureModeGlobal && *mode != cudaStreamCaptureModeThreadLocal &&
                *mode != cudaStreamCaptureModeRelaxed))
    return emu::rt().last = cudaErrorInvalidValue;
  std::swap(*mode, emu::t_mode);
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* g) {
  emu::CaptureState& cs = emu::caps();
  std::lock_guard<std::mutex> lock(cs.mu);
  if (!g) return emu::rt().last = cudaErrorInvalidValue;
  const std::shared_ptr<emu::Capture> c = s ? s->cap : nullptr;
  if (!c)
    return emu::refuse({}, cudaErrorIllegalState, "cudaStreamEndCapture",
                       "the stream is not capturing");
  if (c->origin != s) {
    *g = nullptr;
    return emu::refuse({c.get()}, cudaErrorStreamCaptureUnmatched, "cudaStreamEndCapture",
                       "the capture was not begun on this stream (it joined it through an event)");
  }
  if (c->mode != cudaStreamCaptureModeRelaxed && c->thread != std::this_thread::get_id())
    return emu::refuse({}, cudaErrorStreamCaptureWrongThread, "cudaStreamEndCapture",
                       "called from another thread than cudaStreamBeginCapture (the capture was "
                       "not begun in cudaStreamCaptureModeRelaxed)");
  emu::end_capture(cs, c);
  std::unique_ptr<CUgraph_st> graph(c->graph);
  c->graph = nullptr;
  *g = nullptr;
  if (c->invalid) {
    std::fprintf(stderr,
                 "cuda_emu: cudaStreamEndCapture: capture %llu was invalidated by %s "
                 "(cudaErrorStreamCaptureInvalidated, no graph)\n",
                 c->id, c->why.c_str());
    return emu::rt().last = cudaErrorStreamCaptureInvalidated;
  }
  // Every stream forked from the origin must be joined back: the origin must depend on all the
  // operations recorded in it.
  const emu::Clock& oc = c->clock[s];
  for (cudaStream_t t : c->streams) {
    const uint64_t n = c->ops.count(t) ? c->ops.at(t) : 0;
    const auto it = oc.find(t);
    const uint64_t seen = it == oc.end() ? 0 : it->second;
    if (t != s && seen < n) {
      std::ostringstream os;
      os << "a stream forked into the capture has " << (n - seen)
         << " operation(s) the origin stream does not wait for (record an event after them and "
            "cudaStreamWaitEvent the origin stream on it); no graph";
      return emu::refuse({}, cudaErrorStreamCaptureUnjoined, "cudaStreamEndCapture", os.str());
    }
  }
  *g = graph.release();
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus* st) {
  return cudaStreamGetCaptureInfo(s, st);
}

cudaError_t cudaStreamGetCaptureInfo(cudaStream_t s, cudaStreamCaptureStatus* st,
                                     unsigned long long* id, cudaGraph_t* graph,
                                     const cudaGraphNode_t** deps,
                                     const cudaGraphEdgeData** edges, size_t* ndeps) {
  emu::CaptureState& cs = emu::caps();
  std::lock_guard<std::mutex> lock(cs.mu);
  if (!st || (edges && !deps)) return emu::rt().last = cudaErrorInvalidValue;
  if (!s) {
    // the legacy stream: CUDA returns cudaErrorStreamCaptureImplicit while a blocking stream
    // captures (without invalidating that capture)
    if (!emu::blocking_captures().empty()) return emu::rt().last = cudaErrorStreamCaptureImplicit;
    *st = cudaStreamCaptureStatusNone;
    return cudaSuccess;
  }
  const std::shared_ptr<emu::Capture> c = s->cap;
  *st = !c ? cudaStreamCaptureStatusNone
           : c->invalid ? cudaStreamCaptureStatusInvalidated : cudaStreamCaptureStatusActive;
  if (c && !c->invalid) {
    if (id) *id = c->id;
    if (graph) *graph = c->graph;
    if (deps) *deps = nullptr;
    if (edges) *edges = nullptr;
    if (ndeps) *ndeps = 0;
  }
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t g, unsigned long long flags) {
  if (!exec || !g) return emu::rt().last = cudaErrorInvalidValue;
  // AutoFreeOnLaunch has nothing to free (no memory nodes) and node priorities nothing to order;
  // Upload is for cudaGraphInstantiateWithParams only; device launch is not emulated.
  if (flags & ~static_cast<unsigned long long>(cudaGraphInstantiateFlagAutoFreeOnLaunch |
                                               cudaGraphInstantiateFlagUseNodePriority)) {
    std::fprintf(stderr, "cuda_emu: cudaGraphInstantiate: flags %llu not supported\n", flags);
    return emu::rt().last = cudaErrorInvalidValue;
  }
  auto* e = new CUgraphExec_st;
  e->nodes = g->nodes;  // an executable graph is a snapshot: destroying the graph leaves it be
  *exec = e;
  return cudaSuccess;
}

namespace emu {
namespace {
// Runs an executable graph's operations in the order they were issued during the capture.
void replay(const CUgraphExec_st& e) {
  for (const auto& n : e.nodes) n->run();
}
}  // namespace
}  // namespace emu

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
  if (!exec) return emu::rt().last = cudaErrorInvalidValue;
  // The nodes are shared with the executable graph; a copy keeps them alive should it be
  // destroyed before a capture that recorded this launch is replayed.
  auto snapshot = std::make_shared<CUgraphExec_st>(*exec);
  bool run_now = false;
  const cudaError_t err = emu::stream_op(
      s, "cudaGraphLaunch", [snapshot]() { emu::replay(*snapshot); }, &run_now);
  if (err != cudaSuccess || !run_now) return err;
  emu::replay(*snapshot);
  return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  if (!exec) return emu::rt().last = cudaErrorInvalidValue;
  delete exec;
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t g) {
  if (!g) return emu::rt().last = cudaErrorInvalidValue;
  delete g;
  return cudaSuccess;
}

cudaError_t cudaGraphGetNodes(cudaGraph_t g, cudaGraphNode_t* nodes, size_t* n) {
  if (!g || !n) return emu::rt().last = cudaErrorInvalidValue;
  if (nodes) {
    const size_t k = std::min(*n, g->nodes.size());
    for (size_t i = 0; i < k; ++i) nodes[i] = g->nodes[i].get();
    *n = k;
  } else {
    *n = g->nodes.size();
  }
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** p, size_t bytes) {
  if (const cudaError_t e = emu::unsafe_call("cudaMalloc")) return e;
  emu::Runtime& r = emu::rt();
  emu::install_fault_handler();
  const size_t page = emu::page_bytes();
  const size_t body = std::max<size_t>(256, (bytes + 255) / 256 * 256);
  const size_t total = (body + page - 1) / page * page + page;
  std::lock_guard<std::mutex> lock(r.alloc_mu);
  if (r.allocated + body > emu::kDeviceBytes) return r.last = cudaErrorMemoryAllocation;
  void* m = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return r.last = cudaErrorMemoryAllocation;
  char* base = static_cast<char*>(m);
  char* guard = base + total - page;
  mprotect(guard, page, PROT_NONE);
  char* q = guard - body;
  std::memset(base, emu::kCanary, size_t(q - base));
  std::memset(q + bytes, emu::kCanary, body - bytes);
  r.allocations[q] = emu::Allocation{base, total, bytes};
  r.allocated += body;
  *p = q;
  return cudaSuccess;
}

cudaError_t cudaFree(void* p) {
  if (const cudaError_t e = emu::unsafe_call("cudaFree")) return e;
  if (!p) return cudaSuccess;
  emu::Runtime& r = emu::rt();
  std::lock_guard<std::mutex> lock(r.alloc_mu);
  const auto it = r.allocations.find(static_cast<char*>(p));
  if (it == r.allocations.end()) return r.last = cudaErrorInvalidValue;
  const emu::Allocation a = it->second;
  char* q = it->first;
  const size_t body = size_t(a.base + a.total - emu::page_bytes() - q);
  if (!emu::canaries_intact(q, a)) {
    std::fprintf(stderr,
                 "cuda_emu: something wrote outside a cudaMalloc allocation of %zu bytes (its "
                 "canary bytes changed; found at cudaFree)\n",
                 a.bytes);
    std::abort();
  }
  r.allocations.erase(it);
  r.allocated -= body;
  munmap(a.base, a.total);
  return cudaSuccess;
}

namespace emu {
namespace {
void do_memset(void* p, int value, size_t bytes) {
  if (bytes && !dry_run()) std::memset(p, value, bytes);
}
void do_memcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  if (kind == cudaMemcpyDeviceToDevice && dry_run()) return;
  if (bytes) std::memmove(dst, src, bytes);
}
}  // namespace
}  // namespace emu

cudaError_t cudaMemset(void* p, int value, size_t bytes) {
  if (const cudaError_t e = emu::synchronous_call("cudaMemset")) return e;
  emu::do_memset(p, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s) {
  bool run_now = false;
  const cudaError_t e = emu::stream_op(
      s, "cudaMemsetAsync", [=]() { emu::do_memset(p, value, bytes); }, &run_now);
  if (e == cudaSuccess && run_now) emu::do_memset(p, value, bytes);
  return e;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  if (const cudaError_t e = emu::synchronous_call("cudaMemcpy")) return e;
  emu::do_memcpy(dst, src, bytes, kind);
  return cudaSuccess;
}
// Recorded, a copy reads its source when the graph runs (host memory too), as a memcpy node does.
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t s) {
  bool run_now = false;
  const cudaError_t e = emu::stream_op(
      s, "cudaMemcpyAsync", [=]() { emu::do_memcpy(dst, src, bytes, kind); }, &run_now);
  if (e == cudaSuccess && run_now) emu::do_memcpy(dst, src, bytes, kind);
  return e;
}
cudaError_t cudaDeviceSynchronize() {
  emu::CaptureState& cs = emu::caps();
  std::lock_guard<std::mutex> lock(cs.mu);
  if (cs.active.empty()) return cudaSuccess;
  std::vector<emu::Capture*> all;
  for (const auto& c : cs.active) all.push_back(c.get());
  return emu::refuse(all, cudaErrorStreamCaptureUnsupported, "cudaDeviceSynchronize",
                     "a stream of the device is capturing (synchronising the device would wait "
                     "for it)");
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  return emu::stream_sync(s, "cudaStreamSynchronize");
}
cudaError_t cudaStreamQuery(cudaStream_t s) { return emu::stream_sync(s, "cudaStreamQuery"); }
cudaError_t cudaGetLastError() {
  const cudaError_t e = emu::rt().last;
  emu::rt().last = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return emu::rt().last; }
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorIllegalState: return "the operation cannot be performed in the present state";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureMerge: return "operation would result in a merge of separate capture sequences";
    case cudaErrorStreamCaptureUnmatched: return "capture was not ended in the same stream as it began";
    case cudaErrorStreamCaptureUnjoined: return "capturing stream has unjoined work";
    case cudaErrorStreamCaptureIsolation: return "dependency created on uncaptured work in another stream";
    case cudaErrorStreamCaptureImplicit: return "operation would make the legacy stream depend on a capturing blocking stream";
    case cudaErrorCapturedEvent: return "operation not permitted on an event last recorded in a capturing stream";
    case cudaErrorStreamCaptureWrongThread: return "attempt to terminate a thread-local capture sequence from another thread";
  }
  return "unknown error";
}

cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* d) {
  *d = emu::rt().device;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) {
  if (d != 0) return emu::rt().last = cudaErrorInvalidDevice;
  emu::rt().device = d;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (d != 0) return emu::rt().last = cudaErrorInvalidDevice;
  *p = cudaDeviceProp{};
  std::snprintf(p->name, sizeof p->name, "CUDA emulator (CPU)");
  p->totalGlobalMem = emu::kDeviceBytes;
  p->sharedMemPerBlock = 48 * 1024;
  p->sharedMemPerBlockOptin = 227 * 1024;
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = 132;
  p->maxThreadsPerBlock = 1024;
  p->warpSize = 32;
  p->l2CacheSize = 50 << 20;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int d) {
  cudaDeviceProp p;
  if (cudaGetDeviceProperties(&p, d) != cudaSuccess) return cudaErrorInvalidDevice;
  switch (a) {
    case cudaDevAttrMaxThreadsPerBlock: *v = p.maxThreadsPerBlock; break;
    case cudaDevAttrMultiProcessorCount: *v = p.multiProcessorCount; break;
    case cudaDevAttrL2CacheSize: *v = p.l2CacheSize; break;
    default: return emu::rt().last = cudaErrorInvalidValue;
  }
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  *total_bytes = emu::kDeviceBytes;
  std::lock_guard<std::mutex> lock(emu::rt().alloc_mu);
  *free_bytes = emu::kDeviceBytes - emu::rt().allocated;
  return cudaSuccess;
}

// Streams and events: a stream is a handle and its capture state (everything issued to a stream that
// is not capturing has finished when the call returns); an event keeps the host time of its record
// for cudaEventElapsedTime, or its capture.
cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, 0); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags) {
  if (!s) return emu::rt().last = cudaErrorInvalidValue;
  *s = new CUstream_st;
  (*s)->flags = flags;
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  if (!s) return emu::rt().last = cudaErrorInvalidValue;
  {
    emu::CaptureState& cs = emu::caps();
    std::lock_guard<std::mutex> lock(cs.mu);
    if (s->cap)
      return emu::refuse({s->cap.get()}, cudaErrorStreamCaptureUnsupported, "cudaStreamDestroy",
                         "the stream is capturing (end the capture first)");
  }
  delete s;
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* e) { return cudaEventCreateWithFlags(e, 0); }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) {
  auto* ev = new EmuEvent;
  ev->t = std::chrono::steady_clock::now();
  *e = reinterpret_cast<cudaEvent_t>(ev);
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete reinterpret_cast<EmuEvent*>(e);
  return cudaSuccess;
}
namespace {
// The capture an event was last recorded in, if it is still active (with caps().mu held).
std::shared_ptr<emu::Capture> captured_in(EmuEvent* ev) {
  if (ev->cap && !ev->cap->active) ev->cap.reset();
  return ev->cap;
}
}  // namespace
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  if (!e) return emu::rt().last = cudaErrorInvalidValue;
  EmuEvent* ev = reinterpret_cast<EmuEvent*>(e);
  emu::CaptureState& cs = emu::caps();
  std::lock_guard<std::mutex> lock(cs.mu);
  if (!s && !cs.active.empty()) {
    const std::vector<emu::Capture*> b = emu::blocking_captures();
    if (!b.empty())
      return emu::refuse(b, cudaErrorStreamCaptureImplicit, "cudaEventRecord",
                         "an event recorded in the legacy stream would depend on a capturing "
                         "blocking stream");
  }
  const std::shared_ptr<emu::Capture> c = s ? s->cap : nullptr;
  if (c) {
    if (c->invalid) return emu::rt().last = cudaErrorStreamCaptureInvalidated;
    // captured: the event stands for the stream's operations so far (a fork / join point)
    ev->cap = c;
    ev->clock = c->clock[s];
    ev->recorded = true;
    return cudaSuccess;
  }
  ev->cap.reset();
  ev->clock.clear();
  ev->recorded = true;
  ev->t = std::chrono::steady_clock::now();
  return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags) {
  if (!e || flags != 0) return emu::rt().last = cudaErrorInvalidValue;
  EmuEvent* ev = reinterpret_cast<EmuEvent*>(e);
  emu::CaptureState& cs = emu::caps();
  std::lock_guard<std::mutex> lock(cs.mu);
  if (cs.active.empty()) return cudaSuccess;  // every stream is the host thread: it happened
  if (!s) {
    const std::vector<emu::Capture*> b = emu::blocking_captures();
    if (!b.empty())
      return emu::refuse(b, cudaErrorStreamCaptureImplicit, "cudaStreamWaitEvent",
                         "the legacy stream would depend on a capturing blocking stream");
  }
  const std::shared_ptr<emu::Capture> ec = captured_in(ev);
  const std::shared_ptr<emu::Capture> sc = s ? s->cap : nullptr;
  if (!ec) {
    if (!sc || !ev->recorded) return cudaSuccess;
    if (sc->invalid) return emu::rt().last = cudaErrorStreamCaptureInvalidated;
    return emu::refuse({sc.get()}, cudaErrorStreamCaptureIsolation, "cudaStreamWaitEvent",
                       "a capturing stream waits on an event recorded outside the capture (the "
                       "graph could not replay that dependency)");
  }
  if (ec->invalid || (sc && sc->invalid)) return emu::rt().last = cudaErrorStreamCaptureInvalidated;
  if (sc && sc != ec) {
    std::vector<emu::Capture*> both{sc.get(), ec.get()};
    return emu::refuse(both, cudaErrorStreamCaptureMerge, "cudaStreamWaitEvent",
                       "a stream of one capture waits on an event recorded in another capture");
  }
  if (!s) return cudaSuccess;  // (unreachable: the legacy stream was refused above)
  if (!sc) {  // a fork: s joins the capture, depending on what the event stands for
    s->cap = ec;
    ec->streams.push_back(s);
    ec->clock[s] = ev->clock;
    ec->ops[s] = ec->ops.count(s) ? ec->ops[s] : 0;
    return cudaSuccess;
  }
  emu::Clock& mine = ec->clock[s];  // a join (or a wait within the capture)
  for (const auto& kv : ev->clock) mine[kv.first] = std::max(mine[kv.first], kv.second);
  return cudaSuccess;
}
namespace {
cudaError_t event_host_wait(cudaEvent_t e, const char* what) {
  if (!e) return cudaErrorInvalidValue;
  EmuEvent* ev = reinterpret_cast<EmuEvent*>(e);
  emu::CaptureState& cs = emu::caps();
  std::lock_guard<std::mutex> lock(cs.mu);
  const std::shared_ptr<emu::Capture> c = captured_in(ev);
  if (!c) return cudaSuccess;
  return emu::refuse({c.get()}, cudaErrorCapturedEvent, what,
                     "the event was last recorded in a capturing stream (it stands for work that "
                     "is recorded, not run)");
}
}  // namespace
cudaError_t cudaEventQuery(cudaEvent_t e) { return event_host_wait(e, "cudaEventQuery"); }
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  return event_host_wait(e, "cudaEventSynchronize");
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  if (!a || !b) return emu::rt().last = cudaErrorInvalidValue;
  *ms = std::chrono::duration<float, std::milli>(reinterpret_cast<EmuEvent*>(b)->t -
                                                 reinterpret_cast<EmuEvent*>(a)->t)
            .count();
  return cudaSuccess;
}
cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned) {
  if (const cudaError_t e = emu::unsafe_call("cudaHostAlloc")) return e;
  return cudaMalloc(p, bytes);
}
cudaError_t cudaMallocHost(void** p, size_t bytes) {
  if (const cudaError_t e = emu::unsafe_call("cudaMallocHost")) return e;
  return cudaMalloc(p, bytes);
}
cudaError_t cudaFreeHost(void* p) {
  if (const cudaError_t e = emu::unsafe_call("cudaFreeHost")) return e;
  return cudaFree(p);
}
