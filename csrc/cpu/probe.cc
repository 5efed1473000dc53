#include "probe.h"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "thread_pool.h"

namespace kvant {
namespace scalar {
namespace {

double sumF32(const float* x, size_t n) {
  float a[8] = {0};
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) a[j] += x[i + j];
  double s = 0;
  for (int j = 0; j < 8; ++j) s += a[j];
  for (; i < n; ++i) s += x[i];
  return s;
}

float fmaLoop(uint64_t iters, double* flops) {
  float acc[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  const float m = 0.999999f, c = 1e-7f;
  for (uint64_t i = 0; i < iters; ++i)
    for (int j = 0; j < 8; ++j) acc[j] = acc[j] * m + c;
  *flops = double(iters) * 8 * 2;
  float s = 0;
  for (float v : acc) s += v;
  return s;
}

const ReadVariant kReadVariants[] = {{"1 stream/thread", sumF32, false}, {"64 KiB tasks", sumF32, true}};

}  // namespace
const ProbeKernels kProbeKernels = {sumF32, fmaLoop};
const ReadProbeKernels kReadProbeKernels = {kReadVariants, int(sizeof(kReadVariants) / sizeof(kReadVariants[0]))};
}  // namespace scalar

const ProbeKernels& probeKernels() {
#if defined(__x86_64__) || defined(_M_X64)
  static const ProbeKernels& k = pickForIsa(scalar::kProbeKernels, &avx2::kProbeKernels, &avx512::kProbeKernels);
#else
  static const ProbeKernels& k = scalar::kProbeKernels;
#endif
  return k;
}

const ReadProbeKernels& readProbeKernels() {
#if defined(__x86_64__) || defined(_M_X64)
  static const ReadProbeKernels& k = pickForIsa(scalar::kReadProbeKernels, &avx2::kReadProbeKernels, &avx2::kReadProbeKernels);
#else
  static const ReadProbeKernels& k = scalar::kReadProbeKernels;
#endif
  return k;
}

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// 64-byte aligned, first-touched in parallel so pages spread like a kernel's inputs would.
float* allocTouched(size_t bytes) {
  const size_t n = bytes / sizeof(float);
  auto* p = static_cast<float*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
  if (!p) return nullptr;
  const size_t chunk = size_t(1) << 20;
  threadPool().parallelFor((n + chunk - 1) / chunk, [&](size_t c) {
    const size_t b = c * chunk, e = b + chunk < n ? b + chunk : n;
    for (size_t i = b; i < e; ++i) p[i] = float(i & 1023) * 1e-3f;
  });
  return p;
}

}  // namespace

ProbeResult probeReadBandwidth(size_t bytes, int reps) {
  ProbeResult r{1e30, double(bytes), 0, 0};
  float* p = allocTouched(bytes);
  if (!p) return {0, 0, 0, 0};
  const size_t n = bytes / sizeof(float);
  ThreadPool& pool = threadPool();
  // Contiguous slices, one per thread: each core streams its own range like a GEMV does.
  const size_t parts = size_t(pool.threads());
  std::vector<double> partial(parts);
  for (int rep = 0; rep < reps; ++rep) {
    const auto t0 = Clock::now();
    pool.parallelFor(parts, [&](size_t t) {
      const size_t b = n * t / parts, e = n * (t + 1) / parts;
      partial[t] = probeKernels().sumF32(p + b, e - b);
    });
    const double s = since(t0);
    if (s < r.seconds) r.seconds = s;
    for (double v : partial) r.check += v;
  }
  std::free(p);
  return r;
}

bool probeReadVariants(size_t bytes, int reps, ProbeResult* out) {
  const ReadProbeKernels& rk = readProbeKernels();
  float* p = allocTouched(bytes);
  if (!p) return false;
  const size_t n = bytes / sizeof(float);
  ThreadPool& pool = threadPool();
  const size_t parts = size_t(pool.threads());
  // 64 KiB tasks: the grain of a kernel's parallelFor (a GEMV task reads tens of KB).
  const size_t chunk = (size_t(64) << 10) / sizeof(float), chunks = (n + chunk - 1) / chunk;
  std::vector<double> partial(parts > chunks ? parts : chunks);
  for (int v = 0; v < rk.count; ++v) out[v] = {1e30, double(bytes), 0, 0};
  for (int rep = 0; rep < reps; ++rep)
    for (int v = 0; v < rk.count; ++v) {
      const ReadVariant& rv = rk.variants[v];
      const auto t0 = Clock::now();
      if (rv.chunked) {
        pool.parallelFor(chunks, [&](size_t c) {
          const size_t b = c * chunk, e = b + chunk < n ? b + chunk : n;
          partial[c] = rv.sum(p + b, e - b);
        });
      } else {
        pool.parallelFor(parts, [&](size_t t) {
          const size_t b = n * t / parts, e = n * (t + 1) / parts;
          partial[t] = rv.sum(p + b, e - b);
        });
      }
      const double s = since(t0);
      if (s < out[v].seconds) out[v].seconds = s;
      for (size_t i = 0, m = rv.chunked ? chunks : parts; i < m; ++i) out[v].check += partial[i];
    }
  std::free(p);
  return true;
}

ProbeResult probeCopyBandwidth(size_t bytes, int reps) {
  ProbeResult r{1e30, double(bytes), 0, 0};
  float* p = allocTouched(bytes);
  if (!p) return {0, 0, 0, 0};
  const size_t half = bytes / 2;
  auto* src = reinterpret_cast<uint8_t*>(p);
  uint8_t* dst = src + half;
  ThreadPool& pool = threadPool();
  const size_t parts = size_t(pool.threads());
  for (int rep = 0; rep < reps; ++rep) {
    const auto t0 = Clock::now();
    pool.parallelFor(parts, [&](size_t t) {
      const size_t b = half * t / parts, e = half * (t + 1) / parts;
      std::memcpy(dst + b, src + b, e - b);
    });
    const double s = since(t0);
    if (s < r.seconds) r.seconds = s;
    r.check += dst[rep % half];
  }
  std::free(p);
  return r;
}

ProbeResult probeFmaPeak(bool allThreads, double seconds) {
  ThreadPool& pool = threadPool();
  const size_t parts = allThreads ? size_t(pool.threads()) : 1;
  std::vector<double> flops(parts), checks(parts);
  // Calibrate the iteration count on one thread so the timed run lasts about `seconds`.
  uint64_t iters = 1 << 16;
  for (;;) {
    double f;
    const auto t0 = Clock::now();
    checks[0] = probeKernels().fmaLoop(iters, &f);
    if (since(t0) > 0.02 || iters > (uint64_t(1) << 40)) break;
    iters *= 4;
  }
  {
    double f;
    const auto t0 = Clock::now();
    probeKernels().fmaLoop(iters, &f);
    const double s = since(t0);
    iters = uint64_t(double(iters) * seconds / (s > 1e-6 ? s : 1e-6));
    if (iters < 1024) iters = 1024;
  }
  const auto t0 = Clock::now();
  pool.parallelFor(parts, [&](size_t t) { checks[t] = probeKernels().fmaLoop(iters, &flops[t]); });
  ProbeResult r{since(t0), 0, 0, 0};
  for (size_t t = 0; t < parts; ++t) { r.flops += flops[t]; r.check += checks[t]; }
  return r;
}

}  // namespace kvant
