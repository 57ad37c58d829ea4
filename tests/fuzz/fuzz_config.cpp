// Fuzz target: a training config as `slotcon train --config FILE --key value ...` reads it. The
// input is the file's text, then, after each NUL byte, one command-line argument. Checks: reading
// the file and applying the arguments either succeed or throw sc::Error; a config that validates
// is written as checkpoints store it and read back to the same text; the resume comparison with
// itself finds nothing and with the raw input only ever throws sc::Error.
#include <string>
#include <vector>

#include "engine/error.h"
#include "model/train_config.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> parts;
  for (size_t b = 0;;) {
    const size_t e = input.find('\0', b);
    parts.push_back(input.substr(b, e == std::string::npos ? std::string::npos : e - b));
    if (e == std::string::npos) break;
    b = e + 1;
  }
  sc::TrainConfig cfg;
  try {
    cfg = sc::parse_config_text(parts[0], "fuzz config");
    sc::apply_overrides(cfg, std::vector<std::string>(parts.begin() + 1, parts.end()));
    cfg.validate();
  } catch (const sc::Error&) {
    return 0;
  }
  const std::string text = cfg.to_json_text();
  sc::TrainConfig back = sc::parse_config_text(text, "written config");  // must not throw
  back.validate();
  FUZZ_CHECK(back.to_json_text() == text);
  FUZZ_CHECK(sc::check_resume_config(text, back, "written config").empty());
  try {
    sc::check_resume_config(parts[0], cfg, "fuzz checkpoint");
  } catch (const sc::Error&) {
  }
  return 0;
}
