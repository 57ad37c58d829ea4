// bench_baseline.h: running a PyTorch baseline script from a C++ benchmark, in the same
// invocation (so the two figures come from the same machine, card and moment).
//
// The script is looked up as given on the command line, then relative to the repository root,
// a build folder inside it, or one below. Its output is echoed; the figure is read from its
// last "RESULT <name> images_per_s=<x>" line.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

namespace bench {

inline std::string find_script(const std::string& rel, const std::string& given = "") {
  std::vector<std::string> candidates;
  if (!given.empty()) candidates.push_back(given);
  for (const char* up : {"", "../", "../../"}) candidates.push_back(up + rel);
  for (const std::string& p : candidates)
    if (std::ifstream(p).good()) return p;
  return "";
}

// Runs `$PYTHON <script> <args>` (PYTHON defaults to python3, as for
// scripts/compare_torch_step.sh: e.g. PYTHON=/usr/bin/python3 for Debian's python3-torch when
// another python3 comes first on the PATH), echoing its output; returns its images/s when it
// printed one.
inline std::optional<double> run_baseline(const std::string& script, const std::string& args) {
  const char* py = std::getenv("PYTHON");
  const std::string cmd =
      std::string(py && *py ? py : "python3") + " " + script + " " + args + " 2>&1";
  std::printf("baseline: %s\n", cmd.c_str());
  std::fflush(stdout);
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) {
    std::printf("baseline: could not start %s\n", cmd.c_str());
    return std::nullopt;
  }
  std::optional<double> ips;
  char line[4096];
  while (std::fgets(line, sizeof line, p)) {
    std::fputs(line, stdout);
    const std::string s(line);
    const auto at = s.find("images_per_s=");
    if (s.rfind("RESULT ", 0) == 0 && at != std::string::npos)
      ips = std::atof(s.c_str() + at + 13);
  }
  const int rc = pclose(p);
  if (rc != 0) std::printf("baseline: exited with status %d\n", rc);
  std::fflush(stdout);
  return ips;
}

}  // namespace bench
