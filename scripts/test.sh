#!/usr/bin/env bash
# Build everything and run every test (CPU tests always; GPU tests run when a CUDA device is
# present and are reported "Skipped" otherwise). Then, unless SLOTCON_SKIP_SAN=1, build the CPU
# code and its tests again with clang under AddressSanitizer + UndefinedBehaviorSanitizer and
# libFuzzer in <build-dir>-san, run the CPU tests there and each fuzz target for
# SLOTCON_FUZZ_SECONDS (default 20) seconds (docs/hardening.md). Then, unless SLOTCON_SKIP_EMU=1
# or a CUDA device is present, build the CUDA backend again for the CPU emulator (tests/cuda_emu,
# docs/cuda_emu.md) in <build-dir>-emu and run the GPU tests there.
# Usage: scripts/test.sh [build-dir]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$root/build}"
"$root/scripts/setup.sh"
jobs="$(nproc)"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j "$jobs"
(cd "$build" && ctest --output-on-failure -j "$jobs" --timeout 600)

if [ "${SLOTCON_SKIP_SAN:-0}" != 1 ]; then
  san="${build}-san"
  echo "== CPU tests under AddressSanitizer + UndefinedBehaviorSanitizer, then fuzzing ($san)"
  cmake -S "$root" -B "$san" -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER=clang \
    -DCMAKE_CXX_COMPILER=clang++ -DSLOTCON_CUDA=OFF -DSLOTCON_SANITIZE=ON -DSLOTCON_FUZZ=ON \
    -DSLOTCON_BUILD_BENCH=OFF >/dev/null
  cmake --build "$san" -j "$jobs" --target slotcon test_engine test_kernels test_data test_model \
    test_apps fuzz_safetensors fuzz_image fuzz_config
  # every CPU test but the longer `slotcon train` / `slotcon slots` app tests (minutes each under
  # the sanitizers); one of them, the bitwise resume, covers the loader, step and checkpoints, and
  # the probe's test (a two-step run, then `slotcon probe` three times: about a minute) reads a
  # checkpoint back through the code `slotcon slots` shares with it. The
  # two-rank training steps on the loopback communicator are left out too (their threads and
  # collectives are covered by the engine's comm tests and the two-rank loss test)
  san_tests='^(engine|kernels|data|model|fuzz|apps:apps|apps:threads|apps:train: a few CPU steps|apps:probe)'
  (cd "$san" && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --output-on-failure -j "$jobs" --timeout 1200 -R "$san_tests" \
    -E '^model:data parallel step')
  "$root/scripts/fuzz.sh" all "${SLOTCON_FUZZ_SECONDS:-20}" "$san"
fi

has_gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then has_gpu=1; fi
if [ "${SLOTCON_SKIP_EMU:-0}" != 1 ] && [ "$has_gpu" = 0 ]; then
  emu="${build}-emu"
  echo "== GPU tests on the CUDA emulator ($emu)"
  cmake -S "$root" -B "$emu" -DCMAKE_BUILD_TYPE=Release -DSLOTCON_CUDA=OFF -DSLOTCON_CUDA_EMU=ON \
    >/dev/null
  cmake --build "$emu" -j "$jobs" --target test_gpu test_cuda_emu bench_slotcon_kernels \
    bench_train_step
  (cd "$emu" && ctest --output-on-failure -j "$jobs" --timeout 900 -R '^(gpu|cuda_emu):')
fi
