#!/usr/bin/env bash
# Soak test of checkpointing, outside CI (docs/hardening.md records its results).
#
#   scripts/soak.sh [TRIALS] [BUILD_DIR]      (default 12 trials, build dir build)
#
# 1. An uninterrupted reference run of a tiny CPU configuration that checkpoints every epoch.
# 2. TRIALS runs of the same configuration, each killed with SIGKILL 1-3 times at random moments
#    (in every second trial the first kill waits for a checkpoint's temporary file, so that it
#    lands mid-write) and restarted (auto-resume from the newest good checkpoint) until it
#    finishes. After every
#    kill each checkpoint in the folder must load; at the end the final state must equal the
#    reference's bit for bit (every tensor's bytes; on the CPU results do not depend on where a
#    run was interrupted).
# 3. A full disk (a tmpfs with room for one checkpoint): the run stops with an error naming the
#    checkpoint, the previous checkpoint still loads, and the run resumes on a disk with room.
# 4. A read-only output folder: refused before the first step.
# 5. A checkpoint of another architecture, and of another config, given to --resume: refused.
# Steps 3 and 4 mount tmpfs folders and need root; they are skipped (and said so) without it.
# Prints one line per check and a summary; exits 1 if any check failed.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
trials="${1:-12}"
build="${2:-$root/build}"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null && \
  cmake --build "$build" -j "$(nproc)" --target slotcon >/dev/null || exit 1
bin="$build/apps/slotcon"
work="$(mktemp -d /tmp/slotcon_soak.XXXXXX)"
mounts=()
cleanup() {
  for m in "${mounts[@]}"; do umount "$m" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
passed=0
failed=0
ok() { echo "ok    $*"; passed=$((passed + 1)); }
bad() { echo "FAIL  $*"; failed=$((failed + 1)); }

# 6 epochs of 2 steps on 8 synthetic scenes, a checkpoint every epoch: ~1 s a step on 2 cores
cfg=(train --dataset synthetic --arch resnet18 --dim_hidden 32 --dim_out 16 --num_prototypes 8
     --image_size 64 --batch_size 4 --synthetic_images 8 --num_workers 2 --warmup_epoch 0
     --score_images 0 --slot_images 0 --print_freq 1 --save_freq 1 --epochs 6)

# The bytes of a safetensors file's tensors (everything after the header): equal when every
# tensor is equal, whatever the metadata (which names the output folder).
tensor_bytes() {
  local n
  n=$(od -An -t u8 -N8 "$1" | tr -d ' ')
  tail -c +$((9 + n)) "$1"
}
all_load() {  # every checkpoint in folder $1 loads
  local f
  for f in "$1"/ckpt_epoch_*.safetensors; do
    [ -e "$f" ] || continue
    "$bin" inspect "$f" >/dev/null 2>&1 || { echo "  unloadable: $f"; return 1; }
  done
  return 0
}

echo "== reference run"
t0=$(date +%s%N)
"$bin" "${cfg[@]}" --output_dir "$work/ref" >"$work/ref.log" 2>&1 || { cat "$work/ref.log"; exit 1; }
ms_ref=$((($(date +%s%N) - t0) / 1000000))
echo "reference: $(grep -c '^epoch' "$work/ref.log") steps in ${ms_ref} ms"

echo "== $trials trials of kill -9 and resume"
kills=0
mid_write=0
for ((i = 1; i <= trials; i++)); do
  d="$work/trial_$i"
  n_kill=$((1 + RANDOM % 3))
  trial_ok=1
  for ((k = 0; k < n_kill; k++)); do
    "$bin" "${cfg[@]}" --output_dir "$d" >>"$d.log" 2>&1 &
    pid=$!
    if ((i % 2 == 0 && k == 0)); then
      # even trials, first kill: while a checkpoint is being written (its temporary file exists)
      for ((w = 0; w < 20000; w++)); do
        compgen -G "$d/.ckpt_epoch_*.tmp.*" >/dev/null && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.005
      done
      compgen -G "$d/.ckpt_epoch_*.tmp.*" >/dev/null && mid_write=$((mid_write + 1))
    else
      # a moment anywhere in the run (model set-up, steps, checkpoint writes)
      sleep "$(awk -v ms="$ms_ref" -v r="$RANDOM" 'BEGIN { printf "%.3f", ms * (r % 1000) / 1e6 }')"
    fi
    if kill -9 "$pid" 2>/dev/null; then kills=$((kills + 1)); fi
    wait "$pid" 2>/dev/null
    all_load "$d" || trial_ok=0
  done
  "$bin" "${cfg[@]}" --output_dir "$d" >>"$d.log" 2>&1 || trial_ok=0
  if [ $trial_ok = 1 ] && cmp -s <(tensor_bytes "$work/ref/final.safetensors") \
                                 <(tensor_bytes "$d/final.safetensors"); then
    ok "trial $i: $n_kill kill(s), checkpoints loadable, final state bitwise equal to the reference"
  else
    bad "trial $i: $n_kill kill(s) (log: $d.log)"; cp "$d.log" /tmp/ 2>/dev/null
  fi
  rm -rf "$d"
done
echo "kills that hit a running process: $kills, of them during a checkpoint write: $mid_write"

ckpt_size=$(stat -c %s "$work/ref/ckpt_epoch_0001.safetensors")
if [ "$(id -u)" = 0 ] && mkdir -p "$work/full" && \
   mount -t tmpfs -o size=$((ckpt_size * 3 / 2)) tmpfs "$work/full" 2>/dev/null; then
  mounts+=("$work/full")
  echo "== full disk (tmpfs of $((ckpt_size * 3 / 2)) bytes, one checkpoint is $ckpt_size)"
  out=$("$bin" "${cfg[@]}" --output_dir "$work/full/run" 2>&1)
  rc=$?
  if [ $rc = 1 ] && grep -q "ckpt_epoch_0002.safetensors" <<<"$out" && \
     "$bin" inspect "$work/full/run/ckpt_epoch_0001.safetensors" >/dev/null 2>&1 && \
     [ -z "$(find "$work/full/run" -name '*.tmp.*')" ]; then
    ok "full disk: stopped at the second checkpoint ($(grep -o 'No space left on device' <<<"$out" | head -1)), the first loads, no temporary left"
  else
    bad "full disk: exit $rc: $(tail -2 <<<"$out")"
  fi
  mkdir -p "$work/roomy" && cp "$work/full/run/ckpt_epoch_0001.safetensors" "$work/roomy/"
  if "$bin" "${cfg[@]}" --output_dir "$work/roomy" >"$work/roomy.log" 2>&1 && \
     cmp -s <(tensor_bytes "$work/ref/final.safetensors") <(tensor_bytes "$work/roomy/final.safetensors"); then
    ok "full disk: resumed on a disk with room, final state bitwise equal to the reference"
  else
    bad "full disk: the resume on a disk with room failed or differs ($work/roomy.log)"
  fi
  mkdir -p "$work/ro"
  mount -t tmpfs -o size=1m tmpfs "$work/ro" && mounts+=("$work/ro") && mount -o remount,ro "$work/ro"
  t0=$(date +%s)
  out=$("$bin" "${cfg[@]}" --output_dir "$work/ro" 2>&1)
  rc=$?
  if [ $rc = 1 ] && grep -q "is not writable" <<<"$out" && ! grep -q "^epoch" <<<"$out"; then
    ok "read-only output_dir: refused before the first step in $(( $(date +%s) - t0 ))s: $(grep error <<<"$out")"
  else
    bad "read-only output_dir: exit $rc: $(tail -2 <<<"$out")"
  fi
else
  echo "skip  full disk and read-only folder: need root and tmpfs mounts"
fi

echo "== --resume with a checkpoint of another architecture or config"
for change in "--arch resnet34" "--num_prototypes 16" "--dim_out 8"; do
  # shellcheck disable=SC2086
  out=$("$bin" "${cfg[@]}" --output_dir "$work/other" $change --resume \
        "$work/ref/ckpt_epoch_0001.safetensors" 2>&1)
  rc=$?
  if [ $rc = 1 ] && grep -q "does not fit" <<<"$out"; then
    ok "resume with $change: refused: $(grep -o 'was written by a run with [^:]*' <<<"$out")"
  else
    bad "resume with $change: exit $rc: $(tail -2 <<<"$out")"
  fi
done

echo "soak: $passed passed, $failed failed ($trials kill trials, $kills kills, $mid_write during a checkpoint write)"
[ $failed = 0 ]
