// AVX2+FMA level of the dense GEMM tile: 8 lanes; the K tail is zero-padded through a small
// stack buffer so every output is still one fixed sequence of 8-wide FMAs.
#include <immintrin.h>

#include <cstring>

#include "gemm.h"

namespace kvant {
namespace avx2 {
namespace {

inline __m256 widen(const uint16_t* p, bool bf16) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return bf16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)) : _mm256_cvtph_ps(h);
}

inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

template <int MR, int NR, class W>
inline void tileFixed(const float* x, size_t ldx, const W* w, size_t ldw, size_t K, float* y, size_t ldy, bool bf16) {
  __m256 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
  const size_t kFull = K & ~size_t(7);
  auto step = [&](const float* const* xs, const W* const* ws) {
    __m256 wv[NR];
    for (int j = 0; j < NR; ++j) {
      if constexpr (sizeof(W) == 4) wv[j] = _mm256_loadu_ps(reinterpret_cast<const float*>(ws[j]));
      else wv[j] = widen(reinterpret_cast<const uint16_t*>(ws[j]), bf16);
    }
    for (int i = 0; i < MR; ++i) {
      const __m256 xv = _mm256_loadu_ps(xs[i]);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  };
  const float* xs[MR];
  const W* ws[NR];
  for (size_t k = 0; k < kFull; k += 8) {
    for (int i = 0; i < MR; ++i) xs[i] = x + i * ldx + k;
    for (int j = 0; j < NR; ++j) ws[j] = w + j * ldw + k;
    step(xs, ws);
  }
  if (kFull < K) {  // tail: copy into zero-padded buffers, one more 8-wide step
    alignas(32) float xt[MR][8] = {};
    alignas(32) W wt[NR][8] = {};
    for (int i = 0; i < MR; ++i) std::memcpy(xt[i], x + i * ldx + kFull, (K - kFull) * sizeof(float));
    for (int j = 0; j < NR; ++j) std::memcpy(wt[j], w + j * ldw + kFull, (K - kFull) * sizeof(W));
    for (int i = 0; i < MR; ++i) xs[i] = xt[i];
    for (int j = 0; j < NR; ++j) ws[j] = wt[j];
    step(xs, ws);
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) y[i * ldy + j] = hsum(acc[i][j]);
}

template <class W>
void tileDispatch(const float* x, size_t ldx, size_t mr, const void* wp, size_t ldw, size_t nr, size_t K, float* y, size_t ldy, bool bf16) {
  const W* w = static_cast<const W*>(wp);
  // 16 ymm registers: a 2x4 tile (8 accumulators + 4 weight vectors + 1 activation) fits,
  // a 4x4 one would spill. Splitting rows never changes a result: accumulators are per output.
  if (mr > 2) {
    tileDispatch<W>(x, ldx, 2, wp, ldw, nr, K, y, ldy, bf16);
    return tileDispatch<W>(x + 2 * ldx, ldx, mr - 2, wp, ldw, nr, K, y + 2 * ldy, ldy, bf16);
  }
#define KV_TILE(MR, NR) \
  if (mr == MR && nr == NR) return tileFixed<MR, NR>(x, ldx, w, ldw, K, y, ldy, bf16);
  KV_TILE(2, 4) KV_TILE(1, 4) KV_TILE(1, 1) KV_TILE(1, 2) KV_TILE(1, 3) KV_TILE(2, 1) KV_TILE(2, 2) KV_TILE(2, 3)
#undef KV_TILE
}

void tileF32(const float* x, size_t ldx, size_t mr, const void* w, size_t ldw, size_t nr, size_t K, float* y, size_t ldy) {
  tileDispatch<float>(x, ldx, mr, w, ldw, nr, K, y, ldy, false);
}
void tileF16(const float* x, size_t ldx, size_t mr, const void* w, size_t ldw, size_t nr, size_t K, float* y, size_t ldy) {
  tileDispatch<uint16_t>(x, ldx, mr, w, ldw, nr, K, y, ldy, false);
}
void tileBf16(const float* x, size_t ldx, size_t mr, const void* w, size_t ldw, size_t nr, size_t K, float* y, size_t ldy) {
  tileDispatch<uint16_t>(x, ldx, mr, w, ldw, nr, K, y, ldy, true);
}

}  // namespace
const GemmKernels kGemmKernels = {tileF32, tileF16, tileBf16};
}  // namespace avx2
}  // namespace kvant
