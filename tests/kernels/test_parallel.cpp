// The CPU ops' thread pool: every index once, errors, nesting, concurrent callers; and the CPU
// references that use it give the same bits for 1 thread and several.
#include <atomic>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

#include "test_seed.h"
#include "kernel_test_util.h"
#include "kernels/batch_norm.h"
#include "kernels/conv2d.h"
#include "kernels/max_pool.h"
#include "kernels/parallel.h"

namespace {

// Restores the process's thread count when a test ends.
struct ThreadsGuard {
  int saved = sc::cpu_threads();
  ~ThreadsGuard() { sc::set_cpu_threads(saved); }
};

template <class T>
std::vector<T> rand_vec(size_t n, std::mt19937_64& rng, double lo = -1, double hi = 1) {
  const kernel_test::Vec v = kernel_test::random_vec(n, rng, lo, hi);
  return std::vector<T>(v.begin(), v.end());
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// Runs `compute` (which fills its outputs from fixed inputs) with 1 thread and with `many`,
// returning both results.
template <class R, class F>
std::pair<R, R> one_and_many(int many, F&& compute) {
  ThreadsGuard guard;
  sc::set_cpu_threads(1);
  R one = compute();
  sc::set_cpu_threads(many);
  R par = compute();
  return {std::move(one), std::move(par)};
}

}  // namespace

TEST_CASE("parallel_for hands out every index exactly once", "[parallel]") {
  ThreadsGuard guard;
  for (int threads : {1, 2, 3, 8})
    for (int64_t n : {0, 1, 5, 63, 64, 1000, 100003})
      for (int64_t grain : {1, 7, 64, 100000}) {
        sc::set_cpu_threads(threads);
        REQUIRE(sc::cpu_threads() == threads);
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        for (auto& h : hits) h.store(0);
        std::atomic<int64_t> calls{0}, short_ranges{0};
        sc::parallel_for(n, grain, [&](int64_t b, int64_t e) {
          ++calls;
          if (e - b < grain && e != n) ++short_ranges;  // only the last range may be short
          for (int64_t i = b; i < e; ++i) hits[size_t(i)].fetch_add(1);
        });
        INFO("threads " << threads << " n " << n << " grain " << grain);
        for (int64_t i = 0; i < n; ++i) REQUIRE(hits[size_t(i)].load() == 1);
        CHECK(short_ranges.load() == 0);
        if (n > 0 && (threads == 1 || n < 2 * grain)) CHECK(calls.load() == 1);
        if (n == 0) CHECK(calls.load() == 0);
        if (threads > 1 && n >= 2 * grain) CHECK(calls.load() >= 2);
      }
}

TEST_CASE("parallel_for rethrows the first error and stays usable", "[parallel]") {
  ThreadsGuard guard;
  sc::set_cpu_threads(4);
  for (int round = 0; round < 20; ++round) {
    std::atomic<int64_t> ran{0};
    REQUIRE_THROWS_WITH(sc::parallel_for(10000, 10,
                                         [&](int64_t b, int64_t e) {
                                           ran += e - b;
                                           if (b <= 5000 && 5000 < e)
                                             throw std::runtime_error("range with 5000");
                                         }),
                        "range with 5000");
    CHECK(ran.load() >= 10);
  }
  std::atomic<int64_t> sum{0};
  sc::parallel_for(1000, 10, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) sum += i;
  });
  CHECK(sum.load() == 999 * 1000 / 2);
}

TEST_CASE("parallel_for nested inside a range runs that inner loop serially", "[parallel]") {
  ThreadsGuard guard;
  sc::set_cpu_threads(3);
  std::vector<int> out(64 * 100, 0), inner_calls(64, 0);
  sc::parallel_for(64, 1, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      sc::parallel_for(100, 1, [&](int64_t ib, int64_t ie) {
        ++inner_calls[size_t(r)];  // not atomic: the inner loop must be one serial call
        for (int64_t i = ib; i < ie; ++i) out[size_t(r * 100 + i)] += int(r + i);
      });
  });
  for (int64_t r = 0; r < 64; ++r) REQUIRE(inner_calls[size_t(r)] == 1);
  for (int64_t r = 0; r < 64; ++r)
    for (int64_t i = 0; i < 100; ++i) REQUIRE(out[size_t(r * 100 + i)] == int(r + i));
}

TEST_CASE("parallel_for from several threads at once", "[parallel]") {
  ThreadsGuard guard;
  sc::set_cpu_threads(3);
  constexpr int kCallers = 4, kRounds = 50;
  std::vector<int64_t> sums(kCallers, 0);
  std::vector<std::thread> callers;
  for (int t = 0; t < kCallers; ++t)
    callers.emplace_back([&, t] {
      for (int round = 0; round < kRounds; ++round) {
        std::atomic<int64_t> s{0};
        sc::parallel_for(5000, 16, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) s += i + t;
        });
        sums[size_t(t)] += s.load();
      }
    });
  for (std::thread& c : callers) c.join();
  for (int t = 0; t < kCallers; ++t)
    CHECK(sums[size_t(t)] == kRounds * (int64_t(4999) * 5000 / 2 + int64_t(5000) * t));
}

TEST_CASE("conv2d CPU refs give the same bits on 1 thread and several", "[parallel][conv2d]") {
  std::mt19937_64 rng(sc::testing::next_seed());
  struct Case {
    int64_t N, C, H, W, K, R, stride, pad;
  };
  for (Case c : {Case{5, 7, 13, 11, 6, 3, 1, 1}, Case{4, 16, 24, 24, 8, 3, 2, 1},
                 Case{3, 12, 9, 9, 10, 1, 1, 0}, Case{2, 3, 31, 29, 16, 7, 2, 3}})
    for (sc::Layout l : {sc::Layout::NCHW, sc::Layout::NHWC}) {
      sc::Conv2dGeom g;
      g.N = c.N, g.C = c.C, g.H = c.H, g.W = c.W, g.K = c.K, g.R = g.S = c.R;
      g.stride_h = g.stride_w = c.stride, g.pad_h = g.pad_w = c.pad;
      const size_t nx = size_t(g.N * g.C * g.H * g.W), nw = size_t(g.K * g.C * g.R * g.S);
      const size_t ny = size_t(g.N * g.K * g.OH() * g.OW());
      const auto x = rand_vec<float>(nx, rng), w = rand_vec<float>(nw, rng);
      const auto b = rand_vec<float>(size_t(g.K), rng), dy = rand_vec<float>(ny, rng);
      using Out = std::vector<std::vector<float>>;
      auto [one, par] = one_and_many<Out>(3, [&] {
        std::vector<float> y(ny), dx(nx), dw(nw, 0.5f), db(size_t(g.K), 0.25f);
        sc::conv2d_forward_ref<float>(g, l, x.data(), w.data(), b.data(), y.data());
        sc::conv2d_backward_data_ref<float>(g, l, dy.data(), w.data(), dx.data());
        sc::conv2d_backward_weight_ref<float>(g, l, x.data(), dy.data(), dw.data(), db.data());
        return Out{y, dx, dw, db};
      });
      INFO("N " << c.N << " C " << c.C << " R " << c.R << " stride " << c.stride << " layout "
                << int(l));
      for (size_t i = 0; i < one.size(); ++i) CHECK(same_bits(one[i], par[i]));
    }
}

TEST_CASE("batch_norm and max_pool CPU refs give the same bits on 1 thread and several",
          "[parallel][batch_norm][max_pool]") {
  std::mt19937_64 rng(sc::testing::next_seed());
  for (bool one_d : {false, true})
    for (sc::Act act : {sc::Act::None, sc::Act::Relu, sc::Act::Gelu}) {
      sc::BnGeom g;
      g.outer = one_d ? 300 : 6, g.C = one_d ? 129 : 33, g.inner = one_d ? 1 : 17 * 19;
      const size_t n = size_t(g.numel());
      const auto x = rand_vec<double>(n, rng, -2, 3), dy = rand_vec<double>(n, rng);
      const auto res = rand_vec<double>(n, rng), gamma = rand_vec<double>(size_t(g.C), rng);
      const auto beta = rand_vec<double>(size_t(g.C), rng);
      std::vector<uint8_t> mask(size_t(g.outer));
      for (uint8_t& m : mask) m = uint8_t(rng() % 3 != 0);
      const uint8_t* mk = one_d ? mask.data() : nullptr;
      const double* rp = one_d ? nullptr : res.data();
      using Out = std::vector<std::vector<double>>;
      auto [one, par] = one_and_many<Out>(4, [&] {
        std::vector<double> stats(size_t(2 * g.C + 1)), save(size_t(2 * g.C));
        std::vector<double> rm(size_t(g.C), 0.0), rv(size_t(g.C), 1.0), y(n), gsum(size_t(2 * g.C));
        std::vector<double> dx(n), dres(n), dgamma(size_t(g.C), 0.0), dbeta(size_t(g.C), 0.0);
        sc::batch_norm_stats_ref<double>(g, x.data(), mk, stats.data());
        sc::batch_norm_finalize_ref<double>(g.C, stats.data(), rm.data(), rv.data(), true, 0.1,
                                            1e-5, save.data());
        sc::batch_norm_apply_ref<double>(g, x.data(), save.data(), gamma.data(), beta.data(), rp,
                                         act, y.data());
        sc::batch_norm_grad_sums_ref<double>(g, dy.data(), x.data(), save.data(), gamma.data(),
                                             beta.data(), rp, act, mk, gsum.data());
        sc::batch_norm_grad_apply_ref<double>(
            g, dy.data(), x.data(), save.data(), gamma.data(), beta.data(), rp, act, mk,
            gsum.data(), stats[size_t(2 * g.C)], true, dx.data(), rp ? dres.data() : nullptr);
        sc::batch_norm_param_grads_ref<double>(g.C, gsum.data(), dgamma.data(), dbeta.data());
        return Out{stats, save, rm, rv, y, gsum, dx, dres, dgamma, dbeta};
      });
      INFO("1-d " << one_d << " act " << int(act));
      for (size_t i = 0; i < one.size(); ++i) CHECK(same_bits(one[i], par[i]));
    }
  for (sc::Layout l : {sc::Layout::NCHW, sc::Layout::NHWC}) {
    sc::Pool2dGeom g;
    g.N = 3, g.C = 37, g.H = 41, g.W = 38;
    const size_t nx = size_t(g.N * g.C * g.H * g.W), ny = size_t(g.N * g.C * g.OH() * g.OW());
    auto x = rand_vec<float>(nx, rng);
    for (size_t i = 0; i < nx; i += 97) x[i] = NAN;  // NaNs win their windows
    const auto dy = rand_vec<float>(ny, rng);
    using Out = std::pair<std::vector<float>, std::vector<uint8_t>>;
    auto [one, par] = one_and_many<Out>(3, [&] {
      std::vector<float> y(ny), dx(nx);
      std::vector<uint8_t> idx(ny);
      sc::max_pool2d_forward_ref<float>(g, l, x.data(), y.data(), idx.data());
      sc::max_pool2d_backward_ref<float>(g, l, dy.data(), idx.data(), dx.data());
      y.insert(y.end(), dx.begin(), dx.end());
      return Out{y, idx};
    });
    CHECK(same_bits(one.first, par.first));
    CHECK(same_bits(one.second, par.second));
  }
}
