// The communicator (engine/comm.h): the single backend is the identity; the loopback backend's
// collectives give every rank the same, rank-ordered results for each dtype, and a rank that
// stops answering (or aborts) ends the others with an sc::Error within the timeout.
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "engine/comm.h"
#include "engine/grad_buckets.h"
#include "engine/ops.h"
#include "test_seed.h"

using namespace sc;

namespace {

// f(rank, comm) on one thread per rank; the first exception is rethrown here (Catch2's macros are
// not thread-safe, so the checks run afterwards on the main thread).
template <class F>
void on_ranks(LoopbackGroup& g, F f) {
  std::vector<std::exception_ptr> err(size_t(g.world()));
  std::vector<std::thread> ts;
  for (int r = 0; r < g.world(); ++r)
    ts.emplace_back([&, r] {
      try {
        f(r, g.comm(r));
      } catch (...) {
        err[size_t(r)] = std::current_exception();
      }
    });
  for (auto& t : ts) t.join();
  for (auto& e : err)
    if (e) std::rethrow_exception(e);
}

}  // namespace

TEST_CASE("comm: the single communicator is the identity", "[comm]") {
  auto c = make_single_communicator();
  CHECK(c->world() == 1);
  CHECK(c->rank() == 0);
  Tensor t = from_vector({1, 2, 3}, {3});
  c->all_reduce_sum(t);
  c->broadcast(t, 0);
  c->barrier();
  CHECK(t.to_vector() == std::vector<double>{1, 2, 3});
  CHECK(c->all_gather_rows(t).to_vector() == std::vector<double>{1, 2, 3});
  CHECK(c->broadcast_string("abc") == "abc");
  CHECK(c->all_gather_i64(-5) == std::vector<int64_t>{-5});
  Tensor bf16 = zeros({2}, DType::BF16);
  REQUIRE_THROWS_WITH(c->all_reduce_sum(bf16), Catch::Contains("BF16"));
}

TEST_CASE("comm: loopback collectives, every dtype, rank order", "[comm]") {
  const uint64_t seed = sc::testing::next_seed();
  INFO("seed " << seed);
  for (int world : {1, 2, 3}) {
    INFO("world " << world);
    LoopbackGroup g(world, 30.0);
    // per rank: the inputs (drawn from the rank's seed) and what came back
    std::vector<std::vector<Tensor>> in(static_cast<size_t>(world)),
        out(static_cast<size_t>(world));
    std::vector<std::string> strings(static_cast<size_t>(world));
    std::vector<std::vector<int64_t>> ids(static_cast<size_t>(world));
    on_ranks(g, [&](int r, Communicator& c) {
      Generator gen(seed + uint64_t(r));
      std::vector<Tensor>& i = in[size_t(r)];
      std::vector<Tensor>& o = out[size_t(r)];
      i.push_back(randn({5, 3}, gen, DType::F32));
      i.push_back(randn({7}, gen, DType::F64));
      i.push_back(from_vector({double(r), -3.0 * r, 1e15}, {3}, DType::I64));
      i.push_back(from_vector({double(r + 1), 2}, {2}, DType::U8));
      for (const Tensor& t : i) {
        Tensor s = t.clone();
        c.all_reduce_sum(s);
        o.push_back(s);
      }
      // a non-contiguous view is written back through its strides
      Tensor base = full({3, 4}, double(r + 1), DType::F64);
      Tensor view = transpose(base, 0, 1);
      c.all_reduce_sum(view);
      o.push_back(base);
      o.push_back(c.all_gather_rows(i[0]));
      o.push_back(c.all_gather_rows(i[3]));
      Tensor b = i[1].clone();
      c.broadcast(b, world - 1);
      o.push_back(b);
      c.barrier();
      strings[size_t(r)] = c.broadcast_string(r == 0 ? "from rank zero" : "");
      ids[size_t(r)] = c.all_gather_i64((int64_t(1) << 62) + r);
    });
    for (int r = 0; r < world; ++r) {
      INFO("rank " << r);
      const auto& o = out[size_t(r)];
      for (size_t k = 0; k < 4; ++k) {
        INFO("dtype case " << k);
        // the rank-order sum, in the tensor's own type (float for F32; the others are exact or
        // summed in double)
        std::vector<double> want = in[0][k].to_vector();
        for (int q = 1; q < world; ++q) {
          const std::vector<double> v = in[size_t(q)][k].to_vector();
          for (size_t i = 0; i < want.size(); ++i)
            want[i] = k == 0 ? double(float(want[i]) + float(v[i])) : want[i] + v[i];
        }
        CHECK(o[k].to_vector() == want);
        CHECK(o[k].to_vector() == out[0][k].to_vector());  // every rank the same bits
      }
      const double tri = world * (world + 1) / 2.0;
      for (double v : o[4].to_vector()) CHECK(v == tri);
      std::vector<double> rows, masks;
      for (int q = 0; q < world; ++q) {
        for (double v : in[size_t(q)][0].to_vector()) rows.push_back(v);
        for (double v : in[size_t(q)][3].to_vector()) masks.push_back(v);
      }
      CHECK(o[5].shape() == Shape{5 * world, 3});
      CHECK(o[5].to_vector() == rows);
      CHECK(o[6].to_vector() == masks);
      CHECK(o[7].to_vector() == in[size_t(world - 1)][1].to_vector());
      CHECK(strings[size_t(r)] == "from rank zero");
      REQUIRE(ids[size_t(r)].size() == size_t(world));
      for (int q = 0; q < world; ++q) CHECK(ids[size_t(r)][size_t(q)] == (int64_t(1) << 62) + q);
    }
  }
}

TEST_CASE("comm: a rank that stops answering ends the others within the timeout", "[comm]") {
  const double timeout = 0.5;
  LoopbackGroup g(3, timeout);
  std::vector<std::string> errors(3);
  std::vector<double> waited(3, 0);
  on_ranks(g, [&](int r, Communicator& c) {
    Tensor t = ones({4});
    c.all_reduce_sum(t);  // everyone meets once
    if (r == 2) return;   // rank 2 "dies": it never joins the next collective
    const auto start = std::chrono::steady_clock::now();
    try {
      c.all_reduce_sum(t);
    } catch (const Error& e) {
      errors[size_t(r)] = e.what();
    }
    waited[size_t(r)] =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  });
  for (int r = 0; r < 2; ++r) {
    INFO("rank " << r << ": " << errors[size_t(r)]);
    CHECK(!errors[size_t(r)].empty());
    CHECK(waited[size_t(r)] < timeout + 5.0);
  }
  // one of them timed out; the other was told the group failed (or timed out itself)
  const std::string all = errors[0] + " | " + errors[1];
  CHECK(all.find("no answer from the other ranks within 0.5 s") != std::string::npos);
  // after a failure every collective fails at once
  REQUIRE_THROWS_WITH(g.comm(0).barrier(), Catch::Contains("has failed"));
}

TEST_CASE("comm: abort on one rank fails the others' next collective at once", "[comm]") {
  LoopbackGroup g(2, 60.0);
  std::string error;
  double waited = 0;
  on_ranks(g, [&](int r, Communicator& c) {
    if (r == 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      c.abort(3);
      return;
    }
    const auto start = std::chrono::steady_clock::now();
    try {
      c.barrier();
    } catch (const Error& e) {
      error = e.what();
    }
    waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  });
  CHECK(error.find("rank 1 aborted (code 3)") != std::string::npos);
  CHECK(waited < 10.0);
}

// The data-parallel gradient buckets (engine/grad_buckets.h) on three loopback ranks: every
// parameter's gradient is the mean over the ranks, element for element the same sum in rank order
// as one flat all-reduce; with a small bucket cap the first buckets start before backward ends;
// from the second step the buckets follow the order backward finished the gradients.
TEST_CASE("comm: gradient buckets average over the ranks and start during backward", "[comm]") {
  const uint64_t seed = sc::testing::next_seed();
  INFO("seed " << seed);
  const int world = 3;
  LoopbackGroup g(world, 30.0);
  struct Rank {
    std::vector<Tensor> params;
    std::vector<std::vector<std::vector<double>>> grads;  // per step, per parameter: own grad
    std::vector<std::vector<std::vector<double>>> means;  // per step: after finish()
    std::vector<std::vector<std::vector<int>>> buckets;   // per step, before it
    std::vector<int> in_backward;                         // per step
    std::vector<std::vector<int>> started_after;          // per step
    std::vector<int> ready_order;                         // step 1, as parameter indices
    bool grad_is_view = false;                            // a dense grad shares the buffer
    bool noncontig_grad = false;                          // the transposed weight's grad layout
    bool replanned = false;
    bool layout_kept = false;  // ... and after finish()
  };
  std::vector<Rank> ranks(static_cast<size_t>(world));
  on_ranks(g, [&](int r, Communicator& c) {
    Rank& me = ranks[size_t(r)];
    Generator gen(seed);  // the same parameters on every rank
    Tensor w1 = randn({4, 6}, gen, DType::F32), b1 = randn({6}, gen, DType::F32);
    // a parameter stored transposed (as a channels-last conv weight is not row-major)
    Tensor w2 = transpose(randn({3, 6}, gen, DType::F32), 0, 1);
    Tensor b2 = randn({3}, gen, DType::F32);
    // listed so that backward does not finish them in reverse order (the first step's plan)
    me.params = {b2, w1, w2, b1};
    for (Tensor& p : me.params) p.set_requires_grad(true);
    GradientBuckets buckets(me.params, {"b2", "w1", "w2", "b1"}, c, /*bucket_bytes=*/40);
    Generator data(seed + 1 + uint64_t(r));  // each rank its own batch
    for (int step = 0; step < 2; ++step) {
      for (Tensor& p : me.params) p.set_grad(Tensor());
      // w2's gradient in a layout of its own (transposed, as w2 is): backward accumulates into
      // it, and finish() copies the mean back into it instead of handing out a view
      w2.set_grad(transpose(zeros({3, 6}, DType::F32), 0, 1));
      Tensor x = randn({5, 4}, data, DType::F32);
      Tensor loss = sum(mul(add(matmul(tanh(add(matmul(x, w1), b1)), w2), b2),
                            add(matmul(tanh(add(matmul(x, w1), b1)), w2), b2)));
      me.buckets.push_back(buckets.buckets());
      GradReadyFn h = buckets.hook();
      {
        GradReadyScope scope([&](TensorImpl& leaf) {
          if (step == 0)
            for (size_t i = 0; i < me.params.size(); ++i)
              if (me.params[i].impl() == &leaf) me.ready_order.push_back(int(i));
          h(leaf);
        });
        loss.backward();
      }
      me.grads.emplace_back();
      for (Tensor& p : me.params) me.grads.back().push_back(p.grad().to_vector());
      me.noncontig_grad = !w2.grad().is_contiguous();
      buckets.finish();
      me.layout_kept = !w2.grad().is_contiguous();
      me.means.emplace_back();
      for (Tensor& p : me.params) me.means.back().push_back(p.grad().to_vector());
      me.in_backward.push_back(buckets.started_during_backward());
      me.started_after.push_back(buckets.started_after());
      // a dense gradient is now a view of its bucket's buffer (no copy)
      for (size_t b = 0; b < buckets.buckets().size(); ++b)
        for (int i : buckets.buckets()[b])
          if (i == 3) me.grad_is_view = b1.grad().storage() == buckets.buffer(int(b)).storage();
    }
    me.replanned = buckets.replanned();
  });
  for (int step = 0; step < 2; ++step) {
    INFO("step " << step);
    for (size_t i = 0; i < 4; ++i) {
      INFO("parameter " << i);
      // the reference: the sum in rank order, times 1/world, in float32
      std::vector<float> ref(ranks[0].grads[size_t(step)][i].size(), 0.0f);
      for (size_t e = 0; e < ref.size(); ++e) {
        float s = 0.0f;
        for (int r = 0; r < world; ++r) s += float(ranks[size_t(r)].grads[size_t(step)][i][e]);
        ref[e] = float(double(s) * (1.0 / world));  // as mul_ rounds
      }
      for (int r = 0; r < world; ++r) {
        INFO("rank " << r);
        const std::vector<double>& got = ranks[size_t(r)].means[size_t(step)][i];
        REQUIRE(got.size() == ref.size());
        for (size_t e = 0; e < ref.size(); ++e) CHECK(got[e] == double(ref[e]));
      }
    }
  }
  const Rank& r0 = ranks[0];
  CHECK(r0.noncontig_grad);  // the copy-back path is exercised, not only the views
  CHECK(r0.layout_kept);
  CHECK(r0.grad_is_view);
  // 40 bytes: w1 (96 B) and w2 (72 B) alone, b1 (24 B), b2 (12 B); 3 or 4 buckets
  REQUIRE(r0.buckets[0].size() >= 3);
  // step 1: reverse parameter order, which is not the order backward finishes them
  CHECK(r0.ready_order != std::vector<int>{3, 2, 1, 0});
  CHECK(r0.buckets[0].front().front() == 3);
  CHECK(r0.buckets[0].back().back() == 0);
  // the first bucket started before backward had finished every gradient
  CHECK(r0.in_backward[0] >= 1);
  CHECK(r0.started_after[0][0] < 4);
  // step 2: the buckets in the order step 1's backward finished the gradients; each one started
  // as its last member was finished, all during backward
  std::vector<int> flat;
  for (const std::vector<int>& b : r0.buckets[1]) flat.insert(flat.end(), b.begin(), b.end());
  CHECK(r0.replanned);
  CHECK(flat == r0.ready_order);
  CHECK(r0.in_backward[1] == int(r0.buckets[1].size()));
  int done = 0;
  for (size_t b = 0; b < r0.buckets[1].size(); ++b) {
    done += int(r0.buckets[1][b].size());
    CHECK(r0.started_after[1][b] == done);
  }
  for (const Rank& r : ranks) CHECK(r.buckets == r0.buckets);  // the ranks' collectives pair up
}

TEST_CASE("comm: gradient buckets name a parameter that has no gradient", "[comm]") {
  auto c = make_single_communicator();
  Tensor a = from_vector({1, 2}, {2}), unused = from_vector({3}, {1});
  a.set_requires_grad(true);
  unused.set_requires_grad(true);
  GradientBuckets buckets({a, unused}, {"encoder.a", "head.unused"}, *c, 1 << 20);
  {
    GradReadyScope scope(buckets.hook());
    sum(mul(a, a)).backward();
  }
  REQUIRE_THROWS_WITH(buckets.finish(),
                      Catch::Contains("head.unused") && Catch::Contains("no gradient"));
}

namespace {
// Sets (or, with nullptr, unsets) environment variables for its life, then restores them.
struct EnvScope {
  std::vector<std::pair<std::string, std::optional<std::string>>> saved;
  explicit EnvScope(std::vector<std::pair<const char*, const char*>> vars) {
    for (auto& [name, value] : vars) {
      const char* old = std::getenv(name);
      saved.emplace_back(name, old ? std::optional<std::string>(old) : std::nullopt);
      value ? setenv(name, value, 1) : unsetenv(name);
    }
  }
  ~EnvScope() {
    for (auto& [name, value] : saved)
      value ? setenv(name.c_str(), value->c_str(), 1) : unsetenv(name.c_str());
  }
};
const char* const kLaunchVars[] = {"SLOTCON_DIST", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK",
                                   "PMI_SIZE",     "SLURM_STEP_NUM_TASKS"};
std::vector<std::pair<const char*, const char*>> launch_env(
    std::vector<std::pair<const char*, const char*>> set) {
  std::vector<std::pair<const char*, const char*>> all;
  for (const char* v : kLaunchVars) all.emplace_back(v, nullptr);
  for (auto& s : set)
    for (auto& a : all)
      if (std::string(a.first) == s.first) a.second = s.second;
  return all;
}
}  // namespace

// detect_launcher: which launcher started this process, from its environment (engine/comm.h).
TEST_CASE("comm: the launcher is read from the environment, and srun without MPI is refused",
          "[comm]") {
  {
    EnvScope e(launch_env({}));
    CHECK(detect_launcher() == "single");
  }
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"}) {
    INFO(var);
    EnvScope e(launch_env({{var, "2"}, {"SLURM_STEP_NUM_TASKS", "2"}}));
    CHECK(detect_launcher() == "mpi");
  }
  {
    // one srun task, or the batch script itself (no step variable): one process
    EnvScope e(launch_env({{"SLURM_STEP_NUM_TASKS", "1"}}));
    CHECK(detect_launcher() == "single");
  }
  {
    EnvScope e(launch_env({{"SLURM_STEP_NUM_TASKS", "4"}}));
    CHECK_THROWS_WITH(detect_launcher(), Catch::Contains("one of 4 tasks without an MPI plugin") &&
                                             Catch::Contains("--mpi=pmix"));
  }
  {
    EnvScope e(launch_env({{"SLURM_STEP_NUM_TASKS", "4"}, {"SLOTCON_DIST", "single"}}));
    CHECK(detect_launcher() == "single");  // on purpose
  }
  {
    EnvScope e(launch_env({{"SLOTCON_DIST", "nccl"}}));
    CHECK_THROWS_WITH(detect_launcher(), Catch::Contains("SLOTCON_DIST must be"));
  }
}
