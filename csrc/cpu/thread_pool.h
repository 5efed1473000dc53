// kvant's one native thread pool and its FIFO job queue.
//
// parallelFor(n, fn) runs fn(0..n-1), each index exactly once, on the pool's workers and
// the calling thread. Kernels partition their *outputs* into these indices, so every
// output element is computed by the same instructions in the same order whatever the
// thread count: results are bit-identical for any pool size.
//
// A parallelFor issued from inside a pool task (nested) or while another thread holds the
// pool runs inline on the caller: simple, deadlock-free, and still deterministic.
//
// Long operations from JS are queued as jobs on a single job-runner thread (FIFO), so
// they never occupy libuv's worker threads and never run two at a time on the pool.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace kvant {

struct ThreadCountInfo {
  int physicalCores;  // distinct (package, core) pairs among the CPUs we may run on
  int affinityCpus;   // logical CPUs in this process's affinity mask
  int cgroupLimit;    // ceil(quota / period) from cgroup cpu.max, or 0 when unlimited
  int chosen;         // min of the above (>= 1), or KVANT_THREADS when set
  std::string reason;
};

ThreadCountInfo defaultThreadCount();

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const { return threads_; }
  // Change the number of threads (>= 1). Waits for a running parallelFor to finish.
  void resize(int threads);
  void parallelFor(size_t n, const std::function<void(size_t)>& fn);

 private:
  void start(int threads);
  void stop();
  void workerLoop(int index);
  void runTasks();

  int threads_ = 1;
  std::mutex dispatch_;  // held by the thread currently driving a parallelFor
  std::mutex m_;
  std::condition_variable wake_;
  std::vector<std::thread> workers_;
  bool quit_ = false;
  // Written under m_; read without it by workers spinning for the next parallelFor.
  std::atomic<uint64_t> generation_{0};
  int sleeping_ = 0;  // workers blocked on wake_ (under m_): only then is a notify needed
  const std::function<void(size_t)>* fn_ = nullptr;
  size_t n_ = 0;
  std::atomic<size_t> next_{0};
  std::atomic<size_t> done_{0};
  std::atomic<int> active_{0};  // workers still inside the current generation
};

// The process-wide pool (created on first use, sized by defaultThreadCount()).
ThreadPool& threadPool();

// Single-thread FIFO queue for long jobs submitted from JS.
class JobQueue {
 public:
  void push(std::function<void()> job);
  size_t pending();

 private:
  void run();
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool started_ = false;
};

JobQueue& jobQueue();

}  // namespace kvant
