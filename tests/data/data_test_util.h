// Helpers shared by the data tests: a self-removing temporary folder, a minimal PNG writer for the
// formats stb_image_write cannot produce (16-bit), and byte-level helpers to damage files.
#pragma once
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace sc {
namespace data {
namespace testing {

class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("slotcon_data_test_" + std::to_string(::getpid()) + "_" +
             std::to_string(counter.fetch_add(1)));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string path() const { return path_.string(); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

inline void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

inline uint32_t crc32(const uint8_t* p, size_t n, uint32_t crc = 0) {
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) {
    crc ^= p[i];
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

inline void put_be32(std::vector<uint8_t>* v, uint32_t x) {
  v->push_back(uint8_t(x >> 24));
  v->push_back(uint8_t(x >> 16));
  v->push_back(uint8_t(x >> 8));
  v->push_back(uint8_t(x));
}

inline void png_chunk(std::vector<uint8_t>* out, const char type[4],
                      const std::vector<uint8_t>& d) {
  put_be32(out, uint32_t(d.size()));
  std::vector<uint8_t> td(type, type + 4);
  td.insert(td.end(), d.begin(), d.end());
  out->insert(out->end(), td.begin(), td.end());
  put_be32(out, crc32(td.data(), td.size()));
}

// A PNG with stored (uncompressed) deflate blocks. color_type: 0 gray, 2 RGB, 4 gray+alpha,
// 6 RGBA; bit_depth 8 or 16; `samples` are row-major, channels interleaved, one value per
// sample (0..255 or 0..65535).
inline std::vector<uint8_t> make_png(int w, int h, int color_type, int bit_depth,
                                     const std::vector<uint16_t>& samples) {
  const int ch = color_type == 0 ? 1 : color_type == 2 ? 3 : color_type == 4 ? 2 : 4;
  const int bps = bit_depth / 8;
  std::vector<uint8_t> raw;
  for (int y = 0; y < h; ++y) {
    raw.push_back(0);  // filter: none
    for (int i = 0; i < w * ch; ++i) {
      const uint16_t s = samples[size_t(y) * w * ch + i];
      if (bps == 2) raw.push_back(uint8_t(s >> 8));
      raw.push_back(uint8_t(s & 0xFF));
    }
  }
  // zlib stream: header, stored blocks, Adler-32.
  std::vector<uint8_t> z = {0x78, 0x01};
  size_t pos = 0;
  do {
    const size_t len = std::min<size_t>(65535, raw.size() - pos);
    const bool last = pos + len == raw.size();
    z.push_back(last ? 1 : 0);
    z.push_back(uint8_t(len & 0xFF));
    z.push_back(uint8_t(len >> 8));
    z.push_back(uint8_t(~len & 0xFF));
    z.push_back(uint8_t((~len >> 8) & 0xFF));
    z.insert(z.end(), raw.begin() + long(pos), raw.begin() + long(pos + len));
    pos += len;
  } while (pos < raw.size());
  uint32_t a = 1, b = 0;
  for (uint8_t c : raw) {
    a = (a + c) % 65521;
    b = (b + a) % 65521;
  }
  put_be32(&z, (b << 16) | a);
  std::vector<uint8_t> png = {0x89, 'P', 'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A};
  std::vector<uint8_t> ihdr;
  put_be32(&ihdr, uint32_t(w));
  put_be32(&ihdr, uint32_t(h));
  ihdr.push_back(uint8_t(bit_depth));
  ihdr.push_back(uint8_t(color_type));
  ihdr.push_back(0);
  ihdr.push_back(0);
  ihdr.push_back(0);
  png_chunk(&png, "IHDR", ihdr);
  png_chunk(&png, "IDAT", z);
  png_chunk(&png, "IEND", {});
  return png;
}

// Offset of the first JPEG marker 0xFF `m` (after SOI), or npos.
inline size_t find_jpeg_marker(const std::vector<uint8_t>& j, uint8_t m) {
  for (size_t i = 2; i + 1 < j.size(); ++i) {
    if (j[i] == 0xFF && j[i + 1] == m) return i;
  }
  return std::string::npos;
}

}  // namespace testing
}  // namespace data
}  // namespace sc
