// blas_threads.h: start the process again with OPENBLAS_THREAD_TIMEOUT set (slotcon and the CPU
// benchmarks).
//
// OpenBLAS's idle threads spin for 2^28 cycles after each matrix product (its default
// THREAD_TIMEOUT), holding the cores that the CPU ops' thread pool needs next; at 2^4 they sleep
// at once, and a CPU training step on 2 cores is ~20 % faster (docs/architecture.md). OpenBLAS
// reads OPENBLAS_THREAD_TIMEOUT when it loads, before main, so the program sets it and starts
// itself again, once. Setting the variable yourself (any value) skips this; so does running under
// a tool (valgrind: /proc/self/exe is then not the program named `name`).
#pragma once
#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace sc {

inline void restart_with_blas_thread_timeout(char** argv, const char* name) {
  if (std::getenv("OPENBLAS_THREAD_TIMEOUT")) return;
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return;
  self[n] = '\0';
  const char* base = std::strrchr(self, '/');
  if (std::strcmp(base ? base + 1 : self, name) != 0) return;
  if (setenv("OPENBLAS_THREAD_TIMEOUT", "4", 1) != 0) return;
  execv(self, argv);  // returns only on failure: go on with OpenBLAS's default
}

}  // namespace sc
