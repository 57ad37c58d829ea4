// parallel.cpp: the CPU ops' thread pool (see parallel.h).
#include "kernels/parallel.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace sc {
namespace {

int threads_from_env() {
  if (const char* s = std::getenv("SLOTCON_NUM_THREADS")) {
    char* end = nullptr;
    const long v = std::strtol(s, &end, 10);
    if (end != s && *end == '\0' && v > 0) return int(std::min<long>(v, 1024));
  }
  // the CPUs this process may run on (taskset, cpusets), else the machine's count
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
  const unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? int(hw) : 1;
}

thread_local bool t_inside = false;  // this thread is running a range of some parallel_for

class Pool {
 public:
  ~Pool() { stop_workers(); }

  int threads() const { return threads_.load(); }

  void set_threads(int n) {
    std::lock_guard<std::mutex> busy(busy_);
    stop_workers();
    threads_.store(std::max(n, 1));
  }

  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& f) {
    grain = std::max<int64_t>(grain, 1);
    const int nt = threads();
    if (n <= 0) return;
    if (nt <= 1 || n < 2 * grain || t_inside) return serial(n, f);
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return serial(n, f);
    start_workers(nt - 1);
    const int64_t chunks = std::min<int64_t>(n / grain, int64_t(nt) * 4);
    {
      std::lock_guard<std::mutex> lk(m_);
      f_ = &f;
      n_ = n;
      chunk_ = (n + chunks - 1) / chunks;
      chunks_ = (n + chunk_ - 1) / chunk_;
      next_.store(0);
      done_ = 0;
      failed_.store(false);
      error_ = nullptr;
      live_ = true;
      ++gen_;
    }
    cv_work_.notify_all();
    work();
    std::unique_lock<std::mutex> lk(m_);
    cv_done_.wait(lk, [&] { return done_ == chunks_ && active_ == 0; });
    live_ = false;
    f_ = nullptr;
    std::exception_ptr err = error_;
    error_ = nullptr;
    lk.unlock();
    if (err) std::rethrow_exception(err);
  }

 private:
  static void serial(int64_t n, const std::function<void(int64_t, int64_t)>& f) {
    const bool was = t_inside;
    t_inside = true;
    try {
      f(0, n);
    } catch (...) {
      t_inside = was;
      throw;
    }
    t_inside = was;
  }

  // Claims and runs ranges of the live job until none is left (caller and workers alike).
  void work() {
    t_inside = true;
    int64_t finished = 0;
    for (;;) {
      const int64_t c = next_.fetch_add(1);
      if (c >= chunks_) break;
      if (!failed_.load()) {
        const int64_t b = c * chunk_, e = std::min(n_, b + chunk_);
        try {
          (*f_)(b, e);
        } catch (...) {
          std::lock_guard<std::mutex> lk(m_);
          if (!error_) error_ = std::current_exception();
          failed_.store(true);
        }
      }
      ++finished;
    }
    t_inside = false;
    std::lock_guard<std::mutex> lk(m_);
    done_ += finished;
    if (done_ == chunks_) cv_done_.notify_all();
  }

  void worker_loop() {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lk(m_);
    for (;;) {
      cv_work_.wait(lk, [&] { return stop_ || (live_ && gen_ != seen); });
      if (stop_) return;
      seen = gen_;
      ++active_;
      lk.unlock();
      work();
      lk.lock();
      if (--active_ == 0) cv_done_.notify_all();
    }
  }

  void start_workers(int n) {  // busy_ held
    if (int(workers_.size()) == n) return;
    stop_workers();
    stop_ = false;
    for (int i = 0; i < n; ++i) workers_.emplace_back([this] { worker_loop(); });
  }

  void stop_workers() {  // busy_ held, or the destructor
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
    }
    cv_work_.notify_all();
    for (std::thread& t : workers_) t.join();
    workers_.clear();
  }

  std::atomic<int> threads_{threads_from_env()};
  std::mutex busy_;  // held by the thread whose parallel_for owns the pool
  std::mutex m_;
  std::condition_variable cv_work_, cv_done_;
  std::vector<std::thread> workers_;
  bool stop_ = false, live_ = false;
  uint64_t gen_ = 0;
  int active_ = 0;  // workers inside work() for the live job
  // the live job
  const std::function<void(int64_t, int64_t)>* f_ = nullptr;
  int64_t n_ = 0, chunk_ = 1, chunks_ = 0, done_ = 0;
  std::atomic<int64_t> next_{0};
  std::atomic<bool> failed_{false};
  std::exception_ptr error_;
};

Pool& pool() {
  static Pool p;
  return p;
}

}  // namespace

int cpu_threads() { return pool().threads(); }
void set_cpu_threads(int n) { pool().set_threads(n); }

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& f) {
  pool().run(n, grain, f);
}

}  // namespace sc
