// fuzz_util.h: what the fuzz targets share. A target is one function,
// LLVMFuzzerTestOneInput(bytes, size), that feeds outside bytes to one reader the way the program
// does and checks its contract: the reader either succeeds, and what it returns is consistent, or
// throws sc::Error. Anything else (a sanitizer report, another exception type, a failed FUZZ_CHECK)
// ends the process, which libFuzzer (SLOTCON_FUZZ builds) or the replay driver (every other
// build, replay_main.cpp) reports as a finding.
#pragma once
#include <cstdio>
#include <cstdlib>

// A consistency check that must hold for every input: prints the condition and aborts.
#define FUZZ_CHECK(cond)                                                               \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                    \
    }                                                                                  \
  } while (0)
