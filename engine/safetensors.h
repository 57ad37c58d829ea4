// safetensors.h: reading and writing the safetensors format.
//
// Layout: 8-byte little-endian header length N, N bytes of JSON (name -> {dtype, shape,
// data_offsets [begin, end)} plus an optional "__metadata__" string map), then the raw
// little-endian row-major bytes. Offsets are relative to the start of the byte buffer.
//
// The reader validates everything before it trusts it and throws sc::Error with the file name
// and the reason on: a file shorter than 8 bytes, a header length that is absurd (> 100 MiB) or
// runs past the end, bad JSON, a non-object header, an unknown dtype, a bad shape, offsets that
// are not two ordered integers, that run past the end of the data, that overlap another tensor,
// or whose size differs from shape x dtype size, or data bytes that no tensor covers.
// The writer writes atomically: a temporary file in the same folder, flushed and fsync'ed, then
// renamed over the target; a failure (e.g. a full disk) leaves the old file intact.
#pragma once
#include <map>
#include <string>

#include "engine/module.h"

namespace sc {

struct SafetensorsFile {
  TensorMap tensors;  // CPU tensors
  std::map<std::string, std::string> metadata;
};

// dtype names: F32 F64 BF16 F16 I64 U8 (also accepted when reading: BOOL as U8).
SafetensorsFile read_safetensors(const std::string& path);
SafetensorsFile parse_safetensors(const std::string& bytes, const std::string& what = "buffer");
void write_safetensors(const std::string& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata = {});
std::string serialize_safetensors(const TensorMap& tensors,
                                  const std::map<std::string, std::string>& metadata = {});

// Write `bytes` to `path` atomically (temp file, fsync, rename). Throws sc::Error on failure,
// leaving any previous file at `path` untouched.
void write_file_atomic(const std::string& path, const std::string& bytes);

}  // namespace sc
