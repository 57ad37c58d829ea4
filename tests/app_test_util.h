// app_test_util.h: run the built `slotcon` binary with arguments and capture what it prints.
#pragma once
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <string>

namespace app_test {

struct Run {
  int status = -1;
  std::string out;  // stdout and stderr together
  // The exit code of a normal exit, -1 when the process died from a signal.
  int code() const { return WIFEXITED(status) ? WEXITSTATUS(status) : -1; }
};

inline Run run(const std::string& args) {
  std::string cmd = std::string(SLOTCON_BINARY_DIR) + "/apps/slotcon " + args + " 2>&1";
  Run r;
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) r.out.append(buf, n);
  r.status = pclose(p);
  return r;
}

}  // namespace app_test
