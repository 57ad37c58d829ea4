#!/usr/bin/env bash
# The engine's training step against an independent PyTorch implementation of the authors' step
# (bench/train_step_torch.py), with PyTorch in float64 as the truth and PyTorch in float32 beside
# the engine as the yardstick. Per seed: the engine records one batch (--save-batch), PyTorch
# writes an init state with the reference names, then the engine (--init, --batch-file), PyTorch
# float64 and PyTorch float32 each run STEPS steps from that state on that batch. Every tensor of
# the final states (model, BN statistics, center, optimizer momentum) is compared with the truth's
# relative to how far the truth moved it, ||x - x64|| / ||x64 - x_init||, and the median, 90th
# percentile and worst over all tensors of all seeds are printed for the engine and for PyTorch
# float32 (docs/training.md, "Checking the step against PyTorch", says why one tensor's error or
# an error relative to a tensor's norm misleads).
#
# AGREE when the engine's median and 90th percentile are within FACTOR (4) of PyTorch float32's,
# its worst tensor within FACTOR of PyTorch float32's worst or under 5 % of its move (where a wrong
# gradient starts to show), and tensors the truth leaves in place (a bias in front of a BatchNorm,
# whose exact gradient is 0) within FACTOR of PyTorch float32's round-off there.
#
# Usage: scripts/compare_torch_step.sh [build-dir] [config]
#   env: SEEDS="0 1 2" STEPS=1 ARCH=resnet18 SIZE=96 BATCH=4 FACTOR=4 PYTHON=python3 DEVICE=cpu
# Needs python3 with torch and numpy; prints AGREE / DIFFER and exits 0 / 1.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$root/build}"
config="${2:-$root/configs/demo.json}"
steps="${STEPS:-1}"
read -r -a py <<<"${PYTHON:-python3}"
bin="$build/apps/slotcon"
ref="$root/bench/train_step_torch.py"
tmp="$(mktemp -d)"
[ -n "${KEEP:-}" ] && echo "keeping $tmp" || trap 'rm -rf "$tmp"' EXIT
common=(--config "$config" --no-auto-resume --score_images 0 --device "${DEVICE:-cpu}"
        --precision fp32 --epochs 100 --print_freq 1 --arch "${ARCH:-resnet18}"
        --image_size "${SIZE:-96}" --batch_size "${BATCH:-4}")

dirs=()
for seed in ${SEEDS:-0 1 2}; do
  d="$tmp/seed$seed"
  mkdir -p "$d"
  dirs+=("$d")
  echo "== seed $seed: record one batch (and the run's config) with the engine"
  "$bin" train "${common[@]}" --seed "$seed" --steps 1 --output_dir "$d/rec" \
    --save-batch "$d/batch.safetensors" >"$d/rec.log"
  cfg_from="$d/rec/final.safetensors"
  "${py[@]}" "$ref" init --config-from "$cfg_from" --seed "$seed" --out "$d/init.safetensors"
  echo "== seed $seed: engine, $steps step(s)"
  "$bin" train "${common[@]}" --seed "$seed" --steps "$steps" --output_dir "$d/eng" \
    --init "$d/init.safetensors" --batch-file "$d/batch.safetensors" | grep -E "^epoch|initialised"
  cp "$d/eng/final.safetensors" "$d/engine.safetensors"
  cp "$d/eng/metrics.jsonl" "$d/engine.metrics.jsonl"
  for prec in truth torch32; do
    echo "== seed $seed: PyTorch $([ $prec = truth ] && echo float64 || echo float32), $steps step(s)"
    "${py[@]}" "$ref" replay --config-from "$cfg_from" --init "$d/init.safetensors" \
      --batch-file "$d/batch.safetensors" --steps "$steps" --out "$d/$prec.safetensors" \
      $([ $prec = truth ] && echo --f64)
    mv "$d/$prec.safetensors.losses.json" "$d/$prec.losses.json"
  done
done
echo "== compare"
"${py[@]}" "$ref" compare "${dirs[@]}" --factor "${FACTOR:-4}"
