#include "data/loader.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <iostream>
#include <map>
#include <mutex>
#include <thread>

#include "data/rng.h"
#include "data/scenes.h"
#include "engine/allocator.h"
#include "engine/cuda_runtime.h"
#include "engine/error.h"

namespace sc {
namespace data {
namespace {

Tensor host_tensor(const Shape& shape, DType dtype, bool pinned) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = allocate(size_t(shape_numel(shape)) * dtype_size(dtype), Device::cpu(), pinned);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(impl);
}

constexpr uint64_t kShuffleTag = 0x73687566666c65ull;  // "shuffle"
constexpr uint64_t kSampleTag = 0x73616d706c65ull;     // "sample"

}  // namespace

std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> p(size_t(std::max<int64_t>(n, 0)));
  for (int64_t i = 0; i < n; ++i) p[size_t(i)] = i;
  Rng rng(seed, uint64_t(epoch), kShuffleTag);
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[size_t(i)], p[size_t(rng.randint(0, i))]);
  return p;
}

Rng sample_rng(uint64_t seed, int64_t epoch, int64_t index) {
  return Rng(seed, uint64_t(epoch), uint64_t(index), kSampleTag);
}

std::shared_ptr<const Dataset> make_dataset(const LoaderConfig& cfg) {
  if (cfg.synthetic) {
    return std::make_shared<SyntheticSceneDataset>(cfg.synthetic_count, cfg.synthetic_seed,
                                                   cfg.synthetic_width, cfg.synthetic_height,
                                                   cfg.synthetic_objects);
  }
  SC_CHECK(!cfg.data_dir.empty(), "data loader: no data_dir given and synthetic is off");
  return std::make_shared<ImageFolderDataset>(split_paths(cfg.data_dir), cfg.limits);
}

struct DataLoader::Impl {
  // A batch being filled by the workers.
  struct Pending {
    int64_t g = 0;  // position in the stream
    int64_t epoch = 0, index = 0;
    int64_t bsize = 0;
    std::shared_ptr<const std::vector<int64_t>> perm;
    Batch batch;
    void* crops[2] = {nullptr, nullptr};  // float, or uint8_t with u8_crops
    float* coords[2] = {nullptr, nullptr};
    uint8_t* flags[2] = {nullptr, nullptr};
    int64_t* indices = nullptr;
    int64_t done = 0;
    std::exception_ptr error;
  };

  LoaderConfig cfg;
  AugmentConfig aug;
  std::shared_ptr<const Dataset> ds;
  int64_t n = 0, per_rank = 0, bpe = 0;
  bool pinned = false;

  mutable std::mutex mu;
  std::condition_variable cv_work, cv_ready;
  int64_t claim_g = 0, claim_s = 0;  // the next sample to hand to a worker
  int64_t consume_g = 0;             // the next batch next_batch() returns
  std::map<int64_t, std::unique_ptr<Pending>> pending;
  std::map<int64_t, std::shared_ptr<const std::vector<int64_t>>> perms;
  bool stop = false;
  std::vector<std::thread> workers;

  // Bad files (guarded by bad_mu).
  mutable std::mutex bad_mu;
  std::vector<uint8_t> bad;
  int64_t bad_count = 0;
  std::vector<std::string> bad_examples;
  std::atomic<int64_t> samples{0};

  void log(const std::string& msg) const {
    if (cfg.log) {
      cfg.log(msg);
    } else {
      std::cerr << "[data] " << msg << std::endl;
    }
  }

  int64_t batch_size_of(int64_t g) const {
    const int64_t b = g % bpe;
    return std::min<int64_t>(cfg.batch_size, per_rank - b * cfg.batch_size);
  }

  std::shared_ptr<const std::vector<int64_t>> perm_for(int64_t epoch) {  // mu held
    auto it = perms.find(epoch);
    if (it != perms.end()) return it->second;
    perms.erase(perms.begin(), perms.lower_bound(epoch));  // older epochs are done
    auto p = std::make_shared<const std::vector<int64_t>>(epoch_permutation(n, cfg.seed, epoch));
    perms.emplace(epoch, p);
    return p;
  }

  std::unique_ptr<Pending> new_pending(int64_t g) {  // mu held (or single-threaded)
    auto P = std::make_unique<Pending>();
    P->g = g;
    P->epoch = cfg.start_epoch + g / bpe;
    P->index = g % bpe;
    P->bsize = batch_size_of(g);
    P->perm = perm_for(P->epoch);
    const int64_t B = P->bsize, S = aug.size;
    Batch& b = P->batch;
    b.epoch = P->epoch;
    b.index = P->index;
    b.size = B;
    for (int v = 0; v < 2; ++v) {
      b.crops[v] = cfg.u8_crops ? host_tensor({B, S, S, 3}, DType::U8, pinned)
                                : host_tensor({B, 3, S, S}, DType::F32, pinned);
      b.coords[v] = host_tensor({B, 4}, DType::F32, pinned);
      b.flags[v] = host_tensor({B}, DType::U8, pinned);
      P->crops[v] = b.crops[v].data_ptr();
      P->coords[v] = b.coords[v].data<float>();
      P->flags[v] = b.flags[v].data<uint8_t>();
    }
    b.indices = host_tensor({B}, DType::I64, pinned);
    P->indices = b.indices.data<int64_t>();
    b.params.resize(size_t(B));
    return P;
  }

  bool is_bad(int64_t i) const {
    std::lock_guard<std::mutex> lk(bad_mu);
    return bad[size_t(i)] != 0;
  }

  void mark_bad(int64_t i, const std::string& why) {
    std::lock_guard<std::mutex> lk(bad_mu);
    if (bad[size_t(i)]) return;
    bad[size_t(i)] = 1;
    ++bad_count;
    const std::string what = ds->item_name(i) + ": " + why;
    if (bad_count <= cfg.log_bad_files) {
      bad_examples.push_back(what);
      log("skipping bad file " + what);
    } else if (bad_count == int64_t(cfg.log_bad_files) + 1) {
      log("more bad files: they are skipped and counted (DataLoader::stats), not named");
    }
  }

  // Fill sample s of batch P. Thread-safe; uses only the worker's own buffers.
  void make_sample(Pending* P, int64_t s, AugmentScratch* scratch, ImageU8* img) {
    const int64_t pos = P->index * cfg.batch_size + s;
    const int64_t idx0 = (*P->perm)[size_t(cfg.rank + int64_t(cfg.world_size) * pos)];
    int64_t idx = idx0;
    std::string why;
    for (int64_t tries = 0;; ++tries) {
      if (tries >= n) {
        std::lock_guard<std::mutex> lk(bad_mu);
        SC_CHECK(false, "data loader: none of the ", n, " items of the dataset could be decoded",
                 bad_examples.empty() ? std::string() : " (first: " + bad_examples.front() + ")");
      }
      if (!is_bad(idx)) {
        if (ds->load(idx, img, &why)) break;
        mark_bad(idx, why);
      }
      idx = (idx + 1) % n;
    }
    Rng rng = sample_rng(cfg.seed, P->epoch, idx0);
    const int64_t plane = int64_t(3) * aug.size * aug.size;
    TwoViewParams p =
        cfg.u8_crops
            ? augment_two_views_u8(*img, aug, rng, static_cast<uint8_t*>(P->crops[0]) + s * plane,
                                   static_cast<uint8_t*>(P->crops[1]) + s * plane, scratch)
            : augment_two_views(*img, aug, rng, static_cast<float*>(P->crops[0]) + s * plane,
                                static_cast<float*>(P->crops[1]) + s * plane, scratch);
    for (int v = 0; v < 2; ++v) {
      float* c = P->coords[v] + 4 * s;
      c[0] = p.view[v].box.x1;
      c[1] = p.view[v].box.y1;
      c[2] = p.view[v].box.x2;
      c[3] = p.view[v].box.y2;
      P->flags[v][s] = p.view[v].flip ? 1 : 0;
    }
    P->indices[s] = idx;
    P->batch.params[size_t(s)] = p;
    samples.fetch_add(1, std::memory_order_relaxed);
  }

  void worker_loop() {
    AugmentScratch scratch;
    ImageU8 img;
    const int64_t capacity = std::max(1, cfg.prefetch_batches);
    for (;;) {
      Pending* P = nullptr;
      int64_t s = 0;
      {
        std::unique_lock<std::mutex> lk(mu);
        cv_work.wait(lk, [&] { return stop || claim_g < consume_g + capacity; });
        if (stop) return;
        auto it = pending.find(claim_g);
        if (it == pending.end()) {
          try {
            it = pending.emplace(claim_g, new_pending(claim_g)).first;
          } catch (...) {
            // Allocation failed: report it through a placeholder batch of size 0.
            auto E = std::make_unique<Pending>();
            E->g = claim_g;
            E->error = std::current_exception();
            pending.emplace(claim_g, std::move(E));
            ++claim_g;
            claim_s = 0;
            cv_ready.notify_all();
            continue;
          }
        }
        P = it->second.get();
        s = claim_s;
        if (++claim_s == P->bsize) {
          ++claim_g;
          claim_s = 0;
        }
      }
      std::exception_ptr err;
      try {
        make_sample(P, s, &scratch, &img);
      } catch (...) {
        err = std::current_exception();
      }
      {
        std::lock_guard<std::mutex> lk(mu);
        if (err && !P->error) P->error = err;
        if (++P->done == P->bsize) cv_ready.notify_all();
      }
    }
  }

  Batch produce_sync() {
    std::unique_ptr<Pending> P = new_pending(consume_g);
    ++consume_g;
    AugmentScratch& scratch = sync_scratch;
    for (int64_t s = 0; s < P->bsize; ++s) make_sample(P.get(), s, &scratch, &sync_img);
    return std::move(P->batch);
  }
  AugmentScratch sync_scratch;
  ImageU8 sync_img;
};

DataLoader::DataLoader(const LoaderConfig& cfg) : DataLoader(make_dataset(cfg), cfg) {}

DataLoader::DataLoader(std::shared_ptr<const Dataset> dataset, const LoaderConfig& cfg)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  SC_CHECK(dataset != nullptr, "data loader: no dataset");
  SC_CHECK(cfg.batch_size >= 1, "data loader: batch_size must be >= 1, got ", cfg.batch_size);
  SC_CHECK(cfg.num_workers >= 0, "data loader: num_workers must be >= 0");
  SC_CHECK(cfg.world_size >= 1 && cfg.rank >= 0 && cfg.rank < cfg.world_size, "data loader: rank ",
           cfg.rank, " is not in [0, world_size = ", cfg.world_size, ")");
  SC_CHECK(cfg.image_size >= 1, "data loader: image_size must be >= 1");
  SC_CHECK(cfg.min_scale > 0.0 && cfg.min_scale <= 1.0, "data loader: min_scale ", cfg.min_scale,
           " is not in (0, 1]");
  m.cfg = cfg;
  m.aug = cfg.augment;
  m.aug.size = cfg.image_size;
  m.aug.min_scale = cfg.min_scale;
  m.ds = std::move(dataset);
  m.n = m.ds->size();
  SC_CHECK(m.n > 0, "data loader: the dataset is empty");
  m.per_rank = m.n / cfg.world_size;
  m.bpe = cfg.drop_last ? m.per_rank / cfg.batch_size
                        : (m.per_rank + cfg.batch_size - 1) / cfg.batch_size;
  SC_CHECK(m.bpe > 0, "data loader: ", m.n, " images over ", cfg.world_size,
           " rank(s) do not fill one batch of ", cfg.batch_size,
           " (drop_last is on); use a smaller batch or more data");
  m.bad.assign(size_t(m.n), 0);
  m.pinned = cfg.pin_memory && cuda_available();
  for (int i = 0; i < cfg.num_workers; ++i) m.workers.emplace_back([&m] { m.worker_loop(); });
}

DataLoader::~DataLoader() {
  {
    std::lock_guard<std::mutex> lk(impl_->mu);
    impl_->stop = true;
  }
  impl_->cv_work.notify_all();
  for (std::thread& t : impl_->workers) t.join();
}

Batch DataLoader::next_batch() {
  Impl& m = *impl_;
  if (m.workers.empty()) return m.produce_sync();
  std::unique_ptr<Impl::Pending> P;
  {
    std::unique_lock<std::mutex> lk(m.mu);
    m.cv_ready.wait(lk, [&] {
      auto it = m.pending.find(m.consume_g);
      return it != m.pending.end() &&
             (it->second->done == it->second->bsize || it->second->bsize == 0);
    });
    auto it = m.pending.find(m.consume_g);
    P = std::move(it->second);
    m.pending.erase(it);
    ++m.consume_g;
  }
  m.cv_work.notify_all();
  if (P->error) std::rethrow_exception(P->error);
  return std::move(P->batch);
}

int64_t DataLoader::size() const { return impl_->bpe; }
int64_t DataLoader::samples_per_epoch() const { return impl_->per_rank; }
const Dataset& DataLoader::dataset() const { return *impl_->ds; }
std::shared_ptr<const Dataset> DataLoader::dataset_ptr() const { return impl_->ds; }
const LoaderConfig& DataLoader::config() const { return impl_->cfg; }
const AugmentConfig& DataLoader::augment_config() const { return impl_->aug; }

LoaderStats DataLoader::stats() const {
  LoaderStats s;
  s.samples = impl_->samples.load();
  std::lock_guard<std::mutex> lk(impl_->bad_mu);
  s.bad_files = impl_->bad_count;
  s.bad_examples = impl_->bad_examples;
  return s;
}

std::vector<int64_t> DataLoader::epoch_indices(int64_t epoch) const {
  const Impl& m = *impl_;
  const std::vector<int64_t> perm = epoch_permutation(m.n, m.cfg.seed, epoch);
  const int64_t count = std::min(m.per_rank, m.bpe * int64_t(m.cfg.batch_size));
  std::vector<int64_t> out(static_cast<size_t>(count));
  for (int64_t p = 0; p < count; ++p) {
    out[size_t(p)] = perm[size_t(m.cfg.rank + int64_t(m.cfg.world_size) * p)];
  }
  return out;
}

SceneBatch render_scene_batch(uint64_t seed, int64_t first, int64_t count, int size,
                              SceneObjects objects) {
  SC_CHECK(count >= 1 && first >= 0, "render_scene_batch: bad range ", first, " + ", count);
  SceneBatch out;
  out.images = host_tensor({count, 3, size, size}, DType::F32, false);
  out.class_maps = host_tensor({count, size, size}, DType::U8, false);
  Scene scene;
  const int64_t plane = int64_t(size) * size;
  for (int64_t i = 0; i < count; ++i) {
    render_scene(seed, first + i, size, size, &scene, objects);
    normalize_to_chw(scene.image, out.images.data<float>() + i * 3 * plane);
    std::memcpy(out.class_maps.data<uint8_t>() + i * plane, scene.class_map.data(), size_t(plane));
  }
  return out;
}

Tensor view_class_maps(const Batch& batch, const SyntheticSceneDataset& dataset, int view,
                       int out_size) {
  SC_CHECK(view == 0 || view == 1, "view_class_maps: view must be 0 or 1");
  SC_CHECK(batch.indices.defined() && int64_t(batch.params.size()) == batch.size,
           "view_class_maps: the batch has no per-sample parameters");
  Tensor out = host_tensor({batch.size, out_size, out_size}, DType::U8, false);
  const int64_t plane = int64_t(out_size) * out_size;
  for (int64_t i = 0; i < batch.size; ++i) {
    const int64_t idx = batch.indices.data<int64_t>()[i];
    const std::vector<uint8_t> cm = dataset.class_map(idx);
    view_class_map(cm.data(), dataset.width(), dataset.height(), batch.params[size_t(i)].view[view],
                   out_size, out_size, out.data<uint8_t>() + i * plane);
  }
  return out;
}

}  // namespace data
}  // namespace sc
