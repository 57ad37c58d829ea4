// check.h: how kernels report failure. sc::Error, the one exception type of the whole project,
// is defined here at the bottom layer so that kernels/ depends on nothing above it; the engine
// re-exports it (engine/error.h).
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

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
#define SC_KERNEL_LAUNCHED(name)         \
  do {                                   \
    ::sc::kernels::note_kernel_launch(); \
    SC_KERNEL_LAUNCH_CHECK(name);        \
  } while (0)
#endif
