// The README's main job: `slotcon demo` trains and reports, and its usage errors are clean.
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <string>

namespace {
struct Run {
  int status = -1;
  std::string out;
};
Run run(const std::string& args) {
  std::string cmd = std::string(SLOTCON_BINARY_DIR) + "/apps/slotcon " + args + " 2>&1";
  Run r;
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) r.out.append(buf, n);
  r.status = pclose(p);
  return r;
}
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
  Run missing = run("demo --steps");
  REQUIRE(WIFEXITED(missing.status));
  CHECK(WEXITSTATUS(missing.status) == 1);
  CHECK(missing.out.find("needs a value") != std::string::npos);
}
