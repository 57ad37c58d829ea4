#!/usr/bin/env bash
# The main job: build the `slotcon` command and run the demo on the GPU if present, else the CPU.
# Usage: scripts/run.sh [extra arguments for the command]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="$root/build"
"$root/scripts/setup.sh"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j "$(nproc)" --target slotcon
exec "$build/apps/slotcon" demo "$@"
