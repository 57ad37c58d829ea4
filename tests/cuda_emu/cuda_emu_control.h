// cuda_emu_control.h: what a program built against the CUDA emulator (SLOTCON_CUDA_EMU) may ask of
// it without including cuda_emu.h (whose CUDA macros are for the rewritten CUDA sources only).
#pragma once

namespace emu {

// Dry run: launches, cuBLAS and cuDNN calls, memsets and device-to-device copies are checked and
// counted as usual (launch configurations included) but not executed, so a step at a full-size
// shape is counted in seconds (bench_train_step --predict). Device memory then holds whatever it
// held (fresh allocations: zeros); host-device copies still copy. Off unless the environment sets
// SLOTCON_EMU_DRY_RUN=1 or set_dry_run(true) is called.
bool dry_run();
void set_dry_run(bool on);

}  // namespace emu
