// safetensors: bit-exact round trips of every dtype, the layout the writer produces, a file in
// the reference writer's field order, every kind of malformed file (each an sc::Error naming the
// file and the reason), atomic writes that leave the old file on failure, and random corruption.
#include <dirent.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>

#include "engine/ops.h"
#include "engine/safetensors.h"

using namespace sc;
using Catch::Matchers::Contains;

namespace {

// A fresh directory under /tmp, removed (with its files) at the end of the test.
struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/slotcon_st_XXXXXX";
    REQUIRE(mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    for (const std::string& f : files()) std::remove((path + "/" + f).c_str());
    rmdir(path.c_str());
  }
  std::vector<std::string> files() const {
    std::vector<std::string> r;
    if (DIR* d = opendir(path.c_str())) {
      while (dirent* e = readdir(d)) {
        std::string n = e->d_name;
        if (n != "." && n != "..") r.push_back(n);
      }
      closedir(d);
    }
    return r;
  }
  std::string file(const std::string& name) const { return path + "/" + name; }
};

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}
void write_raw(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

std::string le64(uint64_t n) {
  std::string s;
  for (int i = 0; i < 8; ++i) s.push_back(char((n >> (8 * i)) & 0xff));
  return s;
}
// A file with the given header text and `data_bytes` bytes of data (values 0, 1, 2, ...).
std::string make_file(const std::string& header, size_t data_bytes) {
  std::string data(data_bytes, '\0');
  for (size_t i = 0; i < data_bytes; ++i) data[i] = char(i);
  return le64(header.size()) + header + data;
}

// The sc::Error message of parsing `bytes`, or "<no error>". Any other exception escapes and
// fails the test.
std::string parse_error(const std::string& bytes) {
  try {
    parse_safetensors(bytes, "bad.safetensors");
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

template <class T>
Tensor tensor_of(const std::vector<T>& raw, const Shape& shape, DType dt) {
  Tensor t = empty(shape, dt);
  REQUIRE(size_t(t.numel()) == raw.size());
  REQUIRE(sizeof(T) == dtype_size(dt));
  if (!raw.empty()) std::memcpy(t.data_ptr(), raw.data(), raw.size() * sizeof(T));
  return t;
}

std::string raw_bytes(const Tensor& t) {
  Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()),
                     size_t(c.numel()) * dtype_size(c.dtype()));
}

// Every tensor of `a` is in `b` with the same dtype, shape and bytes, and nothing else is.
void check_same_tensors(const TensorMap& a, const TensorMap& b) {
  REQUIRE(a.size() == b.size());
  for (const auto& kv : a) {
    INFO("tensor " << kv.first);
    auto it = b.find(kv.first);
    REQUIRE(it != b.end());
    CHECK(it->second.dtype() == kv.second.dtype());
    CHECK(it->second.shape() == kv.second.shape());
    CHECK(it->second.device().is_cpu());
    CHECK(raw_bytes(it->second) == raw_bytes(kv.second));
  }
}

TensorMap every_dtype() {
  const float f_inf = std::numeric_limits<float>::infinity();
  const double d_inf = std::numeric_limits<double>::infinity();
  TensorMap m;
  m["f32"] = tensor_of<float>({0.f, -0.f, 1.5f, -3.25e-39f /* denormal */, f_inf, -f_inf,
                               std::numeric_limits<float>::quiet_NaN(), 3.4028235e38f},
                              {2, 4}, DType::F32);
  m["f64"] = tensor_of<double>(
      {1.0 / 3.0, -0.0, 4.9e-324, d_inf, -1e308, std::numeric_limits<double>::quiet_NaN()},
      {3, 1, 2}, DType::F64);
  // Raw 16-bit patterns, including NaN payloads, infinities, denormals and -0.
  m["bf16"] = tensor_of<uint16_t>({0x0000, 0x8000, 0x3f80, 0x7f80, 0xff80, 0x7fc1, 0x0001, 0xabcd},
                                  {8}, DType::BF16);
  m["f16"] = tensor_of<uint16_t>({0x3c00, 0x8000, 0x7c00, 0xfc00, 0x7e01, 0x0001, 0x7bff, 0x1234},
                                 {2, 2, 2}, DType::F16);
  m["i64"] = tensor_of<int64_t>({std::numeric_limits<int64_t>::min(),
                                 std::numeric_limits<int64_t>::max(), -1, 0, 9007199254740993},
                                {5}, DType::I64);
  std::vector<uint8_t> bytes(256);
  for (int i = 0; i < 256; ++i) bytes[i] = uint8_t(i);
  m["u8"] = tensor_of<uint8_t>(bytes, {16, 16}, DType::U8);
  m["scalar"] = tensor_of<float>({2.5f}, {}, DType::F32);       // 0-d
  m["empty"] = tensor_of<float>({}, {0, 3}, DType::F32);        // 0-sized
  m["empty_i64"] = tensor_of<int64_t>({}, {4, 0}, DType::I64);  // 0-sized
  m["layer1.0.bn1.num_batches_tracked"] = tensor_of<int64_t>({7}, {}, DType::I64);
  return m;
}

}  // namespace

TEST_CASE("safetensors: every dtype round-trips bit-exactly through a file") {
  TempDir dir;
  TensorMap m = every_dtype();
  std::map<std::string, std::string> meta{{"format", "pt"}, {"note", "é \"quoted\"\n"}};
  const std::string path = dir.file("all.safetensors");
  write_safetensors(path, m, meta);
  SafetensorsFile f = read_safetensors(path);
  check_same_tensors(m, f.tensors);
  CHECK(f.metadata == meta);
  // Only the final file is left: no temporary files.
  CHECK(dir.files() == std::vector<std::string>{"all.safetensors"});
  // Serializing what was read gives the same bytes (deterministic writer).
  CHECK(serialize_safetensors(f.tensors, f.metadata) == read_all(path));
}

TEST_CASE("safetensors: the writer's layout (sorted keys, key-ordered data, 8-byte padding)") {
  Generator g(3);
  TensorMap m;
  m["zeta"] = randn({3}, g);
  m["alpha"] = randn({2, 2}, g, DType::F64);
  m["mid"] = full({5}, 1.0, DType::U8);
  const std::string bytes = serialize_safetensors(m, {{"k", "v"}});
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(bytes[size_t(i)]);
  REQUIRE(8 + n <= bytes.size());
  CHECK((8 + n) % 8 == 0);
  const std::string header = bytes.substr(8, size_t(n));
  const size_t last = header.find_last_not_of(' ');
  CHECK(header[last] == '}');
  CHECK(header.size() - last - 1 < 8);  // padding: spaces only, fewer than 8
  nlohmann::json j = nlohmann::json::parse(header);
  std::vector<std::string> keys;
  for (auto it = j.begin(); it != j.end(); ++it) keys.push_back(it.key());
  CHECK(keys == std::vector<std::string>{"__metadata__", "alpha", "mid", "zeta"});
  CHECK(j["alpha"]["data_offsets"] == nlohmann::json({0, 32}));
  CHECK(j["mid"]["data_offsets"] == nlohmann::json({32, 37}));
  CHECK(j["zeta"]["data_offsets"] == nlohmann::json({37, 49}));
  CHECK(j["alpha"]["dtype"] == "F64");
  CHECK(j["mid"]["shape"] == nlohmann::json({5}));
  CHECK(bytes.size() == 8 + n + 49);
  // The data is the raw little-endian bytes, in key order.
  CHECK(bytes.substr(size_t(8 + n), 32) == raw_bytes(m["alpha"]));
  CHECK(bytes.substr(size_t(8 + n + 37), 12) == raw_bytes(m["zeta"]));
}

TEST_CASE("safetensors: strided views and F64 values are written in logical row-major order") {
  Tensor base = from_vector({0, 1, 2, 3, 4, 5}, {2, 3}, DType::F32);
  Tensor tr = transpose(base, 0, 1);  // (3, 2), not contiguous
  REQUIRE_FALSE(tr.is_contiguous());
  SafetensorsFile f = parse_safetensors(serialize_safetensors({{"t", tr}}));
  const Tensor& t = f.tensors.at("t");
  CHECK(t.shape() == Shape{3, 2});
  CHECK(t.to_vector() == std::vector<double>{0, 3, 1, 4, 2, 5});
  // A tensor that requires grad is written by value, without touching its graph.
  Tensor p = from_vector({1, 2}, {2}).set_requires_grad(true);
  CHECK(parse_safetensors(serialize_safetensors({{"p", p}})).tensors.at("p").to_vector() ==
        std::vector<double>{1, 2});
}

TEST_CASE("safetensors: a file in the reference writer's field order is read") {
  // As safetensors' own serializer lays it out: metadata first, fields dtype/shape/data_offsets,
  // BOOL accepted as U8, tensors in any key order, header padded with spaces.
  std::string header =
      R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("m":{"dtype":"BOOL","shape":[3],"data_offsets":[8,11]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string data;
  const float w[2] = {1.0f, -2.5f};
  data.append(reinterpret_cast<const char*>(w), 8);
  data += std::string("\x01\x00\x01", 3);
  SafetensorsFile f = parse_safetensors(le64(header.size()) + header + data);
  CHECK(f.metadata.at("format") == "pt");
  CHECK(f.tensors.at("w").to_vector() == std::vector<double>{1.0, -2.5});
  CHECK(f.tensors.at("m").dtype() == DType::U8);
  CHECK(f.tensors.at("m").to_vector() == std::vector<double>{1, 0, 1});
  // An empty file with just "{}" is valid and holds nothing.
  CHECK(parse_safetensors(make_file("{}      ", 0)).tensors.empty());
}

TEST_CASE("safetensors: malformed files give sc::Error naming the file and the reason") {
  const std::string ok_entry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  struct Case {
    const char* what;
    std::string bytes;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {"empty file", "", "too short"},
      {"7 bytes", std::string(7, '\x01'), "too short"},
      {"absurd header length", le64(uint64_t(1) << 60) + "{}", "absurd"},
      {"header length just over the cap", le64((100ull << 20) + 1) + "{}", "absurd"},
      {"header length past the end", le64(100) + std::string(50, ' '), "runs past the end"},
      {"zero header length", le64(0), "empty"},
      {"bad JSON", make_file("{not json", 0), "not valid JSON"},
      {"truncated JSON", make_file(R"({"a":{"dtype":"F32")", 0), "not valid JSON"},
      {"JSON array", make_file("[1, 2]", 0), "not an object"},
      {"JSON number", make_file("42", 0), "not an object"},
      {"entry not an object", make_file(R"({"a":3})", 0), "entry is not an object"},
      {"missing dtype", make_file(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", 8), "dtype"},
      {"unknown dtype", make_file(R"({"a":{"dtype":"F8","shape":[2],"data_offsets":[0,2]}})", 2),
       "unknown dtype"},
      {"negative shape", make_file(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4),
       "non-negative integer"},
      {"fractional shape",
       make_file(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8),
       "non-negative integer"},
      {"string shape", make_file(R"({"a":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", 8),
       "non-negative integer"},
      {"shape not an array",
       make_file(R"({"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", 8), "shape"},
      {"shape product overflows",
       make_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,8]}})",
                 8),
       "too large"},
      {"shape larger than the file",
       make_file(R"({"a":{"dtype":"F64","shape":[1000000,1000000],"data_offsets":[0,8]}})", 8),
       "needs 8000000000000"},
      {"offsets not a pair",
       make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8), "pair"},
      {"offsets a triple",
       make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}})", 8), "pair"},
      {"offsets missing", make_file(R"({"a":{"dtype":"F32","shape":[2]}})", 8), "pair"},
      {"negative offset",
       make_file(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[-8,-8]}})", 8),
       "non-negative integers"},
      {"reversed offsets",
       make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8), "reversed"},
      {"offsets past the end",
       make_file(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8), "past the end"},
      {"size does not match shape",
       make_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), "needs 12"},
      {"overlapping tensors",
       make_file("{" + ok_entry + R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
       "overlaps"},
      {"gap between tensors",
       make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                 R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                 12),
       "not covered"},
      {"uncovered trailing bytes", make_file("{" + ok_entry + "}", 12), "not covered"},
      {"duplicate name", make_file("{" + ok_entry + "," + ok_entry + "}", 8), "twice"},
      {"metadata not an object", make_file(R"({"__metadata__":[1]})", 0), "__metadata__"},
      {"metadata value not a string", make_file(R"({"__metadata__":{"epoch":3}})", 0),
       "not a string"},
  };
  for (const Case& c : cases) {
    INFO("case: " << c.what);
    const std::string msg = parse_error(c.bytes);
    CHECK_THAT(msg, Contains("bad.safetensors") && Contains(c.expect));
  }
}

TEST_CASE("safetensors: read errors name the path (missing file, directory, bad file)") {
  TempDir dir;
  CHECK_THROWS_MATCHES(read_safetensors(dir.file("nope.safetensors")), Error,
                       Catch::Matchers::Predicate<Error>([](const Error& e) {
                         std::string m = e.what();
                         return m.find("nope.safetensors") != std::string::npos &&
                                m.find("cannot open") != std::string::npos;
                       }));
  CHECK_THROWS_AS(read_safetensors(dir.path), Error);
  write_raw(dir.file("short.safetensors"), "abc");
  try {
    read_safetensors(dir.file("short.safetensors"));
    FAIL("no error");
  } catch (const Error& e) {
    CHECK_THAT(std::string(e.what()), Contains("short.safetensors") && Contains("too short"));
  }
}

TEST_CASE("safetensors: the writer refuses what it cannot represent") {
  CHECK_THROWS_AS(serialize_safetensors({{"__metadata__", zeros({1})}}), Error);
  CHECK_THROWS_AS(serialize_safetensors({{"x", Tensor()}}), Error);
  CHECK_THROWS_AS(serialize_safetensors({{"", zeros({1})}}), Error);
}

TEST_CASE("write_file_atomic: a failed write leaves the old file and no temporary file") {
  TempDir dir;
  const std::string path = dir.file("state.safetensors");
  const std::string old_bytes = serialize_safetensors({{"w", full({4}, 1.0)}});
  write_file_atomic(path, old_bytes);
  REQUIRE(read_all(path) == old_bytes);

  // Target in a directory that does not exist / cannot hold files.
  CHECK_THROWS_AS(write_file_atomic(dir.file("no/such/dir/x.safetensors"), "data"), Error);
  CHECK_THROWS_AS(write_file_atomic("/proc/slotcon_cannot_write_here", "data"), Error);
  // Target is a directory: the rename fails after the data was written; the temp file goes.
  REQUIRE(mkdir(dir.file("subdir").c_str(), 0755) == 0);
  try {
    write_file_atomic(dir.file("subdir"), "data");
    FAIL("no error");
  } catch (const Error& e) {
    CHECK_THAT(std::string(e.what()), Contains("rename"));
  }
  rmdir(dir.file("subdir").c_str());

  // "Disk full" in the middle of the data: a file-size limit makes write() fail with EFBIG.
  // Done in a child process so the limit does not leak into this one.
  const std::string big(1 << 20, 'x');
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim {
      4096, 4096
    };
    setrlimit(RLIMIT_FSIZE, &lim);
    int code = 3;
    try {
      write_file_atomic(path, big);
      code = 0;  // no error: wrong
    } catch (const Error& e) {
      code = std::string(e.what()).find("write failed") != std::string::npos ? 1 : 2;
    } catch (...) {
      code = 4;
    }
    _exit(code);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 1);

  // After all of that, the old file is intact and it is the only file in the folder.
  CHECK(read_all(path) == old_bytes);
  CHECK(dir.files() == std::vector<std::string>{"state.safetensors"});
  // A successful write replaces it.
  write_file_atomic(path, "new");
  CHECK(read_all(path) == "new");
  CHECK(dir.files() == std::vector<std::string>{"state.safetensors"});
}

TEST_CASE("safetensors: random corruption either parses consistently or throws sc::Error") {
  Generator g(11);
  TensorMap m;
  m["a.weight"] = randn({3, 4}, g);
  m["a.bias"] = randn({4}, g, DType::BF16);
  m["n"] = full({}, 5, DType::I64);
  m["e"] = empty({0}, DType::F16);
  const std::string good = serialize_safetensors(m, {{"k", "v"}});
  std::mt19937_64 rng(12345);
  const size_t data_start = 8 + (uint8_t(good[0]) | (uint8_t(good[1]) << 8));
  int parsed = 0, rejected = 0, data_only = 0;
  for (int iter = 0; iter < 600; ++iter) {
    std::string b = good;
    const int kind = iter % 4;
    bool in_data = false;  // every change is in the tensor bytes: the file must still parse
    if (kind == 0) {  // flip 1..4 random bytes anywhere
      in_data = true;
      for (int k = 0, n = 1 + int(rng() % 4); k < n; ++k) {
        const size_t at = rng() % b.size();
        b[at] ^= char(1 + rng() % 255);
        in_data = in_data && at >= data_start;
      }
      data_only += in_data;
    } else if (kind == 1) {  // flip a byte of the header (JSON text and length)
      const size_t hl = 8 + (uint8_t(good[0]) | (uint8_t(good[1]) << 8));
      b[rng() % hl] = char(rng() % 256);
    } else if (kind == 2) {  // truncate
      b.resize(rng() % b.size());
    } else {  // set one header-length byte to a random value
      b[rng() % 8] = char(rng() % 256);
    }
    try {
      SafetensorsFile f = parse_safetensors(b, "fuzz");
      ++parsed;
      // Whatever parsed must describe exactly the bytes after the header.
      uint64_t n = 0;
      for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(b[size_t(i)]);
      uint64_t sum = 0;
      for (auto& kv : f.tensors) sum += uint64_t(kv.second.numel()) * dtype_size(kv.second.dtype());
      CHECK(sum == b.size() - 8 - n);
    } catch (const Error& e) {
      ++rejected;
      CHECK_THAT(std::string(e.what()), Contains("fuzz"));
      CHECK_FALSE(in_data);  // a change of tensor values alone is no reason to refuse a file
    }
  }
  CHECK(rejected > 300);  // most corruptions are caught
  CHECK(parsed > 0);
  CHECK(data_only > 5);  // the data-only case above was exercised (11 times with this seed)
}
