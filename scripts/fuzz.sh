#!/usr/bin/env bash
# Coverage-guided fuzzing of the readers of outside bytes (docs/hardening.md).
#
#   scripts/fuzz.sh TARGET SECONDS [BUILD_DIR]     TARGET: safetensors | image | config | all
#
# Builds BUILD_DIR (default build-san: clang, AddressSanitizer + UndefinedBehaviorSanitizer,
# libFuzzer, CPU only) if needed, then runs fuzz_TARGET for SECONDS seconds from the seed corpus
# (tests/fuzz/corpus/TARGET) and the inputs of past findings (tests/fuzz/regressions/TARGET). New
# interesting inputs go to BUILD_DIR/fuzz/TARGET/corpus (kept between runs, never into the repo);
# a finding is written to BUILD_DIR/fuzz/TARGET/ as crash-*, leak-*, timeout-* or oom-*, and the
# script exits 1 naming it. Once fixed, copy the input to tests/fuzz/regressions/TARGET/ (ctest
# replays it in every build from then on) and add a test that names what it broke.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
targets=(safetensors image config)
if [ $# -lt 2 ]; then
  echo "usage: scripts/fuzz.sh TARGET SECONDS [BUILD_DIR]   (TARGET: ${targets[*]} | all)" >&2
  exit 2
fi
target="$1"
seconds="$2"
build="${3:-$root/build-san}"
case "$seconds" in '' | *[!0-9]*) echo "fuzz.sh: SECONDS must be a whole number" >&2; exit 2 ;; esac
if [ "$target" = all ]; then
  status=0
  for t in "${targets[@]}"; do "$0" "$t" "$seconds" "$build" || status=1; done
  exit $status
fi
case " ${targets[*]} " in *" $target "*) ;; *)
  echo "fuzz.sh: unknown target '$target' (${targets[*]} | all)" >&2; exit 2 ;;
esac

if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER=clang \
    -DCMAKE_CXX_COMPILER=clang++ -DSLOTCON_CUDA=OFF -DSLOTCON_SANITIZE=ON -DSLOTCON_FUZZ=ON \
    -DSLOTCON_BUILD_BENCH=OFF >/dev/null
fi
grep -q '^SLOTCON_FUZZ:BOOL=ON' "$build/CMakeCache.txt" || {
  echo "fuzz.sh: $build is not a -DSLOTCON_FUZZ=ON build" >&2; exit 2; }
cmake --build "$build" -j "$(nproc)" --target "fuzz_$target" >/dev/null

work="$build/fuzz/$target"
mkdir -p "$work/corpus"
inputs=("$work/corpus" "$root/tests/fuzz/corpus/$target")
[ -d "$root/tests/fuzz/regressions/$target" ] && inputs+=("$root/tests/fuzz/regressions/$target")
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export OPENBLAS_NUM_THREADS=1 SLOTCON_NUM_THREADS=1
echo "== fuzz_$target for ${seconds}s (corpus: ${inputs[*]})"
log="$work/fuzz.log"
set +e
"$build/tests/fuzz/fuzz_$target" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 \
  -max_len=65536 -print_final_stats=1 -artifact_prefix="$work/" "${inputs[@]}" >"$log" 2>&1
rc=$?
set -e
grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|INFO: seed corpus)' "$log" \
  || true
if [ $rc -ne 0 ]; then
  tail -n 60 "$log"
  echo "fuzz_$target: FINDING (exit $rc); the input is one of:" >&2
  ls -1 "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-* 2>/dev/null >&2 || true
  exit 1
fi
echo "fuzz_$target: no finding in ${seconds}s"
