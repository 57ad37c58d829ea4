// batch_file.h: one recorded two-view batch as a safetensors file (`slotcon train --save-batch`
// writes it, `--batch-file` replays it every step; scripts/compare_torch_step.sh feeds the same
// file to the PyTorch step).
//
// Tensors, for v = 0 and 1: "crops.v" (B, 3, S, S) floating, "coords.v" (B, 4) floating (the
// overlap box x1, y1, x2, y2 in the view's normalised coordinates), "flags.v" (B) U8 (1: the view
// is flipped). Both views have the same B >= 2 (batch norm) and S >= 32, every value is finite and
// every flag is 0 or 1. Anything else is an sc::Error naming the file and the tensor.
#pragma once
#include <string>

#include "engine/safetensors.h"
#include "model/slotcon.h"

namespace sc {

// Validate a parsed batch file; the batch's tensors stay on the host in their file dtypes,
// except coords, which become F32.
TwoViewBatch batch_from_file(const SafetensorsFile& f, const std::string& what);
// read_safetensors + batch_from_file.
TwoViewBatch read_batch_file(const std::string& path);
// Write a batch (any device; crops as F32) atomically.
void write_batch_file(const std::string& path, const TwoViewBatch& b);

}  // namespace sc
