// cpu_clones.h: SC_CPU_CLONES marks a hot CPU loop for an AVX-512 and an AVX2 clone beside the
// baseline one, picked at load time (GCC, x86-64). Not under the sanitizers: their
// instrumentation breaks the ifunc resolvers, which run before they start.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    !defined(__SANITIZE_THREAD__) && !defined(__SANITIZE_ADDRESS__)
#define SC_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SC_CPU_CLONES
#endif
