// upload.cpp: the Uploader's front (see upload.h); the CUDA side is engine/cuda/upload.cpp.
#include "engine/upload.h"

#include "engine/backend.h"

namespace sc {

Uploader::Uploader(Device device, int slots) : device_(device) {
  SC_CHECK(slots >= 1, "Uploader: needs at least one slot, got ", slots);
  if (device.is_cuda()) slots_ = cuda::make_upload_slots(device.index, slots);
}

Uploader::~Uploader() = default;

Tensor Uploader::upload(const Tensor& host, int input) {
  SC_CHECK(host.defined() && host.device().is_cpu(), "Uploader::upload: needs a host tensor, got ",
           host.defined() ? host.str() : std::string("an undefined tensor"));
  SC_CHECK(input >= 0, "Uploader::upload: input must be >= 0, got ", input);
  if (device_.is_cpu()) return host;
  return cuda::upload_into_slot(*slots_, host.is_contiguous() ? host : host.contiguous(), input);
}

void Uploader::consumed(int input) {
  if (slots_) cuda::upload_consumed(*slots_, input);
}

}  // namespace sc
