// slotcon: the command-line front end. `slotcon <command> [args]`, `slotcon --help`.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#include "apps/commands.h"
#include "engine/cuda_runtime.h"
#include "engine/error.h"

namespace sc {
namespace app {
int64_t parse_count(const std::string& name, const std::string& value) {
  size_t used = 0;
  long long v = -1;
  try {
    v = std::stoll(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != value.size() || value.empty() || v < 0)
    throw Error(str_cat("option ", name, " needs a non-negative integer, got '", value, "'"));
  return v;
}
const std::string& option_value(const Args& args, size_t* i) {
  SC_CHECK(*i + 1 < args.size(), "option ", args[*i], " needs a value");
  return args[++*i];
}
Device choose_device(const std::string& choice, const std::string& what) {
  SC_CHECK(choice == "auto" || choice == "cpu" || choice == "cuda", what, ": unknown '", choice,
           "' (auto, cpu or cuda)");
  if (choice == "cpu" || (choice == "auto" && !cuda_available())) return Device::cpu();
  SC_CHECK(cuda_available(), what, " 'cuda' asked for, but no CUDA device is available");
  return Device::cuda(0);
}
}  // namespace app
}  // namespace sc

namespace {

struct Command {
  const char* name;
  int (*run)(const sc::app::Args&);
  const char* summary;
};

const Command kCommands[] = {
    {"demo", sc::app::cmd_demo,
     "train a small classifier with the engine (autograd + SGD) on the GPU if present, else CPU"},
    {"train", sc::app::cmd_train, "SlotCon pre-training on one device (GPU if present, else CPU)"},
    {"export", sc::app::cmd_export,
     "write the teacher backbone as torchvision- and detectron2-named safetensors"},
    {"slots", sc::app::cmd_slots,
     "draw a checkpoint's slots: images beside their arg-max prototype maps, as a PNG"},
    {"inspect", sc::app::cmd_inspect, "list the tensors of a safetensors file, or say why not"},
};

void usage(FILE* out) {
  std::fprintf(out,
               "usage: slotcon <command> [options]\n\n"
               "SlotCon pre-training engine (C++/CUDA).\n\ncommands:\n");
  for (const Command& c : kCommands) std::fprintf(out, "  %-10s %s\n", c.name, c.summary);
  std::fprintf(out, "\nRun `slotcon <command> --help` for the options of a command.\n");
}

// OpenBLAS's idle threads spin for 2^28 cycles after each matrix product (its default
// THREAD_TIMEOUT), holding the cores that the CPU ops' thread pool needs next; at 2^4 they sleep
// at once, and a CPU training step on 2 cores is ~20 % faster (docs/architecture.md). OpenBLAS
// reads OPENBLAS_THREAD_TIMEOUT when it loads, before main, so slotcon sets it and starts itself
// again, once. Setting the variable yourself (any value) skips this; so does running under a
// tool (valgrind: /proc/self/exe is then not slotcon).
void tune_blas_threads(char** argv) {
  if (std::getenv("OPENBLAS_THREAD_TIMEOUT")) return;
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return;
  self[n] = '\0';
  const char* base = std::strrchr(self, '/');
  if (std::strcmp(base ? base + 1 : self, "slotcon") != 0) return;
  if (setenv("OPENBLAS_THREAD_TIMEOUT", "4", 1) != 0) return;
  execv(self, argv);  // returns only on failure: go on with OpenBLAS's default
}

}  // namespace

int main(int argc, char** argv) {
  tune_blas_threads(argv);
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  std::string name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    usage(stdout);
    return 0;
  }
  sc::app::Args args(argv + 2, argv + argc);
  for (const Command& c : kCommands) {
    if (name != c.name) continue;
    try {
      return c.run(args);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "slotcon %s: error: %s\n", c.name, e.what());
      return 1;
    }
  }
  std::fprintf(stderr, "slotcon: unknown command '%s'\n\n", name.c_str());
  usage(stderr);
  return 2;
}
