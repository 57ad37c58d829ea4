// slotcon: the command-line front end. `slotcon <command> [args]`, `slotcon --help`.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#include "apps/commands.h"
#include "engine/blas_threads.h"
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
double parse_number(const std::string& name, const std::string& value) {
  size_t used = 0;
  double v = -1;
  try {
    v = std::stod(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != value.size() || value.empty() || !std::isfinite(v) || v < 0)
    throw Error(str_cat("option ", name, " needs a finite non-negative number, got '", value, "'"));
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
    {"probe", sc::app::cmd_probe,
     "what a checkpoint's teacher tells apart on the synthetic scenes: its prototypes against "
     "nearest-class-mean probes of its maps"},
    {"inspect", sc::app::cmd_inspect, "list the tensors of a safetensors file, or say why not"},
};

void usage(FILE* out) {
  std::fprintf(out,
               "usage: slotcon <command> [options]\n\n"
               "SlotCon pre-training engine (C++/CUDA).\n\ncommands:\n");
  for (const Command& c : kCommands) std::fprintf(out, "  %-10s %s\n", c.name, c.summary);
  std::fprintf(out, "\nRun `slotcon <command> --help` for the options of a command.\n");
}

}  // namespace

int main(int argc, char** argv) {
  sc::restart_with_blas_thread_timeout(argv, "slotcon");  // engine/blas_threads.h
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
