// conv2d_dnnl.cpp: CPU convolution through oneDNN (see conv2d.h). Compiled to nothing unless the
// build found oneDNN (SLOTCON_WITH_DNNL).
#if defined(SLOTCON_WITH_DNNL)
#include <omp.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "dnnl.hpp"
#include "kernels/conv2d.h"
#include "kernels/parallel.h"

namespace sc {
namespace {

using dims = dnnl::memory::dims;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

dnnl::engine& cpu_engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

// oneDNN runs on OpenMP threads; give it as many as the engine's own pool has (cpu_threads()),
// so that SLOTCON_NUM_THREADS governs both. omp_set_num_threads is per calling thread.
void sync_threads() {
  const int n = cpu_threads();
  if (omp_get_max_threads() != n) omp_set_num_threads(n);
}

enum class Pass : int64_t { Forward, BackwardData, BackwardWeight };

// One convolution's primitives for one pass, built once per (shape, layout, pass, bias).
// The primitive picks its own memory formats (format_tag::any, usually blocked nChw16c /
// OIhw16i16o on AVX-512); the caller's dense tensors are reordered in and out around it when the
// formats differ. The reorders' buffers come from a per-thread scratch arena.
struct Plan {
  dnnl::memory::desc x_user, y_user, w_user, b_md;  // the caller's formats
  dnnl::memory::desc x_md, y_md, w_md;              // the primitive's
  dnnl::primitive prim;
  std::mutex mu;  // executing one primitive from two threads at once is not supported here
};

dims conv_dims(const Conv2dGeom& g) { return {g.stride_h, g.stride_w}; }

std::array<dnnl::memory::desc, 3> user_mds(const Conv2dGeom& g, Layout layout) {
  const tag act = layout == Layout::NHWC ? tag::nhwc : tag::nchw;
  return {dnnl::memory::desc({g.N, g.C, g.H, g.W}, dt::f32, act),
          dnnl::memory::desc({g.N, g.K, g.OH(), g.OW()}, dt::f32, act),
          dnnl::memory::desc({g.K, g.C, g.R, g.S}, dt::f32, tag::oihw)};
}

// The forward primitive descriptor (also the hint of the two backward passes).
// Descriptors of x, y and w that let the primitive choose the format.
std::array<dnnl::memory::desc, 3> any_mds(const Conv2dGeom& g) {
  return {dnnl::memory::desc({g.N, g.C, g.H, g.W}, dt::f32, tag::any),
          dnnl::memory::desc({g.N, g.K, g.OH(), g.OW()}, dt::f32, tag::any),
          dnnl::memory::desc({g.K, g.C, g.R, g.S}, dt::f32, tag::any)};
}

dnnl::convolution_forward::primitive_desc forward_pd(const Conv2dGeom& g, bool bias,
                                                     bool training) {
  const auto [x, y, w] = any_mds(g);
  const dims pad = {g.pad_h, g.pad_w};  // right/bottom = left/top: oneDNN checks OH, OW with floor
  const auto prop =
      training ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
  if (bias) {
    const dnnl::memory::desc b({g.K}, dt::f32, tag::x);
    return {{prop, dnnl::algorithm::convolution_direct, x, w, b, y, conv_dims(g), pad, pad},
            cpu_engine()};
  }
  return {{prop, dnnl::algorithm::convolution_direct, x, w, y, conv_dims(g), pad, pad},
          cpu_engine()};
}

std::unique_ptr<Plan> make_plan(const Conv2dGeom& g, Layout layout, Pass pass, bool bias) {
  auto p = std::make_unique<Plan>();
  const auto u = user_mds(g, layout);
  p->x_user = u[0], p->y_user = u[1], p->w_user = u[2];
  if (bias) p->b_md = dnnl::memory::desc({g.K}, dt::f32, tag::x);
  const dims pad = {g.pad_h, g.pad_w};
  // forward_training: the backward passes are built against the formats training forward uses
  const auto fwd = forward_pd(g, bias && pass == Pass::Forward, true);
  const auto a = any_mds(g);
  if (pass == Pass::Forward) {
    p->x_md = fwd.src_desc(), p->y_md = fwd.dst_desc(), p->w_md = fwd.weights_desc();
    p->prim = dnnl::convolution_forward(fwd);
  } else if (pass == Pass::BackwardData) {
    const dnnl::convolution_backward_data::primitive_desc pd(
        {dnnl::algorithm::convolution_direct, a[0], a[2], a[1], conv_dims(g), pad, pad},
        cpu_engine(), fwd);
    p->x_md = pd.diff_src_desc(), p->y_md = pd.diff_dst_desc(), p->w_md = pd.weights_desc();
    p->prim = dnnl::convolution_backward_data(pd);
  } else {
    const dnnl::convolution_backward_weights::primitive_desc pd(
        {dnnl::algorithm::convolution_direct, a[0], a[2], a[1], conv_dims(g), pad, pad},
        cpu_engine(), fwd);
    p->x_md = pd.src_desc(), p->y_md = pd.diff_dst_desc(), p->w_md = pd.diff_weights_desc();
    p->prim = dnnl::convolution_backward_weights(pd);
  }
  return p;
}

using Key = std::array<int64_t, 14>;
std::mutex g_mu;
std::map<Key, std::unique_ptr<Plan>>& plans() {
  static auto* m = new std::map<Key, std::unique_ptr<Plan>>();  // outlives static destructors
  return *m;
}

Plan& plan_for(const Conv2dGeom& g, Layout layout, Pass pass, bool bias) {
  const Key key = {g.N,      g.C,     g.H,          g.W,           g.K,          g.R,
                   g.S,      g.stride_h, g.stride_w, g.pad_h,       g.pad_w,      int64_t(layout),
                   int64_t(pass), int64_t(bias)};
  std::lock_guard<std::mutex> lock(g_mu);
  auto& ps = plans();
  auto it = ps.find(key);
  if (it == ps.end()) it = ps.emplace(key, make_plan(g, layout, pass, bias)).first;
  return *it->second;
}

// This thread's scratch arena for the reordered copies: three buffers, each on its own 64-byte
// boundary, reused across calls.
std::array<float*, 3> scratch(const std::array<size_t, 3>& bytes) {
  thread_local std::vector<float> buf;
  std::array<size_t, 3> off{};
  size_t total = 0;
  for (int i = 0; i < 3; ++i) {
    off[size_t(i)] = total;
    total += (bytes[size_t(i)] + 63) / 64 * 16;  // floats, rounded up to whole cache lines
  }
  if (buf.size() < total + 16) buf.resize(total + 16);
  float* base = buf.data();
  base += (16 - (reinterpret_cast<uintptr_t>(base) / sizeof(float)) % 16) % 16;
  return {base + off[0], base + off[1], base + off[2]};
}

// A memory for `md` over the caller's `user` data when the formats agree; otherwise one over
// `tmp` (in md's format), filled from the user's data when `in` is set.
dnnl::memory bind(const dnnl::memory::desc& md, const dnnl::memory::desc& user_md, void* user,
                  float* tmp, bool in, dnnl::stream& s) {
  if (md == user_md) return dnnl::memory(md, cpu_engine(), user);
  dnnl::memory m(md, cpu_engine(), tmp);
  if (in) {
    dnnl::memory um(user_md, cpu_engine(), user);
    dnnl::reorder(um, m).execute(s, um, m);
  }
  return m;
}

// Copy a primitive-format result back to the caller's format (no-op when they agree).
void unbind(dnnl::memory m, const dnnl::memory::desc& user_md, void* user,
            dnnl::stream& s) {
  if (m.get_desc() == user_md) return;
  dnnl::memory um(user_md, cpu_engine(), user);
  dnnl::reorder(m, um).execute(s, m, um);
}

size_t bytes_if_differ(const dnnl::memory::desc& md, const dnnl::memory::desc& user) {
  return md == user ? 0 : md.get_size();
}

}  // namespace

void conv2d_forward_dnnl(const Conv2dGeom& g, Layout layout, const float* x, const float* w,
                         const float* bias, float* y) {
  sync_threads();
  Plan& p = plan_for(g, layout, Pass::Forward, bias != nullptr);
  std::lock_guard<std::mutex> lock(p.mu);
  dnnl::stream s(cpu_engine());
  const auto tmp = scratch({bytes_if_differ(p.x_md, p.x_user), bytes_if_differ(p.w_md, p.w_user),
                            bytes_if_differ(p.y_md, p.y_user)});
  dnnl::memory xm = bind(p.x_md, p.x_user, const_cast<float*>(x), tmp[0], true, s);
  dnnl::memory wm = bind(p.w_md, p.w_user, const_cast<float*>(w), tmp[1], true, s);
  dnnl::memory ym = bind(p.y_md, p.y_user, y, tmp[2], false, s);
  std::unordered_map<int, dnnl::memory> args = {
      {DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, ym}};
  if (bias) args[DNNL_ARG_BIAS] = dnnl::memory(p.b_md, cpu_engine(), const_cast<float*>(bias));
  p.prim.execute(s, args);
  unbind(ym, p.y_user, y, s);
  s.wait();
}

void conv2d_backward_data_dnnl(const Conv2dGeom& g, Layout layout, const float* dy, const float* w,
                               float* dx) {
  sync_threads();
  Plan& p = plan_for(g, layout, Pass::BackwardData, false);
  std::lock_guard<std::mutex> lock(p.mu);
  dnnl::stream s(cpu_engine());
  const auto tmp = scratch({bytes_if_differ(p.y_md, p.y_user), bytes_if_differ(p.w_md, p.w_user),
                            bytes_if_differ(p.x_md, p.x_user)});
  dnnl::memory dym = bind(p.y_md, p.y_user, const_cast<float*>(dy), tmp[0], true, s);
  dnnl::memory wm = bind(p.w_md, p.w_user, const_cast<float*>(w), tmp[1], true, s);
  dnnl::memory dxm = bind(p.x_md, p.x_user, dx, tmp[2], false, s);
  p.prim.execute(s, {{DNNL_ARG_DIFF_DST, dym}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DIFF_SRC, dxm}});
  unbind(dxm, p.x_user, dx, s);
  s.wait();
}

void conv2d_backward_weight_dnnl(const Conv2dGeom& g, Layout layout, const float* x,
                                 const float* dy, float* dw) {
  sync_threads();
  Plan& p = plan_for(g, layout, Pass::BackwardWeight, false);
  std::lock_guard<std::mutex> lock(p.mu);
  dnnl::stream s(cpu_engine());
  const auto tmp = scratch({bytes_if_differ(p.x_md, p.x_user), bytes_if_differ(p.y_md, p.y_user),
                            bytes_if_differ(p.w_md, p.w_user)});
  dnnl::memory xm = bind(p.x_md, p.x_user, const_cast<float*>(x), tmp[0], true, s);
  dnnl::memory dym = bind(p.y_md, p.y_user, const_cast<float*>(dy), tmp[1], true, s);
  dnnl::memory dwm = bind(p.w_md, p.w_user, dw, tmp[2], false, s);
  p.prim.execute(s, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_DIFF_DST, dym}, {DNNL_ARG_DIFF_WEIGHTS, dwm}});
  unbind(dwm, p.w_user, dw, s);
  s.wait();
}

void conv2d_dnnl_clear_plans() {
  std::lock_guard<std::mutex> lock(g_mu);
  plans().clear();
}

}  // namespace sc
#endif  // SLOTCON_WITH_DNNL
