// Tests of the SIMT emulation itself: if these did not hold, the kernel tests would prove
// nothing. Each kernel here is tiny and its expected result computed on the host.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "check.h"
#include "cuda_compat.cuh"

using namespace kvant::simt;
using kvant::cuda::dynamicSmem;

namespace {

// Restores the process schedule when a test forced one.
struct ScheduleGuard {
  Schedule saved = schedule();
  ~ScheduleGuard() { setSchedule(saved); }
};

__global__ void neighbourKernel(int* out) {
  int* s = dynamicSmem<int>();
  const int t = threadIdx.x, n = blockDim.x;
  s[t] = t * 10 + int(blockIdx.x);
  __syncthreads();
  out[blockIdx.x * n + t] = s[(t + 1) % n];
}

// The deliberate bug: thread 0 publishes a value that every thread reads, with no barrier.
__global__ void missingBarrierKernel(int* out, int withBarrier) {
  int* s = dynamicSmem<int>();
  if (threadIdx.x == 0) s[0] = 42;
  if (withBarrier) __syncthreads();
  out[threadIdx.x] = s[0];
}

__global__ void orderKernel(int* counter, int* arrival) { arrival[threadIdx.x] = atomicAdd(counter, 1); }

__global__ void twoPhaseKernel(int* out) {
  // Phase 2 must see every phase-1 write although each thread runs its phase alone.
  int* s = dynamicSmem<int>();
  s[threadIdx.x] = int(threadIdx.x);
  __syncthreads();
  int sum = 0;
  for (unsigned i = 0; i < blockDim.x; ++i) sum += s[i];
  __syncthreads();
  s[threadIdx.x] = sum + 1;
  __syncthreads();
  out[threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}

__global__ void shuffleKernel(int* out, int width) {
  const int t = threadIdx.x, lane = t % 32;
  const int v = t * 7 + 3;
  int* o = out + t * 5;
  o[0] = __shfl_sync(0xffffffffu, v, 5, width);
  o[1] = __shfl_xor_sync(0xffffffffu, v, 3, width);
  o[2] = __shfl_down_sync(0xffffffffu, v, 2, width);
  o[3] = __shfl_up_sync(0xffffffffu, v, 3, width);
  float f = float(lane);
  for (int off = 16; off > 0; off >>= 1) f += __shfl_xor_sync(0xffffffffu, f, off);
  o[4] = int(f);
}

__global__ void partialWarpKernel(int* out) {
  // 48 threads: warp 1 has 16 lanes and uses mask 0xffff.
  const int t = threadIdx.x;
  const unsigned mask = t < 32 ? 0xffffffffu : 0xffffu;
  out[t] = __shfl_xor_sync(mask, t, 1);
}

__global__ void voteKernel(unsigned* out) {
  const int t = threadIdx.x;
  out[t * 4 + 0] = __ballot_sync(0xffffffffu, t % 3 == 0);
  out[t * 4 + 1] = __any_sync(0xffffffffu, t == 37);
  out[t * 4 + 2] = __all_sync(0xffffffffu, t < 40);
  out[t * 4 + 3] = __all_sync(0xffffffffu, t >= 0);
}

__global__ void atomicKernel(int* count, int* mx, unsigned* bits, float* fsum) {
  const int g = int(blockIdx.x * blockDim.x + threadIdx.x);
  atomicAdd(count, 1);
  atomicMax(mx, (g * 37) % 101);
  atomicOr(bits, 1u << (g % 32));
  // A lock-free float add through atomicCAS on its bits.
  unsigned* p = reinterpret_cast<unsigned*>(fsum);
  unsigned old = *p, assumed;
  do {
    assumed = old;
    old = atomicCAS(p, assumed, __float_as_uint(__uint_as_float(assumed) + 0.5f));
  } while (old != assumed);
}

__global__ void staticSharedKernel(int* out) {
  __shared__ int tile[64];
  tile[threadIdx.x] = int(threadIdx.x * threadIdx.x);
  __syncthreads();
  out[blockIdx.x * 64 + threadIdx.x] = tile[63 - threadIdx.x] + int(blockIdx.x);
  __syncthreads();
}

__global__ void dimsKernel(int* out) {
  const unsigned t = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  const unsigned b = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  out[b * blockDim.x * blockDim.y * blockDim.z + t] = int(threadIdx.x + 10 * threadIdx.y + 100 * threadIdx.z + 1000 * b);
}

__global__ void deadlockKernel(int* out) {
  // Lane 5 leaves; the others wait for it in a full-mask shuffle forever.
  if (threadIdx.x == 5) return;
  out[threadIdx.x] = __shfl_sync(0xffffffffu, int(threadIdx.x), 0);
}

__global__ void barrierVsWarpKernel(int* out) {
  // Warp 0 waits at __syncthreads while warp 1 waits in a shuffle that names lanes of warp 0's
  // width but uses a mask warp 1's lanes never all reach (lane 40 skips it): a deadlock.
  if (threadIdx.x < 32) {
    __syncthreads();
  } else if (threadIdx.x != 40) {
    out[threadIdx.x] = __shfl_sync(0xffffffffu, 1, 0);
  }
}

// Lanes are never in lockstep: lane 0 publishing to its warp needs __syncwarp.
__global__ void missingSyncwarpKernel(int* out, int withSync) {
  int* s = dynamicSmem<int>();
  if (threadIdx.x % 32 == 0) s[threadIdx.x / 32] = 7;
  if (withSync) __syncwarp();
  out[threadIdx.x] = s[threadIdx.x / 32];
}

// Two warps running the same collectives: the last thread overwrites a value the other warp
// reads after a collective, with no __syncthreads in between. If warps advanced in lockstep
// (one collective per round each) the read would always come first and the race stay hidden.
__global__ void runAheadRaceKernel(int* out, int withBarrier) {
  int* s = dynamicSmem<int>();
  if (threadIdx.x == 0) s[0] = 1;
  __syncthreads();
  __syncwarp();
  const int v = s[0];
  __syncwarp();
  if (withBarrier) __syncthreads();
  if (threadIdx.x == blockDim.x - 1) s[0] = 2;  // "the next step's" value
  out[threadIdx.x] = v;
}

__global__ void mismatchedCollectivesKernel(int* out) {
  // Half the warp shuffles while the other half votes: different collectives, same mask.
  if (threadIdx.x < 16) out[threadIdx.x] = __shfl_sync(0xffffffffu, 1, 0);
  else out[threadIdx.x] = int(__ballot_sync(0xffffffffu, 1));
}

__global__ void outsideMaskKernel(int* out) {
  // Lanes 0..15 shuffle among themselves but read lane 20, which is not in the mask.
  if (threadIdx.x < 16) out[threadIdx.x] = __shfl_sync(0xffffu, int(threadIdx.x), 20);
}

using namespace nvcuda;

// C = A·B for one 16x16x16 tile through the fragment API (the correct use).
__global__ void wmmaKernel(const __half* a, const __half* b, float* c, int colMajorB) {
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::load_matrix_sync(fa, a, 16);
  wmma::fill_fragment(acc, 0.0f);
  if (colMajorB) {
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb;
    wmma::load_matrix_sync(fb, b, 16);
    wmma::mma_sync(acc, fa, fb, acc);
  } else {
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb;
    wmma::load_matrix_sync(fb, b, 16);
    wmma::mma_sync(acc, fa, fb, acc);
  }
  for (int i = 0; i < acc.num_elements; ++i) acc.x[i] *= 2.0f;  // element-wise ops are mapping-free
  wmma::store_matrix_sync(c, acc, 16, wmma::mem_row_major);
}

// The bug the scrambled mapping exists to catch: writing accumulator elements to positions
// guessed from the lane index instead of through store_matrix_sync.
__global__ void wmmaAssumesLayoutKernel(const __half* a, const __half* b, float* c) {
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::load_matrix_sync(fa, a, 16);
  wmma::load_matrix_sync(fb, b, 16);
  wmma::fill_fragment(acc, 0.0f);
  wmma::mma_sync(acc, fa, fb, acc);
  const int lane = threadIdx.x % 32;
  for (int i = 0; i < acc.num_elements; ++i) c[lane * acc.num_elements + i] = acc.x[i];
}

}  // namespace

TEST(simt_barrier_orders_shared_memory) {
  const int n = 96, blocks = 3;
  std::vector<int> out(n * blocks, -7);
  EXPECT_TRUE(launch(dim3(blocks), dim3(n), n * sizeof(int), neighbourKernel, out.data()));
  for (int b = 0; b < blocks; ++b)
    for (int t = 0; t < n; ++t) EXPECT_EQ(out[b * n + t], ((t + 1) % n) * 10 + b);
  std::vector<int> two(64, -7);
  EXPECT_TRUE(launch(dim3(1), dim3(64), 64 * sizeof(int), twoPhaseKernel, two.data()));
  for (int t = 0; t < 64; ++t) EXPECT_EQ(two[t], 63 * 64 / 2 + 1);
}

TEST(simt_missing_barrier_fails_under_reverse_order) {
  ScheduleGuard g;
  setSchedule({Order::kReverse, 0});
  for (int rep = 0; rep < 3; ++rep) {
    std::vector<int> out(64, 0);
    EXPECT_TRUE(launch(dim3(1), dim3(64), 16, missingBarrierKernel, out.data(), 0));
    int wrong = 0;
    for (int v : out) wrong += v != 42;
    // Reverse order runs thread 63 first: it reads the 0xFF poison before thread 0 writes.
    EXPECT_TRUE(wrong > 0);
    EXPECT_EQ(out[63], -1);
    std::vector<int> fixed(64, 0);
    EXPECT_TRUE(launch(dim3(1), dim3(64), 16, missingBarrierKernel, fixed.data(), 1));
    for (int v : fixed) EXPECT_EQ(v, 42);
  }
}

TEST(simt_missing_syncwarp_fails_under_reverse_order) {
  ScheduleGuard g;
  setSchedule({Order::kReverse, 0});
  std::vector<int> out(64, 0);
  EXPECT_TRUE(launch(dim3(1), dim3(64), 64, missingSyncwarpKernel, out.data(), 0));
  EXPECT_EQ(out[31], -1);  // lane 31 ran before lane 0 wrote: poison
  EXPECT_TRUE(launch(dim3(1), dim3(64), 64, missingSyncwarpKernel, out.data(), 1));
  for (int v : out) EXPECT_EQ(v, 7);
}

TEST(simt_warps_run_ahead_under_reverse_order) {
  ScheduleGuard g;
  setSchedule({Order::kReverse, 0});
  std::vector<int> out(64, 0);
  EXPECT_TRUE(launch(dim3(1), dim3(64), 16, runAheadRaceKernel, out.data(), 0));
  EXPECT_EQ(out[0], 2);  // warp 1 ran ahead to the overwrite before warp 0 read
  EXPECT_TRUE(launch(dim3(1), dim3(64), 16, runAheadRaceKernel, out.data(), 1));
  for (int v : out) EXPECT_EQ(v, 1);
}

TEST(simt_reports_collective_misuse) {
  std::vector<int> out(32, 0);
  EXPECT_TRUE(!launch(dim3(1), dim3(32), 0, mismatchedCollectivesKernel, out.data()));
  EXPECT_TRUE(lastError().find("mismatched") != std::string::npos);
  EXPECT_TRUE(!launch(dim3(1), dim3(32), 0, outsideMaskKernel, out.data()));
  EXPECT_TRUE(lastError().find("outside the shuffle mask") != std::string::npos);
}

TEST(simt_thread_order_follows_schedule) {
  ScheduleGuard g;
  const int n = 128;
  setSchedule({Order::kReverse, 0});
  int counter = 0;
  std::vector<int> arrival(n, -1);
  EXPECT_TRUE(launch(dim3(1), dim3(n), 0, orderKernel, &counter, arrival.data()));
  for (int t = 0; t < n; ++t) EXPECT_EQ(arrival[t], n - 1 - t);
  // Two seeds give two different permutations, each a permutation.
  std::vector<int> first;
  for (uint64_t seed : {11u, 12u}) {
    setSchedule({Order::kSeeded, seed});
    counter = 0;
    std::fill(arrival.begin(), arrival.end(), -1);
    EXPECT_TRUE(launch(dim3(1), dim3(n), 0, orderKernel, &counter, arrival.data()));
    std::vector<int> seen(n, 0);
    for (int a : arrival)
      if (a >= 0 && a < n) ++seen[a];
    for (int s : seen) EXPECT_EQ(s, 1);
    if (first.empty()) first = arrival;
    else EXPECT_TRUE(first != arrival);
  }
}

TEST(simt_shuffles_match_host_semantics) {
  const int n = 64;
  for (int width : {32, 16, 8}) {
    std::vector<int> out(n * 5, -7);
    EXPECT_TRUE(launch(dim3(1), dim3(n), 0, shuffleKernel, out.data(), width));
    for (int t = 0; t < n; ++t) {
      const int lane = t % 32, base = t - (lane % width), pos = lane % width;
      auto v = [](int i) { return i * 7 + 3; };
      EXPECT_EQ(out[t * 5 + 0], v(base + 5 % width));
      const int x = lane ^ 3;
      EXPECT_EQ(out[t * 5 + 1], (x / width == lane / width) ? v(t - lane + x) : v(t));
      EXPECT_EQ(out[t * 5 + 2], pos + 2 < width ? v(t + 2) : v(t));
      EXPECT_EQ(out[t * 5 + 3], pos >= 3 ? v(t - 3) : v(t));
      EXPECT_EQ(out[t * 5 + 4], 31 * 32 / 2);
    }
  }
  std::vector<int> p(48, -7);
  EXPECT_TRUE(launch(dim3(1), dim3(48), 0, partialWarpKernel, p.data()));
  for (int t = 0; t < 48; ++t) EXPECT_EQ(p[t], t ^ 1);
}

TEST(simt_votes) {
  const int n = 64;
  std::vector<unsigned> out(n * 4, 7);
  EXPECT_TRUE(launch(dim3(1), dim3(n), 0, voteKernel, out.data()));
  for (int t = 0; t < n; ++t) {
    const int w = t / 32;
    unsigned expect = 0;
    for (int l = 0; l < 32; ++l)
      if ((w * 32 + l) % 3 == 0) expect |= 1u << l;
    EXPECT_EQ(out[t * 4 + 0], expect);
    EXPECT_EQ(out[t * 4 + 1], unsigned(w == 1));
    EXPECT_EQ(out[t * 4 + 2], unsigned(w == 0));
    EXPECT_EQ(out[t * 4 + 3], 1u);
  }
}

TEST(simt_atomics) {
  int count = 0, mx = -1;
  unsigned bits = 0;
  float fsum = 0;
  EXPECT_TRUE(launch(dim3(5), dim3(40), 0, atomicKernel, &count, &mx, &bits, &fsum));
  EXPECT_EQ(count, 200);
  int expectMax = -1;
  for (int g = 0; g < 200; ++g) expectMax = std::max(expectMax, (g * 37) % 101);
  EXPECT_EQ(mx, expectMax);
  EXPECT_EQ(bits, 0xffffffffu);
  EXPECT_EQ(fsum, 100.0f);  // 200 halves: exact in f32
}

TEST(simt_static_shared_and_dims) {
  std::vector<int> out(64 * 3, -7);
  EXPECT_TRUE(launch(dim3(3), dim3(64), 0, staticSharedKernel, out.data()));
  for (int b = 0; b < 3; ++b)
    for (int t = 0; t < 64; ++t) EXPECT_EQ(out[b * 64 + t], (63 - t) * (63 - t) + b);
  const dim3 grid(2, 3, 2), block(4, 3, 2);
  std::vector<int> d(12 * 24, -7);
  EXPECT_TRUE(launch(grid, block, 0, dimsKernel, d.data()));
  for (int b = 0; b < 12; ++b)
    for (int z = 0; z < 2; ++z)
      for (int y = 0; y < 3; ++y)
        for (int x = 0; x < 4; ++x) EXPECT_EQ(d[b * 24 + (z * 3 + y) * 4 + x], x + 10 * y + 100 * z + 1000 * b);
}

TEST(simt_reports_deadlocks_and_limits) {
  std::vector<int> out(64, 0);
  EXPECT_TRUE(!launch(dim3(1), dim3(32), 0, deadlockKernel, out.data()));
  EXPECT_TRUE(lastError().find("deadlock") != std::string::npos);
  EXPECT_TRUE(!launch(dim3(1), dim3(64), 0, barrierVsWarpKernel, out.data()));
  EXPECT_TRUE(lastError().find("deadlock") != std::string::npos);
  EXPECT_TRUE(!launch(dim3(1), dim3(1025), 0, orderKernel, out.data(), out.data()));
  // The emulation is usable again after a failed launch.
  std::vector<int> ok(96, -7);
  EXPECT_TRUE(launch(dim3(1), dim3(96), 96 * sizeof(int), neighbourKernel, ok.data()));
  EXPECT_EQ(ok[0], 10);
  EXPECT_TRUE(lastError().empty());
}

TEST(simt_wmma_scrambled_fragments) {
  // WMMA pointers must be 32-byte aligned (checked by the emulation, as the API requires).
  struct alignas(32) Tile16 { __half v[256 + 16]; };  // room for the misaligned read below
  struct alignas(32) Tile32 { float v[256]; };
  Tile16 ta, tb;
  __half* a = ta.v;
  __half* b = tb.v;
  std::vector<double> A(256), B(256);
  uint64_t s = 12345;
  for (int i = 0; i < 256; ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    A[i] = double(int((s >> 33) % 17) - 8) / 8;  // multiples of 1/8: exact in f16, products exact in f32
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    B[i] = double(int((s >> 33) % 17) - 8) / 4;
    a[i] = __float2half(float(A[i]));
  }
  for (int colMajor = 0; colMajor < 2; ++colMajor) {
    for (int i = 0; i < 256; ++i) {
      const int r = i / 16, c = i % 16;
      b[colMajor ? c * 16 + r : i] = __float2half(float(B[i]));
    }
    Tile32 tc;
    float* c = tc.v;
    std::fill(c, c + 256, NAN);
    EXPECT_TRUE(launch(dim3(1), dim3(32), 0, wmmaKernel, static_cast<const __half*>(a), static_cast<const __half*>(b), c, colMajor));
    for (int r = 0; r < 16; ++r)
      for (int col = 0; col < 16; ++col) {
        double e = 0;
        for (int k = 0; k < 16; ++k) e += A[r * 16 + k] * B[k * 16 + col];
        EXPECT_EQ(double(c[r * 16 + col]), 2 * e);  // exact: small dyadic values
      }
  }
  // Guessing the mapping gives a wrong tile (the map is a seeded permutation, never identity).
  for (int i = 0; i < 256; ++i) b[i] = __float2half(float(B[i]));
  Tile32 tc;
  float* c = tc.v;
  std::fill(c, c + 256, NAN);
  EXPECT_TRUE(launch(dim3(1), dim3(32), 0, wmmaAssumesLayoutKernel, static_cast<const __half*>(a), static_cast<const __half*>(b), c));
  int wrong = 0;
  for (int r = 0; r < 16; ++r)
    for (int col = 0; col < 16; ++col) {
      double e = 0;
      for (int k = 0; k < 16; ++k) e += A[r * 16 + k] * B[k * 16 + col];
      wrong += double(c[r * 16 + col]) != e;
    }
  EXPECT_TRUE(wrong > 0);
  // A misaligned fragment pointer is reported as the launch's error.
  EXPECT_TRUE(!launch(dim3(1), dim3(32), 0, wmmaKernel, static_cast<const __half*>(a + 8), static_cast<const __half*>(b), c, 0));
  EXPECT_TRUE(lastError().find("aligned") != std::string::npos);
}
