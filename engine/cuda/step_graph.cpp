// step_graph.cpp: CUDA graph capture and replay of engine work (see engine/step_graph.h).
#include "engine/step_graph.h"

#include "engine/cuda/context.h"
#include "engine/cuda/device_memory.h"
#include "engine/cuda_runtime.h"

namespace sc {

struct StepGraph::Impl {
  int device = 0;
  cudaGraphExec_t exec = nullptr;
  int pool = 0;  // the private pool's id (0: none)

  ~Impl() {
    if (exec) {
      // a replay may still run: its blocks go back to the shared cache only after it
      cuda::set_device(device);
      if (cudaStreamSynchronize(cuda::stream(device)) != cudaSuccess) (void)cudaGetLastError();
      if (cudaGraphExecDestroy(exec) != cudaSuccess) (void)cudaGetLastError();
    }
    if (pool) cuda::release_private_pool(device, pool);
  }
};

StepGraph::StepGraph(Device device) : device_(device) {}
StepGraph::~StepGraph() = default;

bool StepGraph::captured() const { return impl_ && impl_->exec; }

bool StepGraph::capture(const std::function<void()>& fn) {
  SC_CHECK(!captured(), "StepGraph::capture: already captured");
  if (!device_.is_cuda() || cuda_device_count() == 0) {
    why_ = "CUDA graphs need a CUDA device";
    return false;
  }
  impl_ = std::make_unique<Impl>();
  Impl& g = *impl_;
  g.device = device_.index;
  cuda::set_device(g.device);
  cudaStream_t st = cuda::stream(g.device);
  cuda::cublas(g.device);  // made before the capture: creating it allocates and synchronises
  // the shared cache's free segments back to the driver (one synchronisation, once), so that the
  // graph's private pool, which cudaMallocs its own, reuses that memory instead of doubling it
  cuda::empty_cache();
  (void)cudaGetLastError();
  cudaError_t e = cudaStreamBeginCapture(st, cudaStreamCaptureModeRelaxed);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    why_ = str_cat("cudaStreamBeginCapture: ", cudaGetErrorString(e));
    impl_.reset();
    return false;
  }
  g.pool = cuda::begin_private_pool(g.device);
  std::string failed;
  try {
    fn();
  } catch (const std::exception& ex) {
    failed = ex.what();
  }
  cuda::end_private_pool(g.device);
  cudaGraph_t graph = nullptr;
  e = cudaStreamEndCapture(st, &graph);
  if (e == cudaSuccess && failed.empty()) e = cudaGraphInstantiate(&g.exec, graph, 0);
  if (graph) (void)cudaGraphDestroy(graph);
  if (!failed.empty() || e != cudaSuccess) {
    (void)cudaGetLastError();
    why_ = !failed.empty() ? failed : str_cat("the capture ended with: ", cudaGetErrorString(e));
    g.exec = nullptr;
    impl_.reset();  // the pool's blocks back to the shared cache: nothing captured will run
    return false;
  }
  why_.clear();
  return true;
}

void StepGraph::replay() {
  SC_CHECK(captured(), "StepGraph::replay: nothing captured (", why_, ")");
  cuda::set_device(impl_->device);
  SC_CUDA_CHECK(cudaGraphLaunch(impl_->exec, cuda::stream(impl_->device)));
  ++replays_;
}

}  // namespace sc
