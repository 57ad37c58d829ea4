// `slotcon probe`: a checkpoint read several ways; its prototype row is the grouping score that
// `slotcon train` logged for the same state, at the start (--init) and at the end; usage errors.
#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <vector>

#include "app_test_util.h"

using app_test::fresh_dir;
using app_test::Run;
using app_test::run;

namespace {
// The mIoU printed on the probe's row that starts with `label`; -1 when there is none.
double row_miou(const std::string& out, const std::string& label) {
  std::smatch m;
  const std::regex re("  " + label + "[^\\n]*? ([0-9]\\.[0-9]{4}) +([0-9]\\.[0-9]{3})\\n");
  return std::regex_search(out, m, re) ? std::stod(m[1].str()) : -1.0;
}
}  // namespace

TEST_CASE("probe: slotcon probe's prototype row is the grouping score train logged") {
  const std::string d = fresh_dir("probe");
  // kTinyTrain's settings as a config file (for --init), scored on 4 held-out scenes at 160 px
  const std::string config = d + "/tiny.json";
  std::ofstream(config) << R"({"dataset": "synthetic", "arch": "resnet18", "dim_hidden": 32,
      "dim_out": 16, "num_prototypes": 8, "image_size": 64, "batch_size": 4,
      "synthetic_images": 8, "num_workers": 1, "warmup_epoch": 0, "print_freq": 1,
      "score_images": 4, "score_size": 160, "slot_images": 0})";
  Run t = run("train --config " + config + " --steps 2 --no-auto-resume --output_dir " + d);
  INFO(t.out);
  REQUIRE(t.code() == 0);
  std::vector<nlohmann::json> g;
  std::ifstream gin(d + "/grouping.jsonl");
  for (std::string line; std::getline(gin, line);) g.push_back(nlohmann::json::parse(line));
  REQUIRE(g.size() >= 2);
  // 5x5 cells with objects in some: a score below 1, which the rows below must reproduce
  REQUIRE(g.back()["miou"].get<double>() < 0.9);

  // the end: the checkpoint's own config, the held-out scenes and size the score used
  Run p = run("probe " + d + "/final.safetensors --fit 8");
  INFO(p.out);
  REQUIRE(p.code() == 0);
  CHECK(p.out.find("scored on held-out scenes 8..11") != std::string::npos);
  CHECK(p.out.find("class means fit on scenes 0..7") != std::string::npos);
  const double end = row_miou(p.out, "prototypes, arg-max");
  CHECK(end == Approx(g.back()["miou"].get<double>()).margin(6e-5));
  for (const char* label :
       {"prototypes, each to its majority class", "projector, nearest class mean \\(16\\)",
        "backbone, nearest class mean \\(512\\)", "projector, linear probe \\(16\\)",
        "backbone, linear probe \\(512\\)", "projector, k-means \\(8 groups\\)",
        "projector, k-means, scene mean removed", "backbone, k-means \\(8 groups\\)",
        "backbone, k-means, scene mean removed"}) {
    const double v = row_miou(p.out, label);
    INFO(label);
    CHECK(v >= 0);
    CHECK(v <= 1);
  }

  CHECK(p.out.find("linear probes on their own fit scenes: projector mIoU") != std::string::npos);
  const size_t at = p.out.find("mean resultant length ");
  REQUIRE(at != std::string::npos);
  const double length = std::stod(p.out.substr(at + 22));
  CHECK(length > 0);
  CHECK(length <= 1.0 + 1e-12);
  CHECK(p.out.find("with the 8 prototypes") != std::string::npos);

  // the start: --init with the run's config is the state the first score was taken of
  Run p0 = run("probe --init --config " + config + " --fit 8");
  INFO(p0.out);
  REQUIRE(p0.code() == 0);
  CHECK(p0.out.find("probe of the initial state") != std::string::npos);
  CHECK(row_miou(p0.out, "prototypes, arg-max") ==
        Approx(g.front()["miou"].get<double>()).margin(6e-5));

  // usage and errors
  CHECK(run("probe").code() == 2);
  CHECK(run("probe " + d + "/final.safetensors --init --config " + config).code() == 2);
  CHECK(run("probe --bogus").code() == 2);
  Run noconf = run("probe --init");
  CHECK(noconf.code() == 1);
  CHECK(noconf.out.find("--config") != std::string::npos);
  Run overlap = run("probe " + d + "/final.safetensors --fit 9");
  CHECK(overlap.code() == 1);
  CHECK(overlap.out.find("--fit must be in [1, synthetic_images = 8]") != std::string::npos);
  Run big = run("probe " + d + "/final.safetensors --fit 8 --count 4096 --size 512");
  CHECK(big.code() == 1);
  CHECK(big.out.find("lower --fit, --count or --size") != std::string::npos);
  Run help = run("probe --help");
  CHECK(help.code() == 0);
  CHECK(help.out.find("nearest class mean") != std::string::npos);
}
