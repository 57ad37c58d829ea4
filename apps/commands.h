// commands.h: the `slotcon` subcommands. Each takes the arguments after its name and returns
// the process exit code (0 success, 1 failure with a message on stderr, 2 usage error).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/dtype.h"

namespace sc {
namespace app {

using Args = std::vector<std::string>;

// The value of option `name` as a non-negative integer; sc::Error naming the option otherwise.
int64_t parse_count(const std::string& name, const std::string& value);
// The value of option `name` as a finite non-negative number; sc::Error naming the option
// otherwise.
double parse_number(const std::string& name, const std::string& value);
// The argument after option args[*i] (advancing *i past it); sc::Error "option X needs a value"
// when there is none.
const std::string& option_value(const Args& args, size_t* i);
// The device a command runs on for the choice "auto" (the GPU when one is present, else the
// CPU), "cpu" or "cuda" (an error when no CUDA device is available); `what` names the setting
// in messages.
Device choose_device(const std::string& choice, const std::string& what);

int cmd_inspect(const Args& args);  // list the tensors of a safetensors file, or say why not
int cmd_demo(const Args& args);     // the smallest end-to-end run of the engine
int cmd_train(const Args& args);    // SlotCon pre-training on one device
int cmd_export(const Args& args);   // the teacher backbone for torchvision / detectron2
int cmd_slots(const Args& args);    // a picture of a checkpoint's slots
int cmd_probe(const Args& args);    // what a checkpoint's teacher tells apart on the scenes

}  // namespace app
}  // namespace sc
