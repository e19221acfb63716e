#include "core/parallel.h"

#include <sched.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SD_PAUSE() _mm_pause()
#else
#define SD_PAUSE() std::this_thread::yield()
#endif

namespace sd {

namespace {

int cores_available() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

thread_local bool t_in_pool_task = false;

// Jobs are numbered; a ticket packs (job number << 32 | next chunk) so a worker that wakes late
// can only ever claim chunks of the job it saw, and only while that job is still running.
class Pool {
 public:
  explicit Pool(int threads) {
    for (int i = 0; i < threads - 1; ++i) workers_.emplace_back([this] { worker(); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void run(int64_t n, int64_t chunk, detail::RangeFn fn, void* ctx) {
    std::unique_lock<std::mutex> busy(run_mu_, std::try_to_lock);
    if (!busy.owns_lock()) {  // another thread is using the pool: do this job alone
      fn(ctx, 0, n);
      return;
    }
    // Close the previous job's ticket before touching the job fields: a worker still in work()
    // for that job could otherwise read the new total_, win its compare-exchange on the old
    // ticket and run a chunk of this job with a stale count (two runs of one chunk, and done_
    // reaching total before every chunk finished).
    ticket_.store((++job_ << 32) | 0xffffffffu);
    n_ = n;
    chunk_ = chunk;
    fn_ = fn;
    ctx_ = ctx;
    total_.store((n + chunk - 1) / chunk, std::memory_order_release);
    done_.store(0, std::memory_order_release);
    const uint64_t job = ++job_;
    ticket_.store(job << 32);  // seq_cst with the load below: a sleeping worker is never missed
    if (sleeping_.load() > 0) {
      std::lock_guard<std::mutex> l(mu_);
      cv_.notify_all();
    }
    work(job);
    const int64_t total = total_.load(std::memory_order_relaxed);
    while (done_.load(std::memory_order_acquire) < total) SD_PAUSE();
  }

 private:
  // Claims and runs chunks of job `job` until none is left; false if the job already moved on.
  void work(uint64_t job) {
    t_in_pool_task = true;
    uint64_t t = ticket_.load(std::memory_order_acquire);
    while ((t >> 32) == job && static_cast<int64_t>(t & 0xffffffffu) < total_.load(std::memory_order_acquire)) {
      if (!ticket_.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel)) continue;
      const int64_t c = static_cast<int64_t>(t & 0xffffffffu);
      const int64_t b = c * chunk_, e = std::min(n_, b + chunk_);
      fn_(ctx_, b, e);
      done_.fetch_add(1, std::memory_order_acq_rel);
      t = ticket_.load(std::memory_order_acquire);
    }
    t_in_pool_task = false;
  }

  void worker() {
    uint64_t seen = 0;
    for (;;) {
      uint64_t job = ticket_.load(std::memory_order_acquire) >> 32;
      for (int spin = 0; job == seen && spin < 20000; ++spin) {
        SD_PAUSE();
        job = ticket_.load(std::memory_order_acquire) >> 32;
      }
      if (job == seen) {
        std::unique_lock<std::mutex> l(mu_);
        sleeping_.fetch_add(1);
        cv_.wait(l, [&] { return stop_ || (ticket_.load(std::memory_order_acquire) >> 32) != seen; });
        sleeping_.fetch_sub(1, std::memory_order_acq_rel);
        if (stop_) return;
        continue;
      }
      seen = job;
      work(job);
    }
  }

  std::vector<std::thread> workers_;
  std::mutex run_mu_;  // one job at a time
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::atomic<int> sleeping_{0};
  std::atomic<uint64_t> ticket_{0};
  std::atomic<int64_t> done_{0};
  uint64_t job_ = 0;
  int64_t n_ = 0, chunk_ = 1;
  std::atomic<int64_t> total_{0};
  detail::RangeFn fn_ = nullptr;
  void* ctx_ = nullptr;
};

std::mutex g_pool_mu;
std::unique_ptr<Pool> g_pool;
int g_threads = 0;

Pool& pool() {
  std::lock_guard<std::mutex> l(g_pool_mu);
  if (!g_pool || g_pool->size() != num_threads()) g_pool.reset(new Pool(num_threads()));
  return *g_pool;
}

}  // namespace

int num_threads() {
  if (g_threads <= 0) g_threads = cores_available();
  return g_threads;
}

void set_num_threads(int n) { g_threads = n > 0 ? n : cores_available(); }

namespace detail {

void run_parallel(int64_t n, int64_t chunk, RangeFn fn, void* ctx) {
  if (t_in_pool_task) {  // nested: run inline
    fn(ctx, 0, n);
    return;
  }
  pool().run(n, chunk, fn, ctx);
}

}  // namespace detail

}  // namespace sd
