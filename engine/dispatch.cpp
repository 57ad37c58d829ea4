// dispatch.cpp: the parts of dispatch.h that every build has (stream_of lives with the CUDA
// runtime glue, engine/cuda/runtime.cpp, or the CUDA-less stub, engine/nocuda/).
#include "engine/dispatch.h"

namespace sc {

void no_cuda(const char* op) {
  throw Error(str_cat(op,
                      ": this build has no CUDA backend (configure with nvcc present, or "
                      "-DSLOTCON_CUDA=ON)"));
}

Workspace::Workspace(size_t bytes, const Tensor& like) {
  if (bytes > 0) storage_ = allocate(bytes, like.device());
}

}  // namespace sc
