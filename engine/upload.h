// upload.h: inputs copied to a GPU on its copy stream, overlapping the engine stream's work.
//
// An Uploader owns, per input (e.g. each view's crops), `slots` device buffers used in turn (two:
// double buffering) and per buffer two events: `copied`, recorded on the copy stream after the
// copy into the buffer, and `consumed`, recorded on the engine stream by consumed(input) once the
// last op that reads the buffer has been queued. upload(host, input):
//   1. makes the copy stream wait for the buffer's `consumed` (the GPU waits, not the host: the
//      step that read the buffer `slots` uploads ago must be done with it);
//   2. copies host into it on the copy stream (dense; from pinned memory the copy is truly
//      asynchronous) and records `copied`;
//   3. makes the engine stream wait for `copied`: every op queued after upload() sees the data.
// Since a training step never waits for the device, the host queues step n + 1's upload while
// the GPU still computes step n, and the copy runs beside it. The returned tensor is valid until
// `slots` later uploads of the same input. No allocation once each buffer exists (same shape),
// no host synchronisation. On the CPU, upload() returns host itself and consumed() does nothing.
#pragma once
#include <memory>

#include "engine/tensor.h"

namespace sc {

namespace cuda {
struct UploadSlots;  // the device side (engine/cuda/upload.cpp)
}

class Uploader {
 public:
  explicit Uploader(Device device, int slots = 2);
  ~Uploader();  // waits for its own copies
  Uploader(const Uploader&) = delete;
  Uploader& operator=(const Uploader&) = delete;

  Tensor upload(const Tensor& host, int input = 0);
  // The ops reading input's current buffer have been queued (if it is not called, the next
  // upload into that buffer waits for everything queued on the engine stream before it).
  void consumed(int input = 0);

 private:
  Device device_;
  std::shared_ptr<cuda::UploadSlots> slots_;
};

}  // namespace sc
