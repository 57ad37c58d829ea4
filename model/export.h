// export.h: the teacher backbone in the names downstream tools load (docs/method.md §10).
//
// torchvision: the teacher's `encoder_k.*` tensors with the prefix stripped (conv1.weight,
//   bn1.running_mean, layer1.0.downsample.1.weight, ...), num_batches_tracked kept.
// detectron2: the same tensors renamed: layerN -> res{N+1}; inside a block bnI -> convI.norm,
//   downsample.0 -> shortcut, downsample.1 -> shortcut.norm; the stem's conv1 -> stem.conv1 and
//   bn1 -> stem.conv1.norm; num_batches_tracked dropped (detectron2 has no such buffer).
// docs/export.md has the Python lines that turn either file into what each tool loads.
#pragma once
#include <string>

#include "engine/module.h"

namespace sc {

// Tensors whose names start with `prefix`, with the prefix removed. Throws sc::Error if none.
TensorMap strip_prefix(const TensorMap& state, const std::string& prefix);
// torchvision ResNet name -> detectron2 name ("" for tensors detectron2 does not take).
std::string detectron2_name(const std::string& torchvision_name);
TensorMap to_detectron2(const TensorMap& torchvision_backbone);

}  // namespace sc
