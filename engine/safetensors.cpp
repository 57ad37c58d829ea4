// safetensors.cpp: a validating reader and an atomic writer for the safetensors format.
#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "engine/autograd.h"

namespace sc {

namespace {

using json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // 100 MiB, as the reference implementation
constexpr size_t kMaxRank = 64;

bool host_is_little_endian() {
  const uint16_t one = 1;
  uint8_t b;
  std::memcpy(&b, &one, 1);
  return b == 1;
}

[[noreturn]] void fail(const std::string& what, const std::string& why) {
  throw Error(str_cat(what, ": ", why));
}

bool parse_dtype(const std::string& s, DType& out) {
  static const std::pair<const char*, DType> kNames[] = {
      {"F32", DType::F32}, {"F64", DType::F64}, {"BF16", DType::BF16}, {"F16", DType::F16},
      {"I64", DType::I64}, {"U8", DType::U8},   {"BOOL", DType::U8}};
  for (const auto& kv : kNames)
    if (s == kv.first) {
      out = kv.second;
      return true;
    }
  return false;
}

// A non-negative JSON integer that fits in uint64_t, or false.
bool as_u64(const json& j, uint64_t& out) {
  if (j.is_number_unsigned()) {
    out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer()) {
    int64_t v = j.get<int64_t>();
    if (v < 0) return false;
    out = uint64_t(v);
    return true;
  }
  return false;
}

std::string describe(const json& j) {
  std::string s = j.dump();
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;
};

std::string errno_str(int e) { return std::strerror(e); }

}  // namespace

// ---------------------------------------------------------------- reading
SafetensorsFile parse_safetensors(const std::string& bytes, const std::string& what) {
  SC_CHECK(host_is_little_endian(), "safetensors: only little-endian hosts are supported");
  const uint64_t total = bytes.size();
  if (total < 8)
    fail(what, str_cat("the file is ", total,
                       " bytes long, too short for the 8-byte header "
                       "length of the safetensors format"));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(bytes[size_t(i)]);
  // Both checks before anything of size n is allocated.
  if (n > kMaxHeaderBytes)
    fail(what, str_cat("the header length ", n, " is absurd (more than ", kMaxHeaderBytes,
                       " bytes); this is not a safetensors file"));
  if (n > total - 8)
    fail(what,
         str_cat("the header length ", n, " runs past the end of the file (", total, " bytes)"));
  if (n == 0) fail(what, "the header is empty");
  const uint64_t data_size = total - 8 - n;
  const char* hdr_begin = bytes.data() + 8;

  // Parse; reject duplicate top-level names (a JSON parser would silently keep the last).
  json header;
  std::string duplicate;
  try {
    std::set<std::string> top_keys;
    json::parser_callback_t cb = [&](int depth, json::parse_event_t ev, json& parsed) {
      if (ev == json::parse_event_t::key && depth == 1) {
        const std::string& k = parsed.get_ref<const std::string&>();
        if (!top_keys.insert(k).second && duplicate.empty()) duplicate = k;
      }
      return true;
    };
    header = json::parse(hdr_begin, hdr_begin + n, cb);
  } catch (const json::exception& e) {
    fail(what, str_cat("the header is not valid JSON (", e.what(), ")"));
  }
  if (!duplicate.empty()) fail(what, str_cat("the header names '", duplicate, "' twice"));
  if (!header.is_object())
    fail(what, str_cat("the header is a JSON ", header.type_name(), ", not an object"));

  SafetensorsFile out;
  std::vector<Entry> entries;
  try {
    for (auto it = header.begin(); it != header.end(); ++it) {
      const std::string& name = it.key();
      const json& v = it.value();
      if (name == "__metadata__") {
        if (!v.is_object()) fail(what, "__metadata__ is not an object");
        for (auto m = v.begin(); m != v.end(); ++m) {
          if (!m.value().is_string())
            fail(what, str_cat("__metadata__ value for '", m.key(),
                               "' is not a string: ", describe(m.value())));
          out.metadata[m.key()] = m.value().get<std::string>();
        }
        continue;
      }
      const std::string where = str_cat("tensor '", name, "'");
      if (!v.is_object()) fail(what, str_cat(where, ": entry is not an object: ", describe(v)));
      Entry e;
      e.name = name;
      auto dt = v.find("dtype");
      if (dt == v.end() || !dt->is_string())
        fail(what, str_cat(where, ": missing or non-string \"dtype\""));
      if (!parse_dtype(dt->get<std::string>(), e.dtype))
        fail(what, str_cat(where, ": unknown dtype ", describe(*dt),
                           " (supported: F32 F64 BF16 F16 I64 U8 BOOL)"));
      auto sh = v.find("shape");
      if (sh == v.end() || !sh->is_array())
        fail(what, str_cat(where, ": missing or non-array \"shape\""));
      if (sh->size() > kMaxRank)
        fail(what,
             str_cat(where, ": shape has ", sh->size(), " dimensions (at most ", kMaxRank, ")"));
      bool has_zero = false;
      for (const json& d : *sh) {
        uint64_t u;
        if (!as_u64(d, u) || u > uint64_t(std::numeric_limits<int64_t>::max()))
          fail(what, str_cat(where, ": shape ", describe(*sh),
                             " has an entry that is not a non-negative integer: ", describe(d)));
        if (u == 0) has_zero = true;
        e.shape.push_back(int64_t(u));
      }
      // numel, overflow-safe: the product of the non-zero dimensions (what strides are computed
      // from, even for an empty tensor) must stay below 2^60, so that bytes = numel x dtype
      // size fits in 63 bits.
      uint64_t numel = 1;
      for (int64_t d : e.shape) {
        if (d == 0) continue;
        if (uint64_t(d) > (uint64_t(1) << 60) / numel)
          fail(what, str_cat(where, ": shape ", describe(*sh), " is too large"));
        numel *= uint64_t(d);
      }
      const uint64_t nbytes = has_zero ? 0 : numel * dtype_size(e.dtype);
      auto off = v.find("data_offsets");
      if (off == v.end() || !off->is_array() || off->size() != 2)
        fail(what, str_cat(where, ": \"data_offsets\" must be a pair [begin, end], got ",
                           off == v.end() ? std::string("nothing") : describe(*off)));
      if (!as_u64((*off)[0], e.begin) || !as_u64((*off)[1], e.end))
        fail(what,
             str_cat(where, ": data_offsets ", describe(*off), " are not non-negative integers"));
      if (e.begin > e.end)
        fail(what, str_cat(where, ": data_offsets ", describe(*off), " are reversed"));
      if (e.end > data_size)
        fail(what, str_cat(where, ": data_offsets ", describe(*off),
                           " run past the end of the data (", data_size, " bytes)"));
      if (e.end - e.begin != nbytes)
        fail(what, str_cat(where, ": data_offsets ", describe(*off), " span ", e.end - e.begin,
                           " bytes but shape ", describe(*sh), " of ", dtype_name(e.dtype),
                           " needs ", nbytes));
      entries.push_back(std::move(e));
    }
  } catch (const json::exception& e) {  // defensive: any JSON access error is a bad file
    fail(what, str_cat("malformed header (", e.what(), ")"));
  }

  // The tensors must tile the data exactly: no overlap, no gap, nothing after the last one.
  std::vector<const Entry*> order;
  for (const Entry& e : entries) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const Entry* x, const Entry* y) {
    return x->begin != y->begin ? x->begin < y->begin : x->end < y->end;
  });
  uint64_t pos = 0;
  const Entry* prev = nullptr;
  for (const Entry* e : order) {
    if (e->begin < pos)
      fail(what,
           str_cat("tensor '", e->name, "' (bytes ", e->begin, "..", e->end, ") overlaps tensor '",
                   prev->name, "' (bytes ", prev->begin, "..", prev->end, ")"));
    if (e->begin > pos)
      fail(what, str_cat("data bytes ", pos, "..", e->begin, " are not covered by any tensor"));
    pos = e->end;
    prev = e;
  }
  if (pos != data_size)
    fail(what, str_cat("data bytes ", pos, "..", data_size,
                       " at the end of the file are not covered by any tensor"));

  const char* data = bytes.data() + 8 + n;
  for (const Entry& e : entries) {
    Tensor t = empty(e.shape, e.dtype, Device::cpu());
    if (e.end > e.begin) std::memcpy(t.data_ptr(), data + e.begin, size_t(e.end - e.begin));
    out.tensors.emplace(e.name, t);
  }
  return out;
}

SafetensorsFile read_safetensors(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, str_cat("cannot open: ", errno_str(errno)));
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0) fail(path, str_cat("cannot stat: ", errno_str(errno)));
  if (!S_ISREG(st.st_mode)) fail(path, "not a regular file");
  std::string bytes;
  bytes.resize(size_t(st.st_size));
  size_t got = 0;
  while (got < bytes.size()) {
    ssize_t r = ::read(fd, &bytes[got], bytes.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) fail(path, str_cat("read failed: ", errno_str(errno)));
    if (r == 0) break;  // the file shrank while we read it
    got += size_t(r);
  }
  bytes.resize(got);
  return parse_safetensors(bytes, path);
}

// ---------------------------------------------------------------- writing
std::string serialize_safetensors(const TensorMap& tensors,
                                  const std::map<std::string, std::string>& metadata) {
  SC_CHECK(host_is_little_endian(), "safetensors: only little-endian hosts are supported");
  json header = json::object();
  if (!metadata.empty()) {
    json m = json::object();
    for (const auto& kv : metadata) m[kv.first] = kv.second;
    header["__metadata__"] = m;
  }
  std::vector<Tensor> host;  // contiguous CPU copies, in key order
  uint64_t offset = 0;
  {
    NoGradGuard ng;
    for (const auto& kv : tensors) {
      SC_CHECK(!kv.first.empty(), "write_safetensors: empty tensor name");
      SC_CHECK(kv.first != "__metadata__",
               "write_safetensors: '__metadata__' is reserved and cannot name a tensor");
      SC_CHECK(kv.second.defined(), "write_safetensors: tensor '", kv.first, "' is undefined");
      Tensor t = kv.second.detach();
      if (!t.device().is_cpu()) t = t.to(Device::cpu());
      t = t.contiguous();
      const uint64_t nbytes = uint64_t(t.numel()) * dtype_size(t.dtype());
      header[kv.first] = {{"dtype", dtype_name(t.dtype())},
                          {"shape", t.shape()},
                          {"data_offsets", {offset, offset + nbytes}}};
      offset += nbytes;
      host.push_back(t);
    }
  }
  std::string h;
  try {
    h = header.dump();
  } catch (const json::exception& e) {
    throw Error(str_cat("write_safetensors: a tensor name or metadata value is not valid UTF-8 (",
                        e.what(), ")"));
  }
  h.append((8 - h.size() % 8) % 8, ' ');  // the data starts 8-byte aligned
  std::string out;
  out.reserve(8 + h.size() + size_t(offset));
  const uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) out.push_back(char((n >> (8 * i)) & 0xff));
  out += h;
  for (const Tensor& t : host) {
    const size_t nb = size_t(t.numel()) * dtype_size(t.dtype());
    if (nb) out.append(static_cast<const char*>(t.data_ptr()), nb);
  }
  return out;
}

void write_safetensors(const std::string& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata) {
  write_file_atomic(path, serialize_safetensors(tensors, metadata));
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  SC_CHECK(!path.empty(), "write_file_atomic: empty path");
  const size_t slash = path.find_last_of('/');
  const std::string dir =
      slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  SC_CHECK(!base.empty(), "write_file_atomic: '", path, "' names a directory, not a file");

  // A fresh temporary name in the same directory (same filesystem, so rename is atomic).
  static std::atomic<uint64_t> counter{0};
  std::random_device rd;
  std::string tmp;
  int fd = -1;
  for (int attempt = 0; attempt < 100 && fd < 0; ++attempt) {
    tmp = str_cat(dir, "/.", base, ".tmp.", ::getpid(), ".", counter++, ".", rd() % 1000000);
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && errno != EEXIST) break;
  }
  if (fd < 0)
    fail(path, str_cat("cannot create a temporary file in '", dir, "': ", errno_str(errno)));

  auto abandon = [&](const std::string& why) {
    const int e = errno;
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    fail(path, str_cat(why, ": ", errno_str(e), " (the previous file, if any, is unchanged)"));
  };
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t w = ::write(fd, bytes.data() + done, std::min<size_t>(bytes.size() - done, 1 << 30));
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) abandon("write failed");
    if (w == 0) {
      errno = ENOSPC;
      abandon("write made no progress");
    }
    done += size_t(w);
  }
  if (::fsync(fd) != 0) abandon("fsync failed");
  const int rc = ::close(fd);
  fd = -1;
  if (rc != 0) abandon("close failed");
  if (::rename(tmp.c_str(), path.c_str()) != 0) abandon("rename failed");
  // Make the rename itself durable; best effort (some filesystems refuse to fsync a directory).
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace sc
