// The README's main job: `slotcon demo` trains and reports, and its usage errors are clean.
#include <catch2/catch.hpp>
#include <cstdio>
#include <string>

#include "app_test_util.h"

namespace {
using app_test::Run;
using app_test::run;
}  // namespace

TEST_CASE("apps: slotcon demo learns on the CPU") {
  Run r = run("demo --device cpu --steps 150");
  INFO(r.out);
  REQUIRE(WIFEXITED(r.status));
  CHECK(WEXITSTATUS(r.status) == 0);
  CHECK(r.out.find("training accuracy") != std::string::npos);
  CHECK(r.out.find("eta") != std::string::npos);
}

TEST_CASE("apps: usage errors exit 2 with a message, --help exits 0") {
  Run bad = run("demo --bogus");
  REQUIRE(WIFEXITED(bad.status));
  CHECK(WEXITSTATUS(bad.status) == 2);
  CHECK(bad.out.find("unknown option") != std::string::npos);
  Run unknown = run("frobnicate");
  REQUIRE(WIFEXITED(unknown.status));
  CHECK(WEXITSTATUS(unknown.status) == 2);
  Run help = run("--help");
  REQUIRE(WIFEXITED(help.status));
  CHECK(WEXITSTATUS(help.status) == 0);
  CHECK(help.out.find("usage: slotcon") != std::string::npos);
  Run notnum = run("demo --steps many");
  CHECK(notnum.code() == 1);
  CHECK(notnum.out.find("--steps needs a non-negative integer") != std::string::npos);
  Run missing = run("demo --steps");
  REQUIRE(WIFEXITED(missing.status));
  CHECK(WEXITSTATUS(missing.status) == 1);
  CHECK(missing.out.find("needs a value") != std::string::npos);
}
