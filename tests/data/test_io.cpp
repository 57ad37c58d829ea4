// Decoding, folder scanning and the bad-input policy. Every bad file is generated here, in a
// temporary folder.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <mutex>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/image.h"
#include "data/loader.h"
#include "data/rng.h"
#include "data/scenes.h"
#include "data_test_util.h"
#include "engine/error.h"

using namespace sc::data;
using namespace sc::data::testing;

namespace {

ImageU8 smooth_image(int w, int h) {
  ImageU8 im;
  im.resize(w, h);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      im.row(y)[3 * x] = uint8_t(40 + 150 * x / w);
      im.row(y)[3 * x + 1] = uint8_t(60 + 120 * y / h);
      im.row(y)[3 * x + 2] = uint8_t(90);
    }
  return im;
}

std::vector<uint8_t> valid_jpeg(int w = 48, int h = 40) {
  const ImageU8 im = smooth_image(w, h);
  return encode_jpeg(im.rgb.data(), w, h, 3, 90);
}

std::vector<uint8_t> valid_png(int w = 48, int h = 40) {
  const ImageU8 im = smooth_image(w, h);
  return encode_png(im.rgb.data(), w, h, 3);
}

bool refused(const std::vector<uint8_t>& bytes, std::string* why) {
  ImageU8 out;
  const bool ok = decode_image(bytes.data(), bytes.size(), &out, why);
  return !ok && out.empty();
}

// A minimal baseline JPEG with 4 components (CMYK, Adobe transform 0): 8 x 8 pixels, every DCT
// coefficient zero, Huffman tables with a single one-bit code.
std::vector<uint8_t> cmyk_jpeg() {
  std::vector<uint8_t> j = {0xFF, 0xD8};
  // APP14 "Adobe", version 100, flags 0, 0, transform 0 (CMYK).
  const uint8_t app14[] = {0xFF, 0xEE, 0, 14, 'A', 'd', 'o', 'b', 'e', 0, 100, 0, 0, 0, 0, 0};
  j.insert(j.end(), app14, app14 + sizeof(app14));
  j.insert(j.end(), {0xFF, 0xDB, 0, 67, 0x00});
  for (int i = 0; i < 64; ++i) j.push_back(1);
  j.insert(j.end(), {0xFF, 0xC0, 0, 20, 8, 0, 8, 0, 8, 4});
  for (uint8_t c = 1; c <= 4; ++c) j.insert(j.end(), {c, 0x11, 0});
  for (uint8_t cls : {uint8_t(0x00), uint8_t(0x10)}) {
    j.insert(j.end(), {0xFF, 0xC4, 0, 20, cls, 1});
    for (int i = 1; i < 16; ++i) j.push_back(0);
    j.push_back(0);  // the only symbol: DC category 0 / AC end-of-block
  }
  j.insert(j.end(), {0xFF, 0xDA, 0, 14, 4});
  for (uint8_t c = 1; c <= 4; ++c) j.insert(j.end(), {c, 0x00});
  j.insert(j.end(), {0, 63, 0});
  j.push_back(0x00);  // 4 blocks x (DC '0' + EOB '0') = 8 zero bits
  j.insert(j.end(), {0xFF, 0xD9});
  return j;
}

}  // namespace

TEST_CASE("decode: PNG colour types and bit depths become 8-bit RGB", "[data][io]") {
  std::string why;
  ImageU8 out;
  // RGB 8-bit, exact.
  {
    std::vector<uint16_t> s = {10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120};
    const auto png = make_png(2, 2, 2, 8, s);
    REQUIRE(decode_image(png.data(), png.size(), &out, &why));
    CHECK(out.width == 2);
    CHECK(out.height == 2);
    CHECK(std::vector<int>(out.rgb.begin(), out.rgb.end()) ==
          std::vector<int>{10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120});
  }
  // Gray -> three equal channels.
  {
    const auto png = make_png(3, 1, 0, 8, {0, 128, 255});
    REQUIRE(decode_image(png.data(), png.size(), &out, &why));
    CHECK(std::vector<int>(out.rgb.begin(), out.rgb.end()) ==
          std::vector<int>{0, 0, 0, 128, 128, 128, 255, 255, 255});
  }
  // Gray + alpha and RGBA: alpha is dropped (PIL's convert("RGB")).
  {
    const auto png = make_png(2, 1, 4, 8, {77, 0, 200, 255});
    REQUIRE(decode_image(png.data(), png.size(), &out, &why));
    CHECK(std::vector<int>(out.rgb.begin(), out.rgb.end()) ==
          std::vector<int>{77, 77, 77, 200, 200, 200});
    const auto png4 = make_png(1, 1, 6, 8, {1, 2, 3, 4});
    REQUIRE(decode_image(png4.data(), png4.size(), &out, &why));
    CHECK(std::vector<int>(out.rgb.begin(), out.rgb.end()) == std::vector<int>{1, 2, 3});
  }
  // 16-bit RGB and gray: reduced to the high byte.
  {
    const auto png = make_png(1, 1, 2, 16, {0x1234, 0xABCD, 0xFFFF});
    REQUIRE(decode_image(png.data(), png.size(), &out, &why));
    CHECK(std::vector<int>(out.rgb.begin(), out.rgb.end()) == std::vector<int>{0x12, 0xAB, 0xFF});
    const auto png_g = make_png(2, 1, 0, 16, {0x8000, 0x00FF});
    REQUIRE(decode_image(png_g.data(), png_g.size(), &out, &why));
    CHECK(std::vector<int>(out.rgb.begin(), out.rgb.end()) ==
          std::vector<int>{128, 128, 128, 0, 0, 0});
  }
  // JPEG round trip (lossy).
  {
    const ImageU8 src = smooth_image(64, 48);
    const auto jpg = encode_jpeg(src.rgb.data(), 64, 48, 3, 95);
    REQUIRE(decode_image(jpg.data(), jpg.size(), &out, &why));
    REQUIRE(out.rgb.size() == src.rgb.size());
    double err = 0;
    for (size_t i = 0; i < src.rgb.size(); ++i) err += std::fabs(double(out.rgb[i]) - src.rgb[i]);
    CHECK(err / double(src.rgb.size()) < 3.0);
    CHECK(jpeg_is_complete(jpg.data(), jpg.size()));
  }
}

TEST_CASE("decode: bad bytes are refused with a reason, never a crash", "[data][io]") {
  std::string why;
  CHECK(refused({}, &why));
  CHECK(why == "empty file");

  const std::string text = "this is not an image, just a text file\n";
  CHECK(refused(std::vector<uint8_t>(text.begin(), text.end()), &why));
  CHECK(why.find("not a decodable image") != std::string::npos);
  // Other formats under a .jpg/.png name (here a GIF header) are not decoded.
  const std::string gif = "GIF89a\x01\x00\x01\x00\x00\x00\x00;";
  CHECK(refused(std::vector<uint8_t>(gif.begin(), gif.end()), &why));
  CHECK(why.find("neither a JPEG nor a PNG") != std::string::npos);

  // Truncated JPEG (stb_image alone would fill the missing rows with grey) and PNG.
  const auto jpg = valid_jpeg();
  for (double frac : {0.2, 0.6, 0.95}) {
    std::vector<uint8_t> t(jpg.begin(), jpg.begin() + long(jpg.size() * frac));
    CHECK(refused(t, &why));
  }
  std::vector<uint8_t> t2(jpg.begin(), jpg.end() - 2);  // only the EOI marker is missing
  CHECK(!jpeg_is_complete(t2.data(), t2.size()));
  CHECK(refused(t2, &why));
  CHECK(why.find("truncated") != std::string::npos);
  const auto png = valid_png();
  for (double frac : {0.1, 0.5, 0.9}) {
    std::vector<uint8_t> t(png.begin(), png.begin() + long(png.size() * frac));
    CHECK(refused(t, &why));
  }

  // A JPEG whose frame header claims 4 components (CMYK) in a 3-component segment.
  {
    std::vector<uint8_t> j = jpg;
    const size_t sof = find_jpeg_marker(j, 0xC0);
    REQUIRE(sof != std::string::npos);
    REQUIRE(j[sof + 9] == 3);
    j[sof + 9] = 4;
    CHECK(refused(j, &why));
    j[sof + 9] = 2;  // no such colour model
    CHECK(refused(j, &why));
  }
  // A Huffman table claiming more than 256 codes: stb_image 2.27 would write past its tables.
  {
    std::vector<uint8_t> j = jpg;
    const size_t dht = find_jpeg_marker(j, 0xC4);
    REQUIRE(dht != std::string::npos);
    for (int k = 0; k < 16; ++k) j[dht + 5 + size_t(k)] = 0xFF;  // after FF C4, length, Tc/Th
    CHECK(refused(j, &why));
    CHECK(why.find("Huffman") != std::string::npos);
  }
  // Arithmetic-coded frame (SOF9): not supported by stb_image.
  {
    std::vector<uint8_t> j = jpg;
    const size_t sof = find_jpeg_marker(j, 0xC0);
    j[sof + 1] = 0xC9;
    CHECK(refused(j, &why));
  }
  // A corrupt PNG: stb_image ignores chunk CRCs, so damage the zlib stream of the first IDAT
  // (signature 8 + IHDR 25 bytes, then IDAT length and type: its data starts at byte 41).
  {
    std::vector<uint8_t> p = valid_png();
    REQUIRE(std::string(p.begin() + 37, p.begin() + 41) == "IDAT");
    p[41] ^= 0x5A;
    p[42] ^= 0xA5;
    CHECK(refused(p, &why));
  }
  // Absurd dimensions: refused from the header, before any pixel memory is allocated.
  {
    // (stb_image itself refuses beyond 2^30 bytes; these stay below that and break our limits.)
    auto png_with_size = [](uint32_t w, uint32_t h) {
      std::vector<uint8_t> p = make_png(1, 1, 2, 8, {1, 2, 3});
      // IHDR data starts at byte 16: width, height (big endian); then fix its CRC.
      for (int b = 0; b < 4; ++b) p[16 + b] = uint8_t(w >> (24 - 8 * b));
      for (int b = 0; b < 4; ++b) p[20 + b] = uint8_t(h >> (24 - 8 * b));
      const uint32_t crc = crc32(p.data() + 12, 17);
      for (int b = 0; b < 4; ++b) p[29 + b] = uint8_t(crc >> (24 - 8 * b));
      return p;
    };
    CHECK(refused(png_with_size(25000, 10), &why));  // one side too long
    CHECK(why.find("25000x10") != std::string::npos);
    CHECK(why.find("limits") != std::string::npos);
    CHECK(refused(png_with_size(10000, 10000), &why));  // too many pixels
    CHECK(why.find("10000x10000") != std::string::npos);
    CHECK(refused(png_with_size(100000, 100000), &why));  // refused by stb_image's own check

    std::vector<uint8_t> j = jpg;
    const size_t sof = find_jpeg_marker(j, 0xC0);
    j[sof + 5] = 0xEA, j[sof + 6] = 0x60;  // height 60000
    j[sof + 7] = 0xEA, j[sof + 8] = 0x60;  // width 60000
    CHECK(refused(j, &why));
    CHECK(why.find("60000x60000") != std::string::npos);
  }
  // Tighter limits refuse an ordinary image too.
  {
    DecodeLimits lim;
    lim.max_pixels = 100;
    ImageU8 out;
    CHECK(!decode_image(jpg.data(), jpg.size(), &out, &why, lim));
  }
}

TEST_CASE("decode: damaged JPEG and PNG bytes decode or are refused, never crash", "[data][io]") {
  const std::vector<std::vector<uint8_t>> seeds = {valid_jpeg(37, 29), valid_png(37, 29),
                                                   cmyk_jpeg()};
  int decoded = 0, refused_n = 0;
  for (int t = 0; t < 3000; ++t) {
    Rng rng(static_cast<uint64_t>(t), 17);
    std::vector<uint8_t> b = seeds[size_t(t) % seeds.size()];
    const int edits = int(rng.randint(1, 6));
    for (int e = 0; e < edits; ++e) {
      const size_t pos = size_t(rng.randint(0, int64_t(b.size()) - 1));
      switch (rng.randint(0, 2)) {
        case 0:
          b[pos] = uint8_t(rng.randint(0, 255));
          break;
        case 1:
          b[pos] ^= uint8_t(1u << rng.randint(0, 7));
          break;
        default:
          b.resize(std::max<size_t>(pos, 1));
          break;
      }
    }
    ImageU8 out;
    std::string why;
    if (decode_image(b.data(), b.size(), &out, &why)) {
      REQUIRE(out.rgb.size() == size_t(out.width) * out.height * 3);
      ++decoded;
    } else {
      REQUIRE(out.empty());
      REQUIRE(!why.empty());
      ++refused_n;
    }
  }
  CHECK(decoded > 100);
  CHECK(refused_n > 100);
}

TEST_CASE("decode: a genuine 4-component (CMYK) JPEG is converted or refused, never a crash",
          "[data][io]") {
  // stb_image 2.27 understands Adobe CMYK JPEGs; older versions refuse them. Either way the
  // result must be a clean success or a clean refusal.
  const auto j = cmyk_jpeg();
  CHECK(jpeg_is_complete(j.data(), j.size()));
  ImageU8 out;
  std::string why;
  if (decode_image(j.data(), j.size(), &out, &why)) {
    CHECK(out.width == 8);
    CHECK(out.height == 8);
    // All components are 128 everywhere: the picture is one uniform colour.
    for (size_t i = 3; i < out.rgb.size(); ++i) REQUIRE(out.rgb[i] == out.rgb[i % 3]);
  } else {
    CHECK(!why.empty());
  }
}

TEST_CASE("decode: a scan that names an undefined Huffman table is refused, real JPEGs decode",
          "[data][io]") {
  // fuzz_image's finding (tests/fuzz/regressions/image): a progressive JPEG whose third scan
  // decodes AC coefficients with table 1, which no DHT defined; stb_image read it from
  // uninitialised memory and crashed. The JPEGs of the seed corpus (made by Pillow, the
  // progressive one defines each scan's tables just before it) must still decode.
  const std::string dir = std::string(SLOTCON_SOURCE_DIR) + "/tests/fuzz/";
  ImageU8 out;
  std::string why;
  std::vector<uint8_t> bad, b;
  REQUIRE(read_file(dir + "regressions/image/crash-f52c07512fdef8290be4303e535770e87ad915a6",
                    &bad, &why));
  CHECK(!decode_image(bad.data(), bad.size(), &out, &why));
  CHECK(why.find("never defined") != std::string::npos);
  for (const char* f : {"baseline.jpg", "progressive.jpg", "restart_markers.jpg", "gray.jpg",
                        "subsampled_444.jpg"}) {
    INFO(f);
    REQUIRE(read_file(dir + "corpus/image/" + f, &b, &why));
    CHECK(decode_image(b.data(), b.size(), &out, &why));
    CHECK(out.width > 0);
  }
}

TEST_CASE("folders: recursive, any-case extensions, sorted, several roots", "[data][io]") {
  TempDir tmp;
  const auto png = valid_png(16, 16);
  const auto jpg = valid_jpeg(16, 16);
  write_bytes(tmp.file("a/b/z.PNG"), png);
  write_bytes(tmp.file("a/b/a.jpeg"), jpg);
  write_bytes(tmp.file("a/m.JPG"), jpg);
  write_bytes(tmp.file("a/c/d/e/deep.Jpeg"), jpg);
  write_bytes(tmp.file("a/readme.txt"), {1, 2, 3});
  write_bytes(tmp.file("a/anim.gif"), {1, 2, 3});
  write_bytes(tmp.file("a/noext"), png);
  write_bytes(tmp.file("b/x.png"), png);
  const auto files = scan_image_folders({tmp.file("b"), tmp.file("a")});
  std::vector<std::string> rel;
  for (const auto& f : files)
    rel.push_back(std::filesystem::path(f).lexically_relative(tmp.path()).generic_string());
  CHECK(rel == std::vector<std::string>{"b/x.png", "a/b/a.jpeg", "a/b/z.PNG", "a/c/d/e/deep.Jpeg",
                                        "a/m.JPG"});
  // The ':' form of LoaderConfig::data_dir.
  CHECK(split_paths("/x/train2017:/x/unlabeled2017") ==
        std::vector<std::string>{"/x/train2017", "/x/unlabeled2017"});
  CHECK(split_paths("a::b:") == std::vector<std::string>{"a", "b"});
  ImageFolderDataset ds({tmp.file("a")});
  CHECK(ds.size() == 4);
  ImageU8 im;
  std::string why;
  CHECK(ds.load(0, &im, &why));
  CHECK(im.width == 16);
}

TEST_CASE("folders: missing, empty or image-less folders are clear errors", "[data][io]") {
  TempDir tmp;
  std::filesystem::create_directories(tmp.file("empty"));
  write_bytes(tmp.file("texts/a.txt"), {1});
  write_bytes(tmp.file("file.png"), valid_png());
  CHECK_THROWS_WITH(scan_image_folders({tmp.file("nope")}), Catch::Contains("does not exist"));
  CHECK_THROWS_WITH(scan_image_folders({tmp.file("empty")}), Catch::Contains("no .jpg"));
  CHECK_THROWS_WITH(scan_image_folders({tmp.file("texts")}), Catch::Contains("no .jpg"));
  CHECK_THROWS_WITH(scan_image_folders({tmp.file("file.png")}), Catch::Contains("not a directory"));
  CHECK_THROWS_AS(scan_image_folders({}), sc::Error);
  LoaderConfig cfg;
  cfg.data_dir = tmp.file("empty");
  CHECK_THROWS_AS(DataLoader(cfg), sc::Error);
  cfg.data_dir = "";
  CHECK_THROWS_AS(DataLoader(cfg), sc::Error);
}

TEST_CASE("loader: bad files are skipped, counted and named, batches keep their shape",
          "[data][io][loader]") {
  TempDir tmp;
  // 8 good images of various sizes and formats.
  std::filesystem::create_directories(tmp.file("good"));
  for (int i = 0; i < 8; ++i) {
    Scene s;
    render_scene(1, i, 40 + 8 * i, 56 - 2 * i, &s);
    if (i % 2) {
      write_png(tmp.file("good/img" + std::to_string(i) + ".png"), s.image.rgb.data(),
                s.image.width, s.image.height, 3);
    } else {
      write_jpeg(tmp.file("good/img" + std::to_string(i) + ".jpg"), s.image.rgb.data(),
                 s.image.width, s.image.height, 3);
    }
  }
  // 7 bad ones.
  const auto jpg = valid_jpeg();
  const auto png = valid_png();
  write_bytes(tmp.file("bad/empty.jpg"), {});
  const std::string text = "hello";
  write_bytes(tmp.file("bad/text.PNG"), std::vector<uint8_t>(text.begin(), text.end()));
  write_bytes(tmp.file("bad/trunc.jpg"),
              std::vector<uint8_t>(jpg.begin(), jpg.begin() + long(jpg.size() / 2)));
  write_bytes(tmp.file("bad/trunc.png"),
              std::vector<uint8_t>(png.begin(), png.begin() + long(png.size() / 2)));
  std::vector<uint8_t> cmyk = jpg;
  cmyk[find_jpeg_marker(cmyk, 0xC0) + 9] = 4;
  write_bytes(tmp.file("bad/cmyk.jpeg"), cmyk);
  std::vector<uint8_t> huge = jpg;
  const size_t sof = find_jpeg_marker(huge, 0xC0);
  huge[sof + 5] = huge[sof + 7] = 0xEA;
  huge[sof + 6] = huge[sof + 8] = 0x60;
  write_bytes(tmp.file("bad/huge.jpg"), huge);
  std::vector<uint8_t> arith = jpg;
  arith[find_jpeg_marker(arith, 0xC0) + 1] = 0xC9;
  write_bytes(tmp.file("bad/arith.jpg"), arith);

  std::vector<std::string> messages;
  std::mutex mu;
  LoaderConfig cfg;
  cfg.data_dir = tmp.file("good") + ":" + tmp.file("bad");
  cfg.image_size = 24;
  cfg.batch_size = 5;
  cfg.num_workers = 2;
  cfg.log_bad_files = 3;
  cfg.log = [&](const std::string& m) {
    std::lock_guard<std::mutex> lk(mu);
    messages.push_back(m);
  };
  {
    DataLoader loader(cfg);
    REQUIRE(loader.dataset().size() == 15);
    REQUIRE(loader.size() == 3);
    for (int b = 0; b < 3 * loader.size(); ++b) {  // three epochs
      const Batch batch = loader.next_batch();
      REQUIRE(batch.size == 5);
      REQUIRE(batch.crops[0].shape() == sc::Shape{5, 3, 24, 24});
      for (int i = 0; i < 5; ++i) {
        const int64_t idx = batch.indices.data<int64_t>()[i];
        REQUIRE(loader.dataset().item_name(idx).find("/good/") != std::string::npos);
      }
      for (int64_t i = 0; i < batch.crops[1].numel(); ++i)
        REQUIRE(std::isfinite(batch.crops[1].data<float>()[i]));
    }
    const LoaderStats st = loader.stats();
    CHECK(st.bad_files == 7);  // each counted once, though met in every epoch
    CHECK(st.bad_examples.size() == 3);
    CHECK(st.samples >= 45);  // the workers may have run ahead
  }
  std::lock_guard<std::mutex> lk(mu);
  REQUIRE(messages.size() == 4);  // three named, then one note that the rest are only counted
  for (int i = 0; i < 3; ++i) CHECK(messages[size_t(i)].find("/bad/") != std::string::npos);
  CHECK(messages[3].find("counted") != std::string::npos);
}

TEST_CASE("loader: a folder of nothing but bad files is an error, not a hang",
          "[data][io][loader]") {
  TempDir tmp;
  write_bytes(tmp.file("x/a.jpg"), {});
  write_bytes(tmp.file("x/b.png"), {0x89, 'P', 'N', 'G'});
  write_bytes(tmp.file("x/c.jpeg"), {0xFF, 0xD8, 0xFF});
  for (int workers : {0, 2}) {
    LoaderConfig cfg;
    cfg.data_dir = tmp.file("x");
    cfg.batch_size = 2;
    cfg.num_workers = workers;
    cfg.image_size = 16;
    cfg.log = [](const std::string&) {};
    DataLoader loader(cfg);
    CHECK_THROWS_WITH(loader.next_batch(), Catch::Contains("could be decoded"));
  }
}
