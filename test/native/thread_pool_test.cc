// The thread pool: each index exactly once, nesting inline, concurrent callers, resize,
// thread-count invariance; the job queue runs FIFO.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "check.h"
#include "random.h"
#include "thread_pool.h"

using namespace kvant;

TEST(pool_runs_each_index_exactly_once) {
  for (size_t n : {size_t(0), size_t(1), size_t(2), size_t(7), size_t(1000)}) {
    std::vector<std::atomic<int>> hits(n);
    threadPool().parallelFor(n, [&](size_t i) { hits[i].fetch_add(1); });
    int bad = 0;
    for (auto& h : hits) bad += h.load() != 1;
    EXPECT_EQ(bad, 0);
  }
}

TEST(pool_nested_parallel_for_runs_inline_without_deadlock) {
  std::atomic<int> total{0};
  threadPool().parallelFor(8, [&](size_t) { threadPool().parallelFor(5, [&](size_t) { total.fetch_add(1); }); });
  EXPECT_EQ(total.load(), 40);
}

TEST(pool_two_threads_calling_concurrently) {
  std::atomic<long> a{0}, b{0};
  std::thread t([&] {
    for (int r = 0; r < 50; ++r) threadPool().parallelFor(100, [&](size_t i) { a.fetch_add(long(i)); });
  });
  for (int r = 0; r < 50; ++r) threadPool().parallelFor(100, [&](size_t i) { b.fetch_add(long(i)); });
  t.join();
  EXPECT_EQ(a.load(), 50L * 4950);
  EXPECT_EQ(b.load(), 50L * 4950);
}

TEST(pool_resize_and_thread_count_invariance) {
  const int before = threadPool().threads();
  std::vector<double> results;
  for (int threads : {1, 2, 3, 5}) {
    threadPool().resize(threads);
    EXPECT_EQ(threadPool().threads(), threads);
    // A reduction partitioned by output: 64 partial sums, then summed in order.
    std::vector<double> partial(64);
    threadPool().parallelFor(64, [&](size_t c) {
      double s = 0;
      for (int i = 0; i < 10000; ++i) s += 1.0 / (1.0 + double(c * 10000 + i));
      partial[c] = s;
    });
    double s = 0;
    for (double p : partial) s += p;
    results.push_back(s);
  }
  threadPool().resize(before);
  for (double r : results) EXPECT_TRUE(r == results[0]);
}

TEST(job_queue_runs_jobs_in_fifo_order) {
  std::mutex m;
  std::condition_variable cv;
  std::vector<int> order;
  for (int i = 0; i < 20; ++i)
    jobQueue().push([&, i] {
      std::lock_guard<std::mutex> lock(m);
      order.push_back(i);
      cv.notify_all();
    });
  std::unique_lock<std::mutex> lock(m);
  cv.wait_for(lock, std::chrono::seconds(10), [&] { return order.size() == 20; });
  EXPECT_EQ(order.size(), size_t(20));
  for (int i = 0; i < int(order.size()); ++i) EXPECT_EQ(order[i], i);
}

TEST(fill_random_is_identical_for_any_thread_count) {
  const int before = threadPool().threads();
  std::vector<float> a(200003), b(200003);
  threadPool().resize(1);
  fillRandom(a.data(), DType::kF32, a.size(), 7, RandomDist::kNormal, 0, 1);
  threadPool().resize(3);
  fillRandom(b.data(), DType::kF32, b.size(), 7, RandomDist::kNormal, 0, 1);
  threadPool().resize(before);
  int diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff += a[i] != b[i];
  EXPECT_EQ(diff, 0);
  double mean = 0, var = 0;
  for (float v : a) mean += v;
  mean /= double(a.size());
  for (float v : a) var += (v - mean) * (v - mean);
  var /= double(a.size());
  EXPECT_NEAR_REL(mean, 0.0, 0.01);
  EXPECT_NEAR_REL(var, 1.0, 0.02);
}
