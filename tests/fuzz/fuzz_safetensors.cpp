// Fuzz target: safetensors bytes, as `slotcon train --resume / --init / --batch-file`,
// `slotcon inspect` and `slotcon slots` read them. Checks: parse_safetensors either throws sc::Error
// or returns tensors that cover exactly the data bytes and survive a write/read round trip
// bit for bit; a parsed file then goes through the checkpoint validation, the batch-file
// validation and a strict load into a small module, each of which may only throw sc::Error.
#include <cstring>
#include <string>

#include "engine/module.h"
#include "engine/ops.h"
#include "engine/safetensors.h"
#include "model/batch_file.h"
#include "model/checkpoint.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

// Two linear layers: "0.weight" (3, 2), "0.bias" (3), "1.weight" (2, 3).
sc::Module& small_module() {
  static sc::Module* m = [] {
    auto* root = new sc::Module();
    root->register_module("0", std::make_shared<sc::Linear>(2, 3, true));
    root->register_module("1", std::make_shared<sc::Linear>(3, 2, false));
    return root;
  }();
  return *m;
}

bool same_bytes(const sc::Tensor& a, const sc::Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  const size_t n = size_t(a.numel()) * sc::dtype_size(a.dtype());
  return n == 0 || std::memcmp(a.contiguous().data_ptr(), b.contiguous().data_ptr(), n) == 0;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  sc::SafetensorsFile f;
  try {
    f = sc::parse_safetensors(bytes, "fuzz input");
  } catch (const sc::Error&) {
    return 0;
  }
  // The tensors cover exactly the bytes after the header.
  FUZZ_CHECK(size >= 8);
  uint64_t header = 0;
  for (int i = 7; i >= 0; --i) header = (header << 8) | data[i];
  uint64_t covered = 0;
  for (const auto& kv : f.tensors)
    covered += uint64_t(kv.second.numel()) * sc::dtype_size(kv.second.dtype());
  FUZZ_CHECK(covered == size - 8 - header);
  // What parsed writes and reads back unchanged.
  sc::SafetensorsFile g = sc::parse_safetensors(sc::serialize_safetensors(f.tensors, f.metadata));
  FUZZ_CHECK(g.metadata == f.metadata && g.tensors.size() == f.tensors.size());
  for (const auto& kv : f.tensors) {
    auto it = g.tensors.find(kv.first);
    FUZZ_CHECK(it != g.tensors.end() && same_bytes(kv.second, it->second));
  }
  try {
    sc::checkpoint_from_file(f, "fuzz input");
  } catch (const sc::Error&) {
  }
  try {
    sc::batch_from_file(f, "fuzz input");
  } catch (const sc::Error&) {
  }
  try {
    small_module().load_state_dict(f.tensors, /*strict=*/true);
  } catch (const sc::Error&) {
  }
  return 0;
}
