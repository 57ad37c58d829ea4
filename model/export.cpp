#include "model/export.h"

#include <regex>

namespace sc {

TensorMap strip_prefix(const TensorMap& state, const std::string& prefix) {
  TensorMap out;
  for (const auto& kv : state)
    if (kv.first.rfind(prefix, 0) == 0) out[kv.first.substr(prefix.size())] = kv.second;
  SC_CHECK(!out.empty(), "no tensor name starts with '", prefix, "' (", state.size(),
           " tensors given)");
  return out;
}

std::string detectron2_name(const std::string& n) {
  if (n.size() >= 19 && n.compare(n.size() - 19, 19, "num_batches_tracked") == 0) return "";
  static const std::regex stem_conv(R"(^conv1\.(.*)$)");
  static const std::regex stem_bn(R"(^bn1\.(.*)$)");
  static const std::regex block(R"(^layer([1-4])\.(\d+)\.(.*)$)");
  static const std::regex bn(R"(^bn(\d)\.(.*)$)");
  static const std::regex ds_conv(R"(^downsample\.0\.(.*)$)");
  static const std::regex ds_bn(R"(^downsample\.1\.(.*)$)");
  std::smatch m;
  if (std::regex_match(n, m, stem_conv)) return "stem.conv1." + m[1].str();
  if (std::regex_match(n, m, stem_bn)) return "stem.conv1.norm." + m[1].str();
  if (std::regex_match(n, m, block)) {
    const std::string stage = "res" + std::to_string(std::stoi(m[1].str()) + 1);
    const std::string idx = m[2].str(), rest = m[3].str();
    std::smatch r;
    std::string tail;
    if (std::regex_match(rest, r, bn)) {
      tail = "conv" + r[1].str() + ".norm." + r[2].str();
    } else if (std::regex_match(rest, r, ds_conv)) {
      tail = "shortcut." + r[1].str();
    } else if (std::regex_match(rest, r, ds_bn)) {
      tail = "shortcut.norm." + r[1].str();
    } else {
      tail = rest;  // convI.weight
    }
    return stage + "." + idx + "." + tail;
  }
  throw Error(str_cat("detectron2 export: unexpected backbone tensor name '", n, "'"));
}

TensorMap to_detectron2(const TensorMap& tv) {
  TensorMap out;
  for (const auto& kv : tv) {
    std::string d = detectron2_name(kv.first);
    if (!d.empty()) out[d] = kv.second;
  }
  return out;
}

}  // namespace sc
