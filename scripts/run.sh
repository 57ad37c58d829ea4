#!/usr/bin/env bash
# The main job: build `slotcon` and run a short SlotCon pre-training of a small ResNet-18 on the
# embedded synthetic scenes (configs/demo.json), on the GPU if present, else the CPU. It prints
# progress with an ETA and a grouping score (mIoU of the prototypes against the scene classes)
# before and after training. Extra arguments are passed on, e.g. `scripts/run.sh --epochs 4`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="$root/build"
"$root/scripts/setup.sh"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j "$(nproc)" --target slotcon
cd "$root"
exec "$build/apps/slotcon" train --config configs/demo.json --no-auto-resume "$@"
