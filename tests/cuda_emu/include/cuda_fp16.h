// cuda_fp16.h for the CUDA emulator: everything lives in cuda_emu.h.
#pragma once
#include "cuda_emu.h"
