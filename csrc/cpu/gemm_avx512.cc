// AVX-512 level of the dense GEMM tile: 16 lanes, masked K tail, up to 16 accumulators.
#include "simd_avx512.h"

#include "gemm.h"

namespace kvant {
namespace avx512 {
namespace {

inline __m512 loadW(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 loadW(const uint16_t* p, __mmask16 m, bool bf16) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, p);
  return bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)) : _mm512_cvtph_ps(h);
}

// acc[i][j] accumulates lane-wise over K in 16-wide chunks, in order; then one fixed
// horizontal reduction. The same sequence runs for any (mr, nr), so results never depend
// on how rows were grouped into tiles.
template <int MR, int NR, class W>
inline void tileFixed(const float* x, size_t ldx, const W* w, size_t ldw, size_t K, float* y, size_t ldy, bool bf16) {
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  for (size_t k = 0; k < K; k += 16) {
    const __mmask16 m = K - k >= 16 ? __mmask16(0xffff) : __mmask16((1u << (K - k)) - 1);
    __m512 wv[NR];
    for (int j = 0; j < NR; ++j) {
      if constexpr (sizeof(W) == 4) wv[j] = loadW(reinterpret_cast<const float*>(w) + j * ldw + k, m);
      else wv[j] = loadW(reinterpret_cast<const uint16_t*>(w) + j * ldw + k, m, bf16);
    }
    for (int i = 0; i < MR; ++i) {
      const __m512 xv = _mm512_maskz_loadu_ps(m, x + i * ldx + k);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) y[i * ldy + j] = _mm512_reduce_add_ps(acc[i][j]);
}

template <class W>
void tileDispatch(const float* x, size_t ldx, size_t mr, const void* wp, size_t ldw, size_t nr, size_t K, float* y, size_t ldy, bool bf16) {
  const W* w = static_cast<const W*>(wp);
  // Full 4x4 tiles are the common case; edges run the same code with smaller constants.
#define KV_TILE(MR, NR) \
  if (mr == MR && nr == NR) return tileFixed<MR, NR>(x, ldx, w, ldw, K, y, ldy, bf16);
  KV_TILE(4, 4) KV_TILE(1, 4) KV_TILE(2, 4) KV_TILE(3, 4)
  KV_TILE(4, 1) KV_TILE(4, 2) KV_TILE(4, 3) KV_TILE(1, 1) KV_TILE(1, 2) KV_TILE(1, 3)
  KV_TILE(2, 1) KV_TILE(2, 2) KV_TILE(2, 3) KV_TILE(3, 1) KV_TILE(3, 2) KV_TILE(3, 3)
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
}  // namespace avx512
}  // namespace kvant
