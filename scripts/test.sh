#!/usr/bin/env bash
# Build everything and run every test (CPU tests always; GPU tests run when a CUDA device is
# present and are reported "Skipped" otherwise). Then, unless SLOTCON_SKIP_EMU=1 or a CUDA device
# is present, build the CUDA backend again for the CPU emulator (tests/cuda_emu, docs/cuda_emu.md)
# in <build-dir>-emu and run the GPU tests there. Usage: scripts/test.sh [build-dir]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$root/build}"
"$root/scripts/setup.sh"
jobs="$(nproc)"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j "$jobs"
(cd "$build" && ctest --output-on-failure -j "$jobs" --timeout 600)

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
