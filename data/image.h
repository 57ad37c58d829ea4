// image.h: 8-bit RGB images in memory, decoding (stb_image) and writing (stb_image_write).
//
// Decoding policy (docs/data.md, "Bad input"):
//   - only JPEG and PNG byte streams are decoded (by their signature, whatever the file name);
//   - the header is read first (stbi_info_from_memory) and absurd dimensions are refused before
//     any pixel memory is allocated (DecodeLimits);
//   - grayscale, grey+alpha, palette and RGBA images become RGB (alpha is dropped, as PIL's
//     convert("RGB") does); 16-bit PNGs are reduced to 8 bits;
//   - a JPEG must be structurally complete and sane (check_jpeg_structure): its markers are
//     walked, the entropy-coded data must end in an EOI marker, so a truncated file is refused
//     (stb_image would otherwise fill the missing rows with grey, where PIL raises "image file
//     is truncated"), and Huffman tables that would overflow stb_image's are refused;
//   - every failure is reported as `false` plus a reason, never an exception or a crash.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace sc {
namespace data {

// An interleaved 8-bit RGB image, rows top to bottom: pixel (x, y) channel c is
// rgb[(y * width + x) * 3 + c].
struct ImageU8 {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;

  void resize(int w, int h) {
    width = w;
    height = h;
    rgb.resize(size_t(w) * size_t(h) * 3);
  }
  bool empty() const { return width <= 0 || height <= 0; }
  uint8_t* row(int y) { return rgb.data() + size_t(y) * size_t(width) * 3; }
  const uint8_t* row(int y) const { return rgb.data() + size_t(y) * size_t(width) * 3; }
};

// Images larger than this are refused before decoding (a corrupt header or a decompression bomb).
struct DecodeLimits {
  int64_t max_side = 20000;         // pixels, either dimension
  int64_t max_pixels = 80'000'000;  // width * height
  size_t max_file_bytes = size_t(512) << 20;
};

// Decode an image held in memory into RGB. Returns false (and sets *why when given) when the
// bytes are not a decodable image or break a limit; `out` is then left empty.
bool decode_image(const uint8_t* bytes, size_t n, ImageU8* out, std::string* why = nullptr,
                  const DecodeLimits& limits = {});

// Whole-file read. Returns false with a reason when the file cannot be opened or read, or is
// larger than max_bytes.
bool read_file(const std::string& path, std::vector<uint8_t>* out, std::string* why = nullptr,
               size_t max_bytes = size_t(512) << 20);

// read_file + decode_image.
bool load_image(const std::string& path, ImageU8* out, std::string* why = nullptr,
                const DecodeLimits& limits = {});

// Structural check of a JPEG byte stream, made before stb_image sees it: it must start with SOI
// and its markers must lead, through every scan, to an EOI marker inside the buffer (what is
// after EOI is ignored); every Huffman table segment (DHT) must be well formed, with at most 256
// codes per table (stb_image 2.27 trusts that count and writes past its tables otherwise), and
// frame headers (SOFn) must hold 1 to 4 components and have the matching length. On failure
// *why (optional) says what is wrong.
bool check_jpeg_structure(const uint8_t* bytes, size_t n, std::string* why = nullptr);
// check_jpeg_structure without the reason.
inline bool jpeg_is_complete(const uint8_t* bytes, size_t n) {
  return check_jpeg_structure(bytes, n);
}

// Writers; throw sc::Error when the file cannot be written. `channels` is 1 (gray), 2 (gray +
// alpha), 3 (RGB) or 4 (RGBA); rows are tightly packed.
void write_png(const std::string& path, const uint8_t* pixels, int width, int height, int channels);
void write_jpeg(const std::string& path, const uint8_t* pixels, int width, int height, int channels,
                int quality = 90);
// Encoders to memory (same formats).
std::vector<uint8_t> encode_png(const uint8_t* pixels, int width, int height, int channels);
std::vector<uint8_t> encode_jpeg(const uint8_t* pixels, int width, int height, int channels,
                                 int quality = 90);

}  // namespace data
}  // namespace sc
