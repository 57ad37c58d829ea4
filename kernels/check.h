// check.h: how kernels report failure. sc::Error, the one exception type of the whole project,
// is defined here at the bottom layer so that kernels/ depends on nothing above it; the engine
// re-exports it (engine/error.h).
#pragma once
#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace sc {

// Every failure a caller can cause (bad shapes, bad files, misuse of autograd, a failed launch)
// is reported as sc::Error with a message that names the operation and what was wrong.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

namespace kernels {

// Throws sc::Error("<what>: <detail>").
[[noreturn]] void fail(const std::string& what, const std::string& detail);

// Work issued to CUDA streams, counted where it is issued (every build; all devices, all threads):
// kernel launches of this layer and of the engine's CUDA backend (SC_KERNEL_LAUNCHED after every
// launch, the engine's check_launch), library calls (cuBLAS GEMMs, cuDNN convolutions and their
// algorithm searches: each launches one or more kernels of its own), memory operations (memset,
// device-to-device copies). The CUDA emulator counts the kernel launches it runs independently,
// and tests/cuda_emu checks the two agree over whole training steps, so a launch without its
// SC_KERNEL_LAUNCHED does not go unnoticed. Read with issue_counts(); take differences.
struct IssueCounts {
  uint64_t kernel_launches = 0;
  uint64_t library_calls = 0;
  uint64_t memory_ops = 0;
};
IssueCounts issue_counts();
void note_kernel_launch();
void note_library_call();
void note_memory_op();

// ---- the optional per-issue trace (off by default; when off, each note costs one more branch)
// While a trace runs, every kernel launch, library call, memory operation and host
// synchronisation is recorded with the current phase, the launch's grid (where known) and the
// work its issuer estimated (note_work, just before the issue): what engine/cost_model.h turns
// into a predicted time. The unit is what would execute the FLOPs on the card.
enum class Unit : uint8_t { Memory, FP32, FP64, TF32, Tensor16 };  // Tensor16: bf16/fp16 tensor cores
enum class IssueKind : uint8_t { Kernel, Library, Memory, HostSync };
struct IssueRecord {
  IssueKind kind = IssueKind::Kernel;
  std::string name;    // the issuer's name (a kernel's launch site, "cublasGemm...", ...)
  std::string kernel;  // the kernel expression as launched, where the emulator saw it; else ""
  std::string phase;   // the phase label current at the issue ("" outside any)
  uint64_t blocks = 0, threads = 0;  // grid blocks and threads per block; 0: unknown
  double bytes = 0, flops = 0;       // estimated bytes read + written, floating-point operations
  Unit unit = Unit::Memory;
  bool has_work = false;  // false: the issuer gave no estimate (bytes and flops are 0)
};
namespace detail {
extern std::atomic<bool> g_tracing;
}
inline bool tracing() { return detail::g_tracing.load(std::memory_order_relaxed); }
// Starts recording (clearing what an earlier trace left); stop_trace() ends it and returns the
// records in issue order.
void start_trace();
std::vector<IssueRecord> stop_trace();
// The work of the next issue on this thread (only while tracing; use SC_TRACE_WORK, which
// evaluates its arguments only then).
void note_work(double bytes, double flops, Unit unit);
// The grid of the next kernel launch on this thread (the emulator's launch reports it).
void note_launch_shape(const char* kernel, uint64_t blocks, uint64_t threads);
// Named issues: the counts as above, plus a trace record with `name` while tracing.
void note_kernel_launch(const char* name);
void note_library_call(const char* name);
void note_memory_op(const char* name);
void trace_host_sync(const char* name);
// Data-dependent sizes the trace cannot see from the host (kernels that skip masked rows on the
// device): present slots per image, assumed by slot_contrast's work estimate (default 45, i.e.
// ~2.9K of B*K = 16K query rows at B 64, docs/gpu.md). Process-wide.
void set_trace_present_slots(double per_image);
double trace_present_slots();
// The current phase label (process-wide; a string with static storage); returns the previous.
const char* set_phase(const char* phase);
const char* current_phase();
// Called with the new label at every set_phase while installed (nullptr removes it): the engine's
// measured phase timing (engine/cuda_runtime.h, start_phase_timing) records an event there.
using PhaseHook = void (*)(const char* phase);
void set_phase_hook(PhaseHook hook);

}  // namespace kernels
}  // namespace sc

#define SC_KERNEL_REQUIRE(cond, what, detail)       \
  do {                                              \
    if (!(cond)) ::sc::kernels::fail(what, detail); \
  } while (0)

#if defined(__CUDACC__) || defined(SLOTCON_CUDA_EMU)
// Check the last launch (also under the CPU emulator of tests/cuda_emu); throws with the kernel
// name and CUDA's message.
#define SC_KERNEL_LAUNCH_CHECK(name)                                          \
  do {                                                                        \
    cudaError_t e_ = cudaGetLastError();                                      \
    if (e_ != cudaSuccess) ::sc::kernels::fail(name, cudaGetErrorString(e_)); \
  } while (0)
// Directly after every kernel launch (exactly one launch since the previous one): counts it
// (issue_counts) and checks it.
#define SC_KERNEL_LAUNCHED(name)             \
  do {                                       \
    SC_TRACE_LAUNCH_SHAPE();                 \
    ::sc::kernels::note_kernel_launch(name); \
    SC_KERNEL_LAUNCH_CHECK(name);            \
  } while (0)
#endif

// The work of the next issue, for the trace: arguments evaluated only while a trace runs.
#define SC_TRACE_WORK(bytes, flops, unit)                                                     \
  do {                                                                                      \
    if (::sc::kernels::tracing())                                                           \
      ::sc::kernels::note_work(double(bytes), double(flops), ::sc::kernels::Unit::unit);    \
  } while (0)

// The same with the unit an expression (a ::sc::kernels::Unit).
#define SC_TRACE_WORK_AS(bytes, flops, unit)                                          \
  do {                                                                              \
    if (::sc::kernels::tracing())                                                   \
      ::sc::kernels::note_work(double(bytes), double(flops), (unit));               \
  } while (0)

#if defined(SLOTCON_CUDA_EMU)
// Under the emulator the grid of the launch just made is known exactly: the emulator saw it.
#define SC_TRACE_LAUNCH_SHAPE()                                                           \
  do {                                                                                    \
    if (::sc::kernels::tracing()) {                                                       \
      const ::emu::LastLaunch l_ = ::emu::last_launch();                                  \
      ::sc::kernels::note_launch_shape(l_.name, l_.blocks, l_.threads);                   \
    }                                                                                     \
  } while (0)
#else
#define SC_TRACE_LAUNCH_SHAPE() \
  do {                          \
  } while (0)
#endif
