// `slotcon inspect`: lists a good file; on a bad one it exits normally with status 1 and an
// "error:" line on stderr (never a crash or a signal); usage errors exit 2.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "engine/safetensors.h"

using namespace sc;
using Catch::Matchers::Contains;

namespace {

struct Result {
  int status = -1;
  std::string out, err;
};

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// Run the built binary with `args`, stdout and stderr captured separately.
Result run_slotcon(const std::vector<std::string>& args, const std::string& tmpdir) {
  const std::string bin = std::string(SLOTCON_BINARY_DIR) + "/apps/slotcon";
  REQUIRE(access(bin.c_str(), X_OK) == 0);
  const std::string out_path = tmpdir + "/stdout", err_path = tmpdir + "/stderr";
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    int o = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int e = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (o < 0 || e < 0) _exit(127);
    dup2(o, 1);
    dup2(e, 2);
    std::vector<char*> argv{const_cast<char*>(bin.c_str())};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(bin.c_str(), argv.data());
    _exit(127);
  }
  Result r;
  REQUIRE(waitpid(pid, &r.status, 0) == pid);
  r.out = slurp(out_path);
  r.err = slurp(err_path);
  std::remove(out_path.c_str());
  std::remove(err_path.c_str());
  return r;
}

struct TempDir {
  std::string path;
  std::vector<std::string> made;
  TempDir() {
    char tmpl[] = "/tmp/slotcon_inspect_XXXXXX";
    REQUIRE(mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  std::string write(const std::string& name, const std::string& bytes) {
    const std::string p = path + "/" + name;
    std::ofstream f(p, std::ios::binary);
    f.write(bytes.data(), std::streamsize(bytes.size()));
    made.push_back(p);
    return p;
  }
  ~TempDir() {
    for (const std::string& p : made) std::remove(p.c_str());
    rmdir(path.c_str());
  }
};

std::string le64(uint64_t n) {
  std::string s;
  for (int i = 0; i < 8; ++i) s.push_back(char((n >> (8 * i)) & 0xff));
  return s;
}

}  // namespace

TEST_CASE("apps: slotcon inspect lists a good file") {
  TempDir dir;
  TensorMap m;
  m["encoder_k.layer1.0.conv1.weight"] = from_vector({-1, 0.5, 2, 0.5}, {2, 2, 1, 1});
  m["encoder_k.bn1.num_batches_tracked"] = full({}, 1234567, DType::I64);
  m["center"] = from_vector({0.25, 0.75}, {1, 2}, DType::BF16);
  const std::string good =
      dir.write("good.safetensors", serialize_safetensors(m, {{"epoch", "7"}}));
  Result r = run_slotcon({"inspect", good, "--values", "3"}, dir.path);
  INFO("stdout:\n" << r.out << "\nstderr:\n" << r.err);
  REQUIRE(WIFEXITED(r.status));
  CHECK(WEXITSTATUS(r.status) == 0);
  CHECK(r.err.empty());
  CHECK_THAT(r.out, Contains("encoder_k.layer1.0.conv1.weight") && Contains("[2, 2, 1, 1]") &&
                        Contains("encoder_k.bn1.num_batches_tracked") && Contains("BF16") &&
                        Contains("epoch: 7"));
  CHECK_THAT(r.out, Contains("min -1  max 2  mean 0.5"));  // the conv weight
  CHECK_THAT(r.out, Contains("values: -1 0.5 2 ..."));
  CHECK_THAT(r.out, Contains("values: 1234567"));
  CHECK_THAT(r.out, Contains("total: 3 tensors, 7 elements (6 in floating-point tensors)"));

  Result help = run_slotcon({"inspect", "--help"}, dir.path);
  REQUIRE(WIFEXITED(help.status));
  CHECK(WEXITSTATUS(help.status) == 0);
  CHECK_THAT(help.out, Contains("usage: slotcon inspect FILE"));
  Result none = run_slotcon({"inspect"}, dir.path);
  REQUIRE(WIFEXITED(none.status));
  CHECK(WEXITSTATUS(none.status) == 2);
  Result bad_opt = run_slotcon({"inspect", good, "--values", "x"}, dir.path);
  REQUIRE(WIFEXITED(bad_opt.status));
  CHECK(WEXITSTATUS(bad_opt.status) == 2);
}

TEST_CASE("apps: slotcon inspect rejects bad files with exit status 1") {
  TempDir dir;
  const std::string valid = serialize_safetensors({{"w", full({4}, 1.0)}});
  const std::string hdr = R"({"w":{"dtype":"Q4","shape":[4],"data_offsets":[0,16]}})";
  struct Case {
    const char* name;
    std::string bytes;
    const char* reason;
  };
  const std::vector<Case> cases = {
      {"empty.safetensors", "", "too short"},
      {"truncated.safetensors", valid.substr(0, valid.size() - 3), "past the end"},
      {"absurd.safetensors", le64(uint64_t(1) << 60) + "{}", "absurd"},
      {"badjson.safetensors", le64(5) + "{oops", "not valid JSON"},
      {"dtype.safetensors", le64(hdr.size()) + hdr + std::string(16, '\0'), "unknown dtype"},
  };
  for (const Case& c : cases) {
    const std::string path = dir.write(c.name, c.bytes);
    Result r = run_slotcon({"inspect", path}, dir.path);
    INFO(c.name << "\nstdout:\n" << r.out << "\nstderr:\n" << r.err);
    REQUIRE(WIFEXITED(r.status));  // a normal exit, not a signal
    CHECK(WEXITSTATUS(r.status) == 1);
    CHECK_THAT(r.err,
               Contains("slotcon inspect: error:") && Contains(c.name) && Contains(c.reason));
  }
  Result missing = run_slotcon({"inspect", dir.path + "/does_not_exist.safetensors"}, dir.path);
  REQUIRE(WIFEXITED(missing.status));
  CHECK(WEXITSTATUS(missing.status) == 1);
  CHECK_THAT(missing.err, Contains("error:") && Contains("does_not_exist.safetensors"));
}
