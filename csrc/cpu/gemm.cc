#include "gemm.h"

#include "kvant/half.h"
#include "thread_pool.h"

namespace kvant {
namespace scalar {
namespace {

template <class Load>
void tile(const float* x, size_t ldx, size_t mr, const void* w, size_t ldw, size_t nr, size_t K, float* y, size_t ldy, Load load) {
  // Reference order: a plain sequential f32 sum per output.
  for (size_t i = 0; i < mr; ++i)
    for (size_t j = 0; j < nr; ++j) {
      float s = 0;
      for (size_t k = 0; k < K; ++k) s += x[i * ldx + k] * load(w, j * ldw + k);
      y[i * ldy + j] = s;
    }
}

void tileF32(const float* x, size_t ldx, size_t mr, const void* w, size_t ldw, size_t nr, size_t K, float* y, size_t ldy) {
  tile(x, ldx, mr, w, ldw, nr, K, y, ldy, [](const void* p, size_t i) { return static_cast<const float*>(p)[i]; });
}
void tileF16(const float* x, size_t ldx, size_t mr, const void* w, size_t ldw, size_t nr, size_t K, float* y, size_t ldy) {
  tile(x, ldx, mr, w, ldw, nr, K, y, ldy, [](const void* p, size_t i) { return f16ToF32(static_cast<const uint16_t*>(p)[i]); });
}
void tileBf16(const float* x, size_t ldx, size_t mr, const void* w, size_t ldw, size_t nr, size_t K, float* y, size_t ldy) {
  tile(x, ldx, mr, w, ldw, nr, K, y, ldy, [](const void* p, size_t i) { return bf16ToF32(static_cast<const uint16_t*>(p)[i]); });
}

}  // namespace
const GemmKernels kGemmKernels = {tileF32, tileF16, tileBf16};
}  // namespace scalar

const GemmKernels* gemmKernelsFor(Isa isa) {
  if (int(isa) < 0) isa = isaChoice().isa;
#if defined(__x86_64__) || defined(_M_X64)
  return tableForIsa(isa, scalar::kGemmKernels, &avx2::kGemmKernels, &avx512::kGemmKernels);
#else
  return tableForIsa<GemmKernels>(isa, scalar::kGemmKernels, nullptr, nullptr);
#endif
}

namespace {

constexpr size_t kPrefetchAhead = 4096;

// Weight rows [n0, n1) for all M activation rows: activation tiles outer, weight tiles inner, so
// the task's weight rows stay cache-resident. Every output is the same tile sequence whatever
// M or the block, which is what makes gemm and gemmHeads batch- and thread-count invariant.
void rowBlock(GemmTileFn tile, const float* x, size_t ldx, size_t M, const uint8_t* w, size_t es, size_t K, size_t n0, size_t n1,
              float* y, size_t ldy) {
  const size_t rowBytes = K * es, end = n1 * rowBytes;
  for (size_t m0 = 0; m0 < M; m0 += 4) {
    const size_t mr = M - m0 < 4 ? M - m0 : 4;
    for (size_t j = n0; j < n1; j += 4) {
      const size_t nr = n1 - j < 4 ? n1 - j : 4;
      // Short rows (<= 2 KB, e.g. MLA's absorbed K = 128 f32): a tile reads 4 adjacent rows,
      // i.e. 4 interleaved streams a few lines long, which the hardware prefetcher never
      // locks onto. The task's rows are one contiguous run, so prefetch it 4 KB ahead.
      // Measured side by side (nice -15, loaded machine, M = 1, 4 MB matrices cycled over
      // 64 MB): K = 128 f32 GEMV 4.7-5.4 -> 8.2-10.1 GB/s; absorbed W_UK 4.9-5.2 -> 7.1-9.0.
      if (m0 == 0 && rowBytes <= 2048) {
        for (size_t o = j * rowBytes + kPrefetchAhead, e = o + nr * rowBytes; o < e && o < end; o += 64) __builtin_prefetch(w + o);
      }
      tile(x + m0 * ldx, ldx, mr, w + j * K * es, K, nr, K, y + m0 * ldy + j, ldy);
    }
  }
}

// Weight rows per pool task: at least kGemmRowsPerTask, and enough rows for ~64 KB of weights.
// With short rows (MLA's absorbed W_UK(h)ᵀ: K = 128 f32, 512 B per row) 16 rows are only 8 KB,
// and every task began a fresh DRAM stream whose prefetch ramp-up the task never amortized
// (adjacent tasks alternate between threads). Depends on K and the dtype only, never on the
// thread count; results do not depend on it anyway (each output is its own accumulation).
size_t rowsPerTask(size_t K, size_t es) {
  const size_t want = (size_t(64) << 10) / (K * es + 1);
  return want <= kGemmRowsPerTask ? kGemmRowsPerTask : (want + 3) / 4 * 4;
}

GemmTileFn tileFor(const GemmKernels& k, DType wType) {
  return wType == DType::kF32 ? k.tileF32 : wType == DType::kF16 ? k.tileF16 : wType == DType::kBF16 ? k.tileBf16 : nullptr;
}

}  // namespace

Status gemm(const float* x, size_t M, size_t K, const void* w, DType wType, size_t N, const float* bias, float* y, Isa isa) {
  const GemmKernels* k = gemmKernelsFor(isa);
  if (!k) return Status::kBackend;
  GemmTileFn tile = tileFor(*k, wType);
  if (!tile) return Status::kDtype;
  const size_t es = dtypeSize(wType);
  const auto* wb = static_cast<const uint8_t*>(w);
  const size_t rpt = rowsPerTask(K, es), tasks = (N + rpt - 1) / rpt;
  threadPool().parallelFor(tasks, [&](size_t t) {
    const size_t n0 = t * rpt, n1 = n0 + rpt < N ? n0 + rpt : N;
    rowBlock(tile, x, K, M, wb, es, K, n0, n1, y, N);
    if (bias)
      for (size_t m = 0; m < M; ++m)
        for (size_t j = n0; j < n1; ++j) y[m * N + j] += bias[j];
  });
  return Status::kOk;
}

Status gemmHeads(const float* x, size_t M, size_t H, size_t ldxM, size_t ldxH, size_t K, const void* w, DType wType,
                 size_t ldwH, size_t N, float* y, size_t ldyM, size_t ldyH, Isa isa) {
  const GemmKernels* k = gemmKernelsFor(isa);
  if (!k) return Status::kBackend;
  GemmTileFn tile = tileFor(*k, wType);
  if (!tile) return Status::kDtype;
  const size_t es = dtypeSize(wType);
  const auto* wb = static_cast<const uint8_t*>(w);
  const size_t rpt = rowsPerTask(K, es), blocks = (N + rpt - 1) / rpt;
  threadPool().parallelFor(H * blocks, [&](size_t t) {
    const size_t h = t / blocks, n0 = (t % blocks) * rpt;
    const size_t n1 = n0 + rpt < N ? n0 + rpt : N;
    rowBlock(tile, x + h * ldxH, ldxM, M, wb + h * ldwH * es, es, K, n0, n1, y + h * ldyH, ldyM);
  });
  return Status::kOk;
}

}  // namespace kvant
