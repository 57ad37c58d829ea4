// dtype.h: the vocabulary types of the whole project: element types and the activations a fused
// op may apply. Defined at the bottom layer so that kernel launchers can name them; the engine
// re-exports them (engine/dtype.h) and owns their meaning at its interface (engine/nn_ops.h).
#pragma once
#include <cstddef>
#include <cstdint>

namespace sc {

// Compute types: F32, F64 everywhere; BF16, F16 on CUDA (float accumulation) and for storage.
// Storage types: I64 (indices, counters), U8 (masks, flags, images).
enum class DType : uint8_t { F32, F64, BF16, F16, I64, U8 };

// Activation fused into an op's epilogue (batch_norm's act): y = act(z); relu'(0) = 0,
// Gelu the exact erf form.
enum class Act : uint8_t { None, Relu, Gelu };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F64: return 8;
    case DType::BF16: return 2;
    case DType::F16: return 2;
    case DType::I64: return 8;
    case DType::U8: return 1;
  }
  return 0;
}
inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F64: return "F64";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::I64: return "I64";
    case DType::U8: return "U8";
  }
  return "?";
}
inline bool is_floating(DType t) {
  return t == DType::F32 || t == DType::F64 || t == DType::BF16 || t == DType::F16;
}

}  // namespace sc
