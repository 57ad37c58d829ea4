// check.h: how kernels report failure. sc::Error, the one exception type of the whole project,
// is defined here at the bottom layer so that kernels/ depends on nothing above it; the engine
// re-exports it (engine/error.h).
#pragma once
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

}  // namespace kernels
}  // namespace sc

#define SC_KERNEL_REQUIRE(cond, what, detail) \
  do {                                        \
    if (!(cond)) ::sc::kernels::fail(what, detail); \
  } while (0)

#if defined(__CUDACC__) || defined(SLOTCON_CUDA_EMU)
// Check the last launch (also under the CPU emulator of tests/cuda_emu); throws with the kernel name and CUDA's message.
#define SC_KERNEL_LAUNCH_CHECK(name)                                         \
  do {                                                                       \
    cudaError_t e_ = cudaGetLastError();                                     \
    if (e_ != cudaSuccess) ::sc::kernels::fail(name, cudaGetErrorString(e_)); \
  } while (0)
#endif
