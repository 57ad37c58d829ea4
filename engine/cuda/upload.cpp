// upload.cpp: the device side of engine/upload.h: per input, `slots` device buffers used in turn
// and their `copied` / `consumed` events; copies on the device's copy stream.
#include <vector>

#include "engine/backend.h"
#include "engine/cuda/context.h"
#include "engine/cuda_runtime.h"

namespace sc {
namespace cuda {

struct UploadSlots {
  struct Input {
    std::vector<Tensor> buf;
    std::vector<cudaEvent_t> copied, consumed;
    std::vector<uint8_t> consumed_recorded;  // consumed() ran since the buffer's last copy
    std::vector<uint8_t> ever_copied;
    int next = 0, current = -1;
  };
  int device = 0, slots = 2;
  std::vector<Input> inputs;

  ~UploadSlots() {
    // the copies may still write into buffers about to return to the allocator
    if (cudaStream_t cs = existing_copy_stream(device)) (void)cudaStreamSynchronize(cs);
    for (Input& in : inputs) {
      for (cudaEvent_t e : in.copied) (void)cudaEventDestroy(e);
      for (cudaEvent_t e : in.consumed) (void)cudaEventDestroy(e);
    }
    (void)cudaGetLastError();
  }
};

std::shared_ptr<UploadSlots> make_upload_slots(int device, int slots) {
  SC_CHECK(device >= 0 && device < cuda_device_count(), "Uploader: CUDA device ", device,
           " does not exist (", cuda_device_count(), " device(s) present)");
  auto u = std::make_shared<UploadSlots>();
  u->device = device;
  u->slots = slots;
  return u;
}

Tensor upload_into_slot(UploadSlots& u, const Tensor& host, int input) {
  set_device(u.device);
  if (size_t(input) >= u.inputs.size()) u.inputs.resize(size_t(input) + 1);
  UploadSlots::Input& in = u.inputs[size_t(input)];
  if (in.buf.empty()) {
    in.buf.resize(size_t(u.slots));
    in.copied.assign(size_t(u.slots), nullptr);
    in.consumed.assign(size_t(u.slots), nullptr);
    in.consumed_recorded.assign(size_t(u.slots), 0);
    in.ever_copied.assign(size_t(u.slots), 0);
    for (int k = 0; k < u.slots; ++k) {
      SC_CUDA_CHECK(cudaEventCreateWithFlags(&in.copied[size_t(k)], cudaEventDisableTiming));
      SC_CUDA_CHECK(cudaEventCreateWithFlags(&in.consumed[size_t(k)], cudaEventDisableTiming));
    }
  }
  const size_t k = size_t(in.next);
  in.next = (in.next + 1) % u.slots;
  in.current = int(k);
  cudaStream_t cs = copy_stream(u.device), es = stream(u.device);
  Tensor& b = in.buf[k];
  bool order_after_all = in.ever_copied[k] && !in.consumed_recorded[k];
  if (!b.defined() || b.shape() != host.shape() || b.dtype() != host.dtype()) {
    // A fresh block from the caching allocator, which orders reuse on the engine stream only:
    // the copy must wait for everything queued there (once, when the shape changes).
    b = empty(host.shape(), host.dtype(), Device::cuda(u.device));
    order_after_all = true;
  }
  if (order_after_all) {
    SC_CUDA_CHECK(cudaEventRecord(in.consumed[k], es));
    in.consumed_recorded[k] = 1;
  }
  if (in.consumed_recorded[k]) SC_CUDA_CHECK(cudaStreamWaitEvent(cs, in.consumed[k], 0));
  const size_t nbytes = size_t(host.numel()) * dtype_size(host.dtype());
  if (nbytes > 0) {
    SC_CUDA_CHECK(cudaMemcpyAsync(b.data_ptr(), host.data_ptr(), nbytes, cudaMemcpyHostToDevice, cs));
    note_host_to_device(nbytes);
  }
  SC_CUDA_CHECK(cudaEventRecord(in.copied[k], cs));
  SC_CUDA_CHECK(cudaStreamWaitEvent(es, in.copied[k], 0));
  in.ever_copied[k] = 1;
  in.consumed_recorded[k] = 0;
  return b;
}

void upload_consumed(UploadSlots& u, int input) {
  SC_CHECK(input >= 0 && size_t(input) < u.inputs.size() && u.inputs[size_t(input)].current >= 0,
           "Uploader::consumed: input ", input, " has no upload");
  UploadSlots::Input& in = u.inputs[size_t(input)];
  const size_t k = size_t(in.current);
  set_device(u.device);
  SC_CUDA_CHECK(cudaEventRecord(in.consumed[k], stream(u.device)));
  in.consumed_recorded[k] = 1;
}

}  // namespace cuda
}  // namespace sc
