// AVX2+FMA level of the ceiling probes.
#include <immintrin.h>

#include "probe.h"

namespace kvant {
namespace avx2 {
namespace {

double sumF32(const float* x, size_t n) {
  // Four accumulators hide the 3-4 cycle add latency; the loop is load-bound anyway.
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_loadu_ps(x + i));
    a1 = _mm256_add_ps(a1, _mm256_loadu_ps(x + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_loadu_ps(x + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_loadu_ps(x + i + 24));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  double s = 0;
  for (float v : lanes) s += v;
  for (; i < n; ++i) s += x[i];
  return s;
}

// S interleaved streams over S equal parts of [x, x + n): each step reads one 64-byte line
// from every stream, so S misses (plus what the hardware prefetcher adds per stream) are in
// flight per core instead of one stream's. PF > 0: also a software prefetch PF bytes ahead on
// each stream (NTA: the non-temporal hint, which on many cores keeps the line out of the
// outer caches). Eight accumulators (line halves of stream s go to 2s % 8 and 2s+1 % 8) keep
// the adds off the critical path without spilling at 16 streams (16 ymm registers).
template <int S, int PF, int HINT>
double sumStreams(const float* x, size_t n) {
  const size_t len = n / S / 16 * 16;  // floats per stream, whole lines
  const float* p[S];
  for (int s = 0; s < S; ++s) p[s] = x + size_t(s) * len;
  __m256 a[8];
  for (int j = 0; j < 8; ++j) a[j] = _mm256_setzero_ps();
  for (size_t i = 0; i < len; i += 16) {
#pragma GCC unroll 16
    for (int s = 0; s < S; ++s) {
      if constexpr (PF > 0) {
        const char* pf = reinterpret_cast<const char*>(p[s] + i) + PF;
        if (i * 4 + PF < len * 4) {
          if constexpr (HINT == 0) _mm_prefetch(pf, _MM_HINT_NTA);
          else _mm_prefetch(pf, _MM_HINT_T0);
        }
      }
      a[(2 * s) % 8] = _mm256_add_ps(a[(2 * s) % 8], _mm256_loadu_ps(p[s] + i));
      a[(2 * s + 1) % 8] = _mm256_add_ps(a[(2 * s + 1) % 8], _mm256_loadu_ps(p[s] + i + 8));
    }
  }
  __m256 t = _mm256_setzero_ps();
  for (int j = 0; j < 8; ++j) t = _mm256_add_ps(t, a[j]);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, t);
  double r = 0;
  for (float v : lanes) r += v;
  for (size_t i = size_t(S) * len; i < n; ++i) r += x[i];
  return r;
}

float fmaLoop(uint64_t iters, double* flops) {
  // 12 independent chains: enough to cover 2 FMA pipes x 4-cycle latency with room to spare.
  __m256 acc[12];
  for (int j = 0; j < 12; ++j) acc[j] = _mm256_set1_ps(float(j + 1));
  const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (uint64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < 12; ++j) acc[j] = _mm256_fmadd_ps(acc[j], m, c);
  }
  *flops = double(iters) * 12 * 8 * 2;
  __m256 s = acc[0];
  for (int j = 1; j < 12; ++j) s = _mm256_add_ps(s, acc[j]);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, s);
  return lanes[0] + lanes[7];
}

// The variants the harness takes the best of. Prefetch distance 1 KB ahead per stream: with 4
// streams that is 4 KB in flight per core, about what covers one DRAM latency at ~12 GB/s.
const ReadVariant kReadVariants[] = {
    {"1 stream/thread", sumF32, false},
    {"2 streams/thread", sumStreams<2, 0, 1>, false},
    {"4 streams/thread", sumStreams<4, 0, 1>, false},
    {"8 streams/thread", sumStreams<8, 0, 1>, false},
    {"16 streams/thread", sumStreams<16, 0, 1>, false},
    {"4 streams/thread + prefetch", sumStreams<4, 1024, 1>, false},
    {"4 streams/thread + prefetchnta", sumStreams<4, 1024, 0>, false},
    {"4 streams, 64 KiB tasks", sumStreams<4, 0, 1>, true},
    {"8 streams, 64 KiB tasks", sumStreams<8, 0, 1>, true},
};

}  // namespace
const ProbeKernels kProbeKernels = {sumF32, fmaLoop};
const ReadProbeKernels kReadProbeKernels = {kReadVariants, int(sizeof(kReadVariants) / sizeof(kReadVariants[0]))};
}  // namespace avx2
}  // namespace kvant
