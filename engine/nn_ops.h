// nn_ops.h: the convolutional-network ops of the engine (front door, like ops.h): convolution,
// batch normalisation (1-D and 2-D, with fused residual add and activation, and a row mask),
// max pooling and the fused residual add + ReLU.
//
// Every function checks its arguments and throws sc::Error naming the op, allocates its outputs,
// dispatches by device to the kernels in kernels/ (CPU: the references, F32 / F64; CUDA: cuDNN
// for the convolutions and the hand-written kernels, F32 / F64 / BF16 / F16 with float
// accumulation), and records its backward with record_op.
//
// Layouts: 4-D activations may be NCHW (contiguous) or NHWC (MemoryFormat::ChannelsLast); any
// other strides are first made contiguous. Outputs keep the input's layout. A 4-D tensor that is
// both (C == 1 or H == W == 1) is treated as NCHW.
// See docs/nn_ops.md for the maths, the mask semantics and the statistics API.
#pragma once
#include <functional>

#include "engine/tensor.h"  // Tensor, DType, Act (engine/dtype.h)
#include "kernels/normalize_images.h"  // ImageNorm

namespace sc {

// ---- convolution ----
// x (N, C, H, W), w (K, C, R, S), bias (K) or undefined -> (N, K, OH, OW); groups 1, dilation 1.
// An empty x (N, C, H or W = 0) is refused with an sc::Error saying so.
// All of x, w, bias share device and dtype. On CUDA with NHWC input the weight is used in
// channels-last layout (converted, differentiably, when it is not already: keep weights
// channels-last to avoid the copy). cuDNN algorithms are chosen by benchmarking once per
// (shape, layout, dtype, device) and cached; workspaces come from the engine's allocator.
Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias = Tensor(), int64_t stride = 1,
              int64_t padding = 0);
// Allow TF32 tensor cores for F32 convolutions on CUDA (default off: exact FMA maths).
// Changing it affects plans built afterwards only.
void set_conv_allow_tf32(bool on);
bool conv_allow_tf32();
// Forget every cached cuDNN plan and oneDNN primitive (e.g. before a benchmark that wants a cold
// start).
void clear_conv_plans();
// CPU convolutions in F32: oneDNN (kernels/conv2d_dnnl.cpp) when the build has it, the default,
// or the im2col + BLAS reference (always for F64, and the only one in a build without oneDNN).
// OneDnn runs ResNet's 3x3 stride-1 convolutions on maps of 8x8 and more as Winograd where
// oneDNN has it (kernels/conv2d.h); OneDnnDirect keeps every convolution direct.
// The environment variable SLOTCON_CPU_CONV=ref (or =direct) makes the reference (or
// OneDnnDirect) the initial choice. Setting a oneDNN choice in a build without oneDNN selects the
// reference.
enum class CpuConvImpl { Reference, OneDnn, OneDnnDirect };
bool cpu_conv_onednn_built();
void set_cpu_conv_impl(CpuConvImpl impl);
CpuConvImpl cpu_conv_impl();
// CPU batch norm in F32: the vectorised fast path (kernels/batch_norm_cpu.cpp), the default, or
// the reference (always for F64). SLOTCON_CPU_BN=ref makes the reference the initial choice.
enum class CpuBnImpl { Reference, Fast };
void set_cpu_bn_impl(CpuBnImpl impl);
CpuBnImpl cpu_bn_impl();

// Wall seconds spent in the CPU kernels of the convolutions and batch norms since the process
// started or the last reset, summed over calls (profiling: bench_train_step --profile). The
// stats pass, the normalisation and the gradient passes are counted; the checks, allocations
// and layout copies around them are not.
struct CpuNnOpTimes {
  double conv_forward = 0, conv_backward_data = 0, conv_backward_weight = 0;
  double batch_norm_forward = 0, batch_norm_backward = 0;
};
CpuNnOpTimes cpu_nn_op_times();
void reset_cpu_nn_op_times();

// ---- batch normalisation ----
struct BatchNormOptions {
  bool training = true;   // batch statistics (and running-statistics update) vs running ones
  double momentum = 0.1;  // PyTorch's convention: running = (1 - m) running + m batch
  double eps = 1e-5;
  Act act = Act::None;  // fused activation applied after the (optional) residual add
  Tensor residual;      // optional, same shape / dtype / device as x, added before act
  Tensor row_mask;      // optional U8 (N) for 2-D x only: statistics from selected rows
  // Distributed hooks (optional). reduce_stats is called with the F64 tensor of the batch
  // statistics, shape (2C + 1) = [sum x (C), sum x^2 (C), count], after the local stats pass and
  // before they are used; it may replace the values in place (e.g. an all-reduce sum over ranks).
  // reduce_grad_sums is called in backward with the F64 tensor (2C) = [sum dz (C),
  // sum dz * xhat (C)] before dx is formed; dx uses the reduced sums and the reduced count, while
  // d gamma and d beta use this call's own sums (what PyTorch's SyncBatchNorm does: averaging the
  // parameter gradients over ranks afterwards, as data-parallel training does, then gives the
  // gradient of the mean loss). Training mode only.
  std::function<void(Tensor&)> reduce_stats;
  std::function<void(Tensor&)> reduce_grad_sums;
};
// x (N, C), (N, C, L) or (N, C, H, W). weight / bias (C) may be undefined (1 / 0). running_mean /
// running_var (C) may be undefined in training mode (not tracked); when defined they are updated
// in place in training mode (no autograd). Parameter dtype: F32 for BF16 / F16 activations (CUDA
// only), the activations' dtype otherwise. Returns act(bn(x) + residual).
// Mask semantics (see kernels/batch_norm.h): unselected rows get outputs normalised with the
// selected rows' statistics, but their dL/dy is ignored and their dL/dx (and dL/dresidual) is 0.
Tensor batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias,
                  const Tensor& running_mean, const Tensor& running_var,
                  const BatchNormOptions& opt = {});

// The statistics pass alone (not recorded): F64 (2C + 1) = [sum x, sum x^2, count] of x over the
// selected rows (row_mask as above), on x's device. For callers that synchronise statistics
// themselves; batch_norm's reduce_stats hook is the usual way.
Tensor batch_norm_stats(const Tensor& x, const Tensor& row_mask = Tensor());

// ---- pooling and elementwise ----
// Max pooling (N, C, H, W) -> (N, C, OH, OW); padding reads -inf; gradient to the first maximum.
// An empty x is refused with an sc::Error saying so.
Tensor max_pool2d(const Tensor& x, int64_t kernel = 3, int64_t stride = 2, int64_t padding = 1);
// relu(a + b), a and b of the same shape, dtype and device (the residual join of a block).
Tensor add_relu(const Tensor& a, const Tensor& b);

// ---- input ----
// The backbone's input from uint8 RGB images u8 (B, H, W, 3) (the data loader's u8 crops):
// (B, 3, H, W) in `dtype` (F32, F64; BF16, F16 on CUDA) and memory format `fmt`, each channel
// (v / 255 - mean) / std computed in float (kernels/normalize_images.h). On u8's device; not
// differentiable.
Tensor normalize_images(const Tensor& u8, const ImageNorm& norm, DType dtype,
                        MemoryFormat fmt = MemoryFormat::Contiguous);

}  // namespace sc
