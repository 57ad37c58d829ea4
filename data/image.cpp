#include "data/image.h"

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "engine/error.h"

// stb is linked from the system library (libstb); only the declarations are included here.
#include <stb_image.h>
#include <stb_image_write.h>

namespace sc {
namespace data {
namespace {

void set_why(std::string* why, const std::string& msg) {
  if (why) *why = msg;
}

std::string stb_reason() {
  const char* r = stbi_failure_reason();
  return r ? std::string(r) : std::string("unknown reason");
}

bool looks_like_jpeg(const uint8_t* p, size_t n) {
  return n >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF;
}

bool looks_like_png(const uint8_t* p, size_t n) {
  static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A};
  return n >= 8 && std::memcmp(p, sig, 8) == 0;
}

void check_channels(int channels, const char* who) {
  SC_CHECK(channels >= 1 && channels <= 4, who, ": channels must be 1..4, got ", channels);
}

void append_bytes(void* ctx, void* data, int size) {
  auto* v = static_cast<std::vector<uint8_t>*>(ctx);
  const auto* b = static_cast<const uint8_t*>(data);
  v->insert(v->end(), b, b + size);
}

}  // namespace

namespace {

// A DHT segment body (after the length field): tables of 1 + 16 + n bytes, n = sum of the 16
// code counts <= 256, class 0 or 1, id 0..3, filling the segment exactly. Each table it walks
// is marked defined in huff[class][id].
bool dht_ok(const uint8_t* p, size_t len, bool huff[2][4]) {
  size_t i = 0;
  while (i < len) {
    if (len - i < 17) return false;
    const uint8_t q = p[i];
    if ((q >> 4) > 1 || (q & 15) > 3) return false;
    size_t codes = 0;
    for (int k = 1; k <= 16; ++k) codes += p[i + size_t(k)];
    if (codes > 256) return false;
    i += 17;
    if (len - i < codes) return false;
    i += codes;
    huff[q >> 4][q & 15] = true;
  }
  return true;
}

// An SOS body: Ns components (1..4) of (id, DC table << 4 | AC table), then Ss, Se, Ah << 4 | Al.
// Every Huffman table the scan decodes with must be defined: the DC table in a sequential scan
// or a first DC scan of a progressive one (Ss == 0, Ah == 0), the AC table wherever AC
// coefficients are coded (a sequential scan, or Se > 0).
bool scan_tables_defined(const uint8_t* p, size_t len, bool progressive, const bool huff[2][4]) {
  if (len < 1) return false;
  const size_t ns = p[0];
  if (ns < 1 || ns > 4 || len != 1 + 2 * ns + 3) return false;
  const uint8_t ss = p[1 + 2 * ns], se = p[2 + 2 * ns], ah = p[3 + 2 * ns] >> 4;
  const bool need_dc = !progressive || (ss == 0 && ah == 0);
  const bool need_ac = !progressive || se > 0;
  for (size_t c = 0; c < ns; ++c) {
    const uint8_t t = p[2 + 2 * c];
    const int dc = t >> 4, ac = t & 15;
    if (need_dc && (dc > 3 || !huff[0][dc])) return false;
    if (need_ac && (ac > 3 || !huff[1][ac])) return false;
  }
  return true;
}

}  // namespace

bool check_jpeg_structure(const uint8_t* p, size_t n, std::string* why) {
  auto fail = [&](const char* msg) {
    set_why(why, msg);
    return false;
  };
  if (n < 4 || p[0] != 0xFF || p[1] != 0xD8) return fail("not a JPEG stream");
  // Which Huffman tables (class 0 DC / 1 AC, id 0..3) have been defined so far: stb_image reads
  // a table a scan names even when no DHT defined it (uninitialised memory, a crash found by
  // fuzz_image on a progressive JPEG), so a scan that needs an undefined table is refused here.
  bool huff[2][4] = {};
  bool progressive = false;
  size_t i = 2;
  for (;;) {
    // Find the next marker; bytes that are not 0xFF between segments are tolerated (libjpeg warns
    // about "extraneous bytes" and goes on).
    while (i < n && p[i] != 0xFF) ++i;
    while (i < n && p[i] == 0xFF) ++i;  // fill bytes
    if (i >= n) return fail("truncated JPEG (no end-of-image marker)");
    const uint8_t m = p[i++];
    if (m == 0xD9) return true;                                        // EOI
    if (m == 0x00 || m == 0x01 || (m >= 0xD0 && m <= 0xD7)) continue;  // no length field
    if (i + 2 > n) return fail("truncated JPEG (no end-of-image marker)");
    const size_t len = (size_t(p[i]) << 8) | p[i + 1];
    if (len < 2) return fail("corrupt JPEG (bad segment length)");
    if (i + len > n) return fail("truncated JPEG (no end-of-image marker)");
    const uint8_t* body = p + i + 2;
    const size_t body_len = len - 2;
    if (m == 0xC4 && !dht_ok(body, body_len, huff)) return fail("corrupt JPEG (bad Huffman table)");
    const bool sof = m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC;
    if (sof &&
        (body_len < 6 || body[5] < 1 || body[5] > 4 || body_len != 6 + 3 * size_t(body[5]))) {
      return fail("corrupt JPEG (bad frame header)");
    }
    if (sof) progressive = (m == 0xC2 || m == 0xC6 || m == 0xCA || m == 0xCE);
    i += len;
    if (m == 0xDA) {
      if (!scan_tables_defined(body, body_len, progressive, huff)) {
        return fail("corrupt JPEG (a scan uses a Huffman table that was never defined)");
      }
      // Entropy-coded data: runs to the next 0xFF that is neither stuffing (FF 00) nor a restart
      // marker (FF D0..D7).
      for (;;) {
        const void* f = (i < n) ? std::memchr(p + i, 0xFF, n - i) : nullptr;
        if (!f) return fail("truncated JPEG (no end-of-image marker)");
        i = size_t(static_cast<const uint8_t*>(f) - p);
        if (i + 1 >= n) return fail("truncated JPEG (no end-of-image marker)");
        const uint8_t nx = p[i + 1];
        if (nx == 0x00 || (nx >= 0xD0 && nx <= 0xD7)) {
          i += 2;
          continue;
        }
        if (nx == 0xFF) {
          ++i;
          continue;
        }
        break;  // a marker starts at i
      }
    }
  }
}

bool decode_image(const uint8_t* bytes, size_t n, ImageU8* out, std::string* why,
                  const DecodeLimits& limits) {
  out->width = out->height = 0;
  out->rgb.clear();
  if (n == 0 || bytes == nullptr) {
    set_why(why, "empty file");
    return false;
  }
  if (n > size_t(INT_MAX)) {
    set_why(why, "file too large for the decoder");
    return false;
  }
  // Only JPEG and PNG reach stb_image: its other decoders (TGA has no signature at all) would
  // take some damaged or foreign files for pictures, and are less hardened.
  const bool jpeg = looks_like_jpeg(bytes, n);
  if (!jpeg && !looks_like_png(bytes, n)) {
    set_why(why, "not a decodable image (neither a JPEG nor a PNG signature)");
    return false;
  }
  // Before stb_image reads anything: its header parser already builds the Huffman tables.
  if (jpeg && !check_jpeg_structure(bytes, n, why)) return false;
  int w = 0, h = 0, comp = 0;
  if (!stbi_info_from_memory(bytes, int(n), &w, &h, &comp)) {
    set_why(why, "not a decodable image (" + stb_reason() + ")");
    return false;
  }
  if (w <= 0 || h <= 0 || w > limits.max_side || h > limits.max_side ||
      int64_t(w) * int64_t(h) > limits.max_pixels) {
    set_why(why, "refused: dimensions " + std::to_string(w) + "x" + std::to_string(h) +
                     " exceed the limits (side " + std::to_string(limits.max_side) + ", pixels " +
                     std::to_string(limits.max_pixels) + ")");
    return false;
  }
  int w2 = 0, h2 = 0, c2 = 0;
  unsigned char* px = stbi_load_from_memory(bytes, int(n), &w2, &h2, &c2, 3);
  if (!px) {
    set_why(why, "decode failed (" + stb_reason() + ")");
    return false;
  }
  if (w2 != w || h2 != h) {
    stbi_image_free(px);
    set_why(why, "decode failed (header and data disagree on the size)");
    return false;
  }
  out->resize(w, h);
  std::memcpy(out->rgb.data(), px, out->rgb.size());
  stbi_image_free(px);
  return true;
}

bool read_file(const std::string& path, std::vector<uint8_t>* out, std::string* why,
               size_t max_bytes) {
  out->clear();
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    set_why(why, "cannot open");
    return false;
  }
  bool ok = true;
  if (std::fseek(f, 0, SEEK_END) != 0) ok = false;
  long size = ok ? std::ftell(f) : -1;
  if (size < 0) ok = false;
  if (ok && size_t(size) > max_bytes) {
    std::fclose(f);
    set_why(why, "file larger than " + std::to_string(max_bytes) + " bytes");
    return false;
  }
  if (ok && std::fseek(f, 0, SEEK_SET) != 0) ok = false;
  if (ok) {
    out->resize(size_t(size));
    if (size > 0 && std::fread(out->data(), 1, size_t(size), f) != size_t(size)) ok = false;
  }
  std::fclose(f);
  if (!ok) {
    out->clear();
    set_why(why, "read error");
  }
  return ok;
}

bool load_image(const std::string& path, ImageU8* out, std::string* why,
                const DecodeLimits& limits) {
  std::vector<uint8_t> bytes;
  if (!read_file(path, &bytes, why, limits.max_file_bytes)) {
    out->width = out->height = 0;
    out->rgb.clear();
    return false;
  }
  return decode_image(bytes.data(), bytes.size(), out, why, limits);
}

void write_png(const std::string& path, const uint8_t* pixels, int width, int height,
               int channels) {
  check_channels(channels, "write_png");
  SC_CHECK(width > 0 && height > 0, "write_png: bad size ", width, "x", height);
  int ok = stbi_write_png(path.c_str(), width, height, channels, pixels, width * channels);
  SC_CHECK(ok != 0, "write_png: cannot write ", path);
}

void write_jpeg(const std::string& path, const uint8_t* pixels, int width, int height, int channels,
                int quality) {
  check_channels(channels, "write_jpeg");
  SC_CHECK(width > 0 && height > 0, "write_jpeg: bad size ", width, "x", height);
  int ok = stbi_write_jpg(path.c_str(), width, height, channels, pixels, quality);
  SC_CHECK(ok != 0, "write_jpeg: cannot write ", path);
}

std::vector<uint8_t> encode_png(const uint8_t* pixels, int width, int height, int channels) {
  check_channels(channels, "encode_png");
  SC_CHECK(width > 0 && height > 0, "encode_png: bad size ", width, "x", height);
  std::vector<uint8_t> out;
  int ok =
      stbi_write_png_to_func(append_bytes, &out, width, height, channels, pixels, width * channels);
  SC_CHECK(ok != 0, "encode_png: encoder failed");
  return out;
}

std::vector<uint8_t> encode_jpeg(const uint8_t* pixels, int width, int height, int channels,
                                 int quality) {
  check_channels(channels, "encode_jpeg");
  SC_CHECK(width > 0 && height > 0, "encode_jpeg: bad size ", width, "x", height);
  std::vector<uint8_t> out;
  int ok = stbi_write_jpg_to_func(append_bytes, &out, width, height, channels, pixels, quality);
  SC_CHECK(ok != 0, "encode_jpeg: encoder failed");
  return out;
}

}  // namespace data
}  // namespace sc
