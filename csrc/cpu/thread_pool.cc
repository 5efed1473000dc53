#include "thread_pool.h"

#include <sched.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

namespace kvant {
namespace {

thread_local bool tlsInPoolTask = false;

int readCgroupLimit() {
  // cgroup v2: "max 100000" or "<quota> <period>"
  std::ifstream v2("/sys/fs/cgroup/cpu.max");
  std::string quota;
  long period = 0;
  if (v2 >> quota >> period) {
    if (quota == "max" || period <= 0) return 0;
    const long q = std::atol(quota.c_str());
    return q > 0 ? int((q + period - 1) / period) : 0;
  }
  std::ifstream q1("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), p1("/sys/fs/cgroup/cpu/cpu.cfs_period_us");
  long q = 0, p = 0;
  if (q1 >> q && p1 >> p && q > 0 && p > 0) return int((q + p - 1) / p);
  return 0;
}

}  // namespace

ThreadCountInfo defaultThreadCount() {
  ThreadCountInfo info{};
  cpu_set_t set;
  CPU_ZERO(&set);
  std::set<std::pair<int, int>> cores;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    info.affinityCpus = CPU_COUNT(&set);
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (!CPU_ISSET(cpu, &set)) continue;
      const std::string base = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
      std::ifstream pkg(base + "physical_package_id"), core(base + "core_id");
      int p = -1, c = -1;
      if (pkg >> p && core >> c) cores.insert({p, c});
      else cores.insert({-1, cpu});  // no topology: count the logical CPU
    }
  } else {
    info.affinityCpus = int(std::thread::hardware_concurrency());
  }
  if (info.affinityCpus < 1) info.affinityCpus = 1;
  info.physicalCores = cores.empty() ? info.affinityCpus : int(cores.size());
  info.cgroupLimit = readCgroupLimit();
  int n = info.physicalCores;
  std::ostringstream why;
  why << info.physicalCores << " physical cores in the affinity mask (" << info.affinityCpus << " logical CPUs)";
  if (info.cgroupLimit > 0 && info.cgroupLimit < n) {
    n = info.cgroupLimit;
    why << ", capped by the cgroup CPU quota at " << info.cgroupLimit;
  }
  if (const char* env = std::getenv("KVANT_THREADS")) {
    const int t = std::atoi(env);
    if (t >= 1 && t <= 1024) {
      n = t;
      why.str("");
      why << "KVANT_THREADS=" << t;
    }
  }
  info.chosen = n < 1 ? 1 : n;
  info.reason = why.str();
  return info;
}

ThreadPool::ThreadPool(int threads) { start(threads); }

ThreadPool::~ThreadPool() { stop(); }

void ThreadPool::start(int threads) {
  threads_ = threads < 1 ? 1 : threads;
  quit_ = false;
  for (int i = 1; i < threads_; ++i) workers_.emplace_back([this, i] { workerLoop(i); });
}

void ThreadPool::stop() {
  {
    std::lock_guard<std::mutex> lock(m_);
    quit_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

void ThreadPool::resize(int threads) {
  std::lock_guard<std::mutex> hold(dispatch_);
  stop();
  start(threads);
}

void ThreadPool::runTasks() {
  // Indices are claimed one at a time: which thread runs an index varies, what it
  // computes does not.
  for (;;) {
    const size_t i = next_.fetch_add(1, std::memory_order_relaxed);
    if (i >= n_) break;
    (*fn_)(i);
    done_.fetch_add(1, std::memory_order_release);
  }
}

// A worker that finishes a generation spins for up to kSpinMicros before it blocks. A decode
// step issues ~130 native calls back to back with a few microseconds of JS between them; a
// worker blocked on the condition variable needs a futex wake-up per call (5-20 us on this VM,
// more than a small GEMV's work), while a spinning one starts within a few hundred cycles. The
// cost is one core kept busy for at most kSpinMicros after the last call.
constexpr auto kSpinMicros = std::chrono::microseconds(200);

void ThreadPool::workerLoop(int) {
  tlsInPoolTask = true;
  uint64_t seen = 0;
  for (;;) {
    bool next = false;
    const auto until = std::chrono::steady_clock::now() + kSpinMicros;
    // sched_yield rather than a pause loop: on an idle core it returns at once (the new
    // generation is seen within ~1 us), and on an oversubscribed machine it hands the core to
    // whoever is runnable (the JS thread among them) instead of burning it.
    for (unsigned i = 1; !next; ++i) {
      next = generation_.load(std::memory_order_acquire) != seen;
      if (!next && i % 16 == 0 && std::chrono::steady_clock::now() >= until) break;
      if (!next) std::this_thread::yield();
    }
    {
      std::unique_lock<std::mutex> lock(m_);
      if (!next) {
        ++sleeping_;
        wake_.wait(lock, [&] { return quit_ || generation_.load(std::memory_order_relaxed) != seen; });
        --sleeping_;
      }
      if (quit_) return;
      seen = generation_.load(std::memory_order_relaxed);
      active_.fetch_add(1, std::memory_order_acq_rel);
    }
    runTasks();
    active_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::parallelFor(size_t n, const std::function<void(size_t)>& fn) {
  if (n == 0) return;
  if (tlsInPoolTask || threads_ == 1 || n == 1) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::unique_lock<std::mutex> hold(dispatch_, std::try_to_lock);
  if (!hold.owns_lock()) {  // another thread drives the pool: run inline
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  bool notify;
  {
    std::lock_guard<std::mutex> lock(m_);
    fn_ = &fn;
    n_ = n;
    next_.store(0, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
    notify = sleeping_ > 0;  // spinning workers see the new generation by themselves
  }
  if (notify) wake_.notify_all();
  tlsInPoolTask = true;
  runTasks();
  tlsInPoolTask = false;
  // Wait until every index has finished and no worker still touches fn_/n_ of this
  // generation. Spinning is right here: the remaining work is at most one index per thread.
  while (done_.load(std::memory_order_acquire) < n) std::this_thread::yield();
  while (active_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
}

ThreadPool& threadPool() {
  // Deliberately leaked: joining workers from a static destructor at process exit can
  // deadlock with a job still running; the OS reclaims the threads.
  static ThreadPool* pool = new ThreadPool(defaultThreadCount().chosen);
  return *pool;
}

void JobQueue::push(std::function<void()> job) {
  std::lock_guard<std::mutex> lock(m_);
  jobs_.push_back(std::move(job));
  if (!started_) {
    started_ = true;
    std::thread([this] { run(); }).detach();
  }
  cv_.notify_one();
}

size_t JobQueue::pending() {
  std::lock_guard<std::mutex> lock(m_);
  return jobs_.size();
}

void JobQueue::run() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> lock(m_);
      cv_.wait(lock, [&] { return !jobs_.empty(); });
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

JobQueue& jobQueue() {
  static JobQueue* q = new JobQueue();  // leaked for the same reason as the pool
  return *q;
}

}  // namespace kvant
