#include "model/batch_file.h"

#include <cmath>

#include "engine/ops.h"

namespace sc {
namespace {

bool all_finite(const Tensor& t) {
  for (double v : t.to_vector())
    if (!std::isfinite(v)) return false;
  return true;
}

}  // namespace

TwoViewBatch batch_from_file(const SafetensorsFile& f, const std::string& what) {
  TwoViewBatch b;
  for (int v = 0; v < 2; ++v) {
    const std::string s = std::to_string(v);
    for (const char* key : {"crops.", "coords.", "flags."})
      SC_CHECK(f.tensors.count(key + s), what, ": batch file has no '", key, s, "'");
    const Tensor crops = f.tensors.at("crops." + s), coords = f.tensors.at("coords." + s),
                 flags = f.tensors.at("flags." + s);
    SC_CHECK(crops.dim() == 4 && crops.size(1) == 3 && crops.size(2) == crops.size(3), what,
             ": crops.", s, " must be (B, 3, S, S), got ", shape_str(crops.shape()));
    SC_CHECK(is_floating(crops.dtype()), what, ": crops.", s, " must be floating, got ",
             dtype_name(crops.dtype()));
    const int64_t B = crops.size(0), S = crops.size(2);
    SC_CHECK(B >= 2, what, ": crops.", s, " holds ", B, " images; a batch needs at least 2");
    SC_CHECK(S >= 32, what, ": crops.", s, " are ", S, " px; at least 32 are needed");
    SC_CHECK(v == 0 || crops.shape() == b.crops[0].shape(), what,
             ": the two views differ in shape (", shape_str(b.crops[0].shape()), " and ",
             shape_str(crops.shape()), ")");
    SC_CHECK(coords.shape() == Shape({B, 4}) && is_floating(coords.dtype()), what, ": coords.", s,
             " must be floating (", B, ", 4), got ", dtype_name(coords.dtype()), " ",
             shape_str(coords.shape()));
    SC_CHECK(flags.shape() == Shape({B}) && flags.dtype() == DType::U8, what, ": flags.", s,
             " must be U8 (", B, "), got ", dtype_name(flags.dtype()), " ",
             shape_str(flags.shape()));
    SC_CHECK(all_finite(crops), what, ": crops.", s, " holds a non-finite value");
    SC_CHECK(all_finite(coords), what, ": coords.", s, " holds a non-finite value");
    for (double x : flags.to_vector())
      SC_CHECK(x == 0 || x == 1, what, ": flags.", s, " must be 0 or 1, found ", x);
    b.crops[v] = crops;
    b.coords[v] = cast(coords, DType::F32);
    b.flags[v] = flags;
  }
  return b;
}

TwoViewBatch read_batch_file(const std::string& path) {
  return batch_from_file(read_safetensors(path), path);
}

void write_batch_file(const std::string& path, const TwoViewBatch& b) {
  TensorMap rec;
  for (int v = 0; v < 2; ++v) {
    const std::string s = std::to_string(v);
    rec["crops." + s] = cast(b.crops[v], DType::F32).to(Device::cpu());
    rec["coords." + s] = b.coords[v].to(Device::cpu());
    rec["flags." + s] = b.flags[v].to(Device::cpu());
  }
  write_safetensors(path, rec);
}

}  // namespace sc
