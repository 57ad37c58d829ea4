// conv2d_dnnl.cpp: CPU convolution through oneDNN (see conv2d.h). Compiled to nothing unless the
// build found oneDNN (SLOTCON_WITH_DNNL).
#if defined(SLOTCON_WITH_DNNL)
#include <omp.h>

#include <algorithm>
#include <array>
#include <atomic>
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

// oneDNN runs each primitive on one thread here (OpenMP's team of one: no team at all); the
// engine's pool (kernels/parallel.h) runs chunks of the batch side by side instead. OpenMP's
// spin-waiting teams, next to the pool's threads and OpenBLAS's on a small or shared machine,
// cost more than they gave (docs/cpu_profile.md). Primitives are also created under this
// setting, as oneDNN sizes some of its decompositions by the thread count at creation.
// omp_set_num_threads is per calling thread.
void one_omp_thread() {
  if (omp_get_max_threads() != 1) omp_set_num_threads(1);
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
  bool winograd = false;        // the algorithm the primitive runs
  size_t scratchpad_bytes = 0;  // the primitive's scratchpad (user mode: from the arena)
};

dims conv_dims(const Conv2dGeom& g) { return {g.stride_h, g.stride_w}; }

// y_channels: the channels of the tensor y is a slice of (y's own K when it is whole).
std::array<dnnl::memory::desc, 3> user_mds(const Conv2dGeom& g, Layout layout,
                                           int64_t y_channels) {
  const tag act = layout == Layout::NHWC ? tag::nhwc : tag::nchw;
  const int64_t OH = g.OH(), OW = g.OW(), KT = y_channels;
  const dims y_strides = layout == Layout::NHWC ? dims{OH * OW * KT, 1, OW * KT, KT}
                                                : dims{KT * OH * OW, OH * OW, OW, 1};
  return {dnnl::memory::desc({g.N, g.C, g.H, g.W}, dt::f32, act),
          dnnl::memory::desc({g.N, g.K, OH, OW}, dt::f32, y_strides),
          dnnl::memory::desc({g.K, g.C, g.R, g.S}, dt::f32, tag::oihw)};
}

// Scratchpads passed in by the caller: two threads may then run one primitive at once.
dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr a;
  a.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return a;
}

// The forward primitive descriptor (also the hint of the two backward passes).
// Descriptors of x, y and w that let the primitive choose the format.
std::array<dnnl::memory::desc, 3> any_mds(const Conv2dGeom& g) {
  return {dnnl::memory::desc({g.N, g.C, g.H, g.W}, dt::f32, tag::any),
          dnnl::memory::desc({g.N, g.K, g.OH(), g.OW()}, dt::f32, tag::any),
          dnnl::memory::desc({g.K, g.C, g.R, g.S}, dt::f32, tag::any)};
}

dnnl::convolution_forward::primitive_desc forward_pd(const Conv2dGeom& g, bool bias, bool training,
                                                     dnnl::algorithm algo) {
  const auto [x, y, w] = any_mds(g);
  const dims pad = {g.pad_h, g.pad_w};  // right/bottom = left/top: oneDNN checks OH, OW with floor
  const auto prop =
      training ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
  if (bias) {
    const dnnl::memory::desc b({g.K}, dt::f32, tag::x);
    return {{prop, algo, x, w, b, y, conv_dims(g), pad, pad}, user_scratchpad(), cpu_engine()};
  }
  return {{prop, algo, x, w, y, conv_dims(g), pad, pad}, user_scratchpad(), cpu_engine()};
}

std::unique_ptr<Plan> make_plan_with(const Conv2dGeom& g, Layout layout, Pass pass, bool bias,
                                     int64_t y_channels, dnnl::algorithm algo) {
  auto p = std::make_unique<Plan>();
  p->winograd = algo == dnnl::algorithm::convolution_winograd;
  const auto u = user_mds(g, layout, y_channels);
  p->x_user = u[0], p->y_user = u[1], p->w_user = u[2];
  if (bias) p->b_md = dnnl::memory::desc({g.K}, dt::f32, tag::x);
  const dims pad = {g.pad_h, g.pad_w};
  // forward_training: the backward passes are built against the formats training forward uses
  const auto fwd = forward_pd(g, bias && pass == Pass::Forward, true, algo);
  const auto a = any_mds(g);
  if (pass == Pass::Forward) {
    p->x_md = fwd.src_desc(), p->y_md = fwd.dst_desc(), p->w_md = fwd.weights_desc();
    p->scratchpad_bytes = fwd.scratchpad_desc().get_size();
    p->prim = dnnl::convolution_forward(fwd);
  } else if (pass == Pass::BackwardData) {
    const dnnl::convolution_backward_data::primitive_desc pd(
        {algo, a[0], a[2], a[1], conv_dims(g), pad, pad}, user_scratchpad(), cpu_engine(), fwd);
    p->x_md = pd.diff_src_desc(), p->y_md = pd.diff_dst_desc(), p->w_md = pd.weights_desc();
    p->scratchpad_bytes = pd.scratchpad_desc().get_size();
    p->prim = dnnl::convolution_backward_data(pd);
  } else {
    const dnnl::convolution_backward_weights::primitive_desc pd(
        {algo, a[0], a[2], a[1], conv_dims(g), pad, pad}, user_scratchpad(), cpu_engine(), fwd);
    p->x_md = pd.src_desc(), p->y_md = pd.diff_dst_desc(), p->w_md = pd.diff_weights_desc();
    p->scratchpad_bytes = pd.scratchpad_desc().get_size();
    p->prim = dnnl::convolution_backward_weights(pd);
  }
  return p;
}

// Winograd when asked for and eligible, if oneDNN has it for this pass on this machine (it
// throws "unimplemented" otherwise); direct convolution else.
std::unique_ptr<Plan> make_plan(const Conv2dGeom& g, Layout layout, Pass pass, bool bias,
                                int64_t y_channels, bool allow_winograd) {
  if (allow_winograd && conv2d_dnnl_winograd_eligible(g)) {
    try {
      return make_plan_with(g, layout, pass, bias, y_channels,
                            dnnl::algorithm::convolution_winograd);
    } catch (const dnnl::error&) {
    }
  }
  return make_plan_with(g, layout, pass, bias, y_channels, dnnl::algorithm::convolution_direct);
}

using Key = std::array<int64_t, 16>;
std::mutex g_mu;
std::map<Key, std::unique_ptr<Plan>>& plans() {
  static auto* m = new std::map<Key, std::unique_ptr<Plan>>();  // outlives static destructors
  return *m;
}

// y_channels: as user_mds's (default: y is whole).
Plan& plan_for(const Conv2dGeom& g, Layout layout, Pass pass, bool bias, bool allow_winograd,
               int64_t y_channels = 0) {
  if (y_channels == 0) y_channels = g.K;
  const Key key = {g.N,           g.C,           g.H,        g.W,
                   g.K,           g.R,           g.S,        g.stride_h,
                   g.stride_w,    g.pad_h,       g.pad_w,    int64_t(layout),
                   int64_t(pass), int64_t(bias), y_channels, int64_t(allow_winograd)};
  std::lock_guard<std::mutex> lock(g_mu);
  auto& ps = plans();
  auto it = ps.find(key);
  if (it == ps.end())
    it = ps.emplace(key, make_plan(g, layout, pass, bias, y_channels, allow_winograd)).first;
  return *it->second;
}

// This thread's scratch arena: four buffers, each on its own 64-byte boundary, reused across
// calls (the reordered operands and the primitive's scratchpad).
std::array<float*, 4> scratch(const std::array<size_t, 4>& bytes) {
  thread_local std::vector<float> buf;
  std::array<size_t, 4> off{};
  size_t total = 0;
  for (size_t i = 0; i < 4; ++i) {
    off[i] = total;
    total += (bytes[i] + 63) / 64 * 16;  // floats, rounded up to whole cache lines
  }
  if (buf.size() < total + 16) buf.resize(total + 16);
  float* base = buf.data();
  base += (16 - (reinterpret_cast<uintptr_t>(base) / sizeof(float)) % 16) % 16;
  return {base + off[0], base + off[1], base + off[2], base + off[3]};
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
void unbind(dnnl::memory m, const dnnl::memory::desc& user_md, void* user, dnnl::stream& s) {
  if (m.get_desc() == user_md) return;
  dnnl::memory um(user_md, cpu_engine(), user);
  dnnl::reorder(m, um).execute(s, m, um);
}

size_t bytes_if_differ(const dnnl::memory::desc& md, const dnnl::memory::desc& user) {
  return md == user ? 0 : md.get_size();
}

// The batch cut into chunks of whole images, one per pool thread (at most N): chunk i covers
// images [start(i), start(i + 1)).
struct Chunks {
  int64_t n = 1, N = 1;
  int64_t start(int64_t i) const { return N * i / n; }
};
Chunks chunks_of(int64_t N) { return {std::max<int64_t>(1, std::min<int64_t>(N, cpu_threads())), N}; }

Conv2dGeom with_batch(Conv2dGeom g, int64_t n) {
  g.N = n;
  return g;
}

// Runs f(chunk geometry, first image, chunk index) for every chunk, on the pool's threads, each
// with one OpenMP thread.
template <class F>
void for_chunks(const Conv2dGeom& g, const Chunks& ch, F&& f) {
  one_omp_thread();
  parallel_for(ch.n, 1, [&](int64_t b, int64_t e) {
    one_omp_thread();
    for (int64_t i = b; i < e; ++i) {
      const int64_t n0 = ch.start(i), n1 = ch.start(i + 1);
      f(with_batch(g, n1 - n0), n0, i);
    }
  });
}

// The weights in the primitive's format for every chunk of one call: reordered once (not once
// per chunk), the reorder split over the pool's threads in 16-channel blocks of output channels
// when oneDNN can describe such a block of both formats (else one reorder). Returns w itself when
// the formats agree, and null when the chunks' primitives want different weight formats (then
// each chunk reorders for itself). The buffer is this thread's, reused.
const float* shared_weights(const Plan& first, const Plan& last, const float* w, int64_t K) {
  if (first.w_md != last.w_md) return nullptr;
  if (first.w_md == first.w_user) return w;
  thread_local std::vector<float> buf;
  const size_t n = first.w_md.get_size() / sizeof(float) + 16;
  if (buf.size() < n) buf.resize(n);
  float* out = buf.data();
  const int64_t blocks = (K + 15) / 16;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(blocks, cpu_threads()));
  std::vector<std::pair<dnnl::memory::desc, dnnl::memory::desc>> sub;
  if (parts > 1) {
    try {
      dims d = first.w_user.dims();
      for (int64_t i = 0; i < parts; ++i) {
        const int64_t k0 = std::min(K, 16 * (blocks * i / parts));
        const int64_t k1 = std::min(K, 16 * (blocks * (i + 1) / parts));
        dims sd = d, off(d.size(), 0);
        sd[0] = k1 - k0, off[0] = k0;
        sub.emplace_back(first.w_user.submemory_desc(sd, off), first.w_md.submemory_desc(sd, off));
      }
    } catch (const dnnl::error&) {
      sub.clear();
    }
  }
  if (sub.empty()) sub.emplace_back(first.w_user, first.w_md);
  one_omp_thread();
  parallel_for(int64_t(sub.size()), 1, [&](int64_t b, int64_t e) {
    one_omp_thread();
    dnnl::stream s(cpu_engine());
    for (int64_t i = b; i < e; ++i) {
      dnnl::memory src(sub[size_t(i)].first, cpu_engine(), const_cast<float*>(w));
      dnnl::memory dst(sub[size_t(i)].second, cpu_engine(), out);
      dnnl::reorder(src, dst).execute(s, src, dst);
    }
    s.wait();
  });
  return out;
}

// The plans of a call's first and last chunk (they differ only in the batch).
std::pair<Plan*, Plan*> chunk_plans(const Conv2dGeom& g, Layout layout, Pass pass, bool bias,
                                    bool allow_winograd) {
  const Chunks ch = chunks_of(g.N);
  Plan* a = &plan_for(with_batch(g, ch.start(1) - ch.start(0)), layout, pass, bias, allow_winograd);
  Plan* b = &plan_for(with_batch(g, ch.start(ch.n) - ch.start(ch.n - 1)), layout, pass, bias,
                      allow_winograd);
  return {a, b};
}

}  // namespace

bool conv2d_dnnl_winograd_eligible(const Conv2dGeom& g) {
  return g.R == 3 && g.S == 3 && g.stride_h == 1 && g.stride_w == 1 && g.pad_h == 1 &&
         g.pad_w == 1 && g.OH() >= 8 && g.OW() >= 8 && g.C % 16 == 0 && g.K % 16 == 0;
}

bool conv2d_forward_dnnl(const Conv2dGeom& g, Layout layout, const float* x, const float* w,
                         const float* bias, float* y, bool allow_winograd) {
  std::atomic<bool> wino{false};
  const int64_t x_img = g.C * g.H * g.W, y_img = g.K * g.OH() * g.OW();
  const auto [first, last] = chunk_plans(g, layout, Pass::Forward, bias != nullptr, allow_winograd);
  const float* ws = shared_weights(*first, *last, w, g.K);
  for_chunks(g, chunks_of(g.N), [&](const Conv2dGeom& gc, int64_t n0, int64_t) {
    Plan& p = plan_for(gc, layout, Pass::Forward, bias != nullptr, allow_winograd);
    if (p.winograd) wino = true;
    dnnl::stream s(cpu_engine());
    const auto tmp =
        scratch({bytes_if_differ(p.x_md, p.x_user), ws ? 0 : bytes_if_differ(p.w_md, p.w_user),
                 bytes_if_differ(p.y_md, p.y_user), p.scratchpad_bytes});
    float* yc = y + n0 * y_img;
    dnnl::memory xm = bind(p.x_md, p.x_user, const_cast<float*>(x + n0 * x_img), tmp[0], true, s);
    dnnl::memory wm = ws ? dnnl::memory(p.w_md, cpu_engine(), const_cast<float*>(ws))
                         : bind(p.w_md, p.w_user, const_cast<float*>(w), tmp[1], true, s);
    dnnl::memory ym = bind(p.y_md, p.y_user, yc, tmp[2], false, s);
    std::unordered_map<int, dnnl::memory> args = {
        {DNNL_ARG_SRC, xm},
        {DNNL_ARG_WEIGHTS, wm},
        {DNNL_ARG_DST, ym},
        {DNNL_ARG_SCRATCHPAD, dnnl::memory({{int64_t(p.scratchpad_bytes)}, dt::u8, tag::x},
                                           cpu_engine(), tmp[3])}};
    if (bias) args[DNNL_ARG_BIAS] = dnnl::memory(p.b_md, cpu_engine(), const_cast<float*>(bias));
    p.prim.execute(s, args);
    unbind(ym, p.y_user, yc, s);
    s.wait();
  });
  return wino;
}

bool conv2d_backward_data_dnnl(const Conv2dGeom& g, Layout layout, const float* dy, const float* w,
                               float* dx, bool allow_winograd) {
  std::atomic<bool> wino{false};
  const int64_t x_img = g.C * g.H * g.W, y_img = g.K * g.OH() * g.OW();
  const auto [first, last] = chunk_plans(g, layout, Pass::BackwardData, false, allow_winograd);
  const float* ws = shared_weights(*first, *last, w, g.K);
  for_chunks(g, chunks_of(g.N), [&](const Conv2dGeom& gc, int64_t n0, int64_t) {
    Plan& p = plan_for(gc, layout, Pass::BackwardData, false, allow_winograd);
    if (p.winograd) wino = true;
    dnnl::stream s(cpu_engine());
    const auto tmp =
        scratch({bytes_if_differ(p.y_md, p.y_user), ws ? 0 : bytes_if_differ(p.w_md, p.w_user),
                 bytes_if_differ(p.x_md, p.x_user), p.scratchpad_bytes});
    float* dxc = dx + n0 * x_img;
    dnnl::memory dym =
        bind(p.y_md, p.y_user, const_cast<float*>(dy + n0 * y_img), tmp[0], true, s);
    dnnl::memory wm = ws ? dnnl::memory(p.w_md, cpu_engine(), const_cast<float*>(ws))
                         : bind(p.w_md, p.w_user, const_cast<float*>(w), tmp[1], true, s);
    dnnl::memory dxm = bind(p.x_md, p.x_user, dxc, tmp[2], false, s);
    p.prim.execute(s, {{DNNL_ARG_DIFF_DST, dym},
                       {DNNL_ARG_WEIGHTS, wm},
                       {DNNL_ARG_DIFF_SRC, dxm},
                       {DNNL_ARG_SCRATCHPAD,
                        dnnl::memory({{int64_t(p.scratchpad_bytes)}, dt::u8, tag::x},
                                     cpu_engine(), tmp[3])}});
    unbind(dxm, p.x_user, dxc, s);
    s.wait();
  });
  return wino;
}

// Split over output channels, not images: every dw element is then one oneDNN sum over the whole
// batch, the same for any thread count (a split over images adds partial sums, and those changed
// the data-parallel test's results by ~100x more than the other summation orders did).
bool conv2d_backward_weight_dnnl(const Conv2dGeom& g, Layout layout, const float* x,
                                 const float* dy, float* dw, bool allow_winograd) {
  std::atomic<bool> wino{false};
  const int64_t L = g.OH() * g.OW(), w_out = g.C * g.R * g.S;
  // Direct: chunks of whole 16-channel blocks (oneDNN's blocking on AVX-512), one per pool
  // thread; a direct dw element sums in the same order whatever the chunk. Winograd's sums depend
  // on the chunk's channel count, so it takes fixed chunks of 32 (16) channels, as many as there
  // are, whatever the thread count.
  const bool wino_shape = allow_winograd && conv2d_dnnl_winograd_eligible(g);
  const int64_t blocks = (g.K + 15) / 16;
  const int64_t n = wino_shape ? g.K / (g.K % 32 == 0 ? 32 : 16)
                               : std::max<int64_t>(1, std::min<int64_t>(blocks, cpu_threads()));
  auto k_start = [&](int64_t i) { return std::min(g.K, 16 * (blocks * i / n)); };
  one_omp_thread();
  parallel_for(n, 1, [&](int64_t b, int64_t e) {
    one_omp_thread();
    for (int64_t i = b; i < e; ++i) {
      const int64_t k0 = k_start(i), k1 = k_start(i + 1);
      Conv2dGeom gc = g;
      gc.K = k1 - k0;
      Plan& p = plan_for(gc, layout, Pass::BackwardWeight, false, allow_winograd, g.K);
      if (p.winograd) wino = true;
      dnnl::stream s(cpu_engine());
      const auto tmp = scratch({bytes_if_differ(p.x_md, p.x_user),
                                bytes_if_differ(p.y_md, p.y_user),
                                bytes_if_differ(p.w_md, p.w_user), p.scratchpad_bytes});
      const float* dyc = dy + (layout == Layout::NHWC ? k0 : k0 * L);
      float* dwc = dw + k0 * w_out;
      dnnl::memory xm = bind(p.x_md, p.x_user, const_cast<float*>(x), tmp[0], true, s);
      dnnl::memory dym = bind(p.y_md, p.y_user, const_cast<float*>(dyc), tmp[1], true, s);
      dnnl::memory dwm = bind(p.w_md, p.w_user, dwc, tmp[2], false, s);
      p.prim.execute(s, {{DNNL_ARG_SRC, xm},
                         {DNNL_ARG_DIFF_DST, dym},
                         {DNNL_ARG_DIFF_WEIGHTS, dwm},
                         {DNNL_ARG_SCRATCHPAD,
                          dnnl::memory({{int64_t(p.scratchpad_bytes)}, dt::u8, tag::x},
                                       cpu_engine(), tmp[3])}});
      unbind(dwm, p.w_user, dwc, s);
      s.wait();
    }
  });
  return wino;
}

void conv2d_dnnl_clear_plans() {
  std::lock_guard<std::mutex> lock(g_mu);
  plans().clear();
}

}  // namespace sc
#endif  // SLOTCON_WITH_DNNL
