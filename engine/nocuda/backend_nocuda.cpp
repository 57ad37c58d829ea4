// CPU-only builds: the CUDA side of the engine reports that it is absent. Any attempt to put a
// tensor on a CUDA device fails with a clear sc::Error; device queries answer "none".
#include "engine/backend.h"
#include "engine/cuda/device_memory.h"
#include "engine/cuda_runtime.h"
#include "engine/dispatch.h"
#include "engine/step_graph.h"

namespace sc {

bool cuda_built() { return false; }
int cuda_device_count() { return 0; }
std::string cuda_device_name(int) { return ""; }
void cuda_synchronize(int) {}
void start_phase_timing() {}
std::vector<PhaseTime> stop_phase_timing() { return {}; }
void cuda_profiler_start() {}
void cuda_profiler_stop() {}
cudaStream_t stream_of(const Tensor&) { no_cuda("stream_of"); }

namespace cuda {
void* device_alloc(size_t, int) { no_cuda("device_alloc"); }
void device_free(void*, int) {}
void* pinned_alloc(size_t) { no_cuda("pinned_alloc"); }
void pinned_free(void*) {}
AllocatorStats device_stats(int) { return {}; }
AllocatorStats pinned_stats() { return {}; }
void empty_cache() {}
void memset_async(void*, int, size_t, int) { no_cuda("memset_async"); }
int begin_private_pool(int) { no_cuda("begin_private_pool"); }
void end_private_pool(int) {}
void release_private_pool(int, int) {}

void copy(const Tensor&, const Tensor&) { no_cuda("copy"); }
void fill(const Tensor&, double) { no_cuda("fill"); }
void unary(UnaryOp, const Tensor&, const Tensor&, double) { no_cuda("unary"); }
void binary(BinaryOp, const Tensor&, const Tensor&, const Tensor&, double, double) {
  no_cuda("binary");
}
void equal(const Tensor&, const Tensor&, const Tensor&) { no_cuda("equal"); }
void sum_rows(const Tensor&, const Tensor&, int64_t, int64_t) { no_cuda("sum_rows"); }
void argmax_rows(const Tensor&, const Tensor&, int64_t, int64_t) { no_cuda("argmax_rows"); }
void softmax_rows(const Tensor&, const Tensor&, int64_t, int64_t, bool) { no_cuda("softmax"); }
void softmax_backward_rows(const Tensor&, const Tensor&, const Tensor&, int64_t, int64_t, bool) {
  no_cuda("softmax_backward");
}
void l2norm_rows(const Tensor&, const Tensor&, int64_t, int64_t, double) { no_cuda("l2norm"); }
void l2norm_backward_rows(const Tensor&, const Tensor&, const Tensor&, int64_t, int64_t, double) {
  no_cuda("l2norm_backward");
}
void gemm(bool, bool, int64_t, int64_t, int64_t, double, const Tensor&, int64_t, int64_t,
          const Tensor&, int64_t, int64_t, double, const Tensor&, int64_t, int64_t, int64_t) {
  no_cuda("gemm");
}
void index_select_rows(const Tensor&, const Tensor&, const Tensor&) { no_cuda("index_select"); }
void index_add_rows(const Tensor&, const Tensor&, const Tensor&) { no_cuda("index_add"); }
void compact_rows_index(const Tensor&, const Tensor&, const Tensor&) {
  no_cuda("compact_rows_index");
}
void gather_rows(const Tensor&, const Tensor&, const Tensor&, const Tensor&) {
  no_cuda("gather_rows");
}
void scatter_rows(const Tensor&, const Tensor&, const Tensor&, const Tensor&) {
  no_cuda("scatter_rows");
}
void copy_across(const Tensor&, const Tensor&) { no_cuda("copy_across"); }
struct UploadSlots {};
std::shared_ptr<UploadSlots> make_upload_slots(int, int) { no_cuda("Uploader"); }
Tensor upload_into_slot(UploadSlots&, const Tensor&, int) { no_cuda("Uploader"); }
void upload_consumed(UploadSlots&, int) { no_cuda("Uploader"); }
}  // namespace cuda

struct StepGraph::Impl {};
StepGraph::StepGraph(Device device) : device_(device) {}
StepGraph::~StepGraph() = default;
bool StepGraph::captured() const { return false; }
bool StepGraph::capture(const std::function<void()>&) {
  why_ = "this build has no CUDA backend";
  return false;
}
void StepGraph::replay() { no_cuda("StepGraph::replay"); }

}  // namespace sc
