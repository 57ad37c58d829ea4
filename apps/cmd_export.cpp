// slotcon export: the teacher backbone (encoder_k) of a checkpoint or state file, as
// torchvision-named and detectron2-named safetensors. docs/export.md shows the Python lines that
// turn them into the files torchvision / mmsegmentation and detectron2 load.
#include <cstdio>
#include <filesystem>

#include "apps/commands.h"
#include "engine/safetensors.h"
#include "model/export.h"

namespace sc {
namespace app {

int cmd_export(const Args& args) {
  std::string in, out_dir;
  std::string prefix = "encoder_k.";
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> std::string { return option_value(args, &i); };
    if (a == "--help" || a == "-h") {
      std::printf(
          "usage: slotcon export CHECKPOINT --out DIR [--student]\n\n"
          "Writes DIR/backbone_torchvision.safetensors (conv1.weight, layer1.0.bn1.*, ...) and\n"
          "DIR/backbone_detectron2.safetensors (stem.conv1.*, res2.0.conv1.norm.*, ...) from the\n"
          "teacher backbone encoder_k.* (downstream users take the teacher); --student exports\n"
          "encoder_q.* instead. See docs/export.md for loading them in PyTorch tools.\n");
      return 0;
    } else if (a == "--out") {
      out_dir = value();
    } else if (a == "--student") {
      prefix = "encoder_q.";
    } else if (!a.empty() && a[0] == '-') {
      std::fprintf(stderr, "slotcon export: unknown option '%s'\n", a.c_str());
      return 2;
    } else {
      SC_CHECK(in.empty(), "one input file only (got '", in, "' and '", a, "')");
      in = a;
    }
  }
  if (in.empty() || out_dir.empty()) {
    std::fprintf(stderr, "usage: slotcon export CHECKPOINT --out DIR (see --help)\n");
    return 2;
  }
  SafetensorsFile f = read_safetensors(in);
  TensorMap tv = strip_prefix(f.tensors, prefix);
  TensorMap d2 = to_detectron2(tv);
  std::filesystem::create_directories(out_dir);
  const std::string p_tv = out_dir + "/backbone_torchvision.safetensors";
  const std::string p_d2 = out_dir + "/backbone_detectron2.safetensors";
  std::map<std::string, std::string> meta = {{"source", in}, {"prefix", prefix}};
  write_safetensors(p_tv, tv, meta);
  write_safetensors(p_d2, d2, meta);
  std::printf("wrote %s (%zu tensors) and %s (%zu tensors)\n", p_tv.c_str(), tv.size(),
              p_d2.c_str(), d2.size());
  return 0;
}

}  // namespace app
}  // namespace sc
