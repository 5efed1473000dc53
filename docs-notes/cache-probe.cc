// What survives in the caches of this VM: a random pointer chase over W KiB (64-byte nodes),
// timed after an S MiB streaming read (plain loads, prefetchnta or prefetcht1 1 KB ahead) and
// with no stream at all. 15 repetitions, medians.
//   g++ -O2 -mavx2 docs-notes/cache-probe.cc -o /tmp/cache-probe && nice -n -15 /tmp/cache-probe 256 64
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <vector>

static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

int main(int argc, char** argv) {
  if (argc < 3) return fprintf(stderr, "usage: cache-probe W_KiB S_MiB\n"), 2;
  const size_t W = size_t(atoi(argv[1])) << 10, S = size_t(atoi(argv[2])) << 20, nodes = W / 64;
  std::vector<size_t> perm(nodes);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(1));
  size_t* ws = static_cast<size_t*>(aligned_alloc(64, W));
  for (size_t i = 0; i < nodes; ++i) ws[perm[i] * 8] = perm[(i + 1) % nodes] * 8;  // one cycle through every node
  uint8_t* st = static_cast<uint8_t*>(aligned_alloc(4096, S));
  for (size_t i = 0; i < S; i += 64) st[i] = uint8_t(i);
  const char* names[] = {"plain loads", "prefetchnta 1 KB ahead", "prefetcht1 1 KB ahead", "no stream"};
  for (int m = 0; m < 4; ++m) {
    std::vector<double> tc, ts;
    for (int rep = 0; rep < 15; ++rep) {
      size_t p = 0;
      for (size_t i = 0; i < nodes; ++i) p = ws[p];  // warm the working set
      const double t0 = now();
      __m256i acc = _mm256_setzero_si256();
      if (m != 3)
        for (size_t i = 0; i < S; i += 64) {
          if (m == 1) _mm_prefetch(reinterpret_cast<const char*>(st) + i + 1024, _MM_HINT_NTA);
          if (m == 2) _mm_prefetch(reinterpret_cast<const char*>(st) + i + 1024, _MM_HINT_T1);
          acc = _mm256_add_epi32(acc, _mm256_load_si256(reinterpret_cast<const __m256i*>(st + i)));
          acc = _mm256_add_epi32(acc, _mm256_load_si256(reinterpret_cast<const __m256i*>(st + i + 32)));
        }
      const double t1 = now();
      for (size_t i = 0; i < nodes; ++i) p = ws[p];
      const double t2 = now();
      volatile int sink = _mm256_extract_epi32(acc, 0) + int(p);
      (void)sink;
      ts.push_back(t1 - t0), tc.push_back(t2 - t1);
    }
    std::sort(tc.begin(), tc.end()), std::sort(ts.begin(), ts.end());
    printf("%-24s stream %5.1f GB/s   chase afterwards %6.1f ns/node\n", names[m], m == 3 ? 0.0 : S / ts[7] / 1e9, tc[7] / nodes * 1e9);
  }
}
