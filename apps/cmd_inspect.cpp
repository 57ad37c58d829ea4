// slotcon inspect: list the tensors of a safetensors file (name, dtype, shape, numel and value
// statistics), or say why the file cannot be read.
#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <exception>
#include <limits>
#include <string>

#include "apps/commands.h"
#include "engine/safetensors.h"

namespace sc {
namespace app {
namespace {

void inspect_usage(FILE* out) {
  std::fprintf(out,
               "usage: slotcon inspect FILE [--values N]\n\n"
               "Read the safetensors file FILE, check it (header, dtypes, shapes, offsets, data\n"
               "coverage) and print its metadata, one line per tensor (name, dtype, shape,\n"
               "numel, min / max / mean over the finite values, and how many are not finite),\n"
               "and the totals.\n\n"
               "  --values N   also print the first N values of every tensor (default 0)\n"
               "  --help       this text\n\n"
               "Exit status: 0 when the file is valid, 1 when it is not (the reason goes to\n"
               "stderr), 2 on a usage error.\n");
}

// Element i of a contiguous CPU tensor as double (exact for every float type and U8; I64 values
// beyond 2^53 are rounded, callers that need exact integers use int_at).
double value_at(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::F32:
      return t.data<float>()[i];
    case DType::F64:
      return t.data<double>()[i];
    case DType::BF16:
      return bf16_bits_to_float(t.data<uint16_t>()[i]);
    case DType::F16:
      return f16_bits_to_float(t.data<uint16_t>()[i]);
    case DType::I64:
      return double(t.data<int64_t>()[i]);
    case DType::U8:
      return t.data<uint8_t>()[i];
  }
  return 0;
}
int64_t int_at(const Tensor& t, int64_t i) {
  return t.dtype() == DType::I64 ? t.data<int64_t>()[i] : int64_t(t.data<uint8_t>()[i]);
}

std::string fmt_value(const Tensor& t, int64_t i) {
  char buf[64];
  if (is_floating(t.dtype()))
    std::snprintf(buf, sizeof buf, "%.6g", value_at(t, i));
  else
    std::snprintf(buf, sizeof buf, "%" PRId64, int_at(t, i));
  return buf;
}

std::string stats(const Tensor& t) {
  const int64_t n = t.numel();
  if (n == 0) return "(empty)";
  char buf[160];
  if (!is_floating(t.dtype())) {
    int64_t lo = std::numeric_limits<int64_t>::max(), hi = std::numeric_limits<int64_t>::min();
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t v = int_at(t, i);
      lo = std::min(lo, v);
      hi = std::max(hi, v);
      sum += double(v);
    }
    std::snprintf(buf, sizeof buf, "min %" PRId64 "  max %" PRId64 "  mean %.6g", lo, hi,
                  sum / double(n));
    return buf;
  }
  double lo = INFINITY, hi = -INFINITY, sum = 0;
  int64_t finite = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double v = value_at(t, i);
    if (!std::isfinite(v)) continue;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
    sum += v;
    ++finite;
  }
  std::string s;
  if (finite > 0) {
    std::snprintf(buf, sizeof buf, "min %.6g  max %.6g  mean %.6g", lo, hi, sum / double(finite));
    s = buf;
  } else {
    s = "no finite values";
  }
  if (finite < n) s += "  non-finite " + std::to_string(n - finite);
  return s;
}

bool parse_count(const std::string& s, int64_t& out) {
  if (s.empty() || s.size() > 18) return false;
  out = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    out = out * 10 + (c - '0');
  }
  return true;
}

}  // namespace

int cmd_inspect(const Args& args) {
  std::string file;
  int64_t show_values = 0;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      inspect_usage(stdout);
      return 0;
    } else if (a == "--values") {
      if (i + 1 >= args.size() || !parse_count(args[i + 1], show_values)) {
        std::fprintf(stderr, "slotcon inspect: --values needs a non-negative integer\n");
        return 2;
      }
      ++i;
    } else if (a.size() > 1 && a[0] == '-') {
      std::fprintf(stderr, "slotcon inspect: unknown option '%s'\n\n", a.c_str());
      inspect_usage(stderr);
      return 2;
    } else if (file.empty()) {
      file = a;
    } else {
      std::fprintf(stderr, "slotcon inspect: one FILE only (got '%s' and '%s')\n\n", file.c_str(),
                   a.c_str());
      inspect_usage(stderr);
      return 2;
    }
  }
  if (file.empty()) {
    std::fprintf(stderr, "slotcon inspect: no FILE given\n\n");
    inspect_usage(stderr);
    return 2;
  }

  SafetensorsFile f;
  try {
    f = read_safetensors(file);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "slotcon inspect: error: %s\n", e.what());
    return 1;
  }

  std::printf("file: %s\n", file.c_str());
  std::printf("metadata: %zu entr%s\n", f.metadata.size(), f.metadata.size() == 1 ? "y" : "ies");
  for (const auto& kv : f.metadata) std::printf("  %s: %s\n", kv.first.c_str(), kv.second.c_str());

  size_t name_w = 4, shape_w = 5;
  for (const auto& kv : f.tensors) {
    name_w = std::max(name_w, kv.first.size());
    shape_w = std::max(shape_w, shape_str(kv.second.shape()).size());
  }
  name_w = std::min<size_t>(name_w, 64);
  shape_w = std::min<size_t>(shape_w, 32);
  std::printf("tensors: %zu\n", f.tensors.size());
  if (!f.tensors.empty())
    std::printf("  %-*s  %-5s  %-*s  %12s  %s\n", int(name_w), "name", "dtype", int(shape_w),
                "shape", "numel", "statistics");
  int64_t total = 0, total_float = 0;
  uint64_t total_bytes = 0;
  for (const auto& kv : f.tensors) {
    const Tensor& t = kv.second;
    const int64_t n = t.numel();
    total += n;
    if (is_floating(t.dtype())) total_float += n;
    total_bytes += uint64_t(n) * dtype_size(t.dtype());
    std::printf("  %-*s  %-5s  %-*s  %12" PRId64 "  %s\n", int(name_w), kv.first.c_str(),
                dtype_name(t.dtype()), int(shape_w), shape_str(t.shape()).c_str(), n,
                stats(t).c_str());
    if (show_values > 0 && n > 0) {
      std::string line = "      values:";
      const int64_t m = std::min(n, show_values);
      for (int64_t i = 0; i < m; ++i) line += " " + fmt_value(t, i);
      if (m < n) line += " ...";
      std::printf("%s\n", line.c_str());
    }
  }
  std::printf("total: %zu tensors, %" PRId64 " elements (%" PRId64
              " in floating-point tensors), %" PRIu64 " bytes of data\n",
              f.tensors.size(), total, total_float, total_bytes);
  return 0;
}

}  // namespace app
}  // namespace sc
