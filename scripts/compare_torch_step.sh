#!/usr/bin/env bash
# Compare `slotcon train` with the PyTorch SlotCon step of bench/train_step_torch.py: the same
# init state (written by PyTorch with the reference names, loaded with --init), the same recorded
# batch (--save-batch, then --batch-file), N steps each, then every tensor of the final state
# (model, BN statistics, center, optimizer momentum) and the per-step losses side by side.
#
# Usage: scripts/compare_torch_step.sh [build-dir] [config]     env: STEPS=3 PYTHON=python3
#                                                                     TOL=1e-2 DEVICE=cpu
# Needs python3 with torch (+ numpy); prints AGREE / DIFFER and exits 0 / 1.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$root/build}"
config="${2:-$root/configs/demo.json}"
steps="${STEPS:-3}"
read -r -a py <<<"${PYTHON:-python3}"
bin="$build/apps/slotcon"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
common=(--config "$config" --no-auto-resume --score_images 0 --device "${DEVICE:-cpu}"
        --precision fp32 --epochs 100 --print_freq 1)

echo "== record one batch (and the run's config) with the engine"
"$bin" train "${common[@]}" --steps 1 --output_dir "$tmp/rec" --save-batch "$tmp/batch.safetensors" >"$tmp/rec.log"
echo "== init state from PyTorch"
"${py[@]}" "$root/bench/train_step_torch.py" init --config-from "$tmp/rec/final.safetensors" --out "$tmp/init.safetensors"
echo "== engine: $steps steps"
"$bin" train "${common[@]}" --steps "$steps" --output_dir "$tmp/eng" --init "$tmp/init.safetensors" \
  --batch-file "$tmp/batch.safetensors" | grep -E "^epoch|initialised"
echo "== PyTorch: $steps steps"
"${py[@]}" "$root/bench/train_step_torch.py" replay --config-from "$tmp/rec/final.safetensors" \
  --init "$tmp/init.safetensors" --batch-file "$tmp/batch.safetensors" --steps "$steps" \
  --out "$tmp/torch.safetensors"
echo "== compare"
"${py[@]}" "$root/bench/train_step_torch.py" compare "$tmp/eng/final.safetensors" "$tmp/torch.safetensors" \
  --engine-metrics "$tmp/eng/metrics.jsonl" --torch-losses "$tmp/torch.safetensors.losses.json" \
  --tol "${TOL:-1e-2}"
