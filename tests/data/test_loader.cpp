// The loader: determinism whatever the worker count, epoch shuffles, sharding over ranks,
// drop_last, and the contents of a batch.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <set>
#include <vector>

#include "data/loader.h"
#include "data/scenes.h"
#include "data/transforms.h"
#include "engine/cuda_runtime.h"
#include "engine/error.h"
#include "engine/nn_ops.h"
#include "engine/ops.h"

using namespace sc::data;

namespace {

LoaderConfig small_config(int workers) {
  LoaderConfig cfg;
  cfg.synthetic = true;
  cfg.synthetic_count = 37;
  cfg.synthetic_width = 64;
  cfg.synthetic_height = 48;
  cfg.synthetic_seed = 5;
  cfg.image_size = 32;
  cfg.batch_size = 4;
  cfg.num_workers = workers;
  cfg.seed = 1234;
  return cfg;
}

bool same_bytes(const sc::Tensor& a, const sc::Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  return std::memcmp(a.data_ptr(), b.data_ptr(), size_t(a.numel()) * sc::dtype_size(a.dtype())) ==
         0;
}

bool same_batch(const Batch& a, const Batch& b) {
  bool same = a.epoch == b.epoch && a.index == b.index && a.size == b.size &&
              same_bytes(a.indices, b.indices);
  for (int v = 0; v < 2; ++v) {
    same = same && same_bytes(a.crops[v], b.crops[v]) && same_bytes(a.coords[v], b.coords[v]) &&
           same_bytes(a.flags[v], b.flags[v]);
  }
  return same;
}

}  // namespace

TEST_CASE("loader: the same seed gives the same batches whatever the worker count",
          "[data][loader]") {
  std::vector<Batch> ref;
  {
    DataLoader l(small_config(0));
    REQUIRE(l.size() == 9);
    for (int i = 0; i < 12; ++i) ref.push_back(l.next_batch());  // crosses into epoch 1
  }
  CHECK(ref[8].epoch == 0);
  CHECK(ref[9].epoch == 1);
  CHECK(ref[9].index == 0);
  for (int workers : {1, 3}) {
    DataLoader l(small_config(workers));
    for (int i = 0; i < 12; ++i) REQUIRE(same_batch(l.next_batch(), ref[size_t(i)]));
  }
  // A different seed gives different batches.
  LoaderConfig other = small_config(2);
  other.seed = 99;
  DataLoader l(other);
  CHECK(!same_batch(l.next_batch(), ref[0]));
}

TEST_CASE("loader: each sample is augment_two_views with the RNG of (seed, epoch, index)",
          "[data][loader]") {
  LoaderConfig cfg = small_config(2);
  DataLoader loader(cfg);
  const Dataset& ds = loader.dataset();
  AugmentScratch scratch;
  const int64_t S = cfg.image_size;
  std::vector<float> v0(size_t(3 * S * S)), v1(size_t(3 * S * S));
  for (int b = 0; b < 10; ++b) {
    const Batch batch = loader.next_batch();
    for (int64_t i = 0; i < batch.size; ++i) {
      const int64_t idx = batch.indices.data<int64_t>()[i];
      ImageU8 img;
      std::string why;
      REQUIRE(ds.load(idx, &img, &why));
      Rng rng = sample_rng(cfg.seed, batch.epoch, idx);
      const TwoViewParams p =
          augment_two_views(img, loader.augment_config(), rng, v0.data(), v1.data(), &scratch);
      REQUIRE(std::memcmp(v0.data(), batch.crops[0].data<float>() + i * 3 * S * S, v0.size() * 4) ==
              0);
      REQUIRE(std::memcmp(v1.data(), batch.crops[1].data<float>() + i * 3 * S * S, v1.size() * 4) ==
              0);
      for (int v = 0; v < 2; ++v) {
        const float* c = batch.coords[v].data<float>() + 4 * i;
        REQUIRE(c[0] == p.view[v].box.x1);
        REQUIRE(c[1] == p.view[v].box.y1);
        REQUIRE(c[2] == p.view[v].box.x2);
        REQUIRE(c[3] == p.view[v].box.y2);
        REQUIRE(batch.flags[v].data<uint8_t>()[i] == (p.view[v].flip ? 1 : 0));
        REQUIRE(batch.params[size_t(i)].view[v].crop.x == p.view[v].crop.x);
      }
    }
  }
}

TEST_CASE("loader: batch tensors, boxes and flags", "[data][loader]") {
  LoaderConfig cfg = small_config(2);
  cfg.pin_memory = true;
  DataLoader loader(cfg);
  const Batch b = loader.next_batch();
  for (int v = 0; v < 2; ++v) {
    CHECK(b.crops[v].shape() == sc::Shape{4, 3, 32, 32});
    CHECK(b.crops[v].dtype() == sc::DType::F32);
    CHECK(b.crops[v].is_contiguous());
    CHECK(b.crops[v].is_pinned() == sc::cuda_available());
    CHECK(b.coords[v].shape() == sc::Shape{4, 4});
    CHECK(b.coords[v].dtype() == sc::DType::F32);
    CHECK(b.flags[v].shape() == sc::Shape{4});
    CHECK(b.flags[v].dtype() == sc::DType::U8);
    const float lo = (0.f - 0.485f) / 0.229f, hi = (1.f - 0.406f) / 0.225f;
    for (int64_t i = 0; i < b.crops[v].numel(); ++i) {
      const float x = b.crops[v].data<float>()[i];
      REQUIRE((x >= lo - 1e-5f && x <= hi + 1e-5f));
    }
  }
  CHECK(b.indices.dtype() == sc::DType::I64);
  // Un-mirrored, the two boxes describe the same source rectangle.
  for (int i = 0; i < 4; ++i) {
    double src[2][4];
    for (int v = 0; v < 2; ++v) {
      const float* c = b.coords[v].data<float>() + 4 * i;
      const bool flip = b.flags[v].data<uint8_t>()[i] != 0;
      const CropRect& r = b.params[size_t(i)].view[v].crop;
      const double x1 = flip ? 1.0 - c[2] : c[0], x2 = flip ? 1.0 - c[0] : c[2];
      src[v][0] = r.x + x1 * r.w;
      src[v][1] = r.y + c[1] * r.h;
      src[v][2] = r.x + x2 * r.w;
      src[v][3] = r.y + c[3] * r.h;
    }
    for (int k = 0; k < 4; ++k) CHECK(src[0][k] == Approx(src[1][k]).margin(1e-3));
  }
}

TEST_CASE("loader: epochs shuffle, ranks get disjoint shares", "[data][loader]") {
  const int64_t N = 23;
  const auto p0 = epoch_permutation(N, 7, 0), p1 = epoch_permutation(N, 7, 1);
  CHECK(p0 == epoch_permutation(N, 7, 0));
  CHECK(p0 != p1);
  CHECK(p0 != epoch_permutation(N, 8, 0));
  std::vector<int64_t> sorted = p0;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < N; ++i) REQUIRE(sorted[size_t(i)] == i);

  for (int64_t epoch : {0, 3}) {
    std::set<int64_t> all;
    size_t total = 0;
    for (int rank = 0; rank < 3; ++rank) {
      LoaderConfig cfg = small_config(0);
      cfg.synthetic_count = N;
      cfg.batch_size = 2;
      cfg.rank = rank;
      cfg.world_size = 3;
      cfg.start_epoch = epoch;
      cfg.image_size = 8;
      DataLoader loader(cfg);
      CHECK(loader.samples_per_epoch() == 7);  // floor(23 / 3)
      CHECK(loader.size() == 3);               // drop_last: 3 batches of 2
      const auto idx = loader.epoch_indices(epoch);
      CHECK(idx.size() == 6);
      for (int b = 0; b < loader.size(); ++b) {
        const Batch batch = loader.next_batch();
        REQUIRE(batch.epoch == epoch);
        for (int i = 0; i < 2; ++i)
          REQUIRE(batch.indices.data<int64_t>()[i] == idx[size_t(2 * b + i)]);
      }
      all.insert(idx.begin(), idx.end());
      total += idx.size();
    }
    CHECK(all.size() == total);  // disjoint
  }
}

TEST_CASE("loader: drop_last and the epoch stream", "[data][loader]") {
  LoaderConfig cfg = small_config(2);
  cfg.synthetic_count = 23;
  cfg.batch_size = 5;
  cfg.image_size = 8;
  {
    DataLoader l(cfg);
    CHECK(l.size() == 4);
    for (int i = 0; i < 9; ++i) {
      const Batch b = l.next_batch();
      REQUIRE(b.size == 5);
      REQUIRE(b.epoch == i / 4);
      REQUIRE(b.index == i % 4);
    }
  }
  cfg.drop_last = false;
  {
    DataLoader l(cfg);
    CHECK(l.size() == 5);
    std::set<int64_t> seen;
    for (int i = 0; i < 5; ++i) {
      const Batch b = l.next_batch();
      REQUIRE(b.size == (i < 4 ? 5 : 3));
      REQUIRE(b.crops[0].shape()[0] == b.size);
      for (int64_t k = 0; k < b.size; ++k) seen.insert(b.indices.data<int64_t>()[k]);
    }
    CHECK(seen.size() == 23);  // every image exactly once
    CHECK(l.next_batch().epoch == 1);
  }
  cfg.batch_size = 30;
  cfg.drop_last = true;
  CHECK_THROWS_AS(DataLoader(cfg), sc::Error);  // not one full batch
  cfg.batch_size = 4;
  cfg.rank = 2;
  cfg.world_size = 2;
  CHECK_THROWS_AS(DataLoader(cfg), sc::Error);
}

TEST_CASE("loader: destroying a loader with batches in flight is clean", "[data][loader]") {
  for (int k = 0; k < 3; ++k) {
    LoaderConfig cfg = small_config(3);
    cfg.prefetch_batches = 2;
    DataLoader l(cfg);
    if (k > 0) l.next_batch();
  }
  SUCCEED();
}

TEST_CASE("loader: u8 crops, normalised by the engine, equal the float crops bit for bit",
          "[data][loader]") {
  // the training app's path (u8 crops, engine/nn_ops.h normalize_images) against the loader's
  // own float path, in both layouts and in F64 (the all-double step)
  LoaderConfig f = small_config(2), u = small_config(2);
  u.u8_crops = true;
  DataLoader lf(f), lu(u);
  const sc::ImageNorm norm{{kImageNetMean[0], kImageNetMean[1], kImageNetMean[2]},
                           {kImageNetStd[0], kImageNetStd[1], kImageNetStd[2]}};
  for (int i = 0; i < 3; ++i) {
    const Batch a = lf.next_batch(), b = lu.next_batch();
    for (int v = 0; v < 2; ++v) {
      REQUIRE(b.crops[v].dtype() == sc::DType::U8);
      REQUIRE(b.crops[v].shape() == sc::Shape{4, 32, 32, 3});
      CHECK(same_bytes(a.coords[v], b.coords[v]));
      CHECK(same_bytes(a.flags[v], b.flags[v]));
      const sc::Tensor nchw = sc::normalize_images(b.crops[v], norm, sc::DType::F32);
      CHECK(same_bytes(nchw, a.crops[v]));
      const sc::Tensor nhwc = sc::normalize_images(b.crops[v], norm, sc::DType::F32,
                                                   sc::MemoryFormat::ChannelsLast);
      CHECK(nhwc.is_channels_last());
      CHECK(same_bytes(nhwc.contiguous(), a.crops[v]));
      const sc::Tensor f64 = sc::normalize_images(b.crops[v], norm, sc::DType::F64);
      CHECK(same_bytes(f64, sc::cast(a.crops[v], sc::DType::F64)));
    }
  }
  CHECK_THROWS_AS(sc::normalize_images(sc::zeros({2, 4, 4, 3}), norm, sc::DType::F32), sc::Error);
  CHECK_THROWS_AS(sc::normalize_images(sc::zeros({2, 4, 4}, sc::DType::U8), norm, sc::DType::F32),
                  sc::Error);
}
