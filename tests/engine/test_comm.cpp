// The communicator (engine/comm.h): the single backend is the identity; the loopback backend's
// collectives give every rank the same, rank-ordered results for each dtype, and a rank that
// stops answering (or aborts) ends the others with an sc::Error within the timeout.
#include <catch2/catch.hpp>
#include <chrono>
#include <exception>
#include <thread>
#include <vector>

#include "engine/comm.h"
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
