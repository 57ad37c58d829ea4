#!/usr/bin/env bash
# The one prepared GPU check (run on the lent H100/H200 machine, ~8 minutes on 16 cores):
#   1. build the CUDA backend for the card (sm_90 unless ARCH is set),
#   2. run the whole test suite, GPU tests included (they must not be skipped here),
#   3. optionally run the GPU tests under compute-sanitizer (SANITIZE=1),
#   4. compare the GPU step with the PyTorch reference step (scripts/compare_torch_step.sh),
#   5. run every benchmark (bench_resnet50 and bench_train_step run their PyTorch baselines,
#      bench/*_torch.py, in the same invocation and print the ratio),
#   6. print a short table last.
# Usage: scripts/gpu_check.sh [build-dir]     env: ARCH=90 SANITIZE=0 BENCH=1 COMPARE=1
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$root/build-gpu}"
arch="${ARCH:-90}"
out="${OUT:-$build/gpu_check}"
mkdir -p "$out"
summary=()
stamp() { date +%s; }
t0=$(stamp)

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "== commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"

echo "== build (sm_$arch)"
if cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DSLOTCON_CUDA=ON \
     -DCMAKE_CUDA_ARCHITECTURES="$arch" >"$out/configure.log" 2>&1 &&
   cmake --build "$build" -j "$(nproc)" >"$out/build.log" 2>&1; then
  summary+=("build|ok|$(( $(stamp) - t0 ))s")
else
  tail -40 "$out/build.log" "$out/configure.log"
  summary+=("build|FAILED|see $out/build.log")
  printf '%s\n' "${summary[@]}" | column -t -s'|'
  exit 1
fi

echo "== tests"
t1=$(stamp)
(cd "$build" && ctest --output-on-failure -j 8 --timeout 300) >"$out/ctest.log" 2>&1
rc=$?
tail -15 "$out/ctest.log"
skipped=$(grep -c "Skipped" "$out/ctest.log" || true)
summary+=("ctest|$([ $rc -eq 0 ] && echo ok || echo FAILED)|$(grep -E 'tests passed|tests failed' "$out/ctest.log" | tail -1), skipped lines: $skipped, $(( $(stamp) - t1 ))s")
grep -E "^\s*[0-9]+/[0-9]+ Test.*(Failed|Skipped)" "$out/ctest.log" | head -20

if [ "${SANITIZE:-0}" = "1" ] && command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    echo "== compute-sanitizer $tool"
    # the kernel and op tests; the whole-model train-step tests ([train]) would take minutes
    # under the sanitizer and run no kernel the others do not
    timeout 300 compute-sanitizer --tool "$tool" --error-exitcode 9 "$build/tests/test_gpu" "~[train]" \
      >"$out/sanitize_$tool.log" 2>&1
    r=$?
    tail -5 "$out/sanitize_$tool.log"
    summary+=("sanitizer $tool|$([ $r -eq 0 ] && echo ok || echo FAILED rc=$r)|")
  done
fi

if [ "${COMPARE:-1}" = "1" ]; then
  # the whole step on the GPU (fp32) against the PyTorch reference step on the same state and
  # batch (PyTorch on the CPU, as in the CPU check)
  echo "== compare_torch_step (engine on cuda, fp32)"
  DEVICE=cuda timeout 300 "$root/scripts/compare_torch_step.sh" "$build" >"$out/compare.log" 2>&1
  r=$?
  tail -14 "$out/compare.log"
  summary+=("compare_torch_step|$([ $r -eq 0 ] && echo ok || echo "rc=$r")|$(grep -E '^compare: [0-9]+ tensors' "$out/compare.log" | sed 's/^compare: //')")
fi

if [ "${BENCH:-1}" = "1" ]; then
  for b in "$build"/bench/bench_*; do
    [ -x "$b" ] || continue
    name=$(basename "$b")
    echo "== $name"
    timeout 240 "$b" >"$out/$name.log" 2>&1
    r=$?
    tail -25 "$out/$name.log"
    summary+=("$name|$([ $r -eq 0 ] && echo ok || echo "rc=$r")|$(grep -E '^RESULT' "$out/$name.log" | head -3 | sed 's/^RESULT //' | paste -sd';' -)")
  done
fi

echo
echo "== summary ($(( $(stamp) - t0 ))s total)"
printf '%s\n' "${summary[@]}" | column -t -s'|'
