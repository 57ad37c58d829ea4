// gpu_test_util.h: what the GPU-vs-CPU tests (tests/gpu) share.
//
// - fresh_seed(): the next seed of test_seed.h (printed once per process, replayable with
//   SLOTCON_TEST_SEED);
// - dtype_tol(t): the per-dtype tolerance of one rounding of a float-accumulated result
//   (F32 1e-5, F64 1e-12, BF16 1e-2, F16 1e-3, absolute and relative);
// - ref_dtype(t): the CPU reference computes F64 in F64 and every other float type in F32 on the
//   same (rounded) input values;
// - PoisonGuard: new allocations are filled with 0xFF bytes (NaN for every float type) while it
//   lives, so an element a kernel forgot to write fails the comparison;
// - twin(): one host tensor in dtype t, copied to a CPU reference and to a CUDA device;
// - mismatch(got, want, tol): "" when every element of `got` is within atol + rtol*|want| of
//   `want` (NaN only where `want` is NaN), else a description of the worst element.
#pragma once
#include <catch2/catch.hpp>
#include <cstdint>
#include <random>
#include <string>

#include "engine/allocator.h"
#include "test_seed.h"
#include "engine/ops.h"
#include "engine/tensor.h"

namespace sc {
namespace testing {

inline uint64_t fresh_seed() {
  return sc::testing::next_seed();
}

struct Tol {
  double atol = 0, rtol = 0;
  Tol scaled(double s) const { return {atol * s, rtol * s}; }
};

inline Tol dtype_tol(DType t) {
  switch (t) {
    case DType::F32:
      return {1e-5, 1e-5};
    case DType::F64:
      return {1e-12, 1e-12};
    case DType::BF16:
      return {1e-2, 1e-2};
    case DType::F16:
      return {1e-3, 1e-3};
    default:
      return {1e-300, 0};  // integers: exact
  }
}

inline bool is_16bit(DType t) { return t == DType::BF16 || t == DType::F16; }
inline DType ref_dtype(DType t) {
  return t == DType::F64 ? DType::F64 : is_floating(t) ? DType::F32 : t;
}

class PoisonGuard {
 public:
  PoisonGuard() : prev_(poison_allocations()) { set_poison_allocations(true); }
  ~PoisonGuard() { set_poison_allocations(prev_); }
  PoisonGuard(const PoisonGuard&) = delete;
  PoisonGuard& operator=(const PoisonGuard&) = delete;

 private:
  bool prev_;
};

struct Twin {
  Tensor cpu;  // reference copy (ref_dtype), on the host
  Tensor gpu;  // same values in the tested dtype, on the device
};

// `host` (any dtype, on the CPU) as a CPU reference tensor and a device tensor of dtype `t`, both
// detached leaves laid out in `fmt`.
inline Twin twin(const Tensor& host, DType t, Device dev = Device::cuda(0),
                 MemoryFormat fmt = MemoryFormat::Contiguous) {
  Tensor in_t = host.dtype() == t ? host : cast(host.detach(), t);
  // clone(): never share storage with the caller's tensor
  return Twin{cast(in_t.detach(), ref_dtype(t)).contiguous(fmt).clone().detach(),
              to_device(in_t.detach(), dev).contiguous(fmt).detach()};
}

inline Twin twin_uniform(const Shape& shape, Generator& gen, DType t, double lo = -1.0,
                         double hi = 1.0, MemoryFormat fmt = MemoryFormat::Contiguous) {
  // Drawn in the tested dtype on the host, so both sides see the same rounded values.
  return twin(rand_uniform(shape, gen, lo, hi, t), t, Device::cuda(0), fmt);
}

inline std::string mismatch(const Tensor& got, const Tensor& want, Tol tol) {
  if (!got.defined() || !want.defined())
    return got.defined() == want.defined() ? "" : "one of the tensors is undefined";
  if (got.shape() != want.shape())
    return str_cat("shape ", shape_str(got.shape()), " != expected ", shape_str(want.shape()));
  CompareResult r = compare(got, want, tol.atol, tol.rtol);
  if (r.nonfinite == 0 && r.max_scaled <= 1.0) return "";
  std::vector<double> g = got.to_vector(), w = want.to_vector();
  const size_t i = size_t(r.worst_index);
  return str_cat("worst element ", i, " of ", g.size(), " (shape ", shape_str(got.shape()),
                 "): got ", g[i], ", expected ", w[i], "; max |diff| ", r.max_abs,
                 ", max |diff| / (atol + rtol |expected|) = ", r.max_scaled, " (atol ", tol.atol,
                 ", rtol ", tol.rtol, "), ", r.nonfinite, " non-finite mismatches");
}

}  // namespace testing
}  // namespace sc

// Every element of `got` within `tol` of `want`; the failure message names the worst element.
#define SC_CHECK_CLOSE(got, want, tol)                                        \
  do {                                                                        \
    const std::string sc_mismatch_ = ::sc::testing::mismatch(got, want, tol); \
    INFO(sc_mismatch_);                                                       \
    CHECK(sc_mismatch_.empty());                                              \
  } while (0)
