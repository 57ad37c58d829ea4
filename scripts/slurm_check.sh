#!/usr/bin/env bash
# Checks scripts/slurm_train.sbatch under a real SLURM, on one machine. NOT run by CI
# (scripts/test.sh, .ci/run): it needs SLURM, submits jobs and kills processes; run it by hand
# after changing the sbatch script, the launcher detection (engine/comm.cpp) or the failure paths.
#
#   scripts/slurm_check.sh              # SLURM already runs here, on a one-node cluster
#   scripts/slurm_check.sh --standup    # as root, with slurm-wlm and munge installed (Debian 12:
#                                       # apt-get install slurm-wlm munge): starts a private
#                                       # one-node cluster for the check and stops it afterwards
#
# Run from anywhere; it submits from the repository root. SLOTCON_BIN names the binary (default
# build/apps/slotcon; it needs the MPI backend), SLURM_CHECK_DIR the scratch folder (default: a new
# one under /tmp, kept for reading). It runs at most 2 tasks of 1 CPU at a time (the machine needs
# 2 CPUs), about a minute in all, and checks:
#   1. binding: a task of --cpus-per-task N may run on N CPUs (srun is given --cpus-per-task;
#      since SLURM 22.05 it no longer inherits it from sbatch, and each task was bound to 1 CPU);
#   2. a tiny synthetic run of 2 tasks trains as 2 ranks ("data-parallel: 2 processes"),
#      finishes (job COMPLETED, "done:") and writes final.safetensors;
#   3. rank 1 killed with kill -9 during training: the job ends (--kill-on-bad-exit) within the
#      comm timeout, FAILED, and srun's output names the killed task;
#   4. rank 1 stopped with kill -STOP (a rank that hangs): rank 0 gives up after
#      SLOTCON_COMM_TIMEOUT (10 s here) with "no answer from the other ranks" and the job ends.
# Checks 3 and 4 look for rank 1's process on this machine, so the job must run here (a one-node
# cluster, as --standup makes). Exit status 0 when every check passed, 1 otherwise.
#
# The private cluster of --standup (its slurm.conf is the one recorded in docs/training.md,
# "Checked under SLURM"): slurmctld and slurmd on localhost, configuration, state and logs in
# SLURM_CHECK_DIR/slurm (SLURM_CONF points there; /etc/slurm is not touched), proctrack/linuxproc
# and task/affinity (cgroups are not assumed to work in a container). munged is started only when
# none answers. Everything started is stopped when the script ends.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
standup=0
for a in "$@"; do
  case "$a" in
    --standup) standup=1 ;;
    -h | --help)
      sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *) echo "slurm_check.sh: unknown argument '$a' (--standup, --help)" >&2; exit 2 ;;
  esac
done

bin="${SLOTCON_BIN:-$repo/build/apps/slotcon}"
[[ "$bin" = /* ]] || bin="$repo/$bin"
if [[ ! -x "$bin" ]]; then
  echo "slurm_check.sh: no slotcon binary at $bin (build it, or set SLOTCON_BIN)" >&2
  exit 1
fi
dir="${SLURM_CHECK_DIR:-$(mktemp -d /tmp/slurm_check.XXXXXX)}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
comm_timeout=10
failures=0
say() { echo "slurm_check: $*"; }
pass() { say "PASS $*"; }
fail() { say "FAIL $*"; failures=$((failures + 1)); }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ------------------------------------------------------------------ a private one-node cluster
started_pids=()
stop_started() {
  local i p
  for ((i = ${#started_pids[@]} - 1; i >= 0; i--)); do # the reverse order of starting
    p="${started_pids[i]}"
    kill "$p" 2>/dev/null || continue
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  done
  started_pids=()
}
trap stop_started EXIT

standup_cluster() {
  [[ $(id -u) -eq 0 ]] || { echo "slurm_check.sh: --standup needs root" >&2; exit 1; }
  local t
  for t in slurmctld slurmd munged munge sbatch; do
    command -v "$t" >/dev/null || {
      echo "slurm_check.sh: --standup needs $t (apt-get install slurm-wlm munge)" >&2
      exit 1
    }
  done
  local cpus
  cpus=$(nproc --all)
  ((cpus >= 2)) || { echo "slurm_check.sh: the check needs 2 CPUs, this machine has $cpus" >&2; exit 1; }
  if ! munge -n </dev/null >/dev/null 2>&1; then
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    [[ -s /etc/munge/munge.key ]] || { echo "slurm_check.sh: no /etc/munge/munge.key (mungekey -c)" >&2; exit 1; }
    runuser -u munge -- munged || { echo "slurm_check.sh: munged did not start" >&2; exit 1; }
    started_pids+=("$(cat /run/munge/munged.pid)")
    say "started munged (pid ${started_pids[-1]})"
  fi
  local s="$dir/slurm"
  mkdir -p "$s/state" "$s/spool"
  cat >"$s/slurm.conf" <<EOF
ClusterName=slotcon-check
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=$s/state
SlurmdSpoolDir=$s/spool
SlurmctldLogFile=$s/slurmctld.log
SlurmdLogFile=$s/slurmd.log
SlurmctldPidFile=$s/slurmctld.pid
SlurmdPidFile=$s/slurmd.pid
NodeName=localhost CPUs=$cpus State=UNKNOWN
PartitionName=check Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF="$s/slurm.conf"
  if scontrol ping 2>/dev/null | grep -q UP; then
    echo "slurm_check.sh: a slurmctld already answers on localhost; run without --standup" >&2
    exit 1
  fi
  slurmctld -c || { echo "slurm_check.sh: slurmctld did not start:" >&2; tail -5 "$s/slurmctld.log" >&2; exit 1; }
  for _ in $(seq 50); do [[ -s "$s/slurmctld.pid" ]] && break; sleep 0.1; done
  started_pids+=("$(cat "$s/slurmctld.pid")")
  slurmd -N localhost || { echo "slurm_check.sh: slurmd did not start:" >&2; tail -5 "$s/slurmd.log" >&2; exit 1; }
  for _ in $(seq 50); do [[ -s "$s/slurmd.pid" ]] && break; sleep 0.1; done
  started_pids+=("$(cat "$s/slurmd.pid")")
  for _ in $(seq 100); do
    sinfo -h -o %t 2>/dev/null | grep -qx idle && break
    sleep 0.2
  done
  sinfo -h -o %t | grep -qx idle || { echo "slurm_check.sh: the node did not come up:" >&2; sinfo >&2; exit 1; }
  say "started a one-node cluster (slurmctld, slurmd; $SLURM_CONF)"
}

if ((standup)); then
  standup_cluster
elif ! scontrol ping 2>/dev/null | grep -q UP; then
  echo "slurm_check.sh: no slurmctld answers (scontrol ping); start SLURM, or use --standup as root" >&2
  exit 1
fi
say "$(sinfo --version), binary $bin, scratch $dir"

cd "$repo" || exit 1
export SLOTCON_BIN="$bin"
tiny=(--dataset synthetic --synthetic_images 16 --arch resnet18 --dim_hidden 32 --dim_out 8
  --num_prototypes 8 --batch_size 2 --image_size 64 --score_images 0 --slot_images 0 --device cpu)

job_state() { scontrol show job -o "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
job_gone() { [[ -z "$(squeue -h -j "$1" 2>/dev/null)" ]]; }
# Waits up to $2 seconds for job $1 to leave the queue; cancels it after that.
wait_job() {
  local t0
  t0=$(now)
  until job_gone "$1"; do
    if awk -v a="$t0" -v b="$(now)" -v l="$2" 'BEGIN { exit !(b - a > l) }'; then
      scancel "$1" 2>/dev/null
      return 1
    fi
    sleep 0.1
  done
}
# The pid of task $2 of job $1 running $bin on this machine.
task_pid() {
  local p e exe
  exe="$(readlink -f "$bin")"
  for p in /proc/[0-9]*; do
    [[ "$(readlink -f "$p/exe" 2>/dev/null)" == "$exe" ]] || continue
    e="$(tr '\0' '\n' <"$p/environ" 2>/dev/null)" || continue
    if grep -qx "SLURM_JOB_ID=$1" <<<"$e" && grep -qx "SLURM_PROCID=$2" <<<"$e"; then
      echo "${p#/proc/}"
      return 0
    fi
  done
  return 1
}

# ------------------------------------------------------------------ 1. binding
# SLOTCON_BIN is a stand-in that prints the CPUs its task may run on.
cpus=$(nproc --all)
probe="$dir/affinity_probe"
# shellcheck disable=SC2016 # expanded by the probe, not here
printf '#!/bin/sh\necho "affinity: $(nproc) CPU(s), SLOTCON_NUM_THREADS=$SLOTCON_NUM_THREADS"\n' >"$probe"
chmod +x "$probe"
out="$dir/binding.out"
SLOTCON_BIN="$probe" timeout 120 sbatch --wait --quiet -o "$out" --ntasks-per-node 1 -c "$cpus" \
  scripts/slurm_train.sbatch
if grep -qx "affinity: $cpus CPU(s), SLOTCON_NUM_THREADS=$cpus" "$out"; then
  pass "binding: a task of --cpus-per-task $cpus runs on $cpus CPUs"
else
  fail "binding: a task of --cpus-per-task $cpus should run on $cpus CPUs ($out):"
  sed 's/^/  | /' "$out"
fi

# ------------------------------------------------------------------ 2. a tiny run of 2 ranks
out="$dir/train.out"
t0=$(now)
job=$(sbatch --parsable -o "$out" --ntasks-per-node 2 --cpus-per-task 1 scripts/slurm_train.sbatch \
  "${tiny[@]}" --epochs 1 --output_dir "$dir/train")
if ! wait_job "$job" 300; then
  fail "train: job $job did not end within 300 s (cancelled)"
else
  took=$(elapsed "$t0")
  state=$(job_state "$job")
  ok=1
  grep -q '^data-parallel: 2 processes' "$out" || { ok=0; fail "train: no 'data-parallel: 2 processes' in $out"; }
  grep -q '^done: ' "$out" || { ok=0; fail "train: no 'done:' line in $out"; }
  [[ -s "$dir/train/final.safetensors" ]] || { ok=0; fail "train: no $dir/train/final.safetensors"; }
  [[ -z "$state" || "$state" == COMPLETED ]] || { ok=0; fail "train: job $job ended $state"; }
  ((ok)) && pass "train: 2 ranks, finished, final.safetensors written (job $job, ${took} s from submission)"
  ((ok)) || sed 's/^/  | /' "$out"
fi

# ------------------------------------------------------------------ 3. and 4. a rank killed / stopped
# Starts a longer run, waits for its third step, sends signal $1 to rank 1 and measures how long
# the job takes to end.
fault() {
  local sig="$1" name="$2" expect="$3" out="$dir/$2.out" job pid t0 took state
  job=$(SLOTCON_COMM_TIMEOUT=$comm_timeout sbatch --parsable -o "$out" --ntasks-per-node 2 \
    --cpus-per-task 1 scripts/slurm_train.sbatch "${tiny[@]}" --synthetic_images 64 --epochs 5 \
    --print_freq 1 --output_dir "$dir/$name")
  for _ in $(seq 600); do
    grep -q 'step 3/' "$out" 2>/dev/null && break
    job_gone "$job" && break
    sleep 0.2
  done
  if job_gone "$job"; then
    fail "$name: job $job ended before its third step ($out)"
    sed 's/^/  | /' "$out"
    return
  fi
  if ! pid=$(task_pid "$job" 1); then
    fail "$name: rank 1 of job $job is not running on this machine (the check needs a one-node cluster)"
    scancel "$job" 2>/dev/null
    return
  fi
  t0=$(now)
  kill "-$sig" "$pid"
  if ! wait_job "$job" $((comm_timeout + 60)); then
    kill -CONT "$pid" 2>/dev/null
    fail "$name: job $job still ran $((comm_timeout + 60)) s after kill -$sig of rank 1 (cancelled)"
    return
  fi
  took=$(elapsed "$t0")
  state=$(job_state "$job")
  if ! grep -q "$expect" "$out"; then
    fail "$name: no '$expect' in $out"
    sed 's/^/  | /' "$out"
  elif [[ -n "$state" && "$state" != FAILED ]]; then
    fail "$name: job $job ended $state, not FAILED"
  elif awk -v t="$took" -v l="$((comm_timeout + 5))" 'BEGIN { exit !(t > l) }'; then
    fail "$name: job $job ended ${took} s after kill -$sig of rank 1 (more than the ${comm_timeout} s comm timeout + 5)"
  else
    pass "$name: kill -$sig of rank 1 ended job $job ${state:+($state) }${took} s later: $(grep -m1 "$expect" "$out")"
  fi
}
fault KILL kill 'task 1: Killed'
fault STOP stop 'no answer from the other ranks'

if ((failures)); then
  say "$failures check(s) failed; outputs in $dir"
  exit 1
fi
say "all checks passed; outputs in $dir"
