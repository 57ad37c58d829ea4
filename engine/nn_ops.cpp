// nn_ops.cpp: front door of the convolutional-network ops (see nn_ops.h): checks, layouts,
// device dispatch to kernels/ and the gradient rules (record_op).
#include "engine/nn_ops.h"

#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <type_traits>

#include "engine/autograd.h"
#include "engine/dispatch.h"
#include "engine/ops.h"
#include "kernels/add_relu.h"
#include "kernels/batch_norm.h"
#include "kernels/conv2d.h"
#include "kernels/max_pool.h"
#include "kernels/normalize_images.h"

#if defined(SLOTCON_WITH_CUDNN)
#include <cudnn.h>

#include "engine/cuda/context.h"  // cuda::stream for the cuDNN handles
#endif

namespace sc {
namespace {

using Grads = std::vector<Tensor>;

MemoryFormat fmt_of(Layout l) {
  return l == Layout::NHWC ? MemoryFormat::ChannelsLast : MemoryFormat::Contiguous;
}

// A 4-D activation in a layout the kernels accept: NCHW when contiguous, NHWC when channels-last,
// otherwise a (differentiable) contiguous copy.
Tensor as_dense_4d(const Tensor& x, Layout& layout) {
  if (x.is_contiguous()) {
    layout = Layout::NCHW;
    return x;
  }
  if (x.is_channels_last()) {
    layout = Layout::NHWC;
    return x;
  }
  layout = Layout::NCHW;
  return x.contiguous();
}

// An incoming gradient, dense in the given layout.
Tensor dense_in(const Tensor& g, Layout layout) {
  if (layout == Layout::NHWC)
    return g.is_channels_last() ? g : g.contiguous(MemoryFormat::ChannelsLast);
  return g.is_contiguous() ? g : g.contiguous();
}

void check_same_dev_dtype(const char* op, const Tensor& a, const char* an, const Tensor& b,
                          const char* bn) {
  SC_CHECK(a.device() == b.device(), op, ": ", an, " and ", bn, " are on different devices (",
           a.device().str(), " and ", b.device().str(), ")");
  SC_CHECK(a.dtype() == b.dtype(), op, ": ", an, " and ", bn, " have different dtypes (",
           dtype_name(a.dtype()), " and ", dtype_name(b.dtype()), ")");
}

bool g_allow_tf32 = false;

// ---------------------------------------------------------------- CPU implementation choice
#if defined(SLOTCON_WITH_DNNL)
constexpr bool kDnnlBuilt = true;
#else
constexpr bool kDnnlBuilt = false;
#endif

// SLOTCON_CPU_CONV=ref forces the reference, =direct oneDNN without Winograd; unset or anything
// else: oneDNN when built.
CpuConvImpl initial_cpu_conv_impl() {
  const char* e = std::getenv("SLOTCON_CPU_CONV");
  if (!kDnnlBuilt || (e && std::strcmp(e, "ref") == 0)) return CpuConvImpl::Reference;
  if (e && std::strcmp(e, "direct") == 0) return CpuConvImpl::OneDnnDirect;
  return CpuConvImpl::OneDnn;
}
std::atomic<CpuConvImpl> g_cpu_conv{initial_cpu_conv_impl()};

// Whether a CPU convolution in T takes the oneDNN path (float only).
template <class T>
bool use_dnnl() {
  return kDnnlBuilt && std::is_same<T, float>::value && g_cpu_conv.load() != CpuConvImpl::Reference;
}
bool dnnl_winograd() { return g_cpu_conv.load() == CpuConvImpl::OneDnn; }

// SLOTCON_CPU_BN=ref forces the batch-norm reference; otherwise the float32 fast path.
CpuBnImpl initial_cpu_bn_impl() {
  const char* e = std::getenv("SLOTCON_CPU_BN");
  return e && std::strcmp(e, "ref") == 0 ? CpuBnImpl::Reference : CpuBnImpl::Fast;
}
std::atomic<CpuBnImpl> g_cpu_bn{initial_cpu_bn_impl()};

template <class T>
bool use_fast_bn() {
  return std::is_same<T, float>::value && g_cpu_bn.load() == CpuBnImpl::Fast;
}

// ---------------------------------------------------------------- CPU timing (profiling)
// Nanoseconds spent in the CPU kernels of each phase (CpuNnOpTimes' fields, in order).
enum Phase { kConvFwd, kConvBwdData, kConvBwdWeight, kBnFwd, kBnBwd, kPhases };
std::array<std::atomic<int64_t>, kPhases> g_phase_ns{};

struct PhaseTimer {
  Phase ph;
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  explicit PhaseTimer(Phase p) : ph(p) {}
  ~PhaseTimer() {
    const auto dt = std::chrono::steady_clock::now() - t0;
    g_phase_ns[size_t(ph)] += std::chrono::duration_cast<std::chrono::nanoseconds>(dt).count();
  }
};

// ---------------------------------------------------------------- cuDNN plans
#if defined(SLOTCON_WITH_CUDNN)
void cudnn_check(cudnnStatus_t st, const char* what) {
  if (st != CUDNN_STATUS_SUCCESS) throw Error(str_cat(what, ": ", cudnnGetErrorString(st)));
}

std::mutex g_cudnn_mu;
std::map<int, cudnnHandle_t>& cudnn_handles() {
  static auto* m = new std::map<int, cudnnHandle_t>();  // never destroyed: outlives the driver
  return *m;
}
using PlanKey = std::array<int64_t, 16>;
std::map<PlanKey, std::unique_ptr<CudnnConvPlan>>& plans() {
  static auto* m = new std::map<PlanKey, std::unique_ptr<CudnnConvPlan>>();
  return *m;
}

// A cuDNN handle per device, bound to the engine's stream of that device.
cudnnHandle_t cudnn_handle(int dev) {
  std::lock_guard<std::mutex> lock(g_cudnn_mu);
  auto& hs = cudnn_handles();
  auto it = hs.find(dev);
  if (it != hs.end()) return it->second;
  cuda::set_device(dev);
  cudnnHandle_t h = nullptr;
  cudnn_check(cudnnCreate(&h), "cudnnCreate");
  cudnn_check(cudnnSetStream(h, cuda::stream(dev)), "cudnnSetStream");
  hs[dev] = h;
  return h;
}

CudnnConvPlan& conv_plan(const Conv2dGeom& g, Layout l, DType dt, int dev) {
  const PlanKey key = {g.N,     g.C,        g.H,         g.W,          g.K,
                       g.R,     g.S,        g.stride_h,  g.stride_w,   g.pad_h,
                       g.pad_w, int64_t(l), int64_t(dt), int64_t(dev), int64_t(g_allow_tf32),
                       0};
  std::lock_guard<std::mutex> lock(g_cudnn_mu);
  auto& ps = plans();
  auto it = ps.find(key);
  if (it == ps.end())
    it = ps.emplace(key, std::make_unique<CudnnConvPlan>(g, l, dt, g_allow_tf32)).first;
  return *it->second;
}

// Workspace offered to cuDNN's algorithm search; halved on allocation failure.
constexpr size_t kFindWorkspaceBytes = size_t(512) << 20;
template <class Select>
void select_with_workspace(const Tensor& like, Select&& select) {
  size_t bytes = kFindWorkspaceBytes;
  for (;;) {
    std::shared_ptr<Storage> ws;
    try {
      ws = allocate(bytes, like.device());
    } catch (const Error&) {
      if (bytes <= (size_t(16) << 20)) throw;
      bytes /= 2;
      continue;
    }
    select(ws->data, bytes);
    return;
  }
}
#endif

// ---------------------------------------------------------------- convolution kernels
void conv_forward_impl(const Conv2dGeom& g, Layout l, const Tensor& x, const Tensor& w,
                       const Tensor& b, const Tensor& y) {
  dispatch(
      "conv2d", x,
      [&](auto tv) {
        using T = decltype(tv);
        PhaseTimer timer(kConvFwd);
#if defined(SLOTCON_WITH_DNNL)
        if constexpr (std::is_same<T, float>::value)
          if (use_dnnl<T>())
            return (void)conv2d_forward_dnnl(g, l, x.data<T>(), w.data<T>(), data_or_null<T>(b),
                                             y.data<T>(), dnnl_winograd());
#endif
        conv2d_forward_ref<T>(g, l, x.data<T>(), w.data<T>(), data_or_null<T>(b), y.data<T>());
      },
      [&](auto st) {
#if defined(SLOTCON_WITH_CUDNN)
        const int dev = x.device().index;
        cudnnHandle_t h = cudnn_handle(dev);
        CudnnConvPlan& plan = conv_plan(g, l, x.dtype(), dev);
        if (!plan.forward_ready())
          select_with_workspace(x, [&](void* ws, size_t n) {
            plan.select_forward(h, x.data_ptr(), w.data_ptr(), y.data_ptr(), ws, n);
          });
        Workspace ws(plan.forward_workspace(), x);
        plan.forward(h, x.data_ptr(), w.data_ptr(), y.data_ptr(), ws.data(),
                     plan.forward_workspace());
        if (b.defined()) {
          const int64_t L = g.OH() * g.OW();
          if (l == Layout::NCHW)
            conv2d_bias_add_cuda(x.dtype(), g.N, g.K, L, y.data_ptr(), b.data_ptr(), st);
          else
            conv2d_bias_add_cuda(x.dtype(), g.N * L, g.K, 1, y.data_ptr(), b.data_ptr(), st);
        }
#else
        (void)st;
        no_cuda("conv2d (cuDNN)");
#endif
      });
}

void conv_backward_data_impl(const Conv2dGeom& g, Layout l, const Tensor& dy, const Tensor& w,
                             const Tensor& dx) {
  dispatch(
      "conv2d backward", dy,
      [&](auto tv) {
        using T = decltype(tv);
        PhaseTimer timer(kConvBwdData);
#if defined(SLOTCON_WITH_DNNL)
        if constexpr (std::is_same<T, float>::value)
          if (use_dnnl<T>())
            return (void)conv2d_backward_data_dnnl(g, l, dy.data<T>(), w.data<T>(), dx.data<T>(),
                                                   dnnl_winograd());
#endif
        conv2d_backward_data_ref<T>(g, l, dy.data<T>(), w.data<T>(), dx.data<T>());
      },
      [&](auto st) {
#if defined(SLOTCON_WITH_CUDNN)
        (void)st;  // cuDNN's handle is bound to the same stream
        const int dev = dy.device().index;
        cudnnHandle_t h = cudnn_handle(dev);
        CudnnConvPlan& plan = conv_plan(g, l, dy.dtype(), dev);
        if (!plan.backward_data_ready())
          select_with_workspace(dy, [&](void* ws, size_t n) {
            plan.select_backward_data(h, dy.data_ptr(), w.data_ptr(), dx.data_ptr(), ws, n);
          });
        Workspace ws(plan.backward_data_workspace(), dy);
        plan.backward_data(h, dy.data_ptr(), w.data_ptr(), dx.data_ptr(), ws.data(),
                           plan.backward_data_workspace());
#else
        (void)st;
        no_cuda("conv2d backward (cuDNN)");
#endif
      });
}

// dw and db written (either may be undefined).
void conv_backward_weight_impl(const Conv2dGeom& g, Layout l, const Tensor& x, const Tensor& dy,
                               const Tensor& dw, const Tensor& db) {
  dispatch(
      "conv2d backward", dy,
      [&](auto tv) {
        using T = decltype(tv);
        PhaseTimer timer(kConvBwdWeight);
        Tensor dw0 = dw, db0 = db;
        if (db.defined()) fill_(db0, 0.0);
#if defined(SLOTCON_WITH_DNNL)
        if constexpr (std::is_same<T, float>::value)
          if (use_dnnl<T>()) {  // oneDNN writes dw; the bias gradient as the reference's
            if (dw.defined())
              conv2d_backward_weight_dnnl(g, l, x.data<T>(), dy.data<T>(), dw.data<T>(),
                                          dnnl_winograd());
            if (db.defined())
              conv2d_backward_weight_ref<T>(g, l, x.data<T>(), dy.data<T>(), nullptr,
                                            db.data<T>());
            return;
          }
#endif
        if (dw.defined()) fill_(dw0, 0.0);
        conv2d_backward_weight_ref<T>(g, l, x.data<T>(), dy.data<T>(),
                                      dw.defined() ? dw.data<T>() : nullptr,
                                      db.defined() ? db.data<T>() : nullptr);
      },
      [&](auto st) {
#if defined(SLOTCON_WITH_CUDNN)
        const int dev = dy.device().index;
        if (dw.defined()) {
          cudnnHandle_t h = cudnn_handle(dev);
          CudnnConvPlan& plan = conv_plan(g, l, dy.dtype(), dev);
          if (!plan.backward_weight_ready())
            select_with_workspace(dy, [&](void* ws, size_t n) {
              plan.select_backward_weight(h, x.data_ptr(), dy.data_ptr(), dw.data_ptr(), ws, n);
            });
          Workspace ws(plan.backward_weight_workspace(), dy);
          plan.backward_weight(h, x.data_ptr(), dy.data_ptr(), dw.data_ptr(), /*accumulate=*/false,
                               ws.data(), plan.backward_weight_workspace());
        }
        if (db.defined()) {
          Tensor db0 = db;
          fill_(db0, 0.0);
          Workspace ws(channel_sum_workspace_bytes(g.K), dy);
          const int64_t L = g.OH() * g.OW();
          if (l == Layout::NCHW)
            channel_sum_cuda(dy.dtype(), g.N, g.K, L, dy.data_ptr(), db.data_ptr(), ws.data(), st);
          else
            channel_sum_cuda(dy.dtype(), g.N * L, g.K, 1, dy.data_ptr(), db.data_ptr(), ws.data(),
                             st);
        }
#else
        (void)st;
        no_cuda("conv2d backward (cuDNN)");
#endif
      });
}

// ---------------------------------------------------------------- batch-norm plumbing
struct BnSetup {
  BnGeom g;
  Layout layout = Layout::NCHW;  // meaningful for 4-D x
  bool four_d = false;
};

BnSetup bn_setup(const Tensor& x) {
  BnSetup s;
  const int64_t N = x.size(0), C = x.size(1);
  if (x.dim() == 2) {
    s.g = {N, C, 1};
  } else if (x.dim() == 3) {
    s.g = {N, C, x.size(2)};
  } else {
    s.four_d = true;
    const int64_t HW = x.size(2) * x.size(3);
    s.layout = (!x.is_contiguous() && x.is_channels_last()) ? Layout::NHWC : Layout::NCHW;
    s.g = s.layout == Layout::NHWC ? BnGeom{N * HW, C, 1} : BnGeom{N, C, HW};
  }
  return s;
}

Tensor bn_dense(const Tensor& t, const BnSetup& s) {
  if (s.four_d) return dense_in(t, s.layout);
  return t.is_contiguous() ? t : t.contiguous();
}

DType param_dtype_for(DType x) { return (x == DType::BF16 || x == DType::F16) ? DType::F32 : x; }

void bn_stats_impl(const BnGeom& g, const Tensor& x, const Tensor& mask, const Tensor& stats) {
  const uint8_t* m = mask.defined() ? mask.data<uint8_t>() : nullptr;
  dispatch(
      "batch_norm", x,
      [&](auto tv) {
        using T = decltype(tv);
        PhaseTimer timer(kBnFwd);
        if constexpr (std::is_same<T, float>::value)
          if (use_fast_bn<T>())
            return batch_norm_stats_cpu(g, x.data<T>(), m, stats.data<double>());
        batch_norm_stats_ref<T>(g, x.data<T>(), m, stats.data<double>());
      },
      [&](auto st) {
        batch_norm_stats_cuda(x.dtype(), g, x.data_ptr(), m, stats.data<double>(), st);
      });
}

void check_bn_args(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& rm,
                   const Tensor& rv, const BatchNormOptions& opt) {
  const char* op = "batch_norm";
  SC_CHECK(x.defined(), op, ": input is undefined");
  SC_CHECK(is_floating(x.dtype()), op, ": needs a floating input, got ", dtype_name(x.dtype()));
  SC_CHECK(x.dim() >= 2 && x.dim() <= 4, op,
           ": input must be (N, C), (N, C, L) or (N, C, H, W), got ", shape_str(x.shape()));
  const int64_t C = x.size(1);
  SC_CHECK(C > 0, op, ": zero channels");
  const DType pd = param_dtype_for(x.dtype());
  for (const auto& [t, name] : {std::pair<const Tensor&, const char*>{weight, "weight"},
                                {bias, "bias"},
                                {rm, "running_mean"},
                                {rv, "running_var"}}) {
    if (!t.defined()) continue;
    SC_CHECK(t.shape() == Shape{C}, op, ": ", name, " must have shape [", C, "], got ",
             shape_str(t.shape()));
    SC_CHECK(t.dtype() == pd, op, ": ", name, " must be ", dtype_name(pd), " for ",
             dtype_name(x.dtype()), " input, got ", dtype_name(t.dtype()));
    SC_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device().str(), ", input on ",
             x.device().str());
  }
  SC_CHECK(rm.defined() == rv.defined(), op, ": running_mean and running_var go together");
  SC_CHECK(opt.training || rm.defined(), op, ": eval mode needs running statistics");
  if (rm.defined())
    SC_CHECK(rm.is_contiguous() && rv.is_contiguous(), op, ": running statistics must be dense");
  if (opt.residual.defined()) {
    SC_CHECK(opt.residual.shape() == x.shape(), op, ": residual shape ",
             shape_str(opt.residual.shape()), " differs from the input's ", shape_str(x.shape()));
    check_same_dev_dtype(op, x, "input", opt.residual, "residual");
  }
  if (opt.row_mask.defined()) {
    SC_CHECK(x.dim() == 2, op, ": a row mask needs a 2-D (N, C) input");
    SC_CHECK(opt.row_mask.dtype() == DType::U8 && opt.row_mask.shape() == Shape{x.size(0)}, op,
             ": row mask must be U8 of shape [", x.size(0), "]");
    SC_CHECK(opt.row_mask.device() == x.device(), op, ": row mask is on another device");
  }
}

}  // namespace

// ================================================================ convolution
void set_conv_allow_tf32(bool on) { g_allow_tf32 = on; }
bool conv_allow_tf32() { return g_allow_tf32; }
void clear_conv_plans() {
#if defined(SLOTCON_WITH_CUDNN)
  std::lock_guard<std::mutex> lock(g_cudnn_mu);
  plans().clear();
#endif
#if defined(SLOTCON_WITH_DNNL)
  conv2d_dnnl_clear_plans();
#endif
}

bool cpu_conv_onednn_built() { return kDnnlBuilt; }
void set_cpu_conv_impl(CpuConvImpl impl) {
  g_cpu_conv = kDnnlBuilt ? impl : CpuConvImpl::Reference;
}
CpuConvImpl cpu_conv_impl() { return g_cpu_conv.load(); }
void set_cpu_bn_impl(CpuBnImpl impl) { g_cpu_bn = impl; }
CpuBnImpl cpu_bn_impl() { return g_cpu_bn.load(); }

CpuNnOpTimes cpu_nn_op_times() {
  auto s = [](Phase p) { return double(g_phase_ns[size_t(p)].load()) * 1e-9; };
  return {s(kConvFwd), s(kConvBwdData), s(kConvBwdWeight), s(kBnFwd), s(kBnBwd)};
}
void reset_cpu_nn_op_times() {
  for (auto& a : g_phase_ns) a = 0;
}

Tensor conv2d(const Tensor& x_in, const Tensor& w_in, const Tensor& bias, int64_t stride,
              int64_t padding) {
  const char* op = "conv2d";
  SC_CHECK(x_in.defined() && w_in.defined(), op, ": input or weight is undefined");
  SC_CHECK(x_in.dim() == 4, op, ": input must be (N, C, H, W), got ", shape_str(x_in.shape()));
  SC_CHECK(w_in.dim() == 4, op, ": weight must be (K, C, R, S), got ", shape_str(w_in.shape()));
  SC_CHECK(is_floating(x_in.dtype()), op, ": needs a floating input");
  check_same_dev_dtype(op, x_in, "input", w_in, "weight");
  SC_CHECK(x_in.size(1) == w_in.size(1), op, ": input has ", x_in.size(1),
           " channels but the weight expects ", w_in.size(1), " (groups are not supported)");
  SC_CHECK(stride >= 1 && padding >= 0, op, ": stride must be >= 1 and padding >= 0");
  if (bias.defined()) {
    check_same_dev_dtype(op, x_in, "input", bias, "bias");
    SC_CHECK(bias.shape() == Shape{w_in.size(0)}, op, ": bias must have shape [", w_in.size(0),
             "], got ", shape_str(bias.shape()));
  }
  Conv2dGeom g;
  g.N = x_in.size(0), g.C = x_in.size(1), g.H = x_in.size(2), g.W = x_in.size(3);
  g.K = w_in.size(0), g.R = w_in.size(2), g.S = w_in.size(3);
  g.stride_h = g.stride_w = stride;
  g.pad_h = g.pad_w = padding;
  // Conv2dGeom::valid() also refuses empty tensors; say so rather than blame the kernel size.
  SC_CHECK(g.N > 0 && g.C > 0 && g.H > 0 && g.W > 0, op, ": empty input ", shape_str(x_in.shape()),
           " (an empty batch or map is not supported)");
  SC_CHECK(g.valid(), op, ": kernel ", g.R, "x", g.S, " does not fit input ",
           shape_str(x_in.shape()), " with padding ", padding);

  Layout layout;
  Tensor x = as_dense_4d(x_in, layout);
  // Weight layout: KCRS everywhere except cuDNN with NHWC activations (KRSC).
  const bool w_cl = x.is_cuda() && layout == Layout::NHWC;
  Tensor w = w_cl ? (w_in.is_channels_last() ? w_in : w_in.contiguous(MemoryFormat::ChannelsLast))
                  : (w_in.is_contiguous() ? w_in : w_in.contiguous());
  Tensor b = bias.defined() && !bias.is_contiguous() ? bias.contiguous() : bias;

  Tensor y = empty({g.N, g.K, g.OH(), g.OW()}, x.dtype(), x.device(), fmt_of(layout));
  conv_forward_impl(g, layout, x, w, b, y);

  const bool need_dx = x.requires_grad(), need_dw = w.requires_grad();
  const bool need_db = b.defined() && b.requires_grad();
  if (any_requires_grad({x, w, b})) {
    Tensor xs = x.detach(), ws = w.detach();
    record_op(op, {x, w, b}, {y},
              [g, layout, xs, ws, need_dx, need_dw, need_db, w_cl](const Grads& gr) {
                Tensor dy = dense_in(gr[0], layout);
                Tensor dx, dw, db;
                if (need_dx) {
                  dx = empty_like(xs);
                  conv_backward_data_impl(g, layout, dy, ws, dx);
                }
                if (need_dw)
                  dw = empty(ws.shape(), ws.dtype(), ws.device(),
                             w_cl ? MemoryFormat::ChannelsLast : MemoryFormat::Contiguous);
                if (need_db) db = empty({g.K}, ws.dtype(), ws.device());
                if (need_dw || need_db) conv_backward_weight_impl(g, layout, xs, dy, dw, db);
                return Grads{dx, dw, db};
              });
  }
  return y;
}

// ================================================================ batch norm
Tensor batch_norm_stats(const Tensor& x_in, const Tensor& row_mask) {
  BatchNormOptions opt;
  opt.row_mask = row_mask;
  check_bn_args(x_in, Tensor(), Tensor(), Tensor(), Tensor(), opt);
  BnSetup s = bn_setup(x_in);
  Tensor x = bn_dense(x_in.detach(), s);
  Tensor stats = empty({2 * s.g.C + 1}, DType::F64, x.device());
  bn_stats_impl(s.g, x, row_mask, stats);
  return stats;
}

Tensor batch_norm(const Tensor& x_in, const Tensor& weight, const Tensor& bias,
                  const Tensor& running_mean, const Tensor& running_var,
                  const BatchNormOptions& opt) {
  const char* op = "batch_norm";
  check_bn_args(x_in, weight, bias, running_mean, running_var, opt);
  const BnSetup s = bn_setup(x_in);
  const BnGeom g = s.g;
  const int64_t C = g.C;
  const DType xd = x_in.dtype(), pd = param_dtype_for(xd);
  Tensor x = bn_dense(x_in, s);
  Tensor res = opt.residual.defined() ? bn_dense(opt.residual, s) : Tensor();
  Tensor gamma = weight.defined() && !weight.is_contiguous() ? weight.contiguous() : weight;
  Tensor beta = bias.defined() && !bias.is_contiguous() ? bias.contiguous() : bias;
  Tensor mask = opt.row_mask.defined() && !opt.row_mask.is_contiguous() ? opt.row_mask.contiguous()
                                                                        : opt.row_mask;
  const bool training = opt.training;
  const Device dev = x.device();

  Tensor stats, save = empty({2 * C}, DType::F64, dev);
  if (training) {
    stats = empty({2 * C + 1}, DType::F64, dev);
    bn_stats_impl(g, x, mask, stats);
    if (opt.reduce_stats) opt.reduce_stats(stats);
  }
  Tensor y = empty_like(x);
  dispatch(
      op, x,
      [&](auto tv) {
        using T = decltype(tv);
        PhaseTimer timer(kBnFwd);
        batch_norm_finalize_ref<T>(C, training ? stats.data<double>() : nullptr,
                                   data_or_null<T>(running_mean), data_or_null<T>(running_var),
                                   training, opt.momentum, opt.eps, save.data<double>());
        if constexpr (std::is_same<T, float>::value)
          if (use_fast_bn<T>())
            return batch_norm_apply_cpu(g, x.data<T>(), save.data<double>(), data_or_null<T>(gamma),
                                        data_or_null<T>(beta), data_or_null<T>(res), opt.act,
                                        y.data<T>());
        batch_norm_apply_ref<T>(g, x.data<T>(), save.data<double>(), data_or_null<T>(gamma),
                                data_or_null<T>(beta), data_or_null<T>(res), opt.act, y.data<T>());
      },
      [&](auto st) {
        batch_norm_finalize_cuda(pd, C, training ? stats.data<double>() : nullptr,
                                 data_or_null(running_mean), data_or_null(running_var), training,
                                 opt.momentum, opt.eps, save.data<double>(), st);
        batch_norm_apply_cuda(xd, pd, g, x.data_ptr(), save.data<double>(), data_or_null(gamma),
                              data_or_null(beta), data_or_null(res), opt.act, y.data_ptr(), st);
      });

  if (any_requires_grad({x, gamma, beta, res})) {
    const bool need_dres = res.defined() && res.requires_grad();
    const bool need_dgamma = gamma.defined() && gamma.requires_grad();
    const bool need_dbeta = beta.defined() && beta.requires_grad();
    Tensor xs = x.detach(), gs = gamma.defined() ? gamma.detach() : Tensor();
    Tensor bs = beta.defined() ? beta.detach() : Tensor();
    Tensor rs = res.defined() ? res.detach() : Tensor();
    const Act act = opt.act;
    auto hook = opt.reduce_grad_sums;
    record_op(
        op, {x, gamma, beta, res}, {y},
        [s, xs, gs, bs, rs, mask, save, stats, act, training, hook, need_dres, need_dgamma,
         need_dbeta, pd](const Grads& gr) {
          const BnGeom& g = s.g;
          const int64_t C = g.C;
          Tensor dy = bn_dense(gr[0], s);
          const Device dev = xs.device();
          Tensor gsum = empty({2 * C}, DType::F64, dev);
          Tensor dx = empty_like(xs);
          Tensor dres = need_dres ? empty_like(xs) : Tensor();
          Tensor dgamma = need_dgamma ? zeros({C}, pd, dev) : Tensor();
          Tensor dbeta = need_dbeta ? zeros({C}, pd, dev) : Tensor();
          const uint8_t* m = mask.defined() ? mask.data<uint8_t>() : nullptr;
          const char* bop = "batch_norm backward";
          dispatch(
              bop, xs,
              [&](auto tv) {
                using T = decltype(tv);
                PhaseTimer timer(kBnBwd);
                if constexpr (std::is_same<T, float>::value)
                  if (use_fast_bn<T>())
                    return batch_norm_grad_sums_cpu(
                        g, dy.data<T>(), xs.data<T>(), save.data<double>(), data_or_null<T>(gs),
                        data_or_null<T>(bs), data_or_null<T>(rs), act, m, gsum.data<double>());
                batch_norm_grad_sums_ref<T>(g, dy.data<T>(), xs.data<T>(), save.data<double>(),
                                            data_or_null<T>(gs), data_or_null<T>(bs),
                                            data_or_null<T>(rs), act, m, gsum.data<double>());
              },
              [&](auto st) {
                batch_norm_grad_sums_cuda(xs.dtype(), pd, g, dy.data_ptr(), xs.data_ptr(),
                                          save.data<double>(), data_or_null(gs), data_or_null(bs),
                                          data_or_null(rs), act, m, gsum.data<double>(), st);
              });
          // gamma and beta take this rank's sums (the data-parallel convention: averaging the
          // parameter gradients over ranks then gives the whole batch's), dx the reduced ones
          Tensor local_sum = gsum;
          if (training && hook) {
            local_sum = gsum.clone();
            hook(gsum);
          }
          dispatch(
              bop, xs,
              [&](auto tv) {
                using T = decltype(tv);
                PhaseTimer timer(kBnBwd);
                const double count = training ? stats.data<double>()[2 * C] : 0.0;
                bool fast = false;
                if constexpr (std::is_same<T, float>::value) {
                  fast = use_fast_bn<T>();
                  if (fast)
                    batch_norm_grad_apply_cpu(g, dy.data<T>(), xs.data<T>(), save.data<double>(),
                                              data_or_null<T>(gs), data_or_null<T>(bs),
                                              data_or_null<T>(rs), act, m, gsum.data<double>(),
                                              count, training, dx.data<T>(), data_or_null<T>(dres));
                }
                if (!fast)
                  batch_norm_grad_apply_ref<T>(
                      g, dy.data<T>(), xs.data<T>(), save.data<double>(), data_or_null<T>(gs),
                      data_or_null<T>(bs), data_or_null<T>(rs), act, m, gsum.data<double>(), count,
                      training, dx.data<T>(), data_or_null<T>(dres));
                batch_norm_param_grads_ref<T>(C, local_sum.data<double>(), data_or_null<T>(dgamma),
                                              data_or_null<T>(dbeta));
              },
              [&](auto st) {
                batch_norm_grad_apply_cuda(xs.dtype(), pd, g, dy.data_ptr(), xs.data_ptr(),
                                           save.data<double>(), data_or_null(gs), data_or_null(bs),
                                           data_or_null(rs), act, m, gsum.data<double>(),
                                           training ? stats.data<double>() + 2 * C : nullptr,
                                           training, dx.data_ptr(), data_or_null(dres), st);
                batch_norm_param_grads_cuda(pd, C, local_sum.data<double>(), data_or_null(dgamma),
                                            data_or_null(dbeta), st);
              });
          return Grads{dx, dgamma, dbeta, dres};
        });
  }
  return y;
}

// ================================================================ pooling, add + relu
Tensor max_pool2d(const Tensor& x_in, int64_t kernel, int64_t stride, int64_t padding) {
  const char* op = "max_pool2d";
  SC_CHECK(x_in.defined() && x_in.dim() == 4, op, ": input must be (N, C, H, W)");
  SC_CHECK(is_floating(x_in.dtype()), op, ": needs a floating input");
  Pool2dGeom g;
  g.N = x_in.size(0), g.C = x_in.size(1), g.H = x_in.size(2), g.W = x_in.size(3);
  g.R = g.S = kernel;
  g.stride_h = g.stride_w = stride;
  g.pad_h = g.pad_w = padding;
  SC_CHECK(g.N > 0 && g.C > 0 && g.H > 0 && g.W > 0, op, ": empty input ", shape_str(x_in.shape()),
           " (an empty batch or map is not supported)");
  SC_CHECK(g.valid(), op, ": invalid kernel ", kernel, " / stride ", stride, " / padding ", padding,
           " for input ", shape_str(x_in.shape()),
           " (padding must be at most half the kernel, kernel area at most 255)");
  Layout layout;
  Tensor x = as_dense_4d(x_in, layout);
  const Shape out_shape = {g.N, g.C, g.OH(), g.OW()};
  Tensor y = empty(out_shape, x.dtype(), x.device(), fmt_of(layout));
  Tensor idx = empty(out_shape, DType::U8, x.device(), fmt_of(layout));
  dispatch(
      op, x,
      [&](auto tv) {
        using T = decltype(tv);
        max_pool2d_forward_ref<T>(g, layout, x.data<T>(), y.data<T>(), idx.data<uint8_t>());
      },
      [&](auto st) {
        max_pool2d_forward_cuda(x.dtype(), g, layout, x.data_ptr(), y.data_ptr(),
                                idx.data<uint8_t>(), st);
      });
  if (any_requires_grad({x})) {
    Tensor xs = x.detach();
    record_op(op, {x}, {y}, [g, layout, xs, idx](const Grads& gr) {
      Tensor dy = dense_in(gr[0], layout);
      Tensor dx = empty_like(xs);
      dispatch(
          "max_pool2d backward", xs,
          [&](auto tv) {
            using T = decltype(tv);
            max_pool2d_backward_ref<T>(g, layout, dy.data<T>(), idx.data<uint8_t>(), dx.data<T>());
          },
          [&](auto st) {
            max_pool2d_backward_cuda(xs.dtype(), g, layout, dy.data_ptr(), idx.data<uint8_t>(),
                                     dx.data_ptr(), st);
          });
      return Grads{dx};
    });
  }
  return y;
}

Tensor add_relu(const Tensor& a_in, const Tensor& b_in) {
  const char* op = "add_relu";
  SC_CHECK(a_in.defined() && b_in.defined(), op, ": an input is undefined");
  check_same_dev_dtype(op, a_in, "a", b_in, "b");
  SC_CHECK(is_floating(a_in.dtype()), op, ": needs floating inputs");
  SC_CHECK(a_in.shape() == b_in.shape(), op, ": shapes differ (", shape_str(a_in.shape()), " and ",
           shape_str(b_in.shape()), ")");
  // Both dense in a's layout (channels-last when a is, else contiguous).
  const MemoryFormat fmt = (a_in.dim() == 4 && !a_in.is_contiguous() && a_in.is_channels_last())
                               ? MemoryFormat::ChannelsLast
                               : MemoryFormat::Contiguous;
  auto dense = [fmt](const Tensor& t) {
    const bool ok = fmt == MemoryFormat::ChannelsLast ? t.is_channels_last() : t.is_contiguous();
    return ok ? t : t.contiguous(fmt);
  };
  Tensor a = dense(a_in), b = dense(b_in);
  Tensor y = empty(a.shape(), a.dtype(), a.device(), fmt);
  const int64_t n = a.numel();
  dispatch(
      op, a,
      [&](auto tv) {
        using T = decltype(tv);
        add_relu_ref<T>(n, a.data<T>(), b.data<T>(), y.data<T>());
      },
      [&](auto st) { add_relu_cuda(a.dtype(), n, a.data_ptr(), b.data_ptr(), y.data_ptr(), st); });
  if (any_requires_grad({a, b})) {
    Tensor ys = y.detach();
    record_op(op, {a, b}, {y}, [ys, fmt, n](const Grads& gr) {
      const bool ok =
          fmt == MemoryFormat::ChannelsLast ? gr[0].is_channels_last() : gr[0].is_contiguous();
      Tensor dy = ok ? gr[0] : gr[0].contiguous(fmt);
      Tensor d = empty_like(ys);
      dispatch(
          "add_relu backward", ys,
          [&](auto tv) {
            using T = decltype(tv);
            add_relu_backward_ref<T>(n, dy.data<T>(), ys.data<T>(), d.data<T>());
          },
          [&](auto st) {
            add_relu_backward_cuda(ys.dtype(), n, dy.data_ptr(), ys.data_ptr(), d.data_ptr(), st);
          });
      return Grads{d, d};
    });
  }
  return y;
}

Tensor normalize_images(const Tensor& u8_in, const ImageNorm& norm, DType dtype, MemoryFormat fmt) {
  const char* op = "normalize_images";
  SC_CHECK(u8_in.defined() && u8_in.dtype() == DType::U8 && u8_in.dim() == 4 && u8_in.size(3) == 3,
           op, ": needs uint8 images (B, H, W, 3), got ",
           u8_in.defined() ? u8_in.str() : std::string("an undefined tensor"));
  SC_CHECK(is_floating(dtype), op, ": the output dtype must be floating, not ", dtype_name(dtype));
  const Tensor u8 = u8_in.is_contiguous() ? u8_in : u8_in.contiguous();
  const int64_t B = u8.size(0), H = u8.size(1), W = u8.size(2);
  Tensor y = empty({B, 3, H, W}, dtype, u8.device(), fmt);
  const Shape& st = y.strides();
  const int64_t os[4] = {st[0], st[1], st[2], st[3]};
  dispatch(
      op, y,
      [&](auto tv) {
        using T = decltype(tv);
        normalize_images_ref<T>(B, H, W, u8.data<uint8_t>(), norm, y.data<T>(), os);
      },
      [&](auto s) {
        normalize_images_cuda(dtype, B, H, W, u8.data<uint8_t>(), norm, y.data_ptr(), os, s);
      });
  return y;
}

}  // namespace sc
